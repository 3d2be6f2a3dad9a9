"""`resect run RECIPE [key=value ...]` and `resect recipes ls | show NAME`."""

from __future__ import annotations

from typing import Annotated

import typer

from . import EDITS, app

recipes_app = typer.Typer(help="List and show the shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes", rich_help_panel=EDITS)


@app.command(context_settings={"allow_extra_args": False}, rich_help_panel=EDITS)
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see 'resect recipes ls') or YAML path.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value options over the recipe's.")] = None,
) -> None:
    """Run a recipe: command line over recipe over defaults (training recipes need out=DIR)."""
    from resect.run.recipebook import find_recipe, is_training, parse_overrides, read_recipe, spec_from

    data = read_recipe(recipe)
    if is_training(data):
        from resect.errors import UsageError
        from resect.world.train import load_recipe, run_recipe

        rest = [o for o in overrides or [] if not o.startswith("out=")]
        outs = [o[4:] for o in overrides or [] if o.startswith("out=")]
        if not outs:
            raise UsageError("A training recipe needs out=DIR (where the trained checkpoint goes).")
        run_recipe(load_recipe(find_recipe(recipe), rest), outs[-1])
        return
    from .edit import execute

    execute(spec_from(data, parse_overrides(overrides or [])), inputs=(find_recipe(recipe),))


@recipes_app.command("ls")
def recipes_ls() -> None:
    """The shipped recipes with the command that runs each."""
    from rich.console import Console
    from rich.table import Table

    from resect.run.recipebook import recipe_files

    table = Table("recipe", "command")
    for name, path in recipe_files().items():
        table.add_row(name, path.read_text().splitlines()[0].lstrip("# "))
    Console().print(table)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or path.")]) -> None:
    """Print a recipe."""
    from resect.run.recipebook import find_recipe

    typer.echo(find_recipe(name).read_text())
