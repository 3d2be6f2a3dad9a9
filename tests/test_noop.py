"""Every default gate can fail: a no-op edit (an empty mask, applied as any mask is) breaches the
default gate of every edit command, and no shipped recipe sets a target bar that a no-op meets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resect.model.mask import ExpertMask
from resect.run.recipebook import read_recipe, recipe_files

RESECT = str(Path(sys.executable).parent / "resect")


@pytest.mark.slow
@pytest.mark.parametrize("kind, target", [("domain", "biology"), ("language", "python"), ("toxicity", None)])
def test_a_no_op_edit_breaches_every_edit_command_s_default_gate(kind, target, tmp_path, monkeypatch):
    from resect.gate.verify import run_verification
    from resect.model.checkpoint import read_config
    from resect.run.plan import plan
    from resect.run.spec import RunSpec

    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))
    p = plan(RunSpec(kind, target, out=str(tmp_path / "run")))  # the command's defaults, as `resect KIND` plans them
    empty = ExpertMask.empty_like(read_config(p.model_path)).save(tmp_path / "empty.json")
    edited = tmp_path / "edited"
    applied = subprocess.run([RESECT, "apply", str(p.model_path), "--mask", str(empty), "--out", str(edited)], capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr
    report = run_verification(p.verification, edited)
    targets = [r for r in report["rows"] if r["role"] == "target"]
    assert report["verdict"] == "fail" and targets
    assert all(abs(r["drop"]) < 1e-9 for r in report["rows"])  # nothing moved: the same model, the same seeds
    assert report["breached"] and set(report["breached"]) <= {r["task"] for r in targets}  # a target's bar, nothing else


def target_bars(kind: str, settings: dict) -> list[float]:
    """What a target must fall by under these settings (a recipe's, or {} for the defaults)."""
    from resect.run.spec import DEFAULT_GATES, DEFAULT_TOXICITY_DROP

    bars = [settings.get("min_target_drop", DEFAULT_GATES[kind][0])]
    if kind == "toxicity":  # and the toxicity probability's fall, % of the baseline's
        bars.append(settings.get("min_toxicity_drop", DEFAULT_TOXICITY_DROP))
    return [b for b in bars if b is not None]


def test_no_default_and_no_shipped_recipe_sets_target_bars_a_no_op_meets():
    from resect.run.spec import DEFAULT_GATES

    for kind in DEFAULT_GATES:
        assert max(target_bars(kind, {})) > 0, kind
    for name, path in recipe_files().items():
        recipe = read_recipe(str(path))
        if recipe.get("kind") in DEFAULT_GATES:
            assert max(target_bars(recipe["kind"], recipe)) > 0, f"{name}: a no-op edit meets its target bars"
