"""End to end on the built-in model: resect domain / run / recipes, and their bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resect.run.recipebook import recipe_files, validate_recipe
from resect.run.spec import BUILTIN_LANGUAGE_RATIO, PAPER_THRESHOLD, SKEW_MEAN_RATIO, WORLD_SKEW_MEAN_RATIO, WORLD_TOXICITY_THRESHOLD

RESECT = str(Path(sys.executable).parent / "resect")


def resect(*args: str, env_cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = os.environ | {"RESECT_CACHE_DIR": str(env_cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([RESECT, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", sorted(recipe_files()))
def test_every_shipped_recipe_validates(name):
    validate_recipe(name)


def one_line_error(res: subprocess.CompletedProcess, phrase: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_domain_suggests_and_writes_nothing(tmp_path, cache):
    res = resect("domain", "--remove", "biolgy", "--out", str(tmp_path / "run"), env_cache=cache)
    one_line_error(res, "Did you mean: biology?")
    assert not (tmp_path / "run").exists()


def test_existing_output_is_refused_and_untouched(tmp_path, cache):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = resect("domain", "--remove", "biology", "--out", str(out), env_cache=cache)
    one_line_error(res, "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("args, phrase", [
    (["toxicity", "--threshold", "1.5", "--out", "{out}"], "[-1, 1]"),
    (["domain", "--remove", "biology", "--ratio", "1.0", "--out", "{out}"], "--ratio must be a number in (1,"),
    (["domain", "--remove", "biology", "--max-general-drop", "-1", "--out", "{out}"], "--max-general-drop must be a number in [0,"),
    (["run", "world-domain", "targt=law", "out={out}"], "Did you mean: target?"),
    (["run", "no-such-recipe", "out={out}"], "Unknown recipe"),
    (["domain", "--remove", "biology", "--groups", "3", "--out", "{out}"], "routing groups of this model, 0 to 2"),
    (["run", "world-domain", "groups=[0,9]", "out={out}"], "0 to 2 (e.g. --groups 1,2), found 9"),
    (["run", "world-toxicity", "toxicity.profile_sample=4", "out={out}"], "Did you mean: profile_samples?"),
    (["run", "world-toxicity", "toxicity.samples=0", "out={out}"], "toxicity.samples must be a whole number in [1,"),
    (["domain", "--remove", "biology", "--refine", "-1", "--out", "{out}"], "--refine must be a whole number in [0,"),
    (["run", "world-toxicity", "refine=5", "out={out}"], "Drop --refine"),
    (["language", "--remove", "python", "--tune", "-2", "--out", "{out}"], "--tune must be a whole number in [0,"),
    (["run", "world-toxicity", "tune=5", "out={out}"], "Drop --tune"),
])  # fmt: skip
def test_out_of_range_options_exit_2(args, phrase, tmp_path, cache):
    out = tmp_path / "run"
    res = resect(*(a.format(out=out) for a in args), env_cache=cache)
    one_line_error(res, phrase)
    assert not out.exists()


@pytest.mark.slow
def test_a_checkpoint_of_its_own_gets_the_mmlu_pro_protocol_or_one_line(tiny_vd, tmp_path, cache):
    """A --model that is not the built-in one is profiled on MMLU by MMLU-Pro category; offline,
    its Hub data cannot load, which is one line and nothing written."""
    out = tmp_path / "run"
    one_line_error(resect("domain", str(tiny_vd), "--remove", "biolgy", "--out", str(out), env_cache=cache),
                   "Did you mean: biology?")  # fmt: skip
    res = resect("domain", str(tiny_vd), "--remove", "computer science", "--dry-run", "--out", str(out), env_cache=cache)
    one_line_error(res, "'cais/mmlu'")
    assert "run once with network" in res.stderr
    one_line_error(resect("language", str(tiny_vd), "--remove", "python", "--out", str(out), env_cache=cache),
                   "Pass --corpus")  # fmt: skip
    assert not out.exists()


def test_toxicity_on_a_checkpoint_of_its_own_takes_the_prompts_it_is_given(tiny_vd, tmp_path):
    from resect.run.plan import plan
    from resect.run.spec import RunSpec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "The sample says", "toxic": False}) + "\n")
    p = plan(RunSpec("toxicity", model=str(tiny_vd), toxicity_prompts=str(prompts), general_tasks=[], out=str(tmp_path / "run")))
    assert p.toxicity_prompts == str(prompts) and p.rule == "correlation" and not (tmp_path / "run").exists()


def test_domain_rule_defaults_the_paper_s_on_published_checkpoints_skew_mean_on_a_world(tiny_vd, tmp_path):
    from resect.run.plan import plan
    from resect.run.spec import RunSpec

    out = str(tmp_path / "run")
    world = plan(RunSpec("domain", "law", out=out))
    assert (world.rule, world.rule_params) == ("skew-mean", {"ratio": WORLD_SKEW_MEAN_RATIO})
    assert plan(RunSpec("domain", "law", rule="skew", out=out)).rule_params == {"ratio": 2.0}
    assert plan(RunSpec("domain", "law", ratio=1.5, out=out)).rule_params == {"ratio": 1.5}
    published = plan(RunSpec("domain", "law", model=str(tiny_vd), out=out))
    assert (published.rule, published.rule_params) == ("skew", {"ratio": 2.0})
    mean_there = plan(RunSpec("domain", "law", model=str(tiny_vd), rule="skew-mean", out=out))
    assert mean_there.rule_params == {"ratio": SKEW_MEAN_RATIO}  # the rule's own default off the world
    language = plan(RunSpec("language", "python", out=out))
    assert (language.rule, language.rule_params) == ("skew", {"ratio": BUILTIN_LANGUAGE_RATIO})
    toxicity = plan(RunSpec("toxicity", out=out))
    assert toxicity.rule_params == {"threshold": WORLD_TOXICITY_THRESHOLD} and toxicity.spec.threshold == WORLD_TOXICITY_THRESHOLD
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "You are"}\n{"prompt": "Hello"}\n')
    elsewhere = plan(RunSpec("toxicity", model=str(tiny_vd), toxicity_prompts=str(prompts), general_tasks=[], out=out))
    assert elsewhere.rule_params == {"threshold": PAPER_THRESHOLD}
    assert plan(RunSpec("toxicity", threshold=0.2, out=out)).rule_params == {"threshold": 0.2}
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_dry_run_selects_but_writes_nothing(tmp_path, cache):
    res = resect("run", "world-domain", "target=chemistry", "dry_run=true", f"out={tmp_path / 'run'}", env_cache=cache)
    assert res.returncode == 0, res.stderr
    assert "masked" in res.stdout and "dry run" in res.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_groups_limit_the_selection_to_those_routing_groups(tmp_path, cache):
    res = resect("run", "world-domain", "target=chemistry", "groups=1,2", "dry_run=true", f"out={tmp_path / 'run'}", env_cache=cache)
    assert res.returncode == 0, res.stderr
    counts = {int(g): int(n.replace(",", "")) for g, n in re.findall(r"group (\d+):\s+([\d,]+)", res.stdout)}
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0, res.stdout


@pytest.mark.slow
def test_refine_adds_at_most_n_experts_per_group_to_the_rule_s(tmp_path, cache):
    def counts(*extra: str) -> dict[int, int]:
        res = resect("domain", "--remove", "chemistry", "--dry-run", *extra, "--out", str(tmp_path / "run"), env_cache=cache)
        assert res.returncode == 0, res.stderr
        return {int(g): int(n.replace(",", "")) for g, n in re.findall(r"group (\d+):\s+([\d,]+)", res.stdout)}

    rule, refined = counts(), counts("--refine", "40")
    added = {g: refined[g] - rule[g] for g in rule}
    assert all(0 <= n <= 40 for n in added.values()) and sum(added.values()) > 0, (rule, refined)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tune_runs_after_the_rule_and_is_recorded(tmp_path, cache):
    out = tmp_path / "run"
    res = resect("domain", "--remove", "law", "--tune", "1", "--limit", "4", "--out", str(out), env_cache=cache)
    assert res.returncode in (0, 1), res.stderr  # a verdict either way: 4 questions a quiz decide nothing
    mask = json.loads((out / "mask.json").read_text())
    assert mask["tune"]["steps"] == 1 and mask["rule"] == "skew-mean", {k: v for k, v in mask.items() if k != "experts"}
    assert yaml.safe_load((out / "run.yaml").read_text())["tune"] == 1


@pytest.mark.slow
def test_domain_biology_end_to_end(tmp_path, cache):
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        res = resect("domain", "--remove", "biology", "--out", str(out), env_cache=cache, cwd=tmp_path)  # not a git repository
        assert res.returncode == 0, res.stdout + res.stderr
        assert "PASS" in res.stdout
        assert "it/s" not in res.stderr and "Running loglikelihood" not in res.stderr, res.stderr[-500:]  # no library bars
        assert "fatal" not in res.stderr, res.stderr[-500:]  # nor lm-eval's git probe
        runs.append(out)
    first, second = runs
    for name in ("run.yaml", "stats.safetensors", "mask.json", "verify.json", "verify.md", "report.md", "accuracy.png", "experts.png"):
        assert (first / name).is_file(), name
    verdict = json.loads((first / "verify.json").read_text())
    assert verdict["verdict"] == "pass"
    rows = {r["task"]: r for r in verdict["rows"]}
    assert rows["world_biology"]["role"] == "target" and rows["world_biology"]["drop"] >= 10
    assert rows["world_biology"]["low"] >= 10 and rows["world_biology"]["gated_on"] == "estimate"  # its lower bound clears the bar too
    assert all(r["drop"] <= 2 for r in rows.values() if r["role"] == "general")
    # the edited checkpoint is self-describing and loads
    config = json.loads((first / "checkpoint" / "config.json").read_text())
    assert config["resect"]["mask"]["total"] > 0
    # same inputs and seed: same mask, same numbers (the second run's baseline came from the cache)
    assert json.loads((first / "mask.json").read_text())["experts"] == json.loads((second / "mask.json").read_text())["experts"]
    again = json.loads((second / "verify.json").read_text())
    assert [(r["task"], r["edited"]) for r in again["rows"]] == [(r["task"], r["edited"]) for r in verdict["rows"]]
    assert again["baseline"]["cached"] is True
    # quiz drops are paired over the same questions, the cached baseline's too; where a question or two
    # changed, the paired error is far below the unpaired one, which counts every question's difficulty twice
    quiz_rows = [r for r in verdict["rows"] + again["rows"] if r["unit"] == "points"]
    assert quiz_rows and all(r["paired"] for r in quiz_rows)
    held = [r for r in quiz_rows if r["role"] == "general"]
    unpaired = [100 * math.hypot(r["baseline_stderr"], r["edited_stderr"]) for r in held]
    assert held and all(r["drop_stderr"] <= u for r, u in zip(held, unpaired))
    assert any(u > 0 for u in unpaired)  # a quiz answered perfectly before and after has no error either way
    assert all(r["drop_stderr"] < u for r, u in zip(held, unpaired) if u > 0)
    assert "(paired)" in (first / "report.md").read_text()
    # provenance that survives: the checkpoint's mask keeps the selection, the run's configuration sits beside the weights,
    # and run.yaml names no cache folder: it redoes the edit once the caches are gone
    own = json.loads((first / "checkpoint" / "resect_mask.json").read_text())
    run_mask = json.loads((first / "mask.json").read_text())
    assert {k: own[k] for k in ("rule", "target", "params", "stats_model_fingerprint")} == {k: run_mask[k] for k in ("rule", "target", "params", "stats_model_fingerprint")}
    assert yaml.safe_load((first / "checkpoint" / "resect_run.yaml").read_text())["target"] == "biology"
    request = (first / "run.yaml").read_text()
    assert str(cache) not in request and request.startswith("# resect run ")
    fresh = tmp_path / "fresh-cache"
    res = resect("run", str(first / "run.yaml"), f"out={tmp_path / 'rerun'}", env_cache=fresh, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "rerun" / "mask.json").read_text())["experts"] == run_mask["experts"]
