"""Tiny local lm-eval tasks for the evaluation tests, written with absolute data paths."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data" / "eval"


def quiz_task(folder: Path, *, data: Path | None = None) -> Path:
    """Write the 4-option quiz task `resect_quiz` into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (DATA / "quiz.yaml.in").read_text().replace("@DATA@", str((data or DATA / "quiz.jsonl").resolve()))
    (folder / "resect_quiz.yaml").write_text(text)
    return folder
