"""One verdict, one model, one renderer per medium.

A verification produces a `Report` (typed rows, the verdict, what was compared); the terminal
table, the markdown of verify.md and report.md, the JSON of verify.json and the PNG chart are all
drawn from it, with one unit system: drops in points (100 x the fall of a higher-is-better score,
toxicity included) or percent (the relative rise of a perplexity-like metric), positive = worse,
± one standard error (paired when both models scored the same documents). A row that fails its
gate is BREACHED everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PASSED, BREACHED = "pass", "BREACHED"


@dataclass
class Row:
    """One task's comparison: values, drop with its standard error, and whether it passed."""

    task: str
    role: str  # "target" | "general"
    metric: str
    unit: str  # "points" | "%"
    baseline: float
    edited: float
    baseline_stderr: float | None
    edited_stderr: float | None
    drop: float
    drop_stderr: float | None
    threshold: float
    passed: bool
    paired: bool = False  # drop_stderr from per-document differences on the same documents
    low: float | None = None  # one-sided bounds of the drop at `confidence` (paired cluster bootstrap)
    high: float | None = None
    resolution: float | None = None  # the smallest drop the task can tell from none at `confidence`
    confidence: float | None = None
    gated_on: str = "estimate"  # "estimate" (the drop itself) or "bound" (--confidence: low for targets, high for the rest)
    clusters: int | None = None  # independent units (facts, questions, prompts) the evidence rests on
    n: int | None = None  # documents (questions, prompts) scored by both models
    continuous: dict | None = None  # multiple choice: {"metric": "p_correct", "baseline", "edited", "drop", "low", "high"}

    @property
    def result(self) -> str:
        return PASSED if self.passed else BREACHED

    @property
    def unit_short(self) -> str:
        return "pts" if self.unit == "points" else "%"

    def gate(self) -> str:
        """The rule the drop must meet, e.g. '≥ 5 pts' (a target) or '≤ 2 %' (a general task)."""
        return ("≥ " if self.role == "target" else "≤ ") + f"{self.threshold:g} {self.unit_short}"

    def drop_text(self, *, unit: bool = True) -> str:
        text = f"{self.drop:+.2f}" + (f" {self.unit_short}" if unit else "")
        if self.drop_stderr is not None and not math.isnan(self.drop_stderr):
            text += f" ± {self.drop_stderr:.2g}"
        return text

    def bounds_text(self) -> str:
        """'[low, high]' at the row's confidence, or '' when there is no paired evidence."""
        if self.low is None or self.high is None:
            return ""
        return f"[{self.low:+.2f}, {self.high:+.2f}]"

    @property
    def unresolved(self) -> bool:
        """A threshold below the smallest drop the task can resolve: the gate cannot tell it from none."""
        return self.resolution is not None and 0 < self.threshold < self.resolution

    def continuous_text(self) -> str:
        c = self.continuous
        if not c:
            return ""
        return f"{c['metric']} {c['baseline']:.3f} -> {c['edited']:.3f}, drop {c['drop']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"


@dataclass
class Report:
    """What `resect verify` (and the edit commands' verification) found; verify.json is its dict."""

    verdict: str  # "pass" | "fail"
    rows: list[Row]
    breached: list[str] = field(default_factory=list)
    edited: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        names = {f.name for f in dataclasses.fields(Row)}
        rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in data.get("rows", [])]
        return cls(data["verdict"], rows, list(data.get("breached", [])), dict(data.get("edited", {})), dict(data.get("baseline", {})),
                   dict(data.get("settings", {})), dict(data.get("versions", {})))  # fmt: skip


def _value(value: float, se: float | None) -> str:
    return f"{value:.4g}" if se is None or math.isnan(se) else f"{value:.4g} ± {se:.2g}"


# ---- terminal ------------------------------------------------------------------------------------
def terminal_table(report: Report, title: str | None = None):
    """A rich Table that reads whole at 80 columns: each task's name on its own line with its
    metric and role beneath, each drop over its standard error, the drop's unit in its gate."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, title_justify="left")
    table.add_column("task", no_wrap=True)
    for col in ("before", "after", "drop", "gate"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for r in report.rows:
        paired = ", paired" if r.paired else ""
        result = "[green]pass[/green]" if r.passed else f"[bold red]{BREACHED}[/bold red]"
        spread = r.bounds_text() or ("" if r.drop_stderr is None or math.isnan(r.drop_stderr) else f"± {r.drop_stderr:.2g}")
        gate = r.gate() + ("\n[dim]on its bound[/dim]" if r.gated_on == "bound" else "")
        table.add_row(f"{r.task}\n[dim]{r.metric}, {r.role}{paired}[/dim]", f"{r.baseline:.4g}", f"{r.edited:.4g}",
                      f"{r.drop:+.2f}" + (f"\n[dim]{spread}[/dim]" if spread else ""), gate, result)  # fmt: skip
    return table


def print_verdict(report: Report, console, *, title: str | None = None, where: str = "") -> None:
    """The table, then one line: PASS, or FAIL with the breached tasks; `where` names the report files."""
    console.print(terminal_table(report, title))
    confidence = report.settings.get("confidence") or report.settings.get("report_confidence")
    console.print(f"[dim]drop: positive = worse; \\[low, high]: one-sided bounds at {100 * (confidence or 0.95):g}% (paired bootstrap)[/dim]")
    for r in report.rows:
        if r.unresolved:
            console.print(f"[yellow]{r.task}: its gate of {r.threshold:g} {r.unit_short} is below the {r.resolution:.2g} {r.unit_short} "
                          "it can resolve: the data cannot tell that drop from none[/yellow]")  # fmt: skip
    if report.baseline.get("cached"):
        console.print("baseline results: from cache")
    if report.verdict == "pass":
        console.print(f"[bold green]PASS[/bold green]{'  ' + where if where else ''}")
    else:
        console.print(f"[bold red]FAIL[/bold red]  breached: {', '.join(report.breached)}{'  (' + where + ')' if where else ''}")


# ---- markdown ------------------------------------------------------------------------------------
LEGEND = (
    "Drop = how much worse the edited model does (positive = worse): points, 100 × (baseline − edited), for "
    "higher-is-better scores and toxicity; percent, 100 × (edited − baseline) / baseline, for perplexity-like metrics and "
    "the toxicity probability. ± is one standard error; [low, high] are one-sided bounds of the paired drop at the stated "
    "confidence (a bootstrap over questions, the questions of one fact drawn together). Resolves: the smallest drop the "
    "task can tell from none at that confidence. p_correct: the probability of the right answer, normalised over the choices."
)


def markdown_table(rows: list[Row]) -> list[str]:
    lines = ["| task | role | metric | baseline | edited | drop | bounds | resolves | gate | result | p_correct |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        result = PASSED if r.passed else f"**{BREACHED}**"
        resolves = "" if r.resolution is None else f"{r.resolution:.2g}{' (above the gate)' if r.unresolved else ''}"
        gate = r.gate() + (" on its bound" if r.gated_on == "bound" else "")
        lines.append(f"| {r.task} | {r.role} | {r.metric} | {_value(r.baseline, r.baseline_stderr)} | {_value(r.edited, r.edited_stderr)} | "
                     f"{r.drop_text()}{' (paired)' if r.paired else ''} | {r.bounds_text()} | {resolves} | {gate} | {result} | "
                     f"{r.continuous_text()} |")  # fmt: skip
    return lines


def verify_markdown(report: Report) -> str:
    """verify.md, for $GITHUB_STEP_SUMMARY: one row per task, breached rows marked."""
    ok = report.verdict == "pass"
    edited, baseline = report.edited, report.baseline
    lines = [
        f"## resect verify: {'PASS ✅' if ok else 'FAIL ❌'}",
        "",
        f"Edited `{edited.get('path')}` (`{edited.get('fingerprint')}`) against baseline "
        f"`{baseline.get('path')}` (`{baseline.get('fingerprint')}`{', cached' if baseline.get('cached') else ''}).",
        "",
        *markdown_table(report.rows),
        "",
        *[f"- {r.task}: its gate of {r.threshold:g} {r.unit_short} is below the {r.resolution:.2g} {r.unit_short} it can resolve at "
          f"{100 * (r.confidence or 0.95):g}%: the data cannot tell that drop from none." for r in report.rows if r.unresolved],
        "",
        LEGEND,
        f"lm-eval {report.versions.get('lm_eval')}, resect {report.versions.get('resect')}, limit {report.settings.get('limit')}, "
        f"seed {report.settings.get('seed')}.",
        "",
    ]
    return "\n".join(lines)


# ---- PNG -----------------------------------------------------------------------------------------
def verify_chart(report: Report) -> bytes:
    """A horizontal bar chart of drops with their standard errors and gates, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    fig, ax = plt.subplots(figsize=(7, 1 + 0.5 * max(len(rows), 1)))
    labels = [f"{r.task} ({r.role}, {r.unit_short})" for r in rows]
    errors = [0.0 if r.drop_stderr is None or math.isnan(r.drop_stderr) else r.drop_stderr for r in rows]
    colors = ["tab:green" if r.passed else "tab:red" for r in rows]
    ax.barh(range(len(rows)), [r.drop for r in rows], xerr=errors, color=colors)
    for i, r in enumerate(rows):
        ax.plot([r.threshold] * 2, [i - 0.4, i + 0.4], color="black", linestyle="--")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()  # same order as the table
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("drop (positive = edited model worse); dashed = gate")
    ax.set_title(f"resect verify: {report.verdict.upper()}")
    return figure_png(fig, dpi=100)


def figure_png(fig, dpi: float | str = "figure") -> bytes:
    """A matplotlib figure laid out, as PNG bytes (at `dpi`, by default the figure's own; no
    software tag: the same figure, the same bytes), and closed."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


__all__ = ["BREACHED", "LEGEND", "PASSED", "Report", "Row", "figure_png", "markdown_table", "print_verdict", "terminal_table", "verify_chart", "verify_markdown"]
