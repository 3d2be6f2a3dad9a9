"""Masked expert layer with a Triton kernel for the corrections (GPUs; CPU under TRITON_INTERPRET=1).

One program per (token, head): it gathers the token's active halves (values and indices of g1
and g2, see `masked_torch.active_halves`), the mask block M[idx1][:, idx2] of its K1 x K2 active
pairs, and contracts them with the gathered activations. It writes compact per-(token, head)
corrections dR [N, H, K1], dC [N, H, K2], dP [N, H, K1, m], dQ [N, H, K2, m], every element
(padding included) so a skipped write shows up; torch then scatter-subtracts them from the
dense R, C, P, Q. Nothing of size E*E per token is formed.

`import triton` happens only here, so CPU installs without triton work.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import masked_torch


@triton.jit
def _pair_corrections_kernel(
    v1_ptr, i1_ptr, v2_ptr, i2_ptr,  # [N, H, K1], [N, H, K2] (contiguous)
    mask_ptr,  # [E, E] uint8, 1 = removed
    rows_ptr, cols_ptr,  # activations [N, E, M]: rows mixed into dQ, cols into dP
    dr_ptr, dc_ptr, dp_ptr, dq_ptr,  # outputs
    H, E, K1, K2, M,
    HAS_P: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr, BM: tl.constexpr,
):
    n = tl.program_id(0)
    h = tl.program_id(1)
    ka = tl.arange(0, BK1)
    kb = tl.arange(0, BK2)
    mm = tl.arange(0, BM)
    ok_a, ok_b, ok_m = ka < K1, kb < K2, mm < M
    off1 = (n * H + h) * K1
    off2 = (n * H + h) * K2
    v1 = tl.load(v1_ptr + off1 + ka, mask=ok_a, other=0.0).to(tl.float32)
    i1 = tl.load(i1_ptr + off1 + ka, mask=ok_a, other=0)
    v2 = tl.load(v2_ptr + off2 + kb, mask=ok_b, other=0.0).to(tl.float32)
    i2 = tl.load(i2_ptr + off2 + kb, mask=ok_b, other=0)
    pair_ok = ok_a[:, None] & ok_b[None, :]
    block = tl.load(mask_ptr + i1[:, None] * E + i2[None, :], mask=pair_ok, other=0)  # [BK1, BK2]
    w = tl.where(block != 0, v1[:, None] * v2[None, :], 0.0)  # removed weight of each active pair
    tl.store(dr_ptr + off1 + ka, tl.sum(w, axis=1), mask=ok_a)
    tl.store(dc_ptr + off2 + kb, tl.sum(w, axis=0), mask=ok_b)
    a_rows = tl.load(rows_ptr + (n * E + i1[:, None]) * M + mm[None, :], mask=ok_a[:, None] & ok_m[None, :], other=0.0)
    dq = tl.sum(w[:, :, None] * a_rows.to(tl.float32)[:, None, :], axis=0)  # [BK2, BM]
    tl.store(dq_ptr + (off2 + kb[:, None]) * M + mm[None, :], dq, mask=ok_b[:, None] & ok_m[None, :])
    if HAS_P:
        a_cols = tl.load(cols_ptr + (n * E + i2[:, None]) * M + mm[None, :], mask=ok_b[:, None] & ok_m[None, :], other=0.0)
        dp = tl.sum(w[:, :, None] * a_cols.to(tl.float32)[None, :, :], axis=1)  # [BK1, BM]
        tl.store(dp_ptr + (off1 + ka[:, None]) * M + mm[None, :], dp, mask=ok_a[:, None] & ok_m[None, :])


def pair_corrections(mask, v1, i1, v2, i2, a_rows, a_cols=None):
    """Run the kernel. Returns float32 dR [N,H,K1], dC [N,H,K2], dP [N,H,K1,m] | None, dQ [N,H,K2,m]."""
    n, heads, k1 = v1.shape
    k2, m, experts = v2.shape[-1], a_rows.shape[-1], mask.shape[0]
    f32 = dict(device=v1.device, dtype=torch.float32)
    dr, dc = torch.empty(n, heads, k1, **f32), torch.empty(n, heads, k2, **f32)
    dq = torch.empty(n, heads, k2, m, **f32)
    dp = torch.empty(n, heads, k1, m, **f32) if a_cols is not None else dq  # dq is a placeholder when unused
    _pair_corrections_kernel[(n, heads)](
        v1.contiguous(), i1.contiguous(), v2.contiguous(), i2.contiguous(),
        mask.to(torch.uint8).contiguous(),
        a_rows.contiguous(), (a_cols if a_cols is not None else a_rows).contiguous(),
        dr, dc, dp, dq,
        heads, experts, k1, k2, m,
        HAS_P=a_cols is not None,
        BK1=triton.next_power_of_2(k1), BK2=triton.next_power_of_2(k2), BM=triton.next_power_of_2(m),
    )
    return dr, dc, (dp if a_cols is not None else None), dq


def subtract_corrections(mask, g1, g2, *, c, q, a_rows, r=None, p=None, a_cols=None) -> None:
    """Same contract as `masked_torch.subtract_corrections`, corrections computed by the kernel."""
    n, heads, experts = g1.shape
    v1, i1 = masked_torch.active_halves(g1)  # [N, H, K1]
    v2, i2 = masked_torch.active_halves(g2)
    dr, dc, dp, dq = pair_corrections(mask, v1, i1, v2, i2, a_rows, a_cols if p is not None else None)
    base = torch.arange(n, device=g1.device).view(n, 1, 1) * experts
    rows, cols = (i1 + base).flatten(), (i2 + base).flatten()  # [N*H*K]: flat positions in [N*E]
    c.view(-1).index_add_(0, cols, dc.flatten().to(c.dtype), alpha=-1)
    q.view(n * experts, -1).index_add_(0, cols, dq.flatten(0, 2).to(q.dtype), alpha=-1)
    if r is not None:
        r.view(-1).index_add_(0, rows, dr.flatten().to(r.dtype), alpha=-1)
    if p is not None:
        p.view(n * experts, -1).index_add_(0, rows, dp.flatten(0, 2).to(p.dtype), alpha=-1)


masked_moe_forward = functools.partial(masked_torch.masked_moe_forward, subtract=subtract_corrections)
