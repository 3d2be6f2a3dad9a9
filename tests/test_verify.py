"""resect.gate.verify / `resect verify`: the gate, its cache, its reports and its refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from _cli import run_cli
from _eval_tasks import DATA, quiz_task

from resect.edit.export import apply_masks
from resect.errors import EvalError, UsageError
from resect.gate.baseline import checkpoint_identity
from resect.gate.tasks import make_perplexity_tasks
from resect.gate.verify import drop_of, paired_drop_stderr, verify
from resect.model.mask import ExpertMask
from resect.model.tiny import build_tiny_checkpoint, train_tokenizer


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = quiz_task(tmp_path_factory.mktemp("tasks"))
    make_perplexity_tasks(DATA / "held_out.jsonl", folder / "heldout", prefix="heldout")
    return folder


@pytest.fixture(scope="module")
def edited_copy(tiny_vd, tmp_path_factory):
    """An identical copy of tiny_vd whose config names tiny_vd as its source (what `resect apply` leaves)."""
    out = tmp_path_factory.mktemp("edited") / "ckpt"
    shutil.copytree(tiny_vd, out)
    config = json.loads((out / "config.json").read_text())
    config["resect"] = {"version": "test", "source": str(tiny_vd), "mask": {"total": 0, "counts": {}}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def gate(tasks_dir, **overrides) -> dict:
    kwargs = dict(
        target_tasks=["resect_quiz"], general_tasks=["heldout_english", "heldout_python_code:bits_per_byte"],
        min_target_drop=0.0, max_general_drop=0.0, include_path=tasks_dir, limit=3, batch_size=8,
    )  # fmt: skip
    return kwargs | overrides


def test_identical_models_pass_zero_thresholds(edited_copy, tasks_dir, tmp_path):
    """Baseline found from provenance; every drop is exactly 0, so >= 0 and <= 0 both hold."""
    report = verify(edited_copy, **gate(tasks_dir), out_dir=tmp_path / "out")
    assert report["verdict"] == "pass" and report["breached"] == []
    assert [r["drop"] for r in report["rows"]] == [0.0, 0.0, 0.0]
    by_task = {r["task"]: r for r in report["rows"]}
    assert by_task["resect_quiz"]["unit"] == "points" and by_task["heldout_english"]["unit"] == "%"
    assert by_task["heldout_english"]["metric"] == "word_perplexity"
    assert by_task["heldout_python_code"]["metric"] == "bits_per_byte"
    # the quiz is paired over the same documents, and no answer changed: its drop's error is exactly 0
    assert by_task["resect_quiz"]["paired"] and by_task["resect_quiz"]["drop_stderr"] == 0.0
    assert all(r["drop_stderr"] > 0 and not r["paired"] for r in report["rows"] if r["unit"] == "%")
    assert report["baseline"]["fingerprint"] == report["edited"]["fingerprint"]
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert saved["verdict"] == "pass" and saved["versions"]["lm_eval"] and saved["results"]["baseline"]["results"]
    assert "| resect_quiz | target | acc |" in (tmp_path / "out" / "verify.md").read_text()
    assert (tmp_path / "out" / "verify.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_fails_and_names_the_breached_target(edited_copy, tiny_vd, tasks_dir, tmp_path, capsys, monkeypatch):
    """No edit -> the target does not drop -> a min-target-drop of 5 points is breached: exit 1."""
    out = tmp_path / "out"
    args = ["verify", str(edited_copy), "--baseline", str(tiny_vd), "--target-tasks", "resect_quiz",
            "--general-tasks", "heldout_english", "--min-target-drop", "5", "--max-general-drop", "1",
            "--include-path", str(tasks_dir), "--limit", "4", "--out", str(out)]  # fmt: skip
    code, stdout, _ = run_cli(args, capsys, monkeypatch)
    assert code == 1
    assert "BREACHED" in stdout and "breached: resect_quiz" in stdout
    report = json.loads((out / "verify.json").read_text())
    assert report["verdict"] == "fail" and report["breached"] == ["resect_quiz"]
    assert "**BREACHED**" in (out / "verify.md").read_text()
    # the report is not replaced by accident: a second run needs --force
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "already exists. Choose another path or pass --force" in err and json.loads((out / "verify.json").read_text()) == report
    assert run_cli([*args, "--force"], capsys, monkeypatch)[0] == 1


def test_baseline_cache_hit_and_identical_numbers(edited_copy, tasks_dir):
    first = verify(edited_copy, **gate(tasks_dir))
    second = verify(edited_copy, **gate(tasks_dir))
    assert first["baseline"]["cached"] is False and second["baseline"]["cached"] is True
    assert first["rows"] == second["rows"]
    assert first["results"]["edited"]["results"] == second["results"]["edited"]["results"]
    assert first["results"]["baseline"]["results"] == second["results"]["baseline"]["results"]


def test_cache_key_follows_task_data(edited_copy, tmp_path):
    """Editing a local task's data invalidates the cached baseline."""
    data = tmp_path / "quiz.jsonl"
    shutil.copy(DATA / "quiz.jsonl", data)
    folder = quiz_task(tmp_path / "tasks", data=data)
    run = dict(target_tasks=["resect_quiz"], min_target_drop=0.0, include_path=folder, limit=2)
    assert verify(edited_copy, **run)["baseline"]["cached"] is False
    assert verify(edited_copy, **run)["baseline"]["cached"] is True
    data.write_text(data.read_text().replace("blue", "azure"))
    assert verify(edited_copy, **run)["baseline"]["cached"] is False


def test_checkpoint_identity_sees_masks_and_every_weight_without_loading(tiny_vd, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    import resect.model.loading

    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("the identity loaded the model"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_vd, copy)
    plain = checkpoint_identity(copy)
    assert checkpoint_identity(copy) == plain
    edited = apply_masks(copy, [ExpertMask(16, 2, {1: [3 * 16 + 5]})], tmp_path / "edited").path
    assert checkpoint_identity(edited)["fingerprint"] == plain["fingerprint"]  # the same weights (hard links) ...
    assert checkpoint_identity(edited) != plain  # ... and a mask
    shard = next(s for s in copy.glob("model-*.safetensors") if "model.embed_tokens.weight" in load_file(s))
    tensors = load_file(shard)
    tensors["model.embed_tokens.weight"][100, 7] += 1.0  # a value the sampled fingerprint skips
    save_file(tensors, shard, metadata={"format": "pt"})
    changed = checkpoint_identity(copy)
    assert changed["fingerprint"] == plain["fingerprint"] and changed != plain


def test_drop_conventions():
    drop, se, unit = drop_of(0.40, 0.35, 0.01, 0.01, higher_better=True)
    assert unit == "points" and drop == pytest.approx(5.0) and se == pytest.approx(100 * math.sqrt(2) * 0.01)
    drop, se, unit = drop_of(20.0, 25.0, None, 1.0, higher_better=False)
    assert unit == "%" and drop == pytest.approx(25.0) and se is None
    assert drop_of(20.0, 15.0, 0.0, 0.0, higher_better=False)[0] == pytest.approx(-25.0)  # better = negative drop


def test_paired_stderr_counts_only_the_answers_that_changed():
    def run(acc, ids=(0, 1, 2, 3)):
        return {"per_doc": {"quiz": {"doc_id": list(ids), "acc": acc}}}

    base, edited = run([1.0, 1.0, 0.0, 1.0]), run([1.0, 0.0, 0.0, 1.0])
    # differences 0, 1, 0, 0: stdev 0.5 over sqrt(4) -> 25 points, against an unpaired ~40
    assert paired_drop_stderr(base, edited, "quiz", "acc", (0.75, 0.5)) == pytest.approx(25.0)
    assert paired_drop_stderr(base, run([1.0, 0.0, 0.0, 1.0], ids=(0, 1, 2, 5)), "quiz", "acc", (0.75, 0.5)) is None
    assert paired_drop_stderr(base, edited, "quiz", "acc", (0.7, 0.5)) is None  # the metric is not their mean
    assert paired_drop_stderr(base, {}, "quiz", "acc", (0.75, 0.5)) is None  # a cached run from before per-doc scores


def test_bad_thresholds_and_missing_baseline(tiny_vd, tasks_dir):
    with pytest.raises(UsageError, match=r"--min-target-drop must be a number in \[0,"):
        verify(tiny_vd, tiny_vd, **gate(tasks_dir, min_target_drop=-1.0))
    with pytest.raises(UsageError, match="--max-general-drop"):
        verify(tiny_vd, tiny_vd, **gate(tasks_dir, max_general_drop=None))
    with pytest.raises(UsageError, match="provenance"):
        verify(tiny_vd, **gate(tasks_dir))  # no --baseline and no 'resect' key


def test_other_geometry_or_tokenizer_is_refused(tiny_vd, tasks_dir, tmp_path):
    wider = build_tiny_checkpoint(tmp_path / "wider", seed=0, hidden_size=48)
    with pytest.raises(EvalError, match="hidden_size=48"):
        verify(tiny_vd, wider, **gate(tasks_dir))
    other_tok = build_tiny_checkpoint(tmp_path / "tok", seed=0, tokenizer=False)
    train_tokenizer(other_tok, vocab_size=320, texts=["Entirely different words for another vocabulary. " * 20])
    with pytest.raises(EvalError, match="another tokenizer"):
        verify(tiny_vd, other_tok, **gate(tasks_dir))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-target-drop", "-5"], "--min-target-drop must be a number in [0,"),
        (["--target-tasks", "resect_quizz"], "Did you mean: resect_quiz"),
        (["--toxicity-prompts", "/nonexistent/prompts.jsonl"], "do not exist"),
        (["--limit", "0"], "--limit must be a number in (0,"),
        (["--out", "EDITED"], "is an input of this command"),
    ],
)
def test_cli_bad_input_exits_2(edited_copy, tasks_dir, tmp_path, extra, message, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["verify", str(edited_copy), "--target-tasks", "resect_quiz", "--min-target-drop", "5",
            "--include-path", str(tasks_dir), "--out", str(out), *extra]  # fmt: skip
    before = sorted(p.name for p in edited_copy.iterdir())
    code, _, err = run_cli([str(edited_copy) if a == "EDITED" else a for a in args], capsys, monkeypatch)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in edited_copy.iterdir()) == before  # nothing written


def test_masked_edit_from_apply_is_measured_against_its_source(tiny_vd, tasks_dir, tmp_path):
    """A real edited checkpoint (mask in provenance, same weights and fingerprint as its source):
    the baseline comes from provenance, the mask changes the numbers, the verdict follows the rows."""
    from resect.edit.export import apply_masks
    from resect.model.mask import ExpertMask

    mask = ExpertMask(16, 2, {g: range(0, 256, 2) for g in range(2)})  # half of every group's experts
    edited = apply_masks(tiny_vd, [mask], tmp_path / "edited").path
    report = verify(edited, **gate(tasks_dir, target_tasks=["heldout_python_code"], general_tasks=["heldout_english"]))
    assert Path(report["baseline"]["path"]).resolve() == tiny_vd.resolve()
    assert report["baseline"]["fingerprint"] == report["edited"]["fingerprint"]  # masks are not weights
    rows = {r["task"]: r for r in report["rows"]}
    assert rows["heldout_python_code"]["drop"] != 0 and rows["heldout_english"]["drop"] != 0
    assert rows["heldout_python_code"]["passed"] == (rows["heldout_python_code"]["drop"] >= 0)
    assert rows["heldout_english"]["passed"] == (rows["heldout_english"]["drop"] <= 0)
    assert report["verdict"] == ("pass" if all(r["passed"] for r in rows.values()) else "fail")
