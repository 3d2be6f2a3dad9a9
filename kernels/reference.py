"""Reference masked expert layers, same signature as `masked_moe_forward`.

- `naive_moe_forward` evaluates the definition literally: every expert E_ij(x) and its weight
  w[i,j] = sum_h g1[h,i] g2[h,j], masked, summed. Memory ~ N * E * E * D: tests only, small E.
- `expanded_moe_forward` is the full-expansion method: it materialises the masked product
  w' [N, E*E] (heads summed) and contracts it with the activations. This is the memory- and
  compute-hungry way the product has been masked before; the benchmark measures it.
"""

from __future__ import annotations

import torch


def pair_weights(g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w'[n, i, j] = sum_h g1[n,h,i] g2[n,h,j] (1 - M[i,j]). g1, g2 [N, H, E] -> [N, E, E].

    M is bool (True = removed) or floating point (the removed fraction of each expert)."""
    w = torch.einsum("nhi,nhj->nij", g1, g2)
    if mask.is_floating_point():
        return w * (1 - mask.to(device=w.device, dtype=w.dtype))
    return w.masked_fill_(mask.to(device=w.device, dtype=torch.bool), 0)


def naive_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_ij w'[i,j] E_ij(x), each expert computed on its own. x [B, T, D] -> [B, T, D]."""
    shape = x.shape
    g1, g2 = g1.to(x.dtype), g2.to(x.dtype)
    w = pair_weights(g1.flatten(0, 1), g2.flatten(0, 1), mask)  # [N, E, E]
    x = x.reshape(-1, shape[-1])
    if hasattr(experts, "v11"):
        out = _naive_vertical(experts, x, w)
    else:
        out = _naive_horizontal(experts, x, w)
    return out.view(shape)


def _blocks(linear: torch.nn.Linear, experts: int) -> torch.Tensor:
    """Weight of a Linear(E*k, out) as per-half blocks [E, out, k]."""
    out, width = linear.weight.shape
    return linear.weight.view(out, experts, width // experts).permute(1, 0, 2)


def _naive_vertical(mod, x, w):
    e = mod.experts
    a1, a2 = mod.activations(x)  # [N, E, m/2]
    by_half = lambda lin, a: torch.einsum("eok,nek->neo", _blocks(lin, e), a)  # noqa: E731  V_i a_i: [N, E, D/2]
    # top_ij = V11_i a1_i + V12_i a2_j + b1_i ; bottom_ij = V21_j a1_i + V22_j a2_j + b2_j   [N, E, E, D/2]
    v12 = torch.einsum("iok,njk->nijo", _blocks(mod.v12, e), a2)
    top = (by_half(mod.v11, a1) + mod.b1).unsqueeze(2) + v12
    v21 = torch.einsum("jok,nik->nijo", _blocks(mod.v21, e), a1)
    bottom = v21 + (by_half(mod.v22, a2) + mod.b2).unsqueeze(1)
    experts_out = torch.cat((top, bottom), dim=-1)  # [N, E, E, D]: E_ij(x)
    return torch.einsum("nij,nijd->nd", w, experts_out)


def _naive_horizontal(mod, x, w):
    e = mod.experts
    a = mod.activations(x)  # [N, E, m]
    # E_ij = V_j a_i + b_j   [N, E, E, D]
    experts_out = torch.einsum("jok,nik->nijo", _blocks(mod.v, e), a) + mod.b
    return torch.einsum("nij,nijd->nd", w, experts_out)


def expanded_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full expansion: w' [B, T, E, E] materialised, then R, C, P, Q by contraction."""
    g1, g2 = g1.to(x.dtype), g2.to(x.dtype)
    w = pair_weights(g1.flatten(0, 1), g2.flatten(0, 1), mask).view(*g1.shape[:2], *mask.shape)  # [B, T, E, E]
    r, c = w.sum(-1), w.sum(-2)  # [B, T, E]
    if hasattr(experts, "v11"):
        a1, a2 = experts.activations(x)
        return experts.project(a1, a2, r, c, w @ a2, w.transpose(-1, -2) @ a1)
    a = experts.activations(x)
    return experts.project(w.transpose(-1, -2) @ a, c)
