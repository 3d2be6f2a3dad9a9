"""Selection rules: routing statistics in, an expert mask out (per routing group).

Rules (a registry; an unknown name gets "did you mean"):
- `skew` (target D, `ratio` > 1, default 2.0 as in the paper): expert (i, j) belongs to D when its
  mean routing score on D is positive and at least `ratio` times its score on the second-highest
  label, i.e. on the highest of the other labels.
- `skew-mean` (target D, `ratio` > 1, default 1.25): the same comparison against the mean of the
  other labels' scores instead of the highest, so an expert that D uses more than the others do
  on average is D's even when one other label uses it too. It selects experts of D that the paper's
  rule leaves because a single other label leans on them. The default domain rule on a generated
  world, where the paper's rule leaves most of the removed quiz standing.
- `correlation` (`threshold` in [-1, 1]): experts whose token-level Pearson r with the per-token
  score is at least `threshold` (lower thresholds remove more). Experts whose weight never
  varies have no r and are never selected.
- `topk` (`k` >= 1): the k highest-ranked experts of each group; `quantile` (`quantile` q in
  [0, 1)): the top ceil((1 - q) n) of the n ranked candidates of each group. With a target they
  rank by specificity, score on D over the second-highest label's score (infinite when only D
  routes to the expert; candidates have a positive score on D); without one, by correlation r.

Ties are broken deterministically: higher specificity, then higher score on D, then lower flat id.
Every label a rule reads needs at least `min_tokens` tokens (scored tokens for correlation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import StatsError, UsageError, unknown
from ..model.mask import ExpertMask
from .stats import RoutingStats

DEFAULT_MIN_TOKENS = 100


@dataclass(frozen=True)
class Ranking:
    """Per-group ranking inputs: key [E*E] (NaN = not a candidate) and tiebreak [E*E]."""

    key: torch.Tensor
    tiebreak: torch.Tensor


def specificity(stats: RoutingStats, group: int, target: str, *, against: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """(score on the target, highest, or with against="mean" mean, score on the other labels), both flat [E*E] float64."""
    means = stats.mean(group).flatten(1)  # [L, E*E]
    d = stats.label_index(target)
    others = torch.cat([means[:d], means[d + 1 :]])
    return means[d], others.amax(0) if against == "max" else others.mean(0)


def ranking(stats: RoutingStats, group: int, target: str | None) -> Ranking:
    """Specificity ranking with a target, correlation ranking without one."""
    if target is None:
        r = _correlation(stats, group).flatten()
        return Ranking(r, torch.zeros_like(r))
    score, second = specificity(stats, group, target)
    ratio = torch.where(score > 0, score / second, torch.full_like(score, float("nan")))  # x/0 = inf
    return Ranking(ratio, score)


def ordered(rank: Ranking) -> torch.Tensor:
    """Candidate flat ids, best first: key desc, tiebreak desc, flat id asc (stable sorts)."""
    ids = torch.nonzero(~torch.isnan(rank.key)).flatten()
    ids = ids[torch.sort(rank.tiebreak[ids], descending=True, stable=True).indices]
    return ids[torch.sort(rank.key[ids], descending=True, stable=True).indices]


def _correlation(stats: RoutingStats, group: int) -> torch.Tensor:
    r = stats.correlation(group)
    if r is None:
        raise StatsError("These statistics hold no per-token scores. Profile a scored corpus (e.g. --scorer profanity).")
    return r


# ---- rules: (stats, group, target, params) -> selected flat ids -----------------------------
def _skew(stats: RoutingStats, group: int, target: str | None, ratio: float = 2.0) -> torch.Tensor:
    score, second = specificity(stats, group, target)
    return torch.nonzero((score > 0) & (score >= ratio * second)).flatten()


def _skew_mean(stats: RoutingStats, group: int, target: str | None, ratio: float = 1.25) -> torch.Tensor:
    score, mean = specificity(stats, group, target, against="mean")
    return torch.nonzero((score > 0) & (score >= ratio * mean)).flatten()


def _corr(stats: RoutingStats, group: int, target: str | None, threshold: float = 0.1) -> torch.Tensor:
    r = _correlation(stats, group).flatten()
    return torch.nonzero(r >= threshold).flatten()  # NaN compares False


def _topk(stats: RoutingStats, group: int, target: str | None, k: int = 100) -> torch.Tensor:
    return ordered(ranking(stats, group, target))[:k]


def _quantile(stats: RoutingStats, group: int, target: str | None, quantile: float = 0.99) -> torch.Tensor:
    ids = ordered(ranking(stats, group, target))
    return ids[: math.ceil((1.0 - quantile) * ids.numel() - 1e-9)]


Rule = Callable[..., torch.Tensor]
RULES: dict[str, Rule] = {"skew": _skew, "skew-mean": _skew_mean, "correlation": _corr, "topk": _topk, "quantile": _quantile}
NEEDS_TARGET = {"skew", "skew-mean"}
PARAMS = {"skew": {"ratio"}, "skew-mean": {"ratio"}, "correlation": {"threshold"}, "topk": {"k"}, "quantile": {"quantile"}}


def _check_params(rule: str, target: str | None, params: dict) -> None:
    extra = set(params) - PARAMS[rule]
    if extra:
        raise UsageError(f"Rule '{rule}' takes {', '.join(sorted(PARAMS[rule]))} (and min_tokens), not {', '.join(sorted(extra))}.")
    if rule in NEEDS_TARGET and target is None:
        raise UsageError(f"Rule '{rule}' needs a target label (--target).")
    checks = {
        "ratio": (lambda v: v > 1, "ratio must be greater than 1"),
        "threshold": (lambda v: -1 <= v <= 1, "threshold must lie in [-1, 1]"),
        "k": (lambda v: int(v) == v and v >= 1, "k must be a positive integer"),
        "quantile": (lambda v: 0 <= v < 1, "quantile must lie in [0, 1)"),
    }
    for name, value in params.items():
        ok, message = checks[name]
        if value is None or not ok(value):
            raise UsageError(f"{message}, found {value}.")


def _check_tokens(stats: RoutingStats, rule: str, target: str | None, min_tokens: int) -> None:
    if target is None:
        if stats.scored_tokens < min_tokens:
            raise StatsError(f"Only {stats.scored_tokens} scored tokens (< min tokens {min_tokens}): profile more scored text.")
        return
    stats.label_index(target)
    if len(stats.labels) < 2:
        raise StatsError(f"Rule '{rule}' compares labels but the statistics hold only '{stats.labels[0]}'. Profile other labels too.")
    for label in stats.labels:
        if stats.token_counts[label] < min_tokens:
            raise StatsError(
                f"Label '{label}' has {stats.token_counts[label]} tokens, fewer than min tokens {min_tokens}: "
                "profile more text for it or lower --min-tokens."
            )


def parse_groups(text: str | None) -> list[int] | None:
    """'1,2' -> [1, 2] (None stays None: every group)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--groups takes routing group numbers separated by commas (e.g. --groups 1,2), found '{text}'.") from None


def check_groups(groups: Iterable[int] | None, num_groups: int) -> list[int]:
    """The routing groups to select in (all when None), sorted; anything outside 0..num_groups-1 is an error."""
    if groups is None:
        return list(range(num_groups))
    chosen = parse_groups(groups) if isinstance(groups, str) else [groups] if isinstance(groups, int) else list(groups)
    bad = [g for g in chosen if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < num_groups]
    if bad or not chosen:
        found = ", ".join(map(str, bad)) if bad else "none"
        raise UsageError(f"--groups must name routing groups of this model, 0 to {num_groups - 1} (e.g. --groups 1,2), found {found}.")
    return sorted(set(chosen))


def select_experts(
    stats: RoutingStats,
    rule: str,
    *,
    target: str | None = None,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    model: torch.nn.Module | str | None = None,
    groups: Iterable[int] | None = None,
    **params: float,
) -> ExpertMask:
    """The experts a rule selects in every routing group (or only in `groups`), as a mask (True = removed).

    `model` (a module or its fingerprint), when given, must be the one the statistics came from.
    """
    if rule not in RULES:
        raise UsageError(unknown("rule", rule, RULES))
    params = {k: v for k, v in params.items() if v is not None}
    _check_params(rule, target, params)
    if model is not None:
        stats.check_model(model)
    if rule == "correlation":
        target = None
    _check_tokens(stats, rule, target, min_tokens)
    chosen = check_groups(groups, stats.num_groups)
    experts = {g: RULES[rule](stats, g, target, **params).tolist() for g in chosen}
    meta = {
        "rule": rule,
        "target": target,
        "params": params,
        "min_tokens": min_tokens,
        "stats_model_fingerprint": stats.model_fingerprint,
        "stats_corpus_fingerprint": stats.corpus_fingerprint,
    }
    if groups is not None:
        meta["groups"] = chosen
    return ExpertMask(stats.moe_experts, stats.num_groups, experts, meta)


def strongest(stats: RoutingStats, mask: ExpertMask, *, target: str | None, top: int = 10) -> list[dict]:
    """The best-ranked selected experts over all groups: group, flat id, (i, j), key and score."""
    rows = []
    for g in mask.groups:
        rank = ranking(stats, g, target)
        ids = torch.from_numpy(mask.ids(g).copy())
        best = ordered(Ranking(rank.key[ids], rank.tiebreak[ids]))[:top]
        for flat in ids[best].tolist():
            rows.append(expert_row(stats, g, flat, rank, target))
    rows.sort(key=lambda r: (-_finite(r["key"]), -r["score"], r["group"], r["flat"]))
    return rows[:top]


def _finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def expert_row(stats: RoutingStats, group: int, flat: int, rank: Ranking, target: str | None) -> dict:
    """One expert for display: group, flat id, (i, j), ranking key, score (and the runner-up label)."""
    e = stats.moe_experts
    row = {"group": group, "flat": flat, "i": flat // e, "j": flat % e, "key": float(rank.key[flat]), "score": float(rank.tiebreak[flat])}
    if target is not None:
        means = stats.mean(group).flatten(1)[:, flat]
        others = [(lab, float(v)) for lab, v in zip(stats.labels, means.tolist()) if lab != target]
        row["second_label"], row["second"] = max(others, key=lambda x: x[1]) if others else ("", 0.0)
    return row


__all__ = ["expert_row", "RULES", "select_experts", "specificity", "ranking", "ordered", "strongest", "DEFAULT_MIN_TOKENS"]
