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
    probe.json, relearn.png  with max_recovery: the probes of the edit (resect.run.probe), part of the verdict
    report.md           the summary, with plots accuracy.png and experts.png (and the probes' section)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..gate.report import Report
from .plan import Plan, plan
from .report import write_report
from .result import RunResult
from .spec import KINDS, PROFILE_SEED_OFFSET, RUN_FILE, RunSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- planning (no writes)


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
    from ..model.fingerprint import checkpoint_fingerprint

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
    from ..ownership import marker_path

    partial.unlink(missing_ok=True)
    marker_path(partial).unlink(missing_ok=True)


PARTIAL_EVERY = 10  # batches between saves of partial statistics during an edit's profiling


def toxicity_corpus(model, tokenizer, p: Plan, progress=None):
    """Prompts plus the model's own continuations, for token-level toxicity correlation."""
    from ..edit.corpus import Corpus, Document
    from ..gate.toxicity import read_prompts, sample_prompts

    t = p.toxicity
    prompts = read_prompts(p.profile_prompts or p.toxicity_prompts)
    seeds = [PROFILE_SEED_OFFSET + p.spec.seed + i for i in range(len(prompts))]
    continuations = sample_prompts(
        model, tokenizer, [prompt.text for prompt in prompts], seeds, samples=t["profile_samples"],
        max_new_tokens=t["max_new_tokens"], temperature=t["temperature"], top_p=t["top_p"], top_k=t["top_k"], progress=progress,
    )  # fmt: skip
    docs = [Document(text=prompt.text + c, label="generations") for prompt, outs in zip(prompts, continuations) for c in outs]
    return Corpus(docs, source=f"generations:{p.profile_prompts or p.toxicity_prompts}")


def apply_mask(p: Plan, mask_file: Path, dest: Path) -> Path:
    from ..edit.export import apply_masks

    return apply_masks(p.model_path, [mask_file], dest).path


# ---------------------------------------------------------------- the run


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
        r.say(f"sampling {p.toxicity['profile_samples']} continuations per prompt of {p.profile_prompts or p.toxicity_prompts} to profile")
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
        probed = _probe(p, edited, work, r) if p.probe is not None else None
        if probed is not None:
            lap("probe")
        verdict = "fail" if report["verdict"] == "fail" or (probed or {}).get("verdict") == "fail" else report["verdict"]
        result = RunResult(p.out, verdict, mask.counts(), mask.total, experts_total, Report.from_dict(report), timings, cached,
                           dict(stats.token_counts), searched, dict(Counter(d.label for d in corpus.documents)), probed)  # fmt: skip
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


def _probe(p: Plan, edited: Path, work: Path, r) -> dict:
    """max_recovery: resect probe on the edited checkpoint just written; probe.json and relearn.png
    beside verify.json (report.md gets the probe section)."""
    from .probe import run_probe
    from .probereport import relearn_chart

    unit = {"acc": "points", "toxicity": "points of toxicity probability"}.get(p.probe.metric, "% of held-out perplexity")
    r.say(f"probing the edit: {', '.join(p.probe.spec.probes)} (fails beyond {p.probe.spec.max_recovery:g} {unit} given back)")
    probed = run_probe(dataclasses.replace(p.probe, edited=edited), r)
    probed["models"]["edited"] = str(p.out / "checkpoint")  # where it will be once the run directory is in place
    (work / "probe.json").write_text(json.dumps(probed, indent=2))
    chart = relearn_chart(probed)
    if chart is not None:
        (work / "relearn.png").write_bytes(chart)
    return probed


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
    from ..model.fingerprint import checkpoint_fingerprint

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
    from ..gate.baseline import evaluate_checkpoint

    def loaded():
        r.say("evaluating the source model (the baseline)")
        source.model.set_expert_mask(None)
        return source.model, tok

    return evaluate_checkpoint(p.model_path, p.verification.settings, use_cache=not p.spec.no_cache, source=loaded, reporter=r)


def _verify(p: Plan, edited: Path, out: Path, baseline: dict, r) -> dict:
    from ..gate.verify import run_verification

    return run_verification(dataclasses.replace(p.verification, out_dir=out), edited, baseline_result=baseline, reporter=r)


# ---------------------------------------------------------------- report


__all__ = ["KINDS", "RunSpec", "Plan", "RunResult", "plan", "run_edit"]
