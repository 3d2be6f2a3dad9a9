"""A process killed (SIGKILL) at several points of `apply` and `domain`: nothing looks finished
before it is, an earlier output stays readable, and a rerun in the same place cleans up and
finishes with the same result as an uninterrupted run. Outputs follow the user's umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resect.model.mask import ExpertMask
from resect.outputs import INCOMPLETE, LOCK
from resect.ownership import MARKER

# Run the CLI in a child process whose function `target` kills the process (SIGKILL, nothing runs
# after it) on its n-th call, before it does anything ("before") or right after it returns ("after").
KILLER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    target, n, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    module_name, attr = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real, calls = getattr(module, attr), [0]

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, attr, hooked)
    sys.argv = ["resect", *sys.argv[4:]]
    from resect.cli import main
    main()
    """
)


def env(cache: Path) -> dict[str, str]:
    return os.environ | {"RESECT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def killed(point: tuple[str, int, str], args: list[str], cache: Path, cwd: Path, script: str = KILLER) -> subprocess.CompletedProcess:
    target, n, when = point
    res = subprocess.run([sys.executable, "-c", script, target, str(n), when, *args], capture_output=True, text=True,
                         timeout=600, env=env(cache), cwd=cwd)  # fmt: skip
    assert res.returncode == -9, f"the process was not killed at {point}: rc {res.returncode}\n{res.stderr[-2000:]}"
    return res


def resect(args: list[str], cache: Path, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    def set_umask():
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-m", "resect", *args], capture_output=True, text=True, timeout=600, env=env(cache),
                          cwd=cwd, preexec_fn=set_umask)  # fmt: skip


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".resect-" in p.name)


def info_refuses(path: Path, cache: Path) -> None:
    res = resect(["info", str(path)], cache, path.parent)
    assert res.returncode == 2 and "unfinished resect output" in res.stderr and "Traceback" not in res.stderr, res.stderr


APPLY_POINTS = {
    "linking the weights": ("resect.edit.export._link_or_copy", 2, "after"),
    "writing the model code": ("resect.edit.export.bundle_code", 1, "before"),
    "moving into place": ("resect.outputs._move_into_place", 1, "before"),
    "after the swap": ("resect.outputs._exchange", 1, "after"),
}


@pytest.fixture
def mask_file(tiny_vd, tmp_path):
    config = json.loads((Path(tiny_vd) / "config.json").read_text())
    ExpertMask(config["moe_experts"], 2, {0: [1, 5, 9], 1: [3]}).save(tmp_path / "mask.json")
    return tmp_path / "mask.json"


@pytest.mark.slow
@pytest.mark.parametrize("point, replacing", [
    *((point, False) for point in APPLY_POINTS if point != "after the swap"),  # a new output is moved into place, not swapped
    *((point, True) for point in APPLY_POINTS),  # an earlier edited checkpoint replaced with --force
])  # fmt: skip
def test_apply_killed_then_rerun(point, replacing, tiny_vd, mask_file, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "edited"
    args = ["apply", str(tiny_vd), "--mask", str(mask_file), "--out", str(out)]
    if replacing:  # an earlier edited checkpoint at --out, replaced with --force
        earlier = tmp_path / "earlier.json"
        config = json.loads((Path(tiny_vd) / "config.json").read_text())
        ExpertMask(config["moe_experts"], 2, {1: [2]}).save(earlier)
        assert resect(["apply", str(tiny_vd), "--mask", str(earlier), "--out", str(out)], cache, tmp_path).returncode == 0
        before = (out / "resect_mask.json").read_bytes()
        args.append("--force")
    killed(APPLY_POINTS[point], args, cache, tmp_path)

    if point == "after the swap":  # the new checkpoint is in place, complete; the old one waits under a hidden name
        assert (out / MARKER).is_file() and not (out / INCOMPLETE).exists()
        assert ExpertMask.load(out / "resect_mask.json") == ExpertMask.load(mask_file)
        assert resect(["info", str(out)], cache, tmp_path).returncode == 0
    elif replacing:  # the earlier output is still there, untouched
        assert (out / "resect_mask.json").read_bytes() == before and resect(["info", str(out)], cache, tmp_path).returncode == 0
    else:
        assert not out.exists()
    for name in hidden(tmp_path):  # what the killed process left: never read as a checkpoint (its lock is released by the kill)
        if not name.endswith(LOCK):
            info_refuses(tmp_path / name, cache)

    res = resect([*args, "--force"] if "--force" not in args and out.exists() else args, cache, tmp_path)
    assert res.returncode == 0, res.stderr
    assert hidden(tmp_path) == []  # the rerun removed the dead process's leftovers
    assert ExpertMask.load(out / "resect_mask.json") == ExpertMask.load(mask_file)
    assert resect(["info", str(out)], cache, tmp_path).returncode == 0


DOMAIN_POINTS = {
    "profiling (partial statistics saved)": ("resect.edit.profile._save_partial", 1, "after"),
    "before applying": ("resect.run.pipeline.apply_mask", 1, "before"),
    "evaluating the edited checkpoint": ("resect.run.pipeline._verify", 1, "before"),
    "moving the run into place": ("resect.outputs._move_into_place", 2, "before"),
}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run (what every rerun must reproduce) and its cache (built-in model,
    statistics and baseline: the kills after profiling reuse them)."""
    root = tmp_path_factory.mktemp("reference")
    res = resect(["domain", "--remove", "biology", "--out", str(root / "run")], root / "cache", root)
    assert res.returncode in (0, 1), res.stderr
    return root / "run", root / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("point", list(DOMAIN_POINTS))
def test_domain_killed_then_rerun(point, reference_run, tmp_path):
    reference, shared = reference_run
    mid_profile = "partial" in point
    cache, out = (tmp_path / "cache" if mid_profile else shared), tmp_path / "run"
    args = ["domain", "--remove", "biology", "--out", str(out)]
    script = KILLER
    if mid_profile:  # partial statistics after every batch, so that the kill lands mid-profile
        script = KILLER.replace("from resect.cli import main", "import resect.run.pipeline\nresect.run.pipeline.PARTIAL_EVERY = 1\nfrom resect.cli import main")
    killed(DOMAIN_POINTS[point], args, cache, tmp_path, script=script)
    if mid_profile:
        assert list(cache.rglob("*.partial")), "no partial statistics were saved before the kill"

    assert not out.exists()  # nothing at --out looks finished
    for name in [n for n in hidden(tmp_path) if not n.endswith(LOCK)]:
        info_refuses(tmp_path / name, cache)
        if (tmp_path / name / "checkpoint").is_dir():  # a complete but unverified edited checkpoint inside the run
            info_refuses(tmp_path / name / "checkpoint", cache)

    res = resect(args, cache, tmp_path)
    assert res.returncode in (0, 1), res.stderr
    assert hidden(tmp_path) == [] and not list(cache.rglob("*.partial"))
    assert ExpertMask.load(out / "mask.json") == ExpertMask.load(reference / "mask.json")
    ours, theirs = (json.loads((d / "verify.json").read_text()) for d in (out, reference))
    assert ours["verdict"] == theirs["verdict"] and [r["task"] for r in ours["rows"]] == [r["task"] for r in theirs["rows"]]


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(umask, tiny_vd, mask_file, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "edited"
    assert resect(["apply", str(tiny_vd), "--mask", str(mask_file), "--out", str(out)], cache, tmp_path, umask=umask).returncode == 0
    stats = tmp_path / "s.safetensors"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"word{k} of {lab}", "label": lab}) + "\n" for k in range(4) for lab in "ab"))
    res = resect(["profile", str(tiny_vd), "--corpus", str(corpus), "--out", str(stats)], cache, tmp_path, umask=umask)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    own = [p for p in out.iterdir() if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1]  # not the source's linked weights
    assert own and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in [*own, stats]), {
        p.name: oct(p.stat().st_mode) for p in [*own, stats]
    }


@pytest.mark.slow
def test_damaged_cache_entries_heal_and_no_cache_recomputes(reference_run, tmp_path):
    import shutil

    reference, shared = reference_run
    cache = Path(shutil.copytree(shared, tmp_path / "cache"))
    (stats,) = cache.glob("stats/*.safetensors")
    (baseline,) = cache.glob("baselines/*.json")
    stats.write_bytes(stats.read_bytes()[:100])  # truncated
    baseline.write_text("{}")
    args = ["domain", "--remove", "biology", "--out"]
    res = resect([*args, str(tmp_path / "healed")], cache, tmp_path)
    assert res.returncode in (0, 1), res.stderr
    assert "discarding a damaged statistics cache entry" in res.stderr and "discarding a damaged baseline cache entry" in res.stderr
    assert ExpertMask.load(tmp_path / "healed" / "mask.json") == ExpertMask.load(reference / "mask.json")

    warm = resect([*args, str(tmp_path / "warm")], cache, tmp_path)  # the healed entries serve the next run
    assert "discarding" not in warm.stderr and "profiling:" not in warm.stderr and "evaluating the source model" not in warm.stderr
    cold = resect([*args, str(tmp_path / "cold"), "--no-cache"], cache, tmp_path)
    assert "profiling:" in cold.stderr and "evaluating the source model" in cold.stderr, cold.stderr
    assert ExpertMask.load(tmp_path / "cold" / "mask.json") == ExpertMask.load(reference / "mask.json")
