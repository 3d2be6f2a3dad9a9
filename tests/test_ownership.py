"""Nothing a user owns is touched: one ownership rule, paths that never escape, one writer at a time.

An output is resect's only when resect's marker says so (resect.outputs); these tests build the
trees a user could have at `--out` (their files, links, markers that are links or of another
kind, resect outputs with a file of theirs inside) and assert that no command deletes or changes
a file it did not write, and that a refused command leaves the tree exactly as it was."""

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
from _cli import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resect.model.mask import ExpertMask
from resect.ownership import MARKER, owner_problem

ROWS = [{"text": f"The {w} of sample {k} is here.", "label": label} for k in range(4) for label, w in (("bio", "cell"), ("law", "court"))]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: a file's bytes digest and mode, a link's target, a folder."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o777)
        dirs[:] = [d for d in dirs if not (Path(dirpath) / d).is_symlink()]
    return out


def refused(code: int, err: str, phrase: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0] and "Traceback" not in err, (code, err)


@pytest.fixture
def mask(tiny_vd, tmp_path):
    path = tmp_path / "in" / "m.json"
    path.parent.mkdir()
    ExpertMask(16, 2, {0: [1, 2], 1: [3]}).save(path)
    return path


def apply_args(tiny_vd, mask, out, *force):
    return ["apply", str(tiny_vd), "--mask", str(mask), "--out", str(out), *force]


# ---------------------------------------------------------------------------- the rule, case by case


def test_a_marker_that_is_a_link_proves_nothing(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "data.txt").write_text("mine")
    (out / MARKER).symlink_to("/etc/hostname")
    before = snapshot(tmp_path)
    refused(*run_cli(apply_args(tiny_vd, mask, out, "--force"), capsys, monkeypatch)[::2], "was not written by resect")
    assert snapshot(tmp_path) == before


def test_content_that_looks_like_resect_s_proves_nothing(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"resect": {}}))  # an edited checkpoint's key, and no marker
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"results": {}, "versions": {}}))  # every lm-eval results file looks like this
    before = snapshot(tmp_path)
    refused(*run_cli(apply_args(tiny_vd, mask, out, "--force"), capsys, monkeypatch)[::2], "was not written by resect")
    refused(*run_cli(["eval", str(tiny_vd), "--tasks", "world_biology", "--out", str(results), "--force"], capsys, monkeypatch)[::2],
            "was not written by resect")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_force_replaces_only_an_output_of_the_same_kind(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    union = tmp_path / "u.json"
    assert run_cli(["mask", "union", str(mask), "--out", str(union)], capsys, monkeypatch)[0] == 0
    assert owner_problem(union, "mask") is None
    before = snapshot(tmp_path)
    refused(*run_cli(apply_args(tiny_vd, mask, union, "--force"), capsys, monkeypatch)[::2], "is a mask file resect wrote, not an edited checkpoint")
    assert snapshot(tmp_path) == before
    assert run_cli(["mask", "union", str(mask), str(mask), "--out", str(union), "--force"], capsys, monkeypatch)[0] == 0  # the same kind: replaced


def test_a_file_changed_since_resect_wrote_it_is_the_user_s(mask, tmp_path, capsys, monkeypatch):
    union = tmp_path / "u.json"
    assert run_cli(["mask", "union", str(mask), "--out", str(union)], capsys, monkeypatch)[0] == 0
    data = json.loads(union.read_text())
    data["note"] = "edited by hand"
    union.write_text(json.dumps(data))
    before = snapshot(tmp_path)
    refused(*run_cli(["mask", "union", str(mask), "--out", str(union), "--force"], capsys, monkeypatch)[::2], "changed or removed since resect wrote it")
    assert snapshot(tmp_path) == before


def test_ppl_tasks_never_writes_into_a_folder_of_the_user_s(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "tasks"
    out.mkdir()
    (out / "ppl_bio.yaml").write_text("my own task\n")
    before = snapshot(tmp_path)
    refused(*run_cli(["ppl-tasks", str(corpus), str(out)], capsys, monkeypatch)[::2], "already exists")
    refused(*run_cli(["ppl-tasks", str(corpus), str(out), "--force"], capsys, monkeypatch)[::2], "was not written by resect")
    assert snapshot(tmp_path) == before
    new = tmp_path / "new"
    assert run_cli(["ppl-tasks", str(corpus), str(new)], capsys, monkeypatch)[0] == 0 and owner_problem(new, "tasks") is None
    assert run_cli(["ppl-tasks", str(corpus), str(new), "--force"], capsys, monkeypatch)[0] == 0


def test_a_run_never_replaces_the_folder_that_holds_its_recipe(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "run" / "run.yaml"
    recipe.parent.mkdir()
    recipe.write_text("# resect run run.yaml\nkind: domain\ntarget: biology\n")
    before = snapshot(tmp_path)
    refused(*run_cli(["run", str(recipe), f"out={recipe.parent}", "force=true"], capsys, monkeypatch)[::2], "contains the input")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- names that would leave their folder


def _shard_index_escaping(tiny_vd: Path, tmp_path: Path) -> Path:
    ckpt = Path(shutil.copytree(tiny_vd, tmp_path / "ckpt"))
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "shards").mkdir()
    shutil.move(ckpt / shard, tmp_path / "shards" / shard)
    index["weight_map"] = {k: (f"../shards/{v}" if v == shard else v) for k, v in index["weight_map"].items()}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return ckpt


def test_an_index_naming_a_shard_outside_the_checkpoint_is_refused(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    ckpt = _shard_index_escaping(tiny_vd, tmp_path)
    shard = next((tmp_path / "shards").iterdir()).name
    victim = tmp_path / "out" / "shards" / shard  # where `../shards/NAME` would land from a work folder beside --out
    victim.parent.mkdir(parents=True)
    victim.write_text("the user's file of that name")
    before = snapshot(tmp_path)
    refused(*run_cli(apply_args(ckpt, mask, tmp_path / "out" / "edited"), capsys, monkeypatch)[::2], "not a file of")
    refused(*run_cli(["info", str(ckpt)], capsys, monkeypatch)[::2], "not a file of")
    assert snapshot(tmp_path) == before and victim.read_text() == "the user's file of that name"


def test_a_provenance_mask_path_outside_the_checkpoint_is_refused(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    edited = tmp_path / "edited"
    assert run_cli(apply_args(tiny_vd, mask, edited), capsys, monkeypatch)[0] == 0
    config = json.loads((edited / "config.json").read_text())
    config["resect"]["mask"]["file"] = "../../../etc/passwd"
    (edited / "config.json").write_text(json.dumps(config))
    before = snapshot(tmp_path)
    for args in (["info", str(edited)], apply_args(edited, mask, tmp_path / "again"), ["verify", str(edited), "--target-tasks", "x", "--min-target-drop", "1"]):
        refused(*run_cli(args, capsys, monkeypatch)[::2], "not a file of the checkpoint's folder")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- one writer at a time

SLOW_APPLY = textwrap.dedent(
    """
    import sys, time
    import resect.edit.export as export
    real, delay = export._fill, float(sys.argv[1])
    def slow(*args, **kwargs):
        print("filling", flush=True)
        time.sleep(delay)
        return real(*args, **kwargs)
    export._fill = slow
    sys.argv = ["resect", *sys.argv[2:]]
    from resect.cli import main
    main()
    """
)


@pytest.mark.slow
def test_a_second_writer_of_one_output_is_refused_naming_the_first(tiny_vd, mask, tmp_path):
    out = tmp_path / "edited"
    args = apply_args(tiny_vd, mask, out)
    env = os.environ | {"RESECT_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.Popen([sys.executable, "-c", SLOW_APPLY, "6", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=tmp_path)  # fmt: skip
    try:
        assert first.stdout.readline().strip() == "filling"  # the first holds the lock and is writing
        second = subprocess.run([sys.executable, "-m", "resect", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        refused(second.returncode, second.stderr, f"is being written by another resect process (PID {first.pid})")
    finally:
        rest = first.communicate(timeout=120)
    assert first.returncode == 0, rest[1]
    assert owner_problem(out, "checkpoint") is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock or work folder left


def test_a_lock_file_that_is_not_resect_s_is_never_taken_over(mask, tmp_path, capsys, monkeypatch):
    out = tmp_path / "u.json"
    (tmp_path / ".u.json.resect-lock").write_text("my notes\n")
    before = snapshot(tmp_path)
    refused(*run_cli(["mask", "union", str(mask), "--out", str(out)], capsys, monkeypatch)[::2], "is not resect's lock")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- the property

USER = ("user-file", "user-folder", "link-to-file", "link-outside", "dangling-link", "marker-link", "marker-garbage",
        "marker-other-kind", "mask", "mask-with-user-file", "checkpoint", "checkpoint-with-user-file", "tasks", "fake-lock", "fake-work")  # fmt: skip
NAMES = ("a", "b", "c.json", "d")


def _make(root: Path, kind: str, name: str, fixtures: dict) -> None:
    path = root / name
    if kind == "user-file":
        path.write_text(f"the user's {name}")
    elif kind == "user-folder":
        path.mkdir()
        (path / "notes.txt").write_text("the user's notes")
    elif kind == "link-to-file":
        (root / f"{name}.target").write_text("the user's target")
        path.symlink_to(root / f"{name}.target")
    elif kind == "link-outside":
        path.symlink_to("/etc/hostname")
    elif kind == "dangling-link":
        path.symlink_to(root / "nowhere")
    elif kind in ("marker-link", "marker-garbage", "marker-other-kind"):
        path.mkdir()
        (path / "thesis.tex").write_text("the user's thesis")
        marker = path / MARKER
        if kind == "marker-link":
            marker.symlink_to("/etc/hostname")
        elif kind == "marker-garbage":
            marker.write_text("not json")
        else:
            marker.write_text(json.dumps({"written_by": "resect", "kind": "mirror"}))
    elif kind.startswith("mask"):
        ExpertMask(16, 2, {0: [7]}).save(root / "seed.json")
        run_cli(["mask", "union", str(root / "seed.json"), "--out", str(path)], *fixtures["cli"])
        (root / "seed.json").unlink()
        if kind == "mask-with-user-file":  # resect's file, then changed by the user: theirs now
            path.write_bytes(path.read_bytes() + b"\n")
    elif kind.startswith("checkpoint"):
        run_cli(apply_args(fixtures["tiny"], fixtures["mask"], path), *fixtures["cli"])
        if kind == "checkpoint-with-user-file":
            (path / "my-adapter.bin").write_bytes(b"the user's adapter")
    elif kind == "tasks":
        run_cli(["ppl-tasks", str(fixtures["corpus"]), str(path)], *fixtures["cli"])
    elif kind == "fake-lock":
        (root / f".{name}.resect-lock").write_text("the user's file\n")
    elif kind == "fake-work":
        (root / f".{name}.resect-work-1").mkdir()
        (root / f".{name}.resect-work-1" / "draft.txt").write_text("the user's draft")


COMMANDS = ("apply", "union", "ppl-tasks")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    tree=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(USER), min_size=1, max_size=3),
    command=st.sampled_from(COMMANDS),
    pick=st.integers(0, 5),
    force=st.booleans(),
)
def test_no_command_deletes_or_changes_a_file_it_did_not_write(tree, command, pick, force, tiny_vd, mask, tmp_path_factory, capsys, monkeypatch):
    names = sorted(tree)
    target = names[pick % len(names)] if pick < 4 else "new" if pick == 4 else f"{names[0]}/inner"  # mostly an existing entry
    root = tmp_path_factory.mktemp("tree")
    corpus = root.parent / f"{root.name}-corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    fixtures = {"cli": (capsys, monkeypatch), "tiny": tiny_vd, "mask": mask, "corpus": corpus}
    for name, kind in tree.items():
        _make(root, kind, name, fixtures)
    capsys.readouterr()
    genuine = [n for n, k in tree.items() if k in ("mask", "checkpoint", "tasks")]  # what resect wrote, and a file output's marker beside it
    resect_files = {rel for rel in snapshot(root) if any(rel in (n, f".{n}.resect-output") or rel.startswith(n + "/") for n in genuine)}
    before = snapshot(root)
    out = root / target
    args = {"apply": apply_args(tiny_vd, mask, out), "union": ["mask", "union", str(mask), "--out", str(out)],
            "ppl-tasks": ["ppl-tasks", str(corpus), str(out)]}[command] + (["--force"] if force else [])  # fmt: skip
    code, _, err = run_cli(args, capsys, monkeypatch)
    after = snapshot(root)
    assert code in (0, 2) and "Traceback" not in err and "unexpected" not in err, (code, err)
    users = {rel: entry for rel, entry in before.items() if rel not in resect_files}
    changed = {rel for rel, entry in users.items() if after.get(rel) != entry}
    assert not changed, (tree, command, target, force, changed, err)
    if code == 2:
        assert after == before, (tree, command, target, force, err)  # refused: nothing added, nothing removed
    else:
        kind = {"apply": "checkpoint", "union": "mask", "ppl-tasks": "tasks"}[command]
        assert owner_problem(out, kind) is None


# ---------------------------------------------------------------------------- a full disk names the output

FULL_DISK = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # no file above 4 KiB: the modeling code cannot be copied
    sys.argv = ["resect", *sys.argv[1:]]
    from resect.cli import main
    main()
    """
)


def test_a_write_that_fails_names_the_output_and_leaves_nothing(tiny_vd, mask, tmp_path):
    out = tmp_path / "edited"
    env = os.environ | {"RESECT_CACHE_DIR": str(tmp_path / "cache")}
    before = snapshot(tmp_path)
    res = subprocess.run([sys.executable, "-c", FULL_DISK, *apply_args(tiny_vd, mask, out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)  # fmt: skip
    refused(res.returncode, res.stderr, f"Writing --out '{out}' failed: File too large")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("limit, args", [
    (100, lambda t, tiny, mask, corpus: ["ppl-tasks", str(corpus), str(t / "pt")]),
    (40, lambda t, tiny, mask, corpus: ["mask", "union", str(mask), "--out", str(t / "u.json")]),
])  # fmt: skip
def test_every_writer_names_its_output_on_a_full_disk_and_leaves_nothing(limit, args, tiny_vd, mask, tmp_path):
    corpus = tmp_path / "in" / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    work = tmp_path / "w"
    work.mkdir()
    command = args(work, tiny_vd, mask, corpus)
    script = FULL_DISK.replace("(4096, 4096)", f"({limit}, {limit})")
    res = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, cwd=work, timeout=120,
                         env=os.environ | {"RESECT_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    refused(res.returncode, res.stderr, "failed: File too large")
    assert f"'{work}" in res.stderr and list(work.iterdir()) == []  # named, and no hidden work folder left


def test_an_output_moved_aside_that_the_user_changed_is_never_put_back_or_removed(tiny_vd, mask, tmp_path, capsys, monkeypatch):
    """A killed writer's aside folder goes back in place only when it is still only what resect wrote."""
    earlier = tmp_path / "earlier"
    assert run_cli(apply_args(tiny_vd, mask, earlier), capsys, monkeypatch)[0] == 0
    aside = tmp_path / ".ed.resect-old-4000000"  # as a killed process (PID 4000000, gone) leaves it
    earlier.rename(aside)
    (aside / "my-notes.md").write_text("the user's notes")
    before = snapshot(tmp_path)
    assert run_cli(apply_args(tiny_vd, mask, tmp_path / "ed"), capsys, monkeypatch)[0] == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith(".ed.resect-old")} == {k: v for k, v in before.items() if k.startswith(".ed.resect-old")}


@pytest.mark.slow
def test_a_failed_mirror_into_an_empty_folder_leaves_it_empty(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mir"
    out.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["mirror", "paper-mmlu-domain", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "Downloading into" in err and list(out.iterdir()) == []
    nested = tmp_path / "a" / "b" / "mirror"
    code, _, err = run_cli(["mirror", "paper-mmlu-domain", "--out", str(nested)], capsys, monkeypatch)
    assert code == 2 and not (tmp_path / "a").exists()  # the folders it made are gone again
