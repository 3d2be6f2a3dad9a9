"""ExpertMask: file forms, set algebra, geometry checks, and malformed input."""

from __future__ import annotations

import json
import random

import pytest
import torch

from resect.errors import MaskError
from resect.model.configuration_monet import MonetConfig
from resect.model.mask import FORMAT, ExpertMask

E, G = 16, 3


def random_mask(seed: int, density: float = 0.2) -> ExpertMask:
    rng = random.Random(seed)
    return ExpertMask(E, G, {g: rng.sample(range(E * E), int(density * E * E)) for g in range(G) if rng.random() < 0.8})


def as_sets(mask: ExpertMask) -> dict[int, set[int]]:
    return {g: set(mask.ids(g).tolist()) for g in range(G)}


@pytest.mark.parametrize("suffix", [".json", ".mask", ""])
def test_round_trip_keeps_ids_and_metadata(tmp_path, suffix):
    mask = random_mask(0)
    mask.meta = {"rule": "skew", "target": "biology"}
    loaded = ExpertMask.load(mask.save(tmp_path / f"m{suffix}"))
    assert loaded == mask
    assert loaded.meta == mask.meta
    assert loaded.fingerprint() == mask.fingerprint()
    assert loaded.counts() == mask.counts()


def test_json_is_the_interchange_format(tmp_path):
    mask = ExpertMask(E, G, {0: [5, 1, 5], 2: [E * E - 1]}, meta={"note": "x"})
    data = json.loads(mask.save(tmp_path / "m.json").read_text())
    assert data == {"note": "x", "format": FORMAT, "moe_experts": E, "num_groups": G, "experts": {"0": [1, 5], "2": [E * E - 1]}}


def test_hand_written_json_without_format_key_loads(tmp_path):
    path = tmp_path / "hand.json"
    path.write_text('{"moe_experts": 16, "num_groups": 3, "experts": {"1": [17, 3]}, "author": "me"}')
    mask = ExpertMask.load(path)
    assert mask.counts() == {0: 0, 1: 2, 2: 0} and mask.total == 2 and mask.meta == {"author": "me"}
    assert mask.dense(1).nonzero().tolist() == [[0, 3], [1, 1]]  # flat id i*E + j


def test_binary_form_is_compact_for_big_masks(tmp_path):
    mask = ExpertMask(512, 1, {0: range(0, 512 * 512, 3)})
    binary, text = mask.save(tmp_path / "m.bin"), mask.save(tmp_path / "m.json")
    assert binary.stat().st_size < text.stat().st_size / 20
    assert ExpertMask.load(binary) == mask


def test_algebra_matches_python_sets():
    a, b = random_mask(1), random_mask(2)
    sa, sb = as_sets(a), as_sets(b)
    assert as_sets(a | b) == {g: sa[g] | sb[g] for g in range(G)}
    assert as_sets(a & b) == {g: sa[g] & sb[g] for g in range(G)}
    assert as_sets(a - b) == {g: sa[g] - sb[g] for g in range(G)}
    assert (a | b).total == len((a | b).ids(0)) + len((a | b).ids(1)) + len((a | b).ids(2))
    assert (a - a).is_empty and (a & ExpertMask(E, G)).is_empty and (a | ExpertMask(E, G)) == a


def test_fingerprint_depends_on_ids_and_geometry_not_metadata():
    a = random_mask(3)
    b = ExpertMask(E, G, {g: a.ids(g) for g in a.groups}, meta={"other": 1})
    assert a.fingerprint() == b.fingerprint()
    one_less = a - ExpertMask(E, G, {a.groups[0]: a.ids(a.groups[0])[:1]})
    assert one_less.total == a.total - 1 and one_less.fingerprint() != a.fingerprint()
    assert ExpertMask(E, G).fingerprint() != ExpertMask(E, G + 1).fingerprint()


def test_dense_matches_ids():
    mask = random_mask(4)
    for g in range(G):
        dense = mask.dense(g)
        assert dense.shape == (E, E) and dense.dtype == torch.bool
        assert dense.flatten().nonzero().flatten().tolist() == mask.ids(g).tolist()
    assert ExpertMask.from_dense({g: mask.dense(g) for g in range(G)}, num_groups=G) == mask


def test_validate_for_config_and_empty_like():
    config = MonetConfig(num_hidden_layers=5, moe_groups=2, moe_experts=E, hidden_size=32, num_attention_heads=2, moe_topk=3)
    empty = ExpertMask.empty_like(config)
    assert (empty.moe_experts, empty.num_groups, empty.total) == (E, 3, 0)
    random_mask(5).validate_for(config)
    random_mask(5).validate_for(config.to_dict())
    with pytest.raises(MaskError, match="moe_experts=8"):
        ExpertMask(8, 3).validate_for(config)
    with pytest.raises(MaskError, match="2 routing groups"):
        ExpertMask(E, 2).validate_for(config)


def test_combining_different_geometry_is_refused():
    with pytest.raises(MaskError, match="different geometry"):
        _ = ExpertMask(E, G) | ExpertMask(E, G + 1)


@pytest.mark.parametrize(
    "text, phrase",
    [
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"0": [1, 2', "is not valid JSON"),
        ('[1, 2, 3]', "expected a JSON object"),
        ('{"format": "other/v9", "moe_experts": 16, "num_groups": 3, "experts": {}}', "format is 'other/v9'"),
        ('{"moe_experts": 16, "experts": {}}', "missing key(s) num_groups"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": [1, 2]}', "'experts' must map"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"0": [256]}}', "expert id 256 is outside"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"0": [-1]}}', "expert id -1 is outside"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"3": [1]}}', "Group 3 does not exist"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"first": [1]}}', "is not an integer"),
        ('{"moe_experts": 16, "num_groups": 3, "experts": {"0": [1.5]}}', "must be integers"),
        ('{"moe_experts": 0, "num_groups": 3, "experts": {}}', "moe_experts in 1..8192"),
    ],
)
def test_malformed_json_is_one_clear_error(tmp_path, text, phrase):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(MaskError) as exc:
        ExpertMask.load(path)
    assert phrase in str(exc.value) and "\n" not in str(exc.value)


def test_damaged_binary_and_missing_file(tmp_path):
    path = random_mask(6).save(tmp_path / "m.bin")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(MaskError, match="damaged binary mask"):
        ExpertMask.load(path)
    with pytest.raises(MaskError, match="does not exist"):
        ExpertMask.load(tmp_path / "nope.json")
