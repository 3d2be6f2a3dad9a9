"""A checkpoint folder shaped like the published ones (one bf16 `model.safetensors`, a LLaMA-2
SentencePiece tokenizer with no `tokenizer.json`, the transformers-4.x config) through every
building block: info, profile, select, apply, eval."""

from __future__ import annotations

import json
import shutil

import pytest
from _cli import run_cli
from _eval_tasks import quiz_task

from resect.errors import CheckpointError
from resect.model.loading import load_model, load_tokenizer
from resect.model.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "monet-vd-tiny-hf", hub_like=True, seed=3)


def test_the_folder_is_shaped_like_the_published_ones(hub_like):
    names = {p.name for p in hub_like.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert "tokenizer.json" not in names and "model.safetensors.index.json" not in names
    assert json.loads((hub_like / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    config = json.loads((hub_like / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["transformers_version"].startswith("4.")


def test_the_sentencepiece_tokenizer_loads_as_llama_2s(hub_like):
    tok = load_tokenizer(hub_like)
    ids = tok("The quick brown fox")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.unk_token_id == 0
    assert tok.decode(ids, skip_special_tokens=True) == "The quick brown fox"
    assert tok.pad_token is not None  # set for batching; the published files have none
    assert len(tok) == json.loads((hub_like / "config.json").read_text())["vocab_size"]


def test_every_building_block_runs_on_it(hub_like, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": f"Cells divide and proteins fold, lesson {k}.", "label": "biology"} for k in range(12)]
    rows += [{"text": f"def f{k}(x): return x * {k}", "label": "code"} for k in range(12)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    stats, mask, edited = tmp_path / "stats.safetensors", tmp_path / "mask.json", tmp_path / "edited"

    code, out, err = run_cli(["info", str(hub_like), "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["dtype"] == "BF16" and json.loads(out)["shards"] == ["model.safetensors"]

    code, _, err = run_cli(["profile", str(hub_like), "--corpus", str(corpus), "--out", str(stats), "--batch-size", "4"], capsys, monkeypatch)
    assert code == 0, err

    code, _, err = run_cli(["select", "--stats", str(stats), "--rule", "skew", "--target", "biology", "--ratio", "1.5",
                            "--min-tokens", "10", "--out", str(mask)], capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert sum(map(len, json.loads(mask.read_text())["experts"].values())) > 0

    code, _, err = run_cli(["apply", str(hub_like), "--mask", str(mask), "--out", str(edited)], capsys, monkeypatch)
    assert code == 0, err
    assert (edited / "tokenizer.model").is_file() and not (edited / "tokenizer.json").exists()
    assert load_tokenizer(edited)("fox")["input_ids"] == load_tokenizer(hub_like)("fox")["input_ids"]

    tasks = quiz_task(tmp_path / "tasks")
    for model in (hub_like, edited):
        code, out, err = run_cli(["eval", str(model), "--tasks", "resect_quiz", "--include-path", str(tasks), "--limit", "4"], capsys, monkeypatch)
        assert code == 0, err
        assert json.loads(out[: out.rindex("}") + 1])["n-samples"]["resect_quiz"]["effective"] == 4


def test_a_tokenizer_that_cannot_load_names_what_is_missing(hub_like, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(hub_like, bare)
    (bare / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files .*tokenizer.model"):
        load_tokenizer(bare)
    import resect.model.loading

    monkeypatch.setitem(resect.model.loading.SENTENCEPIECE_PACKAGES, "sentencepiece", "a_module_that_is_not_installed")
    with pytest.raises(CheckpointError, match="needs the package\\(s\\) sentencepiece: pip install sentencepiece"):
        load_tokenizer(hub_like)


def test_bf16_weights_load_as_stored_or_as_asked(hub_like):
    import torch

    assert load_model(hub_like, dtype="bfloat16").model.embed_tokens.weight.dtype == torch.bfloat16
    assert load_model(hub_like).model.embed_tokens.weight.dtype == torch.float32
