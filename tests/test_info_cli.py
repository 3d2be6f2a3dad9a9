"""`resect info` and the one-line errors for checkpoints that are not loadable Monet folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resect.errors import CheckpointError
from resect.model.loading import load_model

RESECT = [str(Path(sys.executable).parent / "resect")]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RESECT, *args], capture_output=True, text=True, timeout=120)


def test_info_json_describes_geometry(tiny_hd):
    res = run("info", str(tiny_hd), "--json")
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["decomposition"] == "HD"
    assert facts["routing_groups"] == 2 and facts["group_layers"] == [[0, 1, 2], [3, 4]]
    assert facts["experts_per_group"] == 16 * 16
    assert len(facts["shards"]) == 2
    assert facts["moe_topk"] == 3 and facts["routing_threshold"] == pytest.approx(0.887147, abs=1e-5)


def test_info_table_renders(tiny_vd):
    res = run("info", str(tiny_vd))
    assert res.returncode == 0 and "routing groups" in res.stdout and "VD" in res.stdout


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def llama(tmp: Path) -> Path:
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return tmp


def truncated(src: Path, tmp: Path) -> Path:
    ckpt = copy_ckpt(src, tmp)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    return ckpt


def corrupt_header(src: Path, tmp: Path) -> Path:
    ckpt = copy_ckpt(src, tmp)
    shard = ckpt / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\x00garbage!!\x00\x00"
    shard.write_bytes(bytes(data))
    return ckpt


def missing_shard(src: Path, tmp: Path) -> Path:
    ckpt = copy_ckpt(src, tmp)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    return ckpt


def no_config(src: Path, tmp: Path) -> Path:
    ckpt = copy_ckpt(src, tmp)
    (ckpt / "config.json").unlink()
    return ckpt


def edited_config(src: Path, tmp: Path, **changes) -> Path:
    ckpt = copy_ckpt(src, tmp)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | changes))
    return ckpt


CASES = {
    "llama": (lambda src, tmp: llama(tmp), "not Monet"),
    "truncated": (truncated, "truncated"),
    "corrupt": (corrupt_header, "corrupt"),
    "missing-shard": (missing_shard, "missing"),
    "no-config": (no_config, "no config.json"),
    "nonexistent": (lambda src, tmp: tmp / "absent", "does not exist"),
    "topk-over-experts": (lambda src, tmp: edited_config(src, tmp, moe_topk=99), "moe_topk 99 must be below moe_experts 16"),
    "zero-layers": (lambda src, tmp: edited_config(src, tmp, num_hidden_layers=0), "num_hidden_layers must be a positive"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoints_get_one_line_and_nonzero_exit(case, tiny_vd, tmp_path):
    make, phrase = CASES[case]
    path = make(tiny_vd, tmp_path / case)
    res = run("info", str(path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(CheckpointError, match=phrase):
        load_model(path)


def test_a_config_transformers_refuses_is_one_line_too(tiny_vd, tmp_path):
    """Shapes only the model's own config check catches (an odd expert width under vertical
    decomposition) pass `resect info` and stop at load, as a CheckpointError."""
    path = edited_config(tiny_vd, tmp_path / "odd", moe_dim=3)
    with pytest.raises(CheckpointError, match="vertical decomposition needs an even moe_dim"):
        load_model(path)
