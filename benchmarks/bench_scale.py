"""Full-size rehearsal: every stage of `resect domain` on a stand-in for MonetLLM/monet-vd-1.4B-100BT-hf.

    python benchmarks/bench_scale.py [--work DIR] [--dtype bfloat16] [--tokens-per-label 512] [--keep]

The stand-in has the published 1.4B VD geometry (d 2048, 24 layers, 16 heads, E 512, m 16, H 8,
top-k 8, 4 layers per routing group, vocab 32000), random weights in one bf16 `model.safetensors`
(2.73 GiB), the published transformers-4.x config and a SentencePiece tokenizer. Each stage runs
as its own process, as a user would run it, and reports its wall time and peak resident memory
(RSS) as a multiple of the checkpoint's size in the dtype the stage runs in:

- throughput: one process times the plain forward and profiling over the same batches (bf16 and
  float32, interleaved), and sampled decoding of the source against the edited model (bf16);
- profile, select MODEL, apply (and the bytes it writes), eval: the building blocks;
- domain: the whole edit (profile, select, apply, verify), with its model loads counted.

Targets: every stage's peak RSS <= 1.5x the checkpoint in its dtype; select MODEL and apply
<= 0.2x (no weights loaded); apply writes < 10 MB; profiling / plain forward >= 0.90 in tokens/s;
edited / source decode time <= 1.15 (bf16); domain loads the model at most twice. The closing
lines extrapolate the paper's MMLU and toxicity protocols from the measured rates to this machine
and, at an assumed utilisation, to one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GEOMETRY = {
    "vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
    "moe_dim": 16, "moe_heads": 8, "moe_experts": 512, "moe_topk": 8, "moe_groups": 4, "moe_decompose": "vertical",
    "max_position_embeddings": 2048,
}  # fmt: skip
GiB = 2**30
WORDS = {
    "alpha": "cell protein enzyme membrane genome species tissue organism nucleus mitosis".split(),
    "beta": "market price demand supply inflation trade budget credit labour tariff".split(),
}
QUESTIONS = 8  # per quiz task
# The paper's protocols, in tokens (LLaMA-2 tokenizer): MMLU test 14,042 questions x 4 options x ~90 tokens,
# evaluated on the source and the edited model, profiled on the validation split (1,531 questions x ~90);
# RealToxicityPrompts' 1.2K challenging prompts x 25 samples x 20 new tokens per model, 8 profiled samples each.
MMLU_EVAL_TOKENS = 2 * 14_042 * 4 * 90
MMLU_PROFILE_TOKENS = 1_531 * 90
TOXICITY_DECODE_TOKENS = 1_200 * (2 * 25 + 8) * 20
PARAMETERS = 1.4e9
GPU_PEAK_FLOPS, GPU_UTILISATION = 989e12, 0.25  # H100 SXM bf16 dense peak; a conservative share of it


def write_standin(folder: Path) -> Path:
    """The stand-in checkpoint (skipped when it is already there)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from safetensors.torch import save_file

    import resect  # noqa: F401
    from resect.model.configuration_monet import MonetConfig
    from resect.model.modeling_monet import MonetForCausalLM
    from resect.model.tiny import SAMPLE_TEXT, tiny_config, train_sentencepiece_tokenizer

    config = tiny_config(**GEOMETRY, torch_dtype="bfloat16", rope_theta=10000.0)
    keys = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "torch_dtype", "transformers_version")}
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in MonetForCausalLM(MonetConfig(**keys)).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    # Router logits have a standard deviation of about 0.02 * sqrt(d) on RMS-normed input; running
    # statistics of that size put about top-k halves per head above the threshold, as trained ones do.
    spread = 0.02**2 * GEOMETRY["hidden_size"]
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(100_000, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.full(shape, spread, dtype=torch.bfloat16)
        elif name.endswith("running_mean"):
            state[name] = torch.zeros(shape, dtype=torch.bfloat16)
        elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    del state
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    texts = [SAMPLE_TEXT, *(" ".join(words) for words in WORDS.values())]
    train_sentencepiece_tokenizer(folder, vocab_size=1000, texts=texts)
    return folder


def write_inputs(work: Path, tokens_per_label: int) -> tuple[Path, Path]:
    """A two-label corpus (about `tokens_per_label` tokens each) and two quiz tasks."""
    import random

    rng = random.Random(0)
    rows = []
    for label, words in WORDS.items():
        for _ in range(max(1, tokens_per_label // 48)):
            rows.append({"text": " ".join(rng.choice(words) for _ in range(40)) + ".", "label": label})
    corpus = work / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    for label, words in WORDS.items():
        data = tasks / f"{label}.jsonl"
        quiz = [{"question": f"Which word belongs with {rng.choice(words)}?", "choices": rng.sample(words, 4), "answer": 0} for _ in range(QUESTIONS)]
        data.write_text("\n".join(json.dumps(q) for q in quiz) + "\n")
        (tasks / f"bench_{label}.yaml").write_text(textwrap.dedent(f"""\
            task: bench_{label}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: "{data}"
            test_split: test
            output_type: multiple_choice
            doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
            doc_to_choice: "{{{{choices}}}}"
            doc_to_target: answer
            metric_list:
              - metric: acc
            """))
    return corpus, tasks


def run_stage(args: list[str], env: dict, log: Path) -> dict:
    """Run one process; its wall time, peak RSS (bytes) and exit code; stderr kept in `log`."""
    start = time.perf_counter()
    with open(log, "wb") as err, open(log.with_suffix(".out"), "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - start, "rss": usage.ru_maxrss * 1024, "code": proc.returncode}


THROUGHPUT = r"""
import json, sys, time, torch
from resect.edit.corpus import load_corpus
from resect.model.loading import load_model, load_tokenizer
from resect.model.mask import ExpertMask
from resect.edit.profile import Settings, plan_batches, plan_sequences, profile_corpus, _collate
from resect.gate.toxicity import sample_prompts

model_dir, corpus_file, mask_file, dtype, repeats = sys.argv[1:6]
model, tok = load_model(model_dir, dtype=dtype), load_tokenizer(model_dir)
corpus = load_corpus(corpus_file)
batches = plan_batches(plan_sequences(corpus, tok, Settings()), 8)
tokens = sum(s.num_counted for b in batches for s in b)

def plain():
    with torch.inference_mode():
        for batch in batches:
            ids, attn, _ = _collate(batch, tok.pad_token_id, model.device)
            model(input_ids=ids, attention_mask=None if bool(attn.all()) else attn, use_cache=False, logits_to_keep=1)

def profiled():
    profile_corpus(model, tok, corpus, batch_size=8)

times = {"plain": [], "profile": []}
plain(); profiled()
for _ in range(int(repeats)):
    for name, fn in (("plain", plain), ("profile", profiled)):
        t = time.perf_counter(); fn(); times[name].append(time.perf_counter() - t)
out = {f"{k}_tps": tokens / sorted(v)[len(v) // 2] for k, v in times.items()}
if mask_file != "-":
    prompts = ["The cell membrane", "Market prices rose", "An enzyme", "Trade and tariffs"]
    seeds = list(range(len(prompts)))
    decode = lambda: sample_prompts(model, tok, prompts, seeds, samples=8, max_new_tokens=20, temperature=1.0, top_p=0.9)
    mask = ExpertMask.load(mask_file)
    runs = {"source": [], "edited": []}
    for _ in range(int(repeats)):
        for name in runs:
            model.set_expert_mask(mask if name == "edited" else None)
            decode() if not runs[name] else None
            t = time.perf_counter(); decode(); runs[name].append(time.perf_counter() - t)
    model.set_expert_mask(None)
    out |= {f"decode_{k}_s": sorted(v)[len(v) // 2] for k, v in runs.items()}
    out["decode_tokens"] = len(prompts) * 8 * 20
    out["mask_share"] = mask.total / (mask.num_groups * mask.moe_experts ** 2)
out["tokens"] = tokens
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the stand-in and the runs (default: a temporary one)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the building blocks and the edit")
    parser.add_argument("--tokens-per-label", type=int, default=512, help="profiling text per label")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the throughput measurements")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the stand-in is 2.7 GiB)")
    parser.add_argument("--write-standin", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_standin:
        write_standin(args.write_standin)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="resect-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    resect = str(Path(sys.executable).parent / "resect")
    env = {**os.environ, "RESECT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        print(f"writing the stand-in checkpoint in {work} ...", flush=True)
        standin = work / "monet-vd-1.4B-standin"
        # in a process of its own: a child's peak RSS starts from its parent's, which must stay small
        subprocess.run([sys.executable, __file__, "--write-standin", str(standin)], check=True)
        size = (standin / "model.safetensors").stat().st_size
        corpus, tasks = write_inputs(work, args.tokens_per_label)
        rows, facts = [], {}
        in_dtype = lambda dtype: size * (2 if dtype == "float32" else 1)  # noqa: E731  the checkpoint's size in that dtype

        def stage(name: str, cmd: list[str], dtype: str | None, limit: float, note: str = "") -> dict:
            shutil.rmtree(work / "cache", ignore_errors=True) if name == "domain" else None
            res = run_stage(cmd, env, work / f"{name}.log")
            reference = in_dtype(dtype) if dtype else size
            res |= {"name": name, "ratio": res["rss"] / reference, "limit": limit, "note": note, "dtype": dtype or "-"}
            rows.append(res)
            print(f"  {name}: {res['seconds']:.1f} s, peak RSS {res['rss'] / GiB:.2f} GiB (exit {res['code']})", flush=True)
            if res["code"] not in (0, 1):
                print((work / f"{name}.log").read_text()[-2000:], file=sys.stderr)
            return res

        print("stages:", flush=True)
        stats, mask, edited = work / "stats.safetensors", work / "mask.json", work / "edited"
        for path in (stats, mask):
            path.unlink(missing_ok=True)
        shutil.rmtree(edited, ignore_errors=True)
        stage("info", [resect, "info", str(standin)], None, 0.2)
        other = "float32" if args.dtype == "bfloat16" else "bfloat16"
        stage(f"profile ({other})", [resect, "profile", str(standin), "--corpus", str(corpus), "--out", str(stats), "--dtype", other], other, 1.5)
        stats.unlink(missing_ok=True)
        stage("profile", [resect, "profile", str(standin), "--corpus", str(corpus), "--out", str(stats), "--dtype", args.dtype], args.dtype, 1.5)
        stage("select MODEL", [resect, "select", "--stats", str(stats), "--rule", "skew", "--target", "alpha", "--ratio", "1.5",
                                 "--min-tokens", "10", str(standin), "--out", str(mask)], None, 0.2)  # fmt: skip
        applied = stage("apply", [resect, "apply", str(standin), "--mask", str(mask), "--out", str(edited)], None, 0.2)
        new_bytes = sum(p.stat().st_size for p in edited.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
        applied["note"] = f"{new_bytes / 2**20:.2f} MB new (target < 10)"
        facts["apply_new_bytes"] = new_bytes
        stage("eval (edited)", [resect, "eval", str(edited), "--tasks", "bench_alpha", "--include-path", str(tasks), "--limit", str(QUESTIONS),
                                "--dtype", args.dtype], args.dtype, 1.5)  # fmt: skip
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        domain = stage("domain", [resect, "-v", "domain", str(standin), "--remove", "alpha", "--corpus", str(corpus),
                                  "--target-tasks", "bench_alpha", "--general-tasks", "bench_beta", "--include-path", str(tasks),
                                  "--min-target-drop", "0", "--max-general-drop", "100", "--ratio", "1.5", "--limit", str(QUESTIONS),
                                  "--dtype", args.dtype, "--out", str(run)], args.dtype, 1.5)  # fmt: skip
        loads = len(re.findall(r"resect\.loading: loaded ", (work / "domain.log").read_text()))
        domain["note"] = f"{loads} model loads (target <= 2)"
        facts["domain_loads"] = loads
        for dtype in ("bfloat16", "float32"):
            res = run_stage([sys.executable, "-c", THROUGHPUT, str(standin), str(corpus), str(mask) if dtype == "bfloat16" else "-", dtype,
                             str(args.repeats)], env, work / f"throughput-{dtype}.log")  # fmt: skip
            if res["code"] != 0:
                print((work / f"throughput-{dtype}.log").read_text()[-2000:], file=sys.stderr)
                continue
            measured = json.loads((work / f"throughput-{dtype}.out").read_text().strip().splitlines()[-1])
            facts[dtype] = measured
            rows.append({"name": f"throughput ({dtype})", "seconds": res["seconds"], "rss": res["rss"], "ratio": res["rss"] / in_dtype(dtype),
                         "limit": None, "code": 0, "dtype": dtype, "note": "the measuring script, not a stage"})  # fmt: skip
        report(rows, facts, size)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict], facts: dict, size: int) -> None:
    print(f"\ncheckpoint: {size / GiB:.2f} GiB (bf16, one file); RSS as a multiple of its size in the stage's dtype")
    print(f"{'stage':<22}{'dtype':>10}{'wall s':>9}{'peak RSS':>11}{'x ckpt':>8}{'target':>8}  ok   note")
    for r in rows:
        ok = "-" if r["limit"] is None else "yes" if r["ratio"] <= r["limit"] and r["code"] in (0, 1) else "NO"
        target = "-" if r["limit"] is None else f"<= {r['limit']}"
        print(f"{r['name']:<22}{r['dtype']:>10}{r['seconds']:>9.1f}{r['rss'] / GiB:>9.2f} G{r['ratio']:>8.2f}{target:>8}  "
              f"{ok:<4} {r['note']}")  # fmt: skip
    print()
    for dtype in ("bfloat16", "float32"):
        m = facts.get(dtype)
        if m:
            ratio = m["profile_tps"] / m["plain_tps"]
            print(f"{dtype}: plain forward {m['plain_tps']:.0f} tok/s, profiling {m['profile_tps']:.0f} tok/s: "
                  f"ratio {ratio:.2f} (target >= 0.90: {'yes' if ratio >= 0.9 else 'NO'})")  # fmt: skip
    m = facts.get("bfloat16")
    if m and "decode_edited_s" in m:
        ratio = m["decode_edited_s"] / m["decode_source_s"]
        print(f"bfloat16 decode, {m['decode_tokens']} sampled tokens: source {m['decode_source_s']:.2f} s, edited ({100 * m['mask_share']:.1f}% "
              f"of experts masked) {m['decode_edited_s']:.2f} s: ratio {ratio:.2f} (target <= 1.15: {'yes' if ratio <= 1.15 else 'NO'})")  # fmt: skip
    if "apply_new_bytes" in facts:
        print(f"apply wrote {facts['apply_new_bytes'] / 2**20:.2f} MB of new bytes (target < 10 MB: {'yes' if facts['apply_new_bytes'] < 10e6 else 'NO'})")
    if m:
        forward, decode = m["plain_tps"], m["decode_tokens"] / m["decode_source_s"] if "decode_source_s" in m else None
        gpu = GPU_PEAK_FLOPS * GPU_UTILISATION / (2 * PARAMETERS)  # tokens/s at that utilisation
        hours = lambda tokens, rate: tokens / rate / 3600  # noqa: E731
        print("\nthe paper's protocols, extrapolated from these rates (bf16):")
        print(f"- MMLU domain edit ({(MMLU_EVAL_TOKENS + MMLU_PROFILE_TOKENS) / 1e6:.1f}M tokens of forward passes): here "
              f"{hours(MMLU_EVAL_TOKENS + MMLU_PROFILE_TOKENS, forward):.1f} h; one H100 at {GPU_UTILISATION:.0%} of its bf16 peak "
              f"({gpu:,.0f} tok/s) {60 * hours(MMLU_EVAL_TOKENS + MMLU_PROFILE_TOKENS, gpu):.1f} min")  # fmt: skip
        if decode:
            print(f"- toxicity edit ({TOXICITY_DECODE_TOKENS / 1e6:.2f}M sampled tokens): here {hours(TOXICITY_DECODE_TOKENS, decode):.1f} h; "
                  f"on one GPU decoding is bound by reading the weights each step, not by FLOPs: with 256 sequences a step, "
                  f"about {TOXICITY_DECODE_TOKENS / 256 * 2 * size / 3.35e12 / 60:.1f} min of weight reads at 3.35 TB/s")  # fmt: skip


if __name__ == "__main__":
    main()
