"""Routing-statistics accumulation: sums over tokens of expert routing scores, never expanded.

Expert (i, j) of a routing group has the per-token weight `w_t[i, j] = sum_h g1[t,h,i] g2[t,h,j]`.
Its sum over tokens is an E x E matrix product per head, and all heads fold into ONE product by
stacking heads along the contraction: `sum_t w_t = G1^T G2` with `G = g.reshape(N*H, E)`.

For the token-level Pearson correlation with a score y_t we also need `sum_t w_t y_t` (the same
product with G1 scaled by y) and `sum_t w_t^2`, which expands over head pairs:

    w_t[i,j]^2 = sum_{h,h'} (g1[t,h,i] g1[t,h',i]) (g2[t,h,j] g2[t,h',j])

The summand is symmetric in (h, h'), so only the H(H+1)/2 pairs h <= h' are formed, off-diagonal
ones counted twice, again stacked along the contraction into one matrix product. Peak extra
memory is `chunk * H(H+1)/2 * E` floats per side (chunked over tokens), never `[N, H, E*E]`.

`expanded_routing_sums` is the reference that forms `[N, H, E, E]` explicitly (the approach of
the published Monet README), kept for tests and the benchmark.

Shapes: N counted tokens, H router heads, E halves per side.
"""

from __future__ import annotations

import torch

PAIR_CHUNK_TOKENS = 32  # tokens per chunk of the head-pair products (bounds their temporaries to a few 32*H(H+1)/2*E floats)


def routing_sum(g1: torch.Tensor, g2: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t weight_t * w_t as [E, E]. g1, g2: [N, H, E]; weight: [N] or None (all ones)."""
    n, h, e = g1.shape
    a = g1 if weight is None else g1 * weight.to(g1.dtype)[:, None, None]
    return a.reshape(n * h, e).transpose(0, 1) @ g2.reshape(n * h, e)  # [E, N*H] @ [N*H, E]


def head_pairs(heads: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (h, h') with h <= h' and their multiplicity (1 on the diagonal, 2 off it)."""
    first, second = torch.triu_indices(heads, heads, device=device)
    return first, second, torch.where(first == second, 1.0, 2.0).to(device)


def routing_square_sum(g1: torch.Tensor, g2: torch.Tensor, *, chunk: int = PAIR_CHUNK_TOKENS) -> torch.Tensor:
    """sum_t w_t^2 as [E, E] from head-pair products. g1, g2: [N, H, E]."""
    n, h, e = g1.shape
    first, second, mult = head_pairs(h, g1.device)
    out = g1.new_zeros(e, e)
    for start in range(0, n, chunk):
        a1, a2 = g1[start : start + chunk], g2[start : start + chunk]
        p1 = a1[:, first] * a1[:, second] * mult.to(a1.dtype)[:, None]  # [n, P, E]
        p2 = a2[:, first] * a2[:, second]  # [n, P, E]
        out += p1.reshape(-1, e).transpose(0, 1) @ p2.reshape(-1, e)
    return out


def expanded_routing_sums(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Reference: form w_t for every token as [N, H, E, E], sum heads then tokens -> [E, E]."""
    w = g1.unsqueeze(-1) * g2.unsqueeze(-2)  # [N, H, E, E]
    return w.sum(1).sum(0)


__all__ = ["routing_sum", "routing_square_sum", "head_pairs", "expanded_routing_sums"]
