"""`resect probe` on an edit of a published checkpoint (a model without a world): the relearning
attack in Łucki et al.'s form (2024). Relearning trains on N of the target's documents in the run's
profiling corpus (the forget corpus: WMDP's, or MMLU's validation questions with their answers), then
scores the run's target and general tasks through lm-eval. There is no oracle for a published
model, so each row compares the attacked edit with the edit before the attack, question by question:
what relearning gives back, and its share of what the edit took (the source's lead).

rtt, in-context and representation read a world's facts (which question asks which fact, the
wordings no split asks) and run on world models only.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import UsageError
from .probespec import ProbePlan, ProbeSpec, check_spec


def resolve_corpus_probe(spec: ProbeSpec, edited: Path, source: Path, *, target: str | None, kind: str | None, where: str) -> ProbePlan:
    """The relearning probe of an edit of a published checkpoint, every check made before any model loads."""
    check_spec(spec)
    others = [p for p in spec.probes or [] if p != "relearn"]
    if others:
        raise UsageError(f"'{others[0]}' reads a world's facts; on an edit of '{source}' (no world) only the relearn probe runs. Pass --probes relearn.")
    if spec.oracle is not None:
        raise UsageError("--oracle is a world model trained without the target; an edit of a published checkpoint is compared with itself "
                         "before the attack. Drop --oracle.")  # fmt: skip
    if kind in ("language", "toxicity"):
        raise UsageError(f"resect probe measures domain edits (tasks to relearn); '{where}' is a {kind} edit. Language and toxicity probes are not built yet.")
    if target is None:
        raise UsageError(f"'{where}' does not say which label it removed. Pass --target LABEL (the corpus label of the removed domain).")
    resolved = _resolved(edited)
    if spec.corpus is not None and not Path(spec.corpus).expanduser().exists():
        raise UsageError(f"--corpus '{spec.corpus}' does not exist. Pass labelled text: JSONL of {{\"text\", \"label\"}}, a folder of text files per label, or a corpus YAML.")
    texts = _texts(str(Path(spec.corpus).expanduser()) if spec.corpus else resolved.get("corpus"), target, spec.seed)
    target_tasks, general, includes = _tasks(resolved, where)
    if max(spec.examples) > len(texts):
        raise UsageError(f"--examples {max(spec.examples)} is more than the {len(texts)} '{target}' documents of the corpus. Pass at most {len(texts)}.")
    if spec.tuning.method == "lora":
        from .attacks import require_peft

        require_peft()
    spec.probes, spec.use_oracle = ["relearn"], False
    members = _members(target_tasks[0], general, includes)
    return ProbePlan(spec, edited, source, None, None, target, general, includes, len(texts), target_tasks=target_tasks[:1], texts=texts, members=members)


def _resolved(edited: Path) -> dict:
    """The run's resolved configuration, written into the edited checkpoint (resect_run.yaml)."""
    import yaml

    from .spec import RUN_FILE

    file = edited / RUN_FILE
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8")) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        config = None
    if not isinstance(config, dict):
        raise UsageError(f"'{edited}' has no readable {RUN_FILE} (the edit's tasks and corpus): probe the run directory of a 'resect domain' or 'resect run' edit.")
    return config


def _texts(corpus: str | None, target: str, seed: int) -> list[str]:
    """The target's documents of the corpus, in an order fixed by the seed."""
    from ..edit.corpus import load_corpus

    if not corpus or not Path(corpus).exists():
        raise UsageError(f"The run's profiling corpus ({corpus or 'none recorded'}) is gone. Pass --corpus with the documents to relearn on (labelled text).")
    texts = [d.text for d in load_corpus(corpus).documents if d.label == target and d.text.strip()]
    if not texts:
        raise UsageError(f"The corpus '{corpus}' holds no '{target}' document to relearn on. Pass --corpus with some.")
    random.Random(seed).shuffle(texts)
    return texts


def _tasks(resolved: dict, where: str) -> tuple[list[str], list[str], list[str]]:
    """The run's target tasks, general tasks and task folders, each folder still there."""
    from ..gate.verify import split_spec

    names = lambda key: [split_spec(str(t))[0] for t in resolved.get(key) or []]  # noqa: E731
    target, general = names("target_tasks"), names("general_tasks")
    includes = [str(p) for p in resolved.get("include_path") or []]
    gone = [p for p in includes if not Path(p).is_dir()]
    if gone:
        raise UsageError(f"The run's task folder '{gone[0]}' is gone (a mirror's tasks live in the cache): rerun the edit, then probe it.")
    if not target:
        raise UsageError(f"'{where}' names no target task to score the relearning on. Probe an edit with --target-tasks.")
    return target, general, includes


def _members(target: str, general: list[str], includes: list[str]) -> list[str]:
    """A target group's tasks (its questions are what the probe scores), checked through lm-eval now."""
    from ..tasks import group_members, resolve_tasks, task_manager_for

    names, paths = resolve_tasks([target, *general], includes)
    return sorted(group_members(task_manager_for(names, paths), target, set()))


__all__ = ["resolve_corpus_probe"]
