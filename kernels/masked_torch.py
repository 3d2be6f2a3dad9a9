"""Masked expert layer in pure torch: the production path on CPU (and the fallback anywhere).

Depends on torch only: edited checkpoints carry a verbatim copy of this file
(`monet_masking.py`) so that they load through `trust_remote_code=True` without resect.

With the mask M of a routing group ([E, E], True = removed) and w'[i,j] = w[i,j] (1 - M[i,j]),
the layer needs the row and column sums R, C and the mixed activations P, Q of w' (see
`MonetMoVDE.project_top / project_bottom`). Each is its unmasked value minus a correction over
the removed pairs:

    dR[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j]        dP[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j] a2_j
    dC[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i]        dQ[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i] a1_i

The column side is the row side with g1 <-> g2 and M -> M^T, so one routine serves both.
g1 and g2 are sparse (per head only the halves above the routing threshold are > 0), so a
correction only visits each (token, head)'s active pairs, K_own x K_other of them: extra work
~ H * K1 * K2 * m per token, never [tokens, H, E*E]. Rows (token, head) are processed in chunks
whose temporaries stay a small fraction of one activation tensor, and the corrections are
scatter-subtracted in place, so the peak memory is the dense layer's plus that fraction.

Shapes: N tokens (B*T flattened), H heads, E halves per side, K active halves (padded to the
largest count over tokens and heads), m the activation width (m/2 for VD), R = rows in a chunk.
"""

from __future__ import annotations

import torch

CHUNK_FRACTION = 4  # temporaries of one chunk <= 1/CHUNK_FRACTION of one activation tensor (bytes)


def active_halves(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero gates of each (token, head), padded with zeros: values, indices [N, H, K].

    Padding entries carry value 0 (and some unused index), so they contribute nothing.
    """
    k = max(int((g > 0).sum(-1).amax()), 1)
    values, index = g.topk(k, dim=-1, sorted=False)
    return values, index


def side_corrections(
    mask: torch.Tensor, v_own: torch.Tensor, i_own: torch.Tensor, v_other: torch.Tensor, i_other: torch.Tensor,
    acts: torch.Tensor, token: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Removed share of each active half of a chunk of (token, head) rows.

    mask [E, E] bool indexed [own, other]; v_own, i_own [R, Ko]; v_other, i_other [R, Kt];
    acts [N, E, m] the other side's activations; token [R] -> d_sums [R, Ko], d_mixed [R, Ko, m].
    """
    block = mask[i_own.unsqueeze(-1), i_other.unsqueeze(-2)]  # [R, Ko, Kt]: the mask this row sees
    w = (v_own.unsqueeze(-1) * v_other.unsqueeze(-2)).masked_fill_(~block, 0)  # removed pair weights
    return w.sum(-1), w @ acts[token.unsqueeze(-1), i_other]  # [R, Ko], [R, Ko, Kt] @ [R, Kt, m]


def subtract_side(mask, g_own, g_other, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, compute=side_corrections) -> None:
    """sums [N, E] -= d_sums and mixed [N, E, m] -= d_mixed, scattered at each row's own halves.

    g_own, g_other [N, H, E] gates; mask [E, E] indexed [own, other]; acts [N, E, m] the other
    side's activations; compute: `side_corrections` or a kernel with the same signature.
    Rows (token, head) go in chunks; active halves are found per chunk (less padding, no
    full-size index tensors).
    """
    n, heads, experts = g_own.shape
    width = mixed.shape[-1]
    g_own, g_other = g_own.reshape(n * heads, experts), g_other.reshape(n * heads, experts)
    token = torch.arange(n, device=sums.device).repeat_interleave(heads)  # [N*H]: token of each row
    k_own, k_other = (max(int((g > 0).sum(-1).amax()), 1) for g in (g_own, g_other))
    per_row = 16 * k_own * k_other + 4 * (k_own + k_other) * width  # bytes of temporaries for one row
    chunk = max(1, mixed.numel() * mixed.element_size() // (CHUNK_FRACTION * per_row))
    flat_sums, flat_mixed = sums.view(n * experts), mixed.view(n * experts, width)
    for s in range(0, n * heads, chunk):
        rows = slice(s, s + chunk)
        (v_own, i_own), (v_other, i_other) = active_halves(g_own[rows]), active_halves(g_other[rows])  # [R, K]
        d_sums, d_mixed = compute(mask, v_own, i_own, v_other, i_other, acts, token[rows])
        where = (token[rows].unsqueeze(-1) * experts + i_own).flatten()  # [R*Ko] positions in [N*E]
        flat_sums.index_add_(0, where, d_sums.flatten().to(sums.dtype), alpha=-1)
        flat_mixed.index_add_(0, where, d_mixed.flatten(0, 1).to(mixed.dtype), alpha=-1)


def masked_moe_forward(
    experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, *, compute=side_corrections
) -> torch.Tensor:
    """Masked MonetMoVDE / MonetMoHDE forward. x [B, T, D]; g1, g2 [B, T, H, E]; mask [E, E] bool.

    `compute` evaluates a chunk of corrections (`side_corrections`, or the Triton kernel).
    """
    if bool(mask.all()):  # the whole group removed: exactly zero, not a rounding residue
        return x.new_zeros(x.shape)
    mask = mask.to(device=x.device, dtype=torch.bool)
    if hasattr(experts, "v11"):
        return _vertical(experts, x, g1, g2, mask, compute)
    return _horizontal(experts, x, g1, g2, mask, compute)


def _vertical(experts, x, g1, g2, mask, compute):
    """Same order as the dense forward (top half, drop a1's last use, bottom half): same peak memory."""
    a1, a2 = experts.activations(x)  # [B, T, E, m/2]
    r, p = g1.sum(-2), g1.transpose(-1, -2) @ (g2 @ a2)  # unmasked R [B, T, E], P [B, T, E, m/2]
    subtract_side(mask, g1.flatten(0, 1), g2.flatten(0, 1), sums=r, mixed=p, acts=a2.flatten(0, 1), compute=compute)
    top = experts.project_top(a1, r, p)
    del p
    c, q = g2.sum(-2), g2.transpose(-1, -2) @ (g1 @ a1)  # unmasked C, Q
    subtract_side(mask.T, g2.flatten(0, 1), g1.flatten(0, 1), sums=c, mixed=q, acts=a1.flatten(0, 1), compute=compute)
    del a1
    return torch.cat((top, experts.project_bottom(a2, c, q)), dim=-1)  # [B, T, D]


def _horizontal(experts, x, g1, g2, mask, compute):
    a = experts.activations(x)  # [B, T, E, m]
    c, q = g2.sum(-2), g2.transpose(-1, -2) @ (g1 @ a)  # unmasked C [B, T, E], Q [B, T, E, m]
    subtract_side(mask.T, g2.flatten(0, 1), g1.flatten(0, 1), sums=c, mixed=q, acts=a.flatten(0, 1), compute=compute)
    del a
    return experts.project(q, c)
