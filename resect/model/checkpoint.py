"""Checkpoint folders inspected and validated before anything is loaded, from config.json and the
safetensors headers alone.

Every problem a user can cause (no folder, no config.json, another architecture, a value out of
range, a truncated or missing shard, a shard index or mask record naming a file outside the
folder) becomes a CheckpointError whose message says what to do; transformers' own tracebacks
are never the first thing a user sees.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

log = logging.getLogger(__name__)


SINGLE_FILE = "model.safetensors"


INDEX_FILE = "model.safetensors.index.json"


SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class CheckpointInfo:
    """What a checkpoint folder holds, read from its config and safetensors headers only."""

    path: Path
    config: dict[str, Any]
    shards: list[str]
    tensors: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # name -> (dtype, shape)

    @property
    def num_parameters(self) -> int:
        total = 0
        for name, (_, shape) in self.tensors.items():
            if "running_" in name or "num_batches_tracked" in name:
                continue
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    @property
    def dtypes(self) -> list[str]:
        return sorted({dtype for name, (dtype, _) in self.tensors.items() if "num_batches" not in name})


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is not a folder. Pass a checkpoint folder holding config.json and weights.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"'{path}' has no config.json: not a Hugging Face checkpoint folder.")
    from ..files import read_json

    config = read_json(config_file, what="Checkpoint config", error=CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"'{config_file}' holds {type(config).__name__}, not a JSON object. Restore the file from the source.")
    model_type = config.get("model_type")
    if model_type != "monet":
        raise CheckpointError(
            f"'{path}' is a '{model_type}' checkpoint, not Monet (model_type 'monet'). resect edits Monet models only."
        )
    return config


def weight_files(path: Path) -> list[str]:
    """The safetensors files of a checkpoint, from its index when sharded (plain file names of the
    folder: an index naming a file elsewhere is refused)."""
    from ..files import read_json
    from ..paths import member

    index = path / INDEX_FILE
    if index.is_file():
        data = read_json(index, what="Shard index", error=CheckpointError)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(s, str) and s for s in weight_map.values()):
            raise CheckpointError(f"'{index}' has no weight_map of tensor names to shard files. Restore it from the source.")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            member(path, shard, what=f"'{index}'", error=CheckpointError)
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"Shard '{missing[0]}' named in {INDEX_FILE} is missing from '{path}'. Download the checkpoint again."
            )
        return shards
    if (path / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    raise CheckpointError(f"'{path}' has no {SINGLE_FILE} nor {INDEX_FILE}. Only safetensors checkpoints are supported.")


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file size (catches truncation)."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"Shard '{file}' is truncated ({size} bytes). Download it again.")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"Shard '{file}' is corrupt (header of {n} bytes in a {size}-byte file). Download it again.")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"Shard '{file}' is corrupt (unreadable header). Download it again.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"Shard '{file}' is corrupt (its header is not a JSON object). Download it again.")
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(meta)
        if problem:
            raise CheckpointError(f"Shard '{file}' is corrupt: tensor '{name}' {problem}. Download it again.")
        spans.append((meta["data_offsets"][0], meta["data_offsets"][1], name))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise CheckpointError(f"Shard '{file}' is corrupt: tensors '{a}' and '{b}' overlap. Download it again.")
    end = max((e for _, e, _ in spans), default=0)
    if 8 + n + end != size:
        raise CheckpointError(
            f"Shard '{file}' is truncated or corrupt: {size} bytes where its header needs {8 + n + end}. Download it again."
        )
    return header


def _entry_problem(meta: Any) -> str | None:
    """What is wrong with one safetensors header entry (dtype, shape, byte range), or None."""
    if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str):
        return "has no dtype"
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return "has no valid shape"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return "has no data offsets"
    if meta["dtype"] not in SAFETENSORS_DTYPES:
        return f"has the unknown dtype {meta['dtype']!r}"
    if not 0 <= offsets[0] <= offsets[1] or offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[meta["dtype"]]:
        return f"of shape {shape} ({meta['dtype']}) does not fit its byte range {offsets}"
    return None


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a Monet checkpoint with this config holds, with its shape."""
    d, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    heads = config.get("num_attention_heads", 16)
    head_dim = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads") or heads
    e, m, h = config.get("moe_experts", 512), config.get("moe_dim", 16), config.get("moe_heads", 8)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, d)
    if config.get("moe_decompose", "vertical") == "vertical":
        half = e * m // 2
        experts = {"u1.weight": (half, d), "u1.bias": (half,), "u2.weight": (half, d), "u2.bias": (half,), "b1": (e, d // 2), "b2": (e, d // 2)}
        experts |= {f"{v}.weight": (d // 2, half) for v in ("v11", "v12", "v21", "v22")}
    else:
        experts = {"u.weight": (e * m, d), "u.bias": (e * m,), "v.weight": (d, e * m), "b": (e, d)}
    router = {"w1.weight": (h * e, d), "w2.weight": (h * e, d)}
    router |= {f"{n}.{s}": (h,) for n in ("norm1", "norm2") for s in ("running_mean", "running_var")}
    router |= {f"{n}.num_batches_tracked": () for n in ("norm1", "norm2")}
    attention = {"q_proj": (heads * head_dim, d), "k_proj": (kv * head_dim, d), "v_proj": (kv * head_dim, d), "o_proj": (d, heads * head_dim)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shapes |= {f"{prefix}self_attn.{p}.weight": shape for p, shape in attention.items()}
        shapes |= {f"{prefix}input_layernorm.weight": (d,), f"{prefix}post_attention_layernorm.weight": (d,)}
        shapes |= {f"{prefix}moe.{name}": shape for name, shape in experts.items()}
        if layer % config.get("moe_groups", 4) == 0:
            shapes |= {f"{prefix}router.{name}": shape for name, shape in router.items()}
    return shapes


FLOAT_DTYPES = ("F32", "F16", "BF16")


def tensor_problem(name: str, dtype: str, shape: list[int], expected: tuple[int, ...]) -> str | None:
    """What makes a stored tensor unfit for its place in the model: its dtype or its shape."""
    wanted = ("I64",) if name.endswith("num_batches_tracked") else FLOAT_DTYPES
    if dtype not in wanted:
        return f"stores '{name}' as {dtype}, where Monet holds {' / '.join(wanted)}"
    if tuple(shape) != expected:
        return f"stores '{name}' with shape {list(shape)}, where its config.json needs {list(expected)}"
    return None


SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "moe_experts", "moe_heads", "moe_dim", "moe_topk",
             "moe_groups", "max_position_embeddings")  # fmt: skip


# Far beyond any Monet (32 layers, d 3072, E 512 at 4.1B): a config past them is damaged, and is refused
# before anything is sized from it.
SIZE_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024, "num_attention_heads": 1024,
               "moe_experts": 8192, "moe_heads": 1024, "moe_dim": 4096, "moe_topk": 8192, "moe_groups": 1024,
               "max_position_embeddings": 1 << 24, "num_key_value_heads": 1024, "head_dim": 4096}  # fmt: skip


SIZE_FLOORS = {"max_position_embeddings": 2}  # a model must see at least one token before the one it predicts


FLAGS = ("tie_word_embeddings", "attention_bias", "use_cache", "output_router_probs")


def _whole_problem(key: str, value: Any) -> str | None:
    low = SIZE_FLOORS.get(key, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        return f"{key} must be a {'positive whole number' if low == 1 else f'whole number of at least {low}'}, found {value!r}"
    if value > SIZE_LIMITS[key]:
        return f"{key} is {value:,}, beyond any Monet model (at most {SIZE_LIMITS[key]:,})"
    return None


def _number_problem(config: dict[str, Any], key: str, low: float, high: float, *, low_open: bool = True) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and ((value > low) if low_open else (value >= low)) and value < high:
        return None
    return f"{key} must be a number in {'(' if low_open else '['}{low:g}, {high:g}), found {value!r}"


def shape_problem(config: dict[str, Any]) -> str | None:
    """What makes a Monet config.json impossible, read without transformers (which checks the rest
    when the model is built); None when nothing does. Every size, ratio and token id is checked."""
    for key in SIZE_KEYS:
        problem = _whole_problem(key, config.get(key, 2048 if key == "max_position_embeddings" else 1))
        if problem:
            return problem
    for key in ("num_key_value_heads", "head_dim"):
        problem = _whole_problem(key, config[key]) if config.get(key) is not None else None
        if problem:
            return problem
    heads, kv = config.get("num_attention_heads", 1), config.get("num_key_value_heads") or config.get("num_attention_heads", 1)
    if heads % kv:
        return f"num_key_value_heads {kv} must divide num_attention_heads {heads}"
    if config.get("head_dim") is None and config.get("hidden_size", 1) % heads:
        return f"hidden_size {config.get('hidden_size')} must be a multiple of num_attention_heads {heads} (or give head_dim)"
    experts, topk = config.get("moe_experts", 512), config.get("moe_topk", 32)
    if topk >= experts:
        return f"moe_topk {topk} must be below moe_experts {experts}"
    if config.get("moe_decompose", "vertical") not in ("vertical", "horizontal"):
        return f"moe_decompose must be vertical or horizontal, found {config['moe_decompose']!r}"
    if config.get("moe_decompose", "vertical") == "vertical" and (config.get("moe_dim", 16) % 2 or config.get("hidden_size", 2) % 2):
        return "vertical decomposition needs an even moe_dim and hidden_size"
    if config.get("hidden_act", "relu2") != "relu2":
        return f"hidden_act is {config['hidden_act']!r}; Monet's experts use relu2"
    for key, low, high, low_open in (("rms_norm_eps", 0.0, 1.0, True), ("rope_theta", 0.0, 1e12, True), ("initializer_range", 0.0, 1e3, False),
                                     ("attention_dropout", 0.0, 1.0, False)):  # fmt: skip
        problem = _number_problem(config, key, low, high, low_open=low_open)
        if problem:
            return problem
    for key in FLAGS:
        if key in config and config[key] is not None and not isinstance(config[key], bool):
            return f"{key} must be true or false, found {config[key]!r}"
    return _token_problem(config) or _rope_problem(config)


ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")  # transformers' rotary scalings


def _rope_problem(config: dict[str, Any]) -> str | None:
    """A rotary scaling (`rope_scaling`, or transformers 5's `rope_parameters`) of a known type with
    positive finite factors; None (no scaling) is fine."""
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{key} must be an object (or null), found {value!r}"
        kind = value.get("rope_type", value.get("type", "default"))
        if kind not in ROPE_TYPES:
            return f"{key} type {kind!r} is not one of {', '.join(ROPE_TYPES)}"
        for name in ("factor", "rope_theta", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
            number = value.get(name)
            if number is not None and not (isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number) and number > 0):
                return f"{key}.{name} must be a positive number, found {number!r}"
    return None


def _token_problem(config: dict[str, Any]) -> str | None:
    vocab = config.get("vocab_size", 1)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is None or (key == "eos_token_id" and value == []):
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
            return f"{key} must be a token id in [0, {vocab:,}) (or null), found {value!r}"
    return None


def provenance_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with an edited checkpoint's "resect" record (written by `resect apply`); None
    when it is sound or absent. Its mask file must be a file of the checkpoint's own folder."""
    record = config.get("resect")
    if record is None:
        return None
    if not isinstance(record, dict):
        return f"its 'resect' record is {type(record).__name__}, not an object"
    for key in ("source", "source_fingerprint"):
        if key in record and not isinstance(record[key], str):
            return f"'resect.{key}' is not text"
    mask = record.get("mask")
    if mask is not None and not (isinstance(mask, dict) and (mask.get("total") == 0 or isinstance(mask.get("file"), str))):
        return "'resect.mask' does not name the mask file"
    name = mask.get("file") if isinstance(mask, dict) else None
    if isinstance(name, str) and (name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute()):
        return f"'resect.mask.file' names {name!r}, not a file of the checkpoint's folder"
    return None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Validate a checkpoint folder without loading weights: config, shards, tensor names."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Model path '{path}' does not exist. Pass a Monet checkpoint folder.")
    from ..outputs import unfinished

    if unfinished(path):
        raise CheckpointError(
            f"'{path}' is an unfinished resect output (its writer stopped before the end). "
            "Run the command that writes it again: the rerun removes what a stopped run left."
        )
    config = read_config(path)
    problem = shape_problem(config) or provenance_problem(config)
    if problem:
        raise CheckpointError(f"'{path}/config.json' describes no Monet model: {problem}. Restore it from the source.")
    info = CheckpointInfo(path=path, config=config, shards=weight_files(path))
    for shard in info.shards:
        header = read_safetensors_header(path / shard)
        for name, meta in header.items():
            if name != "__metadata__":
                info.tensors[name] = (meta["dtype"], meta["shape"])
    try:
        shapes = expected_shapes(config)
    except KeyError as exc:
        raise CheckpointError(f"'{path}/config.json' lacks the key {exc}. Restore it from the source.") from None
    expected = set(shapes)
    missing = sorted(expected - info.tensors.keys())
    if missing:
        raise CheckpointError(f"'{path}' lacks {len(missing)} Monet tensors (first: {missing[0]}). The checkpoint is incomplete.")
    for name in sorted(expected):
        problem = tensor_problem(name, *info.tensors[name], shapes[name])
        if problem:
            raise CheckpointError(f"'{path}' {problem}. The weights and config.json do not belong together: restore them from the source.")
    unexpected = sorted(info.tensors.keys() - expected)
    if unexpected:
        log.warning("'%s' holds %d tensors Monet does not use (first: %s)", path, len(unexpected), unexpected[0])
    return info


def describe(info: CheckpointInfo) -> dict[str, Any]:
    """The facts `resect info` shows, as plain data."""
    from statistics import NormalDist

    cfg = info.config
    layers, per_group, experts = cfg["num_hidden_layers"], cfg.get("moe_groups", 4), cfg.get("moe_experts", 512)
    groups = [list(range(start, min(start + per_group, layers))) for start in range(0, layers, per_group)]
    topk = cfg.get("moe_topk", 32)
    return {
        "path": str(info.path),
        "decomposition": {"vertical": "VD", "horizontal": "HD"}.get(cfg.get("moe_decompose"), cfg.get("moe_decompose")),
        "layers": layers,
        "hidden_size": cfg["hidden_size"],
        "attention_heads": cfg.get("num_attention_heads"),
        "vocab_size": cfg.get("vocab_size"),
        "routing_groups": len(groups),
        "group_layers": groups,
        "halves_per_side": experts,
        "experts_per_group": experts * experts,
        "experts_total": experts * experts * len(groups),
        "router_heads": cfg.get("moe_heads"),
        "expert_dim": cfg.get("moe_dim"),
        "moe_topk": topk,
        "routing_threshold": round(NormalDist().inv_cdf(1 - topk / experts), 6),
        "parameters": info.num_parameters,
        "dtype": ",".join(info.dtypes),
        "shards": info.shards,
        "expert_mask": cfg.get("resect", {}).get("mask"),
    }


__all__ = ["CheckpointInfo", "inspect_checkpoint", "read_config", "weight_files", "read_safetensors_header", "expected_shapes", "shape_problem",
           "provenance_problem", "tensor_problem", "describe", "SINGLE_FILE", "INDEX_FILE"]  # fmt: skip
