"""The prepared GPU check: one short script for the day a CUDA GPU is at hand; prints one table.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU (a few minutes)
    python benchmarks/gpu_check.py --smoke    # the same steps at toy sizes on the CPU (Triton interpreted)

1. The Triton masked expert layer against the exact sum (the full expansion in float64) at the
   published 1.4B layer shape (d 2048, E 512, m 16, H 8, top-k 8), float32 and bfloat16,
   T = 1, 63 and 2048 tokens, 14.4% of the experts masked (the paper's largest toxicity cut).
   Targets: relative error <= 1e-4 in float32, <= 2e-2 in bfloat16.
2. Time and peak memory at T = 2048: Triton masked / unmasked (target <= 1.10x) and the full
   expansion / unmasked, the way the paper masked.
3. A bfloat16 forward of the 1.4B stand-in (24 layers, random weights, routing as sparse as the
   published top-k): tokens/s unmasked and at 14.4% masked.
4. `torchrun --nproc-per-node <GPUs> -m resect profile` over NCCL on a tiny checkpoint, compared
   with one process (on one GPU: one process on CUDA, which is all one GPU can show).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # read when triton is imported

import torch  # noqa: E402

import resect  # noqa: E402,F401
from resect.kernels.dispatch import choose  # noqa: E402
from resect.kernels.reference import expanded_moe_forward  # noqa: E402
from resect.model.configuration_monet import MonetConfig  # noqa: E402
from resect.model.modeling_monet import MonetForCausalLM  # noqa: E402
from resect.model.monet_layers import MonetMoVDE, routing_threshold  # noqa: E402

FULL = {"hidden_size": 2048, "moe_experts": 512, "moe_dim": 16, "moe_heads": 8, "moe_topk": 8, "num_hidden_layers": 24,
        "num_attention_heads": 16, "vocab_size": 32000, "tokens": (1, 63, 2048), "batch": (8, 512)}  # fmt: skip
TOY = {"hidden_size": 64, "moe_experts": 32, "moe_dim": 4, "moe_heads": 2, "moe_topk": 3, "num_hidden_layers": 4,
       "num_attention_heads": 4, "vocab_size": 320, "tokens": (1, 7), "batch": (2, 16)}  # fmt: skip
MASKED = 0.144
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def config(shape: dict, layers: int | None = None) -> MonetConfig:
    keys = ("hidden_size", "moe_experts", "moe_dim", "moe_heads", "moe_topk", "num_attention_heads", "vocab_size")
    return MonetConfig(**{k: shape[k] for k in keys}, num_hidden_layers=layers or shape["num_hidden_layers"], moe_groups=4)


def gates(tokens: int, cfg: MonetConfig, device, seed: int) -> torch.Tensor:
    """Router-shaped gates [1, T, H, E]: per head the halves whose standardised logit reaches
    min(max, sigma), softmax of their logits (as MonetRouter computes them)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(1, tokens, cfg.moe_heads, cfg.moe_experts, generator=gen).to(device)
    s = z.amax(-1, keepdim=True).clamp(max=routing_threshold(cfg.moe_topk, cfg.moe_experts))
    return torch.softmax(torch.where(z >= s, z, torch.full_like(z, -1e10)), dim=-1)


def layer(cfg: MonetConfig, device, dtype) -> MonetMoVDE:
    torch.manual_seed(0)
    moe = MonetMoVDE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.02)
    return moe.to(device=device, dtype=dtype).eval()


def random_mask(experts: int, share: float, device) -> torch.Tensor:
    return (torch.rand(experts, experts, generator=torch.Generator().manual_seed(1)) < share).to(device)


def timed(fn, device, repeats: int) -> tuple[float, int]:
    """Median seconds and peak memory above the start (bytes) of fn()."""
    fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) if cuda else 0


def check_layer(shape: dict, device, rows: list) -> None:
    cfg = config(shape)
    mask = random_mask(cfg.moe_experts, MASKED, device)
    triton = choose(torch.empty(0, device=device), "triton")
    for dtype in (torch.float32, torch.bfloat16):
        moe = layer(cfg, device, dtype)
        exact_moe = layer(cfg, device, torch.float64)
        exact_moe.load_state_dict({k: v.double() for k, v in moe.state_dict().items()})
        for tokens in shape["tokens"]:
            x = torch.randn(1, tokens, cfg.hidden_size, generator=torch.Generator().manual_seed(tokens)).to(device, dtype)
            g1, g2 = gates(tokens, cfg, device, 2 * tokens), gates(tokens, cfg, device, 2 * tokens + 1)
            with torch.no_grad():
                fast = triton(moe, x, g1.to(dtype), g2.to(dtype), mask).double()
                exact = expanded_moe_forward(exact_moe, x.double(), g1.to(dtype).double(), g2.to(dtype).double(), mask)
            err = float((fast - exact).abs().max() / exact.abs().max())
            rows.append((f"Triton vs exact, {str(dtype)[6:]}, T={tokens}", f"{err:.2e}", f"<= {TOLERANCE[dtype]:g}", err <= TOLERANCE[dtype]))
        del exact_moe


def time_layer(shape: dict, device, rows: list, repeats: int) -> None:
    cfg = config(shape)
    tokens = shape["tokens"][-1]
    mask = random_mask(cfg.moe_experts, MASKED, device)
    triton = choose(torch.empty(0, device=device), "triton")
    moe = layer(cfg, device, torch.bfloat16)
    x = torch.randn(1, tokens, cfg.hidden_size, device=device, dtype=torch.bfloat16)
    g1, g2 = gates(tokens, cfg, device, 7).bfloat16(), gates(tokens, cfg, device, 8).bfloat16()
    with torch.no_grad():
        dense_s, dense_mem = timed(lambda: moe.dense_forward(x, g1, g2), device, repeats)
        masked_s, masked_mem = timed(lambda: triton(moe, x, g1, g2, mask), device, repeats)
        full_s, full_mem = timed(lambda: expanded_moe_forward(moe, x, g1, g2, mask), device, max(1, repeats // 3))
    ratio = masked_s / dense_s
    timed_here = device.type == "cuda"  # interpreted Triton (--smoke) measures nothing
    rows.append((f"Triton masked / unmasked time, T={tokens}, bf16", f"{ratio:.2f}x", "<= 1.10", ratio <= 1.10 if timed_here else None))
    rows.append(("Triton masked / unmasked peak memory", f"{masked_mem / max(dense_mem, 1):.2f}x", "-", None))
    rows.append(("full expansion / unmasked time", f"{full_s / dense_s:.2f}x", "-", None))
    rows.append(("full expansion / unmasked peak memory", f"{full_mem / max(dense_mem, 1):.2f}x", "-", None))


def stand_in_forward(shape: dict, device, rows: list, repeats: int) -> None:
    from resect.model.mask import ExpertMask

    cfg = config(shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = MonetForCausalLM(cfg).to(torch.bfloat16).eval()
    spread = 0.02**2 * cfg.hidden_size  # router statistics that give about top-k halves per head
    for layer_ in model.model.layers:
        if layer_.router is not None:
            for norm in (layer_.router.norm1, layer_.router.norm2):
                norm.running_var.fill_(spread)
                norm.running_mean.zero_()
    batch, length = shape["batch"]
    ids = torch.randint(3, cfg.vocab_size, (batch, length), device=device)
    run = lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1)  # noqa: E731
    groups = cfg.num_routing_groups
    gen = torch.Generator().manual_seed(2)
    experts = cfg.moe_experts**2
    mask = ExpertMask(cfg.moe_experts, groups, {g: torch.randperm(experts, generator=gen)[: int(MASKED * experts)].tolist() for g in range(groups)})
    with torch.no_grad():
        plain_s, _ = timed(run, device, repeats)
        model.set_expert_mask(mask)
        masked_s, _ = timed(run, device, repeats)
    tokens = batch * length
    rows.append((f"stand-in bf16 forward, {batch}x{length} tokens", f"{tokens / plain_s:,.0f} tok/s", "-", None))
    rows.append(("stand-in bf16 forward at 14.4% masked", f"{tokens / masked_s:,.0f} tok/s ({masked_s / plain_s:.2f}x)", "-", None))


def distributed_profile(device, rows: list) -> None:
    from resect.edit.profile import profile_corpus
    from resect.edit.stats import RoutingStats
    from resect.model.loading import load_model, load_tokenizer
    from resect.model.tiny import build_tiny_checkpoint

    gpus = torch.cuda.device_count() if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_tiny_checkpoint(tmp / "tiny")
        corpus = tmp / "c.jsonl"
        corpus.write_text("\n".join(json.dumps({"text": f"Line {k}: the quick brown fox jumps {k} times.", "label": "ab"[k % 2]}) for k in range(16)))
        out = tmp / "stats.safetensors"
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(gpus), "-m", "resect", "profile", str(ckpt), "--corpus", str(corpus),
               "--out", str(out), "--batch-size", "2", "--device", device.type, "--dtype", "float32"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600)
        if proc.returncode != 0:
            rows.append((f"torchrun profile, {gpus} process(es)", proc.stderr.strip().splitlines()[-1][:60] if proc.stderr.strip() else "failed", "exit 0", False))
            return
        one = profile_corpus(load_model(ckpt, device=device.type), load_tokenizer(ckpt), corpus, batch_size=2)
        many = RoutingStats.load(out)
        same = many.token_counts == one.token_counts and torch.allclose(many.sums, one.sums, rtol=1e-5, atol=1e-8)
        backend = "NCCL" if device.type == "cuda" and gpus > 1 else "one CUDA process" if device.type == "cuda" else "gloo"
        rows.append((f"torchrun profile, {gpus} process(es) ({backend}) = one process", "equal" if same else "DIFFERENT", "equal", same))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, Triton interpreted: checks this script, measures nothing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU (run with --smoke to check the script on the CPU).")
    device = torch.device("cpu" if args.smoke else "cuda")
    shape = TOY if args.smoke else FULL
    name = "CPU (smoke: Triton interpreted, toy sizes)" if args.smoke else torch.cuda.get_device_name()
    import triton

    print(f"device: {name}; torch {torch.__version__}, triton {triton.__version__}, resect {resect.__version__}", flush=True)
    rows: list[tuple[str, str, str, bool | None]] = []
    started = time.perf_counter()
    for step in (lambda: check_layer(shape, device, rows), lambda: time_layer(shape, device, rows, args.repeats),
                 lambda: stand_in_forward(shape, device, rows, args.repeats), lambda: distributed_profile(device, rows)):  # fmt: skip
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others' numbers
            rows.append((f"step failed: {type(exc).__name__}", str(exc).splitlines()[0][:60] if str(exc) else "", "-", False))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  {'measured':>28}  {'target':>8}  ok")
    for check, value, target, ok in rows:
        print(f"{check:<{width}}  {value:>28}  {target:>8}  {'-' if ok is None else 'yes' if ok else 'NO'}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    sys.exit(0 if all(ok is not False for *_, ok in rows) else 1)


if __name__ == "__main__":
    main()
