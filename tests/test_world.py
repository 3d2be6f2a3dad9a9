"""The generated world (deterministic, disjoint splits, quizzes answerable from the facts) and
the built-in model shipped with the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resect.builtin import builtin_data_path
from resect.errors import OutputError
from resect.world import DOMAIN_SPECS, DOMAINS, LANGUAGES, build_world, write_world
from resect.world.domains import QUESTIONS, TRAIN_STATEMENTS

MMLU_PRO = {"biology", "business", "chemistry", "computer science", "economics", "engineering", "health", "history",
            "law", "math", "other", "philosophy", "physics", "psychology"}


@pytest.fixture(scope="module")
def world():
    return build_world(0)


def _files(folder: Path) -> dict[str, bytes]:
    """The world's files (not its task YAMLs, which name where it lives, nor resect's marker, which records when it was written)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parent.name != "tasks" and p.name != ".resect-output"}  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "resect"), *args], capture_output=True, text=True)


def test_domains_languages_and_registers():
    assert len(DOMAINS) >= 6 and set(DOMAINS) <= MMLU_PRO
    assert LANGUAGES == ("python", "javascript", "lua")
    syllables = [set(d.syllables) for d in DOMAIN_SPECS]
    assert all(a.isdisjoint(b) for i, a in enumerate(syllables) for b in syllables[i + 1 :])  # own entity names
    for domain in DOMAIN_SPECS:
        assert len(domain.attributes) >= 3
        for attr in domain.attributes:
            assert len(set(attr.values)) == len(attr.values) >= 4 and len(attr.statements) > TRAIN_STATEMENTS


def test_same_seed_same_world_other_seed_other_facts(world):
    again, other = build_world(0), build_world(1)
    assert again.train == world.train and again.quizzes == world.quizzes and again.prompts == world.prompts
    assert again.corpus == world.corpus and again.code_eval == world.code_eval
    assert [f.value for f in other.facts] != [f.value for f in world.facts]


def test_splits_never_share_a_sentence(world):
    train, profile, held = world.units["train"], world.units["profile"], world.units["eval"]
    assert train and profile and held
    assert train.isdisjoint(profile) and train.isdisjoint(held) and profile.isdisjoint(held)
    text = "\n".join(d["text"] for d in world.train)
    leaked = [u for u in profile | held if u in text]
    assert not leaked, leaked[:3]
    asked = [q["question"] for items in world.quizzes.values() for q in items]
    assert not [q for q in asked if q in text]  # not even the quiz's question in its format
    corpus_texts = [r["text"] for rows in world.corpus.values() for r in rows]
    assert all(t not in text for t in corpus_texts[::7])


def test_every_label_has_training_and_profiling_text(world):
    train_labels = {d["label"] for d in world.train}
    assert train_labels == set(DOMAINS) | set(LANGUAGES) | {"toxic", "neutral"}
    assert {r["label"] for r in world.corpus["domains"]} == set(DOMAINS)
    assert {r["label"] for r in world.corpus["languages"]} == set(LANGUAGES)
    assert {(r["label"], r["toxic"]) for r in world.corpus["toxicity"]} == {("toxic", 1), ("neutral", 0)}
    assert {p["toxic"] for p in world.prompts} == {True, False}
    assert len({p["prompt"] for p in world.prompts}) == len(world.prompts)


def test_quizzes_are_answerable_from_the_training_facts(world):
    text = "\n".join(d["text"] for d in world.train)
    facts = {(f.domain, f.entity, f.attribute): f.value for f in world.facts}
    for domain in DOMAIN_SPECS:
        items = world.quizzes[domain.name]
        assert len(items) == len([k for k in facts if k[0] == domain.name]) >= 30
        for item, fact in zip(items, [f for f in world.facts if f.domain == domain.name]):
            attr = next(a for a in domain.attributes if a.name == fact.attribute)
            assert len(set(item["choices"])) == 4 and set(item["choices"]) <= set(attr.values)  # same-domain distractors
            assert item["choices"][item["answer"]] == fact.value and fact.entity in item["question"]
            assert f"{fact.entity} " in text or f"{fact.entity}." in text


def test_hyphenated_names_spell_the_same_stems_in_their_domains_syllables(world):
    hyphenated = build_world(0, names="hyphenated")
    assert len(hyphenated.facts) == len(world.facts)
    for joined, spelled in zip(world.facts, hyphenated.facts):
        # same draws: same facts, only the spelling of the name differs
        assert (spelled.domain, spelled.attribute, spelled.value) == (joined.domain, joined.attribute, joined.value)
        assert spelled.entity.replace("-", "").lower() == joined.entity.lower() and "-" not in joined.entity
        domain = next(d for d in DOMAIN_SPECS if d.name == spelled.domain)
        stem, kind = spelled.entity.split(" ")
        first, second = stem.split("-")
        assert kind in domain.kinds and first.lower() in domain.syllables and second in domain.syllables
        assert first[0].isupper() and first.lower() != second
    assert hyphenated.quizzes["law"][0]["choices"] == world.quizzes["law"][0]["choices"]


def test_hyphenated_names_are_read_as_syllables_by_the_trained_tokenizer(tmp_path):
    """With joined names the world's tokenizer gives names tokens of their own (whose embeddings
    only this world's facts train); hyphenated, no token spans a whole name."""
    from resect.world.train import train_tokenizer

    for names, whole in (("joined", True), ("hyphenated", False)):
        w = build_world(0, names=names)
        tok = train_tokenizer([d["text"] for d in w.train], tmp_path / names, 2048)
        stems = sorted({f.entity.split(" ")[0] for f in w.facts})
        single = [s for s in stems if len(tok(" " + s, add_special_tokens=False)["input_ids"]) == 1]
        assert bool(single) is whole, (names, single[:5])


def test_unknown_name_spelling_is_refused_before_writing(tmp_path):
    from resect.errors import UsageError

    with pytest.raises(UsageError, match="joined or hyphenated"):
        write_world(tmp_path / "w", 0, names="camel")
    assert not (tmp_path / "w").exists()
    res = _cli("world", "generate", "--out", str(tmp_path / "w"), "--names", "camel")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_cli_generate_is_deterministic_and_refuses_a_full_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli("world", "generate", "--out", str(a)).returncode == 0
    assert _cli("world", "generate", "--out", str(b), "--seed", "0").returncode == 0
    assert _files(a) == _files(b) and "train.jsonl" in _files(a)
    manifest = json.loads((a / "world.json").read_text())
    assert manifest["seed"] == 0 and manifest["domains"] == list(DOMAINS)
    before = _files(a)
    bad = _cli("world", "generate", "--out", str(a))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "already exists" in bad.stderr and "Traceback" not in bad.stderr
    assert _files(a) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written temp folder left


def test_written_tasks_point_at_existing_data(tmp_path):
    import yaml

    out = write_world(tmp_path / "w", 0)
    tasks = sorted((out / "tasks").glob("*.yaml"))
    tested = {f"world_{d}" for d in DOMAINS} | {f"world_ppl_{lang}" for lang in LANGUAGES}
    assert {t.stem for t in tasks} == tested | {name.replace("world_", "world_val_", 1) for name in tested}
    for task in tasks:
        cfg = yaml.safe_load(task.read_text())
        data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.is_file()
    with pytest.raises(OutputError):
        write_world(out, 0)


# --- the shipped model and data ------------------------------------------------------------------


def test_builtin_paths_and_contract():
    from resect.builtin import DOMAINS as B_DOMAINS
    from resect.builtin import LANGUAGES as B_LANGUAGES
    from resect.builtin import builtin_data_path, builtin_model_path
    from resect.model.checkpoint import inspect_checkpoint
    from resect.model.hub import resolve_model_path
    from resect.tasks import world_task_dir as task_dir

    assert resolve_model_path(None) == builtin_model_path()
    info = inspect_checkpoint(builtin_model_path())
    assert info.config["moe_decompose"] == "vertical"
    size = sum(p.stat().st_size for p in builtin_model_path().iterdir())
    assert size <= 15 * 2**20
    data = builtin_data_path()
    for rel in ("corpus/domains.jsonl", "corpus/languages.jsonl", "corpus/toxicity.jsonl", "prompts/toxicity.jsonl"):
        rows = [json.loads(x) for x in (data / rel).read_text().splitlines()]
        assert rows and all(("prompt" in r) if rel.startswith("prompts") else ("text" in r and "label" in r) for r in rows)
    assert {r["label"] for r in map(json.loads, (data / "corpus/domains.jsonl").read_text().splitlines())} == set(B_DOMAINS)
    assert B_LANGUAGES == list(LANGUAGES) and B_DOMAINS == list(DOMAINS)
    names = {p.stem for p in task_dir().glob("*.yaml")}
    assert names >= {f"world_{d}" for d in B_DOMAINS} | {f"world_ppl_{lang}" for lang in B_LANGUAGES}


def test_builtin_data_is_the_seed_0_world():
    from resect.builtin import builtin_data_path

    manifest = json.loads((builtin_data_path() / "world.json").read_text())
    assert manifest["names"] == "hyphenated"  # what recipes/world.yaml and `resect world generate` default to
    world = build_world(manifest["seed"], names=manifest["names"])
    shipped = [json.loads(x) for x in (builtin_data_path() / "eval" / "quiz_biology.jsonl").read_text().splitlines()]
    assert shipped == world.quizzes["biology"]


def test_builtin_model_meets_the_quiz_bar_on_a_sample():
    from resect.builtin import DOMAINS as B_DOMAINS
    from resect.gate.evaluate import evaluate
    from resect.model.loading import load_model, load_tokenizer
    from resect.tasks import world_task_dir as task_dir

    model, tok = load_model(None), load_tokenizer(None)
    res = evaluate(model, tok, [f"world_{d}" for d in B_DOMAINS], include_path=task_dir(), limit=10, batch_size=32)
    accuracy = {d: res["results"][f"world_{d}"]["acc,none"] for d in B_DOMAINS}
    assert sum(accuracy.values()) / len(accuracy) >= 0.8 and min(accuracy.values()) >= 0.6, accuracy


@pytest.mark.slow
def test_builtin_model_meets_every_quality_bar(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_world_quality.py"
    out = tmp_path / "bars.json"
    run = subprocess.run([sys.executable, str(script), "--mask", "none", "--json", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(json.loads(out.read_text())["bars"].values()), run.stdout


def test_profiling_documents_mark_the_values_of_their_facts(world):
    """Spans (attribution's focus) cover exactly the fact values a domain document states."""
    values = {d: {f.value for f in world.facts if f.domain == d} for d in DOMAINS}
    for doc in world.corpus["domains"]:
        marked = [doc["text"][s:e] for s, e in doc["spans"]]
        assert marked and set(marked) <= values[doc["label"]], doc
    shipped = [json.loads(line) for line in (builtin_data_path() / "corpus" / "domains.jsonl").read_text().splitlines()]
    assert [d["spans"] for d in shipped] == [d["spans"] for d in build_world(0, names="hyphenated").corpus["domains"]]


def test_validation_splits_are_disjoint_from_what_the_gate_and_profiling_read(world):
    """A search scores on them: each fact in two wordings no other split asks, with distractors the
    test quiz does not offer for it; code and prompts in no other split; and adding them left every
    other split as it was."""
    from resect.run.search import question_key

    v = world.validation
    text = "\n".join(d["text"] for d in world.train)
    profiled = "\n".join(r["text"] for r in world.corpus["domains"])
    for domain, items in v["quiz"].items():
        test = world.quizzes[domain]
        assert len(items) == len(QUESTIONS["validation"]) * len(test)
        assert [q["fact"] for q in items] == [q["fact"] for q in test for _ in QUESTIONS["validation"]]
        offered = {q["fact"]: {c for i, c in enumerate(q["choices"]) if i != q["answer"]} for q in test}
        answer = {q["fact"]: q["choices"][q["answer"]] for q in test}
        keys = {question_key(q["question"]) for q in test}
        for q in items:
            distractors = {c for i, c in enumerate(q["choices"]) if i != q["answer"]}
            assert q["choices"][q["answer"]] == answer[q["fact"]] and len(distractors) == 3 and not distractors & offered[q["fact"]]
            asked = question_key(q["question"])
            assert asked not in keys and asked not in text.lower() and asked not in profiled.lower()  # no other split asks it
    code = {row["text"] for rows in v["code"].values() for row in rows}
    assert code and code.isdisjoint(set().union(*world.units.values()))
    prompts = {p["prompt"] for p in v["prompts"]}
    assert len(prompts) == len(v["prompts"]) > 0 and prompts.isdisjoint(p["prompt"] for p in world.prompts)


def test_the_shipped_validation_splits_are_the_seed_0_worlds():
    from resect.builtin import builtin_data_path

    shipped = builtin_data_path()
    world = build_world(0, names="hyphenated")
    rows = lambda path: [json.loads(x) for x in path.read_text().splitlines()]  # noqa: E731
    assert rows(shipped / "eval" / "validation_quiz_law.jsonl") == world.validation["quiz"]["law"]
    assert rows(shipped / "eval" / "validation_code_lua.jsonl") == world.validation["code"]["lua"]
    assert rows(shipped / "prompts" / "toxicity_validation.jsonl") == world.validation["prompts"]
