"""The defaults of an edit that come from the model: a generated world's data, or the paper's protocol.

`world_defaults` gives a generated world's corpus, quizzes, held-out code and prompts (the
built-in model's, or those a model from `resect world train` brings beside it);
`published_defaults` the paper's MMLU protocol for a published checkpoint; `rule_and_ratio`
the selection rule and ratio each of them defaults to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from .spec import BUILTIN_LANGUAGE_RATIO, CORPUS_FILES, DEFAULT_RULE, PAPER_RATIO, PAPER_THRESHOLD, SKEW_MEAN_RATIO, WORLD_DOMAIN_RULE, WORLD_SKEW_MEAN_RATIO, WORLD_TOXICITY_THRESHOLD, RunSpec


def world_defaults(spec: RunSpec, data: Path) -> dict[str, Any]:
    """Corpus, tasks and prompts of a generated world (`data`: the built-in one's, or the world a
    model trained by `resect world train` brings beside it) for this kind of edit."""
    from ..builtin import world_labels

    domains, languages = world_labels(data)
    quizzes = [f"world_{d}" for d in domains]
    if spec.kind == "domain":
        labels, target_tasks = domains, [f"world_{spec.target}"]
        general = [t for t in quizzes if t not in target_tasks]
    elif spec.kind == "language":
        labels, target_tasks = languages, [f"world_ppl_{spec.target}"]
        general = [f"world_ppl_{lang}" for lang in languages if lang != spec.target]
    else:
        labels, target_tasks, general = [], [], quizzes
    from ..tasks import has_validation, validation_name, world_task_dir

    validation: dict[str, Any] = {}
    if has_validation(data):  # the splits a search scores on: the gate's tasks' world_val_ twins
        validation = {"validation_target_tasks": [validation_name(t) for t in target_tasks],
                      "validation_general_tasks": [validation_name(t) for t in general]}  # fmt: skip
        if (data / "prompts" / "toxicity_validation.jsonl").is_file():
            validation["validation_prompts"] = str(data / "prompts" / "toxicity_validation.jsonl")
    return validation | {
        "corpus": str(data / "corpus" / CORPUS_FILES[spec.kind]),
        "labels": labels,
        "include_path": str(world_task_dir(data)),
        "target_tasks": target_tasks,
        "general_tasks": general,
        "toxicity_prompts": str(data / "prompts" / "toxicity.jsonl"),
        **({"profile_prompts": str(data / "prompts" / "toxicity_profile.jsonl")} if (data / "prompts" / "toxicity_profile.jsonl").is_file() else {}),
    }


def published_defaults(spec: RunSpec) -> dict[str, Any]:
    """The paper's protocol for a published checkpoint: MMLU grouped into the MMLU-Pro categories."""
    from .recipebook import RECIPES_DIR, mmlu_pro_categories

    if spec.kind != "domain":
        what = "--corpus (labelled code or text) and --target-tasks/--general-tasks" if spec.kind == "language" else "--toxicity-prompts"
        raise UsageError(f"This model has no built-in data for 'resect {spec.kind}'. Pass {what}, or use a recipe from 'resect recipes ls'.")
    categories = list(mmlu_pro_categories())
    task = lambda category, kind="": f"resect_mmlu_pro_{kind}{category.replace(' ', '_')}"  # noqa: E731
    searching = {  # a fifth of MMLU's test split, cut by question (resect.tasks.mmlu_part): the gate scores the rest
        "include_path": [str(RECIPES_DIR / "tasks" / "mmlu_pro"), str(RECIPES_DIR / "tasks" / "mmlu_pro_search")],
        "validation_target_tasks": [task(spec.target, "search_")],
        "validation_general_tasks": [task(c, "search_") for c in categories if c != spec.target],
    } if spec.search else {}  # fmt: skip
    return {
        "corpus": str(RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml"),
        "labels": categories,
        "include_path": str(RECIPES_DIR / "tasks" / "mmlu_pro"),
        "target_tasks": [task(spec.target)],
        "general_tasks": [task(c) for c in categories if c != spec.target],
        "toxicity_prompts": None,
    } | searching


def rule_and_ratio(spec: RunSpec, world: bool) -> tuple[str, float]:
    """The selection rule and its ratio: what the command line or recipe says, else the defaults
    (the paper's on published checkpoints; on a generated world those chosen on its validation data)."""
    rule = spec.rule or (WORLD_DOMAIN_RULE if world and spec.kind == "domain" else DEFAULT_RULE[spec.kind])
    if spec.ratio is not None:
        return rule, spec.ratio
    if rule == "skew-mean":
        return rule, WORLD_SKEW_MEAN_RATIO if world else SKEW_MEAN_RATIO
    return rule, BUILTIN_LANGUAGE_RATIO if world and spec.kind == "language" else PAPER_RATIO


def toxicity_threshold(spec: RunSpec, world: bool) -> float:
    """The correlation threshold: what the command line or recipe says, else the paper's (0.1), or
    on a generated world the one chosen on its validation data."""
    if spec.threshold is not None:
        return spec.threshold
    return WORLD_TOXICITY_THRESHOLD if world else PAPER_THRESHOLD


__all__ = ["world_defaults", "published_defaults", "rule_and_ratio", "toxicity_threshold"]
