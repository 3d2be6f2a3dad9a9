"""The built-in model's training recipe: recipe loading, auxiliary losses, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resect.errors import OutputError, UsageError
from resect.world.train import DEFAULT_RECIPE, auxiliary_losses, load_recipe, lr_at, run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "world.yaml"
TINY = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.moe_experts=8",
    "model.moe_heads=2",
    "model.moe_dim=4",
    "model.moe_topk=2",
    "model.moe_groups=2",
    "tokenizer.vocab_size=300",
    "world.entities=4",
    "train.steps=30",
    "train.batch_size=4",
    "train.block_size=32",
    "train.warmup=5",
    "train.lr=5e-3",
    "train.log_every=1",
    "pretrain.steps=0",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_train") / "run"
    steps = []
    model = run_recipe(load_recipe(RECIPE, TINY), out, on_step=lambda s, n, m: steps.append((s, n)))
    return out, model, steps


def test_shipped_recipe_is_the_default_and_says_how_to_run_it():
    assert load_recipe(RECIPE) == DEFAULT_RECIPE
    first = RECIPE.read_text().splitlines()[0]
    assert first.startswith("# resect world train --out") and "recipes/world.yaml" in first


def test_overrides_are_typed_and_unknown_keys_rejected():
    recipe = load_recipe(RECIPE, ["train.steps=7", "train.lr=1e-4", "model.moe_topk=3"])
    assert recipe["train"]["steps"] == 7 and recipe["train"]["lr"] == pytest.approx(1e-4) and recipe["model"]["moe_topk"] == 3
    assert DEFAULT_RECIPE["train"]["steps"] != 7  # the defaults are not mutated
    with pytest.raises(UsageError, match="Did you mean: train.steps"):
        load_recipe(RECIPE, ["train.stpes=3"])
    with pytest.raises(UsageError, match="key=value"):
        load_recipe(RECIPE, ["train.steps"])


def test_bad_recipe_file_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(UsageError, match="mapping"):
        load_recipe(bad)


def test_auxiliary_losses_vanish_at_their_optimum():
    B, T, H, E = 2, 8, 2, 4
    one_hot = torch.nn.functional.one_hot(torch.arange(B * T) % E, E).float().view(B, T, 1, E).expand(B, T, H, E)
    unif, amb = auxiliary_losses(((one_hot, one_hot), None))
    assert unif.item() == pytest.approx(0.0, abs=1e-6)  # every half used equally often
    assert amb.item() == pytest.approx(0.0, abs=1e-6)  # every token decisive
    spread = torch.full((B, T, H, E), 1 / E)
    assert auxiliary_losses(((spread, spread),))[1].item() == pytest.approx(1 - 1 / E)
    skewed = torch.zeros(B, T, H, E)
    skewed[..., 0] = 1
    assert auxiliary_losses(((skewed, skewed),))[0].item() > 1.0  # one half takes everything


def test_learning_rate_warms_up_then_decays():
    train = {**DEFAULT_RECIPE["train"], "steps": 100, "warmup": 10}
    rates = [lr_at(s, train) for s in range(100)]
    assert rates[0] < rates[9] == pytest.approx(train["lr"])
    assert rates[-1] < rates[50] < rates[10] and rates[-1] >= train["lr"] * train["min_lr_ratio"]


def test_tiny_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tiny_run):
    from resect.model.checkpoint import inspect_checkpoint
    from resect.model.loading import load_model, load_tokenizer

    out, model_dir, steps = tiny_run
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and steps[-1] == (30, 30)
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    inspect_checkpoint(model_dir)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    assert not model.training and len(tok) == model.config.vocab_size
    norm = model.model.layers[0].router.norm1
    assert int(norm.num_batches_tracked) == 30  # statistics were live for every step
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 2]])).logits).all()


def test_training_is_reproducible(tiny_run, tmp_path):
    out, model_dir, _ = tiny_run
    again = run_recipe(load_recipe(RECIPE, TINY[:-6] + ["train.steps=3", "train.batch_size=4", "train.block_size=32",
                                                       "train.warmup=5", "train.lr=5e-3", "train.log_every=1"]),
                       tmp_path / "a", data=out / "data")
    twice = run_recipe(load_recipe(RECIPE, TINY[:-6] + ["train.steps=3", "train.batch_size=4", "train.block_size=32",
                                                       "train.warmup=5", "train.lr=5e-3", "train.log_every=1"]),
                       tmp_path / "b", data=out / "data")
    assert (again / "model.safetensors").read_bytes() == (twice / "model.safetensors").read_bytes()


def test_existing_model_folder_is_not_overwritten(tiny_run):
    out, model_dir, _ = tiny_run
    before = (model_dir / "model.safetensors").read_bytes()
    with pytest.raises(OutputError, match="exists"):
        run_recipe(load_recipe(RECIPE, TINY), out)
    assert (model_dir / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_cli_train_runs_the_recipe_and_rejects_bad_overrides(tmp_path):
    import subprocess
    import sys

    resect = str(Path(sys.executable).parent / "resect")
    out = tmp_path / "run"
    ok = subprocess.run([resect, "world", "train", "--out", str(out), "--recipe", str(RECIPE), *TINY[:-6], "train.steps=2",
                         "train.batch_size=2", "train.block_size=16"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    bad = subprocess.run([resect, "world", "train", "--out", str(tmp_path / "x"), "train.stpes=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean: train.steps" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    frozen = subprocess.run([resect, "world", "train", "--out", str(tmp_path / "y"), "pretrain.frozen_groups=[9]"], capture_output=True, text=True)
    assert frozen.returncode == 2 and frozen.stdout == "" and frozen.stderr.count("\n") == 1, frozen.stdout + frozen.stderr
    assert "pretrain.frozen_groups must list routing groups" in frozen.stderr and not (tmp_path / "y").exists()
    shape = subprocess.run([resect, "world", "train", "--out", str(tmp_path / "z"), "model.moe_dim=1"], capture_output=True, text=True)
    assert shape.returncode == 2 and shape.stdout == "" and shape.stderr.count("\n") == 1, shape.stdout + shape.stderr
    assert "even moe_dim" in shape.stderr and "model.* keys" in shape.stderr and not (tmp_path / "z").exists()
