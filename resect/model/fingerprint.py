"""Fingerprints of weights: a checkpoint's from its files (headers and a few hundred values per
tensor, never the whole weights, no torch needed), a model's from its tensors in memory; the two
agree in any dtype and on any device."""

from __future__ import annotations

import hashlib
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .checkpoint import read_safetensors_header, weight_files

if TYPE_CHECKING:
    import numpy as np
    import torch


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


__all__ = ["checkpoint_fingerprint", "model_fingerprint"]
