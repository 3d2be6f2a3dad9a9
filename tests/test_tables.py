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



def test_the_validation_groups_match_the_table_and_read_the_validation_split():
    """What --search scores on for a published checkpoint: the same subjects per category, MMLU's
    validation split (the gate's groups read its test split)."""
    folder = RECIPES_DIR / "tasks" / "mmlu_pro_validation"
    template = yaml.safe_load((folder / "_resect_mmlu_validation_template_yaml").read_text())
    assert template["test_split"] == "validation" and template["dataset_path"] == "cais/mmlu"
    groups, subjects = {}, {}
    for file in sorted(folder.glob("*.yaml")):
        spec = yaml.safe_load(file.read_text())
        if "group" in spec:
            groups[spec["group"]] = spec["task"]
        else:
            assert spec["include"] == "_resect_mmlu_validation_template_yaml" and spec["task"] == file.stem
            subjects[spec["task"]] = spec["dataset_name"]
    assert groups == {f"resect_mmlu_pro_val_{c.replace(' ', '_')}": [f"resect_mmlu_val_{s}" for s in members] for c, members in MMLU_PRO.items()}
    assert subjects == {f"resect_mmlu_val_{s}": s for members in MMLU_PRO.values() for s in members}
