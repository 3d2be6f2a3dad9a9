"""Masked expert layer with a fused numba kernel for the corrections (CPU; float32, bfloat16, float16).

Same math and order as `masked_torch` (dense sums first, then the removed share subtracted in
place), but each side's correction is one loop instead of dozens of small torch ops. For every
token (one per thread, so no two threads write the same rows) and head, it marks the other
side's active halves in a bitset (E bits); for each active own half a, the AND of that bitset with
row a of the bit-packed mask yields exactly its removed active partners b, and each one subtracts
g_own[a] g_other[b] from sums[a] and g_own[a] g_other[b] acts_b from mixed[a]. The active halves
of both gates (those with a removed partner) are listed once per forward and serve both sides.
The work is ~ H * K_own * (E / 64 + removed active partners * m) per token; nothing of size E*E
per token is formed. Half-precision layers
are corrected in float32 (gates and the other side's activations read as float32, the corrections
added to the half-precision sums at the end). Other devices and forwards that track gradients fall
back to `masked_torch`.

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
def _compact(g, live):  # pragma: no cover - compiled
    """The active halves of every (token, head) row of g [N, H, E] that have a removed partner
    (live [E]): indices [N, H, K] int32 and gates [N, H, K] float32, counts [N, H]; K the largest count."""
    n, heads, experts = g.shape
    counts = np.zeros((n, heads), np.int32)
    for t in range(n):
        for h in range(heads):
            c = 0
            for e in range(experts):
                if g[t, h, e] > 0 and live[e]:
                    c += 1
            counts[t, h] = c
    k = max(1, counts.max()) if n else 1
    index = np.zeros((n, heads, k), np.int32)
    gate = np.zeros((n, heads, k), np.float32)
    for t in range(n):
        for h in range(heads):
            c = 0
            for e in range(experts):
                if g[t, h, e] > 0 and live[e]:
                    index[t, h, c] = e
                    gate[t, h, c] = g[t, h, e]
                    c += 1
    return index, gate, counts


@numba.njit(cache=True, nogil=True)
def _token(t, bits, own, other, acts, sums, mixed):  # pragma: no cover - compiled
    """Subtract the removed share from the rows of token t (all heads); see `_serial` for the arguments."""
    i_own, v_own, n_own = own
    i_other, v_other, n_other = other
    heads, width, words, one = i_own.shape[1], acts.shape[2], bits.shape[1], np.uint64(1)
    present = np.empty(words, np.uint64)  # the other side's active halves of this (token, head), as bits
    weight = np.zeros(bits.shape[0], np.float32)  # their gates, by half
    acc = np.empty(width, np.float32)
    for h in range(heads):
        present[:] = 0
        for q in range(n_other[t, h]):
            e = i_other[t, h, q]
            present[e >> 6] |= one << np.uint64(e & 63)
            weight[e] = v_other[t, h, q]
        for p in range(n_own[t, h]):
            a, gate = i_own[t, h, p], v_own[t, h, p]
            total = np.float32(0.0)
            acc[:] = 0.0
            for k in range(words):
                word = bits[a, k] & present[k]  # removed pairs (a, b) with b active
                while word:
                    b = k * 64 + _lowest_bit(word)
                    word &= word - one
                    w = weight[b]
                    total += w
                    for c in range(width):
                        acc[c] += w * acts[t, b, c]
            if total != 0.0:
                sums[t, a] -= gate * total
                for c in range(width):
                    mixed[t, a, c] -= gate * acc[c]


@numba.njit(cache=True, nogil=True)
def _serial(bits, own, other, acts, sums, mixed):  # pragma: no cover - compiled
    """bits [E, W] uint64: the mask indexed [own, other], row a packed (bit b % 64 of word b // 64 set
    when (a, b) is removed); own, other: `_compact` lists of the two gates (halves with a removed
    partner only); acts [N, E, m] the other side's activations; sums [N, E], mixed [N, E, m]
    updated in place."""
    for t in range(acts.shape[0]):
        _token(t, bits, own, other, acts, sums, mixed)


@numba.njit(cache=True, nogil=True, parallel=True)
def _parallel(bits, own, other, acts, sums, mixed):  # pragma: no cover - compiled
    """`_serial` with tokens spread over threads: a token's rows are written by one thread only."""
    for t in numba.prange(acts.shape[0]):
        _token(t, bits, own, other, acts, sums, mixed)


def _rows(g: torch.Tensor) -> np.ndarray:
    """Gates [..., H, E] as float32 [N, H, E] (a view when they already are)."""
    return g.detach().reshape(-1, *g.shape[-2:]).float().contiguous().numpy()


def _bits(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mask packed for each side (indexed [own, other]) and each side's halves with a removed partner."""
    rows = mask.numpy()
    return packed(rows), packed(rows.T), rows.any(1), rows.any(0)


def packed(mask: np.ndarray) -> np.ndarray:
    """[E, E] bool -> [E, ceil(E / 64)] uint64, bit j % 64 of word j // 64 of row i = mask[i, j]."""
    pad = -mask.shape[1] % 64
    padded = np.pad(mask, ((0, 0), (0, pad))) if pad else mask
    return np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little")).view("<u8")


PARALLEL_TOKENS = 64  # fewer tokens (a decoding step) run on one thread: waking a pool costs more than it saves


class FusedCorrections:
    """`masked_torch.SparseCorrections` with each side fused into one numba loop.

    g1, g2 [N, H, E] float32 CPU gates, mask [E, E] bool. Uses as many threads as torch does
    (one: a plain loop, so no thread pool competes with torch's).
    """

    def __init__(self, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor):
        experts = g1.shape[-1]
        if mask.shape != (experts, experts) or g2.shape != g1.shape:  # the loop does not check bounds
            raise ValueError(f"expected gates [..., H, E] and mask [E, E] with E={experts}, got {tuple(g2.shape)}, {tuple(mask.shape)}")
        self.rows, self.cols, live1, live2 = masked_torch.prepared(mask, "numba", _bits)
        # Each gate's active halves with a removed partner, listed once for both sides, and once for
        # the layers of a routing group, which get the same gate tensors and the same mask.
        self.h1 = masked_torch.prepared(g1, ("numba", id(mask)), lambda g: _compact(_rows(g), live1))
        self.h2 = masked_torch.prepared(g2, ("numba", id(mask)), lambda g: _compact(_rows(g), live2))

    def subtract(self, column: bool, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, budget: int = 0) -> None:
        """Row side (R, P; acts = a2 [N, E, m]) or column side (C, Q; acts = a1): sums [N, E], mixed [N, E, m] in place."""
        bits, own, other = (self.cols, self.h2, self.h1) if column else (self.rows, self.h1, self.h2)
        rows = (own[0].shape[0], bits.shape[0])
        if tuple(sums.shape) != rows or mixed.shape[:2] != rows or acts.shape != mixed.shape:
            raise ValueError(f"expected sums [N, E], mixed and acts [N, E, m] with (N, E)={rows}")
        threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        kernel = _serial
        if threads > 1 and rows[0] >= PARALLEL_TOKENS:
            numba.set_num_threads(threads)
            kernel = _parallel
        if sums.dtype == torch.float32:
            kernel(bits, own, other, acts.contiguous().numpy(), sums.numpy(), mixed.numpy())
            return
        # half precision: the corrections (negative) in float32 buffers, then added once
        d_sums, d_mixed = torch.zeros(sums.shape, dtype=torch.float32), torch.zeros(mixed.shape, dtype=torch.float32)
        kernel(bits, own, other, acts.float().contiguous().numpy(), d_sums.numpy(), d_mixed.numpy())
        sums.add_(d_sums.to(sums.dtype))
        mixed.add_(d_mixed.to(mixed.dtype))


DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supported(experts, x: torch.Tensor, *gates: torch.Tensor) -> bool:
    """Whether the fused kernel can run: CPU tensors of one float dtype, no gradient to track."""
    params = list(experts.parameters())
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    same = all(t.device.type == "cpu" and t.dtype == x.dtype for t in (x, *params))
    return not grad and same and x.dtype in DTYPES and all(g.device.type == "cpu" and g.dtype in (x.dtype, torch.float32) for g in gates)


_fused = functools.partial(masked_torch.masked_moe_forward, corrections=FusedCorrections, kernel="numba")
masked_torch.KERNELS["numba"] = {"corrections": FusedCorrections}  # what the compiled graph's operator runs


def masked_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked expert layer (see `masked_torch.masked_moe_forward`) with the fused corrections.

    x [B, T, D], g1, g2 [B, T, H, E], mask [E, E] bool; other devices, or a forward that tracks
    gradients, run in pure torch.
    """
    if not supported(experts, x, g1, g2):
        return masked_torch.masked_moe_forward(experts, x, g1, g2, mask)
    return _fused(experts, x, g1, g2, mask)
