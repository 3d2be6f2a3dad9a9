"""`resect probe RUN`: try to bring the removed domain, language or toxic register back, and compare with a model that never had it.
Exit 0 measured (or within --max-recovery), 1 a probe gave back more than --max-recovery, 2 usage or input error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import EVALUATION, app
from .options import SHARED, csv, placement, with_options


def _ints(text: str) -> list[int]:
    from resect.errors import UsageError

    try:
        return [int(t) for t in csv(text) or []]
    except ValueError:
        raise UsageError(f"--examples must be comma-separated whole numbers (5,10,50,100), got '{text}'.") from None


@app.command(rich_help_panel=EVALUATION)
@with_options("corpus", "batch_size", "seed", "device", "dtype", "no_cache", "force")
def probe(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run directory of a domain, language or toxicity edit (or its edited checkpoint).")],
    baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="The source checkpoint (default: the one in the edit's provenance).")] = None,
    oracle: Annotated[str | None, typer.Option("--oracle", metavar="MODEL",
                      help="A model trained without the target ('resect world train --leave-out'); default: the one shipped for the built-in model.")] = None,
    no_oracle: Annotated[bool, typer.Option("--no-oracle", metavar="", help="Compare with chance instead of an oracle.")] = False,
    target: Annotated[str | None, typer.Option("--target", metavar="NAME", help="The removed domain or language (a published edit: its corpus label), when RUN does not record it.")] = None,
    probes: Annotated[str | None, typer.Option("--probes", metavar="NAME,...", help="Any of relearn, rtt, in-context, representation (default: all; a language or a published checkpoint's edit: relearn; toxicity: relearn, in-context).")] = None,
    examples: Annotated[str, typer.Option("--examples", "-n", metavar="N,...", help="Examples each relearning attack trains on.")] = "5,10,50,100",
    method: Annotated[str, typer.Option("--method", help="lora (adapters on every linear layer, through peft) or full (every weight).")] = "lora",
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 128,
    alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha.")] = 16.0,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the attacks.")] = 2e-4,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the examples.")] = 3,
    folds: Annotated[int, typer.Option("--folds", help="Folds of facts: rtt and the linear probe train on all but one.")] = 5,
    shots: Annotated[int, typer.Option("--shots", help="Solved questions in the prompt (in-context probe; toxicity: toxic utterances before each prompt).")] = 5,
    max_recovery: Annotated[float | None, typer.Option("--max-recovery", metavar="PTS", help="Exit 1 when a probe gives back more than this many points (a language: % of held-out perplexity; toxicity: points of toxicity probability; default: the run's max_recovery, when it set one).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for probe.json, report.md and relearn.png.")] = Path("resect-probe"),
    corpus: str | None = SHARED, batch_size: int = SHARED, seed: int = SHARED, device: str = SHARED, dtype: str = SHARED, no_cache: bool = SHARED, force: bool = SHARED,
) -> None:  # fmt: skip
    """Relearn, prompt, rephrase and read out the removed domain on the edited model, its source and an oracle.
    Reports how much of the edit each probe gives back, in points and as a share of the source's lead.
    A toxicity edit is probed by relearning on the world's toxic utterances and with some of them in the prompt,
    measured by the toxicity probability of the gate's toxic prompts.
    An edit of a published checkpoint (no world, no oracle) gets the relearning attack on its own tasks, training on
    the removed label's documents of its profiling corpus (or of --corpus)."""
    import json

    from resect.errors import UsageError
    from resect.gate.evaluate import require_extras
    from resect.outputs import claim
    from resect.ownership import check_output
    from resect.run.attacks import Tuning
    from resect.run.probe import ProbeSpec, plan_probe, run_probe
    from resect.run.probereport import markdown, relearn_chart

    from .eval import quiet_lm_eval

    if no_oracle and oracle is not None:
        raise UsageError("--oracle and --no-oracle contradict each other. Pass one.")
    require_extras("lm_eval", "accelerate", "matplotlib")
    quiet_lm_eval()
    device, dtype = placement(device, dtype)
    spec = ProbeSpec(run, baseline=baseline, oracle=oracle, use_oracle=not no_oracle, target=target, probes=csv(probes), corpus=corpus,
                     examples=_ints(examples), tuning=Tuning(method=method, rank=rank, alpha=alpha, lr=lr, epochs=epochs),
                     folds=folds, shots=shots, max_recovery=max_recovery, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
                     use_cache=not no_cache)  # fmt: skip
    plan = plan_probe(spec)
    inputs = [run, plan.edited, plan.source, plan.oracle]
    check_output(out, inputs, kind="probe", force=force, make_parents=True)
    from resect.progress import reporter

    with claim(out, "probe", inputs=inputs, force=force) as c, reporter() as r:
        work = c.work_folder()
        report = run_probe(plan, r)
        (work / "probe.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(markdown(report))
        chart = relearn_chart(report)
        if chart is not None:
            (work / "relearn.png").write_bytes(chart)
        c.finish(work)
    _print(report, out)
    if report["verdict"] == "fail":
        raise typer.Exit(1)


def _print(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    models = list(report["models"])
    table = Table(title=f"probes of {report['target']} removed", show_edge=False)
    for col in ("probe", "setting", *models, "gives back", "[low, high]", "share"):
        table.add_column(escape(col), justify="left" if col in ("probe", "setting") else "right")
    for r in report["rows"]:
        bounds = "-" if r["low"] is None else f"[{r['low']:+.1f}, {r['high']:+.1f}]"
        share = "-" if r["share"] is None else f"{100 * r['share']:.0f}%"
        table.add_row(r["probe"], r["setting"], *(f"{r[m]:.1f}" for m in models), f"{r['recovery']:+.1f}", escape(bounds), share)
    console.print(table)
    ref = {"oracle": "the oracle", "chance": "chance"}.get(report["rows"][0]["reference"], "the edit before the attack") if report["rows"] else "chance"
    unit = "points" if report.get("unit", "points") == "points" else "% lower held-out perplexity"
    console.print(f"gives back: edited minus {ref} under the same probe, in {unit}; bounds one-sided at 95%, paired by fact"
                  + (" (by prompt)" if report.get("metric") == "toxicity" else "" if report["world"] is not None else " (by question)"))  # fmt: skip
    verdict = report["verdict"]
    p = report["settings"]["max_recovery"]
    line = "measured (no --max-recovery gate)" if p is None else (
        f"PASS: no probe gives back more than {p:g} {report['unit']}" if verdict == "pass" else f"FAIL: a probe gives back {report['worst_recovery']:+.1f} {report['unit']}, more than {p:g}")
    console.print(line)
    console.print(f"report in {out}/probe.json, report.md" + (", relearn.png" if (out / "relearn.png").is_file() else ""))
