"""torch.compile against eager, for an unmasked and a masked Monet (the compiled masked forward is one graph).

    python benchmarks/bench_compile.py [--tokens 128] [--repeats 5] [--layers 2] [--removed 0.1] [--backend inductor]

A stack shaped like Monet-VD-1.4B's layers (d 2048, E 512, m 16, H 8; random weights) runs a forward
of one sequence eagerly and compiled (`fullgraph=True`), unmasked and with a share of every routing
group's experts removed. Printed: the compile time, eager and compiled seconds per forward, their
ratio (compiled / eager: below 1 is faster), and the largest difference of the compiled logits from
the eager ones (target < 1e-4). Under compile the masked corrections run as one opaque operator per
layer side (kernels/masked_torch.py); everything around them is compiled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_seconds, set_threads  # noqa: E402

import resect  # noqa: E402,F401
from resect.model.configuration_monet import MonetConfig  # noqa: E402
from resect.model.mask import ExpertMask  # noqa: E402
from resect.model.modeling_monet import MonetForCausalLM  # noqa: E402


def build(layers: int) -> MonetForCausalLM:
    torch.manual_seed(0)
    config = MonetConfig(vocab_size=512, hidden_size=2048, num_hidden_layers=layers, num_attention_heads=16, moe_dim=16, moe_heads=8,
                         moe_experts=512, moe_topk=8, moe_groups=4, moe_decompose="vertical")  # fmt: skip
    return MonetForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--removed", type=float, default=0.1, help="share of each routing group's experts removed in the masked row")
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    threads = set_threads()
    model = build(args.layers)
    ids = torch.randint(0, 512, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    groups, per_group = model.config.num_routing_groups, 512 * 512
    gen = torch.Generator().manual_seed(2)
    mask = ExpertMask(512, groups, {g: torch.randperm(per_group, generator=gen)[: int(args.removed * per_group)].tolist() for g in range(groups)})
    print(f"Monet-VD-1.4B-shaped layers: d 2048, E 512, m 16, H 8, {args.layers} layers, {args.tokens} tokens, {threads} threads, "
          f"backend {args.backend}")  # fmt: skip
    print("| model | compile (s) | eager (s/forward) | compiled (s/forward) | compiled / eager | max abs difference |")
    print("|---|---|---|---|---|---|")
    for name, chosen in (("unmasked", None), (f"masked ({100 * args.removed:.0f}% removed)", mask)):
        model.set_expert_mask(chosen)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=args.backend)

        def eager():
            with torch.no_grad():
                return model(ids, use_cache=False).logits

        def fast(compiled=compiled):
            with torch.no_grad():
                return compiled(ids, use_cache=False).logits

        start = time.perf_counter()
        first = fast()
        compile_seconds = time.perf_counter() - start
        error = float((first - eager()).abs().max())
        times = interleaved_seconds({"eager": eager, "compiled": fast}, repeats=args.repeats)
        print(f"| {name} | {compile_seconds:.1f} | {times['eager']:.3f} | {times['compiled']:.3f} | {times['compiled'] / times['eager']:.2f} | {error:.1e} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
