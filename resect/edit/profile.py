"""Streaming profiler: labelled text through the model, routing sums per group and label.

How text becomes counted tokens (deterministic for a given corpus, tokenizer and seed):
1. Documents of each label are shuffled with a generator seeded by (seed, label), tokenized with
   the tokenizer's special tokens (BOS is fed to the model but never counted), and cut into
   sequences of at most `max_length` tokens (later pieces lose the context of earlier ones).
2. With `max_tokens_per_label`, sequences are taken in that order until the label has exactly
   that many counted tokens (the last one cut short).
3. Sequences are batched within a label, right-padded (so a real token's position and context
   are those of the unpadded text); padding and special tokens never count.

Toxicity scores per token: a document's own `score` (one number for the text, or one per counted
token) when given; otherwise, with a scorer, the score of the text window made of the last
`score_window` tokens ending at this token (its "recent text"), so a token is scored by what it
completes. All windows of a batch go to the scorer in one call.

Several processes (torchrun): batch k goes to rank k % world_size; sums are all-reduced at the
end and only rank 0 writes files. Partial state is checkpointed atomically every
`checkpoint_every` batches and a run resumes from it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache import digest
from ..errors import CorpusError, StatsError
from .corpus import Corpus, Document, load_corpus
from .stats import RoutingStats, empty_stats

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tokens done, tokens planned)


@dataclass
class Piece:
    """One model input: token ids, which positions count, and per-position scores or text spans."""

    label: int
    ids: list[int]
    counted: list[bool]
    scores: list[float | None] | None = None
    text: str | None = None
    spans: list[tuple[int, int] | None] | None = None  # character span of each position's score window

    @property
    def num_counted(self) -> int:
        return sum(self.counted)

    def cut(self, keep_counted: int) -> Piece:
        """The prefix holding exactly `keep_counted` counted tokens (causal: earlier tokens unchanged)."""
        seen, end = 0, 0
        for end, flag in enumerate(self.counted, 1):  # noqa: B007 (end is read after the loop)
            seen += flag
            if seen == keep_counted:
                break
        clip = (lambda v: None if v is None else v[:end])  # noqa: E731
        return Piece(self.label, self.ids[:end], self.counted[:end], clip(self.scores), self.text, clip(self.spans))


@dataclass
class Settings:
    max_tokens_per_label: int | None = None
    seed: int = 0
    batch_size: int = 8
    max_length: int = 512
    scorer: str | None = None
    score_window: int = 32


# ---- planning -------------------------------------------------------------------------------
CHUNK_CHARS = 200_000  # a longer document is tokenized a piece at a time, and only as far as the label's budget reaches


def _doc_sequences(doc: Document, label: int, tokenizer: Any, s: Settings, special: set[int]) -> Iterator[Piece]:
    """The model inputs of one document, lazily: a document of many megabytes costs only the
    pieces a token budget takes (per-token scores tie a document to one tokenization: not cut)."""
    if len(doc.text) <= CHUNK_CHARS or isinstance(doc.score, list):
        yield from _text_sequences(doc, label, tokenizer, s, special)
        return
    start = 0
    while start < len(doc.text):
        end = min(len(doc.text), start + CHUNK_CHARS)
        if end < len(doc.text):  # end the piece at a space, so no word is split
            space = doc.text.rfind(" ", start + CHUNK_CHARS // 2, end)
            end = space + 1 if space > 0 else end
        yield from _text_sequences(Document(doc.text[start:end], doc.label, doc.score), label, tokenizer, s, special)
        start = end


def _text_sequences(doc: Document, label: int, tokenizer: Any, s: Settings, special: set[int]) -> list[Piece]:
    enc = tokenizer(doc.text, add_special_tokens=True, return_special_tokens_mask=True, return_offsets_mapping=s.scorer is not None)
    ids = list(enc["input_ids"])
    counted = [not m and t not in special for m, t in zip(enc["special_tokens_mask"], ids)]  # also "</s>" typed in the text
    scores = _given_scores(doc, counted)
    spans = None
    if scores is None and s.scorer is not None:
        offsets = enc["offset_mapping"]
        positions = [k for k, c in enumerate(counted) if c]
        spans = [None] * len(ids)
        for n, k in enumerate(positions):
            spans[k] = (offsets[positions[max(0, n - s.score_window + 1)]][0], offsets[k][1])
    pieces = []
    for start in range(0, len(ids), s.max_length):
        part = slice(start, start + s.max_length)
        piece = Piece(label, ids[part], counted[part], scores and scores[part], doc.text if spans else None, spans and spans[part])
        if piece.num_counted:
            pieces.append(piece)
    return pieces


def _given_scores(doc: Document, counted: list[bool]) -> list[float | None] | None:
    if doc.score is None:
        return None
    n = sum(counted)
    values = doc.score if isinstance(doc.score, list) else [doc.score] * n
    if len(values) != n:
        raise CorpusError(
            f"A '{doc.label}' document has {len(values)} per-token scores but {n} tokens with this tokenizer. "
            "Give one score per (non-special) token, or one number for the whole text."
        )
    it = iter(values)
    return [next(it) if c else None for c in counted]


def plan_sequences(corpus: Corpus, tokenizer: Any, settings: Settings) -> list[Piece]:
    """Every model input in processing order: label by label (sorted), shuffled, capped."""
    out = []
    special = set(tokenizer.all_special_ids)
    for index, label in enumerate(corpus.labels):
        docs = [d for d in corpus.documents if d.label == label]
        random.Random(f"{settings.seed}:{label}").shuffle(docs)
        budget = settings.max_tokens_per_label
        taken = 0
        for doc in docs:
            for seq in _doc_sequences(doc, index, tokenizer, settings, special):
                if budget is not None and taken + seq.num_counted > budget:
                    seq = seq.cut(budget - taken)
                out.append(seq)
                taken += seq.num_counted
                if budget is not None and taken >= budget:
                    break
            if budget is not None and taken >= budget:
                break
        if taken == 0:
            raise CorpusError(f"Label '{label}' has no tokens (only empty texts). Add text for it or remove the label.")
    return out


def plan_batches(sequences: list[Piece], batch_size: int) -> list[list[Piece]]:
    """Consecutive sequences of one label, `batch_size` at a time."""
    batches: list[list[Piece]] = []
    for seq in sequences:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].label == seq.label:
            batches[-1].append(seq)
        else:
            batches.append([seq])
    return batches


# ---- one batch ------------------------------------------------------------------------------
def _collate(batch: Sequence[Piece], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and counted mask: [B, T] each."""
    width = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(batch), width, dtype=torch.long)
    counted = torch.zeros(len(batch), width, dtype=torch.bool)
    for b, s in enumerate(batch):
        ids[b, : len(s.ids)] = torch.tensor(s.ids)
        attn[b, : len(s.ids)] = 1
        counted[b, : len(s.ids)] = torch.tensor(s.counted)
    return ids.to(device), attn.to(device), counted.to(device)


def _batch_scores(batch: Sequence[Piece], counted: torch.Tensor, scorer: Callable | None) -> torch.Tensor | None:
    """Per-token scores [N] in the order of the counted tokens (NaN = unscored); None when none is scored."""
    values: list[float] = []
    pending: list[tuple[int, str]] = []  # (position in values, window text) for the scorer
    for piece in batch:
        for k in (k for k, c in enumerate(piece.counted) if c):
            if piece.scores is not None:
                values.append(piece.scores[k])
                continue
            if piece.spans is not None and scorer is not None:
                start, end = piece.spans[k]
                pending.append((len(values), piece.text[start:end]))
            values.append(float("nan"))
    for (at, _), value in zip(pending, scorer([text for _, text in pending]) if pending else []):
        values[at] = value
    y = torch.tensor(values, dtype=torch.float32, device=counted.device)
    return None if bool(torch.isnan(y).all()) else y


def accumulate(stats: RoutingStats, router_probs: tuple, counted: torch.Tensor, label: int, y: torch.Tensor | None, layers_per_group: int) -> None:
    """Add one batch's routing sums. counted: [B, T] bool; y: [N] scores of the counted tokens (NaN = none)."""
    from ..kernels.stats import routing_square_sum, routing_sum

    for layer, probs in enumerate(router_probs):
        if probs is None:
            continue
        group = layer // layers_per_group
        g1, g2 = probs[0][counted], probs[1][counted]  # [N, H, E]
        stats.sums[group, label] += routing_sum(g1, g2).to(stats.sums.dtype)
        if y is None or stats.corr is None:
            continue
        keep = ~torch.isnan(y)
        g1s, g2s, ys = g1[keep], g2[keep], y[keep]
        stats.corr["w"][group] += routing_sum(g1s, g2s).double()
        stats.corr["wy"][group] += routing_sum(g1s, g2s, ys).double()
        stats.corr["w2"][group] += routing_square_sum(g1s, g2s).double()
        if group == 0:
            yd = ys.double()
            stats.corr["moments"] += torch.stack([yd.new_tensor(float(ys.numel())), yd.sum(), (yd * yd).sum()])


# ---- distributed, checkpoints ---------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(stats: RoutingStats, counts: torch.Tensor) -> None:
    import torch.distributed as dist

    for tensor in [stats.sums, counts, *(stats.corr or {}).values()]:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _load_partial(path: Path, plan: str, stats: RoutingStats) -> int:
    """Batches already done according to a partial state (0 when there is none)."""
    if not path.is_file():
        log.warning("No partial state at '%s': starting from the beginning", path)
        return 0
    partial = RoutingStats.load(path)
    if partial.meta.get("plan") != plan:
        raise StatsError(
            f"Partial state '{path}' was made with another model, corpus or settings. "
            "Rerun without --resume (or with the original options)."
        )
    stats.sums.copy_(partial.sums)
    stats.token_counts.update(partial.token_counts)
    for key, value in (partial.corr or {}).items():
        stats.corr[key].copy_(value)
    return int(partial.meta["done"])


def _save_partial(path: Path, stats: RoutingStats, plan: str, done: int) -> None:
    snapshot = RoutingStats(
        stats.labels, dict(stats.token_counts), stats.sums.cpu(), stats.model_fingerprint, stats.corpus_fingerprint,
        {k: v.cpu() for k, v in stats.corr.items()} if stats.corr else None, {"plan": plan, "done": done},
    )
    from ..outputs import write_owned

    write_owned(Path(path), snapshot.to_bytes(), "partial")


def partial_path(checkpoint: str | os.PathLike, rank: int, world: int) -> Path:
    """Each rank keeps its own partial state."""
    path = Path(checkpoint)
    return path if world == 1 else path.with_name(f"{path.name}.rank{rank}")


# ---- the run --------------------------------------------------------------------------------
def profile_corpus(
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: Corpus | str | os.PathLike,
    *,
    max_tokens_per_label: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | Progress = False,
    resume: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    max_length: int = 512,
    scorer: str | None = None,
    score_window: int = 32,
) -> RoutingStats:
    """Routing statistics of a model over a labelled corpus.

    `checkpoint`: where to write partial state every `checkpoint_every` batches; `resume`: a
    partial state to continue from (also the checkpoint path unless one is given). `progress`:
    a callable (tokens done, tokens planned), or True to log progress. `scorer`: a
    resect.edit.scoring name to score every token (see the module docstring); documents' own scores
    are used without one.
    """
    from .scoring import get_scorer

    settings = _settings(model, max_tokens_per_label, seed, batch_size, max_length, scorer, score_window, checkpoint_every)
    corpus = load_corpus(corpus)
    rank, world = dist_info()
    mine = plan_batches(plan_sequences(corpus, tokenizer, settings), batch_size)[rank::world]
    stats = _new_stats(model, corpus, scored=scorer is not None or corpus.has_scores)
    plan = digest([stats.model_fingerprint, stats.corpus_fingerprint, settings.__dict__, rank, world])
    checkpoint = checkpoint or resume
    done = _load_partial(partial_path(resume, rank, world), plan, stats) if resume else 0
    device = next(model.parameters()).device
    stats.sums, stats.corr = stats.sums.to(device), {k: v.to(device) for k, v in stats.corr.items()} if stats.corr else None
    score_fn = get_scorer(scorer) if scorer else None
    report = _reporter(progress, sum(s.num_counted for b in mine for s in b), sum(s.num_counted for b in mine[:done] for s in b))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()  # never train mode: BatchNorm would update the router's running statistics
    try:
        for k in range(done, len(mine)):
            _run_batch(model, mine[k], stats, score_fn, pad_id, device, model.config.moe_groups)
            if checkpoint and (k + 1) % checkpoint_every == 0 and k + 1 < len(mine):
                _save_partial(partial_path(checkpoint, rank, world), stats, plan, k + 1)
            report(sum(s.num_counted for s in mine[k]))
    finally:
        model.train(was_training)
    return _finish(stats, corpus, settings, world, device)


def _new_stats(model: torch.nn.Module, corpus: Corpus, *, scored: bool) -> RoutingStats:
    """Zero statistics with the model's geometry, stamped with the model and corpus fingerprints."""
    from ..model.fingerprint import model_fingerprint

    config = model.config
    groups = config.num_routing_groups
    stats = empty_stats(corpus.labels, num_groups=groups, experts=config.moe_experts, scored=scored)
    stats.model_fingerprint, stats.corpus_fingerprint = model_fingerprint(model), corpus.fingerprint()
    return stats


def check_options(*, max_tokens_per_label=None, seed=0, batch_size=8, max_length=512, score_window=32, checkpoint_every=1) -> None:
    """Profiling options in their ranges (resect.checks), before any model loads."""
    from ..checks import check_numbers

    check_numbers({"max_tokens_per_label": max_tokens_per_label, "seed": seed, "batch_size": batch_size, "max_length": max_length,
                   "score_window": score_window, "checkpoint_every": checkpoint_every})  # fmt: skip


def _settings(model, max_tokens_per_label, seed, batch_size, max_length, scorer, score_window, checkpoint_every=1) -> Settings:
    check_options(max_tokens_per_label=max_tokens_per_label, seed=seed, batch_size=batch_size, max_length=max_length,
                  score_window=score_window, checkpoint_every=checkpoint_every)  # fmt: skip
    limit = getattr(model.config, "max_position_embeddings", max_length) or max_length
    return Settings(max_tokens_per_label, seed, batch_size, min(max_length, limit), scorer, score_window)


def _run_batch(model, batch, stats: RoutingStats, score_fn, pad_id: int, device, layers_per_group: int) -> None:
    ids, attn, counted = _collate(batch, pad_id, device)
    y = _batch_scores(batch, counted, score_fn) if stats.corr is not None else None
    with torch.inference_mode():
        mask = None if bool(attn.all()) else attn  # no padding: let attention take its causal fast path
        out = model(input_ids=ids, attention_mask=mask, output_router_probs=True, use_cache=False, logits_to_keep=1)
        accumulate(stats, out.router_probs, counted, batch[0].label, y, layers_per_group)
    label = stats.labels[batch[0].label]
    stats.token_counts[label] += int(counted.sum())


def _finish(stats: RoutingStats, corpus: Corpus, settings: Settings, world: int, device) -> RoutingStats:
    counts = torch.tensor([stats.token_counts[lab] for lab in stats.labels], dtype=torch.long, device=device)
    if world > 1:
        _all_reduce(stats, counts)
    stats.token_counts = {lab: int(n) for lab, n in zip(stats.labels, counts.tolist())}
    stats.sums = stats.sums.cpu()
    stats.corr = {k: v.cpu() for k, v in stats.corr.items()} if stats.corr else None
    stats.meta = {
        "corpus": corpus.source,
        "settings": settings.__dict__,
        "token_score": f"window:{settings.score_window}" if settings.scorer else "given",
        "world_size": world,
    }
    log.info("Profiled %d tokens over %d labels", sum(stats.token_counts.values()), len(stats.labels))
    return stats


def expert_examples(
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: Corpus | str | os.PathLike,
    *,
    group: int,
    expert: int,
    top: int = 20,
    context: int = 8,
    max_tokens_per_label: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int = 512,
) -> list[dict]:
    """The counted tokens whose routing weight w[i, j] on one expert is highest (ties: first seen).

    Returns rows with weight, label, the token and up to `context` tokens before it.
    """
    import heapq

    config = model.config
    settings = _settings(model, max_tokens_per_label, seed, batch_size, max_length, None, 1)
    corpus = load_corpus(corpus)
    i, j = divmod(expert, config.moe_experts)
    layer = group * config.moe_groups
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    best: list[tuple[float, int, Piece, int]] = []  # min-heap of (weight, -order, piece, position)
    order = 0
    for batch in plan_batches(plan_sequences(corpus, tokenizer, settings), batch_size):
        ids, attn, counted = _collate(batch, pad_id, device)
        with torch.inference_mode():
            g1, g2 = model(input_ids=ids, attention_mask=attn, output_router_probs=True, use_cache=False, logits_to_keep=1).router_probs[layer]
        w = (g1[..., i] * g2[..., j]).sum(-1).masked_fill(~counted, -1.0).cpu()  # [B, T]
        for b, piece in enumerate(batch):
            for k in range(len(piece.ids)):
                if piece.counted[k]:
                    heapq.heappush(best, (float(w[b, k]), -order, piece, k))
                    order += 1
                    if len(best) > top:
                        heapq.heappop(best)
    rows = sorted(best, key=lambda r: (-r[0], -r[1]))
    return [_example(tokenizer, corpus.labels[p.label], p, k, wt, context) for wt, _, p, k in rows]


def _example(tokenizer: Any, label: str, piece: Piece, k: int, weight: float, context: int) -> dict:
    before = [t for t, c in zip(piece.ids[max(0, k - context) : k], piece.counted[max(0, k - context) : k]) if c]
    return {"weight": weight, "label": label, "token": tokenizer.decode([piece.ids[k]]), "context": tokenizer.decode(before)}


def _reporter(progress: bool | Progress, total: int, start: int) -> Callable[[int], None]:
    state = {"done": start, "last": 0.0}

    def report(tokens: int) -> None:
        state["done"] += tokens
        if callable(progress):
            progress(state["done"], total)
        elif progress and time.monotonic() - state["last"] > 5:
            state["last"] = time.monotonic()
            log.info("profile: %d / %d tokens", state["done"], total)

    return report


__all__ = ["profile_corpus", "expert_examples", "plan_sequences", "plan_batches", "accumulate", "Settings", "dist_info", "partial_path"]
