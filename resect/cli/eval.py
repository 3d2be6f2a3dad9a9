"""`resect eval`, `resect ppl-tasks`, `resect toxicity-eval`: measure one model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import EVALUATION, app
from .options import SHARED, placement, with_options


def quiet_lm_eval() -> None:
    """lm-eval warns at length about in-memory models; keep that for --verbose."""
    import logging

    if logging.getLogger().level > logging.INFO:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _json_output(out: Path | None, kind: str, inputs: list, force: bool):
    """The results file being written (resect.outputs.claim), or nothing when the JSON goes to stdout."""
    import contextlib

    from resect.outputs import claim

    return contextlib.nullcontext() if out is None else claim(out, kind, inputs=inputs, force=force)


def _check_json_out(out: Path, inputs: list, kind: str, force: bool) -> None:
    """Before any work: a file name, not an input, not an existing file unless --force."""
    from resect.errors import OutputError
    from resect.ownership import check_output

    if out.is_dir():
        raise OutputError(f"'{out}' is a folder. Pass a file name for the results JSON.")
    check_output(out, inputs, kind=kind, force=force, make_parents=True)


def _write_json(data: dict, output) -> None:
    text = json.dumps(data, indent=2, default=str)
    if output is None:
        typer.echo(text)
        return
    output.write(text)
    typer.echo(f"wrote {output.out}", err=True)


@app.command("eval", rich_help_panel=EVALUATION)
@with_options("include_path", "limit", "batch_size", "seed", "device", "dtype", "no_cache", "force")
def eval_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint folder (edited or not) or Hugging Face repo id.")],
    tasks: Annotated[str, typer.Option("--tasks", "-t", metavar="TASK,...", help="Comma-separated lm-eval task names, task folders or YAML files.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE", help="Write lm-eval's full results JSON here (default: stdout).")] = None,
    include_path: list[Path] | None = SHARED, limit: float | None = SHARED, batch_size: int = SHARED, seed: int = SHARED,
    device: str = SHARED, dtype: str = SHARED, no_cache: bool = SHARED, force: bool = SHARED,
) -> None:
    """Run lm-eval on a Monet checkpoint in memory (masks included) and write lm-eval's results JSON.
    Results are cached by the checkpoint's weights, mask, tasks and settings (`resect verify` reads the same cache)."""
    from resect.gate.evaluate import require_extras

    require_extras("lm_eval", "accelerate")
    quiet_lm_eval()
    device, dtype = placement(device, dtype)
    requested = _csv(tasks)
    if not requested:
        raise typer.BadParameter("name at least one task", param_hint="--tasks")
    from resect.gate.baseline import EvalSettings, evaluate_checkpoint
    from resect.gate.evaluate import check_run_options, normalize_limit
    from resect.model.hub import resolve_model_path
    from resect.progress import reporter
    from resect.tasks import resolve_tasks

    check_run_options(limit, batch_size, seed)
    names, includes = resolve_tasks(requested, include_path)  # a typo fails before the model loads
    inputs = [model, *(include_path or []), *requested]
    if out is not None:
        _check_json_out(out, inputs, "results", force)
    settings = EvalSettings(names, includes, normalize_limit(limit), batch_size, seed, [], {}, dtype, device)
    with _json_output(out, "results", inputs, force) as output, reporter() as r:  # `resect verify` and the edit commands read the same cache
        results = evaluate_checkpoint(resolve_model_path(model), settings, use_cache=not no_cache, reporter=r)["results"]
        _write_json(results, output)
    _print_summary(results)


def _print_summary(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lm-eval results")
    for col in ("task", "metric", "value", "stderr"):
        table.add_column(col)
    for task, entry in sorted(results["results"].items()):
        for key, value in entry.items():
            name, _, filt = key.partition(",")
            if not filt or "_stderr" in name or not isinstance(value, (int, float)):
                continue
            se = entry.get(f"{name}_stderr,{filt}")
            table.add_row(task, name, f"{value:.4f}", f"{se:.4f}" if isinstance(se, (int, float)) else "-")
    Console(stderr=True).print(table)


@app.command("ppl-tasks", rich_help_panel=EVALUATION)
@with_options("force")
def ppl_tasks(
    corpus: Annotated[Path, typer.Argument(help="JSONL of {\"text\", \"label\"} lines of held-out text.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the task YAMLs and data (use it as --include-path).")],
    prefix: Annotated[str, typer.Option(help="Task names are <prefix>_<label>.")] = "ppl",
    max_docs: Annotated[int | None, typer.Option(help="Keep at most this many texts per label.")] = None,
    force: bool = SHARED,
) -> None:
    """Generate lm-eval perplexity tasks (loglikelihood_rolling), one per label, from held-out text, into a new folder."""
    from resect.gate.tasks import make_perplexity_tasks

    names = make_perplexity_tasks(corpus, out_dir, prefix=prefix, max_docs=max_docs, force=force)
    typer.echo(",".join(names))


@app.command("toxicity-eval", rich_help_panel=EVALUATION)
@with_options("toxicity_prompts", "samples", "max_new_tokens", "temperature", "top_p", "scorer", "prompt_limit", "seed", "device", "dtype", "force")
def toxicity_eval(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint folder (edited or not) or Hugging Face repo id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE", help="Write the toxicity JSON here (default: stdout).")] = None,
    toxicity_prompts: Path | None = SHARED, samples: int = SHARED, max_new_tokens: int = SHARED, temperature: float = SHARED, top_p: float = SHARED,
    scorer: str = SHARED, prompt_limit: int | None = SHARED, seed: int = SHARED, device: str = SHARED, dtype: str = SHARED, force: bool = SHARED,
) -> None:
    """Expected maximum toxicity and toxicity probability of sampled continuations (the paper's protocol)."""
    if toxicity_prompts is None:
        from resect.errors import UsageError

        raise UsageError("'resect toxicity-eval' needs --toxicity-prompts FILE.jsonl (lines {\"prompt\": ...}).")
    prompts, limit = toxicity_prompts, prompt_limit
    from resect.edit.scoring import get_scorer
    from resect.gate.toxicity import check_settings, measure_toxicity, read_prompts
    from resect.model.loading import load_model, load_tokenizer

    check_settings(samples, max_new_tokens, temperature, top_p, limit)
    from resect.checks import check_number

    check_number("seed", seed)
    device, dtype = placement(device, dtype)
    read_prompts(prompts)  # bad prompts, and a damaged checkpoint, fail before the model loads
    from resect.model.checkpoint import inspect_checkpoint
    from resect.model.hub import resolve_model_path

    inspect_checkpoint(resolve_model_path(model))
    get_scorer(scorer)
    if out is not None:
        _check_json_out(out, [model, prompts], "toxicity", force)
    from resect.progress import reporter

    with _json_output(out, "toxicity", [model, prompts], force) as output, reporter() as r:
        result = measure_toxicity(
            load_model(model, dtype=dtype, device=device), load_tokenizer(model), prompts, samples=samples, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, scorer=scorer, limit=limit, progress=r.meter("toxicity", "prompts"),
        )  # fmt: skip
        _write_json(result, output)
