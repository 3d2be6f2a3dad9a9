"""`resect experts`: what one expert responds to, or which experts are most specific to a label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import BLOCKS, app
from .options import SHARED, placement, with_options


def parse_expert(spec: str, *, experts: int, groups: int) -> tuple[int, int]:
    """'GROUP/FLATID' or 'GROUP/i,j' -> (group, flat id), checked against the model's geometry."""
    from resect.errors import UsageError

    try:
        group_text, expert_text = spec.split("/")
        group = int(group_text)
        parts = [int(p) for p in expert_text.split(",")]
    except ValueError:
        raise UsageError(f"--expert '{spec}' is not GROUP/FLATID or GROUP/i,j (e.g. 2/1234 or 2/2,210).") from None
    if len(parts) not in (1, 2):
        raise UsageError(f"--expert '{spec}' is not GROUP/FLATID or GROUP/i,j (e.g. 2/1234 or 2/2,210).")
    if not 0 <= group < groups:
        raise UsageError(f"Group {group} does not exist: the model has routing groups 0..{groups - 1}.")
    limit = experts if len(parts) == 2 else experts * experts
    if any(not 0 <= p < limit for p in parts):
        raise UsageError(f"Expert '{expert_text}' is outside the model: halves lie in [0, {experts}), flat ids in [0, {experts * experts}).")
    return group, parts[0] if len(parts) == 1 else parts[0] * experts + parts[1]


@app.command(rich_help_panel=BLOCKS)
@with_options("corpus", "max_tokens_per_label", "batch_size", "device", "dtype")
def experts(
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help="Checkpoint folder (needed with --expert; checked against --stats).")] = None,
    expert: Annotated[str | None, typer.Option(help="GROUP/FLATID or GROUP/i,j: show the tokens routing to it most strongly.")] = None,
    stats: Annotated[Path | None, typer.Option("--stats", "-s", help="Statistics file: list the experts most specific to --label.")] = None,
    label: Annotated[str | None, typer.Option(help="Label whose most specific experts to list (with --stats).")] = None,
    top: Annotated[int, typer.Option(help="How many rows to show.")] = 20,
    context: Annotated[int, typer.Option(help="Tokens of context shown before each token.")] = 8,
    corpus: str | None = SHARED, max_tokens_per_label: int | None = SHARED, batch_size: int = SHARED, device: str = SHARED, dtype: str = SHARED,
) -> None:
    """Show the tokens and contexts an expert fires on (MODEL --expert --corpus) or a label's specific experts (--stats --label)."""
    from resect.checks import check_numbers
    from resect.errors import UsageError

    check_numbers({"top": top, "context": context, "batch_size": batch_size, "max_tokens_per_label": max_tokens_per_label})
    if top < 1:
        raise UsageError(f"--top must be at least 1, found {top}.")
    if expert is not None:
        if model is None or corpus is None:
            raise UsageError("--expert needs MODEL and --corpus: the tokens come from running the model on that text.")
        device, dtype = placement(device, dtype)
        _show_examples(model, expert, corpus, top=top, context=context, max_tokens=max_tokens_per_label, batch_size=batch_size,
                       device=device, dtype=dtype)  # fmt: skip
    elif stats is not None and label is not None:
        _show_specific(stats, label, model=model, top=top)
    else:
        raise UsageError("Give MODEL --expert GROUP/ID --corpus CORPUS, or --stats STATS --label LABEL.")


def _show_examples(model: str, spec: str, corpus: str, *, top: int, context: int, max_tokens: int | None, batch_size: int, device: str, dtype: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from resect.edit.profile import expert_examples
    from resect.model.loading import load_model, load_tokenizer

    net, tok = load_model(model, dtype=dtype, device=device), load_tokenizer(model)
    cfg = net.config
    group, flat = parse_expert(spec, experts=cfg.moe_experts, groups=-(-cfg.num_hidden_layers // cfg.moe_groups))
    rows = expert_examples(net, tok, corpus, group=group, expert=flat, top=top, context=context,
                           max_tokens_per_label=max_tokens, batch_size=batch_size)  # fmt: skip
    i, j = divmod(flat, cfg.moe_experts)
    table = Table(title=f"Expert {group}/{flat} (i={i}, j={j}): strongest tokens")
    for col, justify in (("weight", "right"), ("label", "left"), ("context", "right"), ("token", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(f"{r['weight']:.4f}", r["label"], escape(repr(r["context"])[1:-1]), f"[bold]{escape(repr(r['token'])[1:-1])}[/bold]")
    Console().print(table)


def _show_specific(stats_path: Path, label: str, *, model: str | None, top: int) -> None:
    from rich.console import Console

    from resect.edit.select import expert_row, ordered, ranking
    from resect.edit.stats import RoutingStats

    from .select import experts_table

    stats = RoutingStats.load(stats_path)
    stats.label_index(label)
    if model is not None:
        from resect.model.checkpoint import inspect_checkpoint
        from resect.model.fingerprint import checkpoint_fingerprint
        from resect.model.hub import resolve_model_path

        stats.check_model(checkpoint_fingerprint(inspect_checkpoint(resolve_model_path(model)).path))
    rows = []
    for g in range(stats.num_groups):
        rank = ranking(stats, g, label)
        rows += [expert_row(stats, g, flat, rank, label) for flat in ordered(rank)[:top].tolist()]
    rows.sort(key=lambda r: (-r["key"], -r["score"], r["group"], r["flat"]))
    Console().print(experts_table(rows[:top], f"Experts most specific to '{label}' ({stats.token_counts[label]:,} tokens)", by_correlation=False))
