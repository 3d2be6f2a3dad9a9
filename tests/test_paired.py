"""Paired evidence and the gate on confidence bounds: per-question scores, cluster bootstrap,
resolution, rows gated on their bounds, both toxicity numbers, and bad confidences refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _cli import run_cli

import resect.model.loading
from resect.gate.paired import doc_scores, paired, paired_values
from resect.gate.verify import compare, toxicity_rows


def scores(values: list[float], clusters: list[str] | None = None, metric: str = "acc") -> dict:
    ids = list(range(len(values)))
    return {"doc_id": ids, "cluster": clusters or [f"doc:{i}" for i in ids], metric: list(values)}


def test_an_unchanged_model_drops_nothing_and_resolves_three_questions_in_n_at_95_percent():
    base = scores([1.0] * 80 + [0.0] * 20)
    ev = paired(base, base, "acc", higher_better=True, confidence=0.95, seed=0)
    assert ev.drop == ev.low == ev.high == 0.0 and ev.n == ev.clusters == 100
    assert ev.resolution == pytest.approx(100 * math.ceil(math.log(20)) / 100)  # 3 of 100 questions


def test_bounds_are_seeded_one_sided_and_hold_the_estimate():
    rng = np.random.default_rng(1)
    before = (rng.random(400) < 0.9).astype(float)
    after = np.where(rng.random(400) < 0.3, 0.0, before)  # about 27 points lost
    base, edited = scores(before.tolist()), scores(after.tolist())
    one = paired(base, edited, "acc", higher_better=True, confidence=0.9, seed=3)
    again = paired(base, edited, "acc", higher_better=True, confidence=0.9, seed=3)
    wider = paired(base, edited, "acc", higher_better=True, confidence=0.99, seed=3)
    assert one == again  # the same seed, the same bounds
    assert one.low < one.drop < one.high and wider.low < one.low and wider.high > one.high
    assert one.drop == pytest.approx(100 * (before.mean() - after.mean()))


def test_questions_of_one_fact_count_as_one_unit_of_evidence():
    values = [1.0, 1.0, 0.0, 1.0] * 30
    lost = [0.0, 0.0, 0.0, 1.0] * 30
    alone = paired(scores(values), scores(lost), "acc", higher_better=True)
    facts = [f"fact{i // 2}" for i in range(len(values))]  # two questions per fact
    clustered = paired(scores(values, facts), scores(lost, facts), "acc", higher_better=True)
    assert clustered.drop == pytest.approx(alone.drop) and clustered.clusters == 60 and clustered.n == 120
    assert clustered.resolution > alone.resolution  # half as many independent units resolve less


def test_a_row_gated_on_its_bound_can_fail_where_its_estimate_passes():
    rng = np.random.default_rng(0)
    before = [1.0] * 60
    after = [0.0 if rng.random() < 0.12 else 1.0 for _ in before]  # a drop near 10 points on 60 questions
    base = {"results": {"quiz": {"acc,none": 1.0, "acc_stderr,none": 0.0}}, "per_doc": {"quiz": scores(before)}}
    edited = {"results": {"quiz": {"acc,none": float(np.mean(after)), "acc_stderr,none": 0.04}}, "per_doc": {"quiz": scores(after)}}
    specs = {"quiz": ("target", "acc")}
    bar = 100 * (1 - float(np.mean(after))) - 0.5  # just under the estimate
    (estimate,) = compare(base, edited, specs, {"target": bar, "general": 2.0})
    (bound,) = compare(base, edited, specs, {"target": bar, "general": 2.0}, confidence=0.95)
    assert estimate.passed and estimate.gated_on == "estimate"
    assert not bound.passed and bound.gated_on == "bound" and bound.low < bar
    assert estimate.low == bound.low and estimate.resolution > 0  # the bounds are reported either way


def test_p_correct_is_the_right_answer_s_share_of_the_choices_and_moves_before_an_answer_flips():
    def sample(doc_id: int, lls: list[float], target: int = 0) -> dict:
        return {"doc_id": doc_id, "filter": "none", "metrics": ["acc"], "acc": float(max(range(len(lls)), key=lls.__getitem__) == target),
                "target": target, "filtered_resps": [[ll, False] for ll in lls], "doc": {"fact": f"f{doc_id}"}}  # fmt: skip

    sure = doc_scores({"quiz": [sample(0, [0.0, -3.0, -3.0, -3.0]), sample(1, [0.0, -1.0, -5.0, -5.0])]})["quiz"]
    unsure = doc_scores({"quiz": [sample(0, [0.0, -0.5, -3.0, -3.0]), sample(1, [0.0, -0.2, -5.0, -5.0])]})["quiz"]
    assert sure["cluster"] == ["f0", "f1"] and sure["acc"] == unsure["acc"] == [1.0, 1.0]
    assert sure["p_correct"][0] == pytest.approx(1 / (1 + 3 * math.exp(-3)))
    ev = paired(sure, unsure, "p_correct", higher_better=True)
    assert ev.drop > 0 and paired(sure, unsure, "acc", higher_better=True).drop == 0.0


def test_toxicity_has_two_target_rows_and_a_no_op_fails_the_probability_s_bar():
    per_prompt = [0.9, 0.8, 0.1, 0.7, 0.05, 0.6] * 10
    run = {"expected_max_toxicity": float(np.mean(per_prompt)), "toxicity_probability": float(np.mean([x > 0.5 for x in per_prompt])),
           "expected_max_toxicity_stderr": 0.03, "toxicity_probability_stderr": 0.06, "per_prompt_max": per_prompt}  # fmt: skip
    rows = toxicity_rows("toxicity:prompts", run, run, {"target": 0.0, "general": 2.0, "toxicity": 100 / 3})
    assert [r.metric for r in rows] == ["expected_max_toxicity", "toxicity_probability"]
    emt, prob = rows
    assert emt.passed and not prob.passed and prob.unit == "%" and prob.drop == 0.0
    ev = paired_values([1.0, 0.0] * 30, [0.0, 0.0] * 30, binary=True)
    assert ev.drop == pytest.approx(50.0) and ev.low > 30


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan"])
@pytest.mark.parametrize("option", ["--confidence", "--search-confidence"])
def test_a_confidence_outside_zero_to_one_is_one_line_before_any_model_loads(option, value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "run"
    code, _, err = run_cli(["domain", "--remove", "biology", f"{option}={value}", "--out", str(out)], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and option.lstrip("-").replace("-", "_") in lines[0].replace("-", "_"), err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_verify_refuses_a_confidence_outside_zero_to_one(value, tmp_path, capsys, monkeypatch):
    from resect.builtin import builtin_model_path

    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, _, err = run_cli(["verify", str(builtin_model_path()), "--baseline", str(builtin_model_path()), "--target-tasks", "world_law",
                            "--confidence", value, "--out", str(tmp_path / "v")], capsys, monkeypatch)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "confidence" in lines[0], err
    assert not (tmp_path / "v").exists()
