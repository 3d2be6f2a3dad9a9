"""`resect apply`: edited checkpoints that load with resect, without it, and in lm-eval's CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _cli import run_cli

from resect.edit.export import MASK_FILE, apply_masks
from resect.model.fingerprint import model_fingerprint
from resect.model.loading import load_model
from resect.model.mask import ExpertMask

TOL = 1e-5
IDS = torch.randint(3, 300, (2, 19), generator=torch.Generator().manual_seed(0))


def folder_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def a_mask(path: Path, groups: int, seed: int, count: int = 70) -> ExpertMask:
    gen = torch.Generator().manual_seed(seed)
    return ExpertMask(16, groups, {g: torch.randperm(256, generator=gen)[:count].tolist() for g in range(groups)})


def masked_logits(source: Path, mask: ExpertMask) -> torch.Tensor:
    model = load_model(source)
    model.set_expert_mask(mask)
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def edited_vd(tiny_vd, tmp_path_factory):
    """An edited copy of the tiny VD checkpoint, written through the CLI code path's library call."""
    root = tmp_path_factory.mktemp("edited")
    mask = a_mask(root, 2, seed=1)
    mask.save(root / "mask.json")
    result = apply_masks(tiny_vd, [root / "mask.json"], root / "out")
    return result.path, mask


def test_edited_checkpoint_reloads_equal_to_in_memory_mask(tiny_ckpt, tmp_path, capsys, monkeypatch):
    config = json.loads((tiny_ckpt / "config.json").read_text())
    groups = -(-config["num_hidden_layers"] // config["moe_groups"])
    first, second = a_mask(tmp_path, groups, seed=2), a_mask(tmp_path, groups, seed=3, count=20)
    first.save(tmp_path / "a.json")
    second.save(tmp_path / "b.mask")  # binary form
    before = folder_digest(tiny_ckpt)
    code, out, err = run_cli(["apply", str(tiny_ckpt), "--mask", str(tmp_path / "a.json"), "--mask", str(tmp_path / "b.mask"),
                              "--out", str(tmp_path / "edited")], capsys, monkeypatch)
    assert code == 0, err
    edited = tmp_path / "edited"
    union = first | second
    reloaded = load_model(edited)
    assert reloaded.expert_mask_state() == union
    with torch.no_grad():
        assert float((reloaded(IDS).logits - masked_logits(tiny_ckpt, union)).abs().max()) < TOL
    record = json.loads((edited / "config.json").read_text())["resect"]
    assert record["source"] == str(tiny_ckpt.resolve())
    assert record["source_fingerprint"] == model_fingerprint(load_model(tiny_ckpt))
    assert record["mask"] == {"file": MASK_FILE, "fingerprint": union.fingerprint(),
                              "counts": {str(g): n for g, n in union.counts().items()}, "total": union.total}
    for shard in [p for p in tiny_ckpt.iterdir() if p.suffix == ".safetensors"]:
        assert os.path.samefile(shard, edited / shard.name)  # hard link, not a copy
    assert folder_digest(tiny_ckpt) == before  # source untouched
    card = (edited / "README.md").read_text()
    assert union.fingerprint() in card and str(tiny_ckpt.resolve()) in card and f"{union.total:,}" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_applying_to_an_edited_checkpoint_composes_masks(tiny_vd, edited_vd, tmp_path):
    edited, first = edited_vd
    second = a_mask(tmp_path, 2, seed=4, count=30)
    result = apply_masks(edited, [second], tmp_path / "again")
    assert result.mask == first | second
    assert result.source == tiny_vd.resolve()
    record = json.loads((tmp_path / "again" / "config.json").read_text())["resect"]
    assert record["source"] == str(tiny_vd.resolve())
    assert record["source_fingerprint"] == json.loads((edited / "config.json").read_text())["resect"]["source_fingerprint"]
    shard = next(p for p in tiny_vd.iterdir() if p.suffix == ".safetensors")
    assert os.path.samefile(shard, tmp_path / "again" / shard.name)
    assert load_model(tmp_path / "again").expert_mask_state() == first | second


NO_RESECT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):  # this interpreter cannot import resect at all
        def find_spec(self, name, path, target=None):
            if name == "resect" or name.startswith("resect."):
                raise ImportError("resect is blocked in this test")
    sys.meta_path.insert(0, Block())
    try:
        import resect  # noqa: F401
        sys.exit("resect was importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
    print(json.dumps({"module": type(model).__module__, "removed": model.expert_mask_state().total,
                      "logits": logits.tolist(), "resect_modules": [m for m in sys.modules if m.startswith("resect")]}))
    """
)


@pytest.mark.slow
def test_loads_with_trust_remote_code_without_resect(tiny_vd, edited_vd, tmp_path):
    edited, mask = edited_vd
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", NO_RESECT, str(edited), json.dumps(IDS.tolist())],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules") and report["resect_modules"] == []
    assert report["removed"] == mask.total
    assert float((torch.tensor(report["logits"]) - masked_logits(tiny_vd, mask)).abs().max()) < TOL


TASK = """task: apply_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.slow
def test_lm_eval_cli_runs_the_edited_checkpoint(edited_vd, tmp_path):
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    if lm_eval is None:
        pytest.skip("lm-eval is not installed (pip install 'resect[eval]')")
    edited, _ = edited_vd
    rows = [{"question": f"{a} plus {b}?", "choices": [str(a + b), str(a + b + 1), "no"], "answer": 0} for a, b in [(1, 2), (3, 4), (5, 6), (7, 1)]]
    (tmp_path / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "apply_quiz.yaml").write_text(TASK.format(data=tmp_path / "quiz.jsonl"))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={edited},trust_remote_code=True,dtype=float32",
           "--tasks", "apply_quiz", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2",
           "--output_path", str(tmp_path / "results")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    acc = results["results"]["apply_quiz"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and results["n-samples"]["apply_quiz"]["effective"] == 4


def test_force_replaces_only_an_earlier_edited_checkpoint(tiny_vd, tmp_path, capsys, monkeypatch):
    a_mask(tmp_path, 2, seed=5).save(tmp_path / "m.json")
    a_mask(tmp_path, 2, seed=6, count=3).save(tmp_path / "m2.json")
    args = ["apply", str(tiny_vd), "--out", str(tmp_path / "out"), "--mask"]
    assert run_cli([*args, str(tmp_path / "m.json")], capsys, monkeypatch)[0] == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")  # a file of the user's inside resect's folder: --force refuses it all
    code, _, err = run_cli([*args, str(tmp_path / "m2.json"), "--force"], capsys, monkeypatch)
    assert code == 2 and "holds 'notes.txt', which resect did not write" in err and (tmp_path / "out" / "notes.txt").read_text() == "mine"
    (tmp_path / "out" / "notes.txt").unlink()
    code, _, err = run_cli([*args, str(tmp_path / "m2.json"), "--force"], capsys, monkeypatch)
    assert code == 0, err
    assert ExpertMask.load(tmp_path / "out" / MASK_FILE).total == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m2.json", "out"]  # no work folder left beside it
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("mine")  # not resect's: --force refuses it
    code, _, err = run_cli(["apply", str(tiny_vd), "--mask", str(tmp_path / "m.json"), "--out", str(tmp_path / "thesis"), "--force"],
                           capsys, monkeypatch)  # fmt: skip
    assert code == 2 and "not written by resect" in err and (tmp_path / "thesis" / "chapter1.tex").read_text() == "mine"


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("exists", "already exists"),
        ("same", "is the source checkpoint"),
        ("inside", "contains the source"),
        ("not-monet", "not Monet"),
        ("geometry", "moe_experts=8"),
        ("groups", "Group 5 does not exist"),
        ("big-id", "outside [0, 256)"),
        ("malformed", "is not valid JSON"),
        ("no-mask-file", "does not exist"),
        ("other-model", "selected on statistics of another model (fingerprint 00000000deadbeef"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_vd, tmp_path, capsys, monkeypatch, case, phrase):
    source = tmp_path / "src"
    shutil.copytree(tiny_vd, source)
    mask_file, out = tmp_path / "m.json", tmp_path / "out"
    a_mask(tmp_path, 2, seed=6).save(mask_file)
    if case == "exists":
        out.mkdir()
    elif case == "same":
        out = source
    elif case == "inside":
        out = tmp_path
    elif case == "not-monet":
        config = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    elif case == "geometry":
        ExpertMask(8, 2, {0: [1]}).save(mask_file)
    elif case == "groups":
        mask_file.write_text('{"moe_experts": 16, "num_groups": 2, "experts": {"5": [1]}}')
    elif case == "big-id":
        mask_file.write_text('{"moe_experts": 16, "num_groups": 2, "experts": {"0": [256]}}')
    elif case == "malformed":
        mask_file.write_text('{"moe_experts": 16, "num_groups": 2, "experts": {"0": [1,')
    elif case == "no-mask-file":
        mask_file = tmp_path / "missing.json"
    elif case == "other-model":  # the geometry fits, the statistics came from other weights
        ExpertMask(16, 2, {0: [1]}, {"stats_model_fingerprint": "00000000deadbeef"}).save(mask_file)
    before = folder_digest(source)
    listing = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(["apply", str(source), "--mask", str(mask_file), "--out", str(out)], capsys, monkeypatch)
    assert code == 2
    assert err.startswith("error: ") and phrase in err and err.count("\n") == 1 and "Traceback" not in err
    assert folder_digest(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing new, no temporary folder
    if case == "exists":
        assert list(out.iterdir()) == []


def test_mask_info_and_union_commands(tmp_path, capsys, monkeypatch):
    first, second = a_mask(tmp_path, 2, seed=8, count=10), a_mask(tmp_path, 2, seed=9, count=12)
    first.save(tmp_path / "a.json")
    second.save(tmp_path / "b.bin")
    code, out, err = run_cli(["mask", "union", str(tmp_path / "a.json"), str(tmp_path / "b.bin"), "--out", str(tmp_path / "u.json")],
                             capsys, monkeypatch)
    assert code == 0, err
    assert ExpertMask.load(tmp_path / "u.json") == first | second
    code, out, err = run_cli(["mask", "info", str(tmp_path / "u.json")], capsys, monkeypatch)
    assert code == 0 and (first | second).fingerprint() in out.replace("\n", "")
    ExpertMask(8, 2, {0: [1]}).save(tmp_path / "small.json")
    code, _, err = run_cli(["mask", "union", str(tmp_path / "a.json"), str(tmp_path / "small.json"), "--out", str(tmp_path / "v.json")],
                           capsys, monkeypatch)
    assert code == 2 and "different geometry" in err and err.count("\n") == 1 and not (tmp_path / "v.json").exists()
    code, _, err = run_cli(["mask", "union", str(tmp_path / "a.json"), "--out", str(tmp_path / "u.json")], capsys, monkeypatch)
    assert code == 2 and "already exists" in err


def test_save_pretrained_keeps_the_mask(tiny_vd, edited_vd, tmp_path):
    """A masked model saved with save_pretrained reloads with the same mask and logits; a model whose
    mask was cleared saves as unedited (no stale mask record)."""
    source = load_model(tiny_vd)
    mask = a_mask(tmp_path, 2, seed=4)
    source.set_expert_mask(mask)
    source.save_pretrained(tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved")
    assert reloaded.expert_mask_state() == mask
    with torch.no_grad():
        assert float((reloaded(IDS).logits - source(IDS).logits).abs().max()) < TOL
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["resect"]["mask"]["total"] == mask.total
    assert getattr(source.config, "resect", None) is None  # the in-memory config is left as it was

    edited = load_model(edited_vd[0])
    edited.set_expert_mask(None)
    edited.save_pretrained(tmp_path / "cleared")
    assert "mask" not in json.loads((tmp_path / "cleared" / "config.json").read_text()).get("resect", {})
    assert not (tmp_path / "cleared" / MASK_FILE).exists()
    cleared = load_model(tmp_path / "cleared")
    assert cleared.expert_mask_state() is None
    with torch.no_grad():
        assert torch.equal(cleared(IDS).logits, load_model(tiny_vd)(IDS).logits)
