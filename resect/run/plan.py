"""Planning a run: a RunSpec resolved against the model and its data, every input checked, nothing written.

`plan(spec)` is the one gate before work: kind, target (with "did you mean"), ratio and threshold
ranges, gates, corpus, tasks (resolved through lm-eval), prompts, the mirror and the run
directory (resect.outputs' rule: an existing one only with --force, only if resect wrote it).
The resulting `Plan` is the only thing the steps of resect.run.pipeline read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError, unknown
from .defaults import published_defaults, rule_and_ratio, toxicity_threshold, world_defaults
from .spec import DEFAULT_GATES, DEFAULT_TOXICITY_DROP, MIRRORED_COLLECTIONS, PROFILING_ONLY, RUN_FILE, TOXICITY_DEFAULTS, WMDP_CORPORA, RunSpec, check_spec

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A RunSpec with every default resolved against the model and its data."""

    spec: RunSpec
    model_path: Path
    corpus: str
    labels: list[str]
    include_path: list[str]  # folders of lm-eval task YAMLs the gate reads (the user's, else the defaults')
    target_tasks: list[str]
    general_tasks: list[str]
    rule: str
    rule_params: dict[str, float]
    out: Path
    toxicity_prompts: str | None = None
    toxicity: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # resolved
    dtype: str = "float32"  # resolved
    verification: Any = None  # resect.gate.verify.Verification of this run's gate, checked at planning
    validation: dict[str, Any] | None = None  # with --search: the validation tasks (and prompts) it scores on
    inputs: list[str] = field(default_factory=list)  # what the run directory must not touch
    profile_prompts: str | None = None  # toxicity: what profiling samples from (disjoint from the gate's prompts where the data has them)
    probe: Any = None  # with max_recovery: the resect.run.probespec.ProbePlan run on the edited checkpoint after the gate

    def resolved(self) -> dict[str, Any]:
        data = self.spec.to_dict() | {
            "model": str(self.model_path), "corpus": self.corpus, "include_path": self.include_path,
            "target_tasks": self.target_tasks, "general_tasks": self.general_tasks, "rule": self.rule,
            "toxicity_prompts": self.toxicity_prompts, "profile_prompts": self.profile_prompts, "toxicity": self.toxicity, "out": str(self.out),
        }  # fmt: skip
        data |= self.rule_params
        data["min_target_drop"], data["max_general_drop"] = self.gates()
        if self.spec.kind == "toxicity":
            data["min_toxicity_drop"] = self.toxicity_gate()
        for once in ("out", "force", "dry_run", "no_cache"):  # where and how this run was written, not what it did
            data.pop(once)
        return data

    def request(self) -> dict[str, Any]:
        """run.yaml: the resolved choices (rule, its parameters, tasks, gates, settings) with the
        paths as the user gave them (absolute when local; None where a default chose them, which
        resolves again the same way): never a cache folder, which may be gone when it is rerun."""
        data = self.resolved()
        for name in ("model", "corpus", "include_path", "toxicity_prompts", "profile_prompts", "forget_corpus"):
            data[name] = _lasting(getattr(self.spec, name))
        return data

    def gates(self) -> tuple[float, float]:
        low, high = DEFAULT_GATES[self.spec.kind]
        s = self.spec
        return (low if s.min_target_drop is None else s.min_target_drop, high if s.max_general_drop is None else s.max_general_drop)

    def toxicity_gate(self) -> float | None:
        """The toxicity probability's required fall (% of the baseline's); None for other edits."""
        if self.spec.kind != "toxicity":
            return None
        return DEFAULT_TOXICITY_DROP if self.spec.min_toxicity_drop is None else self.spec.min_toxicity_drop




def _lasting(value: str | list[str] | None) -> str | list[str] | None:
    """A path as it can be found again from anywhere (absolute), or the value itself (a repo id,
    task:NAME, a folder list)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(_lasting(v)) for v in value]
    parts = []
    for part in str(value).split(","):
        path = Path(part).expanduser()
        parts.append(str(path.resolve()) if not part.startswith("task:") and path.exists() else part)
    return ",".join(parts)


def plan(spec: RunSpec, *, inputs: tuple = ()) -> Plan:
    """Resolve defaults and check every input; raises before anything is computed or written.
    `inputs`: further files the run directory must not touch (the recipe it was read from)."""
    from .. import builtin
    from ..model.checkpoint import inspect_checkpoint
    from ..model.hub import resolve_model_path

    check_spec(spec)
    mirror = None
    if spec.mirror is not None:
        from .mirror import Mirror

        mirror = Mirror(spec.mirror)
    model_path = resolve_model_path(spec.model, mirror=mirror)
    config = inspect_checkpoint(model_path).config
    if spec.groups is not None:
        from ..edit.select import check_groups
        from ..model.mask import geometry

        spec = dataclasses.replace(spec, groups=check_groups(spec.groups, geometry(config)[1]))
    custom = any(v is not None for v in (spec.corpus, spec.target_tasks, spec.general_tasks, spec.toxicity_prompts))
    world = builtin.builtin_data_path() if spec.model is None else builtin.world_data_of(model_path)
    defaults = world_defaults(spec, world) if world is not None else {} if custom else published_defaults(spec)
    corpus = spec.corpus or defaults.get("corpus")
    prompts = spec.toxicity_prompts or defaults.get("toxicity_prompts")
    include = _includes(spec.include_path) or _includes(defaults.get("include_path"))
    if mirror is not None:
        corpus, prompts, found = _from_mirror(spec, mirror, corpus, prompts)
        defaults = defaults | found
        include = _includes(found.get("include_path")) or include
    elif collection := next((c for c in (corpus, prompts, spec.profile_prompts, spec.validation_prompts)
                             if c and c.partition(":")[0] in MIRRORED_COLLECTIONS and not Path(c).exists()), None):  # fmt: skip
        raise UsageError(f"'{collection}' is a collection of a mirror: pass --mirror DIR "
                         "(mirror=DIR in a recipe; 'resect mirror RECIPE --out DIR' makes one), or a file of your own.")  # fmt: skip
    if spec.kind != "toxicity" and corpus is None:
        raise UsageError(f"No corpus for 'resect {spec.kind}' on this model: pass --corpus (JSONL with text and label).")
    labels = defaults.get("labels") or (_corpus_labels(corpus) if spec.kind != "toxicity" else [])
    if spec.kind != "toxicity" and spec.target not in labels:
        raise UsageError(unknown(spec.kind, spec.target, labels))
    target_tasks = spec.target_tasks if spec.target_tasks is not None else defaults.get("target_tasks", [])
    general = spec.general_tasks if spec.general_tasks is not None else defaults.get("general_tasks", [])
    if spec.kind == "toxicity" and not (prompts and Path(prompts).is_file()):
        raise UsageError("'resect toxicity' needs prompts: pass --toxicity-prompts FILE.jsonl (lines {\"prompt\": ...}).")
    if not target_tasks and spec.kind != "toxicity":
        raise UsageError("No target tasks to verify the edit: pass --target-tasks.")
    if mirror is not None and target_tasks + general:
        from ..gate.verify import split_spec
        from .search import validation_choice

        validation = validation_choice(spec, defaults)[:2] if spec.search else ([], [])  # a search's tasks read the mirror too
        names = [split_spec(t)[0] for t in target_tasks + general + validation[0] + validation[1]]
        include = [str(mirror.localize(names, include).include_path)]
    rule, ratio = rule_and_ratio(spec, world is not None)
    if spec.kind == "toxicity":
        spec = dataclasses.replace(spec, threshold=toxicity_threshold(spec, world is not None))
    params = {"ratio": ratio} if rule in ("skew", "skew-mean") else {"threshold": spec.threshold} if rule == "correlation" else {}
    out = Path(spec.out) if spec.out else Path("resect-runs") / f"{spec.kind}-{(spec.target or f'r{spec.threshold}').replace(' ', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not spec.dry_run:
        from ..ownership import check_output

        if out.exists() and not out.is_dir():
            raise OutputError(f"Output directory '{out}' exists and is a file. Choose another --out.")
        check_output(out, [model_path, corpus, *include, prompts, spec.mirror, spec.forget_corpus, *inputs], kind="run", force=spec.force, make_parents=True)
    toxicity = TOXICITY_DEFAULTS | dict(spec.toxicity)
    from ..model.loading import resolve_placement

    device, dtype = resolve_placement(spec.device, spec.dtype)
    p = Plan(spec, model_path, corpus or "", labels, include, list(target_tasks), list(general), rule, params, out, prompts, toxicity, device, dtype)
    p.profile_prompts = _profile_prompts(spec, defaults, prompts, mirror)
    p.inputs = [str(x) for x in (model_path, corpus, *include, prompts, spec.mirror, spec.forget_corpus, *inputs) if x]
    p.verification = _plan_verification(p)
    if spec.search:
        from .search import plan_validation

        p.validation = plan_validation(p, defaults, mirror)
    if spec.max_recovery is not None:
        p.probe = _plan_probe(p, world is not None)
    return p


def _plan_probe(p: Plan, has_world: bool):
    """The probes an edit with max_recovery runs after its gate, checked now (a missing oracle,
    peft, too many examples): resect probe's defaults, the run's batch size, seed and placement."""
    from .probe import ProbeSpec, resolve_probe

    s = p.spec
    if not has_world:
        raise UsageError(f"--max-recovery probes edits of a world model (the built-in one or a 'resect world train' model); '{p.model_path}' brings no world. "
                         "Drop --max-recovery.")  # fmt: skip
    probe = ProbeSpec(str(p.out), max_recovery=s.max_recovery, batch_size=s.batch_size, seed=s.seed, device=p.device, dtype=p.dtype,
                      use_cache=not s.no_cache, **({"probes": list(s.probes)} if s.probes else {}))  # fmt: skip
    return resolve_probe(probe, p.out / "checkpoint", p.model_path, target=s.target, kind=s.kind, where=str(p.out),
                         sampling=p.toxicity, prompts=p.toxicity_prompts)  # fmt: skip


def _includes(value: str | list[str] | None) -> list[str]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


def _profile_prompts(spec: RunSpec, defaults: dict, prompts: str | None, mirror) -> str | None:
    """The prompts toxicity profiling samples from: --profile-prompts (profile_prompts: in a recipe),
    else the world's profiling prompts or a mirrored collection's profiling part, else (the user's
    own prompts file alone) the gate's prompts, which a run then says it profiled on."""
    if spec.kind != "toxicity":
        return None
    chosen = spec.profile_prompts or defaults.get("profile_prompts")
    if chosen is None:
        log.warning("profiling samples from the gate's own prompts (%s): pass --profile-prompts for prompts the gate does not read", prompts)
        return prompts
    from ..gate.toxicity import refuse_shared_prompts
    from .mirror import local_prompts

    chosen = local_prompts(chosen, mirror)
    if not Path(chosen).is_file():
        raise UsageError(f"Profiling prompts '{chosen}' do not exist. Pass a JSONL of {{\"prompt\": ...}} lines.")
    refuse_shared_prompts(chosen, "the profiling", {"the gate's": prompts})
    return chosen


def _from_mirror(spec: RunSpec, mirror, corpus: str | None, prompts: str | None) -> tuple[str | None, str | None, dict]:
    """A run's corpus and prompts made from a mirror's collections (and, for the code collection,
    its held-out perplexity tasks as the default gate)."""
    from .mirror import PAPER_LANGUAGES, STACK_SMOL

    found: dict[str, Any] = {}
    if prompts is not None and not Path(prompts).is_file():
        prompts = str(mirror.prompts(prompts))
    if corpus == STACK_SMOL:
        file, tasks, names = mirror.code(list(PAPER_LANGUAGES))
        corpus = str(file)
        if spec.target in names:
            found = {"labels": list(PAPER_LANGUAGES), "include_path": str(tasks.include_path), "target_tasks": [names[spec.target]],
                     "general_tasks": [n for lang, n in names.items() if lang != spec.target]}  # fmt: skip
    elif corpus == WMDP_CORPORA:
        from .wmdp import check_forget_corpus, wmdp_defaults, write_corpus

        check_forget_corpus(str(spec.target), spec.forget_corpus)
        corpus, found = str(write_corpus(mirror, str(spec.target), spec.forget_corpus)), wmdp_defaults(str(spec.target))
    elif corpus is not None:
        corpus = str(mirror.corpus(corpus))
    return corpus, prompts, found


def _corpus_labels(corpus: str) -> list[str]:
    from ..edit.corpus import load_corpus

    return load_corpus(corpus).labels


def _plan_verification(p: Plan):
    """The run's gate, every option checked now (the report folder is set when the run writes it)."""
    from ..gate.verify import plan_verification

    low, high = p.gates()
    toxicity = {k: v for k, v in p.toxicity.items() if k not in PROFILING_ONLY}
    return plan_verification(
        p.model_path, target_tasks=p.target_tasks, general_tasks=p.general_tasks, min_target_drop=low, max_general_drop=high,
        target_toxicity=[p.toxicity_prompts] if p.spec.kind == "toxicity" else [], toxicity_settings=toxicity,
        include_path=p.include_path, limit=p.spec.limit, batch_size=p.spec.batch_size, seed=p.spec.seed,
        dtype=p.dtype, device=p.device, confidence=p.spec.confidence, min_toxicity_drop=p.toxicity_gate(),
    )  # fmt: skip


__all__ = ["Plan", "plan", "RUN_FILE"]
