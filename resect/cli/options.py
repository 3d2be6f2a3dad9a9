"""Options shared by the commands, declared once so that every command spells and means them the same.

`OPTIONS` holds each shared option's annotation and default; `with_options(*names)` appends the named
ones to a command's signature (the command receives them as keyword arguments), the way one options
object is added to every merge command. A command declares only the options that are its own."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import typer

from resect.run.spec import TOXICITY_DEFAULTS as SAMPLING  # light: the shared defaults, no model code

Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="auto|cpu|cuda|cuda:N",
        help="Where the model runs: auto (a CUDA GPU when this torch sees one, else the CPU), cpu, cuda or cuda:N.",
    ),
]  # fmt: skip
Dtype = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],  # resect.model.loading.DTYPE_CHOICES
    typer.Option("--dtype", help="Weights and activations: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16."),
]  # fmt: skip
SCORERS = "profanity|detoxify|perspective"  # resect.edit.scoring.SCORERS, checked with a suggestion for a typo
BATCH_SIZE = 16  # sequences per forward pass, for profiling, evaluation and sampling alike

OPTIONS: dict[str, tuple[Any, Any]] = {
    "corpus": (Annotated[str | None, typer.Option("--corpus", "-c", metavar="CORPUS", help="Labelled text: JSONL of {\"text\", \"label\"}, a folder of text files per label, a corpus YAML, or task:NAME.")], None),
    "include_path": (Annotated[list[Path] | None, typer.Option("--include-path", metavar="DIR", help="Folder of extra lm-eval task YAMLs (repeatable).")], None),
    "target_tasks": (Annotated[str | None, typer.Option("--target-tasks", metavar="TASK,...", help="Comma-separated lm-eval tasks that must fall (task or task:metric).")], None),
    "general_tasks": (Annotated[str | None, typer.Option("--general-tasks", metavar="TASK,...", help="Comma-separated lm-eval tasks that must hold (task or task:metric).")], None),
    "min_target_drop": (Annotated[float | None, typer.Option("--min-target-drop", help="Every target must drop at least this much (points; % for perplexity).")], None),
    "max_general_drop": (Annotated[float | None, typer.Option("--max-general-drop", help="No general task may drop more than this (points; % for perplexity).")], None),
    "min_toxicity_drop": (Annotated[float | None, typer.Option("--min-toxicity-drop", metavar="PCT", help="The toxicity probability must fall by at least this share of the baseline's (percent; the toxicity edit's default: a third).")], None),
    "confidence": (Annotated[float | None, typer.Option("--confidence", help="Gate on confidence bounds: every target must drop by at least its threshold at this confidence (its lower bound), every other task by at most its threshold (its upper bound), e.g. 0.95. Default: the estimates.")], None),
    "search_confidence": (Annotated[float | None, typer.Option("--search-confidence", help="With --search: the chosen cut's collateral must stay inside the gate at this confidence (its upper bound on the validation data; default 0.9).")], None),
    "limit": (Annotated[float | None, typer.Option("--limit", help="Examples per lm-eval task (a fraction when below 1); for quick checks.")], None),
    "toxicity_prompts": (Annotated[Path | None, typer.Option("--toxicity-prompts", metavar="FILE", help="Prompts JSONL: lines of {\"prompt\": ..., \"toxic\"?: bool}.")], None),
    "samples": (Annotated[int, typer.Option("--samples", help="Sampled continuations per toxicity prompt.")], SAMPLING["samples"]),
    "max_new_tokens": (Annotated[int, typer.Option("--max-new-tokens", help="New tokens per sampled continuation.")], SAMPLING["max_new_tokens"]),
    "temperature": (Annotated[float, typer.Option("--temperature", help="Sampling temperature.")], SAMPLING["temperature"]),
    "top_p": (Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the likeliest tokens up to this probability mass.")], SAMPLING["top_p"]),
    "prompt_limit": (Annotated[int | None, typer.Option("--prompt-limit", help="Use only the first N toxicity prompts.")], None),
    "scorer": (Annotated[str, typer.Option("--scorer", metavar=SCORERS, help="Toxicity scorer: profanity (offline), detoxify (a local classifier) or perspective (Google's API).")], SAMPLING["scorer"]),
    "search": (Annotated[int | None, typer.Option("--search", metavar="N", help="Choose the rule, its ratio (or threshold) and the routing groups by N trials on validation data the gate does not read; the gate then judges the choice on its test data.")], None),
    "validation_target_tasks": (Annotated[str | None, typer.Option("--validation-target-tasks", metavar="TASK,...", help="With --search: lm-eval tasks the search scores the target's drop on (default: the world's validation quizzes or code).")], None),
    "validation_general_tasks": (Annotated[str | None, typer.Option("--validation-general-tasks", metavar="TASK,...", help="With --search: lm-eval tasks the search keeps from falling (default: the world's other validation tasks).")], None),
    "validation_prompts": (Annotated[Path | None, typer.Option("--validation-prompts", metavar="FILE", help="With --search on toxicity: prompts JSONL the search measures on (default: the world's validation prompts).")], None),
    "groups": (Annotated[str | None, typer.Option("--groups", metavar="G,...", help="Select only in these routing groups, e.g. 1,2 (default: every group).")], None),
    "max_tokens_per_label": (Annotated[int | None, typer.Option("--max-tokens-per-label", help="Read at most this many tokens per label.")], None),
    "batch_size": (Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")], BATCH_SIZE),
    "seed": (Annotated[int, typer.Option("--seed", help="Seed of every sampler: same inputs and seed, same result.")], 0),
    "device": (Device, "auto"),
    "dtype": (Dtype, "auto"),
    "mirror": (Annotated[str | None, typer.Option("--mirror", metavar="DIR", help="A local mirror of the checkpoint and datasets (made by 'resect mirror'), for a machine without network.")], None),
    "no_cache": (Annotated[bool, typer.Option("--no-cache", metavar="", help="Profile and evaluate again instead of reading the caches.")], False),
    "force": (Annotated[bool, typer.Option("--force", metavar="", help="Replace what resect wrote at --out before (never anything else).")], False),
    "dry_run": (Annotated[bool, typer.Option("--dry-run", metavar="", help="Show what would be done (an edit: profile, select and print the counts; a mirror: list the downloads); write nothing.")], False),
}  # fmt: skip

SHARED: Any = object()  # the default of a command's own parameter that takes the shared declaration of its name


def with_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append the named shared options to a command's own parameters."""
    unknown_names = [n for n in names if n not in OPTIONS]
    if unknown_names:
        raise KeyError(f"no shared option {unknown_names}")

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func, eval_str=True)
        shared = {n: inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=OPTIONS[n][0], default=OPTIONS[n][1]) for n in names}
        named = [p.name for p in own.parameters.values() if p.default is SHARED]
        if set(named) - set(shared):
            raise KeyError(f"{func.__name__}: {sorted(set(named) - set(shared))} default to SHARED but are not shared")
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in shared]
        params += list(shared.values())  # a parameter the command names itself (= SHARED, for its types) takes the shared declaration

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            return func(**kwargs)

        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return wrap


def csv(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def placement(device: str, dtype: str) -> tuple[str, str]:
    """(device, dtype) resolved and checked: a missing GPU is one line before any model loads."""
    from resect.model.loading import resolve_placement

    return resolve_placement(device, dtype)
