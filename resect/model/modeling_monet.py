"""Monet causal LM (Mixture of Monosemantic Experts, arXiv 2412.04139) for transformers 5.x.

Loads the published checkpoints byte for byte: every tensor name and shape of the released
`modeling_monet.py`, the same router (eval-mode BatchNorm, the Phi^-1 threshold, softmax of raw
logits over the selected halves) and the same expert sums, computed head by head so the
262,144-wide product is never formed. Self-contained apart from torch and transformers (and the
masked-expert path): edited checkpoints carry a copy of this file for `trust_remote_code=True`.

Notation (shape comments): B batch, T tokens, H router heads (`moe_heads`), E halves per side
(`moe_experts`), m expert width (`moe_dim`), D hidden size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.utils.deprecation import deprecate_kwarg

from ..kernels.dispatch import masked_moe_forward  # resect:export-import
from .configuration_monet import MASK_KERNELS, MonetConfig

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


class MonetRMSNorm(LlamaRMSNorm):
    pass


class MonetAttention(LlamaAttention):
    """LLaMA attention (no bias, RoPE, sdpa/eager/flash through transformers' dispatch)."""


class MonetRouter(nn.Module):
    """Two product-key routers: per head, a softmax over the halves whose normalised logit
    reaches min(max, sigma). Runs in float32 whatever the model dtype."""

    def __init__(self, config: MonetConfig):
        super().__init__()
        self.heads, self.experts = config.moe_heads, config.moe_experts
        self.w1 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.w2 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.norm1 = nn.BatchNorm1d(self.heads, affine=False, eps=BN_EPS)
        self.norm2 = nn.BatchNorm1d(self.heads, affine=False, eps=BN_EPS)
        self.sigma = routing_threshold(config.moe_topk, config.moe_experts)

    def _normalise(self, z: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
        """Per-head BatchNorm pooled over experts. z: [B, T, H, E] float32."""
        if self.training:  # live statistics, only while training a model
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
    model is built, overrides it; `MonetForCausalLM.set_mask_kernel` changes it)."""

    expert_mask: torch.Tensor | None

    def __init__(self, config: MonetConfig):
        super().__init__()
        self.register_buffer("expert_mask", None, persistent=False)  # [E, E] bool, True = removed
        self.mask_kernel = os.environ.get("RESECT_MASK_KERNEL") or config.mask_kernel

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


class MonetDecoderLayer(nn.Module):
    def __init__(self, config: MonetConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MonetAttention(config=config, layer_idx=layer_idx)
        experts = MonetMoVDE if config.moe_decompose == "vertical" else MonetMoHDE
        self.moe = experts(config)
        self.router = MonetRouter(config) if layer_idx % config.moe_groups == 0 else None
        self.input_layernorm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, router_probs, *, attention_mask, position_embeddings, cache, **kwargs):
        """Returns (hidden [B, T, D], router probs (g1, g2) of this group, attention weights)."""
        residual = hidden_states
        hidden_states, attn_weights = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            cache=cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        normed = self.post_attention_layernorm(hidden_states)
        if self.router is not None:  # first layer of a routing group routes for the whole group
            router_probs = self.router(normed)
        hidden_states = hidden_states + self.moe(normed, *router_probs)
        return hidden_states, router_probs, attn_weights


@dataclass
class MonetModelOutputWithPast(BaseModelOutputWithPast):
    router_probs: tuple | None = None


@dataclass
class MonetCausalLMOutputWithPast(CausalLMOutputWithPast):
    router_probs: tuple | None = None


class MonetPreTrainedModel(PreTrainedModel):
    config_class = MonetConfig
    config: MonetConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MonetDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MonetMoVDE):
            init.zeros_(module.b1)
            init.zeros_(module.b2)
        elif isinstance(module, MonetMoHDE):
            init.zeros_(module.b)


class MonetModel(MonetPreTrainedModel):
    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(MonetDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_probs: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MonetModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_router_probs = self.config.output_router_probs if output_router_probs is None else output_router_probs
        output_attentions = bool(output_attentions)
        inputs_embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds  # [B, T, D]
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden, all_attn, all_router = [], [], []
        router_probs = None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, router_probs, attn = layer(
                hidden_states,
                router_probs,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                output_attentions=output_attentions,
                **kwargs,
            )
            all_attn.append(attn)
            all_router.append(router_probs if layer.router is not None else None)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        out = MonetModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            router_probs=tuple(all_router) if output_router_probs else None,
        )
        return out if return_dict is not False else out.to_tuple()


class _JsonMask:
    """Minimal reader of the `resect.mask/v1` JSON file, for folders loaded without resect
    installed (`trust_remote_code=True`). With resect, `resect.model.mask.ExpertMask` is used instead."""

    def __init__(self, data: dict):
        self.moe_experts, self.num_groups = int(data["moe_experts"]), int(data["num_groups"])
        self.experts = {int(g): sorted({int(i) for i in ids}) for g, ids in data["experts"].items() if ids}

    def counts(self) -> dict[int, int]:
        return {g: len(self.experts.get(g, ())) for g in range(self.num_groups)}

    def to_json_dict(self) -> dict:
        return {"format": "resect.mask/v1", "moe_experts": self.moe_experts, "num_groups": self.num_groups,
                "experts": {str(g): ids for g, ids in sorted(self.experts.items())}}  # fmt: skip

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def dense(self, group: int) -> torch.Tensor:
        flat = torch.zeros(self.moe_experts * self.moe_experts, dtype=torch.bool)
        flat[torch.tensor(self.experts.get(group, []), dtype=torch.long)] = True
        return flat.view(self.moe_experts, self.moe_experts)


MASK_FILE_NAME = "resect_mask.json"


def mask_record(mask) -> dict:
    """The `resect.mask` entry of an edited checkpoint's config.json for a mask saved as MASK_FILE_NAME."""
    record = {"file": MASK_FILE_NAME, "counts": {str(g): n for g, n in mask.counts().items()}, "total": mask.total}
    if hasattr(mask, "fingerprint"):  # resect's ExpertMask (not the reader used without resect)
        record["fingerprint"] = mask.fingerprint()
    return record


def read_mask_file(path: str):
    """An edited checkpoint's mask: resect's ExpertMask when resect is importable, else _JsonMask."""
    try:
        from resect.model.mask import ExpertMask
    except ImportError:
        import json

        with open(path) as fh:
            return _JsonMask(json.load(fh))
    return ExpertMask.load(path)


def _check_mask_geometry(mask, config: MonetConfig) -> None:
    if hasattr(mask, "validate_for"):
        mask.validate_for(config)
        return
    groups = config.num_routing_groups
    if (mask.moe_experts, mask.num_groups) != (config.moe_experts, groups):
        raise ValueError(
            f"Expert mask for E={mask.moe_experts}, {mask.num_groups} groups does not fit this model "
            f"(E={config.moe_experts}, {groups} groups)."
        )


class MonetForCausalLM(MonetPreTrainedModel, GenerationMixin):
    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.model = MonetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_expert_mask(self, mask) -> None:
        """Remove the experts of `mask` (an ExpertMask; None restores every expert).

        Each routing group's [E, E] bool mask goes to the `expert_mask` buffer of its layers;
        groups with nothing removed keep None, the unmasked path at zero cost."""
        dense = {}
        if mask is not None:
            _check_mask_geometry(mask, self.config)
            dense = {g: mask.dense(g) for g, n in mask.counts().items() if n}  # [E, E] bool per group
        self.set_group_masks(dense)
        self._expert_mask = mask

    def set_group_masks(self, masks) -> None:
        """Give every layer its routing group's [E, E] mask from {group: tensor} (bool, or the
        removed fraction of each expert); a group not in `masks` runs unmasked."""
        for index, layer in enumerate(self.model.layers):
            found = masks.get(index // self.config.moe_groups)
            layer.moe.expert_mask = None if found is None else found.to(next(layer.moe.parameters()).device)

    def set_mask_kernel(self, kernel: str) -> None:
        """Run the masked experts with `kernel` (one of MASK_KERNELS), as `config.mask_kernel` would."""
        if kernel not in MASK_KERNELS:
            raise ValueError(f"mask_kernel must be one of {', '.join(MASK_KERNELS)}, got {kernel!r}")
        self.config.mask_kernel = kernel
        for layer in self.model.layers:
            layer.moe.mask_kernel = kernel

    def mask_kernel(self) -> str:
        """The kernel the masked experts run with."""
        return self.model.layers[0].moe.mask_kernel

    def expert_mask_state(self):
        """The mask set on this model (an ExpertMask), or None when every expert is kept."""
        return getattr(self, "_expert_mask", None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load as usual; an edited checkpoint (config key `resect.mask`) also gets its mask set."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        provenance = getattr(model.config, "resect", None)
        mask_file = (provenance.get("mask") or {}).get("file") if isinstance(provenance, dict) else None
        if mask_file:
            from transformers.utils import cached_file

            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
            model.set_expert_mask(read_mask_file(cached_file(pretrained_model_name_or_path, mask_file, **hub)))
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; a model with experts removed also saves its mask (resect_mask.json beside
        config.json, recorded under the config's `resect.mask`), so `from_pretrained` restores it.
        `resect apply` writes the same and bundles the modeling code for loading without resect."""
        import json
        import os

        mask, saved = self.expert_mask_state(), getattr(self.config, "resect", None)
        provenance = {k: v for k, v in (saved or {}).items() if k != "mask"}
        if mask is not None and mask.total:
            provenance["mask"] = mask_record(mask)
        had = hasattr(self.config, "resect")
        if provenance:
            self.config.resect = provenance
        elif had:
            del self.config.resect
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if had:
                self.config.resect = saved
            elif hasattr(self.config, "resect"):
                del self.config.resect
        if "mask" in provenance and kwargs.get("is_main_process", True):
            with open(os.path.join(save_directory, MASK_FILE_NAME), "w") as fh:
                json.dump(mask.to_json_dict(), fh)
        return result

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MonetCausalLMOutputWithPast | tuple:
        kwargs.pop("cache_position", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
            loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        out = MonetCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_probs=outputs.router_probs,
        )
        return out if return_dict is not False else out.to_tuple()


__all__ = ["MonetForCausalLM", "MonetModel", "MonetPreTrainedModel"]
