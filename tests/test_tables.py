"""Shared tables kept in several files agree: the MMLU-Pro categories in Python, in the task
group YAMLs the gate evaluates and in the corpus YAML the statistics are profiled on."""

from __future__ import annotations

import pytest
import yaml

from resect.run.recipebook import MMLU_PRO, RECIPES_DIR

MMLU_SUBJECTS = 57  # the subjects of MMLU's test split


def test_every_mmlu_subject_is_in_exactly_one_category():
    subjects = [s for members in MMLU_PRO.values() for s in members]
    assert len(MMLU_PRO) == 14 and len(subjects) == MMLU_SUBJECTS == len(set(subjects))


@pytest.mark.parametrize("folder, part, group, member", [("mmlu_pro", "gate", "resect_mmlu_pro_", "resect_mmlu_gate_"),
                                                         ("mmlu_pro_search", "search", "resect_mmlu_pro_search_", "resect_mmlu_search_")])
def test_the_gate_s_and_the_search_s_groups_match_the_table_and_read_their_part_of_the_test_split(folder, part, group, member):
    """The gate's groups and the search's: the same subjects per category, each over its own part of
    MMLU's test split (cut by question, resect.tasks.mmlu_part), in lm-eval's MMLU format."""
    folder = RECIPES_DIR / "tasks" / folder
    template = (folder / f"_resect_mmlu_{part}_template_yaml").read_text()
    assert f"process_docs: !function resect.tasks.mmlu_{part}_docs" in template and "test_split: test" in template
    groups, subjects = {}, {}
    for file in sorted(folder.glob("*.yaml")):
        spec = yaml.safe_load(file.read_text())
        if "group" in spec:
            assert spec["group"] == file.stem
            groups[spec["group"]] = spec["task"]
        else:
            assert spec["include"] == f"_resect_mmlu_{part}_template_yaml" and spec["task"] == file.stem
            subjects[spec["task"]] = spec["dataset_name"]
    assert groups == {f"{group}{c.replace(' ', '_')}": [f"{member}{s}" for s in members] for c, members in MMLU_PRO.items()}
    assert subjects == {f"{member}{s}": s for members in MMLU_PRO.values() for s in members}


def test_the_profiling_corpus_matches_the_table_and_reads_validation_and_dev_only():
    corpus = yaml.safe_load((RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml").read_text())
    by_split = {}
    for source in corpus["sources"]:
        by_split.setdefault(source["split"], {})[source["label"]] = source["task"]
    want = {c: [f"mmlu_{s}" for s in members] for c, members in MMLU_PRO.items()}
    assert by_split == {"validation": want, "dev": want}


def test_the_test_split_is_cut_in_two_by_question():
    from resect.tasks import mmlu_part

    parts = [mmlu_part(f"Question number {k}?") for k in range(5000)]
    assert set(parts) == {"search", "gate"} and 0.17 < parts.count("search") / len(parts) < 0.23
    assert mmlu_part("  Question number 7?\n") == mmlu_part("Question number 7?")  # by its text, spaces aside
