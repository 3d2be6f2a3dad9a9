"""The one rule that says an output is resect's, and the checks every writer makes before any work.

An output is resect's only when resect's marker says so: inside a folder output the regular file
`.resect-output`, beside a file output NAME the regular file `.NAME.resect-output`. A marker is
JSON naming resect and the output's kind (a run directory, a checkpoint, a mask, ...) and listing
what resect wrote there (each file's size and modification time; a small file's digest too). An
output is not resect's when its marker is missing, is a symbolic link or not a regular file,
names another kind, or when the output holds a file resect did not write or one that changed
since. Nothing is ever judged resect's from its other content. `--force` replaces only an output
of the command's own kind that passes this rule; anything else is refused before any work, and
nothing is touched. How outputs are then written is resect.outputs'.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import OutputError
from .paths import check_overlap, resolve_path, write_atomic

MARKER = ".resect-output"  # inside every folder resect writes as an output


SIDECAR = ".resect-output"  # beside a file output NAME: .NAME.resect-output


WRITTEN_BY = "resect"


DIGEST_UP_TO = 32 << 20  # files up to this size are also recorded by their sha256


MARKER_BYTES = 64 << 20  # a marker larger than this is not one resect wrote


# The kinds of output, as a user would name them (the refusal says what was found and what was expected).
KINDS = {
    "run": "a run directory", "checkpoint": "an edited checkpoint", "verify": "a verify report folder", "tasks": "a folder of tasks",
    "world": "a generated world", "train": "a training run", "mirror": "a mirror", "mask": "a mask file", "stats": "a statistics file",
    "results": "an lm-eval results file", "toxicity": "a toxicity results file", "partial": "partial statistics",
}  # fmt: skip


def marker_path(path: Path) -> Path:
    """Where the marker of `path` lives: inside a folder, beside a file."""
    return path / MARKER if path.is_dir() and not path.is_symlink() else path.parent / f".{path.name}{SIDECAR}"


def _read_marker(file: Path) -> dict | None:
    """The marker's record when it is a regular file resect wrote, else None."""
    try:
        info = os.lstat(file)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MARKER_BYTES:
        return None
    try:
        record = json.loads(file.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") == WRITTEN_BY and isinstance(record.get("kind"), str) else None


def _entry(path: Path, info: os.stat_result) -> list:
    """What a marker records of one file: size, modification time, and a small file's digest."""
    digest = None
    if info.st_size <= DIGEST_UP_TO:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return [info.st_size, info.st_mtime_ns, digest]


def _listing(folder: Path) -> dict[str, list | None]:
    """Every file (size, time, digest) and folder (None) under `folder`, its own marker left out;
    a symbolic link is listed as one, which no resect output holds."""
    out: dict[str, list | None] = {}
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in sorted(dirs + files):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel == MARKER:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ["link"]
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = None
            else:
                out[rel] = _entry(path, info)
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return out


def owner_problem(path: str | os.PathLike, kind: str) -> str | None:
    """Why `path` is not an output resect wrote of this kind (None when it is one)."""
    path = Path(path)
    if path.is_symlink():
        return "is a symbolic link"
    record = _read_marker(marker_path(path))
    if record is None:
        return "was not written by resect"
    if record["kind"] != kind:
        found = KINDS.get(record["kind"], record["kind"])
        return f"is {found} resect wrote, not {KINDS.get(kind, kind)}"
    expected = record.get("files")
    if not isinstance(expected, dict):
        return "was not written by resect"
    try:
        found = _listing(path) if path.is_dir() else {path.name: _entry(path, os.lstat(path))}
    except OSError:
        return "cannot be read"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"holds '{extra[0]}', which resect did not write"
    changed = sorted(name for name in expected if found.get(name) != expected[name])
    if changed:
        return f"has '{changed[0]}' changed or removed since resect wrote it"
    return None


def _write_marker(path: Path, kind: str) -> None:
    """Record `path` (a folder, or a file) as resect's output of this kind."""
    files = _listing(path) if path.is_dir() else {path.name: _entry(path, os.lstat(path))}
    record = {"written_by": WRITTEN_BY, "kind": kind, "files": files}
    write_atomic(marker_path(path), json.dumps(record) + "\n")


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    kind: str,
    force: bool | None = False,
    option: str = "--out",
    make_parents: bool = False,
) -> None:
    """Refuse an output that overlaps an input, exists (unless `force` and it is resect's output of
    this kind), or whose folder is missing or not writable (unless the command creates it: `make_parents`).
    `force` None: the command has no --force (an existing output is always refused)."""
    target = resolve_path(out, option)
    check_overlap(out, inputs, option=option)
    path = Path(out).expanduser()
    if path.exists() or path.is_symlink():
        if not force:
            hint = "" if force is None else " or pass --force to replace it"
            raise OutputError(f"{option} '{out}' already exists. Choose another path{hint}.")
        problem = owner_problem(path, kind)
        if problem:
            raise OutputError(f"{option} '{out}' {problem}: --force replaces only {KINDS[kind]} resect wrote there. "
                              "Choose another path, or move it away yourself.")  # fmt: skip
    parent = target.parent
    if not make_parents and not parent.is_dir():
        raise OutputError(f"Folder '{path.parent}' does not exist. Create it or choose another {option}.")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{option} '{out}': '{existing}' is a file, not a folder. Choose another path.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} '{out}': folder '{existing}' is not writable. Choose another path.")


def check_addable(out: str | os.PathLike, kind: str, *, inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out") -> None:
    """Refuse a folder a command adds to (a mirror) unless it is new, empty, or resect's folder of this kind."""
    path = Path(out).expanduser()
    check_overlap(out, inputs, option=option)
    target = resolve_path(out, option)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"{option} '{out}' exists and is not a folder. Pass a folder for {KINDS[kind]}.")
    if path.is_dir() and any(path.iterdir()):
        record = _read_marker(path / MARKER)
        if record is None or record["kind"] != kind:
            what = f"is {KINDS.get(record['kind'], record['kind'])}" if record else "holds files and is not one resect made"
            raise OutputError(f"{option} '{out}' {what}: resect adds only to {KINDS[kind]} it made, or to an empty or new folder. "
                              "Choose another path.")  # fmt: skip
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} '{out}': folder '{existing}' is not writable. Choose another path.")


def describe_marker(path: Path) -> dict[str, Any] | None:
    """The marker record of an output (for `resect info` and tests), or None."""
    return _read_marker(marker_path(path))


__all__ = ["owner_problem", "check_output", "check_addable", "marker_path", "describe_marker", "MARKER", "KINDS"]
