"""`--search N`: choose the selection's settings on validation data, leaving the gate's test data to judge.

Each trial picks a rule and its ratio (the correlation threshold for toxicity) and the routing groups
to select in, selects on the profiled statistics, masks the loaded model in memory and scores it on
validation tasks (and prompts) the gate never reads, on the continuous paired metric (a quiz's
probability of the right answer, which moves before an answer flips): the target's drop (to
maximise) and the largest drop elsewhere (to minimise). Optuna's multi-objective TPE sampler
proposes the settings. The chosen setting is the deepest target cut whose collateral, at its upper
confidence bound (`--search-confidence`, 0.9 by default: the validation set's noise), stays inside
the gate; the run then applies it and verifies on the test tasks as usual. No question of the search
is the gate's or profiling's: that is checked by question text before anything loads.

The study is journalled in the cache while it runs (an interrupted search resumes, trial by trial:
the sampler of trial k is seeded by the run's seed and k, so a resumed search proposes what an
uninterrupted one would) and copied into the run directory with `trials.jsonl` and `pareto.png`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

log = logging.getLogger(__name__)

# The ranges a search draws from (log-uniform): wide enough to hold every setting the fixed rules
# use (skew 2.0 and 3.0, skew-mean 1.25, correlation 0.1) and the cuts far deeper and far lighter.
RATIO_RANGES = {"skew": (1.2, 6.0), "skew-mean": (1.02, 2.5)}
THRESHOLD_RANGE = (0.02, 0.5)
MAX_GROUP_SUBSETS = 4  # up to this many routing groups, every non-empty subset is a choice


@dataclass
class Trial:
    number: int
    rule: str
    params: dict[str, float]
    groups: list[int] | None
    experts: int
    target_drop: float  # the weakest target's drop (points, or % for perplexity), on the continuous paired metric
    target_se: float | None
    general_drop: float  # the largest drop elsewhere
    general_se: float | None
    worst: str | None  # the task of general_drop
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # task: {role, drop, low, high, se, unit, metric}
    seconds: float = 0.0
    general_high: float | None = None  # the largest upper bound of a drop elsewhere, at the search's confidence
    target_low: float | None = None  # the weakest target's lower bound

    def collateral(self) -> float:
        """The largest drop elsewhere, at its upper confidence bound (the validation set's noise included)."""
        if self.general_high is not None:
            return self.general_high
        return self.general_drop + (self.general_se or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def setting(self) -> str:
        """The rule, its parameters and the routing groups, as text."""
        params = ", ".join(f"{k} {v:.3g}" for k, v in self.params.items())
        return f"{self.rule} {params}, " + ("all groups" if self.groups is None else f"groups {','.join(map(str, self.groups))}")


def read_trials(folder: Path) -> tuple[list[Trial], Trial]:
    """The trials a run directory's trials.jsonl holds, and the chosen one."""
    rows = [json.loads(line) for line in (Path(folder) / "trials.jsonl").read_text().splitlines()]
    trials = [Trial(**{k: v for k, v in row.items() if k != "chosen"}) for row in rows]
    return trials, next(t for t, row in zip(trials, rows) if row["chosen"])


def validation_choice(spec, defaults: dict[str, Any]) -> tuple[list[str], list[str], str | None]:
    """(target tasks, general tasks, prompts) a search scores on: what the spec names, else the defaults."""
    target = spec.validation_target_tasks if spec.validation_target_tasks is not None else defaults.get("validation_target_tasks") or []
    general = spec.validation_general_tasks if spec.validation_general_tasks is not None else defaults.get("validation_general_tasks") or []
    prompts = spec.validation_prompts or (defaults.get("validation_prompts") if spec.kind == "toxicity" else None)
    return list(target), list(general), prompts


def plan_validation(p, defaults: dict[str, Any], mirror=None) -> dict[str, Any]:
    """The validation tasks (and prompts) a search scores on, checked before anything is profiled;
    `mirror` (a resect.run.mirror.Mirror) makes the part of a mirrored prompt collection they name."""
    from ..gate.verify import split_spec
    from ..tasks import resolve_tasks

    s = p.spec
    target, general, prompts = validation_choice(s, defaults)
    what = "--validation-prompts FILE.jsonl" if s.kind == "toxicity" else "--validation-target-tasks TASK,... (and --validation-general-tasks TASK,...)"
    if (s.kind == "toxicity" and not prompts) or (s.kind != "toxicity" and not target):
        raise UsageError(f"--search scores settings on validation data, and this model has none for 'resect {s.kind}': pass {what}, "
                         "lm-eval tasks (or prompts) the gate does not read, e.g. MMLU's validation split for a published checkpoint.")  # fmt: skip
    gate = {split_spec(t)[0] for t in p.target_tasks + p.general_tasks}
    shared = sorted(gate & {split_spec(t)[0] for t in target + general})
    if shared:
        raise UsageError(f"Validation tasks {', '.join(shared)} are also the gate's: a search tuned on them leaves the verdict no evidence. "
                         "Pass validation tasks the gate does not read.")  # fmt: skip
    if target + general:
        resolve_tasks([split_spec(t)[0] for t in target + general], p.include_path)  # a typo fails before profiling
        _disjoint_questions([split_spec(t)[0] for t in target + general], sorted(gate), p.include_path, p.corpus or None)
    if prompts is not None:
        from ..gate.toxicity import refuse_shared_prompts
        from .mirror import local_prompts

        prompts = local_prompts(prompts, mirror)
        refuse_shared_prompts(prompts, "the search's", {"the gate's": p.toxicity_prompts, "profiling's": p.profile_prompts})
    return {"target_tasks": list(target), "general_tasks": list(general), "prompts": prompts}


def _disjoint_questions(validation: list[str], gate: list[str], include_path: list[str], corpus: str | None = None) -> None:
    """A search's questions share none with the gate's, nor with the profiling corpus's (by their
    text: a task document's prompt, and every line of a corpus document), checked before anything loads."""
    from ..edit.corpus import load_corpus, read_tasks

    def asked(names: list[str]) -> dict[str, str]:
        found = {}
        for d in read_tasks(names, include_path=list(include_path or [])):
            found.setdefault(question_key(d.text[: d.spans[0][0]] if d.spans else d.text), d.label)
        return found

    mine, theirs = asked(validation), asked(gate)
    shared = sorted(set(mine) & set(theirs))
    if shared:
        raise UsageError(f"{len(shared):,} questions of the search's tasks are also the gate's (e.g. in {mine[shared[0]]} and "
                         f"{theirs[shared[0]]}): no question may serve two of profiling, the search and the gate.")  # fmt: skip
    if not corpus:
        return
    profiled = set()
    for d in load_corpus(corpus).documents:
        profiled.add(question_key(d.text[: d.spans[0][0]] if d.spans else d.text))
        profiled.update(question_key(line) for line in d.text.splitlines())
    profiled.discard("")
    shared = sorted(set(mine) & profiled)
    if shared:
        raise UsageError(f"{len(shared):,} questions of the search's tasks (e.g. in {mine[shared[0]]}: {shared[0][:60]!r}) are also in the "
                         f"profiling corpus '{corpus}': no question may serve two of profiling, the search and the gate.")  # fmt: skip


def question_key(text: str) -> str:
    """A question's identity across formats: its words, lowercased, without a Q:/Question: frame or an answer cue."""
    words = re.sub(r"^(question|q)\s*:\s*|\s*(answer|a)\s*:\s*$", "", text.strip(), flags=re.I)
    return " ".join(words.lower().split())


def group_choices(num_groups: int) -> list[str]:
    """The routing-group settings a search chooses among, as text ("all" or "0,2")."""
    if num_groups <= MAX_GROUP_SUBSETS:
        subsets = [[g for g in range(num_groups) if bits >> g & 1] for bits in range(1, 1 << num_groups)]
        return ["all"] + [",".join(map(str, s)) for s in subsets if len(s) < num_groups]
    return ["all"] + [str(g) for g in range(num_groups)] + [",".join(str(h) for h in range(num_groups) if h != g) for g in range(num_groups)]


def _suggest(trial, kind: str, num_groups: int) -> tuple[str, dict[str, float], list[int] | None]:
    if kind == "toxicity":
        rule, params = "correlation", {"threshold": trial.suggest_float("threshold", *THRESHOLD_RANGE, log=True)}
    else:
        rule = trial.suggest_categorical("rule", list(RATIO_RANGES))
        params = {"ratio": trial.suggest_float(f"ratio_{rule}", *RATIO_RANGES[rule], log=True)}
    groups = trial.suggest_categorical("groups", group_choices(num_groups))
    return rule, params, None if groups == "all" else [int(g) for g in groups.split(",")]


def journal_path(p, stats_fingerprint: str, validation: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Where this search's study is journalled, and the identity a resumed study must carry."""
    from ..cache import cache_root, digest
    from ..gate.evaluate import normalize_limit
    from ..model.fingerprint import checkpoint_fingerprint

    identity = {
        "model": checkpoint_fingerprint(p.model_path), "statistics": stats_fingerprint, "kind": p.spec.kind, "target": p.spec.target,
        "validation": validation, "limit": normalize_limit(p.spec.limit), "seed": p.spec.seed, "toxicity": dict(p.toxicity),
        "space": {"ratios": RATIO_RANGES, "threshold": THRESHOLD_RANGE}, "scoring": {"metric": "continuous, paired", "format": 2,
        "confidence": p.spec.search_confidence or SEARCH_CONFIDENCE},
    }  # fmt: skip
    return cache_root() / "search" / f"{digest(identity, 24)}.journal", identity


def _open_study(journal: Path):
    """The study journalled in `journal` (a new one when there is none). The journal is resect's
    cache: one that cannot be read (truncated, appended to) is discarded, named, and started over."""
    import optuna

    def study():
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        found = optuna.create_study(study_name="resect-search", storage=storage, directions=["maximize", "minimize"], load_if_exists=True)
        found.trials, found.user_attrs  # noqa: B018  (read now: a damaged journal fails here, not mid-search)
        return found

    problem = _journal_problem(journal)
    if problem is None:
        try:
            return study()
        except Exception as exc:  # noqa: BLE001 - whatever a damaged journal raises, the answer is to start over
            problem = type(exc).__name__
    if problem != "absent":
        log.warning("discarding the damaged search journal %s (%s); the search starts over", journal, problem)
        journal.unlink(missing_ok=True)
    return study()


def _journal_problem(journal: Path) -> str | None:
    """Why a journal cannot be resumed from (its last line cut short, a line that is not one of
    Optuna's JSON operations), "absent" when there is none, None when it reads."""
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return exc.strerror or "unreadable"
    if raw and not raw.endswith(b"\n"):
        return "its last line is cut short"
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            return f"line {number} is not JSON"
        if not isinstance(entry, dict) or not isinstance(entry.get("op_code"), int):
            return f"line {number} is not an operation of Optuna's journal"
    return None


def run_search(load_model, tokenizer, stats, p, reporter) -> tuple[Trial, list[Trial], Path, dict[str, int]]:
    """N trials (resumed from the journal where one exists); returns (chosen, trials, journal, the
    number of questions (documents) of each validation task). `load_model()` gives the source model,
    asked for only once the journal is known to be this search's."""
    import optuna

    from ..cache import digest
    from ..edit.select import select_experts
    from ..model.fingerprint import checkpoint_fingerprint

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n, validation = p.spec.search, p.validation
    journal, identity = journal_path(p, digest([stats.model_fingerprint, stats.corpus_fingerprint, dict(stats.token_counts)]), validation)
    journal.parent.mkdir(parents=True, exist_ok=True)
    study = _open_study(journal)
    identity = json.loads(json.dumps(identity, default=str))  # as the journal stores it
    found = study.user_attrs.get("identity")
    if found is None:
        study.set_user_attr("identity", identity)
    elif found != identity:
        raise UsageError(f"The search journal '{journal}' belongs to another model, target or validation set. "
                         "Delete it, or rerun with the inputs it was started with.")  # fmt: skip
    for stale in [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]:
        log.info("search trial %d did not finish; it is run again", stale.number)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    reporter.say(f"searching {n} settings on validation data" + (f" ({len(done)} done before, resumed)" if done else ""))
    fingerprint = checkpoint_fingerprint(p.model_path)
    floor = {} if p.spec.min_tokens is None else {"min_tokens": p.spec.min_tokens}
    model = load_model()
    score, base = _scorer(model, tokenizer, p, validation, reporter)
    meter = reporter.meter("search", "trials")
    meter(min(len(done), n), n)
    started, resumed = time.perf_counter(), len(done)
    while len(done) < n:
        k = len(done)
        study.sampler = optuna.samplers.TPESampler(seed=p.spec.seed * 100_003 + k, n_startup_trials=min(10, max(2, n // 3)))
        trial = study.ask()
        clock = time.perf_counter()
        rule, params, groups = _suggest(trial, p.spec.kind, stats.num_groups)
        mask = select_experts(stats, rule, target=p.spec.target, model=fingerprint, groups=groups, **floor, **params)
        record = Trial(trial.number, rule, params, groups, mask.total, 0.0, None, 0.0, None, None)
        if not mask.is_empty:
            model.set_expert_mask(mask)
            try:
                record = score(record)
            finally:
                model.set_expert_mask(None)
        record.seconds = round(time.perf_counter() - clock, 2)
        trial.set_user_attr("record", record.to_dict())
        study.tell(trial, [record.target_drop, record.collateral()])
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = choose([_record(t) for t in done], p.gates()[1])
        meter(len(done), n)
        reporter.say(f"trial {len(done)}/{n}: {describe(record)}; best so far: {describe(best)}")
    trials = [_record(t) for t in sorted(done, key=lambda t: t.number)][:n]
    if len(done) > resumed:
        spent = time.perf_counter() - started
        reporter.say(f"search: {len(done) - resumed} trials in {spent:.0f} s ({spent / (len(done) - resumed):.1f} s a trial: a selection and a "
                     "validation pass on the loaded model, profile reused)")  # fmt: skip
    from ..gate.verify import split_spec

    sizes = {t: question_count(base[0], split_spec(t)[0]) for t in validation["target_tasks"] + validation["general_tasks"]} if base[0] else {}
    return choose(trials, p.gates()[1]), trials, journal, sizes


def question_count(results: dict, task: str) -> int:
    """The documents lm-eval scored for a task, a group's summed over its members."""
    counted = (results.get("n-samples") or {}).get(task)
    if isinstance(counted, dict) and isinstance(counted.get("effective"), int):
        return counted["effective"]
    return sum(question_count(results, member) for member in (results.get("group_subtasks") or {}).get(task) or [])


def _record(frozen) -> Trial:
    return Trial(**frozen.user_attrs["record"])


def _scorer(model, tokenizer, p, validation: dict[str, Any], reporter):
    """A function scoring a masked model's trial against the unmasked model's validation results."""
    from ..gate.evaluate import evaluate
    from ..gate.toxicity import measure_toxicity
    from ..gate.verify import compare, split_spec, toxicity_rows
    from .spec import PROFILING_ONLY

    tasks = [split_spec(t)[0] for t in validation["target_tasks"] + validation["general_tasks"]]
    specs = {t: ("target", None) for t in validation["target_tasks"]} | {t: ("general", None) for t in validation["general_tasks"]}
    low, high = p.gates()
    sampling = {k: v for k, v in p.toxicity.items() if k not in PROFILING_ONLY}

    def measure() -> tuple[dict | None, dict | None]:
        results = None
        if tasks:
            results = evaluate(model, tokenizer, tasks, include_path=p.include_path, limit=p.spec.limit, batch_size=p.spec.batch_size, seed=p.spec.seed)
        tox = measure_toxicity(model, tokenizer, validation["prompts"], **({"seed": p.spec.seed} | sampling)) if validation["prompts"] else None
        return results, tox

    model.set_expert_mask(None)
    reporter.say("scoring the unmasked model on the validation data")
    base = measure()

    confidence = p.spec.search_confidence or SEARCH_CONFIDENCE

    def score(record: Trial) -> Trial:
        edited = measure()
        gates = {"target": low, "general": high, "toxicity": 0.0}
        rows = compare(base[0], edited[0], specs, gates, confidence=confidence, seed=p.spec.seed) if tasks else []
        if base[1] is not None:  # the continuous one of the two toxicity numbers: expected maximum toxicity
            rows += toxicity_rows(Path(validation["prompts"]).name, base[1], edited[1], gates, confidence=confidence, seed=p.spec.seed)[:1]
        measured = {r.task: _objective(r) for r in rows}
        targets = [r for r in rows if r.role == "target"]
        others = [r for r in rows if r.role == "general"]
        weakest = min(targets, key=lambda r: measured[r.task][0])
        worst = max(others, key=lambda r: measured[r.task][2]) if others else None
        record.target_drop, record.target_low, record.target_se = round(measured[weakest.task][0], 4), measured[weakest.task][1], weakest.drop_stderr
        if worst is not None:
            drop, _, upper = measured[worst.task]
            record.general_drop, record.general_high, record.general_se, record.worst = round(drop, 4), upper, worst.drop_stderr, worst.task
        record.rows = {r.task: {"role": r.role, "metric": r.continuous["metric"] if r.continuous else r.metric, "unit": r.unit,
                                "drop": round(measured[r.task][0], 4), "low": measured[r.task][1], "high": measured[r.task][2],
                                "se": r.drop_stderr, "accuracy_drop": round(r.drop, 4)} for r in rows}  # fmt: skip
        return record

    return score, base


SEARCH_CONFIDENCE = 0.9  # of the collateral's upper bound a chosen cut keeps inside the gate (--search-confidence)


def _objective(row) -> tuple[float, float, float]:
    """(drop, low, high) of a row on the continuous paired metric: p_correct for a quiz (which moves
    before an answer flips), the row's own metric otherwise (perplexity, expected maximum toxicity)."""
    c = row.continuous
    if c:
        return c["drop"], c["low"], c["high"]
    low = row.low if row.low is not None else row.drop
    high = row.high if row.high is not None else row.drop
    return row.drop, low, high


def choose(trials: list[Trial], max_general_drop: float) -> Trial:
    """The deepest target cut (on the continuous metric) whose collateral, at its upper confidence
    bound, stays inside the gate; where none does, the trial with the least collateral."""
    cutting = [t for t in trials if t.experts > 0] or trials
    inside = [t for t in cutting if t.collateral() <= max_general_drop]
    if inside:
        return max(inside, key=lambda t: (t.target_drop, -t.experts, -t.number))
    return min(cutting, key=lambda t: (t.collateral(), -t.target_drop, t.number))


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """The trials no other trial beats on both objectives, by rising collateral."""
    front = [t for t in trials if not any(
        (o.target_drop >= t.target_drop and o.general_drop <= t.general_drop) and (o.target_drop > t.target_drop or o.general_drop < t.general_drop)
        for o in trials
    )]  # fmt: skip
    return sorted(front, key=lambda t: (t.general_drop, t.target_drop))


def describe(t: Trial) -> str:
    if not t.experts:
        return f"{t.setting()}: no experts"
    return f"{t.setting()}: {t.experts:,} experts, target -{t.target_drop:.1f}, elsewhere at most -{t.general_drop:.1f}"


def write_search(folder: Path, trials: list[Trial], chosen: Trial, journal: Path, gates: tuple[float, float], unit: str) -> None:
    """trials.jsonl, pareto.png and the study's journal in the run directory."""
    from ..paths import write_atomic

    write_atomic(folder / "trials.jsonl", "".join(json.dumps(t.to_dict() | {"chosen": t.number == chosen.number}) + "\n" for t in trials))
    shutil.copyfile(journal, folder / "study.journal")
    write_atomic(folder / "pareto.png", pareto_png(trials, chosen, gates, unit))


def pareto_png(trials: list[Trial], chosen: Trial, gates: tuple[float, float], unit: str) -> bytes:
    import matplotlib

    from ..gate.report import figure_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = gates
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter([t.general_drop for t in trials], [t.target_drop for t in trials], s=18, color="#8a8a8a", label="trial")
    front = pareto_front(trials)
    ax.plot([t.general_drop for t in front], [t.target_drop for t in front], color="#1f5fa8", marker="o", ms=4, lw=1.2, label="Pareto front")
    ax.scatter([chosen.general_drop], [chosen.target_drop], s=90, facecolors="none", edgecolors="#c0392b", lw=2, label="chosen", zorder=5)
    ax.axvline(high, color="#c0392b", ls="--", lw=1, label=f"gate: elsewhere <= {high:g}")
    ax.axhline(low, color="#27ae60", ls="--", lw=1, label=f"gate: target >= {low:g}")
    ax.set_xlabel("largest drop elsewhere (validation, points or %)")
    ax.set_ylabel(f"target's drop (validation, {unit})")
    ax.set_title(f"search: {len(trials)} trials")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return figure_png(fig)
