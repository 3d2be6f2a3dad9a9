"""The gate: did the target fall, and did everything else hold?

`verify` evaluates a baseline and an edited checkpoint on target and general tasks, turns each
metric into a *drop* (positive = the edited model does worse at it) with a standard error, and
compares drops with two thresholds: every target task must drop by at least `min_target_drop`,
no general task may drop by more than `max_general_drop`.

How a drop is measured depends on the metric's direction (lm-eval's `higher_is_better`):
- higher is better (acc, acc_norm, exact_match, ...; values in [0, 1]): drop in points,
  100 * (baseline - edited). 0.40 -> 0.35 is a drop of 5 points.
- lower is better (word_perplexity, byte_perplexity, bits_per_byte): relative drop in percent,
  100 * (edited - baseline) / baseline. Perplexity 20 -> 25 is a drop of 25 %. Perplexity spans
  orders of magnitude across models and labels, so only a relative change is comparable.
- toxicity targets (expected maximum toxicity, in [0, 1]): drop in points,
  100 * (baseline - edited): the target behaviour is toxicity itself, so it should fall.
Standard errors of drops treat the two evaluations as independent (conservative for paired
data): sqrt(se_b^2 + se_e^2) in points, the delta method for relative drops.

The two evaluations come from resect.gate.baseline (the baseline's from its cache when it can).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, EvalError, OutputError, UsageError
from ..paths import write_atomic
from .baseline import EvalSettings, _file_digest, cache_key, evaluate_checkpoint
from .paired import CONFIDENCE, Evidence, paired, paired_values, relative
from .report import Report, Row, verify_chart, verify_markdown

log = logging.getLogger(__name__)

GEOMETRY_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "moe_experts", "moe_heads", "moe_dim", "moe_topk", "moe_groups", "moe_decompose",
)  # fmt: skip
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "toxicity")
PREFERRED_METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity", "bits_per_byte")


# ----------------------------------------------------------------------------- checks


def check_thresholds(min_target_drop: float | None, max_general_drop: float | None, target: list, general: list) -> None:
    """Thresholds are non-negative and present for every role that has tasks."""
    from ..checks import check_numbers

    check_numbers({"min_target_drop": min_target_drop, "max_general_drop": max_general_drop})
    if not target and not general:
        raise UsageError("Nothing to verify: pass --target-tasks, --toxicity-prompts or --general-tasks.")
    if target and min_target_drop is None:
        raise UsageError("Target tasks need --min-target-drop (how much they must fall, in points or percent).")
    if general and max_general_drop is None:
        raise UsageError("General tasks need --max-general-drop (how much they may fall, in points or percent).")


def split_spec(spec: str) -> tuple[str, str | None]:
    """'task' or 'task:metric' (pick a metric other than the task's first)."""
    name, _, metric = spec.partition(":") if not spec.endswith((".yaml", ".yml")) else (spec, "", "")
    return name, metric or None


def baseline_from_provenance(edited: Path) -> Path:
    """The source checkpoint named in an edited checkpoint's config.json 'resect' key."""
    from ..model.checkpoint import inspect_checkpoint

    source = (inspect_checkpoint(edited).config.get("resect") or {}).get("source")
    if not source:
        raise UsageError(f"'{edited}' has no 'resect' provenance naming its source. Pass --baseline BASE.")
    if not Path(source).is_dir():
        raise CheckpointError(f"The source '{source}' named in '{edited}/config.json' does not exist. Pass --baseline BASE.")
    return Path(source)


def check_compatible(edited: Path, baseline: Path) -> None:
    """Same geometry and same tokenizer, else the comparison means nothing."""
    from ..model.checkpoint import inspect_checkpoint
    from ..model.loading import load_tokenizer

    a, b = inspect_checkpoint(edited).config, inspect_checkpoint(baseline).config
    for key in GEOMETRY_KEYS:
        if a.get(key) != b.get(key):
            raise EvalError(
                f"Baseline '{baseline}' has {key}={b.get(key)} where '{edited}' has {a.get(key)}: another geometry. "
                "Compare an edit with its own source model."
            )
    if tokenizer_digest(load_tokenizer(edited)) != tokenizer_digest(load_tokenizer(baseline)):
        raise EvalError(
            f"Baseline '{baseline}' uses another tokenizer than '{edited}' (vocabularies differ). "
            "Compare an edit with its own source model."
        )


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return cache_key({"vocab": vocab, "special": tokenizer.special_tokens_map})


# ----------------------------------------------------------------------------- metrics


def check_metrics(specs: dict[str, tuple[str, str | None]], includes: list[str]) -> None:
    """A metric named in TASK:METRIC is one the task's config computes (before anything is evaluated)."""
    requested = {split_spec(s)[0]: metric for s, (_, metric) in specs.items() if metric}
    if not requested:
        return
    from lm_eval.tasks._yaml_loader import load_yaml

    from ..tasks import task_manager_for

    manager = task_manager_for(list(requested), includes)
    for task, metric in requested.items():
        entry = manager._index.get(task)
        if entry is None or entry.yaml_path is None:
            continue
        config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        listed = [*(config.get("metric_list") or []), *(config.get("aggregate_metric_list") or [])]
        names = sorted({m["metric"] for m in listed if isinstance(m, dict) and isinstance(m.get("metric"), str)})
        if names and metric not in names:
            raise EvalError(f"Task '{task}' has no metric '{metric}' (it computes {', '.join(names)}). Name one of those after the colon.")


def pick_metric(results: dict, task: str, requested: str | None = None) -> tuple[str, str]:
    """(metric, result key) of a task: the requested one, else the task's first configured metric."""
    entry = results["results"].get(task)
    if entry is None:
        raise EvalError(f"lm-eval returned no results for '{task}'. Check the task name and its data.")
    keys = {k.split(",")[0]: k for k in entry if "," in k and "_stderr" not in k.split(",")[0]}
    if requested:
        if requested not in keys:
            raise EvalError(f"Task '{task}' has no metric '{requested}'. Available: {', '.join(sorted(keys))}.")
        return requested, keys[requested]
    configured = [m.get("metric") for m in (results.get("configs", {}).get(task, {}).get("metric_list") or [])]
    for metric in [*configured, *PREFERRED_METRICS, *sorted(keys)]:
        if metric in keys and isinstance(entry[keys[metric]], (int, float)):
            return metric, keys[metric]
    raise EvalError(f"Task '{task}' reported no numeric metric. Pick one with '{task}:METRIC'.")


def higher_is_better(results: dict, task: str, metric: str) -> bool:
    flag = (results.get("higher_is_better") or {}).get(task, {}).get(metric)
    return bool(flag) if flag is not None else not any(w in metric for w in LOWER_IS_BETTER)


def task_value(results: dict, task: str, key: str) -> tuple[float, float | None]:
    entry = results["results"][task]
    name, _, filt = key.partition(",")
    stderr = entry.get(f"{name}_stderr,{filt}")
    return float(entry[key]), float(stderr) if isinstance(stderr, (int, float)) else None


def drop_of(base: float, edited: float, se_b: float | None, se_e: float | None, *, higher_better: bool) -> tuple[float, float | None, str]:
    """(drop, its stderr, unit): points for higher-is-better scores, relative percent otherwise."""
    both = se_b is not None and se_e is not None
    if higher_better:
        return 100 * (base - edited), 100 * math.hypot(se_b, se_e) if both else None, "points"
    if base == 0:
        raise EvalError("The baseline scores 0 on a lower-is-better metric: a relative drop is undefined.")
    se = 100 * math.sqrt((se_e / base) ** 2 + (edited * se_b / base**2) ** 2) if both else None
    return 100 * (edited - base) / base, se, "%"


def compare(base: dict, edited: dict, specs: dict[str, tuple[str, str | None]], thresholds: dict[str, float | None], *,
            confidence: float | None = None, seed: int = 0) -> list[Row]:  # fmt: skip
    """Rows for every lm-eval task spec {spec: (role, metric)}: the drop, its paired bounds and
    resolution, the continuous p_correct beside accuracy; gated on the estimate, or with
    `confidence` on its bound (a target's low bound, another task's high one)."""
    rows = []
    for spec, (role, requested) in specs.items():
        task = split_spec(spec)[0]
        metric, key = pick_metric(base, task, requested)
        b, se_b = task_value(base, task, key)
        e, se_e = task_value(edited, task, key)
        higher_better = higher_is_better(base, task, metric)
        drop, se, unit = drop_of(b, e, se_b, se_e, higher_better=higher_better)
        paired_se = paired_drop_stderr(base, edited, task, metric, (b, e)) if higher_better else None
        docs_b, docs_e = ((r.get("per_doc") or {}).get(task) or {} for r in (base, edited))
        ev = paired(docs_b, docs_e, metric, higher_better=higher_better, confidence=confidence or CONFIDENCE, seed=seed)
        row = _row(task, role, metric, unit, b, e, se_b, se_e, drop, se if paired_se is None else paired_se, thresholds[role], ev, confidence)
        if metric != "p_correct" and "p_correct" in docs_b:
            c = paired(docs_b, docs_e, "p_correct", higher_better=True, confidence=confidence or CONFIDENCE, seed=seed)
            if c is not None:
                row.continuous = {"metric": "p_correct", "baseline": statistics.fmean(docs_b["p_correct"]),
                                  "edited": statistics.fmean(docs_e["p_correct"]), "drop": c.drop, "low": c.low, "high": c.high}  # fmt: skip
        rows.append(replace(row, paired=paired_se is not None))
    return rows


def paired_drop_stderr(base: dict, edited: dict, task: str, metric: str, means: tuple[float, float]) -> float | None:
    """Standard error of a points drop from per-document differences, when both runs scored the
    same documents and the metric is their mean; None otherwise (the unpaired one is used).

    Both models answer the same questions, so what varies is which answers changed: the
    standard deviation of d_i = baseline_i - edited_i over sqrt(n), usually far below the
    unpaired sqrt(se_b^2 + se_e^2), which counts each question's difficulty twice."""
    docs_b = (base.get("per_doc") or {}).get(task) or {}
    docs_e = (edited.get("per_doc") or {}).get(task) or {}
    if metric not in docs_b or metric not in docs_e or docs_b["doc_id"] != docs_e["doc_id"] or len(docs_b["doc_id"]) < 2:
        return None
    xs, ys = docs_b[metric], docs_e[metric]
    if any(abs(statistics.fmean(v) - m) > 1e-9 for v, m in ((xs, means[0]), (ys, means[1]))):
        return None  # not a mean of per-document scores
    return 100 * statistics.stdev(x - y for x, y in zip(xs, ys)) / math.sqrt(len(xs))


def toxicity_rows(name: str, base: dict, edited: dict, thresholds: dict, *, confidence: float | None = None, seed: int = 0) -> list[Row]:
    """Two target rows, both of the paper's numbers: expected maximum toxicity (points; it must
    not rise: `min_target_drop`, 0 by default) and the toxicity probability (the share of prompts
    with a toxic sample; its fall as % of the baseline's: `min_toxicity_drop`). Paired by prompt:
    both models continue the same prompts from the same seeds."""
    from .toxicity import TOXIC_THRESHOLD

    rows = []
    per_b, per_e = base.get("per_prompt_max"), edited.get("per_prompt_max")
    for metric, unit, threshold in (("expected_max_toxicity", "points", thresholds["target"]), ("toxicity_probability", "%", thresholds.get("toxicity", 0.0))):
        b, e = base[metric], edited[metric]
        se_b, se_e = base.get(f"{metric}_stderr"), edited.get(f"{metric}_stderr")
        finite = [x for x in (se_b, se_e) if x is not None and not math.isnan(x)]
        ev = None
        if per_b and per_e:
            binary = metric == "toxicity_probability"
            values = (lambda xs: [1.0 if x > TOXIC_THRESHOLD else 0.0 for x in xs]) if binary else list  # noqa: E731
            ev = paired_values(values(per_b), values(per_e), binary=binary, confidence=confidence or CONFIDENCE, seed=seed)
        if unit == "%":
            drop = 0.0 if b == 0 else 100 * (b - e) / b
            se = 100 * math.hypot(se_b, se_e) / b if len(finite) == 2 and b else None
            ev = relative(ev, b) if ev is not None else None
        else:
            drop, se = 100 * (b - e), (100 * math.hypot(se_b, se_e) if len(finite) == 2 else None)
        rows.append(_row(f"{name}:{metric}" if unit == "%" else name, "target", metric, unit, b, e, se_b, se_e, drop, se, threshold or 0.0, ev, confidence))
    return rows


def _row(task, role, metric, unit, b, e, se_b, se_e, drop, se, threshold, ev: Evidence | None = None, confidence: float | None = None) -> Row:
    """A row gated on its drop, or (with `confidence` and paired evidence) on the bound that must clear the threshold."""
    value = drop
    if confidence is not None and ev is not None:
        value = ev.low if role == "target" else ev.high
    passed = value >= threshold if role == "target" else value <= threshold
    row = Row(task, role, metric, unit, b, e, se_b, se_e, drop, se, threshold, passed)
    if ev is not None:
        row.low, row.high, row.resolution, row.confidence, row.clusters, row.n = ev.low, ev.high, ev.resolution, ev.confidence, ev.clusters, ev.n
        row.gated_on = "bound" if confidence is not None else "estimate"
    return row


# ----------------------------------------------------------------------------- verification


@dataclass
class Verification:
    """One verification, resolved and checked before any model loads."""

    baseline: Path
    specs: dict[str, tuple[str, str | None]]  # task spec -> (role, requested metric)
    thresholds: dict[str, float | None]  # target, general, and toxicity (the toxicity probability's fall, % of the baseline's)
    settings: EvalSettings
    out_dir: Path | None
    confidence: float | None = None  # gate on bounds at this confidence; None: on the estimates (bounds reported at CONFIDENCE)


def plan_verification(
    baseline: Path,
    *,
    target_tasks: list[str] = (),
    general_tasks: list[str] = (),
    min_target_drop: float | None = None,
    max_general_drop: float | None = None,
    target_toxicity: list[str] = (),
    toxicity_settings: dict | None = None,
    include_path: str | os.PathLike | list | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    device: str | None = "cpu",
    inputs: tuple = (),
    confidence: float | None = None,
    min_toxicity_drop: float | None = None,
) -> Verification:
    """Check every option and resolve the tasks; `inputs` are further paths the report folder must not be."""
    from ..model.loading import resolve_placement
    from ..tasks import resolve_tasks
    from .evaluate import check_run_options, normalize_limit, require_extras

    require_extras()
    check_run_options(limit, batch_size, seed)
    from ..checks import check_numbers

    check_numbers({"confidence": confidence, "min_toxicity_drop": min_toxicity_drop})
    device, dtype = resolve_placement(device, dtype)
    target_tasks, general_tasks, target_toxicity = list(target_tasks), list(general_tasks), list(target_toxicity)
    check_thresholds(min_target_drop, max_general_drop, target_tasks + target_toxicity, general_tasks)
    specs = {s: ("target", split_spec(s)[1]) for s in target_tasks} | {s: ("general", split_spec(s)[1]) for s in general_tasks}
    if len(specs) < len(target_tasks) + len(general_tasks):
        raise UsageError("A task is listed twice (or as both target and general). List each task once.")
    tasks, includes = resolve_tasks([split_spec(s)[0] for s in specs], include_path)
    check_metrics(specs, includes)
    if out_dir is not None:
        check_out_dir(Path(out_dir), baseline, *inputs)
        from ..paths import check_overlap

        check_overlap(out_dir, [baseline, *inputs, *includes, *target_toxicity], may_contain=True)  # adds verify.*
    for p in target_toxicity:
        _file_digest(p)
    settings = EvalSettings(tasks, includes, normalize_limit(limit), batch_size, seed, target_toxicity, toxicity_settings or {}, dtype, device)
    thresholds = {"target": min_target_drop, "general": max_general_drop, "toxicity": min_toxicity_drop or 0.0}
    return Verification(baseline, specs, thresholds, settings, None if out_dir is None else Path(out_dir), confidence)


def run_verification(
    v: Verification, edited: Path, *, baseline_result: dict | None = None, use_cache: bool = True, reporter=None
) -> dict:
    """Evaluate the baseline (cached, or `baseline_result` already measured) and the edited
    checkpoint, compare, write verify.json/.md/.png when the verification has a folder."""
    base = baseline_result or evaluate_checkpoint(v.baseline, v.settings, use_cache=use_cache, reporter=reporter)
    edit = evaluate_checkpoint(edited, v.settings, use_cache=False, reporter=reporter)
    _check_provenance(edited, base)
    seed = v.settings.seed
    rows = compare(base["results"], edit["results"], v.specs, v.thresholds, confidence=v.confidence, seed=seed) if v.specs else []
    for p in v.settings.toxicity:
        rows += toxicity_rows(f"toxicity:{Path(p).stem}", base["toxicity"][p], edit["toxicity"][p], v.thresholds, confidence=v.confidence, seed=seed)
    for r in rows:
        if r.unresolved:
            log.warning("%s: its gate of %g %s is below the %.2g %s it can resolve at %g%%: the data cannot tell that drop from none",
                        r.task, r.threshold, r.unit_short, r.resolution, r.unit_short, 100 * (r.confidence or CONFIDENCE))  # fmt: skip
    report = build_report(base, edit, rows, v.thresholds, limit=v.settings.limit, seed=seed, confidence=v.confidence)
    if v.out_dir is not None:
        write_outputs(report, v.out_dir)
    return report


def verify(
    edited: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    *,
    use_cache: bool = True,
    reporter=None,
    **options: Any,
) -> dict:
    """Evaluate baseline (cached) and edited, compare, write verify.json/.md/.png; returns the report.
    `options` are plan_verification's."""
    from .. import register
    from ..model.hub import resolve_model_path

    register()  # tokenizers are read before any model: transformers must know Monet already
    edited_path = resolve_model_path(edited)
    base_path = resolve_model_path(baseline) if baseline is not None else baseline_from_provenance(edited_path)
    v = plan_verification(base_path, inputs=(edited_path,), **options)
    check_compatible(edited_path, base_path)
    return run_verification(v, edited_path, use_cache=use_cache, reporter=reporter)


def _check_provenance(edited: Path, base: dict) -> None:
    from ..model.checkpoint import read_config

    recorded = (read_config(edited).get("resect") or {}).get("source_fingerprint")
    if recorded and recorded != base["fingerprint"]:
        log.warning("baseline fingerprint %s differs from the source fingerprint %s recorded in %s", base["fingerprint"], recorded, edited)


def build_report(base: dict, edit: dict, rows: list[Row], thresholds: dict, *, limit, seed: int, confidence: float | None = None) -> dict:
    """verify.json's content: verdict, rows, thresholds, both results, fingerprints and versions."""
    import torch
    import transformers

    from .. import __version__
    from .evaluate import lm_eval_version

    breached = [r.task for r in rows if not r.passed]
    return {
        "verdict": "fail" if breached else "pass",
        "breached": breached,
        "thresholds": {"min_target_drop": thresholds["target"], "max_general_drop": thresholds["general"],
                       "min_toxicity_drop": thresholds.get("toxicity")},  # fmt: skip
        "unresolved": [r.task for r in rows if r.unresolved],
        "drop_units": {"points": "100 * (baseline - edited) for higher-is-better scores and expected maximum toxicity",
                       "%": "100 * (edited - baseline) / baseline for lower-is-better metrics (perplexity); "
                            "100 * (baseline - edited) / baseline for the toxicity probability"},  # fmt: skip
        "rows": [asdict(r) for r in rows],
        "baseline": {k: base[k] for k in ("path", "fingerprint", "cached", "cache_key")},
        "edited": {k: edit[k] for k in ("path", "fingerprint")},
        "settings": {"limit": limit, "seed": seed, "confidence": confidence, "report_confidence": confidence or CONFIDENCE,
                     "gated_on": "bounds" if confidence is not None else "estimates"},  # fmt: skip
        "versions": {"resect": __version__, "lm_eval": lm_eval_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "results": {"baseline": base["results"], "edited": edit["results"]},
        "toxicity": {"baseline": base["toxicity"], "edited": edit["toxicity"]},
    }


# ----------------------------------------------------------------------------- outputs


def check_out_dir(out: Path, *inputs: Path) -> None:
    """The report folder is a folder (or absent) and is not one of the checkpoints."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"'{out}' exists and is not a folder. Pass a folder for verify.json, verify.md and verify.png.")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise OutputError(f"'{out}' is a checkpoint being verified. Pass another --out folder for the report.")


def write_outputs(report: dict, out: Path) -> dict[str, Path]:
    """verify.json, verify.md and verify.png in `out` (created if needed)."""
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "verify.json", "md": out / "verify.md", "png": out / "verify.png"}
    write_atomic(files["json"], json.dumps(report, indent=2, sort_keys=False, default=str))
    typed = Report.from_dict(report)
    write_atomic(files["md"], verify_markdown(typed))
    write_atomic(files["png"], verify_chart(typed))
    return files
