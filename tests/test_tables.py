"""Shared tables kept in several files agree: the MMLU-Pro categories in Python, in the task
group YAMLs the gate evaluates and in the corpus YAML the statistics are profiled on."""

from __future__ import annotations

import yaml

from resect.run.recipebook import MMLU_PRO, RECIPES_DIR

MMLU_SUBJECTS = 57  # the subjects of MMLU's test split


def test_every_mmlu_subject_is_in_exactly_one_category():
    subjects = [s for members in MMLU_PRO.values() for s in members]
    assert len(MMLU_PRO) == 14 and len(subjects) == MMLU_SUBJECTS == len(set(subjects))


def test_the_task_groups_match_the_table():
    folder = RECIPES_DIR / "tasks" / "mmlu_pro"
    groups = {}
    for file in sorted(folder.glob("*.yaml")):
        spec = yaml.safe_load(file.read_text())
        assert spec["group"] == file.stem
        groups[spec["group"]] = spec["task"]
    assert groups == {f"resect_mmlu_pro_{c.replace(' ', '_')}": [f"mmlu_{s}" for s in members] for c, members in MMLU_PRO.items()}


def test_the_profiling_corpus_matches_the_table_and_reads_validation_only():
    corpus = yaml.safe_load((RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml").read_text())
    sources = {s["label"]: s for s in corpus["sources"]}
    assert {label: s["task"] for label, s in sources.items()} == {c: [f"mmlu_{s}" for s in members] for c, members in MMLU_PRO.items()}
    assert {s["split"] for s in sources.values()} == {"validation"}

