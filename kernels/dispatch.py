"""Chooses the masked-expert implementation for a tensor's device.

`RESECT_MASK_KERNEL` picks one explicitly: `auto` (default: Triton on CUDA tensors when triton
is installed, pure torch otherwise), `torch`, `triton` or `reference` (the naive full expansion,
small E only). An unavailable choice falls back to torch with one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from . import masked_torch

log = logging.getLogger(__name__)
KERNELS = ("auto", "torch", "triton", "reference")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _triton() -> Callable | None:
    try:
        from . import masked_triton
    except ImportError:
        return None
    return masked_triton.masked_moe_forward


def choose(x: torch.Tensor, kernel: str | None = None) -> Callable:
    """The implementation to run for input x under the requested (or environment) kernel name."""
    kernel = (kernel or os.environ.get("RESECT_MASK_KERNEL") or "auto").lower()
    if kernel not in KERNELS:
        _warn_once(f"RESECT_MASK_KERNEL={kernel!r} is not one of {', '.join(KERNELS)}; using torch")
        return masked_torch.masked_moe_forward
    if kernel == "reference":
        from .reference import naive_moe_forward

        return naive_moe_forward
    wants_triton = kernel == "triton" or (kernel == "auto" and x.is_cuda)
    if not wants_triton:
        return masked_torch.masked_moe_forward
    fast = _triton()
    if fast is None:
        if kernel == "triton":
            _warn_once("triton is not installed (pip install 'resect[triton]'); masked experts run in pure torch")
        return masked_torch.masked_moe_forward
    return fast


def masked_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked expert layer: x [B, T, D], g1, g2 [B, T, H, E], mask [E, E] bool (True = removed)."""
    return choose(x)(experts, x, g1, g2, mask)
