"""Attribution: how much removing each expert would raise a label's loss, to first order.

Scale expert (i, j) of a routing group by s[i, j] (1 = kept, 0 = removed). A layer's output is
sum_ij s[i,j] w[n,i,j] E_ij(x_n) with w[n,i,j] = sum_h g1[n,h,i] g2[n,h,j], so

    d loss / d s[i,j] = sum_n w[n,i,j] <delta_n, E_ij(x_n)>      (delta_n: loss gradient at the output)

summed over the group's layers. Removing the expert changes the loss by about minus that (from
s = 1), and restoring a removed one by about plus it (from s = 0): the same formula holds at any
mask, so attribution taken on an edited model says which of the remaining experts still carry
the label, and which removed ones other labels miss. <delta, E_ij> splits into a term of i alone,
a term of j alone and two products of activations, so each sum over tokens is one [E, rows] x
[rows, E] product: the E x E expansion per token is never formed.

The loss is the label's mean next-token loss over its documents' focus tokens: the characters a
document's `spans` mark (e.g. the answer of a question, the value of a fact), or every token after
the first when a document has none. Gradients flow through the masked layers of an edited model
(the pure-torch masked path, which autograd differentiates).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from ..model.mask import ExpertMask
from .corpus import Corpus, Document, load_corpus


def focus_positions(doc: Document, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """(token ids, positions whose token the loss counts) of one document, cut to max_length tokens.

    With `doc.spans`, a position counts when its token overlaps a span; without, every position
    after the first. Needs a fast tokenizer (offsets) only when the document has spans."""
    if not doc.spans:
        ids = tokenizer(doc.text)["input_ids"][:max_length]
        return ids, list(range(1, len(ids)))
    enc = tokenizer(doc.text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    keep = [k for k, (a, b) in enumerate(offsets) if k > 0 and b > a and any(a < e and b > s for s, e in doc.spans)]
    return ids, keep


def padded(sequences: Sequence[list[int]], device) -> torch.Tensor:
    """Token id lists as one right-padded [B, T] batch: with causal attention a padding token only
    follows the real ones, so it changes none of their outputs (and gets no gradient)."""
    width = max(len(ids) for ids in sequences)
    return torch.tensor([ids + [0] * (width - len(ids)) for ids in sequences], device=device)


def _contribution_vd(mod, x: torch.Tensor, delta: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """sum_n w[n,i,j] <delta_n, E_ij(x_n)> for MonetMoVDE. x, delta [N, D]; g1, g2 [N, H, E] -> [E, E]."""
    n, e = x.shape[0], mod.experts
    a1, a2 = mod.activations(x)  # [N, E, k]
    half = delta.shape[-1] // 2
    dt, db = delta[:, :half], delta[:, half:]  # gradients at the top and bottom halves
    back = lambda lin, d: (d @ lin.weight).view(n, e, -1)  # noqa: E731  V_i^T d per half: [N, E, k]
    alpha = (back(mod.v11, dt) * a1).sum(-1) + dt @ mod.b1.T  # <dt, V11_i a1_i + b1_i>: [N, E]
    beta = (back(mod.v22, db) * a2).sum(-1) + db @ mod.b2.T  # <db, V22_j a2_j + b2_j>
    u, v = back(mod.v12, dt), back(mod.v21, db)  # <dt, V12_i a2_j> = u_i . a2_j ; <db, V21_j a1_i> = a1_i . v_j
    left = [g1 * alpha[:, None], g1] + [g1 * u[:, None, :, k] for k in range(u.shape[-1])] + [g1 * a1[:, None, :, k] for k in range(a1.shape[-1])]
    right = [g2, g2 * beta[:, None]] + [g2 * a2[:, None, :, k] for k in range(a2.shape[-1])] + [g2 * v[:, None, :, k] for k in range(v.shape[-1])]
    return _outer_sum(left, right)


def _contribution_hd(mod, x: torch.Tensor, delta: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The same for MonetMoHDE, E_ij = V_j a_i + b_j: <delta, E_ij> = a_i . (V_j^T delta) + delta . b_j."""
    n, e = x.shape[0], mod.experts
    a = mod.activations(x)  # [N, E, m]
    u = (delta @ mod.v.weight).view(n, e, -1)  # [N, E, m]
    left = [g1] + [g1 * a[:, None, :, k] for k in range(a.shape[-1])]
    right = [g2 * (delta @ mod.b.T)[:, None]] + [g2 * u[:, None, :, k] for k in range(u.shape[-1])]
    return _outer_sum(left, right)


def _outer_sum(left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
    """sum over terms t, tokens n, heads h of left[t][n,h,i] right[t][n,h,j]: [E, E] float64."""
    lhs = torch.cat([t.flatten(0, 1) for t in left])  # [terms*N*H, E]
    rhs = torch.cat([t.flatten(0, 1) for t in right])
    return (lhs.T @ rhs).double()


@contextmanager
def _recording(model):
    """Capture each expert layer's inputs and output gradient: yields a list of records per layer."""
    records: list[list] = [[] for _ in model.model.layers]
    handles = []
    for index, layer in enumerate(model.model.layers):

        def hook(module, args, output, index=index):
            x, g1, g2 = args
            entry = [x.detach(), g1.detach(), g2.detach(), None]
            records[index].append(entry)
            if not output.requires_grad:  # a wholly removed group outputs constant zeros: still take their gradient
                output = output.detach().requires_grad_(True)
            output.register_hook(lambda grad, entry=entry: entry.__setitem__(3, grad.detach()))
            return output

        handles.append(layer.moe.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen(model):
    """The model in eval mode with every parameter frozen, its masked layers on the pure-torch path
    (the accelerated kernels have no backward); its mask, mode and parameters' requires_grad
    restored on the way out."""
    previous, was_training, kernel = model.expert_mask_state(), model.training, model.mask_kernel()
    params = list(model.parameters())
    grads = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    model.set_mask_kernel("torch")
    try:
        yield model
    finally:
        model.set_mask_kernel(kernel)
        for p, g in zip(params, grads):
            p.requires_grad_(g)
        model.set_expert_mask(previous)
        model.train(was_training)


@dataclass
class Attribution:
    """Per label, [G, E*E] float64: the estimated rise of the label's loss per focus token when each
    expert is removed, on average over the label (`mean`) and in its most affected document (`worst`)."""

    mean: dict[str, torch.Tensor]
    worst: dict[str, torch.Tensor]


def label_attribution(
    model, tokenizer, docs: Sequence[Document], *, max_length: int = 512, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """d loss / d s over docs' focus tokens: (sum [G, E*E] float64, the smallest per-token value of
    one document [G, E*E], number of focus tokens).

    Documents go in right-padded batches (`padded`)."""
    config = model.config
    total = torch.zeros(config.num_routing_groups, config.experts_per_group, dtype=torch.float64)
    lowest = torch.full_like(total, math.inf)
    pieces = [p for p in (focus_positions(d, tokenizer, max_length) for d in docs) if p[1]]
    device = next(model.parameters()).device
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        ids = padded([ids for ids, _ in batch], device)  # [B, T]
        rows = torch.tensor([b for b, (_, keep) in enumerate(batch) for _ in keep], device=device)
        cols = torch.tensor([k for _, keep in batch for k in keep], device=device)
        with _recording(model) as records:
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # the graph's only leaf
            logp = model(inputs_embeds=embeds, use_cache=False).logits.float().log_softmax(-1)  # [B, T, V]
            (-logp[rows, cols - 1, ids[rows, cols]].sum()).backward()
        per_doc = torch.zeros(len(batch), *total.shape, dtype=torch.float64)
        for index, layer in enumerate(model.model.layers):
            part = _contribution_vd if hasattr(layer.moe, "v11") else _contribution_hd
            for x, g1, g2, delta in records[index]:
                if delta is None:
                    continue
                with torch.no_grad():
                    for b, (doc_ids, _) in enumerate(batch):  # a document's own tokens: [T_b, ...]
                        n = len(doc_ids)
                        got = part(layer.moe, x[b, :n].float(), delta[b, :n].float(), g1[b, :n].float(), g2[b, :n].float())
                        per_doc[b, index // config.moe_groups] += got.flatten().cpu()
        total += per_doc.sum(0)
        counts = torch.tensor([len(keep) for _, keep in batch], dtype=torch.float64)[:, None, None]
        lowest = torch.minimum(lowest, (per_doc / counts).amin(0))
    return total, lowest, sum(len(keep) for _, keep in pieces)


def attribution(
    model, tokenizer, corpus: Corpus | str | os.PathLike, *, mask: ExpertMask | None = None, labels: Sequence[str] | None = None,
    max_length: int = 512,
) -> Attribution:
    """Attribution of every label of the corpus (or `labels`), taken with `mask` removed."""
    corpus = load_corpus(corpus)
    wanted = list(labels) if labels is not None else corpus.labels
    missing = [lab for lab in wanted if lab not in corpus.labels]
    if missing:
        raise UsageError(f"Labels {', '.join(missing)} have no documents in the corpus. Available: {', '.join(corpus.labels)}.")
    mean, worst = {}, {}
    with frozen(model):  # gradients reach the layers' outputs through the activations alone
        model.set_expert_mask(mask)
        for label in wanted:
            docs = [d for d in corpus.documents if d.label == label]
            total, lowest, counted = label_attribution(model, tokenizer, docs, max_length=max_length)
            if not counted:
                raise UsageError(f"Label '{label}' has no tokens to attribute (its spans cover no token).")
            mean[label], worst[label] = -total / counted, -lowest
    return Attribution(mean, worst)


def refine(mask: ExpertMask, attr: Attribution, target: str, *, add: int) -> ExpertMask:
    """`mask` plus, in each of its routing groups, up to `add` more experts: those whose removal is
    estimated to raise the target's loss most beyond what it would cost the most affected document
    of any other label (score = mean[target] - max over other labels of worst[label], taken only
    when positive). Ties go to the lower flat id."""
    if target not in attr.mean:
        raise UsageError(f"No attribution for '{target}'. Available: {', '.join(attr.mean)}.")
    if add < 0:
        raise UsageError(f"--refine must be a number of experts per group, 0 or more, found {add}.")
    others = [lab for lab in attr.mean if lab != target]
    if not others:
        raise UsageError(f"Refining needs labels other than '{target}' to protect: profile other labels too.")
    harm = torch.stack([attr.worst[lab] for lab in others]).amax(0)  # [G, E*E]
    score = attr.mean[target] - harm
    dense = {g: mask.dense(g) for g in range(score.shape[0])}
    for g in mask.meta.get("groups") or range(score.shape[0]):  # only where the rule selected
        chosen = dense[g].flatten().clone()
        ids = torch.nonzero(~chosen & (score[g] > 0)).flatten()
        best = ids[torch.sort(score[g][ids], descending=True, stable=True).indices][:add]
        chosen[best] = True
        dense[g] = chosen.view(dense[g].shape)
    meta = dict(mask.meta) | {"refine": {"add": add, "score": "mean[target] - max worst[other]"}}
    return ExpertMask.from_dense(dense, num_groups=score.shape[0], meta=meta)
