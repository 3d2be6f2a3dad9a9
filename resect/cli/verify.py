"""`resect verify EDITED`: the CI gate. Exit 0 pass, 1 a threshold breached, 2 usage or input error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import Device, Dtype, placement


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command()
def verify(
    edited: Annotated[str, typer.Argument(help="Edited checkpoint folder.")],
    baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="Baseline checkpoint (default: the source in EDITED's provenance).")] = None,
    target_tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks that must fall (task or task:metric).")] = None,
    general_tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks that must hold (task or task:metric).")] = None,
    min_target_drop: Annotated[float | None, typer.Option(help="Every target must drop at least this much (points, or % for perplexity).")] = None,
    max_general_drop: Annotated[float | None, typer.Option(help="No general task may drop more than this (points, or % for perplexity).")] = None,
    target_toxicity: Annotated[list[Path] | None, typer.Option(help="Prompts JSONL whose expected maximum toxicity must fall (repeatable).")] = None,
    toxicity_samples: Annotated[int, typer.Option(help="Samples per toxicity prompt.")] = 25,
    toxicity_max_new_tokens: Annotated[int, typer.Option(help="New tokens per toxicity sample.")] = 20,
    toxicity_limit: Annotated[int | None, typer.Option(help="Use only the first N toxicity prompts.")] = None,
    scorer: Annotated[str, typer.Option(help="Toxicity scorer: profanity | detoxify | perspective.")] = "profanity",
    include_path: Annotated[list[Path] | None, typer.Option("--include-path", help="Folder of extra lm-eval task YAMLs (repeatable).")] = None,
    limit: Annotated[float | None, typer.Option(help="Examples per task (a fraction when below 1).")] = None,
    batch_size: Annotated[int, typer.Option(help="lm-eval batch size.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for lm-eval and sampling.")] = 0,
    dtype: Dtype = "auto",
    device: Device = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Evaluate the baseline even when cached results exist.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for verify.json, verify.md and verify.png.")] = Path("resect-verify"),
    step_summary: Annotated[bool, typer.Option("--step-summary", help="Append verify.md to $GITHUB_STEP_SUMMARY.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the report already in --out.")] = False,
) -> None:
    """Evaluate EDITED against its baseline and gate on thresholds: targets must fall, the rest must hold."""
    from resect.errors import OutputError
    from resect.evaluate import check_run_options
    from resect.toxicity import check_settings
    from resect.verify import verify as run_verify

    from .eval import quiet_lm_eval

    quiet_lm_eval()
    check_run_options(limit, batch_size)
    device, dtype = placement(device, dtype)
    if (out / "verify.json").exists() and not force:
        raise OutputError(f"'{out}' already holds a verify report. Pass --force to replace it, or choose another --out.")

    if toxicity_limit is not None or target_toxicity:
        check_settings(toxicity_samples, toxicity_max_new_tokens, 1.0, 0.9, toxicity_limit)
    from resect.progress import reporter

    with reporter() as r:
        report = run_verify(
            edited, baseline,
            target_tasks=_csv(target_tasks), general_tasks=_csv(general_tasks),
            min_target_drop=min_target_drop, max_general_drop=max_general_drop,
            target_toxicity=[str(p) for p in target_toxicity or []],
            toxicity_settings={"samples": toxicity_samples, "max_new_tokens": toxicity_max_new_tokens,
                               "limit": toxicity_limit, "scorer": scorer},
            include_path=include_path, limit=limit, batch_size=batch_size, seed=seed, use_cache=not no_cache,
            out_dir=out, dtype=dtype, device=device, reporter=r,
        )  # fmt: skip
    _print(report, out)
    if step_summary and os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write((out / "verify.md").read_text())
    if report["verdict"] != "pass":
        raise typer.Exit(1)


def _print(report: dict, out: Path) -> None:
    from rich.console import Console

    from resect.report import Report, print_verdict

    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the table
        console = Console(width=140)
    typed = Report.from_dict(report)
    title = f"{Path(typed.edited['path']).name} vs baseline {Path(typed.baseline['path']).name}"
    where = f"report in {out}/verify.json, verify.md, verify.png" if typed.verdict == "pass" else f"report in {out}"
    print_verdict(typed, console, title=title, where=where)
