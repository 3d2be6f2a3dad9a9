"""Output paths checked before any work: never an input, never over something without --force.

Every command that writes calls `check_output` with the paths it reads, so that a typo such as
`--out` naming the corpus, a shard or the folder that holds them is refused in one line before
anything is computed, instead of replacing (or, with --force, deleting) the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError


def check_overlap(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, option: str = "--out", may_contain: bool = False
) -> None:
    """Refuse an output that is an input, lies inside an input folder, or contains an input (unless
    `may_contain`: a folder the command only adds its own files to, never replaces).

    Inputs that do not exist on disk (Hugging Face repo ids, task names) are skipped."""
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).expanduser().resolve()
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
    """Refuse an output that overlaps an input, exists (unless `force`), or whose folder is missing
    (unless the command creates it: `make_parents`)."""
    check_overlap(out, inputs, option=option)
    path = Path(out).expanduser()
    if path.exists() and not force:
        raise OutputError(f"{option} '{out}' already exists. Choose another path or pass --force to replace it.")
    if not make_parents and not path.resolve().parent.is_dir():
        raise OutputError(f"Folder '{path.parent}' does not exist. Create it or choose another {option}.")


__all__ = ["check_output", "check_overlap"]
