"""`resect apply MODEL --mask MASK [--mask MASK2 ...] --out DIR`: write an edited checkpoint;
`resect mask info MASK` and `resect mask union A B ... --out C`: look at and combine masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import BLOCKS, app
from .options import SHARED, with_options

mask_app = typer.Typer(help="Inspect and combine expert masks.", no_args_is_help=True)
app.add_typer(mask_app, name="mask", rich_help_panel=BLOCKS)

MaskFiles = Annotated[list[Path], typer.Option("--mask", help="Mask file (JSON resect.mask/v1 or binary); repeat to unite several.")]


@app.command(rich_help_panel=BLOCKS)
@with_options("force")
def apply(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Source checkpoint folder (Monet, or a checkpoint resect edited).")],
    mask: MaskFiles,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create for the edited checkpoint.")],
    force: bool = SHARED,
) -> None:
    """Write an edited checkpoint: the source's weights (hard links, untouched) plus the mask.

    It loads with resect, with transformers' trust_remote_code=True (no resect needed) and with
    lm-eval. Applying to an edited checkpoint unites its mask with the new ones."""
    from rich.console import Console

    from resect.edit.export import apply_masks

    result = apply_masks(model, list(mask), out, force=force)
    _summary(Console(), result.mask, title=f"edited checkpoint {result.path}")
    Console().print(
        f"source {result.source}; weights: {result.linked} hard-linked, {result.copied} copied; "
        f"mask fingerprint {result.mask.fingerprint()}"
    )


def _summary(console, mask, *, title: str) -> None:
    from rich.table import Table

    per_group = mask.moe_experts**2
    table = Table(title=title)
    for col in ("group", "removed", "share"):
        table.add_column(col, justify="right")
    for g, n in mask.counts().items():
        table.add_row(str(g), f"{n:,}", f"{100 * n / per_group:.2f}%")
    table.add_row("all", f"{mask.total:,}", f"{100 * mask.total / (per_group * mask.num_groups):.2f}%")
    console.print(table)


@mask_app.command("info")
def mask_info(path: Annotated[Path, typer.Argument(help="Mask file.")]) -> None:
    """Geometry, removed experts per group, fingerprint and metadata of a mask."""
    import json

    from rich.console import Console

    from resect.model.mask import ExpertMask

    m = ExpertMask.load(path)
    console = Console()
    _summary(console, m, title=f"{path}: E={m.moe_experts}, {m.num_groups} groups, fingerprint {m.fingerprint()}")
    if m.meta:
        console.print(json.dumps(m.meta, indent=2, default=str))


@mask_app.command("union")
@with_options("force")
def mask_union(
    paths: Annotated[list[Path], typer.Argument(help="Masks to unite (same geometry).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask file to write (.json for JSON, else binary).")],
    force: bool = SHARED,
) -> None:
    """Unite masks (an expert removed in any of them is removed)."""
    from rich.console import Console

    from resect.model.mask import ExpertMask
    from resect.outputs import claim
    from resect.ownership import check_output

    check_output(out, paths, kind="mask", force=force)
    masks = [ExpertMask.load(p) for p in paths]
    union = masks[0]
    for m in masks[1:]:
        union = union | m
    models = {m.meta["stats_model_fingerprint"] for m in masks if m.meta.get("stats_model_fingerprint")}
    if len(models) > 1:
        from resect.errors import MaskError

        raise MaskError(f"These masks were selected on statistics of {len(models)} different models ({', '.join(sorted(models))}). Unite masks of one model.")
    union.meta = {"union_of": [str(p) for p in paths], **({"stats_model_fingerprint": models.pop()} if models else {})}
    with claim(out, "mask", inputs=paths, force=force) as c:
        c.write(union.to_bytes(out))
    _summary(Console(), union, title=f"{out}: union of {len(paths)} masks, fingerprint {union.fingerprint()}")
