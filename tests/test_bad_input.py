"""Bad input across commands: one `error:` line, exit 2, inputs untouched, nothing written.

Outputs that name an input (or lie inside, or contain one) are refused before any work, with or
without --force; option values of the wrong type or out of range likewise; anything unexpected
is still one line and exit 2, never a traceback nor exit 1 (a breached gate)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from _cli import run_cli
from resect.mask import ExpertMask
from resect.tasks import make_perplexity_tasks

ROWS = [{"text": f"The {w} of sample {k} is here.", "label": label} for k in range(6) for label, w in (("bio", "cell"), ("law", "court"))]


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture
def inputs(tiny_vd, tmp_path):
    corpus = tmp_path / "data" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    mask = tmp_path / "mask.json"
    ExpertMask.empty_like(json.loads((tiny_vd / "config.json").read_text())).save(mask)
    make_perplexity_tasks(corpus, tmp_path / "tasks")
    return {"model": tiny_vd, "corpus": corpus, "mask": mask, "tmp": tmp_path}


def one_line(code: int, out: str, err: str, phrase: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], (code, err)
    assert "Traceback" not in err + out


CASES = {
    "profile over its corpus": (["profile", "{model}", "--corpus", "{corpus}", "--out", "{corpus}", "--force"], "is an input"),
    "profile into the corpus folder": (["profile", "{model}", "--corpus", "{tmp}/data", "--out", "{tmp}/data/s.st"], "inside the input folder"),
    "apply inside the source": (["apply", "{model}", "--mask", "{mask}", "--out", "{model}/edited"], "inside the input folder"),
    "apply over its mask": (["apply", "{model}", "--mask", "{mask}", "--out", "{mask}", "--force"], "is an input"),
    "union over an input": (["mask", "union", "{mask}", "{mask}", "--out", "{mask}", "--force"], "is an input"),
    "domain replacing the corpus folder": (["domain", "--model", "{model}", "--remove", "bio", "--corpus", "{corpus}",
                                           "--target-tasks", "ppl_bio", "--include-path", "{tmp}/tasks", "--out", "{tmp}/data",
                                           "--force"], "contains the input"),
    "ppl-tasks over its corpus folder": (["ppl-tasks", "{corpus}", "{tmp}/data"], "contains the input"),
    "unknown dtype": (["profile", "{model}", "--corpus", "{corpus}", "--out", "{tmp}/s.st", "--dtype", "foo"], "'foo' is not one of 'auto', 'float32'"),
    "unknown device": (["profile", "{model}", "--corpus", "{corpus}", "--out", "{tmp}/s.st", "--device", "foo"], "not a torch device"),
    "infinite limit": (["eval", "{model}", "--tasks", "x", "--limit", "inf"], "positive and finite"),
    "number as text": (["run", "world-domain", "ratio=abc", "dry_run=true"], "'ratio' must be a finite number"),
    "flag as text": (["run", "world-domain", "dry_run=maybe"], "'dry_run' must be true or false"),
    "override not YAML": (["run", "world-domain", "target=[", "dry_run=true"], "not valid YAML"),
    "sampling out of range": (["run", "world-toxicity", "toxicity.top_p=5", "dry_run=true"], "top-p must lie in (0, 1]"),
    "missing option": (["apply", "{model}"], "Missing option '--mask'. See 'resect apply --help'."),
    "option value of the wrong type": (["select", "--stats", "{mask}", "--rule", "skew", "--out", "{tmp}/m.json", "--ratio", "abc"],
                                       "Invalid value for '--ratio'"),
    "unknown command": (["nosuchcommand"], "No such command 'nosuchcommand'"),
    "training threads": (["world", "train", "--out", "{tmp}/w", "train.threads=0"], "train.threads must be at least 1"),
    "training model shape": (["world", "train", "--out", "{tmp}/w", "model.hidden_size=-4"], "hidden_size must be a positive"),
    "ppl-tasks with no documents": (["ppl-tasks", "{corpus}", "{tmp}/t2", "--max-docs", "0"], "--max-docs must be at least 1"),
    "negative min tokens": (["select", "--stats", "{mask}", "--rule", "skew", "--out", "{tmp}/m.json", "--min-tokens", "-5"],
                            "must not be negative"),
    "run folder that is a file": (["domain", "--model", "{model}", "--remove", "bio", "--corpus", "{corpus}", "--target-tasks",
                                   "ppl_bio", "--include-path", "{tmp}/tasks", "--out", "{mask}", "--force"], "exists and is a file"),
    "a folder given as statistics": (["select", "--stats", "{tmp}/data", "--rule", "skew", "--out", "{tmp}/m.json"], "is a folder"),
    "unknown scorer before generating": (["run", "world-toxicity", "toxicity.scorer=foo", "dry_run=true"], "Unknown scorer 'foo'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_one_line_with_inputs_untouched(case, inputs, capsys, monkeypatch):
    args, phrase = CASES[case]
    before = {k: digest(v) for k, v in inputs.items() if k != "tmp"}
    listing = sorted(p.relative_to(inputs["tmp"]) for p in inputs["tmp"].rglob("*"))
    monkeypatch.chdir(inputs["tmp"])
    one_line(*run_cli([a.format(**inputs) for a in args], capsys, monkeypatch), phrase)
    assert {k: digest(v) for k, v in inputs.items() if k != "tmp"} == before
    assert sorted(p.relative_to(inputs["tmp"]) for p in inputs["tmp"].rglob("*")) == listing  # nothing written


@pytest.mark.parametrize("content, phrase", [([1, 2], "holds list, not a JSON object"), (None, "holds NoneType")])
def test_config_that_is_not_an_object(content, phrase, tiny_vd, tmp_path, capsys, monkeypatch):
    import shutil

    ckpt = Path(shutil.copytree(tiny_vd, tmp_path / "ckpt"))
    (ckpt / "config.json").write_text(json.dumps(content))
    one_line(*run_cli(["info", str(ckpt)], capsys, monkeypatch), phrase)


def test_index_without_a_weight_map_of_files(tiny_vd, tmp_path, capsys, monkeypatch):
    import shutil

    ckpt = Path(shutil.copytree(tiny_vd, tmp_path / "ckpt"))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": 5}}))
    one_line(*run_cli(["info", str(ckpt)], capsys, monkeypatch), "no weight_map")


def test_an_unexpected_error_is_one_line_and_exit_2_and_verbose_shows_it(tiny_vd, capsys, monkeypatch):
    import resect.loading

    def broken(info):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(resect.loading, "describe", broken)
    one_line(*run_cli(["info", str(tiny_vd)], capsys, monkeypatch), "unexpected ZeroDivisionError (planted)")
    with pytest.raises(ZeroDivisionError):
        run_cli(["-v", "info", str(tiny_vd)], capsys, monkeypatch)


def test_an_unwritable_place_is_one_line(tiny_vd, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli(["apply", str(tiny_vd), "--mask", str(tmp_path / "none.json"), "--out", str(blocker / "sub")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("data, phrase", [
    ({"moe_experts": 4, "num_groups": 1, "experts": {"0": [[1], [2, 3]]}}, "flat list of integers"),
    ({"moe_experts": 4, "num_groups": 10**9, "experts": {}}, "num_groups in 1..4096"),
    ({"moe_experts": True, "num_groups": 1, "experts": {}}, "found True"),
    ({"moe_experts": 4, "num_groups": 1, "experts": {"0": [float("inf")]}}, "must be integers"),
])  # fmt: skip
def test_damaged_masks_are_refused(data, phrase):
    from resect.errors import MaskError

    with pytest.raises(MaskError, match=phrase):
        ExpertMask.from_json_dict(data)


@pytest.mark.parametrize("labels, counts, shape, phrase", [
    ("not json", '{"a": 1}', (1, 1, 4, 4), "metadata: JSONDecodeError"),
    ('["a"]', '{"a": "many"}', (1, 1, 4, 4), "metadata: ValueError"),
    ('["a", "b"]', '{"a": 1, "b": 1}', (1, 3, 4, 4), "expected \\[G, L, E, E\\]"),
    ('["a", "b", "c"]', '{"a": 1}', (3,), "expected \\[G, L, E, E\\]"),
])  # fmt: skip
def test_damaged_statistics_are_refused(labels, counts, shape, phrase, tmp_path):
    import torch
    from safetensors.torch import save_file

    from resect.errors import StatsError
    from resect.stats import FORMAT, RoutingStats

    path = tmp_path / "stats.safetensors"
    save_file({"sums": torch.zeros(shape, dtype=torch.float64)}, str(path), metadata={"format": FORMAT, "labels": labels, "token_counts": counts})
    with pytest.raises(StatsError, match=phrase):
        RoutingStats.load(path)


def test_colliding_task_names_write_nothing(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": "some text", "label": label}) for label in ("A b", "a_b")) + "\n")
    one_line(*run_cli(["ppl-tasks", str(corpus), str(tmp_path / "tasks")], capsys, monkeypatch), "collide")
    assert not (tmp_path / "tasks").exists()


def test_a_long_list_of_choices_stays_one_readable_line():
    from resect.errors import unknown

    text = unknown("lm-eval task", "tsk_7", [f"task_{i}" for i in range(5000)])
    assert "and 4,970 more." in text and len(text) < 600 and "\n" not in text


@pytest.mark.parametrize("record, phrase", [("x", "'resect' record is str"), ({"mask": "x"}, "does not name the mask file"),
                                            ({"source": 5}, "'resect.source' is not text")])  # fmt: skip
def test_a_damaged_provenance_record_is_refused(record, phrase, tiny_vd, tmp_path, capsys, monkeypatch):
    import shutil

    ckpt = Path(shutil.copytree(tiny_vd, tmp_path / "ckpt"))
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"resect": record}))
    one_line(*run_cli(["info", str(ckpt)], capsys, monkeypatch), phrase)
    one_line(*run_cli(["verify", str(ckpt), "--target-tasks", "x", "--min-target-drop", "1"], capsys, monkeypatch), phrase)


def test_masks_of_two_models_are_not_united(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    ExpertMask(16, 2, {0: [1]}, {"stats_model_fingerprint": "aaaa"}).save(a)
    ExpertMask(16, 2, {1: [2]}, {"stats_model_fingerprint": "bbbb"}).save(b)
    one_line(*run_cli(["mask", "union", str(a), str(b), "--out", str(tmp_path / "u.json")], capsys, monkeypatch), "2 different models")
    assert not (tmp_path / "u.json").exists()
    ExpertMask(16, 2, {1: [2]}, {"stats_model_fingerprint": "aaaa"}).save(b)
    code, _, _ = run_cli(["mask", "union", str(a), str(b), "--out", str(tmp_path / "u.json")], capsys, monkeypatch)
    assert code == 0 and ExpertMask.load(tmp_path / "u.json").meta["stats_model_fingerprint"] == "aaaa"
