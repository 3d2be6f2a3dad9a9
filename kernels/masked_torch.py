"""Masked expert layer in pure torch: the production path on CPU (and the fallback anywhere).

Depends on torch only: edited checkpoints carry a verbatim copy of this file
(`monet_masking.py`) so that they load through `trust_remote_code=True` without resect.

With the mask M of a routing group ([E, E], True = removed) and w'[i,j] = w[i,j] (1 - M[i,j]),
the layer needs the row and column sums R, C and the mixed activations P, Q of w' (see
`MonetMoVDE.project`). Each is its unmasked value minus a correction over the removed pairs:

    dR[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j]        dC[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i]
    dP[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j] a2_j   dQ[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i] a1_i

g1 and g2 are sparse (per head only the halves above the routing threshold are > 0), so the
corrections only visit each token's active pairs: per head, the K1 active rows x K2 active
columns. Extra work ~ H * K1 * K2 * m per token and extra memory ~ N * K1 * (K2 + m) per head,
never [tokens, H, E*E]. The corrections are subtracted in place from the dense R, C, P, Q.

Shapes: N tokens (B*T flattened), H heads, E halves per side, K1/K2 active halves (padded to
the largest count over tokens and heads), m the activation width (m/2 for VD).
"""

from __future__ import annotations

import torch


def active_halves(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero gates of each (token, head), padded with zeros: values, indices [N, H, K].

    Padding entries carry value 0 (and some unused index), so they contribute nothing.
    """
    k = max(int((g > 0).sum(-1).amax()), 1)
    values, index = g.topk(k, dim=-1, sorted=False)
    return values, index


def removed_pair_weights(mask: torch.Tensor, v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
    """Weight of every removed active pair for one head: g1[i] g2[j] M[i, j].

    mask [E, E] bool; v1, i1 [N, K1]; v2, i2 [N, K2] -> [N, K1, K2].
    """
    block = mask[i1.unsqueeze(-1), i2.unsqueeze(-2)]  # [N, K1, K2] bool: the mask seen by this token
    return (v1.unsqueeze(-1) * v2.unsqueeze(-2)).masked_fill_(~block, 0)


def subtract_corrections(
    mask: torch.Tensor,
    g1: torch.Tensor,
    g2: torch.Tensor,
    *,
    c: torch.Tensor,
    q: torch.Tensor,
    a_rows: torch.Tensor,
    r: torch.Tensor | None = None,
    p: torch.Tensor | None = None,
    a_cols: torch.Tensor | None = None,
) -> None:
    """Subtract the removed pairs' share from c [N, E], q [N, E, m] (and r, p for VD) in place.

    g1, g2 [N, H, E]; a_rows [N, E, m] is mixed into q (a1, or a for HD); a_cols [N, E, m] into p.
    """
    n, heads, experts = g1.shape
    v1, i1 = active_halves(g1)  # [N, H, K1]
    v2, i2 = active_halves(g2)  # [N, H, K2]
    base = torch.arange(n, device=g1.device).unsqueeze(-1) * experts  # [N, 1]: row offset of each token
    tokens = torch.arange(n, device=g1.device).unsqueeze(-1)
    flat_c, flat_q = c.view(n * experts), q.view(n * experts, -1)
    for h in range(heads):  # one head at a time keeps the temporaries at N * K1 * K2
        w = removed_pair_weights(mask, v1[:, h], i1[:, h], v2[:, h], i2[:, h])  # [N, K1, K2]
        rows, cols = (i1[:, h] + base).flatten(), (i2[:, h] + base).flatten()  # [N*K1], [N*K2]
        flat_c.index_add_(0, cols, w.sum(-2).flatten(), alpha=-1)
        flat_q.index_add_(0, cols, (w.transpose(-1, -2) @ a_rows[tokens, i1[:, h]]).flatten(0, 1), alpha=-1)
        if r is not None:
            r.view(n * experts).index_add_(0, rows, w.sum(-1).flatten(), alpha=-1)
        if p is not None:
            p.view(n * experts, -1).index_add_(0, rows, (w @ a_cols[tokens, i2[:, h]]).flatten(0, 1), alpha=-1)


def masked_moe_forward(
    experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, *, subtract=subtract_corrections
) -> torch.Tensor:
    """Masked MonetMoVDE / MonetMoHDE forward. x [B, T, D]; g1, g2 [B, T, H, E]; mask [E, E] bool.

    `subtract` computes the corrections (this module's torch loop, or the Triton kernel).
    """
    if bool(mask.all()):  # the whole group removed: exactly zero, not a rounding residue
        return x.new_zeros(x.shape)
    mask = mask.to(device=x.device, dtype=torch.bool)
    if hasattr(experts, "v11"):
        return _vertical(experts, x, g1, g2, mask, subtract)
    return _horizontal(experts, x, g1, g2, mask, subtract)


def _vertical(experts, x, g1, g2, mask, subtract):
    a1, a2 = experts.activations(x)  # [B, T, E, m/2]
    p = g1.transpose(-1, -2) @ (g2 @ a2)  # unmasked P, Q, R, C exactly as the dense forward
    q = g2.transpose(-1, -2) @ (g1 @ a1)
    r, c = g1.sum(-2), g2.sum(-2)  # [B, T, E]
    flat = lambda t: t.flatten(0, 1)  # noqa: E731  [B, T, ...] -> [N, ...]
    subtract(mask, flat(g1), flat(g2), c=c, q=q, a_rows=flat(a1), r=r, p=p, a_cols=flat(a2))
    return experts.project(a1, a2, r, c, p, q)


def _horizontal(experts, x, g1, g2, mask, subtract):
    a = experts.activations(x)  # [B, T, E, m]
    q = g2.transpose(-1, -2) @ (g1 @ a)
    c = g2.sum(-2)
    subtract(mask, g1.flatten(0, 1), g2.flatten(0, 1), c=c, q=q, a_rows=a.flatten(0, 1))
    return experts.project(q, c)
