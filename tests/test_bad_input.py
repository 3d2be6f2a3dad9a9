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

from resect.gate.tasks import make_perplexity_tasks
from resect.model.mask import ExpertMask

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
    "domain replacing the corpus folder": (["domain", "{model}", "--remove", "bio", "--corpus", "{corpus}",
                                           "--target-tasks", "ppl_bio", "--include-path", "{tmp}/tasks", "--out", "{tmp}/data",
                                           "--force"], "contains the input"),
    "ppl-tasks over its corpus folder": (["ppl-tasks", "{corpus}", "{tmp}/data"], "contains the input"),
    "unknown dtype": (["profile", "{model}", "--corpus", "{corpus}", "--out", "{tmp}/s.st", "--dtype", "foo"], "'foo' is not one of 'auto', 'float32'"),
    "unknown device": (["profile", "{model}", "--corpus", "{corpus}", "--out", "{tmp}/s.st", "--device", "foo"], "not a torch device"),
    "infinite limit": (["eval", "{model}", "--tasks", "x", "--limit", "inf"], "--limit must be a number in (0,"),
    "number as text": (["run", "world-domain", "ratio=abc", "dry_run=true"], "'ratio' must be a finite number"),
    "flag as text": (["run", "world-domain", "dry_run=maybe"], "'dry_run' must be true or false"),
    "override not YAML": (["run", "world-domain", "target=[", "dry_run=true"], "not valid YAML"),
    "sampling out of range": (["run", "world-toxicity", "toxicity.top_p=5", "dry_run=true"], "toxicity.top_p must be a number in (0, 1]"),
    "missing option": (["apply", "{model}"], "Missing option '--mask'. See 'resect apply --help'."),
    "option value of the wrong type": (["select", "--stats", "{mask}", "--rule", "skew", "--out", "{tmp}/m.json", "--ratio", "abc"],
                                       "Invalid value for '--ratio'"),
    "unknown command": (["nosuchcommand"], "No such command 'nosuchcommand'"),
    "training threads": (["world", "train", "--out", "{tmp}/w", "train.threads=0"], "train.threads must be at least 1"),
    "training model shape": (["world", "train", "--out", "{tmp}/w", "model.hidden_size=-4"], "hidden_size must be a positive"),
    "ppl-tasks with no documents": (["ppl-tasks", "{corpus}", "{tmp}/t2", "--max-docs", "0"], "--max-docs must be at least 1"),
    "negative min tokens": (["select", "--stats", "{mask}", "--rule", "skew", "--out", "{tmp}/m.json", "--min-tokens", "-5"],
                            "--min-tokens must be a whole number in [0,"),
    "run folder that is a file": (["domain", "{model}", "--remove", "bio", "--corpus", "{corpus}", "--target-tasks",
                                   "ppl_bio", "--include-path", "{tmp}/tasks", "--out", "{mask}", "--force"], "exists and is a file"),
    "a folder given as statistics": (["select", "--stats", "{tmp}/data", "--rule", "skew", "--out", "{tmp}/m.json"], "is a folder"),
    "unknown scorer before generating": (["run", "world-toxicity", "toxicity.scorer=foo", "dry_run=true"], "Unknown scorer 'foo'"),
    "a task inside a group also gated": (["domain", "--remove", "biology", "--general-tasks", "mmlu,mmlu_virology", "--out", "{tmp}/r"],
                                         "Task 'mmlu_virology' is also inside 'mmlu'"),
    "groups sharing a task": (["verify", "{model}", "--baseline", "{model}", "--target-tasks", "mmlu_stem", "--min-target-drop", "1", "--general-tasks", "mmlu", "--max-general-drop", "1",
                               "--out", "{tmp}/v"], "Task 'mmlu_stem' is also inside 'mmlu'"),
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
    import resect.model.checkpoint

    def broken(info):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(resect.model.checkpoint, "describe", broken)
    one_line(*run_cli(["info", str(tiny_vd)], capsys, monkeypatch), "unexpected ZeroDivisionError (planted)")
    for args in (["-v", "info", str(tiny_vd)], ["info", str(tiny_vd), "--verbose"]):  # -v anywhere; exit 1 is a breached gate only
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "Traceback" in err and "ZeroDivisionError: planted" in err


def test_an_unwritable_place_is_one_line(tiny_vd, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli(["apply", str(tiny_vd), "--mask", str(tmp_path / "none.json"), "--out", str(blocker / "sub")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("data, phrase", [
    ({"moe_experts": 4, "num_groups": 1, "experts": {"0": [[1], [2, 3]]}}, "flat list of integers"),
    ({"moe_experts": 4, "num_groups": 10**9, "experts": {}}, "num_groups in 1..1024"),
    ({"moe_experts": True, "num_groups": 1, "experts": {}}, "found True"),
    ({"moe_experts": 4, "num_groups": 1, "experts": {"0": [float("inf")]}}, "must be integers"),
])  # fmt: skip
def test_damaged_masks_are_refused(data, phrase):
    from resect.errors import MaskError

    with pytest.raises(MaskError, match=phrase):
        ExpertMask.from_json_dict(data)


@pytest.mark.parametrize("labels, counts, shape, phrase, fill", [
    ("not json", '{"a": 1}', (1, 1, 4, 4), "its metadata 'labels' is not valid JSON", 0.0),
    ('["a"]', '{"a": "many"}', (1, 1, 4, 4), "not whole numbers of tokens", 0.0),
    ('["a", "b"]', '{"a": 1, "b": 1}', (1, 3, 4, 4), "expected \\[G, L, E, E\\]", 0.0),
    ('["a", "b", "c"]', '{"a": 1}', (3,), "do not name exactly its labels", 0.0),
    ('["a", "b"]', '{"a": 1, "b": 1}', (1, 2, 4, 4), "not finite numbers", float("nan")),
    ('["a", "a"]', '{"a": 1}', (1, 2, 4, 4), "the label 'a' appears twice", 0.0),
    ('["a"]', None, (1, 1, 4, 4), "'token_counts' missing", 0.0),
    ('["a"]', '{"a": 1}', (1, 1, 4, 4), "not floating point", "int"),
])  # fmt: skip
def test_damaged_statistics_are_refused(labels, counts, shape, phrase, fill, tmp_path):
    import torch
    from safetensors.torch import save_file

    from resect.edit.stats import FORMAT, RoutingStats
    from resect.errors import StatsError

    path = tmp_path / "stats.safetensors"
    sums = torch.zeros(shape, dtype=torch.int64) if fill == "int" else torch.full(shape, fill, dtype=torch.float64)
    meta = {"format": FORMAT, "labels": labels} | ({} if counts is None else {"token_counts": counts})
    save_file({"sums": sums}, str(path), metadata=meta)
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


# ---- the hostile-input sweep: one case per class of defect -----------------------------------
# Each case prepares its inputs in a folder and names the command line; the check is the same for
# all: exit 2, one `error:` line with the phrase, no traceback, every file in the folder byte for
# byte as it was (nothing changed, nothing added, nothing removed), and, where the refusal needs
# no model, no model loaded before it.


def _copy(tiny: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny, dst))


def _header(shard: Path, change) -> None:
    """Rewrite a safetensors header in place (the same data after it)."""
    import struct

    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    change(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _shard_with(ckpt: Path, name: str) -> Path:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    return ckpt / index[name]


def _config(ckpt: Path, **changes) -> Path:
    config = json.loads((ckpt / "config.json").read_text()) | changes
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def _stats(path: Path, **meta) -> Path:
    import torch
    from safetensors.torch import save_file

    from resect.edit.stats import FORMAT

    base = {"format": FORMAT, "labels": '["a", "b"]', "token_counts": '{"a": 500, "b": 500}', "model_fingerprint": "x"}
    save_file({"sums": torch.rand(2, 2, 16, 16, dtype=torch.float64)}, str(path), metadata={**base, **meta})
    return path


def _prepare(case: str, t: Path, tiny: Path) -> tuple[list[str], str, bool]:
    """(command line, phrase, refused before any model loads) of one hostile case, inputs made in t."""
    u = "model.layers.0.moe.u1.weight"
    if case == "force over a folder of someone else's (apply)":
        (t / "thesis").mkdir()
        (t / "thesis" / "chapter.tex").write_text("mine")
        ExpertMask(16, 2, {0: [1]}).save(t / "m.json")
        return ["apply", str(tiny), "--mask", str(t / "m.json"), "--out", str(t / "thesis"), "--force"], "not written by resect", True
    if case == "force over a folder of someone else's (domain)":
        (t / "notes").mkdir()
        (t / "notes" / "todo.txt").write_text("mine")
        return ["domain", "--remove", "biology", "--out", str(t / "notes"), "--force"], "not written by resect", True
    if case == "expert weight stored as int32":
        ckpt = _copy(tiny, t / "ckpt")
        _header(_shard_with(ckpt, u), lambda h: h[u].update(dtype="I32"))
        return ["info", str(ckpt)], f"stores '{u}' as I32", True
    if case == "moe_experts that the weights do not have":
        return ["info", str(_config(_copy(tiny, t / "ckpt"), moe_experts=32))], "where its config.json needs", True
    if case == "a shape that does not fit its bytes":
        ckpt = _copy(tiny, t / "ckpt")
        _header(_shard_with(ckpt, u), lambda h: h[u].update(shape=[h[u]["shape"][0] * 2, h[u]["shape"][1]]))
        return ["info", str(ckpt)], "does not fit its byte range", True
    if case == "a billion layers":
        return ["info", str(_config(_copy(tiny, t / "ckpt"), num_hidden_layers=10**9))], "beyond any Monet model", True
    if case == "a header without offsets":
        ckpt = _copy(tiny, t / "ckpt")
        _header(_shard_with(ckpt, u), lambda h: h[u].pop("data_offsets"))
        return ["info", str(ckpt)], "has no data offsets", True
    if case == "an unfinished output":
        ckpt = _copy(tiny, t / "ckpt")
        (ckpt / ".resect-incomplete").write_text("")
        return ["info", str(ckpt)], "unfinished resect output", True
    if case == "a corpus score of 1e309":
        (t / "c.jsonl").write_text('{"text": "hello there", "label": "a", "score": 1e309}\n')
        return ["profile", str(tiny), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")], "score inf is not a finite number", True
    if case == "an infinite ratio":
        return ["select", "--stats", str(_stats(t / "s.st")), "--rule", "skew", "--target", "a", "--ratio", "inf", "--out",
                str(t / "m.json")], "--ratio must be a number in (1,", True  # fmt: skip
    if case == "statistics with NaN sums":
        import torch
        from safetensors.torch import save_file

        from resect.edit.stats import FORMAT

        save_file({"sums": torch.full((2, 2, 16, 16), float("nan"), dtype=torch.float64)}, str(t / "s.st"),
                  metadata={"format": FORMAT, "labels": '["a", "b"]', "token_counts": '{"a": 500, "b": 500}'})  # fmt: skip
        return ["select", "--stats", str(t / "s.st"), "--rule", "skew", "--target", "a", "--out", str(t / "m.json")], "not finite", True
    if case == "statistics without token counts":
        path = _stats(t / "s.st")
        from safetensors.torch import load_file, save_file

        from resect.edit.stats import FORMAT

        save_file(load_file(str(path)), str(path), metadata={"format": FORMAT, "labels": '["a", "b"]'})
        return ["select", "--stats", str(path), "--rule", "skew", "--target", "a", "--out", str(t / "m.json")], "'token_counts' missing", True
    if case == "a gate that cannot fail":
        return ["verify", str(tiny), "--baseline", str(tiny), "--target-tasks", "x", "--min-target-drop", "1", "--max-general-drop", "inf",
                "--general-tasks", "y"], "--max-general-drop must be a number in [0,", True  # fmt: skip
    if case == "an unknown rule (before profiling)":
        return ["domain", "--remove", "biology", "--rule", "skwe", "--out", str(t / "run")], "Did you mean: skew", True
    if case == "a negative seed (before profiling)":
        return ["domain", "--remove", "biology", "--seed", "-1", "--out", str(t / "run")], "--seed must be a whole number in [0,", True
    if case == "a seed too large":
        return ["domain", "--remove", "biology", "--seed", str(2**40), "--out", str(t / "run")], "--seed must be a whole number", True
    if case == "an unknown metric (before evaluating)":
        return ["domain", "--remove", "biology", "--target-tasks", "world_biology:accuracy", "--out", str(t / "run")], \
            "has no metric 'accuracy' (it computes acc, acc_norm)", True  # fmt: skip
    if case == "a rule that does not fit the edit":
        return ["language", "--remove", "python", "--rule", "correlation", "--out", str(t / "run")], "does not fit 'resect language'", True
    if case == "an output under a file":
        (t / "file.txt").write_text("x")
        return ["domain", "--remove", "biology", "--out", str(t / "file.txt" / "run")], "is a file, not a folder", True
    if case == "a YAML alias bomb (recipe)":
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                       for p, c in zip("abcdefgh", "bcdefghi")]  # fmt: skip
        (t / "bomb.yaml").write_text("# resect run bomb\nkind: domain\n" + "\n".join(lines) + "\n")
        return ["run", str(t / "bomb.yaml")], "uses a YAML alias", True
    if case == "a YAML alias bomb (corpus)":
        (t / "c.yaml").write_text("name: x\nlabels: &l [a, b, c]\nmore: [*l, *l, *l]\nsources: [{path: c.jsonl}]\n")
        return ["profile", str(tiny), "--corpus", str(t / "c.yaml"), "--out", str(t / "s.st")], "uses a YAML alias", True
    if case == "a binary mask claiming a 65,536-wide geometry":
        import struct
        import zlib

        from resect.model.mask import BINARY_MAGIC

        header = json.dumps({"format": "resect.mask/v1", "moe_experts": 65536, "num_groups": 1, "groups": [0]}).encode()
        blob = zlib.compress(b"\0" * (1 << 19))
        (t / "m.bin").write_bytes(BINARY_MAGIC + struct.pack("<I", len(header)) + header + struct.pack("<Q", len(blob)) + blob)
        return ["mask", "info", str(t / "m.bin")], "beyond any Monet model", True
    if case == "a hundred million samples":
        return ["toxicity", "--samples", "100000000", "--out", str(t / "run")], "samples must be a whole number in [1, 10,000]", True
    if case == "a NaN temperature":
        (t / "p.jsonl").write_text('{"prompt": "hello"}\n')
        return ["toxicity-eval", str(tiny), "--toxicity-prompts", str(t / "p.jsonl"), "--temperature", "nan"], "--temperature must be a number", True
    if case == "a mask fingerprint of the wrong type":
        (t / "m.json").write_text(json.dumps({"format": "resect.mask/v1", "moe_experts": 16, "num_groups": 2, "experts": {"0": [1]},
                                              "stats_model_fingerprint": 12345}))  # fmt: skip
        return ["apply", str(tiny), "--mask", str(t / "m.json"), "--out", str(t / "e")], "'stats_model_fingerprint' is int, not text", True
    if case == "a symbolic link loop as --out":
        (t / "loop").symlink_to(t / "loop")
        return ["select", "--stats", str(_stats(t / "s.st")), "--rule", "skew", "--target", "a", "--out", str(t / "loop" / "m.json")], \
            "cannot be resolved", True  # fmt: skip
    if case == "a tokenizer larger than the model's vocabulary":
        from resect.model.tiny import train_tokenizer

        ckpt = _copy(tiny, t / "ckpt")
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (ckpt / f).unlink(missing_ok=True)
        train_tokenizer(ckpt, vocab_size=600, texts=[" ".join(f"w{k}x{j}" for k in range(300)) for j in range(4)])
        (t / "c.jsonl").write_text('{"text": "hello there", "label": "a"}\n')
        return ["profile", str(ckpt), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")], "ids beyond the model's vocabulary", True
    if case == "a 200 MB mask":
        with open(t / "m.json", "wb") as fh:
            fh.truncate(200 << 20)  # sparse: the size is what is checked, before anything is read
        return ["mask", "info", str(t / "m.json")], "is 200 MiB; a mask of any Monet model is at most 64 MiB", True
    if case == "a deeply nested mask":
        (t / "m.json").write_text("[" * 100_000 + "]" * 100_000)
        return ["mask", "info", str(t / "m.json")], "nests deeper than 64 levels", True
    if case == "a mask with a key given twice":
        (t / "m.json").write_text('{"format": "resect.mask/v1", "moe_experts": 16, "num_groups": 2, "experts": {"0": [1]}, "experts": {"1": [2]}}')
        return ["mask", "info", str(t / "m.json")], "the key 'experts' appears twice", True
    if case == "a config key given twice":
        ckpt = _copy(tiny, t / "ckpt")
        (ckpt / "config.json").write_text((ckpt / "config.json").read_text().replace('{', '{"moe_experts": 8, ', 1))
        return ["info", str(ckpt)], "the key 'moe_experts' appears twice", True
    if case in ("max_position_embeddings of -5", "max_position_embeddings of 1"):
        return ["info", str(_config(_copy(tiny, t / "ckpt"), max_position_embeddings=int(case.split()[-1])))], \
            "max_position_embeddings must be a whole number of at least 2", True  # fmt: skip
    if case == "a corpus text file that is not UTF-8":
        (t / "corpus" / "bio").mkdir(parents=True)
        (t / "corpus" / "bio" / "a.txt").write_bytes(b"caf\xe9 au lait")
        return ["profile", str(tiny), "--corpus", str(t / "corpus"), "--out", str(t / "s.st")], "is not UTF-8 text (invalid continuation byte at byte 3)", True
    if case == "a corpus label that is a number with a fraction":
        (t / "c.jsonl").write_text('{"text": "hello there", "label": 1.5}\n')
        return ["profile", str(tiny), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")], "the label 1.5 is not text", True
    if case == "routing groups with a fraction (recipe)":
        return ["run", "world-domain", "groups=1.5", "dry_run=true"], "'groups' must be a list of routing group numbers", True
    if case == "a recipe key given twice":
        (t / "r.yaml").write_text("# resect run r.yaml\nkind: domain\ntarget: law\ntarget: biology\n")
        return ["run", str(t / "r.yaml")], "gives the key 'target' twice (line 4)", True
    if case == "a deeply nested recipe":
        (t / "r.yaml").write_text("# resect run r.yaml\nkind: domain\ntoxicity: " + "[" * 5000 + "]" * 5000 + "\n")
        return ["run", str(t / "r.yaml")], "nests deeper than 64 levels", True
    if case == "a symbolic link loop as --out of apply":
        (t / "loop").symlink_to(t / "loop")
        ExpertMask(16, 2, {0: [1]}).save(t / "m.json")
        return ["apply", str(tiny), "--mask", str(t / "m.json"), "--out", str(t / "loop")], "cannot be resolved", True
    if case in ("a huge seed (eval)", "a huge seed (toxicity-eval)", "a huge seed (profile)"):
        (t / "p.jsonl").write_text('{"prompt": "hello"}\n')
        (t / "c.jsonl").write_text('{"text": "hello there", "label": "a"}\n')
        args = {"eval": ["eval", str(tiny), "--tasks", "world_biology"], "toxicity-eval": ["toxicity-eval", str(tiny), "--toxicity-prompts", str(t / "p.jsonl")],
                "profile": ["profile", str(tiny), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")]}[case.split("(")[1][:-1]]  # fmt: skip
        return [*args, "--seed", str(2**40)], "--seed must be a whole number in [0,", True
    if case == "a mirror into /":
        return ["mirror", "world-domain", "--out", "/"], "contains the input", True
    if case == "a mirror into a checkpoint folder":
        return ["mirror", "world-domain", "--out", str(_copy(tiny, t / "ckpt"))], "resect adds only to a mirror it made", True
    if case == "an unpaired surrogate in corpus text":
        (t / "c.jsonl").write_text('{"text": "fox \\udcff jumps", "label": "a"}\n')
        return ["profile", str(tiny), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")], "holds an unpaired surrogate (\\udcff)", True
    if case == "an unpaired surrogate in a toxicity prompt":
        (t / "p.jsonl").write_text('{"prompt": "hi \\udcff"}\n')
        return ["toxicity-eval", str(tiny), "--toxicity-prompts", str(t / "p.jsonl")], "holds an unpaired surrogate", True
    if case == "a corpus folder name that is not UTF-8":
        (t / "corp" / "lab\udcff").mkdir(parents=True)  # the bytes b"lab\xff" on disk
        (t / "corp" / "lab\udcff" / "1.txt").write_text("some text")
        return ["profile", str(tiny), "--corpus", str(t / "corp"), "--out", str(t / "s.st")], "has a name that is not UTF-8", True
    if case in ("a rope scaling of factor -1", "an unknown rope type"):
        scaling = {"type": "linear", "factor": -1} if "factor" in case else {"rope_type": "no-such"}
        (t / "c.jsonl").write_text('{"text": "hello there", "label": "a"}\n')
        ckpt = _config(_copy(tiny, t / "ckpt"), rope_scaling=scaling)
        return ["profile", str(ckpt), "--corpus", str(t / "c.jsonl"), "--out", str(t / "s.st")], \
            "rope_scaling.factor must be a positive number" if "factor" in case else "rope_scaling type 'no-such' is not one of", True  # fmt: skip
    if case == "a negative seed (world generate)":
        return ["world", "generate", "--out", str(t / "w"), "--seed", "-1"], "--seed must be a whole number in [0,", True
    if case == "a fractional label (ppl-tasks)":
        (t / "c.jsonl").write_text('{"text": "fox jumps", "label": 1.5}\n')
        return ["ppl-tasks", str(t / "c.jsonl"), str(t / "pt")], "the label 1.5 is not text", True
    if case == "a mask that is a device":
        (t / "m.json").symlink_to("/dev/zero")
        return ["mask", "info", str(t / "m.json")], "is not a regular file", True
    if case == "a quantile of 1":
        return ["select", "--stats", str(_stats(t / "s.st")), "--rule", "quantile", "--target", "a", "--quantile", "1", "--out",
                str(t / "m.json")], "--quantile must be a number in [0, 1), got 1.0", True  # fmt: skip
    raise KeyError(case)


HOSTILE = [
    "force over a folder of someone else's (apply)", "force over a folder of someone else's (domain)", "expert weight stored as int32",
    "moe_experts that the weights do not have", "a shape that does not fit its bytes", "a billion layers", "a header without offsets",
    "an unfinished output", "a corpus score of 1e309", "an infinite ratio", "statistics with NaN sums", "statistics without token counts",
    "a gate that cannot fail", "an unknown rule (before profiling)", "a negative seed (before profiling)", "a seed too large",
    "an unknown metric (before evaluating)", "a rule that does not fit the edit", "an output under a file", "a YAML alias bomb (recipe)",
    "a YAML alias bomb (corpus)", "a binary mask claiming a 65,536-wide geometry", "a hundred million samples", "a NaN temperature",
    "a mask fingerprint of the wrong type", "a symbolic link loop as --out", "a tokenizer larger than the model's vocabulary",
    "a 200 MB mask", "a deeply nested mask", "a mask with a key given twice", "a config key given twice", "max_position_embeddings of -5",
    "max_position_embeddings of 1", "a corpus text file that is not UTF-8", "a corpus label that is a number with a fraction",
    "routing groups with a fraction (recipe)", "a recipe key given twice", "a deeply nested recipe", "a symbolic link loop as --out of apply",
    "a huge seed (eval)", "a huge seed (toxicity-eval)", "a huge seed (profile)", "a mirror into /", "a mirror into a checkpoint folder",
    "an unpaired surrogate in corpus text", "an unpaired surrogate in a toxicity prompt", "a corpus folder name that is not UTF-8",
    "a rope scaling of factor -1", "an unknown rope type", "a negative seed (world generate)", "a fractional label (ppl-tasks)",
    "a mask that is a device", "a quantile of 1",
]  # fmt: skip


def _tree(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_is_refused_cleanly(case, tiny_vd, tmp_path, capsys, monkeypatch):
    import time

    import resect.model.loading

    work = tmp_path / "w"
    work.mkdir()
    args, phrase, before_load = _prepare(case, work, Path(tiny_vd))
    before, source = _tree(work), _tree(Path(tiny_vd))
    loads = []
    real = resect.model.loading.load_model
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    monkeypatch.chdir(work)
    start = time.perf_counter()
    code, out, err = run_cli(args, capsys, monkeypatch)
    elapsed = time.perf_counter() - start
    one_line(code, out, err, phrase)
    assert _tree(work) == before and _tree(Path(tiny_vd)) == source  # inputs byte-identical, nothing left behind
    if before_load:
        assert not loads and elapsed < 30, (loads, elapsed)
