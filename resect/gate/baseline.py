"""The evaluations a verification compares: one checkpoint's lm-eval results and toxicity.

Baseline results are cached on disk ($RESECT_CACHE_DIR or ~/.cache/resect), keyed by a digest of
what the checkpoint computes (its weights' fingerprint, its weight files' sizes and times, its
mask), the task configuration (YAML and local data files), limit, seed, dtype, device kind and
the lm-eval version, so verifying ten edits of one model evaluates the base once. A damaged
entry is discarded, named in a warning, and evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EvalError
from ..paths import write_atomic

log = logging.getLogger(__name__)
PER_DOC_FORMAT = 2  # what a cached result's per-question scores hold (2: clusters, p_correct, log-likelihoods); part of the key


def cache_dir() -> Path:
    """Where baseline results live (under resect.cache.cache_root())."""
    from ..cache import cache_root

    return cache_root() / "baselines"


def cache_key(parts: dict[str, Any]) -> str:
    from ..cache import digest

    return digest(parts, 24)


def cache_load(key: str) -> dict | None:
    file = cache_dir() / f"{key}.json"
    if not file.is_file():
        return None
    try:
        entry = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError):
        entry = None
    fits = isinstance(entry, dict) and isinstance(entry.get("toxicity"), dict) and (entry.get("results") is None or isinstance(entry["results"], dict))
    if not fits or (entry["results"] is not None and not isinstance(entry["results"].get("results"), dict)):
        log.warning("discarding a damaged baseline cache entry %s; evaluating again", file)
        file.unlink(missing_ok=True)
        return None
    return entry


def cache_store(key: str, value: dict) -> None:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_atomic(cache_dir() / f"{key}.json", json.dumps(value, sort_keys=True))
    except OSError as exc:  # a read-only cache must not fail a verification
        log.warning("could not write the baseline cache (%s)", exc)


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """What a checkpoint computes, read from its files without loading them: the weights'
    fingerprint, each weight file's size and modification time (a weight changed in place changes
    them), and the digest of its expert mask, if it has one."""
    from ..model.checkpoint import INDEX_FILE, inspect_checkpoint
    from ..model.fingerprint import checkpoint_fingerprint

    info = inspect_checkpoint(path)
    files = {}
    for name in [*info.shards, *([INDEX_FILE] if (path / INDEX_FILE).is_file() else [])]:
        stat = (path / name).stat()
        files[name] = [stat.st_size, stat.st_mtime_ns]
    record = info.config.get("resect") if isinstance(info.config.get("resect"), dict) else {}
    mask_file = (record.get("mask") or {}).get("file")
    mask = hashlib.sha256((path / mask_file).read_bytes()).hexdigest() if mask_file and (path / mask_file).is_file() else None
    return {"fingerprint": checkpoint_fingerprint(path), "files": files, "mask": mask}


@dataclass
class EvalSettings:
    """What both evaluations of a verification share (and what keys a cached baseline)."""

    tasks: list[str]
    includes: list[str]
    limit: int | float | None
    batch_size: int
    seed: int
    toxicity: list[str]  # prompt files whose expected maximum toxicity is measured
    toxicity_settings: dict
    dtype: str
    device: str

    def cache_key(self, path: Path) -> str:
        from .. import __version__
        from ..tasks import task_config_hash
        from .evaluate import lm_eval_version

        return cache_key({
            "checkpoint": checkpoint_identity(path), "tasks": sorted(self.tasks), "task_config": task_config_hash(self.tasks, self.includes),
            "limit": self.limit, "seed": self.seed, "lm_eval": lm_eval_version(), "dtype": self.dtype,
            "device": self.device.split(":")[0], "resect": __version__, "per_doc": PER_DOC_FORMAT,
            "toxicity": {p: _file_digest(p) for p in self.toxicity}, "toxicity_settings": self.toxicity_settings,
        })  # fmt: skip


def evaluate_checkpoint(path: Path, settings: EvalSettings, *, use_cache: bool, source=None, reporter=None) -> dict:
    """lm-eval results and toxicity of one checkpoint. With `use_cache`, a cached entry answers
    without loading the model; otherwise `source()` gives (model, tokenizer) of that checkpoint
    (already in memory, masks cleared), else the checkpoint is loaded. `reporter` shows progress."""
    from ..model.fingerprint import checkpoint_fingerprint
    from ..model.loading import load_model, load_tokenizer, release_memory
    from .evaluate import evaluate
    from .toxicity import measure_toxicity

    key = settings.cache_key(path) if use_cache else None
    out = {"path": str(path), "fingerprint": checkpoint_fingerprint(path), "cache_key": key}
    cached = cache_load(key) if key else None
    if cached is not None:
        log.info("baseline cache hit for %s (%s)", path, key)
        return out | {"results": cached["results"], "toxicity": cached["toxicity"], "cached": True}
    from ..progress import quiet

    r = reporter or quiet()
    loaded = source is None
    if loaded:
        model, tokenizer = load_model(path, dtype=settings.dtype, device=settings.device), load_tokenizer(path)
    else:
        model, tokenizer = source()
    s = settings
    results = None
    if s.tasks:
        results = evaluate(model, tokenizer, s.tasks, include_path=s.includes, limit=s.limit, batch_size=s.batch_size, seed=s.seed,
                           progress=r.meter("evaluating", "requests"))  # fmt: skip
    tox = {
        p: measure_toxicity(model, tokenizer, p, progress=r.meter("toxicity", "prompts"), **({"seed": s.seed} | s.toxicity_settings))
        for p in s.toxicity
    }  # fmt: skip
    if loaded:
        del model
        release_memory()
    if key:
        cache_store(key, {"results": results, "toxicity": tox})
    return out | {"results": results, "toxicity": tox, "cached": False}


def _file_digest(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise EvalError(f"Toxicity prompts '{path}' do not exist. Pass a JSONL of {{\"prompt\": ...}} lines.")
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


__all__ = ["EvalSettings", "evaluate_checkpoint", "checkpoint_identity", "cache_dir", "cache_key"]
