"""Profiling throughput and peak memory against a plain forward, and against the published approach.

    python benchmarks/bench_profile.py [--tokens 256] [--repeats 5] [--topk 32]

A stack shaped like Monet-VD-1.4B (d 2048, E 512, m 16, H 8; 2 layers = one routing group;
random weights) runs one 256-token batch per repeat, interleaved:
- `forward`: a plain forward (what a user runs, full logits);
- `profile`: resect's profiling step (forward with router probabilities, logits of the last
  position only, then the per-label sums: one [E, N*H] x [N*H, E] product per group);
- `profile+corr`: the same with a per-token score (adds the w*y and head-pair w^2 sums);
- `expanded`: the published README's approach, forming w as [B, T, H, E*E] and summing it.
Targets: profile throughput >= 0.90x forward; peak memory <= 1.10x forward's plus the statistics
buffers (which live outside the step). Results also go to benchmarks/results/bench_profile.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import mib, peak_memory_bytes, set_threads  # noqa: E402

import resect  # noqa: E402,F401
from resect.edit.profile import Piece, _run_batch  # noqa: E402
from resect.edit.stats import empty_stats  # noqa: E402
from resect.kernels.stats import expanded_routing_sums  # noqa: E402
from resect.model.configuration_monet import MonetConfig  # noqa: E402
from resect.model.modeling_monet import MonetForCausalLM  # noqa: E402


def build(topk: int, device: str) -> MonetForCausalLM:
    torch.manual_seed(0)
    config = MonetConfig(
        vocab_size=512, hidden_size=2048, num_hidden_layers=2, num_attention_heads=16,
        moe_dim=16, moe_heads=8, moe_experts=512, moe_topk=topk, moe_groups=4, moe_decompose="vertical",
    )  # fmt: skip
    return MonetForCausalLM(config).eval().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per batch (one sequence)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--topk", type=int, default=32, help="moe_topk of the random stack")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--skip-expanded", action="store_true", help="skip the published approach (2 GiB at 256 tokens)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads() if args.threads else set_threads()
    model = build(args.topk, device)
    ids = torch.randint(0, 512, (1, args.tokens), generator=torch.Generator().manual_seed(1)).tolist()[0]
    piece = Piece(0, ids, [True] * len(ids))
    scored = Piece(0, ids, [True] * len(ids), scores=[float(k % 7) / 7 for k in range(len(ids))])
    plain = torch.tensor([ids], device=device)
    stats = empty_stats(["a"], num_groups=1, experts=512, scored=False)
    stats_corr = empty_stats(["a"], num_groups=1, experts=512, scored=True)
    for s in (stats, stats_corr):
        s.sums = s.sums.to(device)
        s.corr = {k: v.to(device) for k, v in s.corr.items()} if s.corr else None
    buffers = sum(t.numel() * t.element_size() for s in (stats_corr,) for t in [s.sums, *s.corr.values()])

    def forward():
        with torch.inference_mode():
            return model(input_ids=plain, use_cache=False).logits

    def expanded():
        with torch.inference_mode():
            g1, g2 = model(input_ids=plain, use_cache=False, output_router_probs=True).router_probs[0]
            w = (g1.unsqueeze(-1) * g2.unsqueeze(-2)).flatten(-2)  # [B, T, H, E*E], as the published README
            return w.sum(2).sum((0, 1))

    fns = {
        "forward": forward,
        "profile": lambda: _run_batch(model, [piece], stats, None, 0, torch.device(device), 4),
        "profile+corr": lambda: _run_batch(model, [scored], stats_corr, None, 0, torch.device(device), 4),
    }
    if not args.skip_expanded:
        fns["expanded"] = expanded
    seconds = interleaved_times(fns, repeats=args.repeats)
    peaks = {name: _peak(fn, device) for name, fn in fns.items()}
    _check_expanded_equal(model, plain)
    report(args, device, threads, seconds, peaks, buffers)


def interleaved_times(fns: dict, *, repeats: int) -> dict[str, dict[str, float]]:
    """Median and best wall time of each callable, run in turns (one warm-up each).

    On a shared machine the best time is the least disturbed measurement; both are reported, with
    the median CPU time of this process (all its threads), which other users' load disturbs least.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"median": statistics.median(ts), "best": min(ts), "cpu": statistics.median(cpu[name])} for name, ts in times.items()}


def _peak(fn, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return peak_memory_bytes(fn)


def _check_expanded_equal(model, plain) -> None:
    """The fast sum equals the expanded one (a sanity check of what is being timed)."""
    from resect.kernels.stats import routing_sum

    with torch.inference_mode():
        g1, g2 = model(input_ids=plain[:, :32], use_cache=False, output_router_probs=True).router_probs[0]
        fast, slow = routing_sum(g1[0], g2[0]), expanded_routing_sums(g1[0], g2[0])
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5), (fast - slow).abs().max()


def report(args, device: str, threads: int, seconds: dict, peaks: dict, buffers: int) -> None:
    tok = args.tokens
    rows = {
        name: {"seconds_median": t["median"], "seconds_best": t["best"], "tokens_per_s_median": tok / t["median"],
               "tokens_per_s_best": tok / t["best"], "cpu_seconds_median": t["cpu"], "peak_bytes": peaks[name]}
        for name, t in seconds.items()
    }  # fmt: skip
    base = rows["forward"]
    print(f"device {device} ({threads} threads), {tok}-token batch, Monet-VD-1.4B shape (2 layers, 1 routing group), topk {args.topk}")
    print(f"statistics buffers (1 label + correlation sums, float64): {mib(buffers)}")
    for name, r in rows.items():
        r["ratio_median"] = r["tokens_per_s_median"] / base["tokens_per_s_median"]
        r["ratio_best"] = r["tokens_per_s_best"] / base["tokens_per_s_best"]
        r["ratio_cpu"] = base["cpu_seconds_median"] / r["cpu_seconds_median"]
        print(f"  {name:13s} {r['tokens_per_s_median']:7.1f} tok/s median ({r['ratio_median']:4.2f}x forward), "
              f"{r['tokens_per_s_best']:7.1f} best ({r['ratio_best']:4.2f}x), cpu-time ratio {r['ratio_cpu']:4.2f}x   peak {mib(r['peak_bytes'])} "
              f"({r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}x forward)")  # fmt: skip
    prof = rows["profile"]
    ok_speed = prof["ratio_best"] >= 0.90 and prof["ratio_median"] >= 0.90
    ok_memory = prof["peak_bytes"] <= 1.10 * base["peak_bytes"] + buffers
    print(f"target profile >= 0.90x forward (median and best): {'met' if ok_speed else 'MISSED'}; "
          f"peak <= 1.10x + buffers: {'met' if ok_memory else 'MISSED'}")  # fmt: skip
    out = Path(__file__).parent / "results" / "bench_profile.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device, "threads": threads, "tokens": tok, "topk": args.topk, "buffers": buffers, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
