"""`resect world generate --out DIR` and `resect world train --out DIR`: rebuild the built-in model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import WORLD, app
from .options import SHARED, with_options

world_app = typer.Typer(help="Generate the built-in world and train its model.", no_args_is_help=True)
app.add_typer(world_app, name="world", rich_help_panel=WORLD)


@world_app.command("generate")
@with_options("seed")
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="New folder for the generated world.")],
    seed: int = SHARED,
    names: Annotated[str, typer.Option("--names", help="Entity names: hyphenated (Rix-quor, the built-in world's) or joined (Rixquor).")] = "hyphenated",
) -> None:
    """Write the world's splits: training text, profiling corpora, quizzes, held-out code, prompts, lm-eval tasks."""
    from resect.world import write_world

    path = write_world(out, seed, names=names)
    typer.echo(f"wrote the world (seed {seed}) to {path}", err=True)


@world_app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for data/, model/, train_log.jsonl and loss.png.")],
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Training recipe YAML (default: the built-in recipe).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Reuse a generated world instead of generating one.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value recipe overrides, e.g. train.steps=20.")] = None,
    leave_out: Annotated[list[str] | None, typer.Option("--leave-out", metavar="TARGET", help="A target the second phase never reads (repeatable): an oracle.")] = None,
) -> None:
    """Train the built-in model's recipe (about 40 minutes on one CPU core) and save the checkpoint."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from resect.errors import UsageError
    from resect.world.train import check_run, load_recipe, run_recipe

    if data is not None and not (data / "train.jsonl").is_file():
        raise UsageError(f"'{data}' has no train.jsonl. Pass a folder written by 'resect world generate'.")
    config = load_recipe(recipe, overrides or [])
    if leave_out:
        config["train"]["leave_out"] = sorted({*config["train"]["leave_out"], *leave_out})
    check_run(config, out)  # before the progress bar, so that an error is the only line printed
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=config["train"]["steps"], loss=float("nan"))
        path = run_recipe(config, out, data=data, on_step=lambda step, total, m: progress.update(task, completed=step, loss=m["loss"]))
    typer.echo(f"saved the model to {path}; loss curve in {out / 'loss.png'}", err=True)
