"""`resect mirror RECIPE --out DIR`: fetch what a recipe reads into one folder to carry offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import DATA, app
from .options import SHARED, with_options


@app.command(rich_help_panel=DATA)
@with_options("dry_run")
def mirror(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see 'resect recipes ls') or YAML path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Mirror folder to fill (created; an existing mirror is added to).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value options over the recipe's (as for 'resect run').")] = None,
    dry_run: bool = SHARED,
) -> None:
    """Download exactly what RECIPE reads from the Hub (checkpoint, datasets of its tasks, prompt and
    code collections) into one folder, in the published layouts, and print the command that runs
    the recipe from it on a machine without network."""
    from rich.console import Console

    from resect.outputs import adding_to
    from resect.ownership import check_addable
    from resect.run.mirroring import downloads, fetch
    from resect.run.recipebook import find_recipe, parse_overrides, read_recipe, spec_from
    from resect.run.spec import check_spec

    data = read_recipe(recipe)
    spec = spec_from(data, parse_overrides(overrides or []))
    check_spec(spec)
    inputs = [find_recipe(recipe), spec.model, spec.corpus, spec.toxicity_prompts]
    check_addable(out, "mirror", inputs=inputs)  # before any work: a new or empty folder, or a mirror resect made
    items = downloads(spec)
    console = Console()
    for item in items:
        what = "by hand" if item.kind == "manual" else f"{item.kind}"
        configs = sorted(c for c in item.configs if c) if item.kind == "dataset" else []
        console.print(f"{what:>8}  {item.repo}" + (f"  ({len(configs)} configs: {', '.join(configs[:6])}{', ...' if len(configs) > 6 else ''})" if configs else ""))
    if dry_run:
        return
    with adding_to(out, "mirror", inputs=inputs):  # a folder it made and could not fill is removed, with its new parents
        try:
            manual = fetch(items, out)
        except Exception as exc:  # noqa: BLE001 - no network, no permission, unknown repo: one line
            from resect.errors import ResectError

            raise ResectError(f"Downloading into '{out}' failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                              "Run 'resect mirror' where the Hugging Face Hub is reachable.") from None  # fmt: skip
    for step in manual:
        console.print(f"still to do: {step}")
    extra = " ".join(o for o in overrides or [] if not o.startswith("mirror="))
    console.print(f"\noffline, run:  resect run {recipe} mirror={out.resolve()}{' ' + extra if extra else ''}")
