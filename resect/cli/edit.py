"""`resect domain`, `resect language`, `resect toxicity`: profile, select, apply, verify, report.

The three share their options (resect.cli.options) and build one RunSpec each; `resect run` reads
the same fields from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..run.spec import TOXICITY_DEFAULTS
from . import EDITS, app
from .options import csv, with_options

Model = Annotated[str | None, typer.Argument(metavar="MODEL", help="Checkpoint folder or Hugging Face repo id (default: the built-in world model). A model from 'resect world train --out RUN' (RUN/model) brings its world's corpora and quizzes from RUN/data.")]
Out = Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Run directory to create (default: resect-runs/KIND-TARGET-TIME).")]
Rule = Annotated[str | None, typer.Option("--rule", metavar="skew|skew-mean", help="Selection rule: skew (the paper's: over the runner-up label; the default on published checkpoints) or skew-mean (over the other labels' mean; the default for domains of a generated world).")]
Ratio = Annotated[float | None, typer.Option("--ratio", help="How many times the runner-up's score (skew: default 2.0, the paper's; 3.0 for languages of a generated world) or the other labels' mean (skew-mean: default 1.25) an expert's score on the target must reach.")]
Refine = Annotated[int | None, typer.Option("--refine", help="After the rule, add up to N experts per routing group whose removal (to first order, on the edited model) raises the target's loss on its documents' marked spans more than it raises any other label's document's.")]
Tune = Annotated[int | None, typer.Option("--tune", help="After the rule (and --refine), tune the mask for N gradient steps: the target's marked tokens pushed below the model's next choice, no other label's made less likely than before.")]
MaxRecovery = Annotated[float | None, typer.Option("--max-recovery", metavar="PTS", help="After the gate, probe the edit as 'resect probe' does (relearning, held-out facts, prompts, a linear readout) and fail (exit 1) when a probe gives back more than this many points over the oracle (a language: % of held-out perplexity; toxicity: points of toxicity probability). Edits of a world model.")]
Probes = Annotated[str | None, typer.Option("--probes", metavar="NAME,...", help="With --max-recovery: which probes (any of relearn, rtt, in-context, representation; default all a domain allows; a language: relearn; toxicity: relearn, in-context).")]

SELECTION = ("corpus", "groups", "max_tokens_per_label")
GATE = ("include_path", "target_tasks", "general_tasks", "min_target_drop", "max_general_drop", "confidence", "limit")
SEARCH = ("search", "validation_target_tasks", "validation_general_tasks", "search_confidence")
RUNNING = ("batch_size", "seed", "device", "dtype", "mirror", "no_cache", "force", "dry_run")
SAMPLING = ("samples", "max_new_tokens", "temperature", "top_p", "scorer")


def spec_of(kind: str, target: str | None, model: str | None, rule: str | None, **options: Any):
    """The RunSpec of an edit command's arguments: the one place command-line values become spec fields."""
    from resect.edit.select import parse_groups
    from resect.run.spec import RunSpec

    toxicity = {k: options.pop(k) for k in (*SAMPLING, "profile_samples") if k in options}
    includes = [str(p) for p in options.pop("include_path") or []]
    prompts = options.pop("toxicity_prompts", None)
    validation = options.pop("validation_prompts", None)
    return RunSpec(
        kind, target, model, rule, toxicity=toxicity, include_path=includes or None,
        toxicity_prompts=None if prompts is None else str(prompts), groups=parse_groups(options.pop("groups")),
        target_tasks=csv(options.pop("target_tasks", None)), general_tasks=csv(options.pop("general_tasks")),
        validation_target_tasks=csv(options.pop("validation_target_tasks", None)), validation_general_tasks=csv(options.pop("validation_general_tasks", None)),
        validation_prompts=None if validation is None else str(validation), probes=csv(options.pop("probes", None)), **options,
    )  # fmt: skip


def execute(spec, *, inputs: tuple = ()) -> None:
    """Run the pipeline with progress on stderr (live on a terminal, plain lines in a log) and finish
    with the summary table and exit code. `inputs`: files the run directory must not touch (a recipe)."""
    from rich.console import Console

    from resect.progress import reporter
    from resect.run.pipeline import run_edit

    with reporter() as r:
        result = run_edit(spec, reporter=r, inputs=inputs)
    render(result, Console())
    raise typer.Exit(result.exit_code)


def render(result, console) -> None:
    from resect.gate.report import print_verdict

    share = 100 * result.mask_total / max(result.experts_total, 1)
    console.print(f"masked {result.mask_total:,} of {result.experts_total:,} experts ({share:.2f}%): "
                  + ", ".join(f"group {g}: {n:,}" for g, n in sorted(result.mask_counts.items())))
    if result.verdict == "dry-run":
        console.print("dry run: nothing written")
        return
    print_verdict(result.report, console, title=f"verdict: {result.verdict.upper()}")
    if result.probe is not None:
        p = result.probe
        line = "no probe gives back more than" if p["verdict"] == "pass" else f"FAIL: a probe gives back {p['worst_recovery']:+.1f} {p['unit']}, more than"
        console.print(f"probes ({', '.join(p['settings']['probes'])}): {line} {p['settings']['max_recovery']:g} {p['unit']} (probe.json, relearn.png)")
    console.print(f"run directory: {result.out}  (report.md, verify.json, mask.json, checkpoint/)")


@app.command(rich_help_panel=EDITS)
@with_options(*SELECTION, *GATE, *SEARCH, *RUNNING)
def domain(
    remove: Annotated[str, typer.Option("--remove", help="Domain to cut (e.g. biology).")],
    model: Model = None, rule: Rule = None, ratio: Ratio = None, refine: Refine = None, tune: Tune = None, out: Out = None,
    max_recovery: MaxRecovery = None, probes: Probes = None, **options: Any,
) -> None:  # fmt: skip
    """Remove a knowledge domain: experts whose routing on it is RATIO x the next domain's (or the others' mean)."""
    execute(spec_of("domain", remove, model, rule, ratio=ratio, refine=refine, tune=tune, out=out, max_recovery=max_recovery, probes=probes, **options))


@app.command(rich_help_panel=EDITS)
@with_options(*SELECTION, *GATE, *SEARCH, *RUNNING)
def language(
    remove: Annotated[str, typer.Option("--remove", help="Language to cut (e.g. python).")],
    model: Model = None, rule: Rule = None, ratio: Ratio = None, refine: Refine = None, tune: Tune = None, out: Out = None,
    max_recovery: MaxRecovery = None, probes: Probes = None, **options: Any,
) -> None:  # fmt: skip
    """Remove a programming (or natural) language; verified by perplexity (relative %) and quizzes."""
    execute(spec_of("language", remove, model, rule, ratio=ratio, refine=refine, tune=tune, out=out, max_recovery=max_recovery, probes=probes, **options))


@app.command(rich_help_panel=EDITS)
@with_options("toxicity_prompts", *SAMPLING, "groups", "include_path", "general_tasks", "min_target_drop", "max_general_drop", "min_toxicity_drop", "confidence", "limit", "search", "validation_prompts", "validation_general_tasks", "search_confidence", *RUNNING)
def toxicity(
    threshold: Annotated[float | None, typer.Option("--threshold", help="Remove experts whose token-level Pearson r with toxicity is at least this (lower removes more). Default: 0.1, the paper's; 0.05 on a generated world, chosen on its validation data.")] = None,
    model: Model = None,
    profile_samples: Annotated[int, typer.Option("--profile-samples", help="Generations per prompt profiled (drawn from their own seeds).")] = TOXICITY_DEFAULTS["profile_samples"],
    profile_prompts: Annotated[Path | None, typer.Option("--profile-prompts", metavar="FILE", help="Prompts JSONL profiling samples from, none of them the gate's or the search's (default: the world's profiling prompts where it has them, else the gate's, with a warning).")] = None,
    out: Out = None, max_recovery: MaxRecovery = None, probes: Probes = None, **options: Any,
) -> None:  # fmt: skip
    """Purge toxic experts: profile scored generations, remove experts correlated with toxicity, measure."""
    execute(spec_of("toxicity", None, model, "correlation", threshold=threshold, profile_samples=profile_samples,
                    profile_prompts=str(profile_prompts) if profile_prompts else None, out=out, max_recovery=max_recovery, probes=probes, **options))  # fmt: skip
