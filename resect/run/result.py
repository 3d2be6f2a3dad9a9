"""What a run returns: the verdict, the mask's counts, the verification, timings and what it read
(resect.run.pipeline makes it; resect.run.report writes report.md from it; the CLI prints it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..gate.report import Report


@dataclass
class RunResult:
    out: Path | None
    verdict: str  # "pass" | "fail" | "dry-run": the gate's, failed too when a probe gives back more than max_recovery
    mask_counts: dict[int, int]
    mask_total: int
    experts_total: int
    report: Report | None  # the verification (None for a dry run)
    timings: dict[str, float]
    stats_cached: bool
    token_counts: dict[str, int] = field(default_factory=dict)  # profiling tokens per label
    search: dict[str, Any] | None = None  # with --search: {"trials", "chosen", "validation"} (resect.run.search)
    profiled_documents: dict[str, int] = field(default_factory=dict)  # profiling documents per label
    probe: dict[str, Any] | None = None  # with max_recovery: probe.json's report (resect.run.probereport)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "fail" else 0


__all__ = ["RunResult"]
