"""`resect profile MODEL --corpus CORPUS --out STATS`: routing statistics over labelled text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import BLOCKS, app
from .options import SCORERS, SHARED, placement, with_options


def _init_distributed(device: str) -> str:
    """Join the torchrun process group when launched with WORLD_SIZE > 1; returns this rank's device."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    import atexit

    atexit.register(_leave, dist)  # a group left open aborts the process at exit ("terminate called without an active exception")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return device


def _leave(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@app.command(rich_help_panel=BLOCKS)
@with_options("corpus", "max_tokens_per_label", "seed", "batch_size", "device", "dtype", "force")
def profile(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint folder or Hugging Face repo id.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Statistics file to write (safetensors).")],
    max_length: Annotated[int, typer.Option(help="Longer texts are cut into pieces of this many tokens.")] = 512,
    scorer: Annotated[str | None, typer.Option("--scorer", metavar=SCORERS, help="Score every token with this toxicity scorer, for the correlation rule (default: tokens are not scored).")] = None,
    score_window: Annotated[int, typer.Option(help="A token's score is the scorer's score of the last N tokens ending at it.")] = 32,
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue an interrupted run from OUT.partial.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Save partial state every N batches.")] = 50,
    corpus: str | None = SHARED, max_tokens_per_label: int | None = SHARED, seed: int = SHARED, batch_size: int = SHARED,
    device: str = SHARED, dtype: str = SHARED, force: bool = SHARED,
) -> None:
    """Stream labelled text through MODEL and record each expert's mean routing score per label and group."""
    if corpus is None:
        from resect.errors import UsageError

        raise UsageError("'resect profile' needs --corpus (JSONL of {\"text\", \"label\"}, a folder of text files per label, a corpus YAML, or task:NAME).")
    from resect.edit.profile import check_options, dist_info, partial_path, profile_corpus
    from resect.model.loading import load_model, load_tokenizer
    from resect.outputs import claim, remove_owned
    from resect.ownership import check_output, owner_problem

    check_options(max_tokens_per_label=max_tokens_per_label, seed=seed, batch_size=batch_size, max_length=max_length,
                  score_window=score_window, checkpoint_every=checkpoint_every)  # fmt: skip
    if scorer is not None:
        from resect.edit.scoring import SCORERS
        from resect.errors import EvalError, unknown

        if scorer not in SCORERS:  # before the model loads
            raise EvalError(unknown("scorer", scorer, SCORERS))

    device, dtype = placement(device, dtype)  # under torchrun, each rank takes cuda:LOCAL_RANK
    device = _init_distributed(device)
    rank, world = dist_info()
    inputs = [model, corpus.removeprefix("task:")]
    check_output(out, inputs, kind="stats", force=force)
    checkpoint = out.with_name(out.name + ".partial")
    mine = partial_path(checkpoint, rank, world)
    if not resume and (mine.exists() or mine.is_symlink()) and owner_problem(mine, "partial"):
        from resect.errors import OutputError

        raise OutputError(f"'{mine}' (where profiling keeps its partial state) exists and {owner_problem(mine, 'partial')}. "
                          "Move it away, or choose another --out.")  # fmt: skip
    from resect.edit.corpus import load_corpus
    from resect.model.checkpoint import inspect_checkpoint
    from resect.model.hub import resolve_model_path

    inspect_checkpoint(resolve_model_path(model))  # a damaged checkpoint, a corpus that cannot be read, a tokenizer that does not fit:
    corpus = load_corpus(corpus)  # all before the model loads
    tok = load_tokenizer(model)
    options = dict(
        max_tokens_per_label=max_tokens_per_label, seed=seed, batch_size=batch_size, max_length=max_length,
        scorer=scorer, score_window=score_window, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=checkpoint if resume else None,
    )  # fmt: skip
    import contextlib

    with claim(out, "stats", inputs=inputs, force=force) if rank == 0 else contextlib.nullcontext() as c:  # rank 0 writes
        net = load_model(model, dtype=dtype, device=device)
        try:
            if rank == 0:
                from resect.progress import reporter

                with reporter() as r:
                    stats = profile_corpus(net, tok, corpus, progress=r.meter("profiling", "tok"), **options)
            else:
                stats = profile_corpus(net, tok, corpus, **options)
        except KeyboardInterrupt:
            typer.echo(f"error: interrupted; partial state (if any) is in '{checkpoint}': rerun with --resume to continue.", err=True)
            raise typer.Exit(130) from None
        if rank == 0:
            stats.meta["model"] = str(model)
            c.write(stats.to_bytes())
    remove_owned(mine, "partial")
    if rank == 0:
        _summary(stats, out)


def _summary(stats, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Routing statistics -> {out}")
    table.add_column("label")
    table.add_column("tokens", justify="right")
    for label in stats.labels:
        table.add_row(label, f"{stats.token_counts[label]:,}")
    console = Console()
    console.print(table)
    if stats.corr is not None:
        console.print(f"scored tokens: {stats.scored_tokens:,}")
    console.print(f"{stats.num_groups} routing groups, E={stats.moe_experts}; model {stats.model_fingerprint}, corpus {stats.corpus_fingerprint}")
