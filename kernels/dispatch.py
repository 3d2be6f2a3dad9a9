"""Chooses the masked-expert implementation for a tensor's device.

A model's expert layers carry their kernel (`config.mask_kernel`, the way transformers carries
`config._attn_implementation`; `RESECT_MASK_KERNEL` overrides it when the model is built):
`auto` (default: Triton on CUDA tensors when triton is installed, the numba kernel on CPU when
numba is installed, pure torch otherwise), `torch`, `numba`, `triton` or `reference` (the naive
full expansion, small E only). A requested kernel that is not installed falls back to pure torch
with one warning. Inputs that need a gradient always take pure torch (the only path with a backward).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from . import masked_torch

log = logging.getLogger(__name__)
KERNELS = ("auto", "torch", "numba", "triton", "reference")
INSTALL = {"numba": "pip install 'resect[fast]'", "triton": "pip install 'resect[triton]'"}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _accelerated(name: str) -> Callable | None:
    """masked_moe_forward of the `numba` or `triton` module, or None when its package is missing."""
    try:
        if name == "numba":
            from . import masked_numba as module
        else:
            from . import masked_triton as module
    except ImportError:
        return None
    return module.masked_moe_forward


def choose(x: torch.Tensor, kernel: str | None = None) -> Callable:
    """The implementation to run for input x under the requested kernel name (None: the
    environment's RESECT_MASK_KERNEL, else auto)."""
    kernel = (kernel or os.environ.get("RESECT_MASK_KERNEL") or "auto").lower()
    if kernel not in KERNELS:
        _warn_once(f"RESECT_MASK_KERNEL={kernel!r} is not one of {', '.join(KERNELS)}; using torch")
        return masked_torch.masked_moe_forward
    if kernel == "reference":
        from .reference import naive_moe_forward

        return naive_moe_forward
    if kernel == "torch":
        return masked_torch.masked_moe_forward
    wanted = kernel if kernel != "auto" else ("triton" if x.is_cuda else "numba" if x.device.type == "cpu" else "torch")
    if wanted == "torch":
        return masked_torch.masked_moe_forward
    fast = _accelerated(wanted)
    if fast is None:
        if kernel != "auto":
            _warn_once(f"{wanted} is not installed ({INSTALL[wanted]}); masked experts run in pure torch")
        return masked_torch.masked_moe_forward
    return fast


def masked_moe_forward(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked expert layer: x [B, T, D], g1, g2 [B, T, H, E], mask [E, E] bool (True = removed),
    or floating point (removed fractions: pure torch, the one implementation that takes them).
    The kernel is the layer's own (`experts.mask_kernel`)."""
    if mask.is_floating_point() or (torch.is_grad_enabled() and (x.requires_grad or g1.requires_grad or g2.requires_grad)):
        return masked_torch.masked_moe_forward(experts, x, g1, g2, mask)
    return choose(x, getattr(experts, "mask_kernel", None))(experts, x, g1, g2, mask)
