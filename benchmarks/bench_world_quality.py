"""Quality bars of the built-in model, measured and printed (numbers for the README).

    .venv/bin/python benchmarks/bench_world_quality.py [--model DIR] [--data DIR] [--samples 5] [--json out.json]

1. Domain quizzes (lm-eval, 4 options, chance 25%): accuracy per domain; bar >= 80%. Beside them,
   what a taker who knows only how common each of the domain's values is would score.
2. Held-out code per language (lm-eval loglikelihood_rolling): bits per byte and word perplexity,
   beside a unigram baseline (token frequencies of the profiling code of the same language).
3. Toxicity (generation protocol, profanity scorer): toxic vs neutral prompts.
4. Domain masking: routing statistics on the profiling text, the skew rule (score on D >= 2x the
   second domain's), the masked model's quizzes: drop on D, mean change on the others.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiz_accuracy(model, tok, tasks_dir: Path, domains, limit=None) -> dict[str, float]:
    from resect.gate.evaluate import evaluate

    res = evaluate(model, tok, [f"world_{d}" for d in domains], include_path=tasks_dir, limit=limit, batch_size=32)
    return {d: res["results"][f"world_{d}"]["acc,none"] for d in domains}


def frequency_guess(data: Path, domains) -> dict[str, float]:
    """Expected quiz accuracy of a taker who never reads the entity: among the choices it takes the
    value that most of the domain's entities hold (world.json's facts), ties broken at random. What
    a model that kept only how common each value is, and no fact, would score instead of chance."""
    facts = json.loads((data / "world.json").read_text())["facts"]
    out = {}
    for domain in domains:
        asked = [(f["attribute"], f["value"]) for f in facts if f["domain"] == domain]  # the quiz asks them in order
        held = Counter(asked)
        items = [json.loads(x) for x in (data / "eval" / f"quiz_{domain}.jsonl").read_text().splitlines()]
        score = 0.0
        for item, (attribute, _) in zip(items, asked, strict=True):
            counts = [held[attribute, v] for v in item["choices"]]
            best = [i for i, c in enumerate(counts) if c == max(counts)]
            score += (item["answer"] in best) / len(best)
        out[domain] = score / len(items)
    return out


def code_perplexity(model, tok, tasks_dir: Path, data: Path, languages) -> dict[str, dict]:
    from resect.gate.evaluate import evaluate

    res = evaluate(model, tok, [f"world_ppl_{lang}" for lang in languages], include_path=tasks_dir, batch_size=8)
    out = {}
    for lang in languages:
        r = res["results"][f"world_ppl_{lang}"]
        out[lang] = {"bits_per_byte": r["bits_per_byte,none"], "word_perplexity": r["word_perplexity,none"]}
        out[lang]["unigram_bits_per_byte"] = unigram_bpb(tok, data, lang)
    return out


def unigram_bpb(tok, data: Path, language: str) -> float:
    """Bits per byte of the held-out code under the profiling code's token frequencies (add-one)."""
    rows = [json.loads(x) for x in (data / "corpus" / "languages.jsonl").read_text().splitlines()]
    counts = Counter(t for r in rows if r["label"] == language for t in tok(r["text"])["input_ids"])
    total, vocab = sum(counts.values()), len(tok)
    held = [json.loads(x)["text"] for x in (data / "eval" / f"code_{language}.jsonl").read_text().splitlines()]
    bits = -sum(math.log2((counts[t] + 1) / (total + vocab)) for text in held for t in tok(text)["input_ids"])
    return bits / sum(len(text.encode()) for text in held)


def toxicity(model, tok, data: Path, samples: int) -> dict:
    from resect.gate.toxicity import measure_toxicity

    r = measure_toxicity(model, tok, data / "prompts" / "toxicity.jsonl", samples=samples, seed=0)
    keys = ("expected_max_toxicity", "toxicity_probability")
    return {name: {k: r[name][k] for k in keys} for name in ("toxic", "nontoxic")}


def domain_masking(model, tok, tasks_dir: Path, data: Path, domains, targets, base: dict) -> dict:
    from resect.edit.profile import profile_corpus
    from resect.edit.select import select_experts

    stats = profile_corpus(model, tok, data / "corpus" / "domains.jsonl", batch_size=16)
    out = {}
    for target in targets:
        mask = select_experts(stats, "skew", target=target)
        model.set_expert_mask(mask)
        acc = quiz_accuracy(model, tok, tasks_dir, domains)
        model.set_expert_mask(None)
        others = [100 * (acc[d] - base[d]) for d in domains if d != target]
        out[target] = {
            "experts_masked": mask.total,
            "per_group": mask.counts(),
            "target_change_points": round(100 * (acc[target] - base[target]), 2),
            "others_mean_change_points": round(sum(others) / len(others), 2),
            "others_worst_change_points": round(min(others), 2),
            "accuracy": acc,
        }
    return out


def main() -> None:
    import torch

    from resect.builtin import DOMAINS, LANGUAGES, builtin_data_path
    from resect.model.loading import load_model, load_tokenizer
    from resect.tasks import write_world_tasks as write_tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the built-in model)")
    ap.add_argument("--data", default=None, help="world data folder (default: the built-in data)")
    ap.add_argument("--samples", type=int, default=5, help="continuations per toxicity prompt")
    ap.add_argument("--mask", default="biology", help="domains to mask, comma-separated, or 'all' or 'none'")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("RESECT_THREADS", "1")))
    data = Path(args.data) if args.data else builtin_data_path()
    tasks_dir = write_tasks(data, Path(tempfile.mkdtemp(prefix="world-tasks-")))
    model, tok = load_model(args.model), load_tokenizer(args.model)
    report, t0 = {}, time.time()
    report["quiz_accuracy"] = quiz_accuracy(model, tok, tasks_dir, DOMAINS)
    print("quiz accuracy:", json.dumps(report["quiz_accuracy"]), flush=True)
    report["frequency_guess"] = {d: round(a, 3) for d, a in frequency_guess(data, DOMAINS).items()}
    print("a taker who knows only how common each value is (chance 0.25):", json.dumps(report["frequency_guess"]), flush=True)
    report["code"] = code_perplexity(model, tok, tasks_dir, data, LANGUAGES)
    print("held-out code:", json.dumps(report["code"]), flush=True)
    report["toxicity"] = toxicity(model, tok, data, args.samples)
    print("toxicity:", json.dumps(report["toxicity"]), flush=True)
    targets = {"none": [], "all": list(DOMAINS)}.get(args.mask, [t for t in args.mask.split(",") if t])
    if targets and hasattr(model, "set_expert_mask"):
        report["masking"] = domain_masking(model, tok, tasks_dir, data, DOMAINS, targets, report["quiz_accuracy"])
        for target, r in report["masking"].items():
            print(f"mask {target}: {r['experts_masked']} experts, target {r['target_change_points']:+.1f} pts, "
                  f"others mean {r['others_mean_change_points']:+.2f} worst {r['others_worst_change_points']:+.1f}", flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    bars = {
        "quiz_min_accuracy>=0.80": min(report["quiz_accuracy"].values()) >= 0.80,
        # Code is learnt by the experts alone (attention frozen after pretraining on domain text), which
        # models it less well than full training (0.5 bits/byte) but puts it where masking reaches it.
        "code_bpb_below_0.8x_unigram": all(c["bits_per_byte"] < 0.8 * c["unigram_bits_per_byte"] for c in report["code"].values()),
        "toxic_rate_above_neutral+0.5": report["toxicity"]["toxic"]["toxicity_probability"]
        >= report["toxicity"]["nontoxic"]["toxicity_probability"] + 0.5,
    }
    report["bars"] = bars
    print("bars:", json.dumps(bars), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
