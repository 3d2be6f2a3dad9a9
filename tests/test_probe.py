"""`resect probe`: the probe sets a world builds, the attacks' mechanics, the command end to end on
an edit of the built-in model against its shipped oracle, and the refusals before any training."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from _cli import run_cli

from resect.builtin import builtin_data_path, builtin_model_path, builtin_oracle_path
from resect.world.domains import QUESTIONS
from resect.world.probesets import UNASKED, cloze, fold_of, read_facts, read_quiz, readout_questions, relearn_examples, rephrased, rtt_folds, true_false

DATA = builtin_data_path()


# ----------------------------------------------------------------------------- what the probes ask


def test_relearn_examples_are_profiling_sentences_and_never_a_test_question():
    facts = read_facts(DATA, "biology")
    examples = relearn_examples(facts, "biology", seed=0)
    assert len(examples) == 3 * len(facts)  # two held-out statements and the profiling question per fact
    corpus = "\n".join(json.loads(line)["text"] for line in (DATA / "corpus" / "domains.jsonl").read_text().splitlines())
    assert all(e in corpus for e in examples)  # the world's own profiling text
    questions = {q["question"].removeprefix("Question: ").removesuffix("\nAnswer:") for q in read_quiz(DATA, "biology")}
    assert not any(q in e for e in examples for q in questions)
    assert relearn_examples(facts, "biology", seed=0) == examples and relearn_examples(facts, "biology", seed=1) != examples


def test_rtt_folds_score_every_question_once_and_never_train_on_its_fact():
    quiz = read_quiz(DATA, "biology")
    folds = rtt_folds(quiz, 5)
    held = sorted(i for _, h in folds for i in h)
    assert held == list(range(len(quiz)))
    for train, h in folds:
        asked = {quiz[i]["question"] for i in h}
        assert train and not any(t.startswith(q) for t in train for q in asked)
        assert len({fold_of(quiz[i]["fact"], 5) for i in h}) <= 1


def test_the_rephrased_wording_is_one_no_split_asks():
    assert all(UNASKED not in asked for asked in QUESTIONS.values())
    quiz = read_quiz(DATA, "law")
    again = rephrased(quiz)
    validation = {json.loads(line)["question"] for line in (DATA / "eval" / "validation_quiz_law.jsonl").read_text().splitlines()}
    assert [q["choices"] for q in again] == [q["choices"] for q in quiz] and [q["answer"] for q in again] == [q["answer"] for q in quiz]
    assert not ({q["question"] for q in again} & ({q["question"] for q in quiz} | validation))


def test_true_false_is_balanced_and_cloze_keeps_the_answers():
    quiz = read_quiz(DATA, "chemistry")
    judged = true_false(quiz)
    assert len(judged) == 2 * len(quiz) and sum(j["answer"] == 0 for j in judged) == len(quiz)
    completed = cloze(quiz)
    assert completed and all(c["choices"][c["answer"]] == q["choices"][q["answer"]] for c, q in zip(completed, quiz))
    assert not any(c["question"].startswith("Question:") for c in completed)


def test_readout_questions_ask_every_wording_of_every_fact():
    facts = read_facts(DATA, "history")
    rows = readout_questions(facts)
    assert len(rows) == 5 * len(facts) and len({r["text"] for r in rows}) == len(rows)


# ----------------------------------------------------------------------------- mechanics


def test_a_linear_readout_reads_what_is_there_and_not_what_is_not():
    from resect.run.attacks import readout

    g = torch.Generator().manual_seed(0)
    rows = [{"fact": f"d/e{i}/a", "attribute": "a", "value": f"v{i % 4}"} for i in range(80)]
    folds = [fold_of(r["fact"], 4) for r in rows]
    signal = torch.nn.functional.one_hot(torch.tensor([i % 4 for i in range(80)]), 4).float() * 3
    states = torch.stack([torch.cat([signal, torch.randn(80, 12, generator=g)], 1), torch.randn(80, 16, generator=g)])
    readable, noise = (sum(layer) / len(layer) for layer in readout(states, rows, folds))
    assert readable > 0.95 and noise < 0.5


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_attack_trains_with_the_mask_in_force_and_leaves_the_model_as_it_was(method, tmp_path):
    from resect.model.loading import load_model, load_tokenizer
    from resect.model.mask import ExpertMask, geometry
    from resect.run.attacks import Tuning, tuned

    model, tok = load_model(builtin_model_path()), load_tokenizer(builtin_model_path())
    e, groups = geometry(model.config)
    mask = ExpertMask(e, groups, {g: range(g, e * e, 3) for g in range(groups)})
    model.set_expert_mask(mask)
    ids = tok(["Question: What does the Rix-quor newt eat?\nAnswer:"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
    texts = ["The Rix-quor newt feeds mainly on fungi."] * 4
    with tuned(model, tok, texts, Tuning(method=method, rank=4, lr=1e-2, epochs=2, batch_size=2)) as trained:
        assert trained.expert_mask_state() is mask
        with torch.no_grad():
            during = trained(input_ids=ids).logits
            trained.set_expert_mask(None)
            unmasked = trained(input_ids=ids).logits
            trained.set_expert_mask(mask)
        assert not torch.allclose(during, before)  # it learnt
        assert not torch.allclose(during, unmasked)  # and the removed experts stayed out while it did
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(after, before) and model.expert_mask_state() is mask
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_an_attack_is_reproducible():
    from resect.model.loading import load_model, load_tokenizer
    from resect.run.attacks import Tuning, tuned

    model, tok = load_model(builtin_model_path()), load_tokenizer(builtin_model_path())
    ids = tok(["The Rix-quor newt lives in"], return_tensors="pt").input_ids
    texts = [f"The Rix-quor newt lives in marshes number {i}." for i in range(5)]
    runs = []
    for seed in (0, 0, 1):
        with tuned(model, tok, texts, Tuning(rank=4, lr=1e-2, epochs=2, batch_size=2), seed=seed) as trained:
            runs.append(trained(input_ids=ids).logits)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ----------------------------------------------------------------------------- the command


def _edit(folder: Path, kind: str, target: str) -> Path:
    """`resect KIND --remove TARGET` on the built-in model, in a subprocess; its run directory."""
    import subprocess

    out = folder / "run"
    proc = subprocess.run([sys.executable, "-m", "resect", kind, "--remove", target, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory):
    """`resect domain --remove biology` on the built-in model: the README's run directory."""
    return _edit(tmp_path_factory.mktemp("probe"), "domain", "biology")


SMALL = ["--examples", "3,6", "--epochs", "1", "--rank", "8", "--folds", "2", "--shots", "2", "--batch-size", "32"]


def test_probe_measures_every_probe_against_the_shipped_oracle(edit_run, tmp_path, capsys, monkeypatch):
    assert builtin_oracle_path("biology") is not None
    out = tmp_path / "probe"
    code, stdout, err = run_cli(["probe", str(edit_run), *SMALL, "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads((out / "probe.json").read_text())
    assert report["verdict"] == "measured" and report["models"]["oracle"] == str(builtin_oracle_path("biology"))
    probes = {r["probe"] for r in report["rows"]}
    assert probes == {"relearn", "rtt", "in-context", "representation"}
    assert [r["setting"] for r in report["rows"] if r["probe"] == "relearn"] == ["N=0 (no attack)", "N=3", "N=6"]
    for r in report["rows"]:
        assert r["recovery"] == pytest.approx(r["edited"] - r["oracle"]) and r["reference"] == "oracle"
        assert r["low"] <= r["recovery"] <= r["high"]
    before = next(r for r in report["rows"] if r["setting"] == "N=0 (no attack)")
    assert before["source"] > 90 and before["oracle"] < 50  # the source knows biology, the oracle never learnt it
    layers = [r for r in report["rows"] if r["probe"] == "representation"]
    assert len(layers) == 7  # the embeddings and each of the 6 layers
    assert (out / "relearn.png").read_bytes()[:4] == b"\x89PNG" and "## Probes" in (out / "report.md").read_text()
    assert "gives back" in stdout
    # The gate: the same probes again (from the cache: each attack is stored as it finishes), now with --max-recovery.
    worst = max(r["recovery"] for r in report["rows"] if r["attack"])
    for limit, expected in ((100, 0), (max(worst - 1, 0), 1)):
        code, stdout, err = run_cli(["probe", str(edit_run), *SMALL, "--max-recovery", str(limit), "--out", str(tmp_path / f"gate{limit}")], capsys, monkeypatch)
        again = json.loads((tmp_path / f"gate{limit}" / "probe.json").read_text())
        assert code == expected and again["verdict"] == ("pass" if expected == 0 else "fail"), err
        assert [r["recovery"] for r in again["rows"]] == [r["recovery"] for r in report["rows"]]


def test_probe_without_an_oracle_compares_with_chance(edit_run, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["probe", str(edit_run / "checkpoint"), "--target", "biology", "--no-oracle", "--probes", "in-context", "--shots", "2",
                            "--out", str(tmp_path / "p")], capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert "oracle" not in report["models"]
    tf = next(r for r in report["rows"] if r["setting"] == "true-false")
    assert tf["reference"] == "chance" and tf["chance"] == pytest.approx(50.0) and tf["recovery"] == pytest.approx(tf["edited"] - 50.0)


# ----------------------------------------------------------------------------- refusals: one line, exit 2, nothing written, before training


def _oracle_copy(tmp_path: Path, **changes) -> Path:
    oracle = tmp_path / "oracle"
    shutil.copytree(builtin_oracle_path("biology"), oracle)
    recipe = json.loads((oracle / "recipe.json").read_text())
    for section, values in changes.items():
        recipe[section] = recipe.get(section, {}) | values
    (oracle / "recipe.json").write_text(json.dumps(recipe))
    return oracle


@pytest.mark.parametrize("args, expected", [
    (["--examples", "0"], "--examples must be positive whole numbers"),
    (["--examples", "5,-1"], "--examples must be positive whole numbers"),
    (["--examples", "five"], "--examples must be comma-separated whole numbers"),
    (["--examples", "100000"], "is more than the 180 biology examples"),
    (["--probes", "relearn,rtx"], "Unknown probe 'rtx'"),
    (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
    (["--lr", "-1"], "--lr must be a number above 0"),
    (["--folds", "1"], "--folds must be a whole number of at least 2"),
    (["--method", "qlora"], "Unknown --method 'qlora'"),
    (["--max-recovery", "-3"], "--max-recovery must be a number in [0, 100]"),
    (["--target", "toxicity", "--probes", "rtt"], "a toxicity edit is probed by relearning and in context"),
    (["--target", "toxicity", "--shots", "101"], "--shots 101 is more than the 100 toxic utterances"),
    (["--target", "biolgy"], "Unknown domain, language or toxicity 'biolgy'"),
    (["--oracle", "{source}"], "did not leave biology out of its training"),
    (["--oracle", "{other_world}"], "was trained on another world"),
    (["--oracle", "{left_out_chemistry}"], "did not leave biology out"),
    (["--oracle", "{nowhere}", "--no-oracle"], "contradict each other"),
])  # fmt: skip
def test_bad_probe_input_is_one_line_and_exit_2(args, expected, edit_run, tmp_path, capsys, monkeypatch):
    names = {"source": str(builtin_model_path()), "nowhere": str(tmp_path / "nowhere")}
    if "{other_world}" in args:
        names["other_world"] = str(_oracle_copy(tmp_path, world={"entities": 40}))
    if "{left_out_chemistry}" in args:
        names["left_out_chemistry"] = str(_oracle_copy(tmp_path, train={"leave_out": ["chemistry"]}))
    out = tmp_path / "out"
    code, _, err = run_cli(["probe", str(edit_run), *(a.format(**names) for a in args), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_probe_needs_an_edit_with_its_mask(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["probe", str(builtin_model_path()), "--target", "biology", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "carries no expert mask" in err
    code, _, err = run_cli(["probe", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "is not a folder" in err
    assert not (tmp_path / "o").exists()


def test_lora_without_peft_names_the_extra(edit_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails, as where it is not installed
    code, _, err = run_cli(["probe", str(edit_run), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "pip install 'resect[probe]'" in err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- an edit gated on its probes (max_recovery)


def test_an_edit_with_max_recovery_probes_itself_and_fails_on_what_comes_back(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = ["domain", "--remove", "biology", "--probes", "in-context", "--out", str(out)]
    code, stdout, err = run_cli([*base, "--max-recovery", "0"], capsys, monkeypatch)
    assert code == 1, err  # the quiz gate passes; the cloze and 5-shot variants give back more than 0 points over the oracle
    verify = json.loads((out / "verify.json").read_text())
    probed = json.loads((out / "probe.json").read_text())
    assert verify["verdict"] == "pass" and probed["verdict"] == "fail" and probed["worst_recovery"] > 0
    assert probed["models"] == {"edited": str(out / "checkpoint"), "source": str(builtin_model_path()), "oracle": str(builtin_oracle_path("biology"))}
    assert {r["probe"] for r in probed["rows"]} == {"in-context"} and probed["settings"]["max_recovery"] == 0
    report = (out / "report.md").read_text()
    assert "**Verdict: FAIL**" in report and "## Probes: is biology gone" in report and "probes (in-context): FAIL" in stdout
    # The gate's limit is the run's: recorded in run.yaml, it is what 'resect probe RUN' gates on unless told otherwise.
    assert "max_recovery: 0.0" in (out / "run.yaml").read_text()
    code, _, err = run_cli(["probe", str(out), "--probes", "in-context", "--out", str(tmp_path / "again")], capsys, monkeypatch)
    again = json.loads((tmp_path / "again" / "probe.json").read_text())
    assert code == 1 and again["settings"]["max_recovery"] == 0 and again["rows"] == probed["rows"], err
    # A limit above what comes back passes (the probes from the cache: the same rows).
    code, stdout, err = run_cli([*base, "--max-recovery", "100", "--force"], capsys, monkeypatch)
    assert code == 0, err
    passed = json.loads((out / "probe.json").read_text())
    assert passed["verdict"] == "pass" and [r["recovery"] for r in passed["rows"]] == [r["recovery"] for r in probed["rows"]]
    assert "**Verdict: PASS**" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, expected", [
    (["domain", "--remove", "biology", "--probes", "relearn"], "without max_recovery none runs"),
    (["domain", "--remove", "biology", "--max-recovery", "101"], "--max-recovery must be a number in [0, 100]"),
    (["domain", "--remove", "biology", "--max-recovery", "5", "--probes", "relearn,rtx"], "Unknown probe 'rtx'"),
    (["toxicity", "--max-recovery", "5", "--probes", "representation"], "a toxicity edit is probed by relearning and in context"),
    (["language", "--remove", "python", "--max-recovery", "5", "--probes", "rtt"], "a language edit is probed by relearning alone"),
    (["run", "world-domain", "max_recovery=5", "probes=relearn"], "'probes' must be a list of probe names"),
    (["domain", "--remove", "biology", "{tiny}", "--corpus", "{corpus}", "--target-tasks", "world_biology", "--max-recovery", "5"], "brings no world"),
])  # fmt: skip
def test_bad_max_recovery_input_is_one_line_and_exit_2(args, expected, tiny_vd, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{label} text {k}", "label": label}) + "\n" for label in ("biology", "law") for k in range(3)))
    out = tmp_path / "out"
    words = [a.format(tiny=str(tiny_vd), corpus=str(corpus)) for a in args]
    code, _, err = run_cli([*words, *(["--out", str(out)] if words[0] in ("domain", "language", "toxicity") else [f"out={out}"])], capsys, monkeypatch)
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------- a language edit: relearning on its code, judged by held-out perplexity


def test_the_code_relearning_trains_on_is_profiling_code_and_never_held_out_code():
    from resect.world.probesets import relearn_code

    held_out = {json.loads(line)["text"] for part in ("code_python", "validation_code_python") for line in (DATA / "eval" / f"{part}.jsonl").read_text().splitlines()}
    texts = relearn_code(DATA, "python", 0)
    assert len(texts) >= 100 and not set(texts) & held_out
    assert relearn_code(DATA, "python", 0) == texts and relearn_code(DATA, "python", 1) != texts and sorted(relearn_code(DATA, "python", 1)) == sorted(texts)


@pytest.fixture(scope="module")
def language_run(tmp_path_factory):
    return _edit(tmp_path_factory.mktemp("probe-language"), "language", "python")


def test_a_language_edit_is_probed_by_relearning_its_code(language_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "probe"
    code, stdout, err = run_cli(["probe", str(language_run), "--examples", "4,16", "--epochs", "1", "--rank", "8", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads((out / "probe.json").read_text())
    assert report["task"] == "world_ppl_python" and report["metric"] == "word_perplexity" and report["unit"] == "%"
    assert report["settings"]["probes"] == ["relearn"] and [r["setting"] for r in report["rows"]] == ["N=0 (no attack)", "N=4", "N=16"]
    reference = "oracle" if builtin_oracle_path("python") else "edit before the attack"
    before, *attacks = report["rows"]
    assert before["edited"] > 2 * before["source"]  # the edit more than doubled python's held-out perplexity (its gate)
    for r in report["rows"]:
        assert r["reference"] == reference and r["low"] <= r["recovery"] <= r["high"] and r["unit"] == "%"
        # gives back: how much lower the edited model's perplexity is than the reference's
        assert r["recovery"] == pytest.approx(100 * (1 - r["edited"] / r["reference_value"]), abs=0.05)
    general = report["measured"]["edited"]["relearn"]["16"]["general"]
    assert set(general) == {"world_ppl_javascript", "world_ppl_lua"}
    assert "% lower held-out perplexity" in stdout and (out / "relearn.png").is_file()
    assert "held-out code" in (out / "report.md").read_text()


def test_a_published_edit_s_probe_refuses_what_needs_a_world_and_a_missing_corpus(tiny_vd, tmp_path, capsys, monkeypatch):
    """An edit of a checkpoint without a world (the tiny hub-shaped one): relearning only, on the
    run's corpus or an existing --corpus; one line, exit 2, nothing written, the run untouched."""
    from _eval_tasks import quiz_task

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{w} story number {k} about a {w}.", "label": "ab"[k % 2]}) + "\n" for k, w in enumerate(["cell", "gene", "court", "tax"] * 4)))
    run = tmp_path / "run"
    code, _, err = run_cli(["domain", str(tiny_vd), "--remove", "a", "--corpus", str(corpus), "--target-tasks", "resect_quiz", "--include-path",
                            str(quiz_task(tmp_path / "tasks")), "--min-target-drop", "0", "--out", str(run)], capsys, monkeypatch)  # fmt: skip
    assert code in (0, 1), err
    listing = sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*"))
    for args, phrase in ((["--corpus", str(tmp_path / "none.jsonl")], "--corpus '" + str(tmp_path / "none.jsonl") + "' does not exist"),
                         (["--probes", "relearn,in-context"], "only the relearn probe runs"),
                         (["--oracle", str(tiny_vd)], "Drop --oracle"),
                         (["--examples", "9"], "more than the 8 'a' documents")):  # fmt: skip
        code, _, err = run_cli(["probe", str(run), *args, "--out", str(tmp_path / "p")], capsys, monkeypatch)
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists() and sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*")) == listing
