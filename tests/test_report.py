"""One report, four media: the terminal table reads whole at 80 columns, and every medium says
the same thing in the same units and words."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from resect.gate.report import BREACHED, Report, Row, markdown_table, print_verdict, verify_chart, verify_markdown
from resect.run.recipebook import MMLU_PRO


def rows() -> list[Row]:
    out = [Row("resect_mmlu_pro_computer_science", "target", "acc", "points", 0.4123, 0.2051, 0.021, 0.019, 20.72, 2.1, 1.0, True, True),
           Row("heldout_javascript", "general", "word_perplexity", "%", 123.456, 130.2, None, None, 5.46, float("nan"), 5.0, False)]  # fmt: skip
    for category in MMLU_PRO:
        out.append(Row(f"resect_mmlu_pro_{category.replace(' ', '_')}", "general", "acc", "points", 0.5, 0.49, 0.02, 0.02, -100.0, 12.3, 1.0, False))
    return out


def report(verdict: str = "fail") -> Report:
    r = rows()
    return Report(verdict, r, [x.task for x in r if not x.passed], {"path": "/runs/edited", "fingerprint": "ab"},
                  {"path": "/models/source", "fingerprint": "cd", "cached": True}, {"limit": None, "seed": 0},
                  {"lm_eval": "0.4", "resect": "0.1"})  # fmt: skip


@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_the_terminal_table_reads_whole_at_80_columns(verdict):
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    print_verdict(report(verdict), console, title="verdict", where="report in /runs/x")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    lines = text.splitlines()
    for row in rows():
        assert any(row.task in line.split() for line in lines), row.task  # whole, on one line
    assert text.count(BREACHED) == sum(not r.passed for r in rows())
    assert ("PASS" in text) == (verdict == "pass")


def test_markdown_and_terminal_share_units_and_words():
    md = "\n".join(markdown_table(rows()))
    assert "+20.72 pts ± 2.1 (paired)" in md and "≥ 1 pts" in md
    assert "+5.46 % |" in md and "≤ 5 %" in md  # a NaN standard error is left out, not printed
    assert f"**{BREACHED}**" in md and "| pass |" in md and "nan" not in md
    assert "PASS" not in verify_markdown(report("fail")) and "FAIL ❌" in verify_markdown(report("fail"))


def test_report_round_trips_through_its_json_form():
    import dataclasses
    import json

    original = report()
    data = json.loads(json.dumps({"verdict": original.verdict, "rows": [dataclasses.asdict(r) for r in original.rows],
                                  "breached": original.breached, "edited": original.edited, "baseline": original.baseline}))  # fmt: skip
    again = Report.from_dict(data)
    assert [dataclasses.astuple(r)[:9] for r in again.rows] == [dataclasses.astuple(r)[:9] for r in original.rows]
    assert math.isnan(again.rows[1].drop_stderr)
    assert verify_chart(again)[:8] == b"\x89PNG\r\n\x1a\n"
