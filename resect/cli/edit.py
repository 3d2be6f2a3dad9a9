"""`resect domain`, `resect language`, `resect toxicity`: profile, select, apply, verify, report."""

from __future__ import annotations

from typing import Annotated

import typer

from . import app
from .options import Device, Dtype

Model = Annotated[str | None, typer.Option("--model", "-m", help="Checkpoint folder or Hugging Face repo id (default: the built-in world model). A model from 'resect world train --out RUN' (RUN/model) brings its world's corpora and quizzes from RUN/data.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Profile and evaluate the baseline again instead of reading the caches.")]
Mirror = Annotated[str | None, typer.Option("--mirror", help="A local mirror of the checkpoint and datasets (made by 'resect mirror'), for a machine without network.")]
Out = Annotated[str | None, typer.Option("--out", "-o", help="Run directory to create (default: resect-runs/KIND-TARGET-TIME).")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Profile and select, print the counts, write nothing.")]
Corpus = Annotated[str | None, typer.Option("--corpus", help="Labelled profiling corpus (JSONL, folder, corpus YAML or task:NAME).")]
Include = Annotated[str | None, typer.Option("--include-path", help="Folder of lm-eval task YAMLs.")]
Tasks = Annotated[str | None, typer.Option(help="Comma-separated lm-eval tasks.")]
MinDrop = Annotated[float | None, typer.Option("--min-target-drop", help="Fail unless every target task drops at least this much.")]
MaxDrop = Annotated[float | None, typer.Option("--max-general-drop", help="Fail if any general task drops more than this.")]
Limit = Annotated[float | None, typer.Option("--limit", help="Documents per task (lm-eval --limit).")]
Seed = Annotated[int, typer.Option("--seed")]
Batch = Annotated[int, typer.Option("--batch-size")]
Groups = Annotated[str | None, typer.Option("--groups", help="Select only in these routing groups, e.g. 1,2 (default: every group).")]
Refine = Annotated[int | None, typer.Option("--refine", help="After the rule, add up to N experts per routing group whose removal (to first order, on the edited model) raises the target's loss on its documents' marked spans more than it raises any other label's document's.")]
Tune = Annotated[int | None, typer.Option("--tune", help="After the rule (and --refine), tune the mask for N gradient steps: the target's marked tokens pushed below the model's next choice, no other label's made less likely than before.")]


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def execute(spec) -> None:
    """Run the pipeline with progress on stderr (live on a terminal, plain lines in a log) and finish
    with the summary table and exit code."""
    from rich.console import Console

    from resect.pipeline import run_edit
    from resect.progress import reporter

    with reporter() as r:
        result = run_edit(spec, reporter=r)
    render(result, Console())
    raise typer.Exit(result.exit_code)


def render(result, console) -> None:
    from resect.report import print_verdict

    share = 100 * result.mask_total / max(result.experts_total, 1)
    console.print(f"masked {result.mask_total:,} of {result.experts_total:,} experts ({share:.2f}%): "
                  + ", ".join(f"group {g}: {n:,}" for g, n in sorted(result.mask_counts.items())))
    if result.verdict == "dry-run":
        console.print("dry run: nothing written")
        return
    print_verdict(result.report, console, title=f"verdict: {result.verdict.upper()}")
    console.print(f"run directory: {result.out}  (report.md, verify.json, mask.json, checkpoint/)")


@app.command()
def domain(
    remove: Annotated[str, typer.Option("--remove", help="Domain to cut (e.g. biology).")],
    model: Model = None,
    ratio: Annotated[float | None, typer.Option(help="Score on the domain over the runner-up domain's (skew, default 2.0, the paper's) or the other domains' mean (skew-mean, default 1.25).")] = None,
    rule: Annotated[str | None, typer.Option(help="Selection rule: skew (the paper's; the default on published checkpoints) or skew-mean (the default on a generated world).")] = None,
    corpus: Corpus = None, include_path: Include = None, target_tasks: Tasks = None, general_tasks: Tasks = None,
    min_target_drop: MinDrop = None, max_general_drop: MaxDrop = None, limit: Limit = None,
    out: Out = None, force: Force = False, dry_run: DryRun = False, seed: Seed = 0, batch_size: Batch = 16, groups: Groups = None,
    refine: Refine = None, tune: Tune = None, device: Device = "auto", dtype: Dtype = "auto", mirror: Mirror = None, no_cache: NoCache = False,
) -> None:  # fmt: skip
    """Remove a knowledge domain: experts whose routing on it is RATIO x the next domain's (or the others' mean)."""
    from resect.select import parse_groups
    from resect.spec import RunSpec

    execute(RunSpec("domain", remove, model, rule, ratio=ratio, corpus=corpus, include_path=include_path,
                    target_tasks=_split(target_tasks), general_tasks=_split(general_tasks), min_target_drop=min_target_drop,
                    max_general_drop=max_general_drop, limit=limit, out=out, force=force, dry_run=dry_run, seed=seed,
                    batch_size=batch_size, groups=parse_groups(groups), refine=refine, tune=tune, device=device, dtype=dtype, mirror=mirror, no_cache=no_cache))  # fmt: skip


@app.command()
def language(
    remove: Annotated[str, typer.Option("--remove", help="Language to cut (e.g. python).")],
    model: Model = None,
    ratio: Annotated[float | None, typer.Option(help="Score on the language over the runner-up's (skew, default 2.0; 3.0 on a generated world) or the others' mean (skew-mean, default 1.25).")] = None,
    rule: Annotated[str | None, typer.Option(help="Selection rule: skew (default) or skew-mean.")] = None,
    corpus: Corpus = None, include_path: Include = None, target_tasks: Tasks = None, general_tasks: Tasks = None,
    min_target_drop: MinDrop = None, max_general_drop: MaxDrop = None, limit: Limit = None,
    out: Out = None, force: Force = False, dry_run: DryRun = False, seed: Seed = 0, batch_size: Batch = 16, groups: Groups = None,
    refine: Refine = None, tune: Tune = None, device: Device = "auto", dtype: Dtype = "auto", mirror: Mirror = None, no_cache: NoCache = False,
) -> None:  # fmt: skip
    """Remove a programming (or natural) language; verified by perplexity (relative %) and quizzes."""
    from resect.select import parse_groups
    from resect.spec import RunSpec

    execute(RunSpec("language", remove, model, rule, ratio=ratio, corpus=corpus, include_path=include_path,
                    target_tasks=_split(target_tasks), general_tasks=_split(general_tasks), min_target_drop=min_target_drop,
                    max_general_drop=max_general_drop, limit=limit, out=out, force=force, dry_run=dry_run, seed=seed,
                    batch_size=batch_size, groups=parse_groups(groups), refine=refine, tune=tune, device=device, dtype=dtype, mirror=mirror, no_cache=no_cache))  # fmt: skip


@app.command()
def toxicity(
    threshold: Annotated[float, typer.Option(help="Remove experts whose token-level Pearson r with toxicity is at least this (lower removes more).")] = 0.1,
    model: Model = None,
    prompts: Annotated[str | None, typer.Option("--toxicity-prompts", help="Prompts JSONL ({\"prompt\": ..., \"toxic\": bool}).")] = None,
    samples: Annotated[int, typer.Option(help="Samples per prompt when measuring.")] = 25,
    profile_samples: Annotated[int, typer.Option(help="Generations per prompt profiled (drawn from their own seeds).")] = 8,
    max_new_tokens: Annotated[int, typer.Option()] = 20,
    scorer: Annotated[str, typer.Option(help="profanity (offline), detoxify, perspective.")] = "profanity",
    include_path: Include = None, general_tasks: Tasks = None,
    min_target_drop: MinDrop = None, max_general_drop: MaxDrop = None, limit: Limit = None,
    out: Out = None, force: Force = False, dry_run: DryRun = False, seed: Seed = 0, batch_size: Batch = 16, groups: Groups = None,
    device: Device = "auto", dtype: Dtype = "auto", mirror: Mirror = None, no_cache: NoCache = False,
) -> None:  # fmt: skip
    """Purge toxic experts: profile scored generations, remove experts correlated with toxicity, measure."""
    from resect.select import parse_groups
    from resect.spec import RunSpec

    execute(RunSpec("toxicity", None, model, "correlation", threshold=threshold, toxicity_prompts=prompts,
                    toxicity={"samples": samples, "max_new_tokens": max_new_tokens, "scorer": scorer, "profile_samples": profile_samples},
                    include_path=include_path, general_tasks=_split(general_tasks), min_target_drop=min_target_drop,
                    max_general_drop=max_general_drop, limit=limit, out=out, force=force, dry_run=dry_run, seed=seed,
                    batch_size=batch_size, groups=parse_groups(groups), device=device, dtype=dtype, mirror=mirror, no_cache=no_cache))  # fmt: skip
