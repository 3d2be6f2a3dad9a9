"""The mission in one call: profile -> select -> apply -> verify -> report, into one run directory.

`run_edit(spec)` is what `resect domain`, `resect language`, `resect toxicity` and `resect run RECIPE`
call. Everything a user could get wrong (an unknown label, a missing corpus or task, an existing
output, a threshold out of range) is checked in `plan()` before anything is computed or written.
The run directory is built beside its destination and moved into place when complete
(resect.outputs: --force replaces only a run directory resect wrote, and only once the new one is whole).

Run directory:
    run.yaml            what was asked, the defaults' choices written out (`resect run RUN/run.yaml` redoes
                        the edit, also after the caches are gone: it names no cache path)
    stats.safetensors   routing statistics (also cached by model and corpus fingerprint)
    mask.json           the selected experts (resect.mask/v1)
    checkpoint/         the edited checkpoint (loads with AutoModelForCausalLM); its resect_mask.json keeps
                        the selection's metadata, resect_run.yaml the fully resolved configuration
    verify.json/.md/.png  both evaluations, deltas, thresholds, verdict
    report.md           the summary, with plots accuracy.png and experts.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError, unknown
from ..gate.report import Report
from .spec import (
    BUILTIN_LANGUAGE_RATIO,
    CORPUS_FILES,
    DEFAULT_GATES,
    DEFAULT_RULE,
    KINDS,
    MIRRORED_COLLECTIONS,
    PAPER_RATIO,
    PROFILE_SEED_OFFSET,
    PROFILING_ONLY,
    SKEW_MEAN_RATIO,
    TOXICITY_DEFAULTS,
    WORLD_DOMAIN_RULE,
    RunSpec,
    check_spec,
)

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

    def resolved(self) -> dict[str, Any]:
        data = self.spec.to_dict() | {
            "model": str(self.model_path), "corpus": self.corpus, "include_path": self.include_path,
            "target_tasks": self.target_tasks, "general_tasks": self.general_tasks, "rule": self.rule,
            "toxicity_prompts": self.toxicity_prompts, "toxicity": self.toxicity, "out": str(self.out),
        }  # fmt: skip
        data |= self.rule_params
        data["min_target_drop"], data["max_general_drop"] = self.gates()
        for once in ("out", "force", "dry_run", "no_cache"):  # where and how this run was written, not what it did
            data.pop(once)
        return data

    def request(self) -> dict[str, Any]:
        """run.yaml: the resolved choices (rule, its parameters, tasks, gates, settings) with the
        paths as the user gave them (absolute when local; None where a default chose them, which
        resolves again the same way): never a cache folder, which may be gone when it is rerun."""
        data = self.resolved()
        for name in ("model", "corpus", "include_path", "toxicity_prompts"):
            data[name] = _lasting(getattr(self.spec, name))
        return data

    def gates(self) -> tuple[float, float]:
        low, high = DEFAULT_GATES[self.spec.kind]
        s = self.spec
        return (low if s.min_target_drop is None else s.min_target_drop, high if s.max_general_drop is None else s.max_general_drop)


RUN_FILE = "resect_run.yaml"  # in an edited checkpoint written by a run: the run's resolved configuration


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


# ---------------------------------------------------------------- planning (no writes)


def world_defaults(spec: RunSpec, data: Path) -> dict[str, Any]:
    """Corpus, tasks and prompts of a generated world (`data`: the built-in one's, or the world a
    model trained by `resect world train` brings beside it) for this kind of edit."""
    from .. import builtin

    domains, languages = list(builtin.DOMAINS), list(builtin.LANGUAGES)
    quizzes = [f"world_{d}" for d in domains]
    if spec.kind == "domain":
        labels, target_tasks = domains, [f"world_{spec.target}"]
        general = [t for t in quizzes if t not in target_tasks]
    elif spec.kind == "language":
        labels, target_tasks = languages, [f"world_ppl_{spec.target}"]
        general = [f"world_ppl_{lang}" for lang in languages if lang != spec.target]
    else:
        labels, target_tasks, general = [], [], quizzes
    from ..world.tasks import has_validation, validation_name

    validation: dict[str, Any] = {}
    if has_validation(data):  # the splits a search scores on: the gate's tasks' world_val_ twins
        validation = {"validation_target_tasks": [validation_name(t) for t in target_tasks],
                      "validation_general_tasks": [validation_name(t) for t in general]}  # fmt: skip
        if (data / "prompts" / "toxicity_validation.jsonl").is_file():
            validation["validation_prompts"] = str(data / "prompts" / "toxicity_validation.jsonl")
    return validation | {
        "corpus": str(data / "corpus" / CORPUS_FILES[spec.kind]),
        "labels": labels,
        "include_path": str(builtin.task_dir(data)),
        "target_tasks": target_tasks,
        "general_tasks": general,
        "toxicity_prompts": str(data / "prompts" / "toxicity.jsonl"),
    }


def published_defaults(spec: RunSpec) -> dict[str, Any]:
    """The paper's protocol for a published checkpoint: MMLU grouped into the MMLU-Pro categories."""
    from .recipebook import RECIPES_DIR, mmlu_pro_categories

    if spec.kind != "domain":
        what = "--corpus (labelled code or text) and --target-tasks/--general-tasks" if spec.kind == "language" else "--toxicity-prompts"
        raise UsageError(f"This model has no built-in data for 'resect {spec.kind}'. Pass {what}, or use a recipe from 'resect recipes ls'.")
    categories = list(mmlu_pro_categories())
    task = lambda category, kind="": f"resect_mmlu_pro_{kind}{category.replace(' ', '_')}"  # noqa: E731
    searching = {  # MMLU's validation split (the profiling corpus's questions), never its test split
        "include_path": [str(RECIPES_DIR / "tasks" / "mmlu_pro"), str(RECIPES_DIR / "tasks" / "mmlu_pro_validation")],
        "validation_target_tasks": [task(spec.target, "val_")],
        "validation_general_tasks": [task(c, "val_") for c in categories if c != spec.target],
    } if spec.search else {}  # fmt: skip
    return {
        "corpus": str(RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml"),
        "labels": categories,
        "include_path": str(RECIPES_DIR / "tasks" / "mmlu_pro"),
        "target_tasks": [task(spec.target)],
        "general_tasks": [task(c) for c in categories if c != spec.target],
        "toxicity_prompts": None,
    } | searching


def plan(spec: RunSpec, *, inputs: tuple = ()) -> Plan:
    """Resolve defaults and check every input; raises before anything is computed or written.
    `inputs`: further files the run directory must not touch (the recipe it was read from)."""
    from .. import builtin
    from ..model.loading import inspect_checkpoint, resolve_model_path

    check_spec(spec)
    mirror = None
    if spec.mirror is not None:
        from .mirror import Mirror

        mirror = Mirror(spec.mirror)
    model_path = resolve_model_path(spec.model, mirror=mirror)
    config = inspect_checkpoint(model_path).config
    if spec.groups is not None:
        from ..edit.mask import geometry
        from ..edit.select import check_groups

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
    elif collection := next((c for c in (corpus, prompts) if c in MIRRORED_COLLECTIONS and not Path(c).exists()), None):
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
    rule, ratio = _rule_and_ratio(spec, world is not None)
    params = {"ratio": ratio} if rule in ("skew", "skew-mean") else {"threshold": spec.threshold} if rule == "correlation" else {}
    out = Path(spec.out) if spec.out else Path("resect-runs") / f"{spec.kind}-{(spec.target or f'r{spec.threshold}').replace(' ', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not spec.dry_run:
        from ..outputs import check_output

        if out.exists() and not out.is_dir():
            raise OutputError(f"Output directory '{out}' exists and is a file. Choose another --out.")
        check_output(out, [model_path, corpus, *include, prompts, spec.mirror, *inputs], kind="run", force=spec.force, make_parents=True)
    toxicity = TOXICITY_DEFAULTS | dict(spec.toxicity)
    from ..model.loading import resolve_placement

    device, dtype = resolve_placement(spec.device, spec.dtype)
    p = Plan(spec, model_path, corpus or "", labels, include, list(target_tasks), list(general), rule, params, out, prompts, toxicity, device, dtype)
    p.inputs = [str(x) for x in (model_path, corpus, *include, prompts, spec.mirror, *inputs) if x]
    p.verification = _plan_verification(p)
    if spec.search:
        from .search import plan_validation

        p.validation = plan_validation(p, defaults)
    return p


def _includes(value: str | list[str] | None) -> list[str]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


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
    elif corpus is not None:
        corpus = str(mirror.corpus(corpus))
    return corpus, prompts, found


def _rule_and_ratio(spec: RunSpec, world: bool) -> tuple[str, float]:
    """The selection rule and its ratio: what the command line or recipe says, else the defaults
    (the paper's on published checkpoints; on a generated world, skew-mean for domains and 3x for languages)."""
    rule = spec.rule or (WORLD_DOMAIN_RULE if world and spec.kind == "domain" else DEFAULT_RULE[spec.kind])
    if spec.ratio is not None:
        return rule, spec.ratio
    if rule == "skew-mean":
        return rule, SKEW_MEAN_RATIO
    return rule, BUILTIN_LANGUAGE_RATIO if world and spec.kind == "language" else PAPER_RATIO


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
        dtype=p.dtype, device=p.device,
    )  # fmt: skip


# ---------------------------------------------------------------- steps


def stats_cache_dir() -> Path:
    from ..cache import cache_root

    return cache_root() / "stats"


def profile_cached(source, tokenizer, corpus, *, p: Plan, scorer: str | None = None, score_window: int = 32, progress=None):
    """Routing statistics keyed by the checkpoint's and the corpus's fingerprints (and profiling
    settings). `source`: the model, or a `Source` that loads it only when the cache misses.
    Partial statistics are kept beside the cache entry while profiling, so an interrupted run resumes."""
    from ..cache import digest
    from ..edit.corpus import load_corpus
    from ..edit.profile import profile_corpus
    from ..edit.stats import RoutingStats
    from ..errors import StatsError
    from ..model.loading import checkpoint_fingerprint

    corpus = load_corpus(corpus)
    key = digest([checkpoint_fingerprint(p.model_path), corpus.fingerprint(), p.spec.max_tokens_per_label, p.spec.seed, scorer, score_window], 24)
    cached = stats_cache_dir() / f"{key}.safetensors"
    if cached.is_file() and not p.spec.no_cache:
        try:
            stats = RoutingStats.load(cached)
            log.info("routing statistics from cache %s", cached)
            return stats, True
        except StatsError as exc:  # a damaged entry is discarded and made again
            log.warning("discarding a damaged statistics cache entry %s; profiling again", cached)
            log.debug("%s", exc)
            cached.unlink(missing_ok=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    options = dict(
        max_tokens_per_label=p.spec.max_tokens_per_label, seed=p.spec.seed, batch_size=p.spec.batch_size,
        progress=progress or False, scorer=scorer, score_window=score_window, checkpoint=partial, checkpoint_every=PARTIAL_EVERY,
    )  # fmt: skip
    model = source.model if isinstance(source, Source) else source
    try:
        stats = profile_corpus(model, tokenizer, corpus, resume=partial if partial.is_file() else None, **options)
    except StatsError:  # partial state of other settings (another batch size), or damaged: start over
        log.warning("discarding partial statistics %s (made with other settings, or damaged)", partial)
        _drop_partial(partial)
        stats = profile_corpus(model, tokenizer, corpus, **options)
    stats.save(cached)
    _drop_partial(partial)
    return stats, False


def _drop_partial(partial: Path) -> None:
    """The cache's partial statistics and their marker (resect's own, in the cache)."""
    from ..outputs import marker_path

    partial.unlink(missing_ok=True)
    marker_path(partial).unlink(missing_ok=True)


PARTIAL_EVERY = 10  # batches between saves of partial statistics during an edit's profiling


def toxicity_corpus(model, tokenizer, p: Plan, progress=None):
    """Prompts plus the model's own continuations, for token-level toxicity correlation."""
    from ..edit.corpus import Corpus, Document
    from ..gate.toxicity import read_prompts, sample_prompts

    t = p.toxicity
    prompts = read_prompts(p.toxicity_prompts)
    seeds = [PROFILE_SEED_OFFSET + p.spec.seed + i for i in range(len(prompts))]
    continuations = sample_prompts(
        model, tokenizer, [prompt.text for prompt in prompts], seeds, samples=t["profile_samples"],
        max_new_tokens=t["max_new_tokens"], temperature=t["temperature"], top_p=t["top_p"], top_k=t["top_k"], progress=progress,
    )  # fmt: skip
    docs = [Document(text=prompt.text + c, label="generations") for prompt, outs in zip(prompts, continuations) for c in outs]
    return Corpus(docs, source=f"generations:{p.toxicity_prompts}")


def apply_mask(p: Plan, mask_file: Path, dest: Path) -> Path:
    from ..edit.export import apply_masks

    return apply_masks(p.model_path, [mask_file], dest).path


# ---------------------------------------------------------------- the run


@dataclass
class RunResult:
    out: Path | None
    verdict: str  # "pass" | "fail" | "dry-run"
    mask_counts: dict[int, int]
    mask_total: int
    experts_total: int
    report: Report | None  # the verification (None for a dry run)
    timings: dict[str, float]
    stats_cached: bool
    token_counts: dict[str, int] = field(default_factory=dict)  # profiling tokens per label
    search: dict[str, Any] | None = None  # with --search: {"trials", "chosen", "validation"} (resect.run.search)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "fail" else 0


def run_edit(spec: RunSpec, *, reporter=None, inputs: tuple = ()) -> RunResult:
    """Plan, then profile, select, apply, verify and report; see the module docstring.

    The model is loaded once for profiling, selection and the baseline's evaluation (none when
    the baseline's results are cached), freed, and the written checkpoint is loaded for its own
    evaluation: at most two loads, never two models at a time. `reporter`: a resect.progress
    Reporter for stage messages and meters (quiet when None). The run directory is claimed
    (resect.outputs) from the start: a second run into it is refused while this one works."""
    import contextlib

    from ..outputs import claim
    from ..progress import quiet

    r = reporter or quiet()
    p = plan(spec, inputs=inputs)
    writing = contextlib.nullcontext() if p.spec.dry_run else claim(p.out, "run", inputs=p.inputs, force=p.spec.force)
    with writing as output:
        return _run(p, output, r)


def _run(p: Plan, output, r) -> RunResult:
    spec = p.spec  # the resolved spec: everything below reads what plan() checked, never the caller's
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    from ..model.loading import load_tokenizer, release_memory

    if spec.kind != "toxicity":
        from ..edit.corpus import load_corpus

        corpus, scoring = load_corpus(p.corpus), {}  # read once, before the model: profiling and attribution use it
    tok, source = load_tokenizer(p.model_path), Source(p, r)
    if spec.kind == "toxicity":
        r.say(f"sampling {p.toxicity['profile_samples']} continuations per prompt of {p.toxicity_prompts} to profile")
        corpus = toxicity_corpus(source.model, tok, p, progress=r.meter("generating", "prompts"))
        scoring = {"scorer": p.toxicity["scorer"], "score_window": p.toxicity["score_window"]}
    r.say(f"profiling routing over {'the generations' if spec.kind == 'toxicity' else p.corpus}")
    stats, cached = profile_cached(source, tok, corpus, p=p, progress=r.meter("profiling", "tok"), **scoring)
    lap("profile")
    searched = None
    if spec.search:
        searched = _search(source, tok, stats, p, r)
        spec = p.spec
        lap("search")
    mask = _select(source, tok, corpus, stats, p, r, lap)
    if mask.is_empty:
        what = "--threshold" if spec.kind == "toxicity" else "--ratio"
        raise UsageError(f"The rule selected no experts ({p.rule} {json.dumps(p.rule_params)}): nothing to remove. "
                         f"Lower {what}, or profile more text for '{spec.target or 'toxicity'}'.")  # fmt: skip
    experts_total = stats.num_groups * stats.moe_experts**2
    r.say(f"selected {mask.total:,} of {experts_total:,} experts ({100 * mask.total / experts_total:.2f}%)")
    if spec.dry_run:
        return RunResult(None, "dry-run", mask.counts(), mask.total, experts_total, None, timings, cached, dict(stats.token_counts), searched)
    baseline = _baseline(source, tok, p, r)
    del source
    release_memory()
    lap("baseline")
    work = output.work_folder()
    with output.naming_the_output():
        import yaml

        header = f"# resect run {p.out / 'run.yaml'} out=DIR    (redoes this edit into DIR)\n"
        (work / "run.yaml").write_text(header + yaml.safe_dump(p.request(), sort_keys=False))
        stats.save(work / "stats.safetensors")
        mask.save(work / "mask.json")
        r.say("writing the edited checkpoint")
        edited = apply_mask(p, work / "mask.json", work / "checkpoint")
        (edited / RUN_FILE).write_text(yaml.safe_dump(p.resolved(), sort_keys=False))
        lap("apply")
        r.say("evaluating the edited checkpoint")
        report = _verify(p, edited, work, baseline, r)
        lap("verify")
        result = RunResult(p.out, report["verdict"], mask.counts(), mask.total, experts_total, Report.from_dict(report), timings, cached,
                           dict(stats.token_counts), searched)  # fmt: skip
        if searched is not None:
            from .search import write_search

            write_search(work, searched["trials"], searched["chosen"], searched["journal"], p.gates(), _target_unit(p))
        write_report(work, p, result)
    output.finish(work)
    return result


def _search(source: "Source", tok, stats, p: Plan, r) -> dict[str, Any]:
    """Choose the rule's settings on validation data (resect.run.search) and make them the plan's:
    run.yaml then records the chosen setting, and reruns without searching."""
    from .search import describe, run_search

    chosen, trials, journal, sizes = run_search(lambda: source.model, tok, stats, p, r)
    p.rule, p.rule_params = chosen.rule, dict(chosen.params)
    p.spec = dataclasses.replace(p.spec, rule=chosen.rule, groups=chosen.groups, search=None, **chosen.params)
    r.say(f"chosen on validation data: {describe(chosen)}")
    return {"trials": trials, "chosen": chosen, "journal": journal, "validation": p.validation, "sizes": sizes}


FEW_QUESTIONS = 100  # a validation task this small moves by several points when two answers change


def _target_unit(p: Plan) -> str:
    return "%" if p.spec.kind == "language" else "points"


class Source:
    """The source model of a run, loaded on first use: a run whose statistics and baseline come
    from the cache, and which neither refines nor tunes, never loads it."""

    def __init__(self, p: Plan, reporter):
        self._p, self._r, self._model = p, reporter, None

    @property
    def model(self):
        if self._model is None:
            from ..model.loading import load_model

            self._r.say(f"loading {self._p.model_path} ({self._p.dtype}, {self._p.device})")
            self._model = load_model(self._p.model_path, dtype=self._p.dtype, device=self._p.device)
        return self._model


def _select(source: Source, tok, corpus, stats, p: Plan, r, lap):
    """The rule's mask, then --refine and --tune on the source model."""
    from ..edit.select import select_experts
    from ..model.loading import checkpoint_fingerprint

    spec = p.spec
    floor = {} if spec.min_tokens is None else {"min_tokens": spec.min_tokens}
    fingerprint = checkpoint_fingerprint(p.model_path)
    mask = select_experts(stats, p.rule, target=spec.target, model=fingerprint, groups=spec.groups, **floor, **p.rule_params)
    lap("select")
    if spec.refine:
        from ..edit.attribute import attribution, refine

        r.say(f"attributing each label's loss to the experts left after removing {mask.total:,}")
        mask = refine(mask, attribution(source.model, tok, corpus, mask=mask), spec.target, add=spec.refine)
        lap("refine")
    if spec.tune:
        from ..edit.tune import tune

        r.say(f"tuning the mask for {spec.tune} steps")
        meter = r.meter("tuning", "steps")
        mask = tune(source.model, tok, corpus, mask, spec.target, steps=spec.tune, seed=spec.seed, progress=lambda k, info: meter(k + 1, spec.tune))
        lap("tune")
    return mask


def _baseline(source: Source, tok, p: Plan, r) -> dict:
    """The source model's evaluation: from the cache, else on the source model (loaded once)."""
    from ..gate.verify import evaluate_checkpoint

    def loaded():
        r.say("evaluating the source model (the baseline)")
        source.model.set_expert_mask(None)
        return source.model, tok

    return evaluate_checkpoint(p.model_path, p.verification.settings, use_cache=not p.spec.no_cache, source=loaded, reporter=r)


def _verify(p: Plan, edited: Path, out: Path, baseline: dict, r) -> dict:
    from ..gate.verify import run_verification

    return run_verification(dataclasses.replace(p.verification, out_dir=out), edited, baseline_result=baseline, reporter=r)


# ---------------------------------------------------------------- report


def write_report(folder: Path, p: Plan, result: RunResult) -> None:
    """report.md with the verdict, the per-task table (as in verify.md) and two plots."""
    from ..gate.report import LEGEND, markdown_table

    plots = _plots(folder, p, result)
    low, high = p.gates()
    lines = [
        f"# resect {p.spec.kind}: {'remove ' + p.spec.target if p.spec.target else f'toxicity r >= {p.spec.threshold}'}",
        "",
        f"**Verdict: {result.verdict.upper()}**: target tasks must drop by at least {low:g}, general tasks by at most {high:g}.",
        "",
        f"- model: `{p.model_path}`",
        f"- rule: `{p.rule}` {json.dumps(p.rule_params)}"
        + ("" if p.spec.groups is None else f" in routing groups {', '.join(map(str, p.spec.groups))} only")
        + f"; statistics over `{p.corpus or 'generations'}`"
        + (" (from cache)" if result.stats_cached else ""),
        f"- masked experts: {result.mask_total:,} of {result.experts_total:,} "
        f"({100 * result.mask_total / max(result.experts_total, 1):.2f}%); per group: "
        + ", ".join(f"{g}: {n:,}" for g, n in sorted(result.mask_counts.items())),
        "- profiling tokens per label: " + ", ".join(f"{label} {n:,}" for label, n in sorted(result.token_counts.items())),
        "- time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()),
        "",
        *markdown_table(result.report.rows),
        "",
        LEGEND,
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
        *_search_lines(result.search, high),
    ]
    (folder / "report.md").write_text("\n".join(lines))


def _search_lines(searched: dict[str, Any] | None, high: float) -> list[str]:
    """report.md's account of a search: what it scored on, what it chose and the front."""
    if not searched:
        return []
    from .search import describe, pareto_front

    trials, chosen, v = searched["trials"], searched["chosen"], searched["validation"]
    scored = ", ".join(v["target_tasks"] + v["general_tasks"] + ([Path(v["prompts"]).name] if v.get("prompts") else []))
    inside = chosen.collateral() <= high
    lines = [
        "## Search", "",
        f"{len(trials)} trials scored on validation data the gate does not read ({scored}); the table above is the test data's verdict.",
        "", f"Chosen: {describe(chosen)}"
        + ("" if inside else f" (no trial kept the collateral plus one standard error within {high:g}: the least collateral was taken)"), "",
        "| trial | setting | experts | target drop (validation) | largest drop elsewhere | on the front |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    front = {t.number for t in pareto_front(trials)}
    se = lambda x: "" if x is None else f" ± {x:.1f}"  # noqa: E731
    for t in trials:
        mark = " **chosen**" if t.number == chosen.number else ""
        lines.append(f"| {t.number}{mark} | {t.setting()} | {t.experts:,} | {t.target_drop:.1f}{se(t.target_se)} | {t.general_drop:.1f}{se(t.general_se)} ({t.worst or '-'}) | {'yes' if t.number in front else ''} |")
    few = {task: n for task, n in searched.get("sizes", {}).items() if n < FEW_QUESTIONS}
    if few:
        rows = chosen.rows
        lines += ["", f"Validation tasks with fewer than {FEW_QUESTIONS} questions (their drops are noisy; the chosen trial's, with one standard error): "
                  + ", ".join(f"{t} ({n} questions, {rows.get(t, {}).get('drop', 0):.1f} ± {rows.get(t, {}).get('se') or 0:.1f})" for t, n in sorted(few.items()))]  # fmt: skip
    return [*lines, "", "![pareto.png](pareto.png)", ""]


def _plots(folder: Path, p: Plan, result: RunResult) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in result.report.rows if r.baseline is not None and r.edited is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r.baseline for r in rows], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r.edited for r in rows], width=0.4, label="after")
        ax.set_xticks(list(xs), [r.task.removeprefix("world_") for r in rows], rotation=30, ha="right")
        ax.set_ylabel(rows[0].metric)
        ax.set_title(f"{p.spec.kind}: before and after the edit")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "accuracy.png", dpi=100)
        plt.close(fig)
        written.append("accuracy.png")
    fig, ax = plt.subplots(figsize=(5, 3))
    groups = sorted(result.mask_counts)
    ax.bar([str(g) for g in groups], [result.mask_counts[g] for g in groups])
    ax.set_xlabel("routing group")
    ax.set_ylabel("masked experts")
    fig.tight_layout()
    fig.savefig(folder / "experts.png", dpi=100)
    plt.close(fig)
    return written + ["experts.png"]


__all__ = ["KINDS", "RunSpec", "Plan", "RunResult", "plan", "run_edit"]
