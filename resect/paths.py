"""Output paths checked before any work, and written so that nothing is ever lost.

Every command that writes calls `check_output` with the paths it reads, so that a typo such as
`--out` naming the corpus, a shard or the folder that holds them is refused in one line before
anything is computed. `--force` replaces only what resect wrote itself: a folder it marked
(MARKER inside: run directories, edited checkpoints), or a file of its own kind (statistics, a
mask, a results JSON); anything else is refused.

Folders are written beside their destination under a hidden work name that says whose process
it is (`.NAME.resect-work-PID`, holding an INCOMPLETE flag, so nothing reads it as finished),
and moved into place only when complete; an existing output is swapped with the new one in one
step (or, where the system cannot, moved aside) and removed only once the new one is in place.
Nothing reads a work folder as a checkpoint, and the next run in that place removes those whose
process is gone. Outputs follow the user's umask.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError

MARKER = ".resect-output"  # in every folder resect writes as an output; --force replaces only these
INCOMPLETE = ".resect-incomplete"  # in a work folder until it is moved into place
WORK, ASIDE = ".resect-work-", ".resect-old-"


def check_overlap(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, option: str = "--out", may_contain: bool = False
) -> None:
    """Refuse an output that is an input, lies inside an input folder, or contains an input (unless
    `may_contain`: a folder the command only adds its own files to, never replaces).

    Inputs that do not exist on disk (Hugging Face repo ids, task names) are skipped."""
    target = _resolve(out, option)
    for given in inputs:
        if given is None or str(given) == "":
            continue
        try:
            source = Path(given).expanduser().resolve()
        except (OSError, RuntimeError):  # a link loop: not a readable input, nothing to protect
            continue
        if not source.exists():
            continue
        if target == source:
            raise OutputError(f"{option} '{out}' is an input of this command ('{given}'). Choose another path: inputs are never overwritten.")
        if source.is_dir() and source in target.parents:
            raise OutputError(f"{option} '{out}' lies inside the input folder '{given}'. Choose a path outside it.")
        if target in source.parents and not may_contain:
            raise OutputError(f"{option} '{out}' contains the input '{given}'. Choose a path that holds no input.")


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    force: bool = False,
    option: str = "--out",
    make_parents: bool = False,
) -> None:
    """Refuse an output that overlaps an input, exists (unless `force` and resect wrote it), or
    whose folder is missing or not writable (unless the command creates it: `make_parents`)."""
    check_overlap(out, inputs, option=option)
    path = Path(out).expanduser()
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"{option} '{out}' already exists. Choose another path or pass --force to replace it.")
        if not owned(path):
            raise OutputError(
                f"{option} '{out}' exists and was not written by resect: --force replaces only resect's own outputs. "
                "Choose another path, or move it away yourself."
            )
    parent = _resolve(out, option).parent
    if not make_parents and not parent.is_dir():
        raise OutputError(f"Folder '{path.parent}' does not exist. Create it or choose another {option}.")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} '{out}': folder '{existing}' is not writable. Choose another path.")


def _resolve(out: str | os.PathLike, option: str) -> Path:
    try:
        return Path(out).expanduser().resolve()
    except (OSError, RuntimeError):
        raise OutputError(f"{option} '{out}' cannot be resolved (a symbolic link loop?). Choose another path.") from None


def owned(path: Path) -> bool:
    """Whether resect wrote this: a folder it marked (or an edited checkpoint of an earlier
    version), or a statistics, mask or results file."""
    if path.is_symlink():
        return False
    if path.is_dir():
        if (path / MARKER).is_file():
            return True
        try:
            return isinstance(json.loads((path / "config.json").read_text()).get("resect"), dict)
        except (OSError, ValueError, AttributeError):
            return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if head.startswith(b"RESECTMASK"):
        return True
    if path.suffix == ".safetensors" and b'"resect_version"' in head:
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size < 1 << 28 else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (
        data.get("format") == "resect.mask/v1" or "expected_max_toxicity" in data or {"results", "versions"} <= data.keys()
    )


def work_folder(out: Path) -> Path:
    """A hidden folder beside `out` for writing it, flagged incomplete; stale ones of dead processes
    (and outputs they moved aside and never removed) go first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    work = out.parent / f".{out.name}{WORK}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    os.chmod(work, 0o777 & ~current_umask())
    (work / INCOMPLETE).write_text("resect is writing this folder; it is not a finished output.\n")
    return work


def finish(work: Path, out: Path) -> None:
    """Mark `work` as resect's and move it to `out`. An existing `out` is swapped with it in one
    step where the system can (Linux), else moved aside first; the old folder is removed only once
    the new one is in place. A process killed between the steps leaves hidden folders that the
    next run in that place cleans up (and, if nothing replaced it, puts the old output back)."""
    (work / MARKER).write_text(json.dumps({"written_by": "resect"}) + "\n")
    (work / INCOMPLETE).unlink(missing_ok=True)  # the hidden work name still says "not finished" until the move
    if out.is_dir() and not out.is_symlink():
        if _exchange(work, out):
            shutil.rmtree(work, ignore_errors=True)  # now holds the old output
            return
        aside = out.parent / f".{out.name}{ASIDE}{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(out, aside)
        try:
            os.replace(work, out)
        except BaseException:
            os.replace(aside, out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    if out.exists() or out.is_symlink():
        out.unlink()
    os.replace(work, out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def unfinished(path: Path) -> bool:
    """Whether `path` is, or lies in, a folder another process is writing or a stopped one left
    (a hidden work folder, or a folder flagged INCOMPLETE); this process may read its own."""
    mine = (f"{WORK}{os.getpid()}", f"{ASIDE}{os.getpid()}")
    parts = Path(path).absolute().parts
    if any((WORK in part or ASIDE in part) and not part.endswith(mine) for part in parts):
        return True
    return (Path(path) / INCOMPLETE).exists() and not any(part.endswith(mine) for part in parts)


def remove_stale(out: Path) -> None:
    """Remove `.NAME.resect-work-PID` beside `out` whose process is gone; an earlier output that such
    a process had moved aside (`.NAME.resect-old-PID`) goes back in place when nothing replaced it."""
    for tag in (ASIDE, WORK):
        for path in out.parent.glob(f".{out.name}{tag}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _alive(int(pid)) or not path.is_dir() or path.is_symlink():
                continue
            if tag == ASIDE and not out.exists():
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write beside the target then rename: a reader never sees half a file. The file gets the
    permissions the user's umask gives a new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["check_output", "check_overlap", "finish", "unfinished", "owned", "work_folder", "write_atomic", "MARKER", "INCOMPLETE"]
