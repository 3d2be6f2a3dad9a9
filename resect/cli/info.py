"""`resect info MODEL`: what a Monet checkpoint is, without loading its weights."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from . import DATA, app


@app.command(rich_help_panel=DATA)
def info(
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help="Checkpoint folder or Hugging Face repo id (default: the built-in world model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON.")] = False,
) -> None:
    """Describe a Monet checkpoint: decomposition, routing groups, experts, threshold, shards."""
    from resect.model.checkpoint import describe, inspect_checkpoint
    from resect.model.hub import resolve_model_path

    facts = describe(inspect_checkpoint(resolve_model_path(model)))
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Monet checkpoint {facts['path']}", show_header=False)
    rows = [
        ("decomposition", facts["decomposition"]),
        ("layers", str(facts["layers"])),
        ("hidden size / attention heads", f"{facts['hidden_size']} / {facts['attention_heads']}"),
        ("routing groups", str(facts["routing_groups"])),
        ("group layers", "  ".join(f"{g}:{ls[0]}-{ls[-1]}" for g, ls in enumerate(facts["group_layers"]))),
        ("halves per side (E)", str(facts["halves_per_side"])),
        ("experts per group", f"{facts['experts_per_group']:,}"),
        ("experts in total", f"{facts['experts_total']:,}"),
        ("router heads (H) / expert dim (m)", f"{facts['router_heads']} / {facts['expert_dim']}"),
        ("moe_topk / threshold sigma", f"{facts['moe_topk']} / {facts['routing_threshold']:.4f}"),
        ("parameters", f"{facts['parameters']:,}"),
        ("dtype", facts["dtype"]),
        ("shards", f"{len(facts['shards'])}: " + ", ".join(facts["shards"])),
    ]
    if facts["expert_mask"]:
        rows.append(("expert mask", json.dumps(facts["expert_mask"])))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
