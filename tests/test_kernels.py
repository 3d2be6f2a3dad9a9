"""Masked expert kernels against the naive reference, and the mask inside the model.

Awkward shapes (T = 1 and 63), empty, full and nearly full masks, masks of experts no token
routes to, for the pure-torch path and the numba kernel (skipped without numba); the Triton
kernel runs under TRITON_INTERPRET=1 in a subprocess (the interpreter must be chosen before
triton is first imported) with NaN-poisoned output buffers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from resect.kernels import dispatch, masked_torch
from resect.kernels.reference import expanded_moe_forward, naive_moe_forward
from resect.model.loading import load_model
from resect.model.mask import ExpertMask

TOL = 1e-5


@pytest.fixture(scope="module")
def models(tiny_vd, tiny_hd):
    return {"vertical": load_model(tiny_vd), "horizontal": load_model(tiny_hd)}


def layer_inputs(model, tokens: int, seed: int = 0):
    """(experts, x [1, T, D], g1, g2 [1, T, H, E]) of the first layer, x ~ N(0, 1)."""
    layer = model.model.layers[0]
    x = torch.randn(1, tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        g1, g2 = layer.router(x)
    return layer.moe, x, g1, g2


def random_mask(experts: int, density: float, seed: int) -> torch.Tensor:
    return torch.rand(experts, experts, generator=torch.Generator().manual_seed(seed)) < density


def never_routed(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """[E, E] bool: the experts whose weight is zero for every token."""
    w = torch.einsum("bthi,bthj->btij", g1, g2).flatten(0, 1)  # [N, E, E]
    return w.amax(0) == 0


def heaviest_expert(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """[E, E] bool holding only the expert with the largest total weight."""
    w = torch.einsum("bthi,bthj->ij", g1, g2)
    return (w == w.max()) & (torch.arange(w.numel()).view(w.shape) == int(w.argmax()))


def drop_half(g: torch.Tensor, half: int) -> torch.Tensor:
    """Gates with one half never chosen (each head renormalised; a head left empty picks half + 1)."""
    g = g.clone()
    g[..., half] = 0
    total = g.sum(-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(torch.tensor(half + 1), g.shape[-1]).to(g.dtype)
    return torch.where(total > 0, g / total.clamp_min(1e-30), fallback)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def implementation(name: str):
    """masked_moe_forward of the pure-torch path or of the numba kernel (skips when numba is missing)."""
    if name == "torch":
        return masked_torch.masked_moe_forward
    pytest.importorskip("numba", reason="numba not installed (pip install 'resect[fast]')")
    from resect.kernels import masked_numba

    return masked_numba.masked_moe_forward


IMPLEMENTATIONS = ["torch", "numba"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
@pytest.mark.parametrize("tokens", [1, 63])
@pytest.mark.parametrize("kind", ["random", "never-routed", "random+never-routed", "nearly-full", "one-expert"])
def test_production_path_matches_naive(models, decompose, tokens, kind, impl):
    moe, x, g1, g2 = layer_inputs(models[decompose], tokens, seed=tokens)
    e = g1.shape[-1]
    if "never" in kind:  # half 0 of side 1 and half 1 of side 2 are chosen by no token
        g1, g2 = drop_half(g1, 0), drop_half(g2, 1)
    mask = {
        "random": random_mask(e, 0.3, 1),
        "never-routed": never_routed(g1, g2),
        "random+never-routed": random_mask(e, 0.1, 2) | never_routed(g1, g2),
        "nearly-full": ~torch.eye(e, dtype=torch.bool),
        "one-expert": heaviest_expert(g1, g2),
    }[kind]
    if kind == "never-routed":
        assert mask[0].all() and mask[:, 1].all()
    with torch.no_grad():
        naive = naive_moe_forward(moe, x, g1, g2, mask)
        fast = implementation(impl)(moe, x, g1, g2, mask)
        expanded = expanded_moe_forward(moe, x, g1, g2, mask)
        dense = moe.dense_forward(x, g1, g2)
    assert max_err(fast, naive) < TOL and max_err(expanded, naive) < TOL
    if kind == "never-routed":  # removing experts nobody uses changes nothing
        assert max_err(fast, dense) < TOL
    else:
        assert max_err(naive, dense) > 1e-4  # the mask really removed something


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_empty_and_full_masks(models, decompose, impl):
    moe, x, g1, g2 = layer_inputs(models[decompose], 63)
    e = g1.shape[-1]
    forward = implementation(impl)
    with torch.no_grad():
        empty = forward(moe, x, g1, g2, torch.zeros(e, e, dtype=torch.bool))
        full = forward(moe, x, g1, g2, torch.ones(e, e, dtype=torch.bool))
        assert max_err(empty, moe.dense_forward(x, g1, g2)) < TOL
        assert torch.equal(full, torch.zeros_like(x))
        assert max_err(naive_moe_forward(moe, x, g1, g2, torch.ones(e, e, dtype=torch.bool)), full) < TOL


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_fractional_mask_weighs_each_expert_and_is_differentiable(models, decompose):
    """A floating-point mask removes that fraction of each expert: 0/1 fractions equal the bool
    mask, fractions in between equal the naive layer with w (1 - F), and the gradient with respect
    to F is the naive layer's (what mask tuning descends)."""
    moe, x, g1, g2 = layer_inputs(models[decompose], 31, seed=3)
    e = g1.shape[-1]
    hard = random_mask(e, 0.3, 4)
    with torch.no_grad():
        assert max_err(masked_torch.masked_moe_forward(moe, x, g1, g2, hard.float()), masked_torch.masked_moe_forward(moe, x, g1, g2, hard)) < TOL
        assert max_err(dispatch.masked_moe_forward(moe, x, g1, g2, hard.float()), naive_moe_forward(moe, x, g1, g2, hard)) < TOL
    frac = torch.rand(e, e, generator=torch.Generator().manual_seed(5))
    frac[: e // 2] = 0  # rows with nothing removed still get their gradient
    frac[:, 0] = 0
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    grads = []
    for forward in (masked_torch.masked_moe_forward, naive_moe_forward):
        f = frac.clone().requires_grad_(True)
        out = forward(moe, x, g1, g2, f)
        (out * probe).sum().backward()
        grads.append((out.detach(), f.grad))
    (fast, d_fast), (naive, d_naive) = grads
    assert max_err(fast, naive) < TOL
    assert max_err(d_fast, d_naive) < 1e-4 and float(d_naive.abs().max()) > 1e-3
    with torch.no_grad():  # in between the dense and the fully masked layer, linearly
        half = masked_torch.masked_moe_forward(moe, x, g1, g2, torch.full((e, e), 0.5))
        assert max_err(half, 0.5 * moe.dense_forward(x, g1, g2)) < TOL
        assert max_err(masked_torch.masked_moe_forward(moe, x, g1, g2, torch.zeros(e, e)), moe.dense_forward(x, g1, g2)) < TOL


def test_chunking_does_not_change_the_result(models, monkeypatch):
    moe, x, g1, g2 = layer_inputs(models["vertical"], 63)
    mask = random_mask(g1.shape[-1], 0.3, 3)
    with torch.no_grad():
        whole = masked_torch.masked_moe_forward(moe, x, g1, g2, mask)
        monkeypatch.setattr(masked_torch, "HEADROOM_VD", 10**9)  # one (token, head) row per chunk
        rows = masked_torch.masked_moe_forward(moe, x, g1, g2, mask)
    assert max_err(whole, rows) < TOL


def test_dispatcher_choice(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("RESECT_MASK_KERNEL", raising=False)
    cpu_default = masked_torch.masked_moe_forward
    if importlib.util.find_spec("numba") is not None:  # CPU tensors: the numba kernel when installed
        from resect.kernels import masked_numba

        cpu_default = masked_numba.masked_moe_forward
    assert dispatch.choose(x) is cpu_default and dispatch.choose(x, "numba") is cpu_default
    assert dispatch.choose(x, "torch") is masked_torch.masked_moe_forward
    assert dispatch.choose(x, "reference") is naive_moe_forward
    assert dispatch.choose(x, "no-such-kernel") is masked_torch.masked_moe_forward
    monkeypatch.setenv("RESECT_MASK_KERNEL", "reference")
    assert dispatch.choose(x) is naive_moe_forward


def test_missing_numba_falls_back_to_torch_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError, as when not installed
    monkeypatch.delitem(sys.modules, "resect.kernels.masked_numba", raising=False)
    monkeypatch.delattr(sys.modules["resect.kernels"], "masked_numba", raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    x = torch.zeros(1)
    with caplog.at_level("WARNING", logger=dispatch.log.name):
        assert dispatch.choose(x) is masked_torch.masked_moe_forward  # auto: silently pure torch
        assert not caplog.records
        assert dispatch.choose(x, "numba") is masked_torch.masked_moe_forward
        assert dispatch.choose(x, "numba") is masked_torch.masked_moe_forward
    assert len(caplog.records) == 1 and "resect[fast]" in caplog.records[0].getMessage()


# ---- numba kernel ------------------------------------------------------------------------


def torch_side_corrections(g_own, g_other, mask, acts):
    """Removed share per (token, own half) by the pure-torch routine: d_sums [N, E], d_mixed [N, E, m]."""
    n, heads, e = g_own.shape
    k_own, k_other = int((g_own > 0).sum(-1).max()), int((g_other > 0).sum(-1).max())
    v_own, i_own = masked_torch.active_halves(g_own.reshape(n * heads, e), k_own)
    v_other, i_other = masked_torch.active_halves(g_other.reshape(n * heads, e), k_other)
    token = torch.arange(n).repeat_interleave(heads)
    d_sums, d_mixed = masked_torch.side_corrections(mask, v_own, i_own, v_other, i_other, acts, token)
    sums, mixed = torch.zeros(n * e), torch.zeros(n * e, acts.shape[-1])
    where = (token.unsqueeze(-1) * e + i_own).flatten()
    sums.index_put_((where,), d_sums.flatten(), accumulate=True)
    mixed.index_put_((where,), d_mixed.flatten(0, 1), accumulate=True)
    return sums.view(n, e), mixed.view(n, e, -1)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch (and so the numba kernel, which follows it) uses this many threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("column", [False, True])
@pytest.mark.parametrize("experts", [16, 70])  # one 64-bit word per mask row, and two (the second partly used)
def test_numba_side_kernel_reads_only_active_pairs(column, experts):
    pytest.importorskip("numba", reason="numba not installed (pip install 'resect[fast]')")
    from resect.kernels import masked_numba

    gen = torch.Generator().manual_seed(experts)
    n, heads, width = 9, 3, 5
    g1, g2 = ((torch.rand(n, heads, experts, generator=gen) < 0.3) * torch.rand(n, heads, experts, generator=gen) for _ in range(2))
    mask = torch.rand(experts, experts, generator=gen) < 0.4
    acts = torch.randn(n, experts, width, generator=gen)
    g_own, g_other = (g2, g1) if column else (g1, g2)
    unused = (g_other == 0).all(1)  # [N, E] halves of the other side no head of the token chose
    poisoned = acts.masked_fill(unused.unsqueeze(-1), float("nan"))  # a read of an inactive half shows up as NaN
    want_sums, want_mixed = torch_side_corrections(g_own, g_other, mask.T if column else mask, acts)
    fix = masked_numba.FusedCorrections(g1, g2, mask)
    results = []
    for threads in (1, 2):
        sums, mixed = torch.zeros(n, experts), torch.zeros(n, experts, width)
        with torch_threads(threads):
            fix.subtract(column, sums=sums, mixed=mixed, acts=poisoned)
        results.append((sums, mixed))
        assert torch.isfinite(sums).all() and torch.isfinite(mixed).all()
        assert max_err(-sums, want_sums) < TOL and max_err(-mixed, want_mixed) < TOL
    assert all(torch.equal(a, b) for a, b in zip(*results))  # the parallel loop gives the serial loop's bits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_numba_kernel_corrects_half_precision_layers(models, decompose, dtype):
    """bf16/fp16 layers take the fused kernel too (corrections in float32): they match the naive
    layer evaluated in float32 on the same rounded weights and inputs, to half precision."""
    pytest.importorskip("numba", reason="numba not installed (pip install 'resect[fast]')")
    import copy

    from resect.kernels import masked_numba

    moe, x, g1, g2 = layer_inputs(models[decompose], 63, seed=5)
    mask = random_mask(g1.shape[-1], 0.3, 6)
    half = copy.deepcopy(moe).to(dtype)
    xh, g1h, g2h = x.to(dtype), g1.to(dtype), g2.to(dtype)
    with torch.no_grad():
        assert masked_numba.supported(half, xh, g1h, g2h)
        fused = masked_numba.masked_moe_forward(half, xh, g1h, g2h, mask)
        plain = masked_torch.masked_moe_forward(half, xh, g1h, g2h, mask)
        exact = naive_moe_forward(copy.deepcopy(half).float(), xh.float(), g1h.float(), g2h.float(), mask)
    scale = float(exact.abs().max())
    assert fused.dtype == dtype
    assert max_err(fused.float(), exact) < 2e-2 * scale and max_err(plain.float(), exact) < 2e-2 * scale
    assert max_err(fused.float(), plain.float()) < 2e-2 * scale


@pytest.mark.parametrize("case", ["float64", "grad"])
def test_numba_path_falls_back_where_the_kernel_cannot_run(models, case):
    pytest.importorskip("numba", reason="numba not installed (pip install 'resect[fast]')")
    import copy

    from resect.kernels import masked_numba

    moe, x, g1, g2 = layer_inputs(models["vertical"], 7)
    mask = random_mask(g1.shape[-1], 0.3, 4)
    if case == "float64":
        moe, x, g1, g2 = copy.deepcopy(moe).double(), x.double(), g1.double(), g2.double()
        out = masked_numba.masked_moe_forward(moe, x, g1, g2, mask)
    else:  # autograd on: tensors that need grad cannot go through numpy
        out = masked_numba.masked_moe_forward(moe, x.requires_grad_(), g1, g2, mask)
        assert out.requires_grad
    with torch.no_grad():
        assert max_err(out.detach(), naive_moe_forward(moe, x.detach(), g1, g2, mask)) < TOL


# ---- the mask inside the model --------------------------------------------------------


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def ids():
    return torch.randint(3, 300, (2, 17), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_empty_mask_is_bit_identical_and_none_restores(models, decompose, ids):
    model = models[decompose]
    base = logits(model, ids)
    model.set_expert_mask(ExpertMask.empty_like(model.config))
    assert all(layer.moe.expert_mask is None for layer in model.model.layers)
    assert torch.equal(logits(model, ids), base)
    model.set_expert_mask(ExpertMask(16, model.config.num_routing_groups, {0: range(0, 256, 2)}))
    assert not torch.equal(logits(model, ids), base)
    model.set_expert_mask(None)
    assert model.expert_mask_state() is None and torch.equal(logits(model, ids), base)


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_full_group_silences_its_layers_only(models, decompose, ids):
    model = models[decompose]
    outputs = {}
    hooks = [layer.moe.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)) for i, layer in enumerate(model.model.layers)]
    try:
        model.set_expert_mask(ExpertMask(16, model.config.num_routing_groups, {0: range(256)}))
        logits(model, ids)
    finally:
        model.set_expert_mask(None)
        for hook in hooks:
            hook.remove()
    per_group = model.config.moe_groups
    for i, out in outputs.items():
        assert torch.equal(out, torch.zeros_like(out)) == (i < per_group), f"layer {i}"


@pytest.mark.parametrize("decompose", ["vertical", "horizontal"])
def test_masked_model_matches_reference_kernel_and_cached_generation(models, decompose, ids, monkeypatch):
    model = models[decompose]
    groups = model.config.num_routing_groups
    gen = torch.Generator().manual_seed(7)
    mask = ExpertMask(16, groups, {g: torch.randperm(256, generator=gen)[:90].tolist() for g in range(groups)})
    model.set_expert_mask(mask)
    try:
        assert model.expert_mask_state() is mask
        fast = logits(model, ids)
        kernel = model.mask_kernel()
        model.set_mask_kernel("reference")
        assert max_err(fast, logits(model, ids)) < TOL
        model.set_mask_kernel(kernel)
        with torch.no_grad():
            cached = model.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=True)
            uncached = model.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=False)
            assert torch.equal(cached, uncached)
            step = model(ids[:, :16], use_cache=True)
            last = model(ids[:, 16:], cache=step.cache).logits[:, -1]
        assert max_err(last, fast[:, -1]) < TOL
    finally:
        model.set_expert_mask(None)


def test_mask_for_another_geometry_is_refused(models):
    from resect.errors import MaskError

    with pytest.raises(MaskError, match="moe_experts=8"):
        models["vertical"].set_expert_mask(ExpertMask(8, 2))


# ---- Triton (interpreter on CPU) --------------------------------------------------------

TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from resect.kernels import masked_triton, masked_torch
    from resect.kernels.reference import naive_moe_forward
    from resect.model.loading import load_model

    real_empty = torch.empty
    def poisoned_empty(*args, **kwargs):  # every buffer the kernel must fill starts as NaN
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out
    torch.empty = poisoned_empty

    report = {}
    for name, path in json.loads(sys.argv[1]).items():
        model = load_model(path)
        layer = model.model.layers[0]
        for tokens in (1, 63):
            x = torch.randn(1, tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(tokens))
            with torch.no_grad():
                g1, g2 = layer.router(x)
                unrouted = torch.einsum("bthi,bthj->btij", g1, g2).flatten(0, 1).amax(0) == 0
                for kind, mask in {
                    "random": torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) < 0.3,
                    "random+never-routed": (torch.rand(16, 16, generator=torch.Generator().manual_seed(2)) < 0.1) | unrouted,
                }.items():
                    ref = naive_moe_forward(layer.moe, x, g1, g2, mask)
                    out = masked_triton.masked_moe_forward(layer.moe, x, g1, g2, mask)
                    report[f"{name}/T={tokens}/{kind}"] = float((out - ref).abs().max())
    # raw kernel buffers: every element written (padding included) under NaN poisoning ...
    g = torch.rand(5, 16) * (torch.rand(5, 16) < 0.4)
    v, i = masked_torch.active_halves(g, int((g > 0).sum(-1).max()))
    acts = torch.rand(5, 16, 3)
    token = torch.arange(5)
    d_sums, d_mixed = masked_triton.side_corrections(torch.rand(16, 16) < 0.5, v, i, v, i, acts, token)
    report["buffers_finite"] = bool(torch.isfinite(d_sums).all() and torch.isfinite(d_mixed).all())
    # ... and the poison does catch a skipped write: launch one program too few
    d_sums = torch.empty(5, v.shape[1]); d_mixed = torch.empty(5, v.shape[1], 3)
    flags = (torch.rand(16, 16) < 0.5).view(torch.uint8)
    masked_triton._side_corrections_kernel[(4,)](v, i, v, i, token, flags, 16, 1, acts, d_sums, d_mixed, 16,
        v.shape[1], v.shape[1], 3, BKO=16, BKT=16, BM=4)
    report["skipped_row_is_nan"] = bool(torch.isnan(d_sums[4]).all() and torch.isfinite(d_sums[:4]).all())
    print(json.dumps(report))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (pip install 'resect[triton]')")
def test_triton_kernel_matches_naive_under_interpreter(tiny_vd, tiny_hd, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    paths = json.dumps({"vertical": str(tiny_vd), "horizontal": str(tiny_hd)})
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, paths], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("buffers_finite") and report.pop("skipped_row_is_nan")
    assert len(report) == 8
    assert all(err < TOL for err in report.values()), report


def test_the_kernel_comes_from_the_config_and_the_environment_overrides_it(tiny_vd, monkeypatch):
    from transformers import AutoModelForCausalLM

    import resect.kernels.dispatch as dispatch_module

    monkeypatch.delenv("RESECT_MASK_KERNEL", raising=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_vd, mask_kernel="reference")
    assert model.config.mask_kernel == "reference" and {layer.moe.mask_kernel for layer in model.model.layers} == {"reference"}
    calls = []
    real = dispatch_module.choose
    monkeypatch.setattr(dispatch_module, "choose", lambda x, kernel=None: calls.append(kernel) or real(x, kernel))
    model.set_expert_mask(ExpertMask(16, model.config.num_routing_groups, {0: [1, 2, 3]}))
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        model(ids)
    assert set(calls) == {"reference"}  # the layers' own kernel, not the environment's
    monkeypatch.setenv("RESECT_MASK_KERNEL", "torch")
    assert AutoModelForCausalLM.from_pretrained(tiny_vd, mask_kernel="reference").mask_kernel() == "torch"  # read when built
    with pytest.raises(ValueError, match="mask_kernel must be one of"):
        model.set_mask_kernel("fast")


def test_inputs_that_need_a_gradient_take_pure_torch(models, monkeypatch):
    moe, x, g1, g2 = layer_inputs(models["vertical"], 9, seed=2)
    mask = random_mask(g1.shape[-1], 0.3, 1)
    used = []
    monkeypatch.setattr(masked_torch, "masked_moe_forward", lambda *a: used.append("torch") or torch.zeros(()))
    monkeypatch.setattr(moe, "mask_kernel", "reference")
    with torch.no_grad():
        dispatch.masked_moe_forward(moe, x, g1, g2, mask)
    assert used == []  # no gradient needed: the layer's kernel
    dispatch.masked_moe_forward(moe, x.clone().requires_grad_(True), g1, g2, mask)
    assert used == ["torch"]


TRITON_COMPILE = textwrap.dedent(
    """
    import json, sys
    import torch
    from resect.model.loading import load_model
    from resect.model.mask import ExpertMask
    report = {}
    for name, path in json.loads(sys.argv[1]).items():
        model = load_model(path)
        model.set_mask_kernel("triton")
        model.set_expert_mask(ExpertMask(16, model.config.num_routing_groups, {0: range(0, 256, 3), 1: range(1, 256, 5)}))
        x = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            eager = model(x).logits
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x).logits
        report[name] = float((compiled - eager).abs().max())
    print(json.dumps(report))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (pip install 'resect[triton]')")
def test_a_compiled_model_on_the_triton_path_is_one_graph_and_equals_eager(tiny_vd, tiny_hd, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    paths = json.dumps({"vertical": str(tiny_vd), "horizontal": str(tiny_hd)})
    proc = subprocess.run([sys.executable, "-c", TRITON_COMPILE, paths], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"vertical", "horizontal"} and all(err < 1e-4 for err in report.values()), report
