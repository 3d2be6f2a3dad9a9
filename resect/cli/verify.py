"""`resect verify EDITED`: the CI gate. Exit 0 pass, 1 a threshold breached, 2 usage or input error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import EVALUATION, app
from .options import SHARED, csv, placement, with_options


@app.command(rich_help_panel=EVALUATION)
@with_options("target_tasks", "general_tasks", "min_target_drop", "max_general_drop", "min_toxicity_drop", "confidence", "toxicity_prompts", "samples", "max_new_tokens",
              "temperature", "top_p", "scorer", "prompt_limit", "include_path", "limit", "batch_size", "seed", "device", "dtype", "no_cache", "force")
def verify(
    edited: Annotated[str, typer.Argument(metavar="MODEL", help="Edited checkpoint folder.")],
    baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="Baseline checkpoint (default: the source in EDITED's provenance).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for verify.json, verify.md and verify.png.")] = Path("resect-verify"),
    step_summary: Annotated[bool, typer.Option("--step-summary", metavar="", help="Append verify.md to $GITHUB_STEP_SUMMARY.")] = False,
    target_tasks: str | None = SHARED, general_tasks: str | None = SHARED, min_target_drop: float | None = SHARED, max_general_drop: float | None = SHARED,
    min_toxicity_drop: float | None = SHARED, confidence: float | None = SHARED,
    toxicity_prompts: Path | None = SHARED, samples: int = SHARED, max_new_tokens: int = SHARED, temperature: float = SHARED, top_p: float = SHARED,
    scorer: str = SHARED, prompt_limit: int | None = SHARED, include_path: list[Path] | None = SHARED, limit: float | None = SHARED,
    batch_size: int = SHARED, seed: int = SHARED, device: str = SHARED, dtype: str = SHARED, no_cache: bool = SHARED, force: bool = SHARED,
) -> None:  # fmt: skip
    """Evaluate EDITED against its baseline and gate on thresholds: targets must fall, the rest must hold."""
    from resect.gate.evaluate import check_run_options
    from resect.gate.toxicity import check_settings
    from resect.gate.verify import verify as run_verify
    from resect.outputs import claim
    from resect.ownership import check_output

    from .eval import quiet_lm_eval

    quiet_lm_eval()
    check_run_options(limit, batch_size, seed)
    from resect.checks import check_numbers

    check_numbers({"confidence": confidence, "min_toxicity_drop": min_toxicity_drop})  # before any model loads
    device, dtype = placement(device, dtype)
    inputs = [edited, baseline, *(include_path or []), toxicity_prompts]
    check_output(out, inputs, kind="verify", force=force, make_parents=True)
    if prompt_limit is not None or toxicity_prompts is not None:
        check_settings(samples, max_new_tokens, temperature, top_p, prompt_limit)
    from resect.progress import reporter

    with claim(out, "verify", inputs=inputs, force=force) as c, reporter() as r:
        work = c.work_folder()
        report = run_verify(
            edited, baseline,
            target_tasks=csv(target_tasks) or [], general_tasks=csv(general_tasks) or [],
            min_target_drop=min_target_drop, max_general_drop=max_general_drop, min_toxicity_drop=min_toxicity_drop, confidence=confidence,
            target_toxicity=[] if toxicity_prompts is None else [str(toxicity_prompts)],
            toxicity_settings={"samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                               "limit": prompt_limit, "scorer": scorer},
            include_path=include_path, limit=limit, batch_size=batch_size, seed=seed, use_cache=not no_cache,
            out_dir=work, dtype=dtype, device=device, reporter=r,
        )  # fmt: skip
        c.finish(work)
    _print(report, out)
    if step_summary and os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write((out / "verify.md").read_text())
    if report["verdict"] != "pass":
        raise typer.Exit(1)


def _print(report: dict, out: Path) -> None:
    from rich.console import Console

    from resect.gate.report import Report, print_verdict

    console = Console()
    if not console.is_terminal:  # CI logs: wide enough for the table
        console = Console(width=140)
    typed = Report.from_dict(report)
    title = f"{Path(typed.edited['path']).name} vs baseline {Path(typed.baseline['path']).name}"
    where = f"report in {out}/verify.json, verify.md, verify.png" if typed.verdict == "pass" else f"report in {out}"
    print_verdict(typed, console, title=title, where=where)
