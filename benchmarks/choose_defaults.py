"""The built-in world's default rules and ratios, chosen on its validation data only.

    python benchmarks/choose_defaults.py [--only domain|language|toxicity] [--model RUN/model]

For every candidate setting of a kind (skew-mean ratios for domains, skew ratios for languages,
correlation thresholds for toxicity), runs the real edit command on every target of that kind with
the validation splits as its gate (`--target-tasks world_val_<target>`, `--general-tasks` the other
`world_val_*` tasks, `--toxicity-prompts` the validation prompts; profiling reads its own corpus and
profiling prompts as always), and counts the targets whose validation numbers meet the bars of
benchmarks/bench_end_to_end.py. The chosen setting meets the most; ties go to the one that misses
the bars by the fewest points summed over targets (the removed quiz's distance beyond 10 points
above chance plus the worst other quiz's change beyond 2, and likewise for the other kinds). No test quiz, test code or gate prompt is read: the test data then judges
the chosen defaults (bench_end_to_end.py). The choice is what resect.run.spec's constants hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHANCE, meets_bar  # noqa: E402

RESECT = str(Path(sys.executable).parent / "resect")
CANDIDATES = {
    "domain": ("skew-mean", [1.1, 1.25, 1.5, 1.75, 2.0, 2.5]),
    "language": ("skew", [2.0, 3.0, 4.0, 6.0]),
    "toxicity": ("correlation", [0.05, 0.1, 0.15, 0.2]),
}


def collateral(kind: str, report: dict) -> float:
    others = [r["drop"] for r in report["rows"] if r["role"] == "general"]
    return max((abs(d) if kind != "language" else d for d in others), default=0.0)


def shortfall(kind: str, report: dict) -> float:
    """By how many points (or %) an edit misses its bars, summed over the bars: 0 when it meets them."""
    rows = report["rows"]
    worst = collateral(kind, report)
    if kind == "domain":
        target = next(r for r in rows if r["role"] == "target")
        return max(0.0, 100 * target["edited"] - (CHANCE + 10)) + max(0.0, worst - 2)
    if kind == "language":
        target = next(r for r in rows if r["role"] == "target")
        return max(0.0, 100 * (2 - target["edited"] / target["baseline"])) + max(0.0, worst - 5)
    fall = next(r for r in rows if r["metric"] == "toxicity_probability")["drop"]
    return max(0.0, 100 / 3 - fall) + max(0.0, worst - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(CANDIDATES))
    parser.add_argument("--model", help="a model trained by 'resect world train --out RUN' (RUN/model), on its own world")
    args = parser.parse_args()
    from resect.builtin import DOMAINS, LANGUAGES, builtin_data_path

    data = Path(args.model).resolve().parent / "data" if args.model else builtin_data_path()
    model = [str(Path(args.model).resolve())] if args.model else []
    targets = {"domain": list(DOMAINS), "language": list(LANGUAGES), "toxicity": [None]}
    validation = {"domain": lambda t: f"world_val_{t}", "language": lambda t: f"world_val_ppl_{t}"}
    print("Validation data only (world_val_* quizzes and code, validation prompts); bars as in bench_end_to_end.py\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = os.environ | {"RESECT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for kind, (rule, values) in CANDIDATES.items():
            if args.only not in (None, kind):
                continue
            print(f"| {kind}: {rule} | targets meeting the bar on validation | bars missed by, in all | worst collateral | seconds |")
            print("|---|---|---|---|---|")
            scores = []
            for value in values:
                met, worst, missed, start = [], 0.0, 0.0, time.perf_counter()
                for target in targets[kind]:
                    out = work / f"{kind}-{target}-{value}"
                    if kind == "toxicity":
                        gate = ["--threshold", str(value), "--toxicity-prompts", str(data / "prompts" / "toxicity_validation.jsonl"),
                                "--general-tasks", ",".join(f"world_val_{d}" for d in DOMAINS)]  # fmt: skip
                    else:
                        names = targets[kind]
                        gate = ["--remove", target, "--rule", rule, "--ratio", str(value), "--target-tasks", validation[kind](target),
                                "--general-tasks", ",".join(validation[kind](t) for t in names if t != target)]  # fmt: skip
                    res = subprocess.run([RESECT, kind, *model, *gate, "--out", str(out)], capture_output=True, text=True, env=env)
                    if res.returncode == 2 or not (out / "verify.json").is_file():
                        lines = res.stderr.strip().splitlines() or ["no output"]
                        print(f"| {value:g} | {target}: exit {res.returncode}, {lines[-1]} | | |", flush=True)
                        continue
                    report = json.loads((out / "verify.json").read_text())
                    ok, _ = meets_bar(kind, report)
                    met += [target or "toxicity"] * ok
                    worst = max(worst, collateral(kind, report))
                    missed += shortfall(kind, report)
                seconds = time.perf_counter() - start
                scores.append((len(met), -missed, value))
                print(f"| {value:g} | {len(met)} of {len(targets[kind])} ({', '.join(met) or '-'}) | {missed:.1f} | {worst:.1f} | {seconds:.0f} |", flush=True)
            best = max(scores)
            print(f"\n{kind}: chosen {rule} {best[2]:g} ({best[0]} of {len(targets[kind])} meet the bars on validation; "
                  f"they miss them by {-best[1]:.1f} points in all)\n", flush=True)


if __name__ == "__main__":
    main()
