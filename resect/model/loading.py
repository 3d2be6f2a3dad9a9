"""Checkpoint folders: validation before loading, loading, fingerprints and a summary.

Every problem a user can cause (no folder, no config.json, another architecture, a truncated or
missing shard) becomes a CheckpointError whose message says what to do; transformers' own
tracebacks are never the first thing a user sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import register
from ..errors import CheckpointError, UsageError, unknown

if TYPE_CHECKING:
    import numpy as np
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


def resolve_model_path(model: str | os.PathLike | None, *, mirror=None) -> Path:
    """A local folder as is; None means the built-in model; anything else a Hugging Face repo id:
    from `mirror` (a resect.run.mirror.Mirror) when given, else the Hub or, offline, its local cache."""
    if model is None:
        from ..builtin import builtin_model_path

        return builtin_model_path()
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    first = text.split("/")[0]
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or Path(first).is_dir() or not first:
        raise CheckpointError(f"Model path '{model}' does not exist. Pass a checkpoint folder or a Hugging Face repo id.")
    if mirror is not None:
        return mirror.model(text)
    return _download(text)


def _download(repo_id: str) -> Path:
    """A Hub repo's checkpoint files: downloaded, or from the Hugging Face cache when offline."""
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or cached in part): one answer for a user
            raise CheckpointError(
                f"'{repo_id}' is neither a folder here nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set. "
                "Download it where the network allows (resect mirror), or pass the checkpoint folder."
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way for a user
        raise CheckpointError(
            f"'{repo_id}' is not a folder here, and fetching it from the Hugging Face Hub failed ({type(exc).__name__}). "
            "Download it where the network allows (resect mirror) and pass the local folder."
        ) from None


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
    return _token_problem(config)


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
        return "'resect.edit.mask' does not name the mask file"
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


def load_model(
    model: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = "cpu",
    attn_implementation: str | None = None,
) -> MonetForCausalLM:
    """Validate then load a Monet checkpoint in eval mode (router statistics frozen).

    `device` and `dtype` take `auto` (see resolve_placement); dtype None means the device's default.
    On a GPU the weights go straight to it (with accelerate installed), never through a CPU copy."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoModelForCausalLM

    register()
    device = resolve_device(device)
    dtype = torch_dtype(resolve_dtype(dtype, device))
    path = resolve_model_path(model)
    info = inspect_checkpoint(path)
    direct = device != "cpu" and _importable("accelerate")
    stored = _stored_dtype(info)
    # On the CPU a checkpoint is read in its own dtype (its files mapped, not copied) and converted
    # tensor by tensor below: converting while reading keeps the whole mapped file resident beside
    # the converted weights until the load ends.
    convert = device == "cpu" and stored is not None and stored != dtype
    try:
        loaded, report = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=stored if convert else dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            **({"device_map": device} if direct else {}),
        )
    except (OSError, ValueError, RuntimeError, StrictDataclassError) as exc:
        cause = exc.__cause__ if isinstance(exc, StrictDataclassError) and exc.__cause__ else exc  # the config's own check
        raise CheckpointError(f"Could not load '{path}': {str(cause).splitlines()[0]}") from None
    problems = {k: v for k, v in report.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        kind, keys = next(iter(problems.items()))
        raise CheckpointError(f"'{path}' does not fit its config: {kind.replace('_', ' ')} {sorted(keys)[:3]}.")
    _own_buffers(loaded)
    if convert:
        _convert_mapped(loaded, dtype, [path / shard for shard in info.shards])
    loaded.config.name_or_path = str(info.path)
    loaded.resect_fingerprint = checkpoint_fingerprint(path)
    log.info("loaded %s (%s, %s)", path, str(dtype).removeprefix("torch."), device)
    return (loaded if direct else loaded.to(device)).eval()


def _stored_dtype(info: CheckpointInfo):
    """The floating-point dtype the checkpoint's weights are stored in (None when mixed)."""
    import torch

    floats = {d for name, (d, _) in info.tensors.items() if d in ("F32", "BF16", "F16")}
    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[floats.pop()] if len(floats) == 1 else None


def _own_buffers(model) -> None:
    """Buffers as tensors of their own (a few bytes each): a buffer left as a view of a mapped
    weight file (the integer `num_batches_tracked`) keeps the whole file mapped for the model's life."""
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()


def _convert_mapped(model, dtype, files: list[Path]) -> None:
    """Every floating-point parameter and buffer converted to `dtype`, one at a time; the pages of
    each converted tensor that lie in a mapped weight file are handed back at once, so the peak is
    the converted model plus one tensor, not the converted model plus the whole file."""
    import torch

    mapped = _mapped_ranges(files)
    for module in model.modules():
        for group in (module._parameters, module._buffers):
            for name, tensor in group.items():
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                source = tensor.data
                converted = source.to(dtype)
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = converted
                else:
                    group[name] = converted
                _drop_pages(source, mapped)


def _mapped_ranges(files: list[Path]) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `files` (Linux; empty elsewhere)."""
    names = {str(f.resolve()) for f in files}
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in names:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _drop_pages(tensor, mapped: list[tuple[int, int]]) -> None:
    """madvise(DONTNEED) the whole pages of a tensor that lies inside a mapped weight file: clean
    file pages, read again from the file if ever touched (never, once the tensor is replaced)."""
    import ctypes
    import mmap

    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mapped):
        return
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, end // page * page  # whole pages inside this tensor only
    if hi > lo:
        try:
            ctypes.CDLL("libc.so.6").madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
        except (OSError, AttributeError):
            pass


def release_memory() -> None:
    """Give freed model memory back: collect the dropped model, empty CUDA's cache, and ask glibc to
    return free heap pages to the system (freed weights otherwise stay resident, and the next
    model's load lands on top of them)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


DTYPES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_device(device: str | None = "auto") -> str:
    """A --device value as a torch device name: `auto` (or None) is CUDA when this torch sees a GPU,
    else the CPU; anything else must be a device torch knows and this machine has."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> str:
    """A --dtype value as a dtype name: `auto` (or None) is bfloat16 on a GPU (the published
    checkpoints' own dtype) and float32 on the CPU."""
    if dtype is None or dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if not isinstance(dtype, str):
        return str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise UsageError(unknown("--dtype", dtype, DTYPE_CHOICES))
    return dtype


def resolve_placement(device: str | None, dtype: str | None) -> tuple[str, str]:
    """(device, dtype) of a --device/--dtype pair, checked before any model loads."""
    device = resolve_device(device)
    return device, resolve_dtype(dtype, device)


def torch_dtype(dtype: str | torch.dtype | None):
    """A --dtype name as a torch dtype (None stays None)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(unknown("--dtype", str(dtype), DTYPE_CHOICES))
    return getattr(torch, dtype)


def check_device(device: str) -> None:
    """A --device that torch knows and this machine has."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device '{device}' is not a torch device. Pass auto, cpu, cuda or cuda:N.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: no CUDA GPU is available to this torch. Pass --device cpu (or auto), or install a CUDA build of torch."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device '{device}': resect runs on cpu or cuda. Pass auto, cpu, cuda or cuda:N.")


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
    vocab = read_config(path).get("vocab_size")
    if isinstance(vocab, int) and len(tok) > vocab:
        raise CheckpointError(
            f"'{path}' has a tokenizer of {len(tok):,} tokens for a model of {vocab:,}: ids beyond the model's vocabulary. "
            "The tokenizer belongs to another model: copy the checkpoint's own."
        )
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


FINGERPRINT_SAMPLE = 64  # values read at the start, the middle and the end of every tensor
# safetensors dtype -> how its little-endian bytes read as numpy values (BF16: the top half of a float32)
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                 "I8": "i1", "U8": "u1", "BOOL": "u1"}  # fmt: skip


def _sample_slices(numel: int) -> list[tuple[int, int]]:
    """Element ranges a fingerprint reads: the first, middle and last FINGERPRINT_SAMPLE values."""
    k = FINGERPRINT_SAMPLE
    return [(0, min(k, numel)), (numel // 2, min(numel // 2 + k, numel)), (max(0, numel - k), numel)]


def _digest_tensor(digest, name: str, shape, values: np.ndarray) -> None:
    """One tensor's share of a fingerprint: its name, shape and sampled values as float32, never its
    dtype, so a checkpoint loaded in another dtype or on another device keeps its fingerprint."""
    digest.update(f"{name}:{tuple(int(s) for s in shape)}".encode())
    digest.update(values.astype("<f4").tobytes())


def _read_values(fh, offset: int, kind: str, lo: int, hi: int) -> np.ndarray:
    import numpy as np

    dtype = np.dtype(_NUMPY_DTYPES[kind])
    fh.seek(offset + lo * dtype.itemsize)
    values = np.frombuffer(fh.read((hi - lo) * dtype.itemsize), dtype=dtype)
    return (values.astype("<u4") << 16).view("<f4") if kind == "BF16" else values


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """Short stable id of a checkpoint's weights, read from its safetensors files (headers and a
    few hundred values per tensor; the weights are never loaded, torch is not needed). Equal to
    `model_fingerprint` of the model loaded from it, in any dtype and on any device."""
    import numpy as np

    path = Path(path)
    located: dict[str, tuple[Path, dict, int]] = {}
    for shard in weight_files(path):
        file = path / shard
        header = read_safetensors_header(file)
        with open(file, "rb") as fh:
            start = 8 + struct.unpack("<Q", fh.read(8))[0]
        located.update({name: (file, meta, start) for name, meta in header.items() if name != "__metadata__"})
    digest = hashlib.sha256()
    handles: dict[Path, Any] = {}
    try:
        for name in sorted(located):
            file, meta, start = located[name]
            if meta.get("dtype") not in _NUMPY_DTYPES:
                raise CheckpointError(f"Shard '{file}' stores '{name}' as {meta.get('dtype')}, which no Monet weight is. Restore it from the source.")
            fh = handles.setdefault(file, open(file, "rb"))
            offset, numel = start + meta["data_offsets"][0], math.prod(meta["shape"])
            parts = [_read_values(fh, offset, meta["dtype"], lo, hi) for lo, hi in _sample_slices(numel)]
            _digest_tensor(digest, name, meta["shape"], np.concatenate(parts))
    finally:
        for fh in handles.values():
            fh.close()
    return digest.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short stable id of a model's weights: the fingerprint of the checkpoint it was loaded from
    (kept by `load_model`), else the same digest taken from its tensors in memory.

    Masks are non-persistent buffers, so an edited model shares its source's fingerprint:
    statistics taken on the source stay valid for it."""
    import torch

    known = getattr(model, "resect_fingerprint", None)
    if known:
        return known
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[lo:hi] for lo, hi in _sample_slices(flat.numel())])
        _digest_tensor(digest, name, tensor.shape, sample.float().cpu().numpy())
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
