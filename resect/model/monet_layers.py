"""Monet's router and expert layers (arXiv 2412.04139): what replaces a transformer's MLP.

The published tensor names and shapes, the same router (BatchNorm per head, the Phi^-1
threshold, softmax of raw logits over the selected halves) and the same expert sums, computed
head by head so the 262,144-wide product is never formed. Self-contained apart from torch and the
masked-expert path: edited checkpoints carry a copy of this file (with modeling_monet.py) for
`trust_remote_code=True`.

Notation (shape comments): B batch, T tokens, H router heads (`moe_heads`), E halves per side
(`moe_experts`), m expert width (`moe_dim`), D hidden size.
"""

from __future__ import annotations

import os
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import masked_moe_forward  # resect:export-import
from .configuration_monet import MonetConfig

BN_EPS = 1e-5
NEG_INF = -1e10


def relu2(x: torch.Tensor) -> torch.Tensor:
    """relu(x)**2 in place on a fresh projection output (saves two full-width temporaries);
    out of place when autograd records (training), which needs the relu output."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.relu(x).square()
    return F.relu(x, inplace=True).square_()


def routing_threshold(topk: int, experts: int) -> float:
    """sigma = Phi^-1(1 - topk / E): the normalised logit above which a half is selected."""
    return NormalDist().inv_cdf(1.0 - topk / experts)


class MonetRouter(nn.Module):
    """Two product-key routers: per head, a softmax over the halves whose normalised logit
    reaches min(max, sigma). Runs in float32 whatever the model dtype.

    The BatchNorm statistics that normalise the logits are fixed: in eval mode always, and in
    train mode too unless the router's own weights are trained (then they follow the batches, as
    in pretraining). A fine-tune of anything else (a LoRA adapter, the experts) never moves the
    routing, so an adapter saved from it reproduces the model it was trained on.
    `track_statistics` overrides that choice (True: live in train mode; False: never)."""

    def __init__(self, config: MonetConfig):
        super().__init__()
        self.heads, self.experts = config.moe_heads, config.moe_experts
        self.w1 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.w2 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.norm1 = nn.BatchNorm1d(self.heads, affine=False, eps=BN_EPS)
        self.norm2 = nn.BatchNorm1d(self.heads, affine=False, eps=BN_EPS)
        self.sigma = routing_threshold(config.moe_topk, config.moe_experts)
        self.track_statistics: bool | None = None

    def live_statistics(self) -> bool:
        """Whether this forward normalises with the batch's statistics (and updates the running ones)."""
        if not self.training:
            return False
        if self.track_statistics is not None:
            return self.track_statistics
        return self.w1.weight.requires_grad or self.w2.weight.requires_grad

    def _normalise(self, z: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
        """Per-head BatchNorm pooled over experts. z: [B, T, H, E] float32."""
        if self.live_statistics():
            n = norm(z.transpose(-1, -2).reshape(-1, self.heads))  # [B*T*E, H]
            return n.view(*z.shape[:-2], self.experts, self.heads).transpose(-1, -2)
        mean = norm.running_mean.float()[:, None]  # [H, 1]
        std = torch.sqrt(norm.running_var.float()[:, None] + norm.eps)
        return (z - mean) / std

    def _gate(self, z: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
        n = self._normalise(z, norm)  # [B, T, H, E]
        s = n.amax(-1, keepdim=True).clamp(max=self.sigma)  # at least one half per head
        return torch.softmax(torch.where(n >= s, z, torch.full_like(z, NEG_INF)), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, T, D] -> g1, g2: [B, T, H, E] float32, each head's row summing to 1."""
        z1 = self.w1(x).unflatten(-1, (self.heads, self.experts)).float()
        z2 = self.w2(x).unflatten(-1, (self.heads, self.experts)).float()
        return self._gate(z1, self.norm1), self._gate(z2, self.norm2)


class MonetExperts(nn.Module):
    """Common part of both decompositions: the expert mask of the routing group (None = keep all)
    and the implementation that runs it (`config.mask_kernel`; RESECT_MASK_KERNEL, read when the
    model is built, overrides it; `MonetPreTrainedModel.set_mask_kernel` changes it)."""

    expert_mask: torch.Tensor | None

    def __init__(self, config: MonetConfig):
        super().__init__()
        self.register_buffer("expert_mask", None, persistent=False)  # [E, E] bool, True = removed
        self.mask_flags: tuple[bool, bool] | None = None  # (all removed, any removed) of a bool mask, set with it
        self.mask_kernel = os.environ.get("RESECT_MASK_KERNEL") or config.mask_kernel

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """This group's mask ([E, E] bool or removed fractions; None keeps every expert). What the
        forward branches on is read here, once, so that a compiled forward never reads the mask's values."""
        device = next(self.parameters()).device
        self.expert_mask = None if mask is None else mask.to(device)
        self.mask_flags = None if mask is None or mask.is_floating_point() else (bool(mask.all()), bool(mask.any()))

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        if self.expert_mask is not None:  # the router's own gates: the layers of a group share them
            return masked_moe_forward(self, x, g1, g2, self.expert_mask)
        return self.dense_forward(x, g1.to(x.dtype), g2.to(x.dtype))


class MonetMoVDE(MonetExperts):
    """Vertical decomposition: expert (i, j) = [V11_i a1_i + V12_i a2_j + b1_i ;
    V21_j a1_i + V22_j a2_j + b2_j], weighted by w[i, j] = sum_h g1[h, i] g2[h, j]."""

    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.experts, self.half_dim = config.moe_experts, config.moe_dim // 2
        width, out = config.moe_experts * self.half_dim, config.hidden_size // 2
        self.u1 = nn.Linear(config.hidden_size, width)
        self.u2 = nn.Linear(config.hidden_size, width)
        self.v11 = nn.Linear(width, out, bias=False)
        self.v12 = nn.Linear(width, out, bias=False)
        self.v21 = nn.Linear(width, out, bias=False)
        self.v22 = nn.Linear(width, out, bias=False)
        self.b1 = nn.Parameter(torch.zeros(config.moe_experts, out))
        self.b2 = nn.Parameter(torch.zeros(config.moe_experts, out))

    def activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a1, a2: [B, T, E, m/2]."""
        shape = (self.experts, self.half_dim)
        return relu2(self.u1(x)).unflatten(-1, shape), relu2(self.u2(x)).unflatten(-1, shape)

    def project_top(self, a1: torch.Tensor, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Top half [B, T, D/2] = V11 . (R * a1) + V12 . P + R b1; r [B, T, E], p [B, T, E, m/2]."""
        top = self.v11((r.unsqueeze(-1) * a1).flatten(-2))
        top += self.v12(p.flatten(-2))
        return top + r @ self.b1

    def project_bottom(self, a2: torch.Tensor, c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Bottom half [B, T, D/2] = V21 . Q + V22 . (C * a2) + C b2."""
        bottom = self.v21(q.flatten(-2))
        bottom += self.v22((c.unsqueeze(-1) * a2).flatten(-2))
        return bottom + c @ self.b2

    def project(self, a1, a2, r, c, p, q) -> torch.Tensor:
        """Output from the row/column sums r, c [B, T, E] and mixed terms p, q [B, T, E, m/2]."""
        return torch.cat((self.project_top(a1, r, p), self.project_bottom(a2, c, q)), dim=-1)  # [B, T, D]

    def dense_forward(self, x, g1, g2):
        a1, a2 = self.activations(x)
        # P[i] = sum_h g1[h,i] (g2_h . a2), Q[j] = sum_h g2[h,j] (g1_h . a1): heads contracted first,
        # one full-width temporary alive at a time.
        g1t_a1 = g1 @ a1  # [B, T, H, m/2]
        top = self.project_top(a1, g1.sum(-2), g1.transpose(-1, -2) @ (g2 @ a2))  # [B,T,E,H] @ [B,T,H,m/2]
        del a1
        bottom = self.project_bottom(a2, g2.sum(-2), g2.transpose(-1, -2) @ g1t_a1)
        return torch.cat((top, bottom), dim=-1)  # [B, T, D]


class MonetMoHDE(MonetExperts):
    """Horizontal decomposition: expert (i, j) = V_j relu2(U_i x) + b_j."""

    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.experts, self.dim = config.moe_experts, config.moe_dim
        width = config.moe_experts * config.moe_dim
        self.u = nn.Linear(config.hidden_size, width)
        self.v = nn.Linear(width, config.hidden_size, bias=False)
        self.b = nn.Parameter(torch.zeros(config.moe_experts, config.hidden_size))

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """a: [B, T, E, m]."""
        return relu2(self.u(x)).unflatten(-1, (self.experts, self.dim))

    def project(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """q [B, T, E, m] (column-mixed activations), c [B, T, E] column sums -> [B, T, D]."""
        return self.v(q.flatten(-2)) + c @ self.b

    def dense_forward(self, x, g1, g2):
        a = self.activations(x)
        q = g2.transpose(-1, -2) @ (g1 @ a)  # Q[j] = sum_h g2[h,j] (g1_h . a): [B, T, E, m]
        return self.project(q, g2.sum(-2))


__all__ = ["MonetRouter", "MonetExperts", "MonetMoVDE", "MonetMoHDE", "relu2", "routing_threshold"]
