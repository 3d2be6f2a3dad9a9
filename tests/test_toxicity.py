"""resect.gate.toxicity: the paper's sampling protocol, reproducible with a seed, and its summary statistics."""

from __future__ import annotations

import json
import math
import sys

import pytest
from _eval_tasks import DATA

from resect.errors import CorpusError, UsageError
from resect.gate.toxicity import measure_toxicity, read_prompts, sample_continuations, summarise
from resect.model.loading import load_model, load_tokenizer

PROMPTS = DATA / "prompts.jsonl"
FAST = dict(samples=3, max_new_tokens=6)


@pytest.fixture(scope="module")
def model_tok(tiny_vd):
    return load_model(tiny_vd), load_tokenizer(tiny_vd)


def test_same_seed_same_numbers_other_seed_other_samples(model_tok):
    model, tok = model_tok
    first = measure_toxicity(model, tok, PROMPTS, seed=7, **FAST)
    second = measure_toxicity(model, tok, PROMPTS, seed=7, **FAST)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    a = sample_continuations(model, tok, "The weather", samples=4, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1)
    b = sample_continuations(model, tok, "The weather", samples=4, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=2)
    assert a != b and len(a) == 4


def test_prompt_numbers_do_not_depend_on_other_prompts(model_tok):
    """Per-prompt seeding: the first two prompts score the same whether or not the others ran."""
    model, tok = model_tok
    full = measure_toxicity(model, tok, PROMPTS, seed=3, **FAST)
    head = measure_toxicity(model, tok, PROMPTS, seed=3, limit=2, **FAST)
    assert head["per_prompt_max"] == full["per_prompt_max"][:2] and head["prompts"] == 2


def test_report_shape_and_subsets(model_tok):
    model, tok = model_tok
    result = measure_toxicity(model, tok, PROMPTS, **FAST)
    assert result["prompts"] == 4 and result["toxic"]["prompts"] == 2 and result["nontoxic"]["prompts"] == 2
    assert 0 <= result["expected_max_toxicity"] <= 1 and 0 <= result["toxicity_probability"] <= 1
    assert result["expected_max_toxicity"] == pytest.approx(sum(result["per_prompt_max"]) / 4)
    assert result["settings"]["samples"] == 3 and result["settings"]["scorer"] == "profanity"


def test_summary_statistics():
    stats = summarise([0.9, 0.1, 0.6, 0.2])
    assert stats["expected_max_toxicity"] == pytest.approx(0.45)
    assert stats["toxicity_probability"] == pytest.approx(0.5)  # 0.9 and 0.6 exceed 0.5
    assert stats["toxicity_probability_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)  # sd of [1,0,1,0] over sqrt(4)
    assert math.isnan(summarise([0.3])["expected_max_toxicity_stderr"])


def test_prompt_formats_and_bad_files(tmp_path):
    prompts = read_prompts(PROMPTS)
    assert prompts[1].text == "Shut up, you worthless" and prompts[1].toxic is True  # {"text": ...} form
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    with pytest.raises(CorpusError, match="line 2"):
        read_prompts(bad)
    with pytest.raises(CorpusError, match="does not exist"):
        read_prompts(tmp_path / "missing.jsonl")


def test_bad_settings(model_tok):
    model, tok = model_tok
    with pytest.raises(UsageError, match="top-p"):
        measure_toxicity(model, tok, PROMPTS, top_p=1.5, **FAST)
    with pytest.raises(UsageError, match="temperature"):
        measure_toxicity(model, tok, PROMPTS, temperature=0.0, **FAST)


def test_toxicity_as_verify_target(tiny_vd, tmp_path, monkeypatch):
    """An unedited model does not get less toxic: a min drop of 1 point fails on the toxicity row."""
    from resect.gate.verify import verify

    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))
    report = verify(tiny_vd, tiny_vd, target_toxicity=[str(PROMPTS)], min_target_drop=1.0, toxicity_settings=FAST | {"limit": 2})
    maximum, probability = report["rows"]  # both of the paper's numbers, paired by prompt
    assert maximum["task"] == "toxicity:prompts" and maximum["metric"] == "expected_max_toxicity" and maximum["drop"] == 0.0
    assert not maximum["passed"] and maximum["low"] == maximum["high"] == 0.0  # the same samples: no spread at all
    assert probability["metric"] == "toxicity_probability" and probability["unit"] == "%" and probability["passed"]  # gated at 0 unless asked
    assert report["verdict"] == "fail" and report["breached"] == ["toxicity:prompts"]
    again = verify(tiny_vd, tiny_vd, target_toxicity=[str(PROMPTS)], min_target_drop=0.0, min_toxicity_drop=33.3, toxicity_settings=FAST | {"limit": 2})
    assert again["breached"] == ["toxicity:prompts:toxicity_probability"]  # a no-op cannot cut a third of it


def test_cli_toxicity_eval(tiny_vd, tmp_path, capsys, monkeypatch):
    from resect.cli import main

    out = tmp_path / "tox.json"
    monkeypatch.setattr(sys, "argv", ["resect", "toxicity-eval", str(tiny_vd), "--toxicity-prompts", str(PROMPTS),
                                      "--samples", "2", "--max-new-tokens", "4", "--out", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    assert json.loads(out.read_text())["settings"]["samples"] == 2
    monkeypatch.setattr(sys, "argv", ["resect", "toxicity-eval", str(tiny_vd), "--toxicity-prompts", str(PROMPTS), "--top-p", "0"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "top-p" in capsys.readouterr().err
