"""Profiling runs: corpora, resume after an interruption or a kill, scoring, and the CLI's bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resect.cli import main
from resect.edit.corpus import load_corpus
from resect.edit.profile import Settings, plan_sequences, profile_corpus
from resect.edit.stats import RoutingStats
from resect.errors import CorpusError, StatsError
from resect.model.loading import load_model, load_tokenizer
from resect.model.mask import ExpertMask

ROWS = [
    {"text": f"The quick brown fox {k} jumps over the lazy dog number {k}.", "label": "prose"} for k in range(9)
] + [{"text": f"def add{k}(a, b): return a + b * {k}", "label": "code"} for k in range(7)]


@pytest.fixture
def jsonl(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the real console entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["resect", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    err = "\n".join(line for line in out.err.splitlines() if "Loading weights" not in line).strip()  # transformers' own bar
    return exc.value.code or 0, out.out, err


# ---- corpora ------------------------------------------------------------------------------
def test_folder_and_recipe_equal_jsonl(tmp_path, jsonl):
    folder = tmp_path / "folder"
    for k, row in enumerate(ROWS):
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{k:03d}.txt").write_text(row["text"])
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text("name: test\nsources:\n  - path: corpus.jsonl\n")
    base = load_corpus(jsonl)
    key = sorted((d.label, d.text) for d in base.documents)
    assert sorted((d.label, d.text) for d in load_corpus(folder).documents) == key
    assert load_corpus(recipe).fingerprint() == base.fingerprint()
    assert base.labels == ["code", "prose"]


def test_recipe_fixed_label_and_fields(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"body": "some words", "toxic": 1}) + "\n")
    (tmp_path / "c.yaml").write_text("sources:\n  - {path: t.jsonl, label: toxic, text_field: body, score_field: toxic}\n")
    (doc,) = load_corpus(tmp_path / "c.yaml").documents
    assert (doc.text, doc.label, doc.score) == ("some words", "toxic", 1.0)


def test_shipped_corpus_recipes_are_well_formed():
    from resect.edit.corpus import parse_recipe

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "corpora").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert parse_recipe(recipe)["sources"]
        assert recipe.read_text().startswith("#")  # each says how it is used


def test_recipe_typo_gets_did_you_mean(tmp_path):
    (tmp_path / "c.yaml").write_text("sources:\n  - {path: t.jsonl, lable: x}\n")
    with pytest.raises(CorpusError, match="Did you mean: label"):
        load_corpus(tmp_path / "c.yaml")


def test_task_documents_as_corpus(tmp_path):
    pytest.importorskip("lm_eval")
    rows = [{"question": f"What is {k} plus {k}?", "choices": [str(2 * k), "7"], "answer": 0} for k in range(4)]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tasks" / "toy.yaml").write_text(textwrap.dedent(f"""
        task: resect_toy_sums
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "tasks" / "toy.jsonl"}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "Q: {{{{question}}}}\\nA:"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list:
          - metric: acc
    """))
    (tmp_path / "c.yaml").write_text("sources:\n  - {task: resect_toy_sums, include_path: tasks, label: sums, limit: 3}\n")
    docs = load_corpus(tmp_path / "c.yaml").documents
    assert [(d.label, d.text) for d in docs] == [("sums", f"Q: What is {k} plus {k}?\nA: {2 * k}") for k in range(3)]
    (tmp_path / "c.yaml").write_text("sources:\n  - {task: resect_toy_sums, include_path: tasks, split: validation}\n")
    with pytest.raises(CorpusError, match="no validation split"):
        load_corpus(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "has no text"),
        ('{"text": "a"}\n', "missing label"),
        ("not json\n", "not valid JSON"),
        ('{"text": "a", "label": "x", "score": "high"}\n', "score must be"),
    ],
)
def test_bad_corpus_files(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=match):
        load_corpus(path)


def test_score_windows_cover_the_text_a_token_ends(tiny_vd):
    tok = load_tokenizer(tiny_vd)
    text = "one two three four five six seven"
    corpus = load_corpus_from_rows([{"text": text, "label": "x"}])
    (piece,) = plan_sequences(corpus, tok, Settings(scorer="profanity", score_window=3))
    enc = tok(text, return_offsets_mapping=True)
    for k, span in enumerate(piece.spans):
        assert span[1] == enc["offset_mapping"][k][1]  # ends where the token ends
        assert span[0] == enc["offset_mapping"][max(0, k - 2)][0]  # starts 3 tokens back


def load_corpus_from_rows(rows):
    from resect.edit.corpus import Corpus, Document

    return Corpus([Document(r["text"], r["label"], r.get("score")) for r in rows], source="rows")


def test_per_token_scores_must_match_tokens(tiny_vd):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    n = len(tok("hello world")["input_ids"])
    good = profile_corpus(model, tok, load_corpus_from_rows([{"text": "hello world", "label": "x", "score": [0.5] * (n - 1) + [1.0]}]))
    assert good.scored_tokens == n
    with pytest.raises(CorpusError, match="per-token scores"):
        profile_corpus(model, tok, load_corpus_from_rows([{"text": "hello world", "label": "x", "score": [0.5] * (n + 1)}]))


def test_profanity_scorer_scores_every_token(tiny_vd, jsonl):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    stats = profile_corpus(model, tok, jsonl, scorer="profanity", batch_size=4)
    assert stats.scored_tokens == sum(stats.token_counts.values())
    assert stats.correlation(0) is not None and stats.meta["token_score"] == "window:32"


# ---- resume -------------------------------------------------------------------------------
def stop_after(batches: int):
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == batches:
            raise KeyboardInterrupt

    return progress


def test_resume_after_interruption_equals_uninterrupted(tiny_vd, jsonl, tmp_path):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    options = dict(batch_size=2, scorer="profanity", checkpoint_every=2)
    full = profile_corpus(model, tok, jsonl, **options)
    partial = tmp_path / "s.partial"
    with pytest.raises(KeyboardInterrupt):
        profile_corpus(model, tok, jsonl, checkpoint=partial, progress=stop_after(5), **options)
    assert RoutingStats.load(partial).meta["done"] == 4
    resumed = profile_corpus(model, tok, jsonl, resume=partial, **options)
    assert resumed.token_counts == full.token_counts
    assert torch.equal(resumed.sums, full.sums)
    assert all(torch.equal(resumed.corr[k], full.corr[k]) for k in full.corr)
    with pytest.raises(StatsError, match="another model, corpus or settings"):
        profile_corpus(model, tok, jsonl, resume=partial, batch_size=3)


def test_resume_after_sigkill_equals_uninterrupted(tiny_vd, jsonl, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed.safetensors"
    script = textwrap.dedent(f"""
        import os, signal
        from resect.model.loading import load_model, load_tokenizer
        from resect.edit.profile import profile_corpus
        calls = []
        def progress(done, total):
            calls.append(done)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        model, tok = load_model({str(tiny_vd)!r}), load_tokenizer({str(tiny_vd)!r})
        profile_corpus(model, tok, {str(jsonl)!r}, batch_size=1, checkpoint={str(out) + ".partial"!r}, checkpoint_every=3, progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=out.parent)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert RoutingStats.load(str(out) + ".partial").meta["done"] == 3 and not out.exists()
    code, _, err = run_cli(["profile", tiny_vd, "--corpus", jsonl, "--out", out, "--batch-size", 1, "--checkpoint-every", 3, "--resume"], monkeypatch, capsys)
    assert code == 0, err
    ref = profile_corpus(load_model(tiny_vd), load_tokenizer(tiny_vd), jsonl, batch_size=1)
    a = RoutingStats.load(out)
    assert a.token_counts == ref.token_counts and torch.equal(a.sums, ref.sums)
    assert not Path(str(out) + ".partial").exists()


# ---- CLI ----------------------------------------------------------------------------------
def test_cli_profile_select_experts(tiny_vd, jsonl, tmp_path, monkeypatch, capsys):
    stats, mask = tmp_path / "s.safetensors", tmp_path / "m.json"
    code, out, err = run_cli(["profile", tiny_vd, "--corpus", jsonl, "--out", stats, "--batch-size", 4], monkeypatch, capsys)
    assert code == 0, err
    assert "prose" in out and "code" in out
    code, out, err = run_cli(["select", "--stats", stats, "--rule", "skew", "--target", "code", "--out", mask, "--min-tokens", 10, tiny_vd], monkeypatch, capsys)
    assert code == 0, err
    loaded = ExpertMask.load(mask)
    assert loaded.meta["rule"] == "skew" and f"{loaded.total:,} experts selected" in out
    assert "Strongest selected experts" in out
    code, out, err = run_cli(["experts", "--stats", stats, "--label", "code", "--top", 3], monkeypatch, capsys)
    assert code == 0 and "most specific to 'code'" in out
    code, out, err = run_cli(["experts", tiny_vd, "--expert", "1/2,3", "--corpus", jsonl, "--top", 4], monkeypatch, capsys)
    assert code == 0 and "Expert 1/35" in out


@pytest.fixture(scope="module")
def stats_file(tiny_vd, tmp_path_factory):
    model, tok = load_model(tiny_vd), load_tokenizer(tiny_vd)
    rows = [{"text": t, "label": r["label"]} for r in ROWS for t in [r["text"]]]
    path = tmp_path_factory.mktemp("stats") / "s.safetensors"
    profile_corpus(model, tok, load_corpus_from_rows(rows), scorer="profanity").save(path)
    return path


@pytest.mark.parametrize(
    "args,match",
    [
        (["--rule", "skew", "--target", "cod"], "Did you mean: code"),
        (["--rule", "correlation", "--threshold", "1.5"], r"\[-1, 1\]"),
        (["--rule", "skew", "--target", "code", "--ratio", "1"], r"--ratio must be a number in \(1,"),
        (["--rule", "skew", "--target", "code", "--min-tokens", "100000"], "fewer than min tokens"),
        (["--rule", "skwe", "--target", "code"], "Did you mean: skew"),
        (["--rule", "skew", "--target", "code", "--min-tokens", "1", "HD"], "Run `resect profile`"),
        (["--rule", "skew", "--target", "code", "--min-tokens", "1", "--groups", "7"], "routing groups of this model, 0 to"),
        (["--rule", "skew", "--target", "code", "--min-tokens", "1", "--groups", "1;2"], "separated by commas"),
    ],
)
def test_cli_select_bad_input(stats_file, tiny_hd, tmp_path, monkeypatch, capsys, args, match):
    out = tmp_path / "m.json"
    args = [tiny_hd if a == "HD" else a for a in args]
    code, _, err = run_cli(["select", "--stats", stats_file, "--out", out, *args], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ") and pytest.importorskip("re").search(match, err)
    assert not out.exists() and not list(tmp_path.glob(".m.json*"))


def test_cli_profile_bad_input(tiny_vd, tmp_path, monkeypatch, capsys, jsonl):
    out = tmp_path / "s.safetensors"
    empty_label = tmp_path / "e.jsonl"
    empty_label.write_text(json.dumps({"text": "words here", "label": "a"}) + "\n" + json.dumps({"text": "", "label": "b"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        (["--corpus", empty], "has no text"),
        (["--corpus", empty_label], "Label 'b' has no tokens"),
        (["--corpus", tmp_path / "nope.jsonl"], "does not exist"),
        (["--corpus", jsonl, "--max-tokens-per-label", "0"], "--max-tokens-per-label must be a whole number in [1,"),
        (["--corpus", jsonl, "--scorer", "profanty"], "Did you mean: profanity"),
    ]
    for args, match in cases:
        code, _, err = run_cli(["profile", tiny_vd, "--out", out, *args], monkeypatch, capsys)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists()
    out.write_text("keep")
    code, _, err = run_cli(["profile", tiny_vd, "--corpus", jsonl, "--out", out], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and out.read_text() == "keep"


def test_cli_experts_bad_input(tiny_vd, jsonl, stats_file, tiny_hd, monkeypatch, capsys):
    for args, match in [
        ([tiny_vd, "--expert", "1/300", "--corpus", jsonl], "outside the model"),
        ([tiny_vd, "--expert", "5/3", "--corpus", jsonl], "Group 5 does not exist"),
        ([tiny_vd, "--expert", "x", "--corpus", jsonl], "not GROUP/FLATID"),
        ([tiny_vd, "--expert", "0/3"], "needs MODEL and --corpus"),
        (["--stats", stats_file, "--label", "cod"], "Did you mean: code"),
        ([tiny_hd, "--stats", stats_file, "--label", "code"], "Run `resect profile`"),
    ]:
        code, _, err = run_cli(["experts", *map(str, args)], monkeypatch, capsys)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, (args, err)


def test_a_huge_single_line_document_costs_only_what_the_budget_takes(tiny_vd):
    """A 20 MB one-line document: tokenized a bounded piece at a time, and only until the label's
    token budget is full; the pieces taken are the tokens of the text's beginning."""
    from resect.edit.profile import CHUNK_CHARS

    tok = load_tokenizer(tiny_vd)
    calls = []

    class Counting:
        all_special_ids = tok.all_special_ids

        def __call__(self, text, **kw):
            calls.append(len(text))
            return tok(text, **kw)

    text = " ".join(f"cell{k % 97} membrane" for k in range(1_200_000))
    assert len(text) > 90 * CHUNK_CHARS
    corpus = load_corpus_from_rows([{"text": text, "label": "bio"}, {"text": "short law text", "label": "law"}])
    pieces = plan_sequences(corpus, Counting(), Settings(max_tokens_per_label=200, max_length=64))
    assert max(calls) <= CHUNK_CHARS and sum(calls) <= 2 * CHUNK_CHARS
    bio = [p for p in pieces if p.label == 0]
    assert sum(p.num_counted for p in bio) == 200
    head = tok(text[:5000], add_special_tokens=True)["input_ids"]
    assert bio[0].ids == head[: len(bio[0].ids)]
