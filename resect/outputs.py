"""What resect writes: the one rule that says an output is resect's, and the one way it is written.

Ownership. An output is resect's only when resect's marker says so: inside a folder output the
regular file `.resect-output`, beside a file output NAME the regular file `.NAME.resect-output`.
A marker is JSON naming resect and the output's kind (a run directory, a checkpoint, a mask, ...)
and listing what resect wrote there (each file's size and modification time; a small file's
digest too). An output is not resect's when its marker is missing, is a symbolic link or not a
regular file, names another kind, or when the output holds a file resect did not write or one
that changed since. Nothing is ever judged resect's from its other content. `--force` replaces
only an output of the command's own kind that passes this rule; anything else is refused before
any work, and nothing is touched.

Writing. `claim(out, kind, ...)` checks the output, creates missing parent folders (and removes
them again if the command fails), and locks the output (`.NAME.resect-lock` beside it) from the
checks to the move into place: a second writer of the same output is refused, naming the first
one's PID. A folder is written beside its destination under a hidden work name that says whose
process it is (`.NAME.resect-work-PID`, holding an INCOMPLETE flag, so nothing reads it as
finished) and moved into place only when complete; an existing output is swapped with the new one
in one step (or, where the system cannot, moved aside) and removed only once the new one is in
place. A file is written under a hidden temporary name and renamed into place. The next writer in
that place removes what a killed process left (and puts back an output it had moved aside).
Outputs follow the user's umask. A write that fails (a full disk) is one line naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError
from .paths import check_overlap, current_umask, resolve_path, write_atomic

MARKER = ".resect-output"  # inside every folder resect writes as an output
INCOMPLETE = ".resect-incomplete"  # in a work folder until it is moved into place
WORK, ASIDE, LOCK, SIDECAR = ".resect-work-", ".resect-old-", ".resect-lock", ".resect-output"
WRITTEN_BY = "resect"
INCOMPLETE_TEXT = "resect is writing this folder; it is not a finished output.\n"
DIGEST_UP_TO = 32 << 20  # files up to this size are also recorded by their sha256
MARKER_BYTES = 64 << 20  # a marker larger than this is not one resect wrote

# The kinds of output, as a user would name them (the refusal says what was found and what was expected).
KINDS = {
    "run": "a run directory", "checkpoint": "an edited checkpoint", "verify": "a verify report folder", "tasks": "a folder of tasks",
    "world": "a generated world", "train": "a training run", "mirror": "a mirror", "mask": "a mask file", "stats": "a statistics file",
    "results": "an lm-eval results file", "toxicity": "a toxicity results file", "partial": "partial statistics",
}  # fmt: skip


# ---------------------------------------------------------------------------- the rule


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


# ---------------------------------------------------------------------------- checks before work


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


# ---------------------------------------------------------------------------- writing


class Claim:
    """One output being written by this process: checked, locked, parents made; see `claim`."""

    def __init__(self, out: Path, kind: str, option: str):
        self.out, self.kind, self.option = out, kind, option
        self.created: list[Path] = []  # parent folders this claim made, deepest last
        self._lock: tuple[int, Path] | None = None
        self._work: Path | None = None

    def work_folder(self) -> Path:
        """A hidden folder beside the output to write it in, flagged incomplete."""
        work = self.out.parent / f".{self.out.name}{WORK}{os.getpid()}"
        _remove_tree(work)
        work.mkdir()
        os.chmod(work, 0o777 & ~current_umask())
        (work / INCOMPLETE).write_text(INCOMPLETE_TEXT)
        self._work = work
        return work

    def finish(self, work: Path) -> Path:
        """Mark `work` as resect's and move it into place (see the module's docstring)."""
        with self.naming_the_output():
            (work / INCOMPLETE).unlink(missing_ok=True)  # the hidden work name still says "not finished" until the move
            _write_marker(work, self.kind)
            _move_into_place(work, self.out)
        self._work = None
        return self.out

    def write(self, data: bytes | str) -> Path:
        """Write a file output (in a work folder beside it, then renamed into place) and its marker."""
        blob = data.encode() if isinstance(data, str) else data
        with self.naming_the_output():
            work = self.work_folder()
            tmp = work / self.out.name
            with open(tmp, "wb") as fh:
                fh.write(blob)
            os.chmod(tmp, 0o666 & ~current_umask())
            if self.out.is_dir() and not self.out.is_symlink():
                raise OutputError(f"{self.option} '{self.out}' is a folder. Pass a file name.")
            os.replace(tmp, self.out)
            _write_marker(self.out, self.kind)
            _remove_tree(work)
            self._work = None
        return self.out

    @contextlib.contextmanager
    def naming_the_output(self) -> Iterator[None]:
        """An error writing the output (a full disk) says so and names the output, not the file
        being read at the time (the system names the source of a copy); a read error stays as it is."""
        try:
            yield
        except OSError as exc:
            failed = exc.filename2 or exc.filename
            ours = (self.out, *([self._work] if self._work else []))
            if failed is not None and not any(Path(failed) == p or p in Path(failed).parents for p in ours):
                raise
            raise OutputError(f"Writing {self.option} '{self.out}' failed: {exc.strerror or exc}. "
                              f"{'Free some space' if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else 'Check the folder'} "
                              "or choose another path.") from None  # fmt: skip

    def _release(self, failed: bool) -> None:
        if self._work is not None:
            _remove_tree(self._work)
        if self._lock is not None:
            fd, lock = self._lock
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
            self._lock = None
        if failed:
            for folder in reversed(self.created):  # only folders this command made, and only when left empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


@contextlib.contextmanager
def claim(
    out: str | os.PathLike,
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool | None = False,
    option: str = "--out",
    make_parents: bool = True,
) -> Iterator[Claim]:
    """Check, lock and write one output; on any failure nothing of it is left behind."""
    inputs = list(inputs)
    out = Path(out).expanduser()
    check_output(out, inputs, kind=kind, force=force, option=option, make_parents=make_parents)
    c = Claim(out, kind, option)
    failed = True
    try:
        c.created = _make_parents(out.parent, option)
        c._lock = _acquire(out, option)
        check_output(out, inputs, kind=kind, force=force, option=option)  # again, now that no one else can write it
        remove_stale(out)
        yield c
        failed = False
    finally:
        c._release(failed)


def _make_parents(folder: Path, option: str) -> list[Path]:
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    try:
        for p in reversed(missing):
            p.mkdir()
    except OSError as exc:
        for p in missing:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise OutputError(f"{option}: cannot create folder '{exc.filename or folder}' ({exc.strerror}). Choose another path.") from None
    return list(reversed(missing))


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK}"


def _acquire(out: Path, option: str) -> tuple[int, Path]:
    """An exclusive lock on `out` (flock on `.NAME.resect-lock`, which holds the writer's PID)."""
    import fcntl

    lock = lock_path(out)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~current_umask())
        except OSError as exc:
            raise OutputError(f"{option} '{out}': its lock '{lock}' cannot be opened ({exc.strerror}). Remove it if no resect is running.") from None
        text = os.pread(fd, 64, 0).decode("ascii", "replace")
        if text and not text.startswith(f"{WRITTEN_BY} "):
            os.close(fd)
            raise OutputError(f"{option} '{out}': '{lock}' beside it is not resect's lock. Move that file away, or choose another path.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = text.split()[1] if len(text.split()) > 1 else "unknown"
            raise OutputError(f"{option} '{out}' is being written by another resect process (PID {pid}). "
                              "Wait for it to finish, or choose another path.") from None  # fmt: skip
        held, now = os.fstat(fd), _stat_or_none(lock)
        if now is None or (held.st_ino, held.st_dev) != (now.st_ino, now.st_dev):
            os.close(fd)  # a writer that finished removed the file we locked: lock the new one
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{WRITTEN_BY} {os.getpid()}\n".encode(), 0)
        return fd, lock


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError:
        return None


def _move_into_place(work: Path, out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        if _exchange(work, out):
            _remove_tree(work)  # now holds the old output
            return
        aside = out.parent / f".{out.name}{ASIDE}{os.getpid()}"
        _remove_tree(aside)
        os.replace(out, aside)
        try:
            os.replace(work, out)
        except BaseException:
            os.replace(aside, out)
            raise
        _remove_tree(aside)
        return
    if out.exists() or out.is_symlink():
        _remove_file_output(out)
    os.replace(work, out)


def _remove_file_output(path: Path) -> None:
    path.unlink()
    marker_path(path).unlink(missing_ok=True)


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


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


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


@contextlib.contextmanager
def adding_to(out: str | os.PathLike, kind: str, *, inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out") -> Iterator[Path]:
    """A folder this command adds files to (a mirror), locked while it does; a folder it created
    is removed again, with the parents it made, when the command fails."""
    inputs, out = list(inputs), Path(out).expanduser()
    check_addable(out, kind, inputs=inputs, option=option)
    c = Claim(out, kind, option)
    failed, made = True, not out.exists()
    try:
        c.created = _make_parents(out, option)
        c._lock = _acquire(out, option)
        check_addable(out, kind, inputs=inputs, option=option)
        if _read_marker(out / MARKER) is None:
            write_atomic(out / MARKER, json.dumps({"written_by": WRITTEN_BY, "kind": kind}) + "\n")
        yield out
        failed = False
    finally:
        if failed and made:
            _remove_tree(out)
        c._release(failed)


def write_owned(path: Path, data: bytes, kind: str) -> None:
    """Write a file resect alone reads back (partial statistics) atomically, with its marker; the
    caller has made sure (owner_problem) that what it replaces is resect's."""
    write_atomic(path, data)
    _write_marker(path, kind)


def remove_owned(path: Path, kind: str) -> None:
    """Remove a file output and its marker when they are resect's of this kind; anything else stays."""
    if (path.exists() or path.is_symlink()) and owner_problem(path, kind) is None:
        _remove_file_output(path)


# ---------------------------------------------------------------------------- what killed writers leave


def unfinished(path: str | os.PathLike) -> bool:
    """Whether `path` is, or lies in, a folder another process is writing or a stopped one left
    (a hidden work folder, or a folder flagged INCOMPLETE); this process may read its own."""
    mine = (f"{WORK}{os.getpid()}", f"{ASIDE}{os.getpid()}")
    parts = Path(path).absolute().parts
    if any((WORK in part or ASIDE in part) and not part.endswith(mine) for part in parts):
        return True
    return (Path(path) / INCOMPLETE).exists() and not any(part.endswith(mine) for part in parts)


def remove_stale(out: Path) -> None:
    """Remove what dead resect processes left beside `out`: their work folders (flagged by resect's
    INCOMPLETE file) and temporary files; an output such a process had moved aside (its marker
    intact) goes back in place when nothing replaced it, else it is removed."""
    for tag in (ASIDE, WORK):
        for path in out.parent.glob(f".{out.name}{tag}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if tag == WORK and _is_work_of_resect(path):
                _remove_tree(path)
            elif tag == ASIDE and path.is_dir() and not path.is_symlink() and _read_marker(path / MARKER) is not None:
                if not out.exists():
                    os.replace(path, out)
                elif not owner_problem(path, _read_marker(path / MARKER)["kind"]):
                    _remove_tree(path)


def _is_work_of_resect(path: Path) -> bool:
    """A work folder resect made: its INCOMPLETE flag, or its marker once complete."""
    if path.is_symlink() or not path.is_dir():
        return False
    flag = path / INCOMPLETE
    if flag.is_file() and not flag.is_symlink():
        with contextlib.suppress(OSError):
            return flag.read_text() == INCOMPLETE_TEXT
    return _read_marker(path / MARKER) is not None


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


def describe_marker(path: Path) -> dict[str, Any] | None:
    """The marker record of an output (for `resect info` and tests), or None."""
    return _read_marker(marker_path(path))


__all__ = ["claim", "check_output", "owner_problem", "write_owned", "remove_owned", "unfinished", "remove_stale", "MARKER", "INCOMPLETE", "KINDS"]
