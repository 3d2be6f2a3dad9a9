"""Hostile inputs against the resect command line: every case prepares its inputs in a fresh
folder, runs ONE resect command there as a subprocess and checks the rules every command keeps.

The rules (README "Bad input", docs/configuration.md "Exit codes"):
- bad input exits 2: never 1 (a breached gate) and never 0 ("wrong exit-0");
- stderr holds exactly one line starting with `error:` (lines starting with `WARNING` may come too;
  progress lines before the error are allowed, nothing after it);
- no `Traceback`, and no "unexpected" (resect's wording for an error it could not name);
- every file that existed before is byte-identical afterwards and nothing was added or removed in
  the case folder ("leftovers"), except, when the case expects success, the declared output.
  A file the user owns is never deleted or changed, whatever the exit code.

    .venv/bin/python benchmarks/hostile_inputs.py              # the whole battery (about 10-15 min, 2 cores)
    .venv/bin/python benchmarks/hostile_inputs.py --only apply  # cases whose name holds 'apply'
    .venv/bin/python benchmarks/hostile_inputs.py --list

Exits 1 when any rule was broken. Every command runs offline (HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1) with a private RESECT_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
MASK = {"format": "resect.mask/v1", "moe_experts": 16, "num_groups": 2, "experts": {"0": [1, 2]}}
BIG = 80 << 20  # sparse files above the 64 MiB bounds
HUGE_INT = 2**64
FAST = ["--dry-run", "--max-tokens-per-label", "300", "--limit", "8"]  # an edit of the built-in model that starts quickly
SEARCH = ["domain", "--remove", "law", "--search", "2", "--dry-run", "--limit", "8", "--max-tokens-per-label", "300"]
DEAD_PID = 4_000_000  # above Linux's pid_max: no such process

WORK = FIXTURES = CACHE = Path()  # set by main(): one private folder for fixtures, caches and cases


def set_work(path: Path) -> None:
    global WORK, FIXTURES, CACHE
    WORK, FIXTURES, CACHE = path, path / "fixtures", path / "cache"


def resect_argv() -> list[str]:
    script = Path(sys.executable).parent / "resect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "resect"]


def base_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RESECT_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env


# ------------------------------------------------------------------------------ fixtures (built once)


def _prep(args: list, cwd: Path, cache: Path = CACHE) -> None:
    proc = subprocess.run(resect_argv() + [str(a) for a in args], cwd=cwd, env=base_env(cache), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"'resect {' '.join(map(str, args))}' failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")


FAILED: dict[str, str] = {}  # fixtures that could not be built (not retried for every case)


def fixture(name: str) -> Path:
    if name in FAILED:
        raise RuntimeError(FAILED[name])
    try:
        return _fixture(name)
    except Exception as exc:
        FAILED[name] = f"fixture {name}: {exc}"
        raise


@functools.cache
def _fixture(name: str) -> Path:
    """ck (tiny sharded), hub (tiny hub-like), ed (ck edited with MASK), stats (ck profiled on the
    corpus), search-cache (a cache after a --search dry run of the built-in model)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / name
    if path.exists():
        return path
    from resect.model.tiny import build_tiny_checkpoint

    if name == "ck":
        build_tiny_checkpoint(path, decompose="vertical", seed=0)
    elif name == "hub":
        build_tiny_checkpoint(path, hub_like=True)
    elif name == "ed":
        shutil.copytree(fixture("ck"), FIXTURES / "src-ck", dirs_exist_ok=True)
        (FIXTURES / "m.json").write_text(json.dumps(MASK))
        _prep(["apply", "src-ck", "--mask", "m.json", "--out", name], FIXTURES)
    elif name == "stats.safetensors":
        shutil.copytree(fixture("ck"), FIXTURES / "src-ck", dirs_exist_ok=True)
        write_corpus(FIXTURES, "c.jsonl")
        _prep(["profile", "src-ck", "--corpus", "c.jsonl", "--out", name], FIXTURES)
    elif name == "search-cache":
        _prep(SEARCH, FIXTURES, cache=path)
    return path


# ------------------------------------------------------------------------------ input builders


def put(d: Path, name: str | bytes, data: str | bytes = b"") -> Path:
    """Write a file (str or bytes) under d, parents made; a bytes name may hold any bytes."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(d), name if isinstance(name, bytes) else os.fsencode(name))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sparse(d: Path, name: str, size: int = BIG, head: bytes = b"") -> Path:
    path = put(d, name, head)
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return path


def link(d: Path, name: str, target: str) -> Path:
    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def ck(d: Path, name: str = "ck", src: str = "ck", **config) -> Path:
    """A copy of a fixture checkpoint; keyword arguments set config.json keys (DROP removes one)."""
    path = d / name
    shutil.copytree(fixture(src), path, symlinks=True)
    if config:
        data = json.loads((path / "config.json").read_text())
        for key, value in config.items():
            if value is DROP:
                data.pop(key, None)
            else:
                data[key] = value
        (path / "config.json").write_text(json.dumps(data, indent=2))
    return path


DROP = object()


def ed(d: Path, name: str = "ed") -> Path:
    path = d / name
    shutil.copytree(fixture("ed"), path, symlinks=True)  # copy2 keeps the times the marker records
    return path


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def mask(d: Path, name: str = "m.json", data=None) -> Path:
    data = MASK if data is None else data
    return put(d, name, data if isinstance(data, (str, bytes)) else json.dumps(data))


def write_corpus(d: Path, name: str = "c.jsonl", rows=None, labels=("a", "b"), docs: int = 12) -> Path:
    if rows is None:
        rows = [{"text": f"The quick brown fox {i} jumps over the lazy dog. " * 3, "label": lab} for i in range(docs) for lab in labels]
    if isinstance(rows, (str, bytes)):
        return put(d, name, rows)
    return put(d, name, "".join(json.dumps(r) + "\n" for r in rows))


def stats(d: Path, name: str = "s.safetensors") -> Path:
    path = d / name
    shutil.copy2(fixture("stats.safetensors"), path)
    return path


def stats_with(d: Path, name: str = "s.safetensors", *, tensor=None, **meta) -> Path:
    """Statistics rewritten with changed metadata or sums (tensor: a function of the sums)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(fixture("stats.safetensors"), "pt") as fh:
        tensors, metadata = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())
    metadata.update(meta)
    if tensor is not None:
        tensors["sums"] = tensor(tensors["sums"])
    save_file(tensors, d / name, metadata=metadata)
    return d / name


def prompts(d: Path, name: str = "p.jsonl", data: str | bytes = '{"prompt": "hello there"}\n') -> Path:
    return put(d, name, data)


def recipe(d: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    return put(d, name, text)


def deep_json(n: int = 100_000) -> str:
    return "[" * n + "]" * n


def marker_of(path: Path) -> Path:
    return path / ".resect-output" if path.is_dir() else path.parent / f".{path.name}.resect-output"


# ------------------------------------------------------------------------------ the cases


def cmd(*args, ok: bool | str = False, outputs=(), fsize=None, mem=None, must_name=(), must_not=(), cache=None, extra=(), bg=None,
        watch_root=False, timeout=TIMEOUT) -> dict:
    """One resect command. ok: False (bad input, refused), True (must succeed: only `outputs`
    may appear or change), "either" (0 with only `outputs`, or a clean refusal). fsize/mem: an
    RLIMIT_FSIZE/RLIMIT_AS for the command. must_name / must_not: text its error line must (not) hold. cache: its
    own RESECT_CACHE_DIR. extra: folders outside the case folder it must leave as they are. bg: a
    first writer started before it (see run_case)."""
    return dict(args=[a if isinstance(a, bytes) else str(a) for a in args], ok=ok, outputs=list(outputs), fsize=fsize, mem=mem,
                must_name=list(must_name), must_not=list(must_not), cache=cache, extra=list(extra), bg=bg, watch_root=watch_root, timeout=timeout)  # fmt: skip


CASES: list[tuple[str, object]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn

    return register


def add(name: str, fn) -> None:
    CASES.append((name, fn))


# --- outputs that already exist and belong to the user (with and without --force) ---------------


def _user_folder(d: Path, name: str = "out") -> Path:
    put(d, f"{name}/notes.txt", "my notes\n")
    return d / name


APPLY = lambda d: ["apply", ck(d), "--mask", mask(d)]  # noqa: E731

for force in ([], ["--force"]):
    tag = "-force" if force else ""
    add(f"apply/out-user-folder{tag}", lambda d, f=force: cmd(*APPLY(d), "--out", _user_folder(d), *f))
    add(f"apply/out-user-file{tag}", lambda d, f=force: cmd(*APPLY(d), "--out", put(d, "out", "mine\n"), *f))
    add(f"apply/out-symlink-to-user-folder{tag}", lambda d, f=force: (_user_folder(d, "real"), cmd(*APPLY(d), "--out", link(d, "out", "real"), *f))[1])
    add(f"mask-union/out-user-file{tag}", lambda d, f=force: cmd("mask", "union", mask(d), "--out", put(d, "u.json", "mine\n"), *f))
    add(f"select/out-user-file{tag}", lambda d, f=force: cmd("select", "--stats", stats(d), "--rule", "skew", "--target", "a",
                                                             "--min-tokens", "1", "--out", put(d, "sel.json", "mine\n"), *f))
    add(f"profile/out-user-file{tag}", lambda d, f=force: cmd("profile", ck(d), "--corpus", write_corpus(d), "--out",
                                                              put(d, "s.safetensors", "mine\n"), *f))
    add(f"world-generate/out-user-folder{tag}", lambda d, f=force: cmd("world", "generate", "--out", _user_folder(d), *f))
    add(f"ppl-tasks/out-user-folder{tag}", lambda d, f=force: cmd("ppl-tasks", write_corpus(d), _user_folder(d), *f))

add("eval/out-user-file-force", lambda d: cmd("eval", ck(d), "--tasks", "world_biology", "--limit", "2", "--out", put(d, "r.json", "mine\n"), "--force"))
add("toxicity-eval/out-user-file-force", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d), "--samples", "1",
                                                      "--max-new-tokens", "2", "--out", put(d, "t.json", "mine\n"), "--force"))
add("verify/default-out-user-folder-force", lambda d: (_user_folder(d, "resect-verify"),
                                                      cmd("verify", ed(d), "--target-tasks", "world_biology", "--min-target-drop", "1",
                                                          "--limit", "2", "--force"))[1])
add("domain/out-user-folder-force", lambda d: cmd("domain", "--remove", "biology", "--out", _user_folder(d), "--force"))
add("run/out-user-folder-force", lambda d: cmd("run", "world-domain", "target=biology", f"out={_user_folder(d)}", "force=true"))


@case("apply/out-marker-symlink-force")
def _(d):
    real = ed(d, "real")
    out = _user_folder(d)
    os.symlink(os.path.abspath(real / ".resect-output"), out / ".resect-output")
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-marker-garbage-force")
def _(d):
    out = _user_folder(d)
    put(out, ".resect-output", b"\x00garbage{")
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-marker-huge-force")
def _(d):
    out = _user_folder(d)
    sparse(out, ".resect-output", head=b'{"written_by": "resect", "kind": "checkpoint", "files": {}}   ')
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-marker-claims-run-force")
def _(d):
    out = ed(d, "out")
    edit_json(out / ".resect-output", lambda m: m.update(kind="run"))
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-marker-claims-checkpoint-lists-nothing-force")
def _(d):
    out = _user_folder(d)
    put(out, ".resect-output", json.dumps({"written_by": "resect", "kind": "checkpoint", "files": {}}))
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-resect-output-plus-user-file-force")
def _(d):
    out = ed(d, "out")
    put(out, "my-eval-notes.md", "keep me\n")
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-resect-output-user-edited-readme-force")
def _(d):
    out = ed(d, "out")
    with open(out / "README.md", "a") as fh:
        fh.write("my addition\n")
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-resect-output-user-subfolder-force")
def _(d):
    out = ed(d, "out")
    put(out, "runs/log.txt", "keep me\n")
    return cmd(*APPLY(d), "--out", out, "--force")


@case("apply/out-genuine-resect-output-force")  # the control: replacing resect's own output works
def _(d):
    return cmd(*APPLY(d), "--out", ed(d, "out"), "--force", ok=True, outputs=["out"])


@case("apply/out-genuine-resect-output-no-force")
def _(d):
    return cmd(*APPLY(d), "--out", ed(d, "out"))


@case("apply/out-parent-is-user-file")
def _(d):
    return cmd(*APPLY(d), "--out", put(d, "file", "mine\n") / "ed")


@case("apply/out-lock-is-user-file")
def _(d):
    put(d, ".ed.resect-lock", "my file, not a lock\n")
    return cmd(*APPLY(d), "--out", d / "ed")


@case("apply/out-lock-is-symlink-to-user-file")
def _(d):
    put(d, "precious.txt", "mine\n")
    link(d, ".ed.resect-lock", "precious.txt")
    return cmd(*APPLY(d), "--out", d / "ed")


@case("apply/out-user-folder-named-like-aside")  # a user's folder with resect's 'moved aside' name and a file of theirs
def _(d):
    old = ed(d, f".ed.resect-old-{DEAD_PID}")
    put(old, "my-notes.md", "keep me\n")
    return cmd(*APPLY(d), "--out", d / "ed", ok="either", outputs=["ed"])


@case("mask-union/out-marker-symlink-force")
def _(d):
    real = mask(d, "real.json")
    subprocess.run(resect_argv() + ["mask", "union", str(real), "--out", "theirs.json"], cwd=d, env=base_env(CACHE), capture_output=True)
    out = put(d, "u.json", "mine\n")
    os.symlink(".theirs.json.resect-output", d / ".u.json.resect-output")
    return cmd("mask", "union", mask(d), "--out", out, "--force")


@case("mask-union/out-marker-garbage-force")
def _(d):
    out = put(d, "u.json", "mine\n")
    put(d, ".u.json.resect-output", "{not json")
    return cmd("mask", "union", mask(d), "--out", out, "--force")


@case("mask-union/out-marker-claims-stats-force")
def _(d):
    out = put(d, "u.json", "mine\n")
    put(d, ".u.json.resect-output", json.dumps({"written_by": "resect", "kind": "stats", "files": {}}))
    return cmd("mask", "union", mask(d), "--out", out, "--force")


def _resect_mask(d: Path, name: str = "u.json") -> Path:
    src = mask(d, "src.json")
    subprocess.run(resect_argv() + ["mask", "union", str(src), "--out", name], cwd=d, env=base_env(CACHE), capture_output=True, check=True)
    return d / name


@case("mask-union/out-resect-mask-user-edited-force")
def _(d):
    out = _resect_mask(d)
    out.write_text(out.read_text().replace("[1, 2]", "[1, 2, 3]").replace("[1,2]", "[1,2,3]") + " ")
    return cmd("mask", "union", mask(d), "--out", out, "--force")


@case("mask-union/out-genuine-resect-mask-force")
def _(d):
    out = _resect_mask(d)
    return cmd("mask", "union", mask(d), "--out", out, "--force", ok=True, outputs=["u.json"])


@case("mask-union/out-marker-is-folder-force")
def _(d):
    out = put(d, "u.json", "mine\n")
    (d / ".u.json.resect-output").mkdir()
    return cmd("mask", "union", mask(d), "--out", out, "--force")


@case("profile/partial-is-user-file-resume")
def _(d):
    put(d, "s.safetensors.partial", "my own file\n")
    return cmd("profile", ck(d), "--corpus", write_corpus(d), "--out", "s.safetensors", "--resume")


@case("profile/partial-is-user-file")
def _(d):
    put(d, "s.safetensors.partial", "my own file\n")
    return cmd("profile", ck(d), "--corpus", write_corpus(d), "--out", "s.safetensors", ok="either", outputs=["s.safetensors"])


# --- outputs that equal, contain or lie inside an input ---------------------------------------------

add("apply/out-is-model", lambda d: cmd(*APPLY(d), "--out", "ck", "--force"))
add("apply/out-inside-model", lambda d: cmd(*APPLY(d), "--out", "ck/edited"))
add("apply/out-contains-inputs", lambda d: cmd(*APPLY(d), "--out", ".", "--force"))
add("apply/out-is-mask", lambda d: cmd(*APPLY(d), "--out", "m.json", "--force"))
add("apply/out-via-symlink-to-model", lambda d: (ck(d), link(d, "alias", "ck"), cmd("apply", "alias", "--mask", mask(d), "--out", "ck", "--force"))[2])
add("apply/model-via-symlink-out-its-target", lambda d: (ck(d, "real"), link(d, "ck", "real"), cmd("apply", "ck", "--mask", mask(d), "--out", "real/x"))[2])
add("mask-union/out-is-input", lambda d: cmd("mask", "union", mask(d), "--out", "m.json", "--force"))
add("mask-union/out-hardlink-of-input", lambda d: (mask(d), os.link(d / "m.json", d / "h.json"), cmd("mask", "union", "m.json", "--out", "h.json", "--force"))[2])
add("select/out-is-stats", lambda d: cmd("select", "--stats", stats(d), "--rule", "skew", "--target", "a", "--out", "s.safetensors", "--force"))
add("profile/out-is-corpus", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d), "--out", "c.jsonl", "--force"))
add("profile/out-inside-model", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d), "--out", "ck/stats.safetensors"))
add("profile/out-inside-corpus-folder", lambda d: (put(d, "corp/a/1.txt", "alpha text " * 20), put(d, "corp/b/1.txt", "beta text " * 20),
                                                   cmd("profile", ck(d), "--corpus", "corp", "--out", "corp/s.safetensors"))[2])
add("eval/out-is-config", lambda d: cmd("eval", ck(d), "--tasks", "world_biology", "--limit", "2", "--out", "ck/config.json", "--force"))
add("toxicity-eval/out-is-prompts", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d), "--samples", "1", "--out", "p.jsonl", "--force"))
add("ppl-tasks/out-is-corpus", lambda d: cmd("ppl-tasks", write_corpus(d), "c.jsonl"))
add("ppl-tasks/out-contains-corpus", lambda d: cmd("ppl-tasks", write_corpus(d, "held/c.jsonl"), "held"))
add("verify/out-is-edited", lambda d: cmd("verify", ed(d), "--target-tasks", "world_biology", "--min-target-drop", "1", "--out", "ed", "--force"))
add("verify/out-inside-baseline", lambda d: cmd("verify", ed(d), "--baseline", ck(d), "--target-tasks", "world_biology", "--min-target-drop", "1",
                                                "--out", "ck/verify"))
GATE = ["--target-tasks", "world_biology", "--min-target-drop", "1", "--max-general-drop", "1"]
add("domain/out-is-corpus", lambda d: cmd("domain", ck(d), "--remove", "a", "--corpus", write_corpus(d), *GATE, "--out", "c.jsonl", "--force"))
add("domain/out-inside-model", lambda d: cmd("domain", ck(d), "--remove", "a", "--corpus", write_corpus(d), *GATE, "--out", "ck/run"))
add("domain/out-contains-corpus", lambda d: cmd("domain", ck(d), "--remove", "a", "--corpus", write_corpus(d, "data/c.jsonl"), *GATE, "--out", "data", "--force"))
add("run/out-is-recipe", lambda d: cmd("run", recipe(d, "kind: domain\ntarget: biology\n"), "out=r.yaml", "force=true"))
add("world-generate/out-is-cwd", lambda d: (write_corpus(d), cmd("world", "generate", "--out", "."))[1])

# --- names read from files that lead outside their folder ----------------------------------------


def _index_names(d: Path, name_for) -> Path:
    model = ck(d)
    outside = d / "outside"
    outside.mkdir()
    for shard in model.glob("model-*.safetensors"):
        shutil.copy2(shard, outside / shard.name)
    edit_json(model / "model.safetensors.index.json", lambda ix: ix.update(weight_map={k: name_for(v, outside) for k, v in ix["weight_map"].items()}))
    return model


for cmd_name in ("info", "apply", "profile"):
    def _run(d, model, c=cmd_name):
        if c == "info":
            return cmd("info", model)
        if c == "apply":
            return cmd("apply", model, "--mask", mask(d), "--out", "ed")
        return cmd("profile", model, "--corpus", write_corpus(d), "--out", "s.safetensors")

    add(f"{cmd_name}/index-names-parent-path", lambda d, r=_run: r(d, _index_names(d, lambda v, o: f"../outside/{v}")))
    add(f"{cmd_name}/index-names-absolute-path", lambda d, r=_run: r(d, _index_names(d, lambda v, o: str(o / v))))

add("apply/index-names-dotdot-inside", lambda d: cmd("apply", _index_names(d, lambda v, o: f"./../ck/{v}"), "--mask", mask(d), "--out", "ed"))
add("apply/index-names-nul", lambda d: cmd("apply", _index_names(d, lambda v, o: v + "\0.x"), "--mask", mask(d), "--out", "ed"))
add("apply/index-names-backslash", lambda d: cmd("apply", _index_names(d, lambda v, o: "..\\outside\\" + v), "--mask", mask(d), "--out", "ed"))


@case("apply/shard-is-symlink-outside")
def _(d):
    model = ck(d)
    outside = d / "outside"
    outside.mkdir()
    shard = sorted(model.glob("model-*.safetensors"))[0]
    shutil.move(shard, outside / shard.name)
    os.symlink(os.path.abspath(outside / shard.name), shard)
    return cmd("apply", model, "--mask", mask(d), "--out", "ed", ok="either", outputs=["ed"])


def _mask_file(value):
    def change(cfg):
        cfg["resect"]["mask"]["file"] = value

    return change


for label, value in (("parent-path", "../../etc/passwd"), ("absolute", "/etc/passwd"), ("dot", "."), ("nul", "resect_mask.json\0")):
    add(f"info/edited-mask-file-{label}", lambda d, v=value: (edit_json(ed(d) / "config.json", _mask_file(v)), cmd("info", "ed"))[1])
    add(f"apply/edited-mask-file-{label}", lambda d, v=value: (edit_json(ed(d) / "config.json", _mask_file(v)),
                                                               cmd("apply", "ed", "--mask", mask(d), "--out", "ed2"))[1])
add("verify/edited-mask-file-parent-path", lambda d: (edit_json(ed(d) / "config.json", _mask_file("../../etc/passwd")),
                                                      cmd("verify", "ed", "--target-tasks", "world_biology", "--min-target-drop", "1", "--limit", "2"))[1])
add("eval/edited-mask-file-parent-path", lambda d: (edit_json(ed(d) / "config.json", _mask_file("../../etc/passwd")),
                                                    cmd("eval", "ed", "--tasks", "world_biology", "--limit", "2"))[1])
add("verify/edited-source-names-etc", lambda d: (edit_json(ed(d) / "config.json", lambda c: c["resect"].update(source="/etc")),
                                                 cmd("verify", "ed", "--target-tasks", "world_biology", "--min-target-drop", "1", "--limit", "2"))[1])


@case("apply/edited-mask-symlink-outside")
def _(d):
    model = ed(d)
    mask(d, "outside.json")
    (model / "resect_mask.json").unlink()
    os.symlink(os.path.abspath(d / "outside.json"), model / "resect_mask.json")
    return cmd("apply", model, "--mask", mask(d), "--out", "ed2", ok="either", outputs=["ed2"])


for label_name, label in (("parent", "../escape"), ("absolute", None), ("slash", "a/b")):
    add(f"ppl-tasks/label-{label_name}-path", lambda d, lab=label: cmd("ppl-tasks", write_corpus(d, labels=(lab or str(d / "escape"), "b")), "pt",
                                                                       ok="either", outputs=["pt"]))
add("ppl-tasks/prefix-parent-path", lambda d: cmd("ppl-tasks", write_corpus(d), "pt", "--prefix", "../escape", ok="either", outputs=["pt"]))

# --- symlink loops as inputs and outputs ----------------------------------------------------------

LOOP = lambda d, name="loop": link(d, name, name)  # noqa: E731


def _two_loop(d: Path) -> Path:
    link(d, "la", "lb")
    return link(d, "lb", "la")


add("info/model-symlink-loop", lambda d: cmd("info", LOOP(d)))
add("apply/model-symlink-loop", lambda d: cmd("apply", LOOP(d), "--mask", mask(d), "--out", "ed"))
add("apply/mask-symlink-loop", lambda d: cmd("apply", ck(d), "--mask", LOOP(d), "--out", "ed"))
add("apply/out-symlink-loop-force", lambda d: cmd(*APPLY(d), "--out", LOOP(d), "--force"))
add("apply/out-inside-symlink-loop", lambda d: cmd(*APPLY(d), "--out", LOOP(d) / "ed"))
add("apply/out-two-link-loop", lambda d: cmd(*APPLY(d), "--out", _two_loop(d)))
add("apply/out-dangling-symlink", lambda d: cmd(*APPLY(d), "--out", link(d, "out", "elsewhere/target")))
add("mask-info/symlink-loop", lambda d: cmd("mask", "info", LOOP(d)))
add("mask-union/out-symlink-loop-force", lambda d: cmd("mask", "union", mask(d), "--out", LOOP(d), "--force"))
add("mask-union/out-dangling-symlink", lambda d: cmd("mask", "union", mask(d), "--out", link(d, "u.json", "elsewhere.json")))
add("select/stats-symlink-loop", lambda d: cmd("select", "--stats", LOOP(d), "--rule", "skew", "--target", "a", "--out", "sel.json"))
add("select/out-two-link-loop", lambda d: cmd("select", "--stats", stats(d), "--rule", "skew", "--target", "a", "--out", _two_loop(d)))
add("profile/corpus-symlink-loop", lambda d: cmd("profile", ck(d), "--corpus", LOOP(d, "c.jsonl"), "--out", "s.safetensors"))
add("profile/out-symlink-loop", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d), "--out", LOOP(d)))
add("eval/out-symlink-loop", lambda d: cmd("eval", ck(d), "--tasks", "world_biology", "--limit", "2", "--out", LOOP(d)))
add("toxicity-eval/prompts-symlink-loop", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", LOOP(d, "p.jsonl"), "--samples", "1"))
add("verify/out-symlink-loop", lambda d: cmd("verify", ed(d), "--target-tasks", "world_biology", "--min-target-drop", "1", "--out", LOOP(d)))
add("ppl-tasks/out-symlink-loop", lambda d: cmd("ppl-tasks", write_corpus(d), LOOP(d)))
add("ppl-tasks/corpus-symlink-loop", lambda d: cmd("ppl-tasks", LOOP(d, "c.jsonl"), "pt"))
add("world-generate/out-symlink-loop", lambda d: cmd("world", "generate", "--out", LOOP(d)))
add("run/recipe-symlink-loop", lambda d: cmd("run", LOOP(d, "r.yaml")))
add("mirror/out-symlink-loop", lambda d: cmd("mirror", "paper-mmlu-domain", "--out", LOOP(d)))
add("experts/model-symlink-loop", lambda d: cmd("experts", LOOP(d), "--expert", "0/1", "--corpus", write_corpus(d)))

# --- non-UTF-8 bytes ------------------------------------------------------------------------------

LATIN1 = "Caf\xe9 na\xefve text about the fox. ".encode("latin-1") * 5
add("profile/corpus-jsonl-latin1", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows=b'{"text": "' + LATIN1 + b'", "label": "a"}\n'), "--out", "s.safetensors"))
add("profile/corpus-folder-latin1-txt", lambda d: (put(d, "corp/a/1.txt", LATIN1), put(d, "corp/b/1.txt", "fine text " * 30),
                                                   cmd("profile", ck(d), "--corpus", "corp", "--out", "s.safetensors"))[2])
add("profile/corpus-label-files-latin1", lambda d: (put(d, "corp/a.txt", "fine text " * 30), put(d, "corp/b.txt", LATIN1),
                                                    cmd("profile", ck(d), "--corpus", "corp", "--out", "s.safetensors"))[2])
add("profile/corpus-lone-surrogate-text", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows='{"text": "fox \\udcff jumps", "label": "a"}\n'
                                                                                                           '{"text": "dog sleeps", "label": "b"}\n'),
                                                        "--out", "s.safetensors", ok="either", outputs=["s.safetensors"]))
add("profile/corpus-lone-surrogate-label", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, labels=("a\udcff", "b")), "--out", "s.safetensors",
                                                         ok="either", outputs=["s.safetensors"]))
add("profile/corpus-folder-non-utf8-label-name", lambda d: (put(d, b"corp/lab\xff/1.txt", "alpha text " * 30), put(d, "corp/b/1.txt", "beta text " * 30),
                                                            cmd("profile", ck(d), "--corpus", "corp", "--out", "s.safetensors", ok="either", outputs=["s.safetensors"]))[2])
add("profile/corpus-yaml-latin1", lambda d: (write_corpus(d), cmd("profile", ck(d), "--corpus", put(d, "c.yaml", b"name: caf\xe9\nsources:\n  - path: c.jsonl\n"),
                                                                  "--out", "s.safetensors"))[1])
add("profile/corpus-utf16", lambda d: cmd("profile", ck(d), "--corpus", put(d, "c.jsonl", '{"text": "fox", "label": "a"}\n'.encode("utf-16")), "--out", "s.safetensors"))
add("toxicity-eval/prompts-latin1", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d, data=b'{"prompt": "caf\xe9"}\n'), "--samples", "1"))
add("toxicity-eval/prompts-lone-surrogate", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d, data='{"prompt": "hi \\udcff"}\n'),
                                                          "--samples", "1", "--max-new-tokens", "2", "--out", "t.json", ok="either", outputs=["t.json"]))
add("run/recipe-latin1", lambda d: cmd("run", recipe(d, b"kind: domain\ntarget: biolog\xeda\n")))
add("mirror/recipe-latin1", lambda d: cmd("mirror", recipe(d, b"kind: domain\ntarget: biolog\xeda\n"), "--out", "mir", "--dry-run"))
add("info/config-latin1", lambda d: (put(ck(d), "config.json", (ck(d, "x") / "config.json").read_bytes().replace(b'"monet"', b'"mon\xe9t"')), cmd("info", "ck"))[1])
add("mask-info/latin1", lambda d: cmd("mask", "info", mask(d, data=json.dumps(MASK).replace("resect.mask/v1", "r\xe9sect").encode("latin-1"))))
add("info/index-latin1", lambda d: (put(ck(d), "model.safetensors.index.json", b'{"weight_map": {"a": "caf\xe9"}}'), cmd("info", "ck"))[1])
add("profile/tokenizer-json-latin1", lambda d: (put(ck(d), "tokenizer.json", b'{"version": "caf\xe9"}'),
                                                cmd("profile", "ck", "--corpus", write_corpus(d), "--out", "s.safetensors"))[1])
add("mask-union/out-non-utf8-name", lambda d: cmd("mask", "union", mask(d), "--out", b"u\xff.json", ok="either", outputs=[os.fsdecode(b"u\xff.json")]))
add("run/override-latin1-value", lambda d: cmd("run", "world-domain", b"target=biolog\xeda"))

# --- huge and deeply nested JSON/YAML, duplicated keys, YAML aliases -------------------------------

add("mask-info/huge-sparse", lambda d: cmd("mask", "info", sparse(d, "m.json", head=b"{")))
add("mask-info/deep-nesting", lambda d: cmd("mask", "info", mask(d, data=deep_json())))
add("mask-info/duplicate-key", lambda d: cmd("mask", "info", mask(d, data=json.dumps(MASK)[:-1] + ', "experts": {"1": [3]}}')))
add("mask-info/dev-zero", lambda d: cmd("mask", "info", link(d, "m.json", "/dev/zero"), mem=4 << 30, timeout=120))
add("info/config-huge-sparse", lambda d: (sparse(ck(d), "config.json", head=b"{"), cmd("info", "ck"))[1])
add("info/config-deep-nesting", lambda d: (put(ck(d), "config.json", '{"a": ' * 50_000 + "1" + "}" * 50_000), cmd("info", "ck"))[1])
add("info/config-duplicate-key", lambda d: (put(ck(d), "config.json", (ck(d, "x") / "config.json").read_text()[:-1] + ', "moe_experts": 4096}'),
                                            cmd("info", "ck"))[1])
add("info/index-huge-sparse", lambda d: (sparse(ck(d), "model.safetensors.index.json", head=b"{"), cmd("info", "ck"))[1])
add("info/index-deep-nesting", lambda d: (put(ck(d), "model.safetensors.index.json", deep_json()), cmd("info", "ck"))[1])
add("info/index-duplicate-weight-map", lambda d: (put(ck(d), "model.safetensors.index.json", (ck(d, "x") / "model.safetensors.index.json").read_text()[:-1]
                                                      + ', "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}'), cmd("info", "ck"))[1])
add("run/recipe-huge-sparse", lambda d: cmd("run", sparse(d, "r.yaml", head=b"kind: domain\n")))
add("run/recipe-deep-nesting", lambda d: cmd("run", recipe(d, "kind: domain\ntarget: biology\ngroups: " + deep_json(20_000) + "\n")))
add("run/recipe-duplicate-key", lambda d: cmd("run", recipe(d, "kind: domain\ntarget: biology\ntarget: law\n")))
add("run/recipe-alias", lambda d: cmd("run", recipe(d, "kind: domain\ntarget: &t biology\ncorpus: *t\n")))
add("run/recipe-billion-laughs", lambda d: cmd("run", recipe(d, "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                                                                "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\nkind: domain\ntarget: *d\n")))
add("run/recipe-merge-key", lambda d: cmd("run", recipe(d, "base: &b {kind: domain}\n<<: *b\ntarget: biology\n")))
add("run/recipe-python-tag", lambda d: cmd("run", recipe(d, "kind: !!python/object/apply:os.system ['touch pwned']\ntarget: biology\n")))
add("run/recipe-is-list", lambda d: cmd("run", recipe(d, "- kind: domain\n")))
add("run/recipe-empty", lambda d: cmd("run", recipe(d, "")))
add("run/override-alias", lambda d: cmd("run", "world-domain", "groups=[&g 1, *g]"))
add("profile/corpus-yaml-alias", lambda d: (write_corpus(d), cmd("profile", ck(d), "--corpus", put(d, "c.yaml", "sources:\n  - &s {path: c.jsonl}\n  - *s\n"),
                                                                 "--out", "s.safetensors"))[1])
add("profile/corpus-yaml-duplicate-key", lambda d: (write_corpus(d), cmd("profile", ck(d), "--corpus",
                                                                         put(d, "c.yaml", "sources:\n  - path: c.jsonl\nsources:\n  - path: /etc/passwd\n"),
                                                                         "--out", "s.safetensors"))[1])
add("profile/corpus-yaml-huge-sparse", lambda d: cmd("profile", ck(d), "--corpus", sparse(d, "c.yaml", head=b"sources:\n"), "--out", "s.safetensors"))
add("profile/corpus-jsonl-huge-sparse", lambda d: cmd("profile", ck(d), "--corpus", sparse(d, "c.jsonl", head=b'{"text": "a", "label": "a"}\n'), "--out", "s.safetensors"))
add("profile/corpus-jsonl-deep-line", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows=deep_json() + "\n"), "--out", "s.safetensors"))
add("profile/corpus-jsonl-duplicate-label", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows='{"text": "fox", "label": "a", "label": "b"}\n'),
                                                          "--out", "s.safetensors"))
add("toxicity-eval/prompts-deep", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d, data=deep_json() + "\n"), "--samples", "1"))
add("toxicity-eval/prompts-duplicate-key", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts",
                                                         prompts(d, data='{"prompt": "a", "prompt": "b"}\n'), "--samples", "1"))
add("profile/tokenizer-json-huge-sparse", lambda d: (sparse(ck(d), "tokenizer.json", head=b"{"), cmd("profile", "ck", "--corpus", write_corpus(d), "--out", "s.safetensors"))[1])
add("apply/mask-huge-binary", lambda d: cmd("apply", ck(d), "--mask", sparse(d, "m.bin", head=b"RESECTMASK1\n"), "--out", "ed"))

# --- out-of-range numbers: command-line options ----------------------------------------------------

SELECT = lambda d, s=None: ["select", "--stats", s or stats(d), "--target", "a", "--min-tokens", "1", "--out", "sel.json"]  # noqa: E731
for opt, val, rule in (("--ratio", "0", "skew"), ("--ratio", "-1", "skew"), ("--ratio", "nan", "skew"), ("--ratio", "inf", "skew-mean"),
                       ("--ratio", "1e309", "skew"), ("--threshold", "2", "correlation"), ("--threshold", "nan", "correlation"),
                       ("--k", "0", "topk"), ("--k", "1.5", "topk"), ("--k", str(HUGE_INT), "topk"), ("--quantile", "1", "quantile"),
                       ("--quantile", "-0.5", "quantile"), ("--min-tokens", "-1", "skew"), ("--top", "-1", "skew"), ("--groups", "5", "skew"),
                       ("--groups", "-1", "skew"), ("--groups", "0.5", "skew"), ("--groups", ",", "skew")):  # fmt: skip
    add(f"select/{opt[2:]}={val}", lambda d, o=opt, v=val, r=rule: cmd(*SELECT(d), "--rule", r, o, v))
add("select/groups=0,0", lambda d: cmd(*SELECT(d), "--rule", "skew", "--groups", "0,0", ok="either", outputs=["sel.json"]))

PROFILE = lambda d: ["profile", ck(d), "--corpus", write_corpus(d), "--out", "s.safetensors"]  # noqa: E731
for opt, val in (("--max-length", "1"), ("--max-length", "0"), ("--max-length", "1e309"), ("--score-window", "0"), ("--checkpoint-every", "0"),
                 ("--max-tokens-per-label", "0"), ("--max-tokens-per-label", "1.5"), ("--seed", "-1"), ("--seed", str(HUGE_INT)),
                 ("--batch-size", "0"), ("--batch-size", "65537"), ("--batch-size", "nan")):  # fmt: skip
    add(f"profile/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*PROFILE(d), o, v))

EVAL = lambda d: ["eval", ck(d), "--tasks", "world_biology"]  # noqa: E731
for opt, val in (("--limit", "0"), ("--limit", "-1"), ("--limit", "nan"), ("--limit", "inf"), ("--batch-size", "0"), ("--seed", str(HUGE_INT))):
    add(f"eval/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*EVAL(d), o, v))

TOXEVAL = lambda d: ["toxicity-eval", ck(d), "--toxicity-prompts", prompts(d)]  # noqa: E731
for opt, val in (("--samples", "0"), ("--max-new-tokens", "0"), ("--temperature", "0"), ("--temperature", "nan"), ("--top-p", "0"),
                 ("--top-p", "1.5"), ("--prompt-limit", "0"), ("--seed", "-1"), ("--samples", "1e309")):  # fmt: skip
    add(f"toxicity-eval/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*TOXEVAL(d), o, v))
for opt, val in (("--top-p", "nan"), ("--temperature", "inf"), ("--max-new-tokens", "70000"), ("--prompt-limit", "-3")):
    add(f"toxicity-eval/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*TOXEVAL(d), o, v))
for opt, val in (("--batch-size", "0"), ("--max-tokens-per-label", "0"), ("--max-tokens-per-label", str(HUGE_INT))):
    add(f"experts/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*EXPERTS(d), "--expert", "0/1", o, v))
add("profile/max-length=2**64", lambda d: cmd(*PROFILE(d), "--max-length", str(HUGE_INT)))
add("verify/prompt-limit=0", lambda d: cmd(*VERIFY(d), "--toxicity-prompts", prompts(d), "--prompt-limit", "0"))
add("verify/max-new-tokens=70000", lambda d: cmd(*VERIFY(d), "--toxicity-prompts", prompts(d), "--max-new-tokens", "70000"))

VERIFY = lambda d: ["verify", ed(d), "--target-tasks", "world_biology", "--min-target-drop", "1"]  # noqa: E731
for opt, val in (("--min-target-drop", "-1"), ("--min-target-drop", "nan"), ("--max-general-drop", "inf"), ("--limit", "-1"), ("--samples", "0"),
                 ("--top-p", "2")):
    add(f"verify/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*VERIFY(d), o, v, "--toxicity-prompts", prompts(d)))

EXPERTS = lambda d: ["experts", ck(d), "--corpus", write_corpus(d)]  # noqa: E731
for opt, val in (("--top", "-1"), ("--context", "5000"), ("--expert", "9/0"), ("--expert", "0/256"), ("--expert", "0/-1"), ("--expert", "0/1.5"),
                 ("--expert", "0/16,0"), ("--expert", "a/b"), ("--expert", f"0/{HUGE_INT}")):  # fmt: skip
    add(f"experts/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd(*EXPERTS(d), *(() if o == "--expert" else ("--expert", "0/1")), o, v))
add("experts/stats-top=-1", lambda d: cmd("experts", "--stats", stats(d), "--label", "a", "--top", "-1"))

for val in ("0", "-1", "1.5"):
    add(f"ppl-tasks/max-docs={val}", lambda d, v=val: cmd("ppl-tasks", write_corpus(d), "pt", "--max-docs", v))
for val in ("-1", str(HUGE_INT), "1.5"):
    add(f"world-generate/seed={val}", lambda d, v=val: cmd("world", "generate", "--out", "w", "--seed", v))

for opt, val in (("--ratio", "0.5"), ("--ratio", "nan"), ("--refine", "-1"), ("--tune", "1.5"), ("--search", "0"), ("--limit", "0"),
                 ("--max-tokens-per-label", "0"), ("--seed", str(HUGE_INT)), ("--batch-size", "0"), ("--min-target-drop", "nan"),
                 ("--max-general-drop", "-1"), ("--groups", "9"), ("--groups", "1.5")):  # fmt: skip
    add(f"domain/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd("domain", "--remove", "biology", *FAST, o, v))
for opt, val in (("--threshold", "1.5"), ("--profile-samples", "0"), ("--samples", "0"), ("--temperature", "-1"), ("--top-p", "2")):
    add(f"toxicity/{opt[2:]}={val}", lambda d, o=opt, v=val: cmd("toxicity", "--dry-run", o, v))
add("language/remove-unknown", lambda d: cmd("language", "--remove", "cobol", "--dry-run"))
add("language/ratio=inf", lambda d: cmd("language", "--remove", "python", "--dry-run", "--ratio", "inf"))

# --- out-of-range numbers and wrong types: recipe keys and key=value overrides ----------------------

for override in ("ratio=.nan", "ratio=nan", f"seed={HUGE_INT}", "seed=1.0e309", "batch_size=1.5", "groups=[0.5]", "groups=1.5", "groups=[-1]",
                 "target=[a, b]", "target=1.5", "toxicity.samples=0", "toxicity.temperature=.inf", "limit=-1", "search=0", "kind=foo",
                 "no_such_key=1", "max_tokens_per_label=-5", "dry_run=yes please", "include_path={a: 1}", "toxicity=[1, 2]", "=5", "ratio",
                 "seed=2020-01-01"):  # fmt: skip
    add(f"run/override-{override}", lambda d, o=override: cmd("run", "world-domain", o))
for text_name, text in (("refine-negative", "refine: -1"), ("tune-inf", "tune: .inf"), ("groups-float", "groups: 1.5"), ("rule-number", "rule: 5"),
                        ("ratio-huge-int", f"ratio: {HUGE_INT**4}"), ("seed-hex-huge", "seed: 0x10000000000000000"), ("limit-yaml-nan", "limit: .NaN"),
                        ("threshold-string", "threshold: 'high'"), ("toxicity-scorer-number", "toxicity: {scorer: 5}"),
                        ("min-target-drop-negative", "min_target_drop: -3"), ("corpus-list", "corpus: [a, b]"), ("mirror-number", "mirror: 1.5")):  # fmt: skip
    add(f"run/recipe-{text_name}", lambda d, t=text: cmd("run", recipe(d, f"kind: domain\ntarget: biology\n{t}\n")))
add("run/recipe-toxicity-top-k-zero", lambda d: cmd("run", recipe(d, "kind: toxicity\ntoxicity: {top_k: 0}\n")))

# --- out-of-range numbers and wrong types in config.json -------------------------------------------

for key, value in (("max_position_embeddings", 0), ("max_position_embeddings", 1), ("max_position_embeddings", -5), ("max_position_embeddings", 1.5),
                   ("max_position_embeddings", HUGE_INT), ("num_key_value_heads", 0), ("num_key_value_heads", 3), ("num_key_value_heads", 1.5),
                   ("rms_norm_eps", 0), ("rms_norm_eps", -1), ("rms_norm_eps", "1e-6"), ("bos_token_id", 320), ("bos_token_id", -1),
                   ("bos_token_id", 1.5), ("eos_token_id", [1, 999]), ("pad_token_id", True), ("vocab_size", 0), ("hidden_size", 33),
                   ("moe_experts", 2**40), ("num_hidden_layers", 0), ("moe_topk", 16), ("rope_theta", -1), ("tie_word_embeddings", "yes"),
                   ("moe_decompose", "diagonal"), ("hidden_act", "gelu"), ("moe_groups", 0)):  # fmt: skip
    add(f"info/config-{key}={json.dumps(value)}", lambda d, k=key, v=value: (ck(d, **{k: v}), cmd("info", "ck"))[1])
add("info/config-1e309", lambda d: (put(ck(d), "config.json", (ck(d, "x") / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e309')),
                                    cmd("info", "ck"))[1])
add("info/config-NaN-literal", lambda d: (put(ck(d), "config.json", (ck(d, "x") / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN')),
                                          cmd("info", "ck"))[1])
add("apply/config-num_key_value_heads=3", lambda d: cmd("apply", ck(d, num_key_value_heads=3), "--mask", mask(d), "--out", "ed"))
add("profile/config-max_position_embeddings=2", lambda d: cmd("profile", ck(d, max_position_embeddings=2), "--corpus", write_corpus(d),
                                                              "--out", "s.safetensors", ok="either", outputs=["s.safetensors"]))
add("profile/config-rope_scaling-factor-negative", lambda d: cmd("profile", ck(d, rope_scaling={"type": "linear", "factor": -1}), "--corpus",
                                                                 write_corpus(d), "--out", "s.safetensors"))
add("profile/config-rope_scaling-garbage", lambda d: cmd("profile", ck(d, rope_scaling={"rope_type": "no-such"}), "--corpus",
                                                         write_corpus(d), "--out", "s.safetensors"))
add("profile/config-torch_dtype-int8", lambda d: cmd("profile", ck(d, torch_dtype="int8"), "--corpus", write_corpus(d), "--out", "s.safetensors",
                                                     ok="either", outputs=["s.safetensors"]))
add("eval/config-eos_token_id=[]", lambda d: cmd("eval", ck(d, eos_token_id=[]), "--tasks", "world_biology", "--limit", "2", "--out", "r.json",
                                                 ok="either", outputs=["r.json"]))
add("toxicity-eval/config-eos-missing", lambda d: cmd("toxicity-eval", ck(d, eos_token_id=None, bos_token_id=None), "--toxicity-prompts", prompts(d),
                                                      "--samples", "1", "--max-new-tokens", "2", "--out", "t.json", ok="either", outputs=["t.json"]))

# --- masks, statistics, shards and labels with wrong numbers ---------------------------------------

for label, change in (("id-fraction", {"0": [1.5]}), ("id-negative", {"0": [-1]}), ("id-beyond-E2", {"0": [256]}), ("id-2**64", {"0": [HUGE_INT]}),
                      ("id-bool", {"0": [True]}), ("group-beyond", {"5": [1]}), ("group-negative", {"-1": [1]}), ("group-fraction", {"0.5": [1]}),
                      ("ids-not-list", {"0": "1,2"})):  # fmt: skip
    add(f"apply/mask-{label}", lambda d, c=change: cmd("apply", ck(d), "--mask", mask(d, data={**MASK, "experts": c}), "--out", "ed"))
add("apply/mask-moe_experts-1e309", lambda d: cmd("apply", ck(d), "--mask", mask(d, data=json.dumps(MASK).replace('"moe_experts": 16', '"moe_experts": 1e309')), "--out", "ed"))
add("apply/mask-num_groups-zero", lambda d: cmd("apply", ck(d), "--mask", mask(d, data={**MASK, "num_groups": 0, "experts": {}}), "--out", "ed"))
add("apply/mask-other-geometry", lambda d: cmd("apply", ck(d), "--mask", mask(d, data={**MASK, "moe_experts": 8}), "--out", "ed"))
add("mask-union/geometries-differ", lambda d: cmd("mask", "union", mask(d), mask(d, "b.json", {**MASK, "num_groups": 3}), "--out", "u.json"))
add("mask-info/binary-truncated", lambda d: cmd("mask", "info", put(d, "m.bin", b"RESECTMASK1\n\xff\xff\xff\x7f{")))

add("select/stats-truncated", lambda d: cmd(*SELECT(d, put(d, "s.safetensors", fixture("stats.safetensors").read_bytes()[:300])), "--rule", "skew"))
add("select/stats-header-length-huge", lambda d: cmd(*SELECT(d, put(d, "s.safetensors", (2**62).to_bytes(8, "little") + b"{}")), "--rule", "skew"))
add("select/stats-labels-not-json", lambda d: cmd(*SELECT(d, stats_with(d, labels="[a, b")), "--rule", "skew"))
add("select/stats-labels-numbers", lambda d: cmd(*SELECT(d, stats_with(d, labels="[1.5, 2]", token_counts='{"1.5": 10, "2": 10}')), "--rule", "skew"))
add("select/stats-token-counts-negative", lambda d: cmd(*SELECT(d, stats_with(d, token_counts='{"a": -5, "b": 1945}')), "--rule", "skew"))
add("select/stats-token-counts-nan", lambda d: cmd(*SELECT(d, stats_with(d, token_counts='{"a": NaN, "b": 1945}')), "--rule", "skew"))
add("select/stats-sums-nan", lambda d: cmd(*SELECT(d, stats_with(d, tensor=lambda s: s * float("nan"))), "--rule", "skew"))
add("select/stats-num-groups-lies", lambda d: cmd(*SELECT(d, stats_with(d, num_groups="7")), "--rule", "skew", ok="either", outputs=["sel.json"]))  # the tensors decide
add("select/stats-other-model", lambda d: cmd(*SELECT(d), "--rule", "skew", ck(d, src="hub")))
add("select/stats-is-folder", lambda d: ((d / "s.safetensors").mkdir(), cmd("select", "--stats", "s.safetensors", "--rule", "skew", "--target", "a", "--out", "sel.json"))[1])

add("info/shard-truncated", lambda d: (put(ck(d), "model-00001-of-00002.safetensors", (fixture("ck") / "model-00001-of-00002.safetensors").read_bytes()[:5000]),
                                       cmd("info", "ck"))[1])
add("info/shard-header-length-huge", lambda d: (put(ck(d), "model-00002-of-00002.safetensors", (2**63 - 1).to_bytes(8, "little") + b"{}"), cmd("info", "ck"))[1])
add("info/shard-header-latin1", lambda d: (put(ck(d), "model-00002-of-00002.safetensors", (12).to_bytes(8, "little") + b'{"caf\xe9": 1}'), cmd("info", "ck"))[1])
add("info/shard-header-dims-huge", lambda d: (put(ck(d), "model-00002-of-00002.safetensors", _shard_header({"x": {"dtype": "F32", "shape": [2**62, 2**62],
                                                                                                                     "data_offsets": [0, 4]}})), cmd("info", "ck"))[1])
add("apply/shard-offsets-beyond-file", lambda d: (put(ck(d), "model-00002-of-00002.safetensors", _shard_header({"x": {"dtype": "F32", "shape": [1000],
                                                                                                                      "data_offsets": [0, 4000]}})),
                                                  cmd("apply", "ck", "--mask", mask(d), "--out", "ed"))[1])


def _shard_header(header: dict) -> bytes:
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + b"\0" * 4


add("profile/label-int", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows=[{"text": "fox " * 30, "label": 1}, {"text": "dog " * 30, "label": "b"}]),
                                       "--out", "s.safetensors", ok="either", outputs=["s.safetensors"]))  # whole-number labels are documented as allowed
for label_name, label in (("fraction", 1.5), ("bool", True), ("null", None), ("empty", ""), ("list", ["a"])):
    add(f"profile/label-{label_name}", lambda d, lab=label: cmd("profile", ck(d), "--corpus", write_corpus(d, rows=[{"text": "fox " * 30, "label": lab},
                                                                                                                   {"text": "dog " * 30, "label": "b"}]),
                                                              "--out", "s.safetensors"))
add("ppl-tasks/label-fraction", lambda d: cmd("ppl-tasks", write_corpus(d, rows=[{"text": "fox " * 30, "label": 1.5}]), "pt"))
add("profile/corpus-score-nan", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows='{"text": "fox", "label": "a", "score": NaN}\n'), "--out", "s.safetensors"))
add("profile/corpus-score-1e309", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows='{"text": "fox", "label": "a", "score": 1e309}\n'), "--out", "s.safetensors"))
add("profile/corpus-text-number", lambda d: cmd("profile", ck(d), "--corpus", write_corpus(d, rows=[{"text": 5, "label": "a"}]), "--out", "s.safetensors"))
add("toxicity-eval/prompt-number", lambda d: cmd("toxicity-eval", ck(d), "--toxicity-prompts", prompts(d, data='{"prompt": 1.5, "toxic": "yes"}\n'), "--samples", "1"))
add("domain/corpus-lacks-target", lambda d: cmd("domain", "--remove", "biology", "--corpus", write_corpus(d), *FAST))

# --- damaged caches under RESECT_CACHE_DIR ----------------------------------------------------------


def _damaged_cache(d: Path, glob: str, damage) -> Path:
    cache = d.parent / f"{d.name}-cache"
    shutil.copytree(fixture("search-cache"), cache, symlinks=True)
    files = sorted(cache.glob(glob))
    if not files:
        raise RuntimeError(f"no {glob} in the prepared cache")
    for file in files:
        damage(file)
    return cache


def _truncate(file: Path) -> None:
    with open(file, "r+b") as fh:
        fh.truncate(max(1, file.stat().st_size // 3))


def _append(junk: bytes):
    def damage(file: Path) -> None:
        with open(file, "ab") as fh:
            fh.write(junk)

    return damage


add("cache/stats-truncated", lambda d: cmd(*SEARCH, ok=True, cache=_damaged_cache(d, "stats/*.safetensors", _truncate)))
add("cache/search-journal-truncated", lambda d: cmd(*SEARCH, ok=True, cache=_damaged_cache(d, "search/*.journal", _truncate)))
add("cache/search-journal-appended", lambda d: cmd(*SEARCH, ok=True, cache=_damaged_cache(d, "search/*.journal", _append(b'{"op_code": 4, "worker_id": "x", "trial_id": 99}\n\xff\xfegarbage'))))


@case("cache/baseline-results-truncated")
def _(d):
    cache, model = d.parent / f"{d.name}-cache", ck(d)
    _prep(["eval", model, "--tasks", "world_biology", "--limit", "2"], d, cache=cache)  # fills baselines/
    entries = [f for f in cache.glob("baselines/**/*") if f.is_file()]
    if not entries:
        raise RuntimeError("no baselines/ entry after resect eval")
    for f in entries:
        _truncate(f)
    return cmd("eval", model, "--tasks", "world_biology", "--limit", "2", "--out", "r.json", ok=True, outputs=["r.json"], cache=cache)


add("cache/stats-replaced-by-symlink-loop", lambda d: cmd("domain", "--remove", "law", *FAST, ok=True,
                                                         cache=_damaged_cache(d, "stats/*.safetensors", lambda f: (f.unlink(), os.symlink(f.name, f)))))

# --- mirror: no network, so downloads fail ------------------------------------------------------------

MIRROR = ["mirror", "paper-mmlu-domain"]
add("mirror/out-root-dry-run", lambda d: cmd(*MIRROR, "--out", "/", "--dry-run", watch_root=True))
add("mirror/out-root", lambda d: cmd(*MIRROR, "--out", "/", watch_root=True))
add("mirror/out-checkpoint-dry-run", lambda d: cmd(*MIRROR, "--out", ck(d), "--dry-run"))
add("mirror/out-checkpoint", lambda d: cmd(*MIRROR, "--out", ck(d)))
add("mirror/out-new-nested", lambda d: cmd(*MIRROR, "--out", "a/b/c/mir"))
add("mirror/out-new-nested-dry-run", lambda d: cmd(*MIRROR, "--out", "a/b/c/mir", "--dry-run", ok=True))
add("mirror/out-existing-empty-folder", lambda d: ((d / "mir").mkdir(), cmd(*MIRROR, "--out", "mir"))[1])
add("mirror/out-user-file", lambda d: cmd(*MIRROR, "--out", put(d, "mir", "mine\n")))
add("mirror/out-marker-symlink", lambda d: ((d / "mir").mkdir(), put(d, "real-marker", '{"written_by": "resect", "kind": "mirror"}'),
                                            link(d, "mir/.resect-output", "../real-marker"), cmd(*MIRROR, "--out", "mir"))[3])
add("mirror/out-marker-claims-run", lambda d: (put(d, "mir/.resect-output", '{"written_by": "resect", "kind": "run", "files": {}}'), cmd(*MIRROR, "--out", "mir"))[1])
add("mirror/override-ratio-nan", lambda d: cmd(*MIRROR, "ratio=nan", "--out", "mir"))

# --- two writers of one output at once ---------------------------------------------------------------

add("apply/second-writer", lambda d: cmd(*APPLY(d), "--out", "ed", bg=dict(args=["apply", "ck", "--mask", "m.json", "--out", "ed"], lock=".ed.resect-lock",
                                                                           outputs=["ed"])))
add("apply/second-writer-force", lambda d: cmd(*APPLY(d), "--out", "ed", "--force", bg=dict(args=["apply", "ck", "--mask", "m.json", "--out", "ed"],
                                                                                            lock=".ed.resect-lock", outputs=["ed"])))
add("mask-union/second-writer", lambda d: cmd("mask", "union", mask(d), "--out", "u.json", bg=dict(args=["mask", "union", "m.json", "--out", "u.json"],
                                                                                                   lock=".u.json.resect-lock", outputs=["u.json"])))

# --- a full disk (RLIMIT_FSIZE: writes fail with EFBIG) -------------------------------------------------

add("apply/full-disk", lambda d: cmd(*APPLY(d), "--out", "ed", fsize=2000, must_name=["'ed'"]))
add("apply/full-disk-while-copying-weights", lambda d: cmd("apply", ck(SHM_DIR(d)), "--mask", mask(d), "--out", "ed", fsize=100_000, must_name=["'ed'"], must_not=["model-0000"],
                                                           extra=[SHM_DIR(d)]))
add("mask-union/full-disk", lambda d: cmd("mask", "union", mask(d), "--out", "u.json", fsize=40, must_name=["'u.json'"]))
add("select/full-disk", lambda d: cmd(*SELECT(d), "--rule", "skew", fsize=40, must_name=["'sel.json'"]))
add("profile/full-disk", lambda d: cmd(*PROFILE(d), fsize=4096, must_name=["'s.safetensors'"]))
add("world-generate/full-disk", lambda d: cmd("world", "generate", "--out", "w", fsize=10_000, must_name=["'w'"]))
add("ppl-tasks/full-disk", lambda d: cmd("ppl-tasks", write_corpus(d), "pt", fsize=100, must_name=["'pt'"]))
add("eval/full-disk", lambda d: cmd(*EVAL(d), "--limit", "2", "--out", "r.json", "--no-cache", fsize=2000, must_name=["'r.json'"]))


def SHM_DIR(d: Path) -> Path:
    """A folder on another file system than the case folder (so weights are copied, not linked)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(d).st_dev else d.parent
    path = base / f"resect-hostile-{d.name}"
    path.mkdir(exist_ok=True)
    return path


# ------------------------------------------------------------------------------ running and checking


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (links not followed): kind and, for a file, its content's digest."""
    out: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                out[rel] = ("file", info.st_size, digest.hexdigest())
            else:
                out[rel] = ("other", stat.S_IFMT(info.st_mode))
    return out


def allowed(rel: str, outputs: list[str]) -> bool:
    """Whether rel is a declared output, inside one, or a file output's marker beside it."""
    for out in outputs:
        head, name = os.path.split(out)
        if rel == out or rel.startswith(out + os.sep) or rel == os.path.join(head, f".{name}.resect-output"):
            return True
    return False


PROGRESS = re.compile(r"^\S")  # any line before the error line (progress, tables) is allowed


def run_case(name: str, build) -> dict:
    d = WORK / "cases" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
    d.mkdir(parents=True)
    try:
        spec = build(d)
    except Exception as exc:  # noqa: BLE001 - a case that cannot be prepared is reported, not fatal
        return dict(name=name, rc=None, breaches=["setup"], line=f"setup failed: {type(exc).__name__}: {exc}", spec=None)
    watched = {"": d, **{f"<extra {i}>": Path(p) for i, p in enumerate(spec["extra"])}}
    before = {k: snapshot(p) for k, p in watched.items()}
    root_before = set(os.listdir("/")) if spec["watch_root"] else None
    env = base_env(spec["cache"] or CACHE)

    def limits():
        if spec["fsize"] is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an ignored signal stays ignored across exec: writes fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))
        if spec["mem"] is not None:
            resource.setrlimit(resource.RLIMIT_AS, (spec["mem"], spec["mem"]))

    first = None
    if spec["bg"]:
        first = start_first_writer(d, spec["bg"], env)
    argv = resect_argv() + spec["args"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=d, env=env, capture_output=True, timeout=spec["timeout"], preexec_fn=limits)
        rc, stdout, stderr = proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", (exc.stdout or b"").decode("utf-8", "replace"), (exc.stderr or b"").decode("utf-8", "replace")
    seconds = time.perf_counter() - started
    bg_outputs, first_note = [], ""
    if first is not None:
        first_rc = first.wait(timeout=TIMEOUT)
        first_err = first.stderr.read().decode("utf-8", "replace").strip().splitlines()
        bg_outputs = spec["bg"]["outputs"] if first_rc == 0 else []
        first_note = f" [first writer PID {first.pid} exit {first_rc}{': ' + first_err[-1] if first_rc and first_err else ''}]"
        spec["must_name"].append(f"PID {first.pid}")
        if not first.held:
            first_note += " [the first writer never held the lock: the case did not test two writers]"
    after = {k: snapshot(p) for k, p in watched.items()}

    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    line = lines[errors[0]] if errors else (lines[-1] if lines else "")
    expect_ok = spec["ok"] is True or (spec["ok"] == "either" and rc == 0)
    breaches = []
    if expect_ok:
        if rc != 0:
            breaches.append("refused_valid")
        outputs = spec["outputs"] + bg_outputs
    else:
        if rc == 0:
            breaches.append("exit0")
        elif rc == 1:
            breaches.append("exit1")
        elif rc != 2:
            breaches.append("other_rc")
        outputs = bg_outputs
        if rc != 0 and (len(errors) != 1 or any(not ln.startswith("WARNING") for ln in lines[errors[-1] + 1 :])):
            breaches.append("multiline")
    if re.search(r"unexpected", stderr, re.I):
        breaches.append("unexpected")
    if "Traceback" in stderr or "Traceback" in stdout:
        breaches.append("traceback")
    if rc != 0 and (not all(s in line for s in spec["must_name"]) or any(s in line for s in spec["must_not"])):
        breaches.append("misnamed")
    changed, added = [], []
    for key in watched:
        prefix = f"{key}/" if key else ""
        may = outputs if not key else []
        changed += [prefix + p for p, v in before[key].items() if after[key].get(p) != v and not allowed(p, may)]
        added += [prefix + p for p in after[key] if p not in before[key] and not allowed(p, may)]
    if root_before is not None:
        added += [f"/{p}" for p in set(os.listdir("/")) - root_before]
    if first is not None and not first.held:
        breaches.append("setup")
    if changed:
        breaches.append("changed")
    if added:
        breaches.append("leftover")
    detail = []
    if changed:
        detail.append(f"changed/removed: {', '.join(sorted(changed)[:4])}")
    if added:
        detail.append(f"left: {', '.join(sorted(added)[:4])}")
    if "multiline" in breaches:
        extra = [ln for i, ln in enumerate(lines) if (errors and i > errors[-1] and not ln.startswith("WARNING"))]
        detail.append(f"{len(errors)} error lines" + (f"; after it: {extra[0][:100]!r}" if extra else ""))
    if "misnamed" in breaches:
        detail.append(f"error should name {spec['must_name']}" + (f", not {spec['must_not']}" if spec["must_not"] else ""))
    if "traceback" in breaches:
        tb = [ln for ln in lines if not ln.startswith(" ")][-1:] or [""]
        detail.append(f"traceback ends: {tb[0][:160]}")
    for key, path in watched.items():
        if key:
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)
    if spec["cache"]:
        shutil.rmtree(spec["cache"], ignore_errors=True)
    shown = ["resect", *(a if isinstance(a, str) else repr(a) for a in spec["args"])]
    return dict(name=name, rc=rc, breaches=breaches, line=line + first_note, detail="; ".join(detail), seconds=seconds,
                command=" ".join(shown), spec=spec)


SLOW_FIRST = (  # the first writer: resect itself, sleeping 8 s once it holds the output's lock
    "import importlib.util, sys, time\n"
    "mods = [importlib.import_module(m) for m in ('resect.outputs', 'resect.ownership') if importlib.util.find_spec(m)]\n"
    "o = next((m for m in mods if hasattr(m, '_acquire')), None)\n"
    "if o is None: sys.exit('harness: no resect _acquire to slow down')\n"
    "acquire = o._acquire\n"
    "def slow(*a, **k):\n"
    "    held = acquire(*a, **k)\n"
    "    time.sleep(8)\n"
    "    return held\n"
    "o._acquire = slow\n"
    "from resect.cli import main\n"
    "sys.argv[0] = 'resect'\n"
    "main()\n"
)


def start_first_writer(d: Path, bg: dict, env: dict) -> subprocess.Popen:
    """Start the first writer (slowed down while it holds the output's lock) and return once it holds it
    (`held` tells whether it did)."""
    first = subprocess.Popen([sys.executable, "-c", SLOW_FIRST, *bg["args"]], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = d / bg["lock"]
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if lock.exists() and lock.read_bytes().startswith(b"resect "):
            first.held = True
            return first
        time.sleep(0.02)
    first.held = False
    return first


LABELS = [
    ("run", "cases run"),
    ("changed", "user files changed"),
    ("exit0", "wrong exit-0"),
    ("exit1", "exit 1 on bad input"),
    ("unexpected", '"unexpected" messages'),
    ("traceback", "tracebacks"),
    ("leftover", "leftovers after a refused command (or beyond the declared output)"),
    ("multiline", "multi-line errors"),
    ("other_rc", "other exit codes (signal, timeout)"),
    ("refused_valid", "valid input refused (a case expected to succeed)"),
    ("misnamed", "error not naming the output being written (or the first writer's PID)"),
    ("setup", "cases that could not be prepared"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="SUBSTRING", action="append", help="run only the cases whose name holds SUBSTRING (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (fixtures, caches)")
    args = parser.parse_args()
    names = [n for n, _ in CASES]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        sys.exit(f"duplicate case names: {sorted(dupes)}")
    selected = [(n, b) for n, b in CASES if not args.only or any(o in n for o in args.only)]
    if args.list:
        print("\n".join(n for n, _ in selected))
        return 0
    set_work(Path(tempfile.mkdtemp(prefix="resect-hostile-")))
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"{len(selected)} cases; work folder {WORK}", flush=True)
    results, started = [], time.perf_counter()
    try:
        for name, build in selected:
            r = run_case(name, build)
            results.append(r)
            verdict = "ok" if not r["breaches"] else "BREACH " + ",".join(r["breaches"])
            print(f"{name:<58} {str(r['rc']):>7}  {verdict:<22} {r['line'][:220]}" + (f"  ({r['detail']})" if r.get("detail") else ""), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    counts = {key: sum(key in r["breaches"] for r in results) for key, _ in LABELS}
    counts["run"] = len(results)
    print(f"\nsummary ({time.perf_counter() - started:.0f} s)")
    width = max(len(label) for _, label in LABELS)
    for key, label in LABELS:
        print(f"  {label:<{width}}  {counts[key]:>4}")
    broken = [r for r in results if r["breaches"]]
    if broken:
        print("\ncases that break a rule:")
        for r in broken:
            print(f"  {r['name']}: {r.get('command', '')}\n      exit {r['rc']}; {','.join(r['breaches'])}; {r['line'][:300]}"
                  + (f"\n      {r['detail']}" if r.get("detail") else ""))
    return 1 if any(counts[key] for key, _ in LABELS if key != "run") else 0


if __name__ == "__main__":
    sys.exit(main())
