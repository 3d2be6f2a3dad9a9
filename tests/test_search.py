"""--search: settings chosen on validation data the gate never reads, reproducible, resumable, recorded."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from _cli import run_cli

import resect.model.loading
from resect.model.mask import ExpertMask
from resect.run.pipeline import run_edit
from resect.run.search import Trial, choose, group_choices, pareto_front, read_trials
from resect.run.spec import RunSpec

QUICK = dict(limit=8, max_tokens_per_label=300)  # a few questions and tokens: the mechanics, not the quality


def _trial(number, target, general, se=0.5, experts=100):
    return Trial(number, "skew", {"ratio": 2.0}, None, experts, target, 1.0, general, se, "other")


def test_the_choice_is_the_deepest_cut_whose_collateral_and_its_noise_stay_inside_the_gate():
    trials = [_trial(0, 60, 1.9), _trial(1, 40, 0.5), _trial(2, 70, 3.0), _trial(3, 0, 0, experts=0)]
    assert choose(trials, 2.0).number == 1  # trial 0 is inside the gate only without its standard error
    assert choose(trials, 2.5).number == 0
    assert choose([_trial(0, 60, 4.0), _trial(1, 30, 3.0)], 2.0).number == 1  # none inside: the least collateral
    assert [t.number for t in pareto_front(trials)] == [3, 1, 0, 2]


def test_group_choices_cover_every_subset_of_a_few_groups_and_stay_small_for_many():
    assert group_choices(3) == ["all", "0", "1", "0,1", "2", "0,2", "1,2"]
    many = group_choices(12)
    assert len(many) == 25 and "all" in many and "0,1,2,3,4,5,6,7,8,9,10" in many


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    result = run_edit(RunSpec("domain", "biology", search=3, out=str(out), **QUICK))
    return out, result


@pytest.mark.slow
def test_a_search_chooses_on_validation_tasks_and_records_what_it_did(searched):
    out, result = searched
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 3 and sum(t["chosen"] for t in trials) == 1
    for t in trials:  # scored on the validation quizzes only: the gate's tasks are never read
        assert set(t["rows"]) <= {f"world_val_{d}" for d in ("biology", "chemistry", "history", "law", "physics", "economics")}
    chosen = next(t for t in trials if t["chosen"])
    records, picked = read_trials(out)
    assert choose(records, 2.0).number == chosen["number"] == picked.number
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "study.journal").is_file()
    report = (out / "report.md").read_text()
    assert "## Search" in report and "pareto.png" in report
    assert {r.task for r in result.report.rows} == {f"world_{d}" for d in ("biology", "chemistry", "history", "law", "physics", "economics")}
    assert result.mask_total == chosen["experts"]


@pytest.mark.slow
def test_run_yaml_holds_the_chosen_setting_and_reruns_without_searching(searched, tmp_path, monkeypatch):
    out, result = searched
    saved = yaml.safe_load((out / "run.yaml").read_text())
    chosen = next(json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if json.loads(line)["chosen"])
    assert saved["search"] is None and saved["rule"] == chosen["rule"] and saved["groups"] == chosen["groups"]
    assert saved["ratio"] == pytest.approx(chosen["params"]["ratio"])
    import resect.run.search

    monkeypatch.setattr(resect.run.search, "run_search", lambda *a, **k: pytest.fail("a rerun searched again"))
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    again = run_edit(RunSpec(**{k: v for k, v in saved.items() if k in fields} | {"out": str(tmp_path / "again")}))
    assert ExpertMask.load(tmp_path / "again" / "mask.json").fingerprint() == ExpertMask.load(out / "mask.json").fingerprint()
    assert again.verdict == result.verdict


@pytest.mark.slow
def test_an_interrupted_search_resumes_and_proposes_what_an_uninterrupted_one_would(tmp_path, monkeypatch):
    import resect.run.search as search

    def settings(trials):
        return [(t.rule, t.params, t.groups) for t in trials]

    first = run_edit(RunSpec("domain", "law", search=2, dry_run=True, **QUICK))
    scored = []
    real = search._scorer

    def counting(*args, **kwargs):
        score, base = real(*args, **kwargs)
        return (lambda record: scored.append(record.number) or score(record)), base

    monkeypatch.setattr(search, "_scorer", counting)
    resumed = run_edit(RunSpec("domain", "law", search=3, dry_run=True, **QUICK))
    assert scored == [2]  # the two trials of the first run came from its journal
    assert settings(resumed.search["trials"])[:2] == settings(first.search["trials"])
    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "fresh-cache"))
    fresh = run_edit(RunSpec("domain", "law", search=3, dry_run=True, **QUICK))
    assert settings(fresh.search["trials"]) == settings(resumed.search["trials"])


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--search", "0"], "--search must be a whole number in [1,"),
        (["--search", "-3"], "--search must be a whole number in [1,"),
        (["--search", "2", "--rule", "skew"], "--search chooses the rule"),
        (["--search", "2", "--validation-target-tasks", "world_biology"], "are also the gate's"),
        (["--search", "2", "--validation-target-tasks", "world_val_biologyy"], "Did you mean"),
    ],
)
def test_bad_searches_are_refused_before_anything_is_profiled(args, phrase, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, _, err = run_cli(["domain", "--remove", "biology", "--out", str(tmp_path / "run"), *args], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and phrase in lines[0], err
    assert not (tmp_path / "run").exists()


def test_validation_data_shared_with_profiling_or_the_gate_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """A validation question copied into the profiling corpus, or the gate's prompts as the search's: one line, exit 2."""
    from resect.builtin import builtin_data_path

    data = builtin_data_path()
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    asked = json.loads((data / "eval" / "validation_quiz_law.jsonl").read_text().splitlines()[3])
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text((data / "corpus" / "domains.jsonl").read_text()
                     + json.dumps({"text": f"{asked['question']} {asked['choices'][asked['answer']]}.", "label": "law"}) + "\n")  # fmt: skip
    cases = [
        (["domain", "--remove", "biology", "--corpus", str(leaky)], "are also in the profiling corpus"),
        (["toxicity", "--validation-prompts", str(data / "prompts" / "toxicity.jsonl")], "are also the gate's"),
        (["toxicity", "--profile-prompts", str(data / "prompts" / "toxicity.jsonl")], "are also the gate's"),
        (["toxicity", "--profile-prompts", str(data / "prompts" / "toxicity_validation.jsonl")], "are also profiling's"),
    ]
    for args, phrase in cases:
        out = tmp_path / "run"
        code, _, err = run_cli([*args, "--search", "2", "--out", str(out)], capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and phrase in lines[0], err
        assert not out.exists()


def test_a_model_without_validation_data_is_told_what_to_pass(tiny_vd, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"text {k} about {'ab'[k % 2]}", "label": "ab"[k % 2]}) + "\n" for k in range(8)))
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    tasks = tmp_path / "tasks"
    from resect.gate.tasks import make_perplexity_tasks

    make_perplexity_tasks(corpus, tasks)
    code, _, err = run_cli(["domain", str(tiny_vd), "--remove", "a", "--corpus", str(corpus), "--include-path", str(tasks),
                            "--target-tasks", "ppl_a", "--search", "2", "--out", str(tmp_path / "run")], capsys, monkeypatch)  # fmt: skip
    assert code == 2 and "--validation-target-tasks" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_journal_of_another_identity_is_refused(searched, capsys, monkeypatch):
    """The journal a search resumes from must be this search's: one that records another model,
    target or validation set is refused in one line, exit 2."""
    import optuna

    from resect.cache import digest
    from resect.edit.stats import RoutingStats
    from resect.run.plan import plan
    from resect.run.search import journal_path

    out, _ = searched
    spec = RunSpec("domain", "biology", search=3, dry_run=True, **QUICK)
    p = plan(spec)
    stats = RoutingStats.load(out / "stats.safetensors")
    journal, identity = journal_path(p, digest([stats.model_fingerprint, stats.corpus_fingerprint, dict(stats.token_counts)]), p.validation)
    assert journal.is_file()  # the fixture's search journal, found again from the same inputs
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="resect-search", storage=storage)
    study.set_user_attr("identity", identity | {"target": "law"})
    code, _, err = run_cli(["domain", "--remove", "biology", "--search", "3", "--dry-run", "--limit", "8", "--max-tokens-per-label", "300"], capsys, monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "belongs to another model, target or validation set" in errors[0], err
    assert "loading" not in err  # refused before the model loads (the statistics came from the cache)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "appended to"])
def test_a_damaged_journal_is_discarded_named_and_the_search_starts_over(damage, tmp_path, capsys, monkeypatch, caplog):
    """The journal is resect's cache: one that cannot be read is dropped with a warning that names it."""
    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["domain", "--remove", "law", "--search", "2", "--dry-run", "--limit", "8", "--max-tokens-per-label", "300"]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    (journal,) = (tmp_path / "cache" / "search").glob("*.journal")
    raw = journal.read_bytes()
    journal.write_bytes(raw[: len(raw) - 25] if damage == "truncated" else raw + b'{"op_code": 9, "oops"\n')
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "unexpected" not in err, err
    assert f"discarding the damaged search journal {journal}" in caplog.text  # a warning on stderr, outside pytest
