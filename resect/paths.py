"""Paths checked before any work: outputs that would touch an input, names that would leave their folder.

`check_overlap` refuses an output that is an input, lies inside an input folder or contains an
input (a typo such as `--out` naming the corpus, a shard or the folder that holds them), in one
line before anything is computed. `member` refuses a file name read from a file (a checkpoint's
index or provenance record) that would lead outside its folder. `write_atomic` writes a file so
that no reader ever sees half of it. Which outputs resect may replace, and how they are written,
is resect.outputs' one rule.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .errors import OutputError, ResectError


def resolve_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` made absolute with its links followed; a link loop is one line, not a traceback."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        raise OutputError(f"{option} '{path}' cannot be resolved (a symbolic link loop?). Choose another path.") from None


def check_overlap(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, option: str = "--out", may_contain: bool = False
) -> None:
    """Refuse an output that is an input, lies inside an input folder, or contains an input (unless
    `may_contain`: a folder the command only adds its own files to, never replaces).

    Inputs that do not exist on disk (Hugging Face repo ids, task names) are skipped."""
    target = resolve_path(out, option)
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


def member(folder: Path, name: object, *, what: str, error: type[ResectError] = OutputError) -> Path:
    """`folder / name` for a file name read from a file (a shard in an index, the mask of a
    provenance record): a plain file name of that folder, never a path that leaves it."""
    ok = isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
    if ok:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        ok = len(parts) == 1 and not os.path.isabs(name)
    if not ok:
        raise error(f"{what} names {name!r}, which is not a file of '{folder}' (a plain file name there). "
                    "Restore the file from its source.")  # fmt: skip
    return folder / name


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


__all__ = ["check_overlap", "member", "resolve_path", "write_atomic", "current_umask"]
