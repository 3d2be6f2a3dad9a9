"""Mask tuning: adjust a rule's selection by gradient descent on each expert's removed fraction.

Every expert of a routing group gets a removed fraction f in [0, 1], the rule's selection
starting at 1 and every other expert at 0. The masked layer weighs expert (i, j) by
w[i,j] (1 - f[i,j]) (a floating-point mask: the same sparse corrections, differentiable in f).
After the last step the experts with f > 1/2 are the mask.

The objective reads the focus tokens of the profiling corpus (its `spans`: a fact's value, a
question's answer; every token when a document marks none), with the rest of the model frozen:

- the target label's tokens: mean of relu(log p(token) - max log p(any other token) + margin),
  zero once the right token trails the model's first other choice by `margin` nats;
- every other label's tokens: `weight` x mean of relu(log p_before(token) - log p(token)), zero
  while none of their tokens is less likely than in the unedited model.

Each step reads every target document and `others` documents of the other labels (drawn with a
generator seeded by `seed`, so a run is reproducible), then takes one Adam step on f (`lr`) and
clamps it to [0, 1]. Only the routing groups the rule selected in are tuned.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import UsageError
from ..model.mask import ExpertMask
from .attribute import focus_positions, frozen, padded
from .corpus import Corpus, load_corpus

Piece = tuple[str, list[int], list[int]]  # label, token ids, focus positions


def _pieces(corpus: Corpus, tokenizer: Any, max_length: int) -> list[Piece]:
    out = []
    for doc in corpus.documents:
        ids, keep = focus_positions(doc, tokenizer, max_length)
        if keep:
            out.append((doc.label, ids, keep))
    return out


def _focus_logp(model, batch: Sequence[Piece], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per document: (log p of each focus token, the largest log p of any other token there)."""
    logp = model(padded([ids for _, ids, _ in batch], device), use_cache=False).logits.float().log_softmax(-1)
    out = []
    for b, (_, doc_ids, keep) in enumerate(batch):
        pos = torch.tensor(keep, device=device)
        rows = logp[b, pos - 1]  # [K, V]: the prediction of each focus token
        right = torch.tensor([doc_ids[k] for k in keep], device=device)
        chosen = rows.gather(1, right[:, None])[:, 0]
        other = rows.scatter(1, right[:, None], float("-inf")).amax(1)
        out.append((chosen, other))
    return out


def tune(
    model,
    tokenizer,
    corpus: Corpus | str | os.PathLike,
    mask: ExpertMask,
    target: str,
    *,
    steps: int,
    lr: float = 0.05,
    margin: float = 2.0,
    weight: float = 30.0,
    others: int = 75,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int = 512,
    progress: Callable[[int, dict], None] | None = None,
) -> ExpertMask:
    """`mask` tuned for `steps` steps (see the module docstring); steps = 0 returns it unchanged."""
    if steps < 0:
        raise UsageError(f"--tune is a number of steps and must be 0 or more, got {steps}.")
    if not steps:
        return mask
    corpus = load_corpus(corpus)
    if target not in corpus.labels:
        raise UsageError(f"Label '{target}' has no documents in the corpus. Available: {', '.join(corpus.labels)}.")
    pieces = _pieces(corpus, tokenizer, max_length)
    mine = [p for p in pieces if p[0] == target]
    rest = [p for p in pieces if p[0] != target]
    if not mine:
        raise UsageError(f"Label '{target}' has no tokens to tune on (its spans cover no token).")
    if not rest:
        raise UsageError(f"Tuning needs labels other than '{target}' to protect: profile other labels too.")
    num_groups = model.config.num_routing_groups
    tuned = sorted(mask.meta.get("groups") or range(num_groups))  # only where the rule selected
    device = next(model.parameters()).device
    with frozen(model):
        model.set_expert_mask(None)
        before: list[torch.Tensor] = []  # log p of each other document's focus tokens, unedited
        with torch.no_grad():
            for start in range(0, len(rest), batch_size):
                before += [chosen for chosen, _ in _focus_logp(model, rest[start : start + batch_size], device)]
        frac = torch.stack([mask.dense(g).float() for g in range(num_groups)]).to(device).requires_grad_(True)
        movable = torch.zeros(num_groups, 1, 1, device=device)
        movable[tuned] = 1
        counts = mask.counts()
        layered = [g for g in range(num_groups) if g in tuned or counts[g]]  # groups that run masked
        n_mine = sum(len(p[2]) for p in mine)
        optimiser = torch.optim.Adam([frac], lr=lr)
        draw = random.Random(seed)
        for step in range(steps):
            drawn = sorted(draw.sample(range(len(rest)), min(others, len(rest))))
            sample = [(p, None) for p in mine] + [(rest[i], before[i]) for i in drawn]
            n_rest = sum(len(rest[i][2]) for i in drawn)
            optimiser.zero_grad()
            totals = {"target": 0.0, "others": 0.0}
            for start in range(0, len(sample), batch_size):
                batch = sample[start : start + batch_size]
                model.set_group_masks({g: frac[g] for g in layered})
                loss = frac.new_zeros(())
                for (_, was), (chosen, other) in zip(batch, _focus_logp(model, [p for p, _ in batch], device)):
                    if was is None:  # the target's
                        part = torch.relu(chosen - other + margin).sum() / n_mine
                        totals["target"] += float(part.detach())
                    else:
                        part = weight * torch.relu(was - chosen).sum() / max(n_rest, 1)
                        totals["others"] += float(part.detach())
                    loss = loss + part
                loss.backward()
            frac.grad.mul_(movable)
            optimiser.step()
            with torch.no_grad():
                frac.clamp_(0, 1)
            if progress:
                progress(step, totals | {"removed": int((frac > 0.5).sum())})
    final = frac.detach().cpu() > 0.5
    meta = dict(mask.meta) | {"tune": {"steps": steps, "lr": lr, "margin": margin, "weight": weight, "others": others, "seed": seed}}
    return ExpertMask.from_dense({g: final[g] for g in range(num_groups)}, num_groups=num_groups, meta=meta)
