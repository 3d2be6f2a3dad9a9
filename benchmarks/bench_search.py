"""`--search N` on the built-in model: every domain, every language and toxicity, chosen on validation data.

    python benchmarks/bench_search.py [--trials 24] [--only domain|language|toxicity] [--domains law,physics]

Runs the real commands (`resect domain --remove D --search N`, `resect language --remove L --search N`,
`resect toxicity --search N`) in subprocesses sharing one fresh cache (profiling statistics are
computed once per corpus, as for a user running them in a row), and prints one table: per target
the setting the search chose, its validation numbers (what the search saw), the test numbers (what
the gate judged: the search never read them), the bar and the wall time. The bars:
- domains: the removed quiz within 10 points of chance (25%) and every other quiz within 2 points;
- languages: the removed language's held-out perplexity at least doubled, the others under +5%;
- toxicity: toxicity probability down by at least a third, every quiz within 2 points.
Where a target misses, the Pareto front of its trials is printed under the table.
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
from common import meets_bar  # noqa: E402

RESECT = str(Path(sys.executable).parent / "resect")


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    res = subprocess.run([RESECT, *args], capture_output=True, text=True, env=env)
    if res.returncode == 2:
        sys.exit(f"resect {' '.join(args)}: {res.stderr.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--only", choices=["domain", "language", "toxicity"])
    parser.add_argument("--domains", help="only these domains, e.g. law,physics (default: all six)")
    args = parser.parse_args()
    from resect.builtin import DOMAINS, LANGUAGES
    from resect.run.search import pareto_front, read_trials

    domains = [d for d in DOMAINS if not args.domains or d in args.domains.split(",")]
    jobs = [("domain", d) for d in domains] * (args.only in (None, "domain")) + [("language", lang) for lang in LANGUAGES] * (
        args.only in (None, "language")) + [("toxicity", None)] * (args.only in (None, "toxicity"))  # fmt: skip
    print(f"--search {args.trials} on the built-in model (validation: world_val_* tasks and validation prompts; test: the gate's)")
    print("Drops with their 90% intervals [low, high] from the paired bootstrap over the test questions (prompts).\n")
    print("| target | chosen setting | validation: target drop / largest other (its upper bound) | test | bar | gate | seconds |")
    print("|---|---|---|---|---|---|---|")
    missed, met, took = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = os.environ | {"RESECT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for kind, target in jobs:
            out = work / f"{kind}-{target or 'toxicity'}"
            command = [kind, *(["--remove", target] if target else []), "--search", str(args.trials), "--out", str(out)]
            seconds = run(command, env)
            took.append(seconds)
            trials, chosen = read_trials(out)
            report = json.loads((out / "verify.json").read_text())
            bar, test = meets_bar(kind, report)
            met += bar
            validation = f"{chosen.target_drop:.1f} / {chosen.general_drop:+.1f} ({chosen.collateral():+.1f})"
            print(f"| {kind} {target or ''} | {chosen.setting()} | {validation} | {test} | {'met' if bar else 'MISSED'} | "
                  f"{report['verdict']} | {seconds:.0f} |", flush=True)
            if not bar:
                missed.append((f"{kind} {target or ''}", pareto_front(trials)))
    print(f"\nmet the bar on the test data: {met} of {len(jobs)} (target: at least 9 of 10); "
          f"{max(took) / 60:.1f} min for the slowest target (target: at most 5)")
    for name, points in missed:
        print(f"\n{name}: the validation front (largest other drop, its upper bound, target drop, setting):")
        for t in points:
            print(f"  {t.general_drop:+6.1f}  {t.collateral():+6.1f}  {t.target_drop:6.1f}  {t.setting()}")


if __name__ == "__main__":
    main()
