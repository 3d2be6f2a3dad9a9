# .venv/bin/python benchmarks/bench_masking.py [--repeats 5] [--tokens 256] [--threads 1] [--kernel auto|torch|numba|triton]
#     [--device cpu|cuda] [--json out.json]
"""Cost of exact expert masking on one MoE layer shaped like Monet-VD-1.4B.

Layer: d 2048, E 512, m 16, H 8 (vertical decomposition), moe_topk 8 and 32, 256 tokens in
float32, gates from the real router gate (normalised logits ~ N(0, 1), threshold Phi^-1(1 - k/E)).
Masks remove 0%, 1%, 4.1% and 14.4% of the 262,144 experts (the paper's settings), drawn at
random or clustered (a random square block of halves i x j). For each setting, in one run:

    masked / unmasked      the production path (sparse corrections, `resect.kernels.dispatch`:
                           on CPU the fused numba kernel when numba is installed, else pure
                           torch; --kernel picks one, like RESECT_MASK_KERNEL)
    expanded / unmasked    the full-expansion method (w' [tokens, E, E] materialised)

time (median of --repeats forwards after a warm-up) and peak memory. Targets: masked <= 1.10x
time and <= 1.10x peak memory at 14.4%.

Peak memory (CPU) comes from the profiler's allocation events (`common.peak_memory_bytes`):
the peak of live bytes allocated during the forward on top of what already exists (weights,
input, gates, mask), library workspaces included; on CUDA, torch.cuda.max_memory_allocated
over the same baseline. Times are medians of forwards run in turns (`common.interleaved_seconds`)
so that load from other processes hits all three alike. On a machine whose cores are shared
with other jobs, pass --threads 1: the masked path issues many small ops, and with OpenMP
threads competing for busy cores each op pays for thread synchronisation (times then swing by
several x between runs, for the unmasked layer too). The numba kernel follows torch's thread
count (one thread: a plain loop, no thread pool of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_seconds, mib, peak_memory_bytes, set_threads  # noqa: E402

from resect.kernels.dispatch import choose, masked_moe_forward  # noqa: E402
from resect.kernels.reference import expanded_moe_forward  # noqa: E402
from resect.model.configuration_monet import MonetConfig  # noqa: E402
from resect.model.monet_layers import MonetMoVDE, MonetRouter  # noqa: E402

FRACTIONS = (0.0, 0.01, 0.041, 0.144)


def layer(topk: int, device: str, seed: int = 0) -> tuple[MonetMoVDE, MonetRouter]:
    torch.manual_seed(seed)
    config = MonetConfig(
        hidden_size=2048, num_attention_heads=16, num_hidden_layers=1, moe_groups=1,
        moe_experts=512, moe_dim=16, moe_heads=8, moe_topk=topk, vocab_size=32,
    )
    return MonetMoVDE(config).to(device).eval(), MonetRouter(config).to(device).eval()


def gates(router: MonetRouter, tokens: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Router gates [1, T, H, E] from logits ~ N(0, 1) (running mean 0, var 1)."""
    gen = torch.Generator().manual_seed(seed)
    z1, z2 = (torch.randn(1, tokens, router.heads, router.experts, generator=gen).to(device) for _ in range(2))
    return router._gate(z1, router.norm1), router._gate(z2, router.norm2)


def make_mask(experts: int, fraction: float, kind: str, seed: int = 0) -> torch.Tensor:
    """[E, E] bool removing round(fraction * E * E) experts, at random or as one square block."""
    gen = torch.Generator().manual_seed(seed)
    count = round(fraction * experts * experts)
    mask = torch.zeros(experts * experts, dtype=torch.bool)
    if kind == "random":
        mask[torch.randperm(experts * experts, generator=gen)[:count]] = True
        return mask.view(experts, experts)
    mask = mask.view(experts, experts)
    side = int(count**0.5)
    rows, cols = (torch.randperm(experts, generator=gen)[: side + 1] for _ in range(2))
    block = (rows[:, None] * experts + cols[None, :]).flatten()[:count]
    mask.view(-1)[block] = True
    return mask


def peak_bytes(fn, device: str) -> int:
    """Peak bytes allocated by fn() over what exists before it."""
    if device != "cuda":
        return peak_memory_bytes(fn)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() - base


def timed(fns: dict, repeats: int, device: str) -> dict[str, float]:
    if device != "cuda":
        return interleaved_seconds(fns, repeats=repeats)
    synced = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in fns.items()}
    return interleaved_seconds(synced, repeats=repeats)


@torch.no_grad()
def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for topk in args.topk:
        moe, router = layer(topk, args.device)
        x = torch.randn(1, args.tokens, 2048, generator=torch.Generator().manual_seed(1)).to(args.device)
        g1, g2 = gates(router, args.tokens, args.device)
        dense = lambda moe=moe, x=x, g1=g1, g2=g2: moe.dense_forward(x, g1, g2)  # noqa: E731
        base_m = peak_bytes(dense, args.device)
        active = float((g1 > 0).sum(-1).float().mean())
        print(f"moe_topk {topk}: unmasked peak {mib(base_m)}, {active:.1f} active halves per head on average")
        for fraction in FRACTIONS:
            for kind in ("random", "clustered") if fraction else ("random",):
                mask = make_mask(512, fraction, kind).to(args.device)
                masked = lambda moe=moe, x=x, g1=g1, g2=g2, mask=mask: masked_moe_forward(moe, x, g1, g2, mask)  # noqa: E731
                expanded = lambda moe=moe, x=x, g1=g1, g2=g2, mask=mask: expanded_moe_forward(moe, x, g1, g2, mask)  # noqa: E731
                t = timed({"unmasked": dense, "masked": masked, "expanded": expanded}, args.repeats, args.device)
                row = dict(topk=topk, fraction=fraction, kind=kind, removed=int(mask.sum()),
                           unmasked_ms=t["unmasked"] * 1e3, masked_ms=t["masked"] * 1e3, expanded_ms=t["expanded"] * 1e3,
                           masked_time=t["masked"] / t["unmasked"], expanded_time=t["expanded"] / t["unmasked"],
                           masked_mem=peak_bytes(masked, args.device) / base_m,
                           expanded_mem=peak_bytes(expanded, args.device) / base_m)
                rows.append(row)
                print(f"  {fraction * 100:5.1f}% {kind:9s} ({row['removed']:6d} removed)  "
                      f"masked/unmasked time {row['masked_time']:.3f}x mem {row['masked_mem']:.3f}x  |  "
                      f"expanded/unmasked time {row['expanded_time']:.2f}x mem {row['expanded_mem']:.2f}x  "
                      f"[{row['unmasked_ms']:.1f} / {row['masked_ms']:.1f} / {row['expanded_ms']:.1f} ms]")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--topk", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores); 1 is steadier on a shared machine")
    parser.add_argument("--kernel", help="masked path: auto (default), torch, numba or triton (sets RESECT_MASK_KERNEL)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.kernel:
        os.environ["RESECT_MASK_KERNEL"] = args.kernel
    threads = set_threads() if args.threads is None else (torch.set_num_threads(args.threads) or args.threads)
    chosen = choose(torch.zeros(1, device=args.device))
    kernel = getattr(chosen, "func", chosen).__module__.rsplit(".", 1)[-1]
    print(f"device {args.device}, torch {torch.__version__}, {threads} threads, {args.tokens} tokens, float32, masked path {kernel}")
    rows = run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
