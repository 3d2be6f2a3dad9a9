"""Paired evidence: both models scored on the same questions, and how sure a drop is.

Per question (lm-eval's logged samples, `doc_scores`): accuracy, and for multiple-choice tasks
the probability the model gives the right answer, normalised over the question's choices
(`p_correct`, continuous: it moves when the model grows less sure long before an answer flips);
per document of a perplexity task its log-likelihood and its words and bytes. Questions about one
fact are not independent evidence: each question carries its cluster (the world's quizzes name
their fact; elsewhere a question is its own cluster).

A drop is measured on the paired differences, and its uncertainty by a seeded cluster
bootstrap (clusters drawn with replacement, `ITERS` times): `low` and `high` are one-sided
bounds at the given confidence (each holds with that probability). `resolution` is the smallest
drop the task can tell from none at that confidence: for 0/1 scores (accuracy, a prompt counted
toxic) the fall of the fewest clusters a bootstrap cannot miss, ceil(ln(1 / (1 - c))) of N
(3 of N at 95%), whatever this edit changed; for continuous scores the bound's distance from the
estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95  # what a report states when the gate takes point estimates
ITERS = 2000
DRAW_CELLS = 4_000_000  # cluster indices drawn per batch of resamples (32 MB): MMLU's 14,042 questions take 285 at a time
BINARY = ("acc", "acc_norm", "exact_match", "toxicity_probability")  # metrics whose per-question scores are 0 or 1
RATIO_WEIGHTS = {"word_perplexity": "words", "byte_perplexity": "bytes", "bits_per_byte": "bytes"}  # what each perplexity is per


def doc_scores(samples: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """{task: {"doc_id", "cluster", metric: [...]}} in document order, from lm-eval's logged samples.
    Tasks logged under more than one filter are left out."""
    out = {}
    for task, docs in samples.items():
        if not docs or len({d.get("filter") for d in docs}) != 1:
            continue
        docs = sorted(docs, key=lambda d: d["doc_id"])
        row: dict[str, list] = {"doc_id": [d["doc_id"] for d in docs], "cluster": [_cluster(d) for d in docs]}
        for metric in docs[0].get("metrics", []):
            values = [d.get(metric) for d in docs]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                row[metric] = [float(v) for v in values]
            elif metric in RATIO_WEIGHTS and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in values):
                row["loglik"] = [float(v[0]) for v in values]
                row[RATIO_WEIGHTS[metric]] = [float(v[1]) for v in values]
        probs = [_p_correct(d) for d in docs]
        if all(p is not None for p in probs):
            row["p_correct"] = probs
        out[task] = row
    return out


def _cluster(doc: dict) -> str:
    inner = doc.get("doc")
    fact = inner.get("fact") if isinstance(inner, dict) else None
    return str(fact) if isinstance(fact, str) and fact else f"doc:{doc['doc_id']}"


def _p_correct(doc: dict) -> float | None:
    """The softmax, over a multiple-choice question's choices, of their log-likelihoods, at the right one."""
    resps, target = doc.get("filtered_resps"), doc.get("target")
    if not isinstance(resps, list) or len(resps) < 2 or not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < len(resps):
        return None
    try:
        ll = np.array([float(r[0] if isinstance(r, (list, tuple)) else r) for r in resps])
    except (TypeError, ValueError):
        return None
    ll -= ll.max()
    p = np.exp(ll)
    return float(p[target] / p.sum())


@dataclass
class Evidence:
    """A paired drop with its bounds: positive = the edited model worse; points, or % for ratios."""

    drop: float
    low: float
    high: float
    resolution: float
    confidence: float
    n: int
    clusters: int


def paired(base: dict, edited: dict, metric: str, *, higher_better: bool, confidence: float = CONFIDENCE, seed: int = 0) -> Evidence | None:
    """The paired drop of `metric` between two runs' per-document scores (`doc_scores` of one task);
    None when they did not score the same documents, or not `metric`."""
    if base.get("doc_id") != edited.get("doc_id") or len(base.get("doc_id", ())) < 2:
        return None
    clusters, index = np.unique(np.array(base.get("cluster", base["doc_id"]), dtype=str), return_inverse=True)
    if metric in RATIO_WEIGHTS:
        weight = RATIO_WEIGHTS[metric]
        if not all(k in base and k in edited for k in ("loglik", weight)):
            return None
        sums = [np.bincount(index, np.asarray(v, float), len(clusters)) for v in (base["loglik"], edited["loglik"], base[weight])]
        stat = lambda pick: ratio_drop(metric, *(s[pick].sum(-1) for s in sums))  # noqa: E731
        granular = False
    else:
        if metric not in base or metric not in edited:
            return None
        sign = 100.0 if higher_better else -100.0
        d = sign * (np.asarray(base[metric], float) - np.asarray(edited[metric], float))
        sums, counts = np.bincount(index, d, len(clusters)), np.bincount(index, None, len(clusters))
        stat = lambda pick: sums[pick].sum(-1) / counts[pick].sum(-1)  # noqa: E731
        granular = metric in BINARY
    return _evidence(stat, len(clusters), len(base["doc_id"]), confidence, seed, granular)


def paired_values(base: list[float], edited: list[float], *, binary: bool, confidence: float = CONFIDENCE, seed: int = 0) -> Evidence | None:
    """The paired drop, in points, of per-item scores in [0, 1] (toxicity: per prompt, the same
    prompts and seeds in both runs); each item its own cluster."""
    if len(base) != len(edited) or len(base) < 2:
        return None
    d = 100.0 * (np.asarray(base, float) - np.asarray(edited, float))
    return _evidence(lambda pick: d[pick].mean(-1), len(d), len(d), confidence, seed, binary)


def relative(evidence: Evidence, baseline: float) -> Evidence:
    """A points drop of a rate (toxicity probability, in points) as a percent of its baseline value."""
    scale = 0.0 if baseline == 0 else 1.0 / baseline
    return Evidence(*(v * scale for v in (evidence.drop, evidence.low, evidence.high, evidence.resolution)), evidence.confidence,
                    evidence.n, evidence.clusters)  # fmt: skip


def ratio_drop(metric: str, ll_b, ll_e, w):
    """Relative rise, in %, of a perplexity-like metric from summed log-likelihoods and weights."""
    rate_b, rate_e = -ll_b / w, -ll_e / w  # nats per word or byte
    if metric == "bits_per_byte":
        return 100.0 * (rate_e / rate_b - 1.0)
    return 100.0 * np.expm1(rate_e - rate_b)


def _evidence(stat, clusters: int, n: int, confidence: float, seed: int, granular: bool) -> Evidence:
    rng = np.random.default_rng(seed)
    drop = float(stat(np.arange(clusters)))
    rows = max(1, min(ITERS, DRAW_CELLS // clusters))  # resamples per batch: the same stream as all at once, in bounded memory
    draws = np.concatenate([np.asarray(stat(rng.integers(0, clusters, (min(rows, ITERS - k), clusters))), float) for k in range(0, ITERS, rows)])
    low, high = float(np.quantile(draws, 1 - confidence)), float(np.quantile(draws, confidence))
    spread = max(drop - low, high - drop, 0.0)
    if granular:  # 0/1 scores: set by how many clusters there are, not by how many answers this edit changed
        resolution = 100.0 * math.ceil(math.log(1.0 / (1.0 - confidence))) / clusters
    else:
        resolution = spread
    return Evidence(drop, min(low, drop), max(high, drop), resolution, confidence, n, clusters)


__all__ = ["CONFIDENCE", "Evidence", "doc_scores", "paired", "paired_values", "relative"]
