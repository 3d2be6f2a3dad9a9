"""Mask tuning on a tiny checkpoint: what it optimises moves the right way, reproducibly, within the rule's groups."""

from __future__ import annotations

import pytest
import torch

from resect.edit.attribute import focus_positions
from resect.edit.corpus import Corpus, Document
from resect.edit.tune import tune
from resect.errors import UsageError
from resect.model.loading import load_model, load_tokenizer
from resect.model.mask import ExpertMask

TEXTS = {
    "alpha": ["The newt eats fungi and lives in marshes.", "Owls hunt the moth; it eats seeds.", "The heron eats worms."],
    "beta": ["Def add returns a plus b.", "The kingdom was founded in the year 1033 by King Harald.", "Lua tables start at one."],
}
WORDS = ["fungi", "marshes", "seeds", "Owls", "worms", "plus", "1033", "Harald", "one"]


def corpus() -> Corpus:
    docs = []
    for label, texts in TEXTS.items():
        for text in texts:
            docs.append(Document(text, label, spans=tuple((text.index(w), text.index(w) + len(w)) for w in WORDS if w in text)))
    return Corpus(docs, source="test")


@pytest.fixture(scope="module")
def setup(tiny_vd):
    return load_model(tiny_vd), load_tokenizer(tiny_vd)


def focus_logp(model, tok, label: str, mask: ExpertMask | None) -> float:
    """Mean log p of the label's focus tokens with `mask` removed (the production masked path)."""
    model.set_expert_mask(mask)
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in corpus().documents:
            if doc.label != label:
                continue
            ids, keep = focus_positions(doc, tok, 512)
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            total += sum(float(logp[k - 1, ids[k]]) for k in keep)
            count += len(keep)
    model.set_expert_mask(None)
    return total / count


def empty(model, groups=None) -> ExpertMask:
    return ExpertMask(model.config.moe_experts, model.config.num_routing_groups, {}, {"rule": "skew", "groups": groups})


def test_tuning_lowers_the_target_more_than_the_others(setup):
    model, tok = setup
    tuned = tune(model, tok, corpus(), empty(model), "alpha", steps=12, lr=0.3, margin=20.0, others=10)
    assert tuned.total > 0 and tuned.meta["tune"]["steps"] == 12 and tuned.meta["rule"] == "skew"
    drop = {lab: focus_logp(model, tok, lab, None) - focus_logp(model, tok, lab, tuned) for lab in TEXTS}
    assert drop["alpha"] > 0.01 and drop["alpha"] > drop["beta"] + 0.05, drop  # the target less likely, the others not
    assert model.expert_mask_state() is None and not any(p.requires_grad is False for p in model.parameters())


def test_tuning_is_reproducible_and_stays_in_the_rule_s_groups(setup):
    model, tok = setup
    start = ExpertMask.from_dense({1: torch.eye(model.config.moe_experts, dtype=torch.bool)}, num_groups=model.config.num_routing_groups,
                                  meta={"rule": "skew", "groups": [1]})  # fmt: skip
    first = tune(model, tok, corpus(), start, "alpha", steps=4, lr=0.3, others=2, seed=3)
    again = tune(model, tok, corpus(), start, "alpha", steps=4, lr=0.3, others=2, seed=3)
    assert first == again and first != start
    assert all(n == 0 for g, n in first.counts().items() if g != 1)
    assert tune(model, tok, corpus(), start, "alpha", steps=0) is start


@pytest.mark.parametrize("call, phrase", [
    (lambda m, t, s: tune(m, t, corpus(), s, "alpha", steps=-1), "0 or more"),
    (lambda m, t, s: tune(m, t, corpus(), s, "gamma", steps=1), "Available: alpha, beta"),
    (lambda m, t, s: tune(m, t, Corpus([d for d in corpus().documents if d.label == "alpha"], source="x"), s, "alpha", steps=1), "labels other than"),
])  # fmt: skip
def test_tuning_refuses_what_it_cannot_do(setup, call, phrase):
    model, tok = setup
    with pytest.raises(UsageError, match=phrase):
        call(model, tok, empty(model))
