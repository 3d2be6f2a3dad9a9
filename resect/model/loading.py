"""Loading a Monet checkpoint and its tokenizer onto a device, in a dtype.

The folder is validated first (resect.model.checkpoint), so that a user's mistake is one line
naming it; the weights go straight to the GPU when there is one, and a bf16 checkpoint read in
float32 on the CPU is converted tensor by tensor (its pages handed back as it goes). Also here:
what --device and --dtype mean, and giving a freed model's memory back.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import register
from ..errors import CheckpointError, UsageError, unknown
from .checkpoint import CheckpointInfo, inspect_checkpoint, read_config
from .fingerprint import checkpoint_fingerprint
from .hub import resolve_model_path

if TYPE_CHECKING:
    import torch

    from .modeling_monet import MonetForCausalLM

log = logging.getLogger(__name__)


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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "config.json")
_TOKENIZERS: dict[tuple, object] = {}  # the tokenizers read in this process, by folder and files: read once per model per run


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer stored beside a checkpoint, with a pad token for batching. Read from disk once
    per folder (and again only when its tokenizer files change), a copy for every caller."""
    path = resolve_model_path(model)
    problem = tokenizer_problem(path)  # asked every time: what it needs may have gone since
    if problem:
        raise CheckpointError(f"'{path}' {problem}")
    key = (str(path.resolve()), *((name, *_stamp(path / name)) for name in TOKENIZER_FILES))
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 8:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = _read_tokenizer(path)
    return copy.deepcopy(_TOKENIZERS[key])  # each caller its own: a tokenizer is changed in place by some users


def _stamp(file: Path) -> tuple[int, int]:
    try:
        info = file.stat()
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


def _read_tokenizer(path: Path):
    from transformers import AutoTokenizer

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


