"""The Monet model against a naive reference, generation, dtypes, and router statistics."""

from __future__ import annotations

import json

import pytest
import torch
from monet_reference import reference_forward
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from resect.model.loading import load_model, load_tokenizer


def raw_state(path):
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def token_batch(vocab: int, batch: int = 2, length: int = 11, seed: int = 0):
    return torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_auto_classes_load_published_layout_without_remote_code(tiny_ckpt):
    config = AutoConfig.from_pretrained(tiny_ckpt)
    assert type(config).__name__ == "MonetConfig"
    assert config.rope_parameters["rope_theta"] == 10000.0
    model, info = AutoModelForCausalLM.from_pretrained(tiny_ckpt, output_loading_info=True)
    assert type(model).__name__ == "MonetForCausalLM"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # every tensor in the files is a model tensor and the other way round
    assert set(raw_state(tiny_ckpt)) == set(model.state_dict())


def test_logits_and_router_probs_match_naive_reference(tiny_ckpt):
    model = load_model(tiny_ckpt)
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    ids = token_batch(cfg["vocab_size"])
    with torch.no_grad():
        out = model(ids, output_router_probs=True)
    ref_logits, ref_probs = reference_forward(raw_state(tiny_ckpt), cfg, ids)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(out.router_probs) == cfg["num_hidden_layers"]
    for layer, probs in enumerate(out.router_probs):
        if layer % cfg["moe_groups"]:
            assert probs is None
            continue
        for got, want in zip(probs, ref_probs[layer]):
            assert got.shape == (2, 11, cfg["moe_heads"], cfg["moe_experts"]) and got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_routing_is_sparse_and_normalised(tiny_vd):
    model = load_model(tiny_vd)
    with torch.no_grad():
        g1, g2 = model(token_batch(320), output_router_probs=True).router_probs[0]
    for g in (g1, g2):
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:-1]))
        active = (g > 0).sum(-1)
        assert active.min() >= 1  # at least one half per (token, head)
        assert active.float().mean() < g.shape[-1] / 2  # and far from all of them


def test_bfloat16_matches_float32_within_bf16_tolerance(tiny_vd):
    ids = token_batch(320)
    with torch.no_grad():
        ref = load_model(tiny_vd)(ids, output_router_probs=True)
        bf = load_model(tiny_vd, dtype="bfloat16")(ids, output_router_probs=True)
    assert bf.logits.dtype == torch.bfloat16
    assert bf.router_probs[0][0].dtype == torch.float32  # router stays in float32
    err = (bf.logits.float() - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 0.05


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_generation_equals_uncached(tiny_ckpt, attn):
    model = load_model(tiny_ckpt, attn_implementation=attn)
    ids = token_batch(model.config.vocab_size, batch=1, length=5)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=3)
        uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=3)
        # the greedy continuation is also what repeated full forwards pick
        seq = ids
        for _ in range(8):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, seq)


def test_left_padded_batch_generates_like_single_prompts(tiny_vd):
    model = load_model(tiny_vd)
    tok = load_tokenizer(tiny_vd)
    prompts = ["def add(a, b): return a", "local x = 1"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, do_sample=False)
        for row, prompt in enumerate(prompts):
            alone = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=6, do_sample=False)
            assert together[row, -6:].tolist() == alone[0, -6:].tolist()


def test_eager_and_sdpa_agree(tiny_vd):
    ids = token_batch(320)
    with torch.no_grad():
        a = load_model(tiny_vd, attn_implementation="eager")(ids).logits
        b = load_model(tiny_vd, attn_implementation="sdpa")(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_forward_and_generate_never_change_router_statistics(tiny_vd):
    model = load_model(tiny_vd)
    before = {k: v.clone() for k, v in model.state_dict().items() if "router.norm" in k}
    assert not model.training
    with torch.no_grad():
        model(token_batch(320), output_router_probs=True)
        model.generate(token_batch(320, batch=1), max_new_tokens=3, do_sample=False, pad_token_id=3)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_train_mode_uses_live_batch_statistics(tiny_vd):
    """Training updates the BatchNorm statistics (the built-in model's recipe relies on it)."""
    model = load_model(tiny_vd).train()
    before = model.model.layers[0].router.norm1.running_mean.clone()
    model(token_batch(320))
    assert not torch.equal(before, model.model.layers[0].router.norm1.running_mean)
