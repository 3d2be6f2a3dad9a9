"""How resect writes an output, so that nothing is lost and nothing half-written is ever read.

`claim(out, kind, ...)` checks the output (resect.ownership's rule), creates missing parent
folders (and removes them again if the command fails), and locks the output (`.NAME.resect-lock`
beside it) from the checks to the move into place: a second writer of the same output is
refused, naming the first one's PID. A folder is written beside its destination under a hidden
work name that says whose process it is (`.NAME.resect-work-PID`, holding an INCOMPLETE flag, so
nothing reads it as finished) and moved into place only when complete; an existing output is
swapped with the new one in one step (or, where the system cannot, moved aside) and removed only
once the new one is in place. A file is written in such a work folder and renamed into place.
The next writer in that place removes what a killed process left (and puts back an output it had
moved aside). Outputs follow the user's umask. A write that fails (a full disk) is one line
naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError
from .ownership import MARKER, WRITTEN_BY, _read_marker, _write_marker, check_addable, check_output, marker_path, owner_problem
from .paths import current_umask, write_atomic

INCOMPLETE = ".resect-incomplete"  # in a work folder until it is moved into place
WORK, ASIDE, LOCK = ".resect-work-", ".resect-old-", ".resect-lock"
INCOMPLETE_TEXT = "resect is writing this folder; it is not a finished output.\n"


# ---------------------------------------------------------------------------- the rule


# ---------------------------------------------------------------------------- checks before work


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
        with self.naming_the_output():
            work.mkdir()
            self._work = work  # from here on a failure removes it
            os.chmod(work, 0o777 & ~current_umask())
            (work / INCOMPLETE).write_text(INCOMPLETE_TEXT)
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
        remove_stale(out)  # what a killed writer left (an output it had moved aside goes back first)
        check_output(out, inputs, kind=kind, force=force, option=option)  # again, now that no one else can write it
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


@contextlib.contextmanager
def adding_to(out: str | os.PathLike, kind: str, *, inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out") -> Iterator[Path]:
    """A folder this command adds files to (a mirror), locked while it does; a folder it created
    is removed again, with the parents it made, when the command fails."""
    inputs, out = list(inputs), Path(out).expanduser()
    check_addable(out, kind, inputs=inputs, option=option)
    c = Claim(out, kind, option)
    failed, made, marked = True, not out.exists(), False
    try:
        c.created = _make_parents(out, option)
        c._lock = _acquire(out, option)
        check_addable(out, kind, inputs=inputs, option=option)
        if _read_marker(out / MARKER) is None:
            write_atomic(out / MARKER, json.dumps({"written_by": WRITTEN_BY, "kind": kind}) + "\n")
            marked = True
        yield out
        failed = False
    finally:
        if failed and made:
            _remove_tree(out)
        elif failed and marked:  # a folder that was there, empty: emptied again (all in it is this command's)
            for entry in list(out.iterdir()):
                _remove_tree(entry)
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
            elif tag == ASIDE and path.is_dir() and not path.is_symlink():
                record = _read_marker(path / MARKER)
                if record is None or owner_problem(path, record["kind"]):
                    continue  # not (or no longer only) what resect moved aside: left as it is
                if not out.exists() and not out.is_symlink():
                    os.replace(path, out)
                else:
                    _remove_tree(path)


def _is_work_of_resect(path: Path) -> bool:
    """A work folder resect made: its INCOMPLETE flag, or its marker once complete."""
    if path.is_symlink() or not path.is_dir():
        return False
    flag = path / INCOMPLETE
    if flag.is_file() and not flag.is_symlink():
        with contextlib.suppress(OSError):
            return INCOMPLETE_TEXT.encode().startswith(flag.read_bytes())  # all of it, or what a full disk let through
    record = _read_marker(path / MARKER)
    return record is not None and owner_problem(path, record["kind"]) is None


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


__all__ = ["claim", "adding_to", "write_owned", "remove_owned", "unfinished", "remove_stale", "INCOMPLETE", "LOCK"]
