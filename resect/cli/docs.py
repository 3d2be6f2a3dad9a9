"""docs/cli.md: every command and option, written by Typer's own docs generator from the app.

    python -m resect.cli.docs > docs/cli.md

`tests/test_docs.py` checks that the file is what this prints, so the page never drifts from the CLI.
"""

from __future__ import annotations


def cli_markdown() -> str:
    """The Markdown reference of the `resect` command line."""
    import typer
    from typer.cli import get_docs_for_click
    from typer.main import get_command

    from . import app

    command = get_command(app)
    text = get_docs_for_click(obj=command, ctx=typer.Context(command), name="resect", title="resect command line")
    return text.rstrip("\n") + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(cli_markdown())
