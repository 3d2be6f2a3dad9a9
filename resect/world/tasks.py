"""lm-eval task YAMLs over a world data folder: one quiz per domain, one perplexity task per language.

lm-eval resolves `data_files` against the working directory, so the YAMLs carry absolute paths
and are written wherever the data folder currently lives (see `resect.builtin.task_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .code import LANGUAGES
from .domains import DOMAINS

QUIZ_METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]


def _dataset(file: Path) -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(file.resolve())}}, "test_split": "test"}


def validation_name(task: str) -> str:
    """The validation twin of a world task: world_<domain> -> world_val_<domain>, world_ppl_<l> -> world_val_ppl_<l>."""
    return task.replace("world_", "world_val_", 1)


def quiz_task(domain: str, data: Path, *, validation: bool = False) -> dict:
    """A 4-option multiple-choice task over eval/quiz_<domain>.jsonl (`world_<domain>`), or over its
    validation quiz (`world_val_<domain>`), scored by accuracy."""
    return {
        "task": validation_name(f"world_{domain}") if validation else f"world_{domain}",
        **_dataset(data / "eval" / f"{'validation_' if validation else ''}quiz_{domain}.jsonl"),
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": QUIZ_METRICS,
        "metadata": {"version": 1.0},
    }


def ppl_task(language: str, data: Path, *, validation: bool = False) -> dict:
    """A rolling-loglikelihood (perplexity) task over eval/code_<language>.jsonl (`world_ppl_<language>`),
    or over its validation code (`world_val_ppl_<language>`): the one builder of perplexity tasks
    (`resect ppl-tasks` writes the same)."""
    from ..gate.tasks import perplexity_task_config

    name = validation_name(f"world_ppl_{language}") if validation else f"world_ppl_{language}"
    return perplexity_task_config(name, data / "eval" / f"{'validation_' if validation else ''}code_{language}.jsonl")


def has_validation(data: str | Path) -> bool:
    """Whether a world data folder has the validation splits a search scores on (worlds generated
    before they existed do not)."""
    data = Path(data)
    return all((data / "eval" / f"validation_quiz_{d}.jsonl").is_file() for d in DOMAINS) and all(
        (data / "eval" / f"validation_code_{lang}.jsonl").is_file() for lang in LANGUAGES
    )


def write_tasks(data: str | Path, out: str | Path, *, located_at: str | Path | None = None) -> Path:
    """Write world_<domain>.yaml and world_ppl_<language>.yaml (and their world_val_ validation
    twins, where the data has them) into `out`; returns `out`. The YAMLs name the data where it
    lives (`located_at`, default `data`: a folder being written names its final place)."""
    import yaml

    from ..paths import write_atomic

    data, out = Path(data), Path(out)
    at = Path(located_at) if located_at is not None else data
    out.mkdir(parents=True, exist_ok=True)
    kinds = (False, True) if has_validation(data) else (False,)
    tasks = [quiz_task(d, at, validation=v) for v in kinds for d in DOMAINS] + [ppl_task(lang, at, validation=v) for v in kinds for lang in LANGUAGES]
    for task in tasks:
        text = yaml.safe_dump(task, sort_keys=False)
        target = out / f"{task['task']}.yaml"
        if not target.is_file() or target.read_text() != text:
            write_atomic(target, text)
    return out


def task_names() -> list[str]:
    return [f"world_{d}" for d in DOMAINS] + [f"world_ppl_{lang}" for lang in LANGUAGES]


__all__ = ["write_tasks", "task_names", "quiz_task", "ppl_task", "has_validation", "validation_name", "json"]
