"""Routing statistics: per routing group and label, sums of expert routing scores over tokens.

A `RoutingStats` holds, in float64,
- `sums[g, l]`: `sum_t w_t[i, j]` over the counted tokens of label `l` ([G, L, E, E]),
- `token_counts[label]`: how many tokens each label contributed (padding and special tokens never count),
- optionally, over every token that carries a score y_t (toxicity), the running sums for the
  token-level Pearson correlation: `sum w`, `sum w^2`, `sum w*y` ([G, E, E] each) and `n, sum y, sum y^2`.

The file is safetensors; its metadata records what the numbers were computed from (model and
corpus fingerprints, labels, token counts, resect version), so statistics from another model
are refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import StatsError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

FORMAT = "resect.stats/v1"
CORR_KEYS = ("w", "w2", "wy")


@dataclass
class RoutingStats:
    """Per-group, per-label routing sums (+ optional correlation sums) and their provenance."""

    labels: list[str]
    token_counts: dict[str, int]
    sums: torch.Tensor  # [G, L, E, E] float64
    model_fingerprint: str = ""
    corpus_fingerprint: str = ""
    corr: dict[str, torch.Tensor] | None = None  # "w", "w2", "wy": [G, E, E]; "moments": [3] (n, sum y, sum y^2)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return self.sums.shape[0]

    @property
    def moe_experts(self) -> int:
        return self.sums.shape[-1]

    @property
    def scored_tokens(self) -> int:
        """Tokens that carried a score (0 when no correlation sums were kept)."""
        return int(self.corr["moments"][0].item()) if self.corr is not None else 0

    def label_index(self, label: str) -> int:
        """Position of a label; StatsError with "did you mean" when absent."""
        from ..errors import unknown

        if label not in self.labels:
            raise StatsError(unknown("label", label, self.labels))
        return self.labels.index(label)

    def mean(self, group: int) -> torch.Tensor:
        """Mean routing score of every expert per label: [L, E, E] (NaN for a label with no tokens)."""
        counts = torch.tensor([self.token_counts[lab] for lab in self.labels], dtype=torch.float64)
        return self.sums[group] / counts[:, None, None]

    def correlation(self, group: int) -> torch.Tensor | None:
        """Token-level Pearson r of w[i, j] with the score: [E, E]; NaN where w or y never varies."""
        if self.corr is None or self.scored_tokens == 0:
            return None
        n, sy, syy = (float(v) for v in self.corr["moments"])
        sw, sww, swy = (self.corr[k][group] for k in CORR_KEYS)
        cov = n * swy - sw * sy
        var_w = (n * sww - sw * sw).clamp_min(0.0)
        var_y = max(n * syy - sy * sy, 0.0)
        denom = torch.sqrt(var_w * var_y)
        r = (cov / denom.clamp_min(1e-300)).clamp(-1.0, 1.0)
        return torch.where(denom > 0, r, torch.full_like(r, float("nan")))

    # ---- provenance ---------------------------------------------------------------------
    def check_model(self, model: nn.Module | str) -> None:
        """Raise StatsError unless these statistics were computed on this model (or its fingerprint)."""
        from ..model.fingerprint import model_fingerprint

        found = model if isinstance(model, str) else model_fingerprint(model)
        if found != self.model_fingerprint:
            raise StatsError(
                f"Statistics were computed on model {self.model_fingerprint or '(unknown)'} but this model is {found}. "
                "Run `resect profile` on this model."
            )
        if not isinstance(model, str):
            experts = getattr(model.config, "moe_experts", None)
            if experts != self.moe_experts:
                raise StatsError(f"Statistics have E={self.moe_experts} but the model has moe_experts={experts}.")

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata (all strings)."""
        from .. import __version__

        info = {
            "format": FORMAT,
            "resect_version": __version__,
            "model_fingerprint": self.model_fingerprint,
            "corpus_fingerprint": self.corpus_fingerprint,
            "labels": json.dumps(self.labels),
            "token_counts": json.dumps(self.token_counts),
            "num_groups": str(self.num_groups),
            "moe_experts": str(self.moe_experts),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        return info

    # ---- files --------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"sums": self.sums.contiguous()}
        for key, value in (self.corr or {}).items():
            out[f"corr.{key}"] = value.contiguous()
        return out

    def to_bytes(self) -> bytes:
        """The safetensors file's bytes (tensors and metadata)."""
        from safetensors.torch import save

        return save(self.tensors(), metadata=self.metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file, then rename)."""
        from ..paths import write_atomic

        path = Path(path)
        try:
            write_atomic(path, self.to_bytes())
        except OSError as exc:
            from ..errors import OutputError

            raise OutputError(f"Cannot write statistics to '{path}' ({exc.strerror}). Choose a writable path.") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RoutingStats:
        """Read a statistics file; StatsError when it is missing, damaged or not resect statistics."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            state = "is a folder" if path.is_dir() else "does not exist"
            raise StatsError(f"Statistics file '{path}' {state}. Pass the file `resect profile` wrote.")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise StatsError(f"'{path}' is not a readable safetensors file ({exc}). Recreate it with `resect profile`.") from None
        if meta.get("format") != FORMAT or "sums" not in tensors:
            raise StatsError(f"'{path}' is not a resect statistics file (format {meta.get('format')!r}, expected {FORMAT!r}).")
        corr = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("corr.")} or None
        damaged = f"'{path}' is a damaged statistics file"
        from ..files import parse_json

        missing = next((k for k in ("labels", "token_counts") if k not in meta), None)
        if missing:
            raise StatsError(f"{damaged} (metadata: '{missing}' missing). Recreate it with `resect profile`.")
        labels, counts, extra = (parse_json(meta.get(key, "{}"), where=f"{damaged}: its metadata '{key}'", error=StatsError)
                                 for key in ("labels", "token_counts", "meta"))  # fmt: skip
        sums = tensors["sums"]
        problem = _damage(labels, counts, sums, corr, meta)
        if problem:
            raise StatsError(f"{damaged}: {problem}. Recreate it with `resect profile`.")
        return cls(
            labels=labels,
            token_counts=counts,
            sums=sums,
            model_fingerprint=meta.get("model_fingerprint", ""),
            corpus_fingerprint=meta.get("corpus_fingerprint", ""),
            corr=corr,
            meta=extra,
        )


def _damage(labels, counts: dict, sums: torch.Tensor, corr: dict | None, meta: dict) -> str | None:
    """What makes a statistics file unusable though it parses: labels, counts, sums, fingerprints."""
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        return "its labels are not a list of names"
    if len(set(labels)) != len(labels):
        return f"the label {next(x for x in labels if labels.count(x) > 1)!r} appears twice"
    if not isinstance(counts, dict) or set(counts) != set(labels):
        return "its token counts do not name exactly its labels"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        return "its token counts are not whole numbers of tokens"
    if sums.ndim != 4 or sums.shape[1] != len(labels) or sums.shape[2] != sums.shape[3]:
        return f"sums of shape {tuple(sums.shape)} for {len(labels)} labels, expected [G, L, E, E]"
    if not sums.is_floating_point():
        return f"its sums are {str(sums.dtype).removeprefix('torch.')}, not floating point"
    for name, tensor in [("sums", sums), *((f"corr.{k}", v) for k, v in (corr or {}).items())]:
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            return f"its {name} hold values that are not finite numbers"
    if not isinstance(meta.get("model_fingerprint", ""), str):
        return "its model fingerprint is not text"
    return None


def empty_stats(labels: list[str], *, num_groups: int, experts: int, scored: bool) -> RoutingStats:
    """All-zero statistics for these labels (the start of a profiling run)."""
    sums = torch.zeros(num_groups, len(labels), experts, experts, dtype=torch.float64)
    corr = None
    if scored:
        corr = {k: torch.zeros(num_groups, experts, experts, dtype=torch.float64) for k in CORR_KEYS}
        corr["moments"] = torch.zeros(3, dtype=torch.float64)
    return RoutingStats(labels=list(labels), token_counts={lab: 0 for lab in labels}, sums=sums, corr=corr)


__all__ = ["RoutingStats", "empty_stats", "FORMAT"]
