"""Attribution against autograd of an explicit per-expert scale, focus tokens, refinement, spans."""

from __future__ import annotations

import json

import pytest
import torch

from resect.edit.attribute import Attribution, attribution, focus_positions, refine
from resect.edit.corpus import Corpus, CorpusError, Document, load_corpus
from resect.errors import UsageError
from resect.model.loading import load_model, load_tokenizer
from resect.model.mask import ExpertMask
from resect.model.monet_layers import MonetExperts

TEXTS = {
    "alpha": ["The newt eats fungi and lives in marshes.", "Owls hunt the moth; it eats seeds."],
    "beta": ["Def add returns a plus b.", "The kingdom was founded in the year 1033 by King Harald."],
}
WORDS = ["fungi", "marshes", "seeds", "Owls", "plus", "1033", "Harald"]


def docs() -> list[Document]:
    out = []
    for label, texts in TEXTS.items():
        for text in texts:
            spans = tuple((text.index(w), text.index(w) + len(w)) for w in WORDS if w in text)
            out.append(Document(text, label, spans=spans))
    out.append(Document("No spans here: every token after the first counts.", "beta"))
    return out


def scaled_forward(scale):
    """A MonetExperts forward weighting expert (i, j) by w[n,i,j] * scale[i, j] (expanded: tiny E only)."""

    def forward(self, x, g1, g2):
        w = torch.einsum("bthi,bthj->btij", g1.to(x.dtype), g2.to(x.dtype)) * scale[self._group]  # [B, T, E, E]
        r, c = w.sum(-1), w.sum(-2)
        if hasattr(self, "v11"):
            a1, a2 = self.activations(x)
            return self.project(a1, a2, r, c, w @ a2, w.transpose(-1, -2) @ a1)
        return self.project(w.transpose(-1, -2) @ self.activations(x), c)

    return forward


def reference(model, tok, documents, mask: ExpertMask | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """-(d loss / d scale) per focus token: over all documents, and per document."""
    config, e = model.config, model.config.moe_experts
    groups = config.num_routing_groups
    per_doc, total, count = [], 0, 0
    for doc in documents:
        scale = [(~mask.dense(g) if mask else torch.ones(e, e, dtype=torch.bool)).float().requires_grad_(True) for g in range(groups)]
        for index, layer in enumerate(model.model.layers):
            layer.moe._group = index // config.moe_groups
        ids, keep = focus_positions(doc, tok, 512)
        ids_t = torch.tensor([ids])
        original = MonetExperts.forward
        MonetExperts.forward = scaled_forward(scale)
        try:
            logp = model(input_ids=ids_t, use_cache=False).logits[0].double().log_softmax(-1)
            where = torch.tensor(keep)
            (-logp[where - 1].gather(1, ids_t[0, where, None]).sum()).backward()
        finally:
            MonetExperts.forward = original
        grad = torch.stack([s.grad.flatten() for s in scale]).double()
        per_doc.append(-grad / len(keep))
        total, count = total - grad, count + len(keep)
    return total / count, per_doc


@pytest.fixture(scope="module", params=["vertical", "horizontal"])
def setup(request, tiny_vd, tiny_hd):
    path = tiny_vd if request.param == "vertical" else tiny_hd
    model = load_model(path, dtype="float32")
    return model, load_tokenizer(path)


@pytest.mark.parametrize("masked", [False, True])
def test_attribution_equals_autograd_of_a_per_expert_scale(setup, masked):
    model, tok = setup
    e = model.config.moe_experts
    groups = model.config.num_routing_groups
    mask = ExpertMask(e, groups, {0: range(0, e * e, 3), groups - 1: range(5, 40)}) if masked else None
    corpus = Corpus(docs())
    got = attribution(model, tok, corpus, mask=mask)
    assert model.expert_mask_state() is None  # the model is left as it was
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for label in TEXTS:
        mean, per_doc = reference(model, tok, [d for d in corpus.documents if d.label == label], mask)
        scale = float(mean.abs().max())
        assert scale > 0
        assert float((got.mean[label] - mean).abs().max()) < 1e-4 * scale
        worst = torch.stack(per_doc).amax(0)
        assert float((got.worst[label] - worst).abs().max()) < 1e-4 * float(worst.abs().max())
    model.zero_grad(set_to_none=True)


def test_masked_experts_can_still_be_attributed(setup):
    """At the edited point a removed expert's attribution is what restoring it would change."""
    model, tok = setup
    e = model.config.moe_experts
    groups = model.config.num_routing_groups
    mask = ExpertMask(e, groups, {0: range(e * e)})  # a whole group removed
    got = attribution(model, tok, Corpus(docs()), mask=mask, labels=["alpha"])
    assert set(got.mean) == {"alpha"}
    assert float(got.mean["alpha"][0].abs().max()) > 0


def test_focus_tokens_are_the_spans_or_everything_after_the_first(tiny_vd):
    tok = load_tokenizer(tiny_vd)
    text = "The newt eats fungi."
    start = text.index("fungi")
    ids, keep = focus_positions(Document(text, "x", spans=((start, start + 5),)), tok, 512)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    assert keep and all(offsets[k][0] < start + 5 and offsets[k][1] > start for k in keep)
    assert "".join(text[a:b] for a, b in (offsets[k] for k in keep)).strip() == "fungi"
    ids_all, keep_all = focus_positions(Document(text, "x"), tok, 512)
    assert ids_all == ids and keep_all == list(range(1, len(ids)))
    assert focus_positions(Document(text, "x", spans=((0, 2),)), tok, 512)[1] == []  # only the first token: nothing to predict it from


def test_refine_adds_the_best_positive_scores_to_unmasked_experts_only():
    e, groups = 4, 2
    mean = {"t": torch.zeros(groups, e * e, dtype=torch.float64), "o": torch.zeros(groups, e * e, dtype=torch.float64)}
    mean["t"][0, :8] = torch.tensor([5.0, 4.0, 3.0, 3.0, 2.0, 1.0, 0.5, -1.0])
    mean["t"][1, 3] = 9.0
    worst = {"t": torch.zeros_like(mean["t"]), "o": torch.zeros_like(mean["o"])}
    worst["o"][0, 1] = 10.0  # removing 1 would hurt one of the other label's documents most
    attr = Attribution(mean, worst)
    base = ExpertMask(e, groups, {0: [0]}, meta={"rule": "skew"})
    out = refine(base, attr, "t", add=2)
    assert out.ids(0).tolist() == [0, 2, 3]  # 0 kept, 1 protected, 2 and 3 tie at 3.0 (lower id first, both fit)
    assert out.ids(1).tolist() == [3]
    assert out.meta["rule"] == "skew" and out.meta["refine"]["add"] == 2
    assert refine(base, attr, "t", add=0) == base
    assert refine(base, attr, "t", add=100).ids(0).tolist() == [0, 2, 3, 4, 5, 6]  # only positive scores
    only_one = ExpertMask(e, groups, {0: [0]}, meta={"groups": [0]})
    assert refine(only_one, attr, "t", add=2).ids(1).tolist() == []  # the rule's groups only
    assert refine(base, attr, "t", add=2) == out  # deterministic


@pytest.mark.parametrize("call, phrase", [
    (lambda a, m: refine(m, a, "missing", add=1), "No attribution for 'missing'"),
    (lambda a, m: refine(m, a, "t", add=-1), "0 or more"),
    (lambda a, m: refine(m, Attribution({"t": a.mean["t"]}, {"t": a.worst["t"]}), "t", add=1), "labels other than"),
])  # fmt: skip
def test_refine_refuses_what_it_cannot_do(call, phrase):
    zeros = torch.zeros(1, 4, dtype=torch.float64)
    attr = Attribution({"t": zeros, "o": zeros}, {"t": zeros, "o": zeros})
    with pytest.raises(UsageError, match=phrase):
        call(attr, ExpertMask(2, 1))


def test_attribution_refuses_a_label_the_corpus_lacks(setup):
    model, tok = setup
    with pytest.raises(UsageError, match="no documents"):
        attribution(model, tok, Corpus(docs()), labels=["gamma"])


def test_corpus_spans_are_read_and_checked(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "abc def", "label": "x", "spans": [[4, 7]]}) + "\n" + json.dumps({"text": "ghi", "label": "y"}) + "\n")
    read = load_corpus(good).documents
    assert read[0].spans == ((4, 7),) and read[1].spans is None
    for spans in ([[5, 9]], [[3, 3]], [4, 7], [["a", 2]], "x", [[True, 2]]):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": "abc def", "label": "x", "spans": spans}) + "\n")
        with pytest.raises(CorpusError, match="spans"):
            load_corpus(bad)
