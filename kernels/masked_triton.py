"""Masked expert layer with a Triton kernel for the corrections (GPUs; CPU under TRITON_INTERPRET=1).

One program per (token, head) row of a chunk: it loads the row's active halves on both sides
(values and indices, see `masked_torch.active_halves`), gathers the mask block M[own][:, other]
of its Ko x Kt active pairs and the other side's activations at the active halves, and writes
the removed share of each own half: d_sums [R, Ko] and d_mixed [R, Ko, m], every element
(padding included), so a skipped write shows up in NaN-poisoned buffers. `masked_torch` then
scatter-subtracts them from the dense sums. Nothing of size E*E per token is formed.

`import triton` happens only here, so CPU installs without triton work.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import masked_torch


@triton.jit
def _side_corrections_kernel(
    v_own_ptr, i_own_ptr, v_other_ptr, i_other_ptr, token_ptr,  # [R, Ko], [R, Kt], [R]
    mask_ptr, mask_s0, mask_s1,  # [E, E] nonzero = removed (any strides), indexed [own, other]
    acts_ptr,  # [N, E, M] contiguous, the other side's activations
    d_sums_ptr, d_mixed_ptr,  # [R, Ko], [R, Ko, M]
    E, KO, KT, M,
    BKO: tl.constexpr, BKT: tl.constexpr, BM: tl.constexpr,
):
    row = tl.program_id(0)
    ko = tl.arange(0, BKO)
    kt = tl.arange(0, BKT)
    mm = tl.arange(0, BM)
    ok_o, ok_t, ok_m = ko < KO, kt < KT, mm < M
    v_own = tl.load(v_own_ptr + row * KO + ko, mask=ok_o, other=0.0).to(tl.float32)
    i_own = tl.load(i_own_ptr + row * KO + ko, mask=ok_o, other=0)
    v_other = tl.load(v_other_ptr + row * KT + kt, mask=ok_t, other=0.0).to(tl.float32)
    i_other = tl.load(i_other_ptr + row * KT + kt, mask=ok_t, other=0)
    token = tl.load(token_ptr + row)
    pair_ok = ok_o[:, None] & ok_t[None, :]
    block = tl.load(mask_ptr + i_own[:, None] * mask_s0 + i_other[None, :] * mask_s1, mask=pair_ok, other=0)
    w = tl.where(block != 0, v_own[:, None] * v_other[None, :], 0.0)  # [BKO, BKT] removed pair weights
    tl.store(d_sums_ptr + row * KO + ko, tl.sum(w, axis=1), mask=ok_o)
    acts_at = acts_ptr + (token * E + i_other[:, None]) * M + mm[None, :]
    acts = tl.load(acts_at, mask=ok_t[:, None] & ok_m[None, :], other=0.0).to(tl.float32)  # [BKT, BM]
    mixed = tl.sum(w[:, :, None] * acts[None, :, :], axis=1)  # [BKO, BM]
    tl.store(d_mixed_ptr + (row * KO + ko[:, None]) * M + mm[None, :], mixed, mask=ok_o[:, None] & ok_m[None, :])


def side_corrections(mask, v_own, i_own, v_other, i_other, acts, token):
    """Kernel version of `masked_torch.side_corrections`: float32 d_sums [R, Ko], d_mixed [R, Ko, m]."""
    rows, k_own = v_own.shape
    k_other, experts, width = v_other.shape[-1], acts.shape[1], acts.shape[-1]
    d_sums = torch.empty(rows, k_own, device=v_own.device, dtype=torch.float32)
    d_mixed = torch.empty(rows, k_own, width, device=v_own.device, dtype=torch.float32)
    flags = mask.view(torch.uint8) if mask.dtype == torch.bool else mask  # nonzero = removed
    _side_corrections_kernel[(rows,)](
        v_own.contiguous(), i_own.contiguous(), v_other.contiguous(), i_other.contiguous(), token.contiguous(),
        flags, flags.stride(0), flags.stride(1),
        acts.contiguous(),
        d_sums, d_mixed,
        experts, k_own, k_other, width,
        BKO=triton.next_power_of_2(k_own), BKT=triton.next_power_of_2(k_other), BM=triton.next_power_of_2(width),
    )
    return d_sums, d_mixed


masked_moe_forward = functools.partial(masked_torch.masked_moe_forward, compute=side_corrections, kernel="triton")
masked_torch.KERNELS["triton"] = {"compute": side_corrections}  # what the compiled graph's operator runs
