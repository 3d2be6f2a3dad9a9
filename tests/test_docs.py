"""docs/cli.md is what Typer's docs generator prints for the command line today."""

from __future__ import annotations

from pathlib import Path

from resect.cli.docs import cli_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_the_cli_reference_is_current():
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == cli_markdown(), "docs/cli.md is stale: python -m resect.cli.docs > docs/cli.md"


def test_the_cli_reference_covers_every_command_and_shared_option():
    text = cli_markdown()
    for command in ("domain", "language", "toxicity", "run", "profile", "select", "apply", "eval", "verify", "toxicity-eval",
                    "ppl-tasks", "experts", "info", "mirror", "mask union", "world train"):  # fmt: skip
        assert f"## `resect {command}`" in text or f"# `resect {command}`" in text, command
    assert "--search" in text and "--toxicity-prompts" in text and "--model" not in text
