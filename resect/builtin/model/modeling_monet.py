"""Monet (Mixture of Monosemantic Experts, arXiv 2412.04139) for transformers 5.x: the base model and
the causal LM.

Loads the published checkpoints byte for byte: every tensor name and shape of the released
`modeling_monet.py`, LLaMA attention, and the router and experts of monet_layers.py in place of
the MLP. Self-contained apart from torch and transformers: edited checkpoints carry a copy of
this file, monet_layers.py and the masked-expert path for `trust_remote_code=True`.

An expert mask belongs to the base model (`MonetModel`), so every head built on it carries it:
`from_pretrained` of an edited checkpoint (config key `resect.mask`) sets it, whichever class
loads the folder, and `save_pretrained` writes it beside the weights. A model built from such a
config by any other path (its state dict loaded by hand) refuses to run until a mask is set,
rather than silently computing the unedited model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.utils import logging as hf_logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_monet import MASK_KERNELS, MonetConfig
from .monet_layers import MonetMoHDE, MonetMoVDE, MonetRouter

log = logging.getLogger(__name__)
once = hf_logging.get_logger(__name__)  # transformers' logger: warning_once
MASK_FILE_NAME = "resect_mask.json"


class MonetRMSNorm(LlamaRMSNorm):
    pass


class MonetAttention(LlamaAttention):
    """LLaMA attention (no bias, RoPE, sdpa/eager/flash through transformers' dispatch)."""


class MonetDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MonetConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MonetAttention(config=config, layer_idx=layer_idx)
        experts = MonetMoVDE if config.moe_decompose == "vertical" else MonetMoHDE
        self.moe = experts(config)
        self.router = MonetRouter(config) if layer_idx % config.moe_groups == 0 else None
        self.input_layernorm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, g1=None, g2=None, *, attention_mask, position_embeddings, cache, **kwargs):
        """Returns (hidden [B, T, D], the group's gates g1, g2 [B, T, H, E], attention weights). The
        gates come in as arguments of their own, so that gradient checkpointing passes their gradients on."""
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
            g1, g2 = self.router(normed)
        hidden_states = hidden_states + self.moe(normed, g1, g2)
        return hidden_states, g1, g2, attn_weights


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
    supports_gradient_checkpointing = True
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

    # ---- the expert mask (held by the base model, whichever head sits on it) ----------------------
    def _monet(self) -> MonetModel:
        return self if isinstance(self, MonetModel) else getattr(self, self.base_model_prefix)

    def set_expert_mask(self, mask) -> None:
        """Remove the experts of `mask` (an ExpertMask; None restores every expert).

        Each routing group's [E, E] bool mask goes to the `expert_mask` buffer of its layers;
        groups with nothing removed keep None, the unmasked path at zero cost."""
        dense = {}
        if mask is not None:
            _check_mask_geometry(mask, self.config)
            dense = {g: mask.dense(g) for g, n in mask.counts().items() if n}  # [E, E] bool per group
        self.set_group_masks(dense)
        base = self._monet()
        base._expert_mask, base._mask_pending = mask, None

    def set_group_masks(self, masks) -> None:
        """Give every layer its routing group's [E, E] mask from {group: tensor} (bool, or the
        removed fraction of each expert); a group not in `masks` runs unmasked."""
        base = self._monet()
        for index, layer in enumerate(base.layers):
            layer.moe.set_mask(masks.get(index // self.config.moe_groups))
        base._mask_pending = None

    def set_mask_kernel(self, kernel: str) -> None:
        """Run the masked experts with `kernel` (one of MASK_KERNELS), as `config.mask_kernel` would."""
        if kernel not in MASK_KERNELS:
            raise ValueError(f"mask_kernel must be one of {', '.join(MASK_KERNELS)}, got {kernel!r}")
        self.config.mask_kernel = kernel
        for layer in self._monet().layers:
            layer.moe.mask_kernel = kernel

    def mask_kernel(self) -> str:
        """The kernel the masked experts run with."""
        return self._monet().layers[0].moe.mask_kernel

    def expert_mask_state(self):
        """The mask set on this model (an ExpertMask), or None when every expert is kept."""
        return getattr(self._monet(), "_expert_mask", None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load as usual; an edited checkpoint (config key `resect.mask`) also gets its mask set. A
        mask the folder names but does not hold (or that does not fit) is an error, never the unedited model."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        record = _mask_record_of(model.config)
        if record:
            from transformers.utils import cached_file

            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
            name = record["file"]
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"This checkpoint's config names its expert mask {name!r}, not a file of its folder: it cannot be applied.")
            try:
                path = cached_file(pretrained_model_name_or_path, name, **hub)
            except OSError as exc:
                raise OSError(f"This edited checkpoint's expert mask '{name}' cannot be read ({exc}): the edit cannot be applied. "
                              "Restore the file from the edited checkpoint.") from None  # fmt: skip
            model.set_expert_mask(read_mask_file(path))
            log.info("expert mask %s set: %d experts removed", name, model.expert_mask_state().total)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; a model with experts removed also saves its mask (resect_mask.json beside
        config.json, recorded under the config's `resect.mask`), so `from_pretrained` restores it.
        `resect apply` writes the same and bundles the modeling code for loading without resect."""
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


class MonetModel(MonetPreTrainedModel):
    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(MonetDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MonetRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self._expert_mask = None
        self._mask_pending = _mask_record_of(config)  # cleared when the mask is set (from_pretrained does)
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
        if self._mask_pending:
            raise RuntimeError(
                f"This model's config names an expert mask ({self._mask_pending.get('file')}) that was never applied: running it would "
                "compute the unedited model. Load the folder with from_pretrained, or call set_expert_mask(mask) (None keeps every expert)."
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = c.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and use_cache:  # a replayed layer would write the cache twice
            once.warning_once("use_cache=True is incompatible with gradient checkpointing; setting use_cache=False")
            use_cache = False
        output_router_probs = c.output_router_probs if output_router_probs is None else output_router_probs
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = c.return_dict if return_dict is None else return_dict
        inputs_embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache(config=c)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past
        causal_mask = create_causal_mask(config=c, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, position_ids=position_ids)
        hidden_states = inputs_embeds  # [B, T, D]
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden, all_attn, all_router = [], [], []
        g1 = g2 = None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, g1, g2, attn = layer(
                hidden_states, g1, g2, attention_mask=causal_mask, position_embeddings=position_embeddings, position_ids=position_ids,
                cache=cache, output_attentions=output_attentions, **kwargs,
            )  # fmt: skip
            all_attn.append(attn)
            all_router.append((g1, g2) if layer.router is not None else None)
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
        return out if return_dict else out.to_tuple()


class MonetForCausalLM(MonetPreTrainedModel, GenerationMixin):
    def __init__(self, config: MonetConfig):
        super().__init__(config)
        self.model = MonetModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

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
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
            use_cache=use_cache, return_dict=True, **kwargs,
        )  # fmt: skip
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
            loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        out = MonetCausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            router_probs=outputs.router_probs,
        )  # fmt: skip
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


# ---- the mask file of an edited checkpoint ---------------------------------------------------------


def _mask_record_of(config) -> dict | None:
    """The `resect.mask` record of an edited checkpoint's config, when it names a mask file."""
    provenance = getattr(config, "resect", None)
    record = provenance.get("mask") if isinstance(provenance, dict) else None
    return record if isinstance(record, dict) and record.get("file") and record.get("total", 1) else None


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


__all__ = ["MonetForCausalLM", "MonetModel", "MonetPreTrainedModel"]
