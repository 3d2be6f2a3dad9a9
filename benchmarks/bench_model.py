"""Forward throughput and peak memory of resect's Monet against the published einsum formulation.

    python benchmarks/bench_model.py [--tokens 256,16] [--repeats 5] [--topk 8]

A stack shaped like Monet-VD-1.4B (d 2048, E 512, m 16, H 8; 2 layers; random weights) runs the
same input twice per repeat: once with resect's expert layer (heads contracted first, in-place relu2)
and once with a direct port of the released code's einsums on the same weights. Both share router
and attention, so the ratio isolates the expert layer. Target: throughput ratio >= 1.0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_seconds, mib, peak_memory_bytes, set_threads  # noqa: E402

import resect  # noqa: E402,F401
from resect.model.configuration_monet import MonetConfig  # noqa: E402
from resect.model.modeling_monet import MonetForCausalLM  # noqa: E402
from resect.model.monet_layers import MonetMoVDE  # noqa: E402


def published_vd_forward(self: MonetMoVDE, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The released MonetMoVDE.forward, einsum for einsum (relu2 not in place)."""
    g1, g2 = g1.type_as(x), g2.type_as(x)
    x1 = torch.relu(self.u1(x)).square().unflatten(-1, (self.experts, -1))
    x2 = torch.relu(self.u2(x)).square().unflatten(-1, (self.experts, -1))
    x11 = self.v11(torch.einsum("btim,bthi->btim", x1, g1).flatten(-2))
    x12 = self.v12(torch.einsum("btjm,bthj,bthi->btim", x2, g2, g1).flatten(-2))
    x13 = torch.einsum("bthi,id->btd", g1, self.b1.type_as(x))
    x21 = self.v21(torch.einsum("btim,bthi,bthj->btjm", x1, g1, g2).flatten(-2))
    x22 = self.v22(torch.einsum("btjm,bthj->btjm", x2, g2).flatten(-2))
    x23 = torch.einsum("bthj,jd->btd", g2, self.b2.type_as(x))
    return torch.cat((x11 + x12 + x13, x21 + x22 + x23), dim=-1)


def build(topk: int) -> MonetForCausalLM:
    torch.manual_seed(0)
    config = MonetConfig(
        vocab_size=512, hidden_size=2048, num_hidden_layers=2, num_attention_heads=16,
        moe_dim=16, moe_heads=8, moe_experts=512, moe_topk=topk, moe_groups=4, moe_decompose="vertical",
    )
    return MonetForCausalLM(config).eval()


def use_published(model: MonetForCausalLM, on: bool) -> None:
    for layer in model.model.layers:
        if on:
            layer.moe.forward = published_vd_forward.__get__(layer.moe)
        else:
            layer.moe.__dict__.pop("forward", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="256,16", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--topk", type=int, default=8)
    args = parser.parse_args()
    threads = set_threads()
    model = build(args.topk)
    print(f"Monet-VD-1.4B-shaped stack: d 2048, E 512, m 16, H 8, 2 layers, moe_topk {args.topk}, {threads} threads")
    for tokens in (int(t) for t in args.tokens.split(",")):
        measure(model, tokens, args.repeats)
    use_published(model, False)


def measure(model: MonetForCausalLM, tokens: int, repeats: int) -> None:
    ids = torch.randint(0, 512, (1, tokens), generator=torch.Generator().manual_seed(1))

    def run(published: bool):
        def fn():
            use_published(model, published)
            with torch.inference_mode():
                return model(ids, use_cache=False).logits
        return fn

    ours, theirs = run(False)(), run(True)()
    max_err = (ours - theirs).abs().max().item()
    times = interleaved_seconds({"resect": run(False), "published": run(True)}, repeats=repeats)
    peaks = {name: peak_memory_bytes(run(name == "published")) for name in ("resect", "published")}
    print(f"{tokens} tokens (max |logit difference| {max_err:.2e}):")
    for name in ("resect", "published"):
        print(f"  {name:9s}  {tokens / times[name]:9.1f} tokens/s   peak {mib(peaks[name])}")
    print(f"  throughput ratio resect/published: {times['published'] / times['resect']:.3f} (target >= 1.0)")
    print(f"  peak memory ratio resect/published: {peaks['resect'] / peaks['published']:.3f}")


if __name__ == "__main__":
    main()
