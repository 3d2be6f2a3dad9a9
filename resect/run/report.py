"""A run directory's report.md: the verdict, the per-task table (as in verify.md), the search, two plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import Plan
    from .result import RunResult

FEW_QUESTIONS = 100  # a validation task this small moves by several points when two answers change


def write_report(folder: Path, p: Plan, result: RunResult) -> None:
    """report.md with the verdict, the per-task table (as in verify.md) and two plots."""
    from ..gate.report import LEGEND, markdown_table

    plots = _plots(folder, p, result)
    low, high = p.gates()
    lines = [
        f"# resect {p.spec.kind}: {'remove ' + p.spec.target if p.spec.target else f'toxicity r >= {p.spec.threshold}'}",
        "",
        f"**Verdict: {result.verdict.upper()}**: target tasks must drop by at least {low:g}, general tasks by at most {high:g}"
        + ("." if result.probe is None else f"; no probe may give back more than {result.probe['settings']['max_recovery']:g} {result.probe['unit']} (below)."),
        "",
        f"- model: `{p.model_path}`",
        f"- rule: `{p.rule}` {json.dumps(p.rule_params)}"
        + ("" if p.spec.groups is None else f" in routing groups {', '.join(map(str, p.spec.groups))} only")
        + f"; statistics over `{p.corpus or 'generations'}`"
        + (" (from cache)" if result.stats_cached else ""),
        f"- masked experts: {result.mask_total:,} of {result.experts_total:,} "
        f"({100 * result.mask_total / max(result.experts_total, 1):.2f}%); per group: "
        + ", ".join(f"{g}: {n:,}" for g, n in sorted(result.mask_counts.items())),
        "- profiling tokens per label: " + ", ".join(f"{label} {n:,}" for label, n in sorted(result.token_counts.items())),
        _data_line(result),
        "- time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()),
        "",
        *markdown_table(result.report.rows),
        "",
        LEGEND,
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
        *_search_lines(result.search, high),
        *_probe_lines(result.probe),
    ]
    (folder / "report.md").write_text("\n".join(lines))


def _data_line(result: RunResult) -> str:
    """How much data each of profiling, the search and the gate read: no question serves two of them."""
    profiled = ", ".join(f"{label} {n:,}" for label, n in sorted(result.profiled_documents.items())) or "-"
    searched = result.search.get("sizes", {}) if result.search else {}
    rows = result.report.rows if result.report else []
    gate = ", ".join(f"{r.task} {r.n:,}" for r in rows if r.n is not None) or "-"
    search = f"{sum(searched.values()):,} questions ({', '.join(f'{t} {n:,}' for t, n in sorted(searched.items()))})" if searched else "none (no search)"
    return f"- data (each question in one of these only): profiling documents {profiled}; search {search}; gate {gate}"


def _search_lines(searched: dict[str, Any] | None, high: float) -> list[str]:
    """report.md's account of a search: what it scored on, what it chose and the front."""
    if not searched:
        return []
    from .search import describe, pareto_front

    trials, chosen, v = searched["trials"], searched["chosen"], searched["validation"]
    scored = ", ".join(v["target_tasks"] + v["general_tasks"] + ([Path(v["prompts"]).name] if v.get("prompts") else []))
    inside = chosen.collateral() <= high
    lines = [
        "## Search", "",
        f"{len(trials)} trials scored on validation data the gate does not read ({scored}); the table above is the test data's verdict.",
        "", f"Chosen: {describe(chosen)}"
        + ("" if inside else f" (no trial kept the collateral's upper bound within {high:g}: the least collateral was taken)"), "",
        "Drops are on the continuous paired metric (a quiz's probability of the right answer, points; perplexity, %); "
        "the collateral is the largest upper bound elsewhere.", "",
        "| trial | setting | experts | target drop (validation) | largest drop elsewhere | its upper bound | on the front |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    front = {t.number for t in pareto_front(trials)}
    se = lambda x: "" if x is None else f" ± {x:.1f}"  # noqa: E731
    for t in trials:
        mark = " **chosen**" if t.number == chosen.number else ""
        lines.append(f"| {t.number}{mark} | {t.setting()} | {t.experts:,} | {t.target_drop:.1f}{se(t.target_se)} | {t.general_drop:.1f}{se(t.general_se)} ({t.worst or '-'}) | {t.collateral():.1f} | {'yes' if t.number in front else ''} |")
    few = {task: n for task, n in searched.get("sizes", {}).items() if n < FEW_QUESTIONS}
    if few:
        rows = chosen.rows
        lines += ["", f"Validation tasks with fewer than {FEW_QUESTIONS} questions (their drops are noisy; the chosen trial's, with one standard error): "
                  + ", ".join(f"{t} ({n} questions, {rows.get(t, {}).get('drop', 0):.1f} ± {rows.get(t, {}).get('se') or 0:.1f})" for t, n in sorted(few.items()))]  # fmt: skip
    return [*lines, "", "![pareto.png](pareto.png)", ""]


def _probe_lines(probed: dict[str, Any] | None) -> list[str]:
    """The probes' section (resect probe's report.md), with its chart."""
    if probed is None:
        return []
    from .probereport import markdown

    return [markdown(probed)]


def _plots(folder: Path, p: Plan, result: RunResult) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in result.report.rows if r.baseline is not None and r.edited is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r.baseline for r in rows], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r.edited for r in rows], width=0.4, label="after")
        ax.set_xticks(list(xs), [r.task.removeprefix("world_") for r in rows], rotation=30, ha="right")
        ax.set_ylabel(rows[0].metric)
        ax.set_title(f"{p.spec.kind}: before and after the edit")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "accuracy.png", dpi=100)
        plt.close(fig)
        written.append("accuracy.png")
    fig, ax = plt.subplots(figsize=(5, 3))
    groups = sorted(result.mask_counts)
    ax.bar([str(g) for g in groups], [result.mask_counts[g] for g in groups])
    ax.set_xlabel("routing group")
    ax.set_ylabel("masked experts")
    fig.tight_layout()
    fig.savefig(folder / "experts.png", dpi=100)
    plt.close(fig)
    return written + ["experts.png"]


__all__ = ["write_report", "FEW_QUESTIONS"]
