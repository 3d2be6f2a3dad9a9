"""Checkpoint folders: validation before loading, loading, fingerprints and a summary.

Every problem a user can cause (no folder, no config.json, another architecture, a truncated or
missing shard) becomes a CheckpointError whose message says what to do; transformers' own
tracebacks are never the first thing a user sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import register
from .errors import CheckpointError, UsageError, unknown

if TYPE_CHECKING:
    import torch

    from .modeling_monet import MonetForCausalLM

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


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """A local folder as is; None means the built-in model; anything else a Hugging Face repo id."""
    if model is None:
        from .builtin import builtin_model_path

        return builtin_model_path()
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _download(text)
    raise CheckpointError(f"Model path '{model}' does not exist. Pass a checkpoint folder or a Hugging Face repo id.")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way for a user
        raise CheckpointError(
            f"Could not fetch '{repo_id}' from the Hugging Face Hub ({type(exc).__name__}). "
            "Download it where the network allows and pass the local folder."
        ) from None


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is not a folder. Pass a checkpoint folder holding config.json and weights.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"'{path}' has no config.json: not a Hugging Face checkpoint folder.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{config_file}' is not valid JSON ({exc}). Restore the file from the source.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"'{config_file}' holds {type(config).__name__}, not a JSON object. Restore the file from the source.")
    model_type = config.get("model_type")
    if model_type != "monet":
        raise CheckpointError(
            f"'{path}' is a '{model_type}' checkpoint, not Monet (model_type 'monet'). resect edits Monet models only."
        )
    return config


def weight_files(path: Path) -> list[str]:
    """The safetensors files of a checkpoint, from its index when sharded."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"'{index}' is not a valid safetensors index. Restore it from the source.") from None
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) and s for s in weight_map.values()):
            raise CheckpointError(f"'{index}' has no weight_map of tensor names to shard files. Restore it from the source.")
        shards = sorted(set(weight_map.values()))
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
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(
            f"Shard '{file}' is truncated or corrupt: {size} bytes where its header needs {8 + n + end}. Download it again."
        )
    return header


def expected_tensors(config: dict[str, Any]) -> set[str]:
    """Names of every tensor a Monet checkpoint with this config holds."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.get("tie_word_embeddings", False):
        names.add("lm_head.weight")
    vertical = config.get("moe_decompose", "vertical") == "vertical"
    experts = ["u1.weight", "u1.bias", "u2.weight", "u2.bias", "v11.weight", "v12.weight", "v21.weight", "v22.weight", "b1", "b2"]
    if not vertical:
        experts = ["u.weight", "u.bias", "v.weight", "b"]
    router = [f"{w}.weight" for w in ("w1", "w2")] + [
        f"{n}.{s}" for n in ("norm1", "norm2") for s in ("running_mean", "running_var", "num_batches_tracked")
    ]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        names |= {prefix + f"self_attn.{p}_proj.weight" for p in "qkvo"}
        names |= {prefix + "input_layernorm.weight", prefix + "post_attention_layernorm.weight"}
        names |= {prefix + "moe." + e for e in experts}
        if layer % config.get("moe_groups", 4) == 0:
            names |= {prefix + "router." + r for r in router}
    return names


SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "moe_experts", "moe_heads", "moe_dim", "moe_topk", "moe_groups")


def shape_problem(config: dict[str, Any]) -> str | None:
    """What makes a Monet config.json's shape impossible, read without transformers (which checks
    the rest when the model is built); None when nothing does."""
    for key in SIZE_KEYS:
        value = config.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} must be a positive whole number, found {value!r}"
    experts, topk = config.get("moe_experts", 512), config.get("moe_topk", 32)
    if topk >= experts:
        return f"moe_topk {topk} must be below moe_experts {experts}"
    if config.get("moe_decompose", "vertical") not in ("vertical", "horizontal"):
        return f"moe_decompose must be vertical or horizontal, found {config['moe_decompose']!r}"
    return None


def provenance_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with an edited checkpoint's "resect" record (written by `resect apply`); None
    when it is sound or absent."""
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
    return None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Validate a checkpoint folder without loading weights: config, shards, tensor names."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Model path '{path}' does not exist. Pass a Monet checkpoint folder.")
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
        expected = expected_tensors(config)
    except KeyError as exc:
        raise CheckpointError(f"'{path}/config.json' lacks the key {exc}. Restore it from the source.") from None
    missing = sorted(expected - info.tensors.keys())
    if missing:
        raise CheckpointError(f"'{path}' lacks {len(missing)} Monet tensors (first: {missing[0]}). The checkpoint is incomplete.")
    unexpected = sorted(info.tensors.keys() - expected)
    if unexpected:
        log.warning("'%s' holds %d tensors Monet does not use (first: %s)", path, len(unexpected), unexpected[0])
    return info


def load_model(
    model: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str = "cpu",
    attn_implementation: str | None = None,
) -> MonetForCausalLM:
    """Validate then load a Monet checkpoint in eval mode (router statistics frozen)."""
    import torch
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoModelForCausalLM

    register()
    dtype = torch_dtype(dtype)
    check_device(device)
    path = resolve_model_path(model)
    info = inspect_checkpoint(path)
    try:
        loaded, report = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype or torch.float32,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, StrictDataclassError) as exc:
        cause = exc.__cause__ if isinstance(exc, StrictDataclassError) and exc.__cause__ else exc  # the config's own check
        raise CheckpointError(f"Could not load '{path}': {str(cause).splitlines()[0]}") from None
    problems = {k: v for k, v in report.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        kind, keys = next(iter(problems.items()))
        raise CheckpointError(f"'{path}' does not fit its config: {kind.replace('_', ' ')} {sorted(keys)[:3]}.")
    loaded.config.name_or_path = str(info.path)
    return loaded.to(device).eval()


DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(dtype: str | torch.dtype | None):
    """A --dtype name as a torch dtype (None stays None)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(unknown("dtype", str(dtype), DTYPES))
    return getattr(torch, dtype)


def check_device(device: str) -> None:
    """A --device that torch knows and this machine has."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise UsageError(f"--device '{device}' is not a torch device. Pass cpu, cuda or cuda:N.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available to this torch. Pass --device cpu, or install a CUDA build of torch.")


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer stored beside a checkpoint, with a pad token for batching."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model)
    problem = tokenizer_problem(path)
    if problem:
        raise CheckpointError(f"'{path}' {problem}")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, ImportError) as exc:
        raise CheckpointError(f"'{path}' has no usable tokenizer ({str(exc).splitlines()[0]}). Add the tokenizer files.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


SENTENCEPIECE_PACKAGES = {"sentencepiece": "sentencepiece", "protobuf": "google.protobuf"}  # distribution -> module


def tokenizer_problem(path: Path) -> str | None:
    """What keeps the tokenizer beside a checkpoint from loading, said before transformers tries
    (whose own message names an unrelated package); None when nothing does."""
    if (path / "tokenizer.json").is_file():
        return None
    if not (path / "tokenizer.model").is_file():
        return (
            "has no tokenizer files (tokenizer.json, or a SentencePiece tokenizer.model with tokenizer_config.json). "
            "Copy them from the checkpoint it came from."
        )
    missing = [dist for dist, module in SENTENCEPIECE_PACKAGES.items() if not _importable(module)]
    if missing:
        return (
            f"has a SentencePiece tokenizer.model and no tokenizer.json; reading it needs the package(s) {' and '.join(missing)}: "
            f"pip install {' '.join(missing)}."
        )
    return None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short stable id of a model's weights (names, shapes, dtypes and sampled values).

    Masks are non-persistent buffers, so an edited model shares its source's fingerprint:
    statistics taken on the source stay valid for it.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[flat.numel() // 2 :][:64], flat[-64:]]).float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


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
