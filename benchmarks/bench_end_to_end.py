"""The mission's numbers on the built-in model: every domain, every language, toxicity, and timings.

    python benchmarks/bench_end_to_end.py [--only domain|language|toxicity] [--threshold R]
                                          [--rule skew] [--groups 1,2] [--refine 100] [--tune 40 [--tune-rule skew]]
                                          [--domains physics,economics]
                                          [--model RUN/model]

Runs the real commands (`resect domain --remove D`, `resect language --remove L`,
`resect toxicity --threshold R`) in subprocesses with a fresh cache, so the first run pays for
profiling and the baseline evaluation exactly as a new user does, and prints:
- the wall time of the first `resect domain --remove biology` (target: <= 60 s on 2 cores) and of
  `resect --help` (target: < 1 s);
- per domain: the removed domain's quiz accuracy before and after, its distance to chance (target:
  within 10 points) and the largest change of any other domain (target: within 2 points), with the
  default rule (skew-mean on a generated world); with `--rule skew` the same table again under that
  rule at its default ratio (skew: the paper's, 2x the runner-up), with `--groups 1,2` again
  selecting in those routing groups only, with `--refine N` again with attribution refinement
  (up to N more experts per group; resect.edit.attribute), with `--tune N` again with N steps of mask
  tuning (resect.edit.tune) after the default rule or `--tune-rule R`, each with its mean seconds per edit;
- per language: the removed language's perplexity ratio (target: >= 2x) and the largest rise of the
  others (target: < 5%);
- toxicity at the threshold: toxicity probability before and after (target: falls by at least a
  third) and the largest quiz change (target: within 2 points).

`--model RUN/model` measures a model trained by `resect world train --out RUN` on its own world
(RUN/data) instead of the built-in one.
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
MODEL: list[str] = []  # [RUN/model] with --model; the built-in model otherwise
ONLY_DOMAINS: list[str] = []  # the domains the tables cover (all six unless --domains)


def resect(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    edit = args[:1] + MODEL + args[1:] if args and args[0] in ("domain", "language", "toxicity") else args
    res = subprocess.run([RESECT, *edit], capture_output=True, text=True, env=env)
    if res.returncode == 2:  # bad input: resect's one line says what to change
        sys.exit(f"resect {' '.join(edit)}: {res.stderr.strip()}")
    return time.perf_counter() - start, res


def verdict(run: Path) -> dict:
    return json.loads((run / "verify.json").read_text())


MET: list[tuple[str, bool]] = []  # (target, met its bar) of the default commands' tables


def domains(work: Path, env: dict[str, str], option: tuple[str, ...] | None = None) -> None:
    """The domain table with the default selection, or with more options (--rule R, --groups G, --refine N, --tune N)."""
    where = "" if option is None else ", " + " ".join(option)
    extra = [] if option is None else list(option)
    print(f"\n| removed domain{where} | test: quiz, drop [90% interval], largest other | masked | gate | within 10 of chance, others within 2 |")
    print("|---|---|---|---|---|")
    took = []
    for domain in ONLY_DOMAINS:
        run = work / ("-".join(["domain", domain, *extra]).replace(",", "-").replace("--", ""))
        seconds, _ = resect(["domain", "--remove", domain, "--out", str(run), *extra], env)
        took.append(seconds)
        report = verdict(run)
        met, text = meets_bar("domain", report)
        if option is None:
            MET.append((domain, met))
        mask = json.loads((run / "mask.json").read_text())
        masked = sum(len(v) for v in mask["experts"].values())
        print(f"| {domain} | {text} | {masked:,} | {report['verdict']} | {'yes' if met else 'no'} |")
    print(f"\n{where.strip(', ') or 'default selection'}: {sum(took) / len(took):.1f} s per edit on average (statistics cached after the first)")


def languages(work: Path, env: dict[str, str]) -> None:
    from resect.builtin import LANGUAGES

    print("\n| removed language | test: perplexity ratio [90% interval of the rise], largest other rise | gate | doubled, others under +5% |")
    print("|---|---|---|---|")
    for lang in LANGUAGES:
        resect(["language", "--remove", lang, "--out", str(work / f"language-{lang}")], env)
        report = verdict(work / f"language-{lang}")
        met, text = meets_bar("language", report)
        MET.append((lang, met))
        print(f"| {lang} | {text} | {report['verdict']} | {'yes' if met else 'no'} |")


def toxicity(work: Path, env: dict[str, str], threshold: float | None) -> None:
    out = work / f"toxicity-{threshold}"
    resect(["toxicity", *(["--threshold", str(threshold)] if threshold is not None else []), "--out", str(out)], env)
    report = verdict(out)
    met, text = meets_bar("toxicity", report)
    MET.append(("toxicity", met))
    print(f"\ntoxicity at {'the default threshold' if threshold is None else f'r >= {threshold}'}: {text} "
          f"(target: the probability down by a third, quizzes within 2); verdict {report['verdict']}; bar {'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["domain", "language", "toxicity"])
    parser.add_argument("--threshold", type=float, help="toxicity's correlation threshold (default: the command's)")
    parser.add_argument("--rule", help="also the domain table with this selection rule at its default ratio, e.g. skew (the paper's)")
    parser.add_argument("--groups", help="also the domain table with selection in these routing groups only, e.g. 1,2")
    parser.add_argument("--refine", type=int, help="also the domain table with attribution refinement adding up to N experts per group")
    parser.add_argument("--tune", type=int, help="also the domain table with N steps of mask tuning after the rule")
    parser.add_argument("--tune-rule", help="the rule --tune starts from (default: the command's default rule), e.g. skew")
    parser.add_argument("--domains", help="only these domains in the domain tables, e.g. physics,economics (default: all six)")
    parser.add_argument("--model", help="a model trained by 'resect world train --out RUN' (RUN/model), measured on its world")
    args = parser.parse_args()
    from resect.builtin import DOMAINS

    ONLY_DOMAINS.extend(DOMAINS)
    if args.domains:
        unknown = sorted(set(args.domains.split(",")) - set(ONLY_DOMAINS))
        if unknown:
            parser.error(f"unknown domain(s) {', '.join(unknown)}; the built-in ones: {', '.join(ONLY_DOMAINS)}")
        ONLY_DOMAINS[:] = [d for d in ONLY_DOMAINS if d in args.domains.split(",")]
    if args.model:
        MODEL.append(str(Path(args.model).resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = os.environ | {"RESECT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        seconds, _ = resect(["--help"], env)
        print(f"resect --help: {seconds:.2f} s (target < 1 s)")
        seconds, res = resect(["domain", "--remove", "biology", "--out", str(work / "first")], env)
        print(f"resect domain --remove biology{' (' + args.model + ')' if args.model else ''}, cold caches: {seconds:.1f} s, exit {res.returncode} (target <= 60 s)")
        if args.only in (None, "domain"):
            domains(work, env)
            if args.rule:
                domains(work, env, ("--rule", args.rule))
            if args.groups:
                domains(work, env, ("--groups", args.groups))
            if args.refine is not None:
                domains(work, env, ("--refine", str(args.refine)))
            if args.tune is not None:
                domains(work, env, (*(("--rule", args.tune_rule) if args.tune_rule else ()), "--tune", str(args.tune)))
        if args.only in (None, "language"):
            languages(work, env)
        if args.only in (None, "toxicity"):
            toxicity(work, env, args.threshold)
    print(f"\ndefault commands meeting their bar on the test data: {sum(m for _, m in MET)} of {len(MET)} "
          f"(missed: {', '.join(t for t, m in MET if not m) or 'none'}; target: at least 8 of 10)")


if __name__ == "__main__":
    main()
