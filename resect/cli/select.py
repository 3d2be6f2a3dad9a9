"""`resect select --stats STATS --rule skew --target biology --out MASK`: statistics to an expert mask."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import BLOCKS, app
from .options import SHARED, with_options


@app.command(rich_help_panel=BLOCKS)
@with_options("groups", "force")
def select(
    stats: Annotated[Path, typer.Option("--stats", "-s", help="Statistics file from `resect profile`.")],
    rule: Annotated[str, typer.Option("--rule", metavar="skew|skew-mean|correlation|topk|quantile", help="Selection rule: skew, skew-mean, correlation, topk or quantile.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask file to write (.json = interchange form, else compact binary).")],
    target: Annotated[str | None, typer.Option(help="Label whose experts to select (skew, skew-mean, and topk/quantile by specificity).")] = None,
    ratio: Annotated[float | None, typer.Option(help="skew: score on the target >= ratio x the second-highest label's (default 2.0); skew-mean: x the other labels' mean (default 1.25).")] = None,
    threshold: Annotated[float | None, typer.Option(help="correlation: Pearson r >= threshold, in [-1, 1] (default 0.1).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="topk: experts per routing group (default 100).")] = None,
    quantile: Annotated[float | None, typer.Option(help="quantile: keep the top (1 - q) share of ranked experts per group (default 0.99).")] = None,
    min_tokens: Annotated[int, typer.Option(help="Every label the rule reads needs at least this many tokens.")] = 100,
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help="Refuse unless the statistics come from this checkpoint (folder or repo id).")] = None,
    top: Annotated[int, typer.Option(help="How many of the strongest selected experts to print.")] = 10,
    groups: str | None = SHARED,
    force: bool = SHARED,
) -> None:
    """Select the experts tied to a label (or to the per-token score) and write them as a mask."""
    from resect.edit.select import parse_groups, select_experts, strongest
    from resect.edit.stats import RoutingStats
    from resect.outputs import claim
    from resect.ownership import check_output

    check_output(out, [stats, model], kind="mask", force=force)
    from resect.checks import check_numbers

    check_numbers({"min_tokens": min_tokens, "top": top, "ratio": ratio, "threshold": threshold, "k": k, "quantile": quantile})
    chosen = parse_groups(groups)
    routing = RoutingStats.load(stats)
    params = {"ratio": ratio, "threshold": threshold, "k": k, "quantile": quantile}
    fingerprint = None
    if model is not None:
        from resect.model.checkpoint import inspect_checkpoint
        from resect.model.fingerprint import checkpoint_fingerprint
        from resect.model.hub import resolve_model_path

        fingerprint = checkpoint_fingerprint(inspect_checkpoint(resolve_model_path(model)).path)
    mask = select_experts(routing, rule, target=target, min_tokens=min_tokens, model=fingerprint, groups=chosen, **params)
    mask.meta["stats_file"] = str(stats)
    with claim(out, "mask", inputs=[stats, model], force=force) as c:
        c.write(mask.to_bytes(out))
    _print(mask, strongest(routing, mask, target=None if rule == "correlation" else target, top=top), rule, out)


def _print(mask, rows: list[dict], rule: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = Table(title=f"{mask.total:,} experts selected -> {out}")
    counts.add_column("group", justify="right")
    counts.add_column("experts", justify="right")
    counts.add_column("share", justify="right")
    per_group = mask.moe_experts**2
    for g, n in mask.counts().items():
        counts.add_row(str(g), f"{n:,}", f"{100 * n / per_group:.2f}%")
    console.print(counts)
    if rows:
        console.print(experts_table(rows, "Strongest selected experts", by_correlation=rule == "correlation" or mask.meta.get("target") is None))


def experts_table(rows: list[dict], title: str, *, by_correlation: bool):
    """A rich table of ranked experts (rows from resect.edit.select.strongest)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("group", "expert (flat)", "(i, j)"):
        table.add_column(col, justify="right")
    if by_correlation:
        table.add_column("pearson r", justify="right")
    else:
        for col in ("score", "second label", "its score", "ratio"):
            table.add_column(col, justify="right")
    for r in rows:
        cells = [str(r["group"]), str(r["flat"]), f"({r['i']}, {r['j']})"]
        if by_correlation:
            cells.append(f"{r['key']:.4f}")
        else:
            cells += [f"{r['score']:.3g}", r["second_label"], f"{r['second']:.3g}", f"{r['key']:.2f}"]
        table.add_row(*cells)
    return table
