"""Run the console entry point in-process, as a user's shell would."""

from __future__ import annotations

import sys

import pytest


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """The console entry point in-process: (exit code, stdout, stderr)."""
    from resect.cli import main

    monkeypatch.setattr(sys, "argv", ["resect", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err
