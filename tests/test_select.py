"""Selection rules on synthetic statistics select exactly what their definitions say."""

from __future__ import annotations

import math

import pytest
import torch

from resect.edit.select import select_experts, strongest
from resect.edit.stats import RoutingStats, empty_stats
from resect.errors import StatsError, UsageError

E, G = 4, 2
LABELS = ["bio", "law", "math"]


def synthetic(seed: int = 0, counts: dict | None = None) -> RoutingStats:
    """Random sums with planted structure: zeros, exact 2x ties, and experts used by one label only."""
    gen = torch.Generator().manual_seed(seed)
    stats = empty_stats(LABELS, num_groups=G, experts=E, scored=True)
    stats.token_counts = counts or {"bio": 200, "law": 400, "math": 100}
    means = torch.rand(G, len(LABELS), E, E, generator=gen, dtype=torch.float64)
    means[0, :, 0, 0] = 0.0  # never routed
    means[0, :, 0, 1] = torch.tensor([0.5, 0.25, 0.1])  # bio exactly 2x law: on the boundary
    means[0, 1:, 0, 2] = 0.0  # only bio routes here
    means[1, :, 3, 3] = torch.tensor([0.2, 0.2, 0.0])  # tie between bio and law
    counts_t = torch.tensor([stats.token_counts[lab] for lab in LABELS], dtype=torch.float64)
    stats.sums = means * counts_t[None, :, None, None]
    n = 1000.0
    w = torch.rand(G, E, E, generator=gen, dtype=torch.float64)
    stats.corr = {"w": w * n, "w2": (w * w + 0.05) * n, "wy": (w * 0.3 + torch.randn(G, E, E, generator=gen, dtype=torch.float64) * 0.02) * n}
    stats.corr["w2"][0, 1, 1] = (w[0, 1, 1] ** 2) * n  # zero variance: no r
    stats.corr["moments"] = torch.tensor([n, 0.3 * n, 0.2 * n], dtype=torch.float64)
    stats.model_fingerprint = "abc"
    return stats


def by_definition_skew(stats: RoutingStats, target: str, ratio: float, against=max) -> dict[int, list[int]]:
    """against=max: the paper's rule (the runner-up label); against=mean: skew-mean."""
    out = {}
    d = LABELS.index(target)
    for g in range(G):
        m = stats.mean(g)
        ids = []
        for i in range(E):
            for j in range(E):
                mine = float(m[d, i, j])
                others = [float(m[lab, i, j]) for lab in range(len(LABELS)) if lab != d]
                if mine > 0 and mine >= ratio * against(others):
                    ids.append(i * E + j)
        out[g] = ids
    return out


def pearson(stats: RoutingStats, g: int, i: int, j: int) -> float:
    n, sy, syy = (float(v) for v in stats.corr["moments"])
    sw, sww, swy = (float(stats.corr[k][g, i, j]) for k in ("w", "w2", "wy"))
    var = (n * sww - sw * sw) * (n * syy - sy * sy)
    return (n * swy - sw * sy) / math.sqrt(var) if var > 1e-12 else float("nan")


@pytest.mark.parametrize("target,ratio", [("bio", 2.0), ("law", 1.5), ("math", 3.0), ("bio", 1.01)])
def test_skew_matches_definition(target, ratio):
    stats = synthetic()
    mask = select_experts(stats, "skew", target=target, ratio=ratio)
    expected = by_definition_skew(stats, target, ratio)
    assert {g: mask.ids(g).tolist() for g in range(G)} == expected
    assert mask.meta["rule"] == "skew" and mask.meta["params"] == {"ratio": ratio}


@pytest.mark.parametrize("target,ratio", [("bio", 1.25), ("law", 1.5), ("math", 2.0), ("bio", 1.01)])
def test_skew_mean_matches_definition(target, ratio):
    stats = synthetic()
    mask = select_experts(stats, "skew-mean", target=target, ratio=ratio)
    assert {g: mask.ids(g).tolist() for g in range(G)} == by_definition_skew(stats, target, ratio, against=lambda v: sum(v) / len(v))
    assert mask.meta["rule"] == "skew-mean" and mask.meta["params"] == {"ratio": ratio}
    assert select_experts(stats, "skew-mean", target=target).meta["params"] == {}  # the rule's own default, 1.25
    assert select_experts(stats, "skew-mean", target=target) == select_experts(stats, "skew-mean", target=target, ratio=1.25)


def test_skew_mean_keeps_an_expert_one_other_label_shares_and_the_paper_rule_does_not():
    stats = synthetic()
    counts = torch.tensor([stats.token_counts[lab] for lab in LABELS], dtype=torch.float64)
    stats.sums[1, :, 2, 1] = torch.tensor([0.4, 0.5, 0.0]) * counts  # bio 0.4: under law's 0.5, 1.6x the others' mean
    stats.sums[1, :, 1, 2] = torch.tensor([0.4, 0.3, 0.3]) * counts  # used evenly: 1.33x the mean, under 2x the runner-up
    flat_shared, flat_even = 2 * E + 1, 1 * E + 2
    mean_rule = select_experts(stats, "skew-mean", target="bio", ratio=1.5).ids(1).tolist()
    paper = select_experts(stats, "skew", target="bio", ratio=1.5).ids(1).tolist()
    assert flat_shared in mean_rule and flat_shared not in paper
    assert flat_even not in mean_rule and flat_even not in paper


def test_groups_restrict_the_selection_to_those_routing_groups():
    stats = synthetic()
    every = select_experts(stats, "skew", target="bio", ratio=1.5)
    only = select_experts(stats, "skew", target="bio", ratio=1.5, groups=[1])
    assert every.ids(0).size and every.ids(1).size  # both groups select something, so the restriction shows
    assert only.ids(0).size == 0 and only.ids(1).tolist() == every.ids(1).tolist()
    assert only.meta["groups"] == [1] and "groups" not in every.meta
    assert select_experts(stats, "skew", target="bio", ratio=1.5, groups="0,1") == every
    for bad, match in (([2], "0 to 1"), ([], "found none"), ([True], "found True"), ("x", "separated by commas")):
        with pytest.raises(UsageError, match=match):
            select_experts(stats, "skew", target="bio", ratio=1.5, groups=bad)


def test_skew_boundary_zero_and_exclusive_experts():
    ids = select_experts(synthetic(), "skew", target="bio").ids(0).tolist()
    assert 1 in ids  # 0.5 >= 2 * 0.25 exactly
    assert 2 in ids  # only bio routes: infinitely specific
    assert 0 not in ids  # never routed: not specific to anything
    assert 15 not in select_experts(synthetic(), "skew", target="bio").ids(1).tolist()  # tie with law


@pytest.mark.parametrize("threshold", [-1.0, -0.2, 0.0, 0.5, 0.9, 1.0])
def test_correlation_matches_definition(threshold):
    stats = synthetic(seed=1)
    mask = select_experts(stats, "correlation", threshold=threshold)
    for g in range(G):
        expected = [i * E + j for i in range(E) for j in range(E) if pearson(stats, g, i, j) >= threshold - 1e-12]
        assert mask.ids(g).tolist() == expected
    assert 5 not in mask.ids(0).tolist()  # zero variance has no r, never selected


def test_lower_threshold_removes_more():
    stats = synthetic(seed=2)
    totals = [select_experts(stats, "correlation", threshold=t).total for t in (0.2, 0.1, 0.05, -0.5)]
    assert totals == sorted(totals)


def test_topk_and_quantile_rank_and_break_ties_deterministically():
    stats = synthetic()
    # Plant an exact tie in group 1: identical means for experts 4, 5 and 6 (specificity and score equal).
    for flat in (4, 5, 6):
        stats.sums[1, :, flat // E, flat % E] = torch.tensor([0.9 * 200, 0.1 * 400, 0.1 * 100], dtype=torch.float64)
    top = select_experts(stats, "topk", target="bio", k=2)
    assert top.ids(1).tolist() == [4, 5]  # the tie resolves to the lowest flat ids
    for g in range(G):
        m = stats.mean(g).flatten(1)
        second = torch.cat([m[1:]]).amax(0)
        spec = [(float(m[0, f] / second[f]) if second[f] > 0 else math.inf, float(m[0, f]), -f) for f in range(E * E) if m[0, f] > 0]
        best = [-t[2] for t in sorted(spec, reverse=True)]
        assert sorted(select_experts(stats, "topk", target="bio", k=3).ids(g).tolist()) == sorted(best[:3])
        q = select_experts(stats, "quantile", target="bio", quantile=0.75).ids(g).tolist()
        assert sorted(q) == sorted(best[: math.ceil(0.25 * len(best))])
    r_top = select_experts(stats, "topk", k=1)  # without a target: by correlation
    for g in range(G):
        rs = {f: pearson(stats, g, f // E, f % E) for f in range(E * E)}
        assert r_top.ids(g).tolist() == [max((f for f in rs if not math.isnan(rs[f])), key=lambda f: (rs[f], -f))]


def test_strongest_lists_selected_experts_best_first():
    stats = synthetic()
    mask = select_experts(stats, "skew", target="bio")
    rows = strongest(stats, mask, target="bio", top=50)
    assert len(rows) == mask.total
    assert all(r["flat"] in mask.ids(r["group"]).tolist() for r in rows)
    keys = [r["key"] for r in rows]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"rule": "skw", "target": "bio"}, UsageError, "Did you mean: skew"),
        ({"rule": "skew"}, UsageError, "needs a target"),
        ({"rule": "skew", "target": "biology"}, StatsError, "Did you mean: bio"),
        ({"rule": "skew", "target": "bio", "ratio": 1.0}, UsageError, "greater than 1"),
        ({"rule": "skew", "target": "bio", "ratio": 0.5}, UsageError, "greater than 1"),
        ({"rule": "skew-mean"}, UsageError, "needs a target"),
        ({"rule": "skew-mean", "target": "bio", "ratio": 1.0}, UsageError, "greater than 1"),
        ({"rule": "skew-mean", "target": "bio", "k": 5}, UsageError, "takes ratio"),
        ({"rule": "correlation", "threshold": 1.5}, UsageError, r"\[-1, 1\]"),
        ({"rule": "correlation", "threshold": -1.01}, UsageError, r"\[-1, 1\]"),
        ({"rule": "topk", "target": "bio", "k": 0}, UsageError, "positive"),
        ({"rule": "quantile", "target": "bio", "quantile": 1.0}, UsageError, r"\[0, 1\)"),
        ({"rule": "skew", "target": "bio", "threshold": 0.1}, UsageError, "takes ratio"),
        ({"rule": "skew", "target": "bio", "min_tokens": 300}, StatsError, "'bio' has 200 tokens"),
        ({"rule": "correlation", "threshold": 0.1, "min_tokens": 5000}, StatsError, "scored tokens"),
        ({"rule": "skew", "target": "bio", "model": "other"}, StatsError, "Run `resect profile`"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        select_experts(synthetic(), **kwargs)


def test_single_label_and_unscored_stats_refused():
    one = empty_stats(["bio"], num_groups=1, experts=E, scored=False)
    one.token_counts = {"bio": 1000}
    with pytest.raises(StatsError, match="only 'bio'"):
        select_experts(one, "skew", target="bio")
    with pytest.raises(StatsError, match="no per-token scores"):
        select_experts(one, "correlation", threshold=0.1, min_tokens=0)
