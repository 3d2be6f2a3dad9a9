"""resect.gate.evaluate / resect.gate.tasks / `resect eval`: real lm-eval runs on tiny local tasks."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from _cli import run_cli
from _eval_tasks import DATA, quiz_task

from resect.errors import CorpusError, EvalError
from resect.gate.evaluate import evaluate, fill_perplexity_stderrs, require_extras
from resect.gate.tasks import make_perplexity_tasks
from resect.model.loading import load_model, load_tokenizer
from resect.tasks import resolve_tasks


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """One include path with the quiz task and perplexity tasks for two labels."""
    folder = quiz_task(tmp_path_factory.mktemp("tasks"))
    make_perplexity_tasks(DATA / "held_out.jsonl", folder / "heldout", prefix="heldout")  # a new folder of its own, inside
    return folder


@pytest.fixture(scope="module")
def model_vd(tiny_vd):
    return load_model(tiny_vd), load_tokenizer(tiny_vd)


def test_choice_and_perplexity_tasks_run_through_lm_eval(model_vd, tasks_dir):
    model, tok = model_vd
    tasks = ["resect_quiz", "heldout_english", "heldout_python_code"]
    results = evaluate(model, tok, tasks, include_path=tasks_dir, batch_size=4)
    assert set(tasks) <= set(results["results"])
    acc = results["results"]["resect_quiz"]["acc,none"]
    assert 0 <= acc <= 1 and results["n-samples"]["resect_quiz"]["effective"] == 6
    for label in ("heldout_english", "heldout_python_code"):
        entry = results["results"][label]
        assert math.isfinite(entry["word_perplexity,none"]) and entry["word_perplexity,none"] > 1
        assert results["n-samples"][label]["effective"] == 3
        assert results["higher_is_better"][label]["word_perplexity"] is False
        assert entry["word_perplexity_stderr,none"] > 0 and entry["bits_per_byte_stderr,none"] > 0
    assert "samples" not in results
    json.dumps(results)  # the whole dict is JSON-serialisable


def test_limit_and_determinism(model_vd, tasks_dir):
    model, tok = model_vd
    first = evaluate(model, tok, ["resect_quiz", "heldout_english"], include_path=tasks_dir, limit=2)
    second = evaluate(model, tok, ["resect_quiz", "heldout_english"], include_path=tasks_dir, limit=2)
    assert first["n-samples"]["resect_quiz"]["effective"] == 2
    assert first["results"] == second["results"]


def test_evaluates_the_in_memory_model(tiny_vd, tasks_dir):
    """Changing weights in memory changes the score: lm-eval runs the object, not a reload of the folder."""
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    before = evaluate(model, tok, ["heldout_english"], include_path=tasks_dir)["results"]["heldout_english"]
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    after = evaluate(model, tok, ["heldout_english"], include_path=tasks_dir)["results"]["heldout_english"]
    assert after["word_perplexity,none"] != before["word_perplexity,none"]


def test_task_folder_and_yaml_file_need_no_include_path(model_vd, tasks_dir):
    names, includes = resolve_tasks([str(tasks_dir / "resect_quiz.yaml")])
    assert names == ["resect_quiz"] and includes == [str(tasks_dir.resolve())]
    names, _ = resolve_tasks([str(tasks_dir)])
    assert set(names) == {"resect_quiz", "heldout_english", "heldout_python_code"}


def test_a_world_task_in_the_include_path_wins_over_the_built_in_one(model_vd, tmp_path):
    """Another world's `world_biology` (what `resect world train` writes) is evaluated on its own
    questions, not on the built-in world's of the same task name."""
    from resect.builtin import builtin_data_path
    from resect.tasks import write_world_tasks

    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    shipped = builtin_data_path() / "eval"
    (data / "world.json").write_text((builtin_data_path() / "world.json").read_text())  # the same domains and languages
    for quiz in shipped.glob("quiz_*.jsonl"):
        (data / "eval" / quiz.name).write_text("".join(quiz.read_text().splitlines(keepends=True)[:3]))
    folder = write_world_tasks(data, tmp_path / "tasks")
    _, includes = resolve_tasks(["world_biology"], include_path=folder)
    assert includes == [str(folder.resolve())]  # every task is defined there: no built-in folder
    model, tok = model_vd
    own = evaluate(model, tok, ["world_biology", "world_law"], include_path=folder)
    assert own["n-samples"]["world_biology"]["effective"] == 3 and own["n-samples"]["world_law"]["effective"] == 3
    (folder / "world_law.yaml").unlink()  # world_law now comes from the built-in world, world_biology still from here
    _, includes = resolve_tasks(["world_biology", "world_law"], include_path=folder)
    assert includes[-1] == str(folder.resolve()) and len(includes) == 2
    mixed = evaluate(model, tok, ["world_biology", "world_law"], include_path=folder)
    assert mixed["n-samples"]["world_biology"]["effective"] == 3 and mixed["n-samples"]["world_law"]["effective"] == 60


def test_unknown_task_suggests_close_names(tasks_dir):
    with pytest.raises(EvalError, match="Did you mean: resect_quiz"):
        resolve_tasks(["resect_quizz"], include_path=tasks_dir)
    with pytest.raises(EvalError, match="arc_easy"):
        resolve_tasks(["arc_eazy"])  # lm-eval's own index


def test_perplexity_tasks_files(tmp_path):
    names = make_perplexity_tasks(DATA / "held_out.jsonl", tmp_path / "ppl", prefix="ppl", max_docs=2)
    assert names == ["ppl_english", "ppl_python_code"]
    import yaml

    cfg = yaml.safe_load((tmp_path / "ppl" / "ppl_python_code.yaml").read_text())
    data_file = cfg["dataset_kwargs"]["data_files"]["test"]
    assert cfg["output_type"] == "loglikelihood_rolling" and data_file.startswith("/")
    lines = [json.loads(x) for x in open(data_file)]
    assert len(lines) == 2 and lines[0]["text"].startswith("def add")


def test_perplexity_tasks_bad_input_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\nnot json\n')
    with pytest.raises(CorpusError, match="line 2"):
        make_perplexity_tasks(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CorpusError, match="does not exist"):
        make_perplexity_tasks(tmp_path / "missing.jsonl", tmp_path / "out")


def test_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now raises ImportError
    with pytest.raises(EvalError, match=r"pip install 'resect\[eval\]'"):
        require_extras()


def test_cli_eval_writes_results_json(tiny_vd, tasks_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "res" / "results.json"
    code, _, err = run_cli(
        ["eval", str(tiny_vd), "--tasks", "resect_quiz,heldout_english", "--include-path", str(tasks_dir), "--limit", "3", "--out", str(out)],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["n-samples"]["resect_quiz"]["effective"] == 3 and "heldout_english" in results["results"]
    assert "configs" in results and "lm_eval_version" in results


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "resect_quizz"], "Did you mean: resect_quiz"),
        (["--tasks", "resect_quiz", "--limit", "-1"], "--limit must be a number in (0,"),
        (["--tasks", "/nonexistent/task.yaml"], "does not exist"),
    ],
)
def test_cli_eval_bad_input(tiny_vd, tasks_dir, args, message, capsys, monkeypatch):
    code, _, err = run_cli(["eval", str(tiny_vd), "--include-path", str(tasks_dir), *args], capsys, monkeypatch)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_eval_missing_extra(tiny_vd, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    code, _, err = run_cli(["eval", str(tiny_vd), "--tasks", "resect_quiz"], capsys, monkeypatch)
    assert code == 2 and "pip install 'resect[eval]'" in err


def test_perplexity_stderr_is_the_ratio_estimator():
    """Equal weights reduce the delta method to the plain standard error of the mean log-likelihood."""
    ll, w = [-10.0, -14.0, -12.0, -20.0], 8.0
    entry = {"bits_per_byte,none": 0.0, "bits_per_byte_stderr,none": "N/A", "word_perplexity,none": 0.0}
    fill_perplexity_stderrs(entry, [{"bits_per_byte": [x, w], "word_perplexity": [x, w]} for x in ll])
    mean = sum(ll) / 4
    sem = math.sqrt(sum((x - mean) ** 2 for x in ll) / 3 / 4)
    assert entry["bits_per_byte_stderr,none"] == pytest.approx(sem / w / math.log(2))
    assert entry["word_perplexity_stderr,none"] == pytest.approx(math.exp(-mean / w) * sem / w)
    assert "byte_perplexity_stderr,none" not in entry  # a metric the task did not report stays absent


def test_cli_ppl_tasks_then_eval_the_folder(tiny_vd, tmp_path, capsys, monkeypatch):
    """`resect ppl-tasks` prints the task names; the folder itself is a valid --tasks value."""
    folder = tmp_path / "ppl"
    code, out, err = run_cli(["ppl-tasks", str(DATA / "held_out.jsonl"), str(folder), "--prefix", "lang"], capsys, monkeypatch)
    assert code == 0, err
    assert out.strip() == "lang_english,lang_python_code"
    results_file = tmp_path / "r.json"
    code, _, err = run_cli(["eval", str(tiny_vd), "--tasks", str(folder), "--out", str(results_file)], capsys, monkeypatch)
    assert code == 0, err
    assert set(json.loads(results_file.read_text())["results"]) == {"lang_english", "lang_python_code"}
    code, _, err = run_cli(["ppl-tasks", str(DATA / "held_out.jsonl"), str(folder), "--prefix", "9bad"], capsys, monkeypatch)
    assert code == 2 and "identifier" in err


@pytest.mark.parametrize("content", [None, '{"question": "broken", "choices": ['])
def test_unreadable_task_data_is_one_line(model_vd, tmp_path, content):
    """A local task whose JSONL is missing or malformed ends in an EvalError, not a datasets traceback."""
    data = tmp_path / "quiz.jsonl"
    if content is not None:
        data.write_text(content + "\n")
    folder = quiz_task(tmp_path / "tasks", data=data)
    model, tok = model_vd
    with pytest.raises(EvalError, match="could not be loaded"):
        evaluate(model, tok, ["resect_quiz"], include_path=folder)
