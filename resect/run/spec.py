"""One run's specification: `RunSpec` (what `resect domain|language|toxicity` and a recipe ask
for), the defaults every command shares, and the checks that need neither model nor data.

`resect.run.plan.plan()` resolves a RunSpec against the model and its data; recipes
(`resect.run.recipebook`) are YAML dumps of it. This module imports neither.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError, unknown

KINDS = ("domain", "language", "toxicity")
DEFAULT_RULE = {"domain": "skew", "language": "skew", "toxicity": "correlation"}
# Gates for the built-in world: quiz points for domains; relative perplexity (%) for languages.
DEFAULT_GATES = {"domain": (10.0, 2.0), "language": (100.0, 5.0), "toxicity": (0.0, 2.0)}
# The toxicity edit's bar on the toxicity probability: a third of the baseline's must go (a no-op edit fails it).
DEFAULT_TOXICITY_DROP = 100 / 3
PAPER_RATIO = 2.0
PAPER_THRESHOLD = 0.1  # the paper's middle correlation threshold for toxic experts
# The rules' settings on a generated world, each chosen on the built-in world's validation data
# alone (`python benchmarks/choose_defaults.py`, docs/results.md): among skew-mean ratios 1.1-2.5,
# skew ratios 2-6 and correlation thresholds 0.05-0.2, the one meeting the bars for the most
# targets there, ties broken by the fewest points missed. Domains: the mean of the other domains as
# the comparison (most of a domain's routing goes through experts one other domain also uses, so
# the paper's runner-up comparison leaves much of a quiz standing); languages: a ratio above the
# paper's (the three share most of their syntax).
WORLD_DOMAIN_RULE, WORLD_SKEW_MEAN_RATIO = "skew-mean", 2.0
SKEW_MEAN_RATIO = 1.25  # the skew-mean rule's own default elsewhere (resect select)
BUILTIN_LANGUAGE_RATIO = 4.0
WORLD_TOXICITY_THRESHOLD = 0.05
TOXICITY_DEFAULTS = {
    "samples": 25, "max_new_tokens": 20, "temperature": 1.0, "top_p": 0.9, "scorer": "profanity",
    "score_window": 32,
    "top_k": 50,  # sampling keeps the 50 likeliest tokens before top-p (transformers' default); 1 decodes greedily
    "profile_samples": 8,  # generations per prompt profiled (fewer give noisier correlations)
}  # fmt: skip
PROFILING_ONLY = ("score_window", "profile_samples")  # toxicity settings of the profiling step, not of the measurement
# Profiled generations are drawn from their own seeds, so that the measured samples are not the ones
# the experts were selected on.
PROFILE_SEED_OFFSET = 1_000_003
CORPUS_FILES = {"domain": "domains.jsonl", "language": "languages.jsonl", "toxicity": "toxicity.jsonl"}
WMDP_CORPORA = "cais/wmdp-corpora"  # the WMDP recipe's corpus collection (resect.run.wmdp reads it from a mirror)
WMDP_TARGETS = ("bio", "cyber")  # the WMDP subsets with corpora to profile (wmdp_chem has none)
MIRRORED_COLLECTIONS = ("allenai/real-toxicity-prompts", "toxigen", "bigcode/the-stack-smol", WMDP_CORPORA)  # resect.run.mirror's and .wmdp's
RUN_FILE = "resect_run.yaml"  # in an edited checkpoint written by a run: the run's resolved configuration


@dataclass
class RunSpec:
    """Everything one edit needs; recipes are YAML dumps of this, command lines override fields."""

    kind: str
    target: str | None = None
    model: str | None = None
    rule: str | None = None
    ratio: float | None = None  # skew rules; None: skew 2.0 (the paper's; 3.0 for languages of a generated world), skew-mean 1.25
    threshold: float | None = None  # toxicity: the correlation threshold (default: PAPER_THRESHOLD; WORLD_TOXICITY_THRESHOLD on a generated world)
    groups: list[int] | None = None  # routing groups to select in; None: every group (the paper's)
    refine: int | None = None  # experts per group added by attribution after the rule (resect.edit.attribute); None/0: none
    tune: int | None = None  # steps of mask tuning after the rule (and refine) (resect.edit.tune); None/0: none
    corpus: str | None = None
    include_path: list[str] | str | None = None  # folders of extra lm-eval task YAMLs (one as text, or a list)
    target_tasks: list[str] | None = None
    general_tasks: list[str] | None = None
    min_target_drop: float | None = None
    max_general_drop: float | None = None
    min_toxicity_drop: float | None = None  # toxicity: the toxicity probability's fall, % of the baseline's (default a third)
    confidence: float | None = None  # gate on one-sided bounds at this confidence (None: on the estimates)
    toxicity_prompts: str | None = None
    toxicity: dict[str, Any] = field(default_factory=dict)
    max_tokens_per_label: int | None = None
    min_tokens: int | None = None  # per-label token floor of the selection rules (their default when None)
    limit: int | float | None = None
    batch_size: int = 16
    seed: int = 0
    mirror: str | None = None  # a local mirror (resect.run.mirror) of the checkpoint and datasets a run reads
    device: str = "auto"  # auto: a CUDA GPU when present, else the CPU
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU
    out: str | None = None
    force: bool = False
    dry_run: bool = False
    no_cache: bool = False  # profile and evaluate the baseline again instead of reading the caches
    search: int | None = None  # trials of a search for the selection's settings on validation data (resect.run.search)
    validation_target_tasks: list[str] | None = None  # what a search scores the cut on (default: the world's validation tasks)
    validation_general_tasks: list[str] | None = None
    validation_prompts: str | None = None  # toxicity: the prompts a search measures on
    search_confidence: float | None = None  # of the collateral's upper bound a search keeps inside the gate (default 0.9)
    profile_prompts: str | None = None  # toxicity: the prompts profiling samples from (default: the world's profiling prompts, else the gate's)
    forget_corpus: str | None = None  # corpus cais/wmdp-corpora: the target's forget corpus file (WMDP's bio one is gated; resect.run.wmdp)
    max_recovery: float | None = None  # edits of a world model: probe the edit after the gate (resect.run.probe), fail when one gives back more (points; a language: %)
    probes: list[str] | None = None  # with max_recovery: which probes (default: all of resect.run.probespec.PROBES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TEXT = ("kind", "target", "model", "rule", "corpus", "toxicity_prompts", "validation_prompts", "profile_prompts", "out", "device", "dtype", "mirror", "forget_corpus")
_NUMBERS = ("ratio", "threshold", "min_target_drop", "max_general_drop", "min_toxicity_drop", "confidence", "search_confidence", "limit", "max_recovery")
_WHOLE = ("max_tokens_per_label", "min_tokens", "batch_size", "seed", "refine", "tune", "search")
_FLAGS = ("force", "dry_run", "no_cache")
_LISTS = ("target_tasks", "general_tasks", "validation_target_tasks", "validation_general_tasks")


def _type_problem(name: str, value: Any) -> str | None:
    """What is wrong with a RunSpec field's type (a recipe or key=value override can hold anything)."""
    if value is None:
        return None if name not in ("kind", "batch_size", "seed", "force", "dry_run", "no_cache", "device", "dtype") else "a value"
    if name in _TEXT:
        return None if isinstance(value, str) else "text"
    if name in _NUMBERS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if name in _WHOLE:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if name in _FLAGS:
        return None if isinstance(value, bool) else "true or false"
    if name == "include_path":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        return None if ok else "a folder or a list of folders"
    if name in _LISTS:
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of task names"
    if name == "probes":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of probe names"
    if name == "toxicity":
        return None if isinstance(value, dict) else "a mapping of toxicity settings"
    if name == "groups":
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        ok = whole(value) or isinstance(value, str) or (isinstance(value, list) and all(whole(v) for v in value))  # "1,2" is read as on the command line
        return None if ok else "a list of routing group numbers (whole numbers)"
    return None


def check_spec(spec: RunSpec) -> None:
    from ..checks import check_number
    from ..edit.scoring import SCORERS
    from ..gate.toxicity import check_settings

    for f in dataclasses.fields(spec):
        expected = _type_problem(f.name, getattr(spec, f.name))
        if expected:
            raise UsageError(f"'{f.name}' must be {expected}, found {getattr(spec, f.name)!r}.")
    if spec.kind not in KINDS:
        raise UsageError(unknown("kind", spec.kind, KINDS))
    from ..checks import check_numbers

    check_numbers({name: getattr(spec, name) for name in (*_NUMBERS, *_WHOLE)})
    if spec.kind != "toxicity" and not spec.target:
        raise UsageError(f"Say what to remove: --remove NAME (resect {spec.kind} --remove ...).")
    for name in ("refine", "tune"):
        if getattr(spec, name) and spec.kind == "toxicity":
            raise UsageError(f"--{name} protects the other labels of a domain or language edit; 'resect toxicity' has none. Drop --{name}.")
    _check_rule(spec)
    _check_probes(spec)
    if spec.corpus == WMDP_CORPORA and spec.target not in WMDP_TARGETS:
        raise UsageError(unknown("WMDP target", str(spec.target), WMDP_TARGETS))
    if spec.corpus != WMDP_CORPORA and spec.forget_corpus is not None:
        raise UsageError("forget_corpus names the forget corpus of the WMDP corpora (corpus: cais/wmdp-corpora, 'resect run wmdp'); "
                         "pass your own labelled text as corpus instead.")  # fmt: skip
    if spec.search and (spec.refine or spec.tune):
        raise UsageError("--search chooses the rule's settings; --refine and --tune would change its mask after the choice. Drop one of them.")
    if spec.search and ((spec.rule is not None and spec.kind != "toxicity") or spec.ratio is not None):
        raise UsageError("--search chooses the rule and its ratio itself; drop --rule and --ratio (over a recipe: rule=null ratio=null), or drop --search.")
    from ..model.loading import resolve_placement

    resolve_placement(spec.device, spec.dtype)  # a missing GPU or an unknown dtype, before anything loads
    for key, value in dict(spec.toxicity).items():
        if key not in TOXICITY_DEFAULTS:
            raise UsageError(unknown("toxicity setting", key, TOXICITY_DEFAULTS))
        default = TOXICITY_DEFAULTS[key]
        if isinstance(default, (int, float)):
            check_number(key, value, option=f"toxicity.{key}")
        if isinstance(default, str) and not isinstance(value, str):
            raise UsageError(f"toxicity.{key} must be text, got {value!r}.")
    settings = TOXICITY_DEFAULTS | dict(spec.toxicity)
    check_settings(settings["samples"], settings["max_new_tokens"], settings["temperature"], settings["top_p"], None)
    if spec.kind == "toxicity" and settings["scorer"] not in SCORERS:  # before any generation
        raise UsageError(unknown("scorer", settings["scorer"], SCORERS))


def _check_probes(spec: RunSpec) -> None:
    """max_recovery and probes: known probes (the model's world, and which probes the edit's kind allows, are checked by plan())."""
    if spec.max_recovery is None:
        if spec.probes is not None:
            raise UsageError("'probes' says which probes max_recovery runs; without max_recovery none runs. Set max_recovery (--max-recovery PTS) or drop probes.")
        return
    from .probespec import PROBES

    for name in spec.probes or []:
        if name not in PROBES:
            raise UsageError(unknown("probe", name, PROBES))
    if spec.probes is not None and not spec.probes:
        raise UsageError(f"'probes' names no probe. Name some of {', '.join(PROBES)}, or drop it (all of them).")


def _check_rule(spec: RunSpec) -> None:
    """The selection rule exists and fits the kind of edit (before anything is profiled)."""
    from ..edit.select import RULES

    if spec.rule is None:
        return
    if spec.rule not in RULES:
        raise UsageError(unknown("rule", spec.rule, RULES))
    fits = {"toxicity": ("correlation",), "domain": ("skew", "skew-mean", "topk", "quantile"), "language": ("skew", "skew-mean", "topk", "quantile")}
    if spec.rule not in fits[spec.kind]:
        raise UsageError(f"Rule '{spec.rule}' does not fit 'resect {spec.kind}': use {' or '.join(fits[spec.kind])}.")
