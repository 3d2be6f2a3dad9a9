"""`resect probe`: is the removed knowledge gone, or only hidden?

On a run directory (or an edited checkpoint) of a domain edit of a world model, each probe tries
to bring the domain back, on three models: the edited one (mask in force), its source, and the
oracle (the same recipe with the domain left out of training: a model that never knew it). A
language edit is probed by relearning alone, judged by held-out perplexity; an edit of a published
checkpoint by relearning on its own corpus and tasks (resect.run.probecorpus).

- relearn: fine-tune on N of the domain's profiling sentences (N = 5, 10, 50, 100 by default),
  then score the domain's test quiz and the other domains' quizzes;
- rtt: fine-tune on the test questions, with their answers, of all facts but one fold, and score
  that fold's questions (every fold in turn);
- in-context: the quiz with k solved questions in the prompt, in the wording no split asks, as
  true/false judgements and as sentences to complete;
- representation: a linear probe on each layer's hidden states, trained on some facts' questions
  and scored on the others'.

What a probe gives back is the edited model's score minus the reference's (the oracle's under
the same probe, else chance), in points with its paired bounds (clustered by fact), and as a
share of the source's lead over the reference. `max_recovery` fails the verdict when any probe
gives back more. Every attack is cached as it finishes: a stopped probe resumes where it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError, unknown
from .probespec import DEFAULT_EXAMPLES, MODELS, PROBES, ProbePlan, ProbeSpec, check_spec

log = logging.getLogger(__name__)
LEFT_OUT = {"toxicity": "toxic"}  # a target's name in 'resect world train --leave-out', where it differs


# ----------------------------------------------------------------------------- planning: every check before any model loads


def _run_config(run: Path) -> tuple[Path, dict]:
    """The edited checkpoint and the run's configuration, from a run directory or an edited checkpoint."""
    import yaml

    from .spec import RUN_FILE

    if (run / "run.yaml").is_file() and (run / "checkpoint").is_dir():
        edited, config_file = run / "checkpoint", run / "run.yaml"
    elif (run / "config.json").is_file():
        edited, config_file = run, run / RUN_FILE
    else:
        raise UsageError(f"'{run}' is neither a run directory (run.yaml, checkpoint/) nor a checkpoint folder. Pass the --out folder of an edit.")
    config: dict = {}
    if config_file.is_file():
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            raise UsageError(f"'{config_file}' is not readable YAML. Pass --target DOMAIN, or rerun the edit.") from None
    return edited, config if isinstance(config, dict) else {}


def plan_probe(spec: ProbeSpec) -> ProbePlan:
    """Resolve the models, the world and the target, and refuse what cannot be probed (exit 2)."""
    from ..builtin import world_data_of
    from ..gate.verify import baseline_from_provenance, check_compatible
    from ..model.checkpoint import inspect_checkpoint

    check_spec(spec)
    run = Path(spec.run).expanduser()
    if not run.is_dir():
        raise UsageError(f"'{run}' is not a folder. Pass a run directory or an edited checkpoint.")
    edited, config = _run_config(run)
    record = inspect_checkpoint(edited).config.get("resect")
    if not isinstance(record, dict) or not isinstance(record.get("mask"), dict):
        raise UsageError(f"'{edited}' carries no expert mask (its config.json has no resect mask). Probe an edited checkpoint.")
    source = Path(spec.baseline).expanduser() if spec.baseline else baseline_from_provenance(edited)
    inspect_checkpoint(source)
    check_compatible(edited, source)
    if spec.max_recovery is None and isinstance(config.get("max_recovery"), (int, float)) and not isinstance(config.get("max_recovery"), bool):
        spec.max_recovery = float(config["max_recovery"])  # the run's own gate on the probes (recipe key max_recovery)
    target = spec.target or config.get("target")
    if world_data_of(source) is None:
        from .probecorpus import resolve_corpus_probe

        return resolve_corpus_probe(spec, edited, source, target=target, kind=config.get("kind"), where=str(run))
    sampling, prompts = config.get("toxicity"), config.get("toxicity_prompts")
    return resolve_probe(spec, edited, source, target=target, kind=config.get("kind"), where=str(run),
                         sampling=sampling if isinstance(sampling, dict) else None, prompts=prompts if isinstance(prompts, str) else None)  # fmt: skip


def resolve_probe(spec: ProbeSpec, edited: Path, source: Path, *, target: str | None, kind: str | None = None, where: str = "the run",
                  sampling: dict | None = None, prompts: str | None = None) -> ProbePlan:  # fmt: skip
    """The probes of an edit of `source` (a world model) that removed `target`, every check made:
    what `resect probe` plans, and what an edit with max_recovery plans before it profiles. A
    toxicity edit's probes sample its gate's `prompts` with its `sampling` settings."""
    from ..builtin import world_data_of, world_labels
    from ..tasks import world_task_dir
    from ..world.probesets import read_facts, relearn_code, relearn_examples

    check_spec(spec)
    if spec.corpus is not None:
        raise UsageError("--corpus is what relearning trains on for an edit of a published checkpoint; a world model relearns on its own sentences. Drop --corpus.")
    world = world_data_of(source)
    if world is None:
        raise UsageError(f"'{source}' brings no world (recipe.json beside a data/world.json): the probes need the world the model learnt. "
                         "Probe an edit of the built-in model or of a 'resect world train' model.")  # fmt: skip
    domains, languages = world_labels(world)
    if kind == "toxicity" or target == "toxicity":
        from .probetoxicity import toxicity_plan

        return toxicity_plan(spec, edited, source, _oracle(spec, source, "toxicity"), world, domains, sampling=sampling, prompts=prompts)
    if target is None:
        raise UsageError(f"'{where}' does not say which domain or language it removed. Pass --target NAME (one of {', '.join(domains + languages + ['toxicity'])}).")
    if target not in domains + languages:
        raise UsageError(unknown("domain, language or toxicity", str(target), [*domains, *languages, "toxicity"]))
    language = target in languages
    if language and (others := [p for p in spec.probes or [] if p != "relearn"]):
        raise UsageError(f"'{others[0]}' asks a domain's facts; a language edit is probed by relearning alone. Pass --probes relearn.")
    spec.probes = list(spec.probes or (["relearn"] if language else PROBES))
    oracle = _oracle(spec, source, target)
    texts = relearn_code(world, target, spec.seed) if language else None
    available = len(texts) if language else len(relearn_examples(read_facts(world, target), target, spec.seed))
    if "relearn" in spec.probes and max(spec.examples) > available:
        raise UsageError(f"--examples {max(spec.examples)} is more than the {available} {target} examples the world holds. Pass at most {available}.")
    if "relearn" in spec.probes or "rtt" in spec.probes:
        if spec.tuning.method == "lora":
            from .attacks import require_peft

            require_peft()
    if language:  # held-out code's perplexity, the language gate's
        general = [f"world_ppl_{x}" for x in languages if x != target]
        return ProbePlan(spec, edited, source, oracle, world, target, general, [str(world_task_dir(world))], available,
                         target_tasks=[f"world_ppl_{target}"], texts=texts, metric="word_perplexity")  # fmt: skip
    general = [f"world_{d}" for d in domains if d != target]
    return ProbePlan(spec, edited, source, oracle, world, target, general, [str(world_task_dir(world))], available)


def _oracle(spec: ProbeSpec, source: Path, target: str) -> Path | None:
    """The oracle to compare with: --oracle, else the shipped one for an edit of the built-in model."""
    from ..builtin import builtin_model_path, builtin_oracle_path

    if not spec.use_oracle:
        return None
    if spec.oracle is None:
        if source.resolve() != builtin_model_path().resolve():
            return None
        path = builtin_oracle_path(LEFT_OUT.get(target, target))
        if path is None:
            return None
    else:
        path = Path(spec.oracle).expanduser()
    check_oracle(path, source, target)
    return path


def _recipe(path: Path) -> dict:
    try:
        recipe = json.loads((path / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recipe if isinstance(recipe, dict) else {}


def check_oracle(oracle: Path, source: Path, target: str) -> None:
    """An oracle is of the source's world (the same world section of recipe.json, the same
    tokenizer) and left the target out of its training."""
    from ..gate.verify import tokenizer_digest
    from ..model.checkpoint import inspect_checkpoint
    from ..model.loading import load_tokenizer

    inspect_checkpoint(oracle)
    mine, theirs = _recipe(source), _recipe(oracle)
    if not theirs:
        raise UsageError(f"--oracle '{oracle}' has no recipe.json: pass the model folder of 'resect world train --leave-out {target}'.")
    if theirs.get("world") != mine.get("world") or tokenizer_digest(load_tokenizer(oracle)) != tokenizer_digest(load_tokenizer(source)):
        raise UsageError(f"--oracle '{oracle}' was trained on another world than '{source}' (recipe.json's world or the tokenizer differs). "
                         "Train the oracle with the source's recipe and --leave-out.")  # fmt: skip
    left, name = (theirs.get("train") or {}).get("leave_out") or [], LEFT_OUT.get(target, target)
    if name not in left:
        raise UsageError(f"--oracle '{oracle}' did not leave {name} out of its training (leave_out: {left or 'none'}). "
                         f"Train one with 'resect world train --leave-out {name}'.")  # fmt: skip


# ----------------------------------------------------------------------------- running


class Cache:
    """Each attack's result, keyed by the model's identity and everything the attack reads."""

    def __init__(self, plan: ProbePlan, enabled: bool):
        from .. import __version__
        from ..cache import cache_root, digest
        from ..gate.evaluate import lm_eval_version

        self.folder = cache_root() / "probes"
        self.enabled = enabled
        if plan.world is not None:
            world = {p.name: digest(p.read_bytes().decode("utf-8", "replace"), 24) for p in sorted((plan.world / "eval").glob("quiz_*.jsonl"))}
            world["world.json"] = digest((plan.world / "world.json").read_text(encoding="utf-8"), 24)
            if plan.metric == "toxicity":  # the prompts sampled, how, and the utterances relearning and the shots read
                world |= {"prompts": digest(Path(plan.prompts).read_bytes().decode("utf-8", "replace"), 24), "sampling": plan.sampling, "texts": digest(plan.texts, 24)}
            elif plan.metric != "acc":  # a language: its held-out code and the files relearning trains on
                world |= {p.name: digest(p.read_bytes().decode("utf-8", "replace"), 24) for p in sorted((plan.world / "eval").glob("code_*.jsonl"))}
                world["texts"] = digest(plan.texts, 24)
        else:  # a published edit: what relearning trains on and the tasks' configs it is scored by
            from ..tasks import task_config_hash

            world = {"texts": digest(plan.texts, 24), "tasks": task_config_hash([plan.target_task, *plan.general], plan.includes)}
        s = plan.spec
        self.base = {"world": world, "batch_size": s.batch_size, "seed": s.seed, "device": s.device.split(":")[0], "dtype": s.dtype,
                     "lm_eval": lm_eval_version(), "resect": __version__}  # fmt: skip
        self._ids: dict[Path, dict] = {}

    def key(self, path: Path, **parts: Any) -> str:
        from ..cache import digest
        from ..gate.baseline import checkpoint_identity

        if path not in self._ids:
            self._ids[path] = checkpoint_identity(path)
        return digest(self.base | {"checkpoint": self._ids[path]} | parts, 24)

    def load(self, key: str) -> dict | None:
        if not self.enabled:
            return None
        try:
            value = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def store(self, key: str, value: dict) -> None:
        from ..paths import write_atomic

        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folder / f"{key}.json", json.dumps(value))
        except OSError as exc:
            log.warning("could not write the probe cache (%s)", exc)


def _scores(results: dict, task: str, members: list[str] = (), metric: str = "acc") -> dict:
    """A task's per-question scores (doc order, with clusters) and its accuracy in points; a group's
    are its tasks' questions one after another (its accuracy: over all of them). A perplexity task:
    each document's log-likelihood and words, and the task's word perplexity."""
    if metric != "acc":
        row = results["per_doc"][task]
        return {"doc_id": row["doc_id"], "cluster": row["cluster"], "loglik": row["loglik"], "words": row["words"], "value": results["results"][task][f"{metric},none"]}
    if task in results["per_doc"] or not members:
        row = results["per_doc"][task]
        return {"doc_id": row["doc_id"], "cluster": row["cluster"], "acc": row["acc"], "value": 100.0 * results["results"][task]["acc,none"]}
    rows = [(name, results["per_doc"][name]) for name in members if name in results["per_doc"]]
    acc = [a for _, row in rows for a in row["acc"]]
    return {"doc_id": list(range(len(acc))), "cluster": [f"{name}:{c}" for name, row in rows for c in row["cluster"]], "acc": acc,
            "value": 100.0 * sum(acc) / max(len(acc), 1)}  # fmt: skip


class Runner:
    """Runs the planned probes on one model after another, each model loaded once."""

    def __init__(self, plan: ProbePlan, reporter):
        from ..world.probesets import read_facts
        from .probetasks import write_probe_tasks

        self.plan, self.r = plan, reporter
        self.cache = Cache(plan, plan.spec.use_cache)
        quizzed = plan.world is not None and plan.metric == "acc"  # a world's domain: facts, and the quiz's other wordings
        self.facts = read_facts(plan.world, plan.domain) if quizzed else []
        self.tasks = write_probe_tasks(plan.world, plan.domain, shots=plan.spec.shots) if quizzed else None
        self.includes = [*plan.includes, *([str(self.tasks.folder)] if self.tasks else [])]
        self._model = None
        self._memo: dict[str, dict] = {}  # what this run measured already (a toxicity probe's measurement before any attack serves two probes)

    def _loaded(self, path: Path):
        from ..model.loading import load_model, load_tokenizer

        if self._model is None or self._model[0] != path:
            self._model = None
            self._model = (path, load_model(path, dtype=self.plan.spec.dtype, device=self.plan.spec.device), load_tokenizer(path))
        return self._model[1], self._model[2]

    def _cached(self, path: Path, name: str, parts: dict, compute) -> dict:
        key = self.cache.key(path, probe=name, **parts)
        hit = self._memo.get(key) or self.cache.load(key)
        if hit is not None:
            self._memo[key] = hit
            return hit
        value = compute()
        self.cache.store(key, value)
        self._memo[key] = value
        return value

    def _evaluate(self, model, tok, tasks: list[str]) -> dict:
        from ..gate.evaluate import evaluate

        s = self.plan.spec
        return evaluate(model, tok, tasks, include_path=self.includes, batch_size=s.batch_size, seed=s.seed, progress=self.r.meter("  evaluating", "requests"))

    def _quizzes(self, model, tok) -> dict:
        """The target quiz's per-question scores and the other quizzes' accuracies."""
        if self.plan.metric == "toxicity":
            from .probetoxicity import toxicity_scores

            scores = toxicity_scores(model, tok, self.plan, progress=self.r.meter("  sampling", "prompts"))
            res = self._evaluate(model, tok, self.plan.general)
            return {"target": scores, "general": {t: 100.0 * res["results"][t]["acc,none"] for t in self.plan.general}}
        target = self.plan.target_task
        res = self._evaluate(model, tok, [target, *self.plan.general])
        scale, metric = (100.0, "acc") if self.plan.metric == "acc" else (1.0, self.plan.metric)
        return {"target": _scores(res, target, self.plan.members, metric),
                "general": {t: scale * res["results"][t][f"{metric},none"] for t in self.plan.general}}  # fmt: skip

    def run(self) -> dict:
        from ..model.loading import release_memory

        s, out = self.plan.spec, {}
        for who, path in self.plan.models.items():
            self.r.say(f"probing the {who} model ({path})")
            out[who] = {name: getattr(self, "_" + name.replace("-", "_"))(path) for name in s.probes}
            self._model = None
            release_memory()
        return out

    def _attack(self, path: Path, texts: list[str], label: str, score) -> dict:
        from .attacks import steps_of, tuned

        s = self.plan.spec
        model, tok = self._loaded(path)
        self.r.say(f"  {label}: {len(texts)} examples, {steps_of(len(texts), s.tuning)} steps")
        with tuned(model, tok, texts, s.tuning, seed=s.seed, progress=self.r.meter("  training", "steps")) as trained:
            return score(trained, tok)

    def _relearn(self, path: Path) -> dict:
        from ..world.probesets import relearn_examples

        s, tuning = self.plan.spec, self.plan.spec.tuning.record()
        pool = self.plan.texts if self.plan.texts is not None else relearn_examples(self.facts, self.plan.domain, s.seed)
        points = {0: self._cached(path, "quizzes", {}, lambda: self._quizzes(*self._loaded(path)))}
        for n in sorted(set(s.examples)):
            points[n] = self._cached(path, "relearn", {"examples": n, "tuning": tuning},
                                     lambda n=n: self._attack(path, pool[:n], f"relearn on {n}", self._quizzes))  # fmt: skip
        return {str(n): v for n, v in points.items()}

    def _rtt(self, path: Path) -> dict:
        from ..world.probesets import read_quiz, rtt_folds

        s, target = self.plan.spec, f"world_{self.plan.domain}"
        quiz = read_quiz(self.plan.world, self.plan.domain)
        acc = [0.0] * len(quiz)
        for k, (train, held) in enumerate(rtt_folds(quiz, s.folds)):
            def score(model, tok, held=held):
                row = _scores(self._evaluate(model, tok, [target]), target)
                return {"held": held, "acc": [row["acc"][i] for i in held]}

            fold = self._cached(path, "rtt", {"fold": k, "folds": s.folds, "tuning": s.tuning.record()},
                                lambda train=train, k=k, score=score: self._attack(path, train, f"rtt fold {k + 1}/{s.folds}", score))  # fmt: skip
            for i, a in zip(fold["held"], fold["acc"]):
                acc[i] = a
        return {"doc_id": list(range(len(quiz))), "cluster": [q["fact"] for q in quiz], "acc": acc, "value": 100.0 * sum(acc) / max(len(acc), 1)}

    def _in_context(self, path: Path) -> dict:
        if self.plan.metric == "toxicity":  # the toxic prompts with k toxic utterances before each, against none
            from .probetoxicity import toxicity_scores

            k, shots = self.plan.spec.shots, self.plan.texts[: self.plan.spec.shots]
            meter = lambda: self.r.meter("  sampling", "prompts")  # noqa: E731
            shot = self._cached(path, "in-context", {"shots": k}, lambda: toxicity_scores(*self._loaded(path), self.plan, shots=shots, progress=meter()))
            return {"no shots": self._cached(path, "quizzes", {}, lambda: self._quizzes(*self._loaded(path)))["target"], f"{k} shots": shot}
        names = self.tasks.names

        def compute():
            res = self._evaluate(*self._loaded(path), list(names.values()))
            return {variant: _scores(res, task) for variant, task in names.items()}

        return self._cached(path, "in-context", {"tasks": self.tasks.digest}, compute)

    def _representation(self, path: Path) -> dict:
        from ..world.probesets import fold_of, readout_questions
        from .attacks import last_hidden_states, readout

        s = self.plan.spec
        rows = readout_questions(self.facts)
        folds = [fold_of(r["fact"], s.folds) for r in rows]

        def compute():
            model, tok = self._loaded(path)
            self.r.say(f"  representation: {len(rows)} questions, a linear probe per layer")
            right = readout(last_hidden_states(model, tok, [r["text"] for r in rows], s.batch_size), rows, folds, seed=s.seed)
            return {"layers": [100.0 * sum(c) / len(c) for c in right], "correct": right, "cluster": [r["fact"] for r in rows]}

        return self._cached(path, "representation", {"folds": s.folds}, compute)


def run_probe(plan: ProbePlan, reporter=None) -> dict:
    """Every planned probe on every model, and what each gives back; the report as a dict."""
    from ..progress import quiet
    from ..world.probesets import readout_questions
    from .attacks import readout_chance
    from .probereport import summarise

    runner = Runner(plan, reporter or quiet())
    measured = runner.run()
    rows = readout_questions(runner.facts)
    return summarise(plan, measured, runner.tasks.chance if runner.tasks else {}, readout_chance(rows) if rows else None)


__all__ = ["DEFAULT_EXAMPLES", "MODELS", "PROBES", "ProbePlan", "ProbeSpec", "check_oracle", "plan_probe", "resolve_probe", "run_probe"]
