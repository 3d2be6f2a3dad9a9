"""Expert masks: for each routing group, the set of removed experts (i, j), flat id i*E + j.

A mask is a plain value: set algebra (`|`, `&`, `-`), counts, a fingerprint, validation against
a model's geometry, and two file forms. The JSON interchange form is meant to be written by hand
or by other tools:

    {"format": "resect.mask/v1", "moe_experts": E, "num_groups": G,
     "experts": {"<group>": [flat ids]}, ...extra metadata keys}

Any other suffix gets a compact binary form (a JSON header, then one zlib-compressed bitmap of
E*E bits per non-empty group), about 33 KB per fully populated group at E = 512.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MaskError

if TYPE_CHECKING:
    import torch

FORMAT = "resect.mask/v1"
CHECKPOINT_FILE = "resect_mask.json"  # an edited checkpoint's mask (modeling_monet.MASK_FILE_NAME, which edited checkpoints carry)
BINARY_MAGIC = b"RESECTMASK1\n"
RESERVED_KEYS = {"format", "moe_experts", "num_groups", "experts"}
MAX_EXPERTS, MAX_GROUPS = 8192, 1024  # far beyond any Monet (E 512, a few dozen groups): a bound against damaged files
# Every expert of a 4.1B model (8 groups of 262,144 ids) listed as JSON is about 17 MiB; the bound leaves room for metadata.
MAX_FILE_BYTES = 64 << 20


def geometry(config: Any) -> tuple[int, int]:
    """(E, number of routing groups) of a MonetConfig or a config.json dict."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    experts, layers, per_group = get("moe_experts"), get("num_hidden_layers"), get("moe_groups")
    if not all(isinstance(v, int) and v > 0 for v in (experts, layers, per_group)):
        raise MaskError("Config lacks moe_experts / num_hidden_layers / moe_groups: not a Monet model config.")
    return experts, -(-layers // per_group)


def _as_ids(values: Iterable[int], limit: int, group: int) -> np.ndarray:
    """Sorted unique int64 flat ids, each checked to lie in [0, limit)."""
    try:
        ids = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    except (TypeError, ValueError):
        raise MaskError(f"Group {group}: expert ids must be a flat list of integers.") from None
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    finite_whole = ids.dtype.kind == "f" and bool(np.all(np.isfinite(ids))) and bool(np.all(ids == np.round(ids)))
    if ids.ndim != 1 or (ids.dtype.kind not in "iu" and not finite_whole):
        raise MaskError(f"Group {group}: expert ids must be integers (flat id i*E + j), found {ids.dtype} values.")
    ids = np.unique(ids.astype(np.int64).ravel())
    if ids[0] < 0 or ids[-1] >= limit:
        bad = int(ids[0] if ids[0] < 0 else ids[-1])
        raise MaskError(f"Group {group}: expert id {bad} is outside [0, {limit}) (E*E for E={int(limit**0.5)}).")
    return ids


class ExpertMask:
    """Removed experts per routing group. `experts` maps a 0-based group to flat ids i*E + j."""

    def __init__(
        self,
        moe_experts: int,
        num_groups: int,
        experts: Mapping[int, Iterable[int]] | None = None,
        meta: dict | None = None,
    ):
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (moe_experts, num_groups))
        if not (whole and 0 < moe_experts <= MAX_EXPERTS and 0 < num_groups <= MAX_GROUPS):
            raise MaskError(
                f"A mask needs whole numbers moe_experts in 1..{MAX_EXPERTS} and num_groups in 1..{MAX_GROUPS}, "
                f"found {moe_experts!r}, {num_groups!r}."
            )
        self.moe_experts, self.num_groups = moe_experts, num_groups
        self.meta: dict = dict(meta or {})
        self._ids: dict[int, np.ndarray] = {}
        for group, values in (experts or {}).items():
            g = self._group_index(group)
            ids = _as_ids(values, moe_experts * moe_experts, g)
            if ids.size:
                self._ids[g] = np.union1d(self._ids[g], ids) if g in self._ids else ids

    def _group_index(self, group: Any) -> int:
        try:
            g = int(group)
        except (TypeError, ValueError):
            raise MaskError(f"Group key {group!r} is not an integer (0-based routing group).") from None
        if str(g) != str(group).strip() and not isinstance(group, (int, np.integer)):
            raise MaskError(f"Group key {group!r} is not an integer (0-based routing group).")
        if not 0 <= g < self.num_groups:
            raise MaskError(f"Group {g} does not exist: this mask has groups 0..{self.num_groups - 1} (0-based).")
        return g

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def empty_like(cls, config: Any) -> ExpertMask:
        """An empty mask with the geometry of a MonetConfig (or config.json dict)."""
        experts, groups = geometry(config)
        return cls(experts, groups)

    @classmethod
    def from_dense(cls, dense: Mapping[int, torch.Tensor], *, num_groups: int, meta: dict | None = None) -> ExpertMask:
        """From {group: BoolTensor [E, E]} (True = removed)."""
        experts = {g: m.flatten().nonzero().flatten().tolist() for g, m in dense.items()}
        sizes = {m.shape[-1] for m in dense.values()} or {0}
        if len(sizes) != 1 or any(m.shape[0] != m.shape[1] for m in dense.values()):
            raise MaskError("Dense masks must all be square [E, E] with the same E.")
        return cls(sizes.pop(), num_groups, experts, meta)

    # ---- queries ------------------------------------------------------------------------
    def ids(self, group: int) -> np.ndarray:
        """Sorted flat ids removed in a group (int64, possibly empty)."""
        return self._ids.get(self._group_index(group), np.zeros(0, dtype=np.int64))

    @property
    def groups(self) -> list[int]:
        """Groups with at least one removed expert, ascending."""
        return sorted(self._ids)

    def counts(self) -> dict[int, int]:
        """Removed experts per group, every group listed (0 where none)."""
        return {g: int(self._ids[g].size) if g in self._ids else 0 for g in range(self.num_groups)}

    @property
    def total(self) -> int:
        return sum(int(v.size) for v in self._ids.values())

    @property
    def is_empty(self) -> bool:
        return not self._ids

    def checkpoint_record(self) -> dict:
        """The `resect.mask` entry of an edited checkpoint's config.json, the mask saved as CHECKPOINT_FILE."""
        counts = {str(g): n for g, n in self.counts().items()}
        return {"file": CHECKPOINT_FILE, "counts": counts, "total": self.total, "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 over geometry and removed ids (metadata ignored): 16 hex digits."""
        h = hashlib.sha256(f"{FORMAT}:{self.moe_experts}:{self.num_groups}".encode())
        for g in self.groups:
            h.update(struct.pack("<q", g))
            h.update(self._ids[g].astype("<i8").tobytes())
        return h.hexdigest()[:16]

    def dense(self, group: int) -> torch.Tensor:
        """BoolTensor [E, E], True = removed."""
        import torch

        flat = torch.zeros(self.moe_experts * self.moe_experts, dtype=torch.bool)
        flat[torch.from_numpy(self.ids(group).copy())] = True
        return flat.view(self.moe_experts, self.moe_experts)

    def validate_for(self, config: Any) -> None:
        """Raise MaskError unless the mask fits the model's E and number of routing groups."""
        experts, groups = geometry(config)
        if experts != self.moe_experts:
            raise MaskError(
                f"Mask is for moe_experts={self.moe_experts} but the model has moe_experts={experts}. "
                "Build the mask from this model's statistics."
            )
        if groups != self.num_groups:
            raise MaskError(
                f"Mask has {self.num_groups} routing groups but the model has {groups}. Build the mask from this model's statistics."
            )

    # ---- algebra ------------------------------------------------------------------------
    def _combine(self, other: ExpertMask, op, name: str) -> ExpertMask:
        if not isinstance(other, ExpertMask):
            return NotImplemented
        if (other.moe_experts, other.num_groups) != (self.moe_experts, self.num_groups):
            raise MaskError(
                f"Cannot combine masks of different geometry: E={self.moe_experts}, {self.num_groups} groups vs "
                f"E={other.moe_experts}, {other.num_groups} groups."
            )
        empty = np.zeros(0, dtype=np.int64)
        experts = {g: op(self._ids.get(g, empty), other._ids.get(g, empty)) for g in set(self._ids) | set(other._ids)}
        meta = {"derived": f"{self.fingerprint()} {name} {other.fingerprint()}"}
        return ExpertMask(self.moe_experts, self.num_groups, experts, meta)

    def __or__(self, other: ExpertMask) -> ExpertMask:
        return self._combine(other, np.union1d, "|")

    def __and__(self, other: ExpertMask) -> ExpertMask:
        return self._combine(other, np.intersect1d, "&")

    def __sub__(self, other: ExpertMask) -> ExpertMask:
        return self._combine(other, np.setdiff1d, "-")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpertMask):
            return NotImplemented
        return (self.moe_experts, self.num_groups) == (other.moe_experts, other.num_groups) and self.groups == other.groups and all(
            np.array_equal(self._ids[g], other._ids[g]) for g in self.groups
        )

    __hash__ = None  # mutable meta; compare with == or fingerprint()

    def __repr__(self) -> str:
        counts = ", ".join(f"{g}: {n}" for g, n in self.counts().items() if n)
        return f"ExpertMask(E={self.moe_experts}, groups={self.num_groups}, removed={self.total} {{{counts}}})"

    # ---- files --------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        """The interchange form (metadata keys first-level, reserved keys win)."""
        out = {k: v for k, v in self.meta.items() if k not in RESERVED_KEYS}
        out.update(format=FORMAT, moe_experts=self.moe_experts, num_groups=self.num_groups)
        out["experts"] = {str(g): self._ids[g].tolist() for g in self.groups}
        return out

    def to_bytes(self, name: str | os.PathLike) -> bytes:
        """The file form a path of this name gets: JSON when it ends in .json, compact binary otherwise."""
        return json.dumps(self.to_json_dict()).encode() if Path(name).suffix.lower() == ".json" else self._to_binary()

    def save(self, path: str | os.PathLike) -> Path:
        """JSON when the name ends in .json, compact binary otherwise. Written atomically."""
        path = Path(path)
        data = self.to_bytes(path)
        from ..paths import write_atomic

        try:
            write_atomic(path, data)
        except OSError as exc:
            from ..errors import OutputError

            raise OutputError(f"Cannot write mask to '{path}' ({exc.strerror}). Choose a writable path.") from None
        return path

    def _to_binary(self) -> bytes:
        header = {k: v for k, v in self.to_json_dict().items() if k != "experts"}
        header["groups"] = self.groups
        blob = json.dumps(header).encode()
        parts = [BINARY_MAGIC, struct.pack("<I", len(blob)), blob]
        for g in self.groups:
            bits = np.zeros(self.moe_experts * self.moe_experts, dtype=bool)
            bits[self._ids[g]] = True
            packed = zlib.compress(np.packbits(bits, bitorder="little").tobytes(), 6)
            parts += [struct.pack("<Q", len(packed)), packed]
        return b"".join(parts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExpertMask:
        """Read either form (detected from the content, not the name)."""
        from ..files import not_a_file, parse_json

        path = Path(path)
        if path.exists() and not_a_file(path):
            raise MaskError(f"Mask file '{path}' {not_a_file(path)} (JSON or resect's binary form).")
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise MaskError(f"Mask file '{path}' is {size / (1 << 20):,.0f} MiB; a mask of any Monet model is at most "
                                f"{MAX_FILE_BYTES >> 20} MiB (as JSON). Check that it is a mask.")  # fmt: skip
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MaskError(f"Mask file '{path}' does not exist.") from None
        except IsADirectoryError:
            raise MaskError(f"Mask file '{path}' is a folder. Pass a mask file (JSON or binary).") from None
        except OSError as exc:
            raise MaskError(f"Cannot read mask file '{path}' ({exc.strerror}).") from None
        if raw.startswith(BINARY_MAGIC):
            return cls._from_binary(raw, path)
        data = parse_json(raw, where=f"Mask file '{path}'", error=MaskError)  # not resect's binary form: JSON, checked
        return cls.from_json_dict(data, source=str(path))

    @classmethod
    def from_json_dict(cls, data: Any, *, source: str = "mask") -> ExpertMask:
        if not isinstance(data, dict):
            raise MaskError(f"{source}: expected a JSON object with moe_experts, num_groups and experts.")
        if data.get("format", FORMAT) != FORMAT:
            raise MaskError(f"{source}: format is {data['format']!r}, expected {FORMAT!r}.")
        missing = [k for k in ("moe_experts", "num_groups", "experts") if k not in data]
        if missing:
            raise MaskError(f"{source}: missing key(s) {', '.join(missing)}; expected {{'format': '{FORMAT}', "
                            "'moe_experts': E, 'num_groups': G, 'experts': {'<group>': [flat ids]}}.")
        if not isinstance(data["experts"], dict) or not all(isinstance(v, list) for v in data["experts"].values()):
            raise MaskError(f"{source}: 'experts' must map a group number (string) to a list of flat ids.")
        meta = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
        _check_meta(meta, source)
        try:
            return cls(data["moe_experts"], data["num_groups"], data["experts"], meta)
        except MaskError as exc:
            raise MaskError(f"{source}: {exc}") from None

    @classmethod
    def _from_binary(cls, raw: bytes, path: Path) -> ExpertMask:
        try:
            off = len(BINARY_MAGIC)
            (n,) = struct.unpack_from("<I", raw, off)
            header = json.loads(raw[off + 4 : off + 4 + n])
            off += 4 + n
            experts_n, num_groups = int(header["moe_experts"]), header["num_groups"]
            if not 0 < experts_n <= MAX_EXPERTS or not isinstance(num_groups, int) or not 0 < num_groups <= MAX_GROUPS:
                raise MaskError(f"Mask file '{path}' claims E={experts_n} and {num_groups} groups, beyond any Monet model "
                                f"(E at most {MAX_EXPERTS}, {MAX_GROUPS} groups). It is damaged: recreate it.")  # fmt: skip
            if len(header["groups"]) > num_groups:
                raise ValueError("more bitmaps than groups")
            experts = {}
            length = -(-experts_n * experts_n // 8)  # bytes of one group's bitmap
            for g in header["groups"]:
                (size,) = struct.unpack_from("<Q", raw, off)
                inflate = zlib.decompressobj()
                packed = inflate.decompress(raw[off + 8 : off + 8 + size], length + 1)  # never more than a bitmap
                if len(packed) != length:
                    raise ValueError("bitmap of the wrong length")
                bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), bitorder="little")
                experts[g] = np.flatnonzero(bits[: experts_n * experts_n])
                off += 8 + size
        except (struct.error, zlib.error, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise MaskError(f"Mask file '{path}' is a damaged binary mask. Recreate it.") from None
        meta = {k: v for k, v in header.items() if k not in RESERVED_KEYS | {"groups"}}
        _check_meta(meta, str(path))
        return cls(experts_n, num_groups, experts, meta)


def _check_meta(meta: dict, source: str) -> None:
    """Metadata resect reads back (the fingerprint of the statistics' model) has its type."""
    for key in ("stats_model_fingerprint", "source"):
        if key in meta and not isinstance(meta[key], str):
            raise MaskError(f"Mask file '{source}': '{key}' is {type(meta[key]).__name__}, not text. Recreate the mask with 'resect select'.")


__all__ = ["ExpertMask", "FORMAT"]
