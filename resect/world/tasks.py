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


def quiz_task(domain: str, data: Path) -> dict:
    """A 4-option multiple-choice task over eval/quiz_<domain>.jsonl, scored by accuracy."""
    return {
        "task": f"world_{domain}",
        **_dataset(data / "eval" / f"quiz_{domain}.jsonl"),
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": QUIZ_METRICS,
        "metadata": {"version": 1.0},
    }


def ppl_task(language: str, data: Path) -> dict:
    """A rolling-loglikelihood (perplexity) task over eval/code_<language>.jsonl: the one builder of
    perplexity tasks (`resect ppl-tasks` writes the same)."""
    from ..gate.tasks import perplexity_task_config

    return perplexity_task_config(f"world_ppl_{language}", data / "eval" / f"code_{language}.jsonl")


def write_tasks(data: str | Path, out: str | Path) -> Path:
    """Write world_<domain>.yaml and world_ppl_<language>.yaml into `out`; returns `out`."""
    import yaml

    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [quiz_task(d, data) for d in DOMAINS] + [ppl_task(lang, data) for lang in LANGUAGES]
    for task in tasks:
        text = yaml.safe_dump(task, sort_keys=False)
        target = out / f"{task['task']}.yaml"
        if not target.is_file() or target.read_text() != text:
            tmp = target.with_suffix(".yaml.tmp")
            tmp.write_text(text)
            tmp.replace(target)
    return out


def task_names() -> list[str]:
    return [f"world_{d}" for d in DOMAINS] + [f"world_ppl_{lang}" for lang in LANGUAGES]


__all__ = ["write_tasks", "task_names", "quiz_task", "ppl_task", "json"]
