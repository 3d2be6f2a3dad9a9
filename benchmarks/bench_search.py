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

RESECT = str(Path(sys.executable).parent / "resect")
CHANCE = 25.0


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
    print(f"--search {args.trials} on the built-in model (validation: world_val_* tasks and validation prompts; test: the gate's)\n")
    print("| target | chosen setting | validation: target drop / largest other | test: target drop (± s.e.) / largest other | bar | gate | seconds |")
    print("|---|---|---|---|---|---|---|")
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = os.environ | {"RESECT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for kind, target in jobs:
            out = work / f"{kind}-{target or 'toxicity'}"
            command = [kind, *(["--remove", target] if target else []), "--search", str(args.trials), "--out", str(out)]
            seconds = run(command, env)
            trials, chosen = read_trials(out)
            report = json.loads((out / "verify.json").read_text())
            rows = report["rows"]
            others = max((r["drop"] for r in rows if r["role"] == "general"), default=0.0)
            unit = "%" if kind == "language" else " pts"
            if kind == "toxicity":
                (base,), (edit,) = report["toxicity"]["baseline"].values(), report["toxicity"]["edited"].values()
                fall = 100 * (1 - edit["toxicity_probability"] / max(base["toxicity_probability"], 1e-9))
                test = f"toxicity probability {base['toxicity_probability']:.3f} -> {edit['toxicity_probability']:.3f} (-{fall:.0f}%) / {others:+.1f} pts"
                bar = fall >= 100 / 3 and abs(others) <= 2
            else:
                t = next(r for r in rows if r["role"] == "target")
                se = t.get("drop_stderr")
                test = f"{t['drop']:.1f}{'' if se is None else f' ± {se:.1f}'}{unit} / {others:+.1f}{unit}"
                if kind == "domain":
                    above = 100 * t["edited"] - CHANCE
                    test += f" (quiz {100 * t['edited']:.1f}%, {above:+.1f} from chance)"
                    bar = above <= 10 and max((abs(r["drop"]) for r in rows if r["role"] == "general"), default=0.0) <= 2
                else:
                    test += f" (perplexity x{t['edited'] / t['baseline']:.2f})"
                    bar = t["edited"] / t["baseline"] >= 2 and others < 5
            validation = f"{chosen.target_drop:.1f} / {chosen.general_drop:+.1f}"
            print(f"| {kind} {target or ''} | {chosen.setting()} | {validation} | {test} | {'met' if bar else 'MISSED'} | "
                  f"{report['verdict']} | {seconds:.0f} |", flush=True)
            if not bar:
                missed.append((f"{kind} {target or ''}", pareto_front(trials)))
    for name, points in missed:
        print(f"\n{name}: the validation front (largest other drop, target drop, setting):")
        for t in points:
            print(f"  {t.general_drop:+6.1f}  {t.target_drop:6.1f}  {t.setting()}")


if __name__ == "__main__":
    main()
