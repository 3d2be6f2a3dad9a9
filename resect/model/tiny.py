"""Tiny random Monet checkpoints in the published on-disk format, for tests and demos.

The folder looks like a published one: a LLaMA-style config.json (`rope_theta`, `rope_scaling`,
`intermediate_size: null`, `mlp_bias: null`, `auto_map`), weights split over safetensors shards
with an index, BatchNorm statistics with `num_batches_tracked`, and a byte-level BPE tokenizer.
`hub_like=True` writes what the published checkpoints hold instead: one bf16 `model.safetensors`
and a LLaMA-2-style SentencePiece tokenizer (`tokenizer.model`, `tokenizer_config.json` naming
`LlamaTokenizer`, `special_tokens_map.json`, no `tokenizer.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Monet routes every token to a few of many "
    "experts; each expert is a pair of halves. def add(a, b): return a + b. "
    "local x = 1 function f() return x end. const y = [1, 2, 3].map(v => v * 2); "
)


def tiny_config(*, decompose: str = "vertical", layers: int = 4, groups: int = 2, **overrides: Any) -> dict[str, Any]:
    """A published-style config.json for a small model (E 16, H 2, d 32 unless overridden)."""
    config = {
        "architectures": ["MonetForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_monet.MonetConfig",
            "AutoModel": "modeling_monet.MonetModel",
            "AutoModelForCausalLM": "modeling_monet.MonetForCausalLM",
        },
        "model_type": "monet",
        "vocab_size": 320,
        "hidden_size": 32,
        "intermediate_size": None,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "relu2",
        "max_position_embeddings": 256,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": None,
        "moe_dim": 8,
        "moe_heads": 2,
        "moe_experts": 16,
        "moe_topk": 3,
        "moe_groups": groups,
        "moe_decompose": decompose,
        "output_router_probs": False,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
    }
    config.update(overrides)
    return config


def random_state_dict(config: dict[str, Any], *, seed: int = 0) -> dict:
    """Weights of a randomly initialised model, with non-trivial router statistics and biases."""
    import torch

    from .configuration_monet import MonetConfig
    from .modeling_monet import MonetForCausalLM

    torch.manual_seed(seed)
    keys = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "torch_dtype", "transformers_version")}
    model = MonetForCausalLM(MonetConfig(**keys))
    gen = torch.Generator().manual_seed(seed + 1)
    state = {}
    for name, tensor in model.state_dict().items():
        t = tensor.clone()
        if t.is_floating_point():
            if name.endswith("running_var"):
                t = torch.rand(t.shape, generator=gen) * 0.02 + 0.005
            elif name.endswith("running_mean"):
                t = torch.randn(t.shape, generator=gen) * 0.02
            elif name.endswith(("b1", "b2", ".b", "u1.bias", "u2.bias", "u.bias")):
                t = torch.randn(t.shape, generator=gen) * 0.05
            elif name.endswith("layernorm.weight") or name == "model.norm.weight":
                t = 1 + torch.randn(t.shape, generator=gen) * 0.1
            else:
                t = torch.randn(t.shape, generator=gen) * 0.1
        elif name.endswith("num_batches_tracked"):
            t = torch.tensor(1000, dtype=torch.long)
        state[name] = t.contiguous()
    return state


def save_shards(
    state: dict, out: Path, *, shards: int = 2, metadata: dict[str, str] | None = None, dtype: str | None = None
) -> list[str]:
    """Write tensors as HF-named safetensors shards (+ index when more than one); `dtype` casts the
    floating-point ones (the router statistics included, as the published bf16 files hold them)."""
    import torch
    from safetensors.torch import save_file

    if dtype is not None:
        cast = getattr(torch, dtype)
        state = {n: t.to(cast) if t.is_floating_point() else t for n, t in state.items()}

    names = sorted(state)
    per = -(-len(names) // shards)
    files = []
    weight_map = {}
    for k in range(shards):
        part = names[k * per : (k + 1) * per]
        file = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, out / file, metadata=metadata or {"format": "pt"})
        files.append(file)
        weight_map.update({n: file for n in part})
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def train_tokenizer(out: Path, *, vocab_size: int, texts: list[str] | None = None) -> None:
    """A byte-level BPE tokenizer (with <s>, </s>, <unk>, <pad>) saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts or [SAMPLE_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", padding_side="left"
    )
    fast.save_pretrained(out)


def train_sentencepiece_tokenizer(out: Path, *, vocab_size: int, texts: list[str] | None = None) -> None:
    """A LLaMA-2-style SentencePiece tokenizer as the published Monet checkpoints ship it: BPE with
    byte fallback, <unk> 0, <s> 1, </s> 2, no pad token; `tokenizer.model`, `tokenizer_config.json`
    naming `LlamaTokenizer` and `special_tokens_map.json`, no `tokenizer.json`."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((texts or [SAMPLE_TEXT]) * 20), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        split_digits=True, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    (out / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False, "sp_model_kwargs": {},
        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "LlamaTokenizer",
    }  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def build_tiny_checkpoint(
    out: str | Path,
    *,
    decompose: str = "vertical",
    layers: int = 4,
    groups: int = 2,
    shards: int = 2,
    seed: int = 0,
    tokenizer: bool = True,
    hub_like: bool = False,
    **overrides: Any,
) -> Path:
    """Write a tiny random Monet checkpoint folder and return its path (`hub_like`: one bf16 file
    and a SentencePiece tokenizer, as the published checkpoints are)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if hub_like:
        overrides = {"torch_dtype": "bfloat16", **overrides}
    config = tiny_config(decompose=decompose, layers=layers, groups=groups, **overrides)
    state = random_state_dict(config, seed=seed)
    save_shards(state, out, shards=1 if hub_like else shards, dtype="bfloat16" if hub_like else None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer:
        (train_sentencepiece_tokenizer if hub_like else train_tokenizer)(out, vocab_size=config["vocab_size"])
    return out
