"""Masked expert layer with a fused numba kernel for the corrections (CPU, float32).

Same math and order as `masked_torch` (dense sums first, then the removed share subtracted in
place), but each side's correction is one loop instead of dozens of small torch ops. For every
token (one per thread, so no two threads write the same rows) and head, it marks the other
side's active halves in a bitset (E bits); for each active own half a, the AND of that bitset with
row a of the bit-packed mask yields exactly its removed active partners b, and each one subtracts
g_own[a] g_other[b] from sums[a] and g_own[a] g_other[b] acts_b from mixed[a]. The work is
~ H * K_own * (E / 64 + removed active partners * m) per token; nothing of size E*E per token is
formed, nothing is allocated beyond a bitset and an accumulator per token. Other dtypes, other
devices, and forwards that track gradients fall back to `masked_torch`.

`import numba` happens only here (the optional extra `resect[fast]`); compiled code is cached on
disk (`cache=True`), so only the first call on a machine pays for compilation (a few seconds).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from . import masked_torch

# Index of the lowest set bit of a 64-bit word: isolate it (w & -w), multiply by a de Bruijn
# sequence and look the top 6 bits up. The table is built (and checked) here.
_DE_BRUIJN = 0x03F79D71B4CB0A89
_LOWEST_BIT = np.zeros(64, np.int64)
for _i in range(64):
    _LOWEST_BIT[(((1 << _i) * _DE_BRUIJN) % (1 << 64)) >> 58] = _i
assert sorted(_LOWEST_BIT.tolist()) == list(range(64)), "not a de Bruijn sequence"
_DE_BRUIJN = np.uint64(_DE_BRUIJN)


@numba.njit(inline="always")
def _lowest_bit(word):  # pragma: no cover - compiled
    return _LOWEST_BIT[((word & (~word + np.uint64(1))) * _DE_BRUIJN) >> np.uint64(58)]


@numba.njit(cache=True, nogil=True)
def _token(t, bits, live_own, live_other, g_own, g_other, acts, sums, mixed):  # pragma: no cover - compiled
    """Subtract the removed share from the rows of token t (all heads); see `_serial` for the arguments."""
    heads, experts = g_own.shape[1], g_own.shape[2]
    width, words, one = acts.shape[2], bits.shape[1], np.uint64(1)
    present = np.empty(words, np.uint64)  # the other side's active halves of this (token, head), as bits
    acc = np.empty(width, np.float32)
    for h in range(heads):
        present[:] = 0
        for e in range(experts):
            if g_other[t, h, e] > 0 and live_other[e]:
                present[e >> 6] |= one << np.uint64(e & 63)
        for a in range(experts):
            gate = g_own[t, h, a]
            if gate <= 0 or not live_own[a]:
                continue
            total = np.float32(0.0)
            acc[:] = 0.0
            for k in range(words):
                word = bits[a, k] & present[k]  # removed pairs (a, b) with b active
                while word:
                    b = k * 64 + _lowest_bit(word)
                    word &= word - one
                    w = g_other[t, h, b]
                    total += w
                    for c in range(width):
                        acc[c] += w * acts[t, b, c]
            if total != 0.0:
                sums[t, a] -= gate * total
                for c in range(width):
                    mixed[t, a, c] -= gate * acc[c]


@numba.njit(cache=True, nogil=True)
def _serial(bits, live_own, live_other, g_own, g_other, acts, sums, mixed):  # pragma: no cover - compiled
    """bits [E, W] uint64: the mask indexed [own, other], row a packed (bit b % 64 of word b // 64 set
    when (a, b) is removed); live_own, live_other [E] bool: halves with a removed partner; g_own,
    g_other [N, H, E]; acts [N, E, m] the other side's activations; sums [N, E], mixed [N, E, m]
    updated in place."""
    for t in range(g_own.shape[0]):
        _token(t, bits, live_own, live_other, g_own, g_other, acts, sums, mixed)


@numba.njit(cache=True, nogil=True, parallel=True)
def _parallel(bits, live_own, live_other, g_own, g_other, acts, sums, mixed):  # pragma: no cover - compiled
    """`_serial` with tokens spread over threads: a token's rows are written by one thread only."""
    for t in numba.prange(g_own.shape[0]):
        _token(t, bits, live_own, live_other, g_own, g_other, acts, sums, mixed)


def packed(mask: np.ndarray) -> np.ndarray:
    """[E, E] bool -> [E, ceil(E / 64)] uint64, bit j % 64 of word j // 64 of row i = mask[i, j]."""
    pad = -mask.shape[1] % 64
    padded = np.pad(mask, ((0, 0), (0, pad))) if pad else mask
    return np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little")).view("<u8")


class FusedCorrections:
    """`masked_torch.SparseCorrections` with each side fused into one numba loop.

    g1, g2 [N, H, E] float32 CPU gates, mask [E, E] bool. Uses as many threads as torch does
    (one: a plain loop, so no thread pool competes with torch's).
    """

    def __init__(self, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor):
        experts = g1.shape[-1]
        if mask.shape != (experts, experts) or g2.shape != g1.shape:  # the loop does not check bounds
            raise ValueError(f"expected gates [N, H, E] and mask [E, E] with E={experts}, got {tuple(g2.shape)}, {tuple(mask.shape)}")
        self.g1, self.g2 = g1.contiguous().numpy(), g2.contiguous().numpy()
        rows = mask.numpy()
        self.rows, self.cols = packed(rows), packed(rows.T)  # indexed [own, other] for each side
        self.live1, self.live2 = rows.any(1), rows.any(0)

    def subtract(self, column: bool, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, budget: int = 0) -> None:
        """Row side (R, P; acts = a2 [N, E, m]) or column side (C, Q; acts = a1): sums [N, E], mixed [N, E, m] in place."""
        bits, live_own, live_other = (self.cols, self.live2, self.live1) if column else (self.rows, self.live1, self.live2)
        g_own, g_other = (self.g2, self.g1) if column else (self.g1, self.g2)
        rows = (g_own.shape[0], g_own.shape[2])
        if tuple(sums.shape) != rows or mixed.shape[:2] != rows or acts.shape != mixed.shape:
            raise ValueError(f"expected sums [N, E], mixed and acts [N, E, m] with (N, E)={rows}")
        threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        kernel = _serial
        if threads > 1:
            numba.set_num_threads(threads)
            kernel = _parallel
        kernel(bits, live_own, live_other, g_own, g_other, acts.contiguous().numpy(), sums.numpy(), mixed.numpy())


def supported(experts, x: torch.Tensor, *gates: torch.Tensor) -> bool:
    """Whether the fused kernel can run: CPU float32 weights and tensors, no gradient to track."""
    params = list(experts.parameters())
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return not grad and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *gates, *params))


_fused = functools.partial(masked_torch.masked_moe_forward, corrections=FusedCorrections)


def masked_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked expert layer (see `masked_torch.masked_moe_forward`) with the fused corrections.

    x [B, T, D], g1, g2 [B, T, H, E], mask [E, E] bool; other devices, dtypes, or a forward that
    tracks gradients run in pure torch.
    """
    if not supported(experts, x, g1, g2):
        return masked_torch.masked_moe_forward(experts, x, g1, g2, mask)
    return _fused(experts, x, g1.detach(), g2.detach(), mask)
