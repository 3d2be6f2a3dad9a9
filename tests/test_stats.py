"""Routing statistics equal a brute-force computation (every token, every expert pair)."""

from __future__ import annotations

import json

import pytest
import torch

from resect.edit.corpus import Corpus, Document
from resect.edit.profile import profile_corpus
from resect.edit.stats import RoutingStats
from resect.errors import StatsError
from resect.kernels.stats import expanded_routing_sums, routing_square_sum, routing_sum
from resect.model.fingerprint import model_fingerprint
from resect.model.loading import load_model, load_tokenizer

TEXTS = {
    "code": ["def add(a, b): return a + b", "const y = [1, 2, 3].map(v => v * 2);", "local x = 1 function f() return x end"],
    "prose": ["The quick brown fox jumps over the lazy dog.", "Monet routes </s> every token to a few experts.", "A", "lazy dogs sleep"],
}


def corpus(scores: bool = False) -> Corpus:
    docs = [Document(t, label, (0.1 * k + 0.05 * len(t) % 1) if scores else None) for label, ts in TEXTS.items() for k, t in enumerate(ts)]
    return Corpus(docs, source="test")


def with_bos(tok):
    """The tiny tokenizer, made to prepend <s> like LLaMA's (a special token fed but never counted)."""
    from tokenizers.processors import TemplateProcessing

    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    return tok


def random_gates(n: int, h: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse softmax-like gates [N, H, E]: a few active halves per head, rows summing to 1."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        logits = torch.randn(n, h, e, generator=gen)
        keep = torch.rand(n, h, e, generator=gen) < 0.3
        keep[..., 0] |= ~keep.any(-1)
        out.append(torch.softmax(logits.masked_fill(~keep, -1e10), -1))
    return out[0], out[1]


def loop_w(g1: torch.Tensor, g2: torch.Tensor, t: int) -> torch.Tensor:
    """w_t[i, j] = sum_h g1[t,h,i] g2[t,h,j] by explicit loops over heads, i and j."""
    h, e = g1.shape[1:]
    w = torch.zeros(e, e, dtype=torch.float64)
    for i in range(e):
        for j in range(e):
            w[i, j] = sum(float(g1[t, k, i]) * float(g2[t, k, j]) for k in range(h))
    return w


@pytest.mark.parametrize("n,h", [(1, 1), (7, 3), (63, 2)])
def test_kernels_equal_explicit_loops(n, h):
    e = 6
    g1, g2 = random_gates(n, h, e, seed=n)
    y = torch.linspace(-1, 2, n)
    ws = [loop_w(g1, g2, t) for t in range(n)]
    assert torch.allclose(routing_sum(g1, g2).double(), sum(ws), atol=1e-5)
    assert torch.allclose(routing_sum(g1, g2, y).double(), sum(w * float(y[t]) for t, w in enumerate(ws)), atol=1e-5)
    assert torch.allclose(routing_square_sum(g1, g2, chunk=5).double(), sum(w * w for w in ws), atol=1e-5)
    assert torch.allclose(expanded_routing_sums(g1, g2).double(), sum(ws), atol=1e-5)


def brute_force(model, tok, docs: list[Document], labels: list[str]) -> dict:
    """Per group: per-label sums, counts, and every counted token's w (flattened) and score, one document at a time."""
    cfg = model.config
    groups = -(-cfg.num_hidden_layers // cfg.moe_groups)
    e = cfg.moe_experts
    sums = torch.zeros(groups, len(labels), e, e, dtype=torch.float64)
    counts = dict.fromkeys(labels, 0)
    ws: dict[int, list] = {g: [] for g in range(groups)}
    ys = []
    special = set(tok.all_special_ids)
    for doc in docs:
        enc = tok(doc.text, return_special_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            probs = model(ids, output_router_probs=True).router_probs
        positions = [t for t, (m, i) in enumerate(zip(enc["special_tokens_mask"], enc["input_ids"])) if not m and i not in special]
        counts[doc.label] += len(positions)
        ys += [doc.score] * len(positions)
        for layer, p in enumerate(probs):
            if p is None:
                continue
            g = layer // cfg.moe_groups
            for t in positions:
                w = sum(torch.outer(p[0][0, t, k].double(), p[1][0, t, k].double()) for k in range(cfg.moe_heads))
                sums[g, labels.index(doc.label)] += w
                ws[g].append(w.flatten())
    return {"sums": sums, "counts": counts, "ws": {g: torch.stack(v) for g, v in ws.items()}, "ys": ys}


def test_profile_equals_brute_force(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), with_bos(load_tokenizer(tiny_ckpt))
    data = corpus(scores=True)
    stats = profile_corpus(model, tok, data, batch_size=3)
    ref = brute_force(model, tok, data.documents, stats.labels)
    assert stats.token_counts == ref["counts"]
    assert torch.allclose(stats.sums, ref["sums"], rtol=1e-5, atol=1e-6)
    h = model.config.moe_heads
    for g in range(stats.num_groups):
        totals = stats.sums[g].sum((1, 2))
        assert torch.allclose(totals, torch.tensor([h * float(stats.token_counts[lab]) for lab in stats.labels], dtype=torch.float64))
        # Pearson r of every expert with the score, from the stacked per-token weights.
        w, y = ref["ws"][g], torch.tensor(ref["ys"], dtype=torch.float64)
        wc, yc = w - w.mean(0), y - y.mean()
        denom = (wc.square().sum(0) * yc.square().sum()).sqrt()
        r_ref = (wc * yc[:, None]).sum(0) / denom
        r = stats.correlation(g).flatten()
        varies = denom > 1e-9
        assert int(varies.sum()) > 10
        assert torch.allclose(r[varies], r_ref[varies], atol=1e-4)
        assert torch.isnan(r[denom == 0]).all()
    assert stats.scored_tokens == sum(ref["counts"].values())


def test_padding_and_batch_size_do_not_matter(tiny_vd):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    one = profile_corpus(model, tok, corpus(), batch_size=1)
    many = profile_corpus(model, tok, corpus(), batch_size=4)  # sequences of different lengths, right-padded
    assert one.token_counts == many.token_counts
    assert torch.allclose(one.sums, many.sums, rtol=1e-5, atol=1e-6)


def test_profiling_leaves_state_dict_unchanged(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    model.train()  # even when handed a model in train mode: profiling runs in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_corpus(model, tok, corpus(scores=True), batch_size=2)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # mode restored


def test_max_tokens_per_label_exact_and_seeded(tiny_vd):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    a = profile_corpus(model, tok, corpus(), max_tokens_per_label=9, seed=3)
    b = profile_corpus(model, tok, corpus(), max_tokens_per_label=9, seed=3)
    assert a.token_counts == {"code": 9, "prose": 9}
    assert torch.equal(a.sums, b.sums)
    h = model.config.moe_heads
    assert torch.allclose(a.sums.sum((2, 3)), torch.full((a.num_groups, 2), 9.0 * h, dtype=torch.float64))
    seeds = [profile_corpus(model, tok, corpus(), max_tokens_per_label=9, seed=s).sums for s in range(4)]
    assert any(not torch.equal(seeds[0], s) for s in seeds[1:])  # the seed picks which documents


def test_save_load_roundtrip_and_provenance(tiny_vd, tiny_hd, tmp_path):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    stats = profile_corpus(model, tok, corpus(scores=True), batch_size=2)
    path = stats.save(tmp_path / "s.safetensors")
    back = RoutingStats.load(path)
    assert back.labels == stats.labels and back.token_counts == stats.token_counts
    assert torch.equal(back.sums, stats.sums) and all(torch.equal(back.corr[k], stats.corr[k]) for k in stats.corr)
    assert back.model_fingerprint == model_fingerprint(model) and back.corpus_fingerprint == corpus(scores=True).fingerprint()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["resect_version"] and json.loads(meta["labels"]) == stats.labels
    back.check_model(model)
    with pytest.raises(StatsError, match="another|this model is"):
        back.check_model(load_model(tiny_hd))


def test_load_rejects_non_stats(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(StatsError):
        RoutingStats.load(bad)
    with pytest.raises(StatsError, match="does not exist"):
        RoutingStats.load(tmp_path / "missing.safetensors")
