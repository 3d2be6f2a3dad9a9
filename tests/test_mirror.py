"""The paper's recipes offline: mirrors in the datasets' published layouts (a handful of rows each),
a checkpoint shaped like the Hub's, repo ids from the Hugging Face cache, and what a broken mirror gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resect.model.tiny import build_tiny_checkpoint
from resect.run.recipebook import recipe_files

RESECT = str(Path(sys.executable).parent / "resect")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")
MMLU_SUBJECTS = sorted({s for subjects in __import__("resect.run.recipebook", fromlist=["MMLU_PRO"]).MMLU_PRO.values() for s in subjects})
WORDS = ["cell", "gene", "price", "court", "atom", "river", "tax", "law"]


def parquet(file: Path, rows: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), file)


def mmlu(root: Path, subjects: list[str], rows: int = 8) -> None:
    """cais/mmlu: <subject>/{test,validation,dev}-00000-of-00001.parquet, configs declared in README.md.
    Every subject's test split holds questions of both its parts (the search's and the gate's)."""
    from resect.tasks import mmlu_part

    folder = root / "datasets" / "cais" / "mmlu"
    configs = []
    for subject in subjects:
        for split in ("test", "validation", "dev"):
            questions = [f"Which {WORDS[k % 8]} fits {subject.replace('_', ' ')} case {k} in the {split} set?" for k in range(rows)]
            extra = rows
            while split == "test" and len({mmlu_part(q) for q in questions}) < 2:
                questions.append(f"Which {WORDS[extra % 8]} fits {subject.replace('_', ' ')} case {extra} in the {split} set?")
                extra += 1
            n = len(questions)
            parquet(folder / subject / f"{split}-00000-of-00001.parquet", {
                "question": questions, "subject": [subject] * n,
                "choices": [[WORDS[(k + j) % 8] for j in range(4)] for k in range(n)], "answer": [k % 4 for k in range(n)],
            })  # fmt: skip
        configs.append(f"- config_name: {subject}\n  data_files:\n" + "".join(f"  - split: {s}\n    path: {subject}/{s}-*\n" for s in ("test", "validation", "dev")))
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n# MMLU\n")


def arc(root: Path, rows: int = 6) -> None:
    """allenai/ai2_arc: ARC-Easy/{train,validation,test}-00000-of-00001.parquet."""
    for split in ("train", "validation", "test"):
        parquet(root / "datasets" / "allenai" / "ai2_arc" / "ARC-Easy" / f"{split}-00000-of-00001.parquet", {
            "id": [f"q{k}" for k in range(rows)], "question": [f"What is a {WORDS[k % 8]}?" for k in range(rows)],
            "choices": [{"text": WORDS[k % 4 : k % 4 + 4], "label": ["A", "B", "C", "D"]} for k in range(rows)],
            "answerKey": ["ABCD"[k % 4] for k in range(rows)],
        })  # fmt: skip


OPENERS = ["You are such a", "Those idiots always", "The weather today is", "Shut up, you", "I can't believe how stupid", "The meeting starts at"]


def real_toxicity(root: Path) -> None:
    """allenai/real-toxicity-prompts: prompts.jsonl with prompt.text and the challenging flag (enough
    prompts that each of its parts, the gate's, a search's and profiling's, holds several)."""
    texts = [f"{opener} number {k}" for k in range(12) for opener in OPENERS]
    rows = [{"filename": f"{k}.txt", "begin": 0, "end": 40, "challenging": k % 3 != 0,
             "prompt": {"text": text, "toxicity": 0.6 if k % 3 else 0.1, "profanity": 0.2},
             "continuation": {"text": " and so on.", "toxicity": 0.1}}
            for k, text in enumerate(texts)]  # fmt: skip
    file = root / "datasets" / "allenai" / "real-toxicity-prompts" / "prompts.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))


def toxigen(root: Path) -> None:
    """ToxiGen's prompts/ folder: {hate,neutral}_<group>_1k.txt, one prompt a line, statements joined by \\n-."""
    folder = root / "datasets" / "toxigen" / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hate_women_1k.txt").write_text("".join(f"- they are all stupid {k}\\n- they never listen\\n-\n- damn them all {k}\\n-\n" for k in range(20)))
    (folder / "neutral_women_1k.txt").write_text("".join(f"- many women are engineers {k}\\n- they work hard\\n-\n" for k in range(20)))


def stack_smol(root: Path, languages: list[str], files: int = 24) -> None:
    """bigcode/the-stack-smol: data/<language>/data.json, one {"content": ...} per line."""
    for n, language in enumerate(languages):
        lines = [json.dumps({"content": f"// {language} file {k}\nfunction f{k}(x) {{ return x * {k + n}; }}\n", "lang": language}) for k in range(files)]
        file = root / "datasets" / "bigcode" / "the-stack-smol" / "data" / language / "data.json"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("\n".join(lines) + "\n")


def wmdp(root: Path, rows: int = 6) -> None:
    """cais/wmdp (wmdp-{bio,chem,cyber}/test-00000-of-00001.parquet) and cais/wmdp-corpora (its three
    public corpora as parquet shards of one `text` column), configs declared in README.md as the Hub's are."""
    folder = root / "datasets" / "cais" / "wmdp"
    for name in ("wmdp-bio", "wmdp-chem", "wmdp-cyber"):
        parquet(folder / name / "test-00000-of-00001.parquet", {
            "answer": [k % 4 for k in range(rows)], "question": [f"Which {WORDS[k % 8]} step of {name} case {k} comes first?" for k in range(rows)],
            "choices": [[WORDS[(k + j) % 8] for j in range(4)] for k in range(rows)],
        })  # fmt: skip
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test-*\n" for n in ("wmdp-bio", "wmdp-chem", "wmdp-cyber")) + "---\n")
    corpora = root / "datasets" / "cais" / "wmdp-corpora"
    shards = {"bio-retain-corpus": 4, "cyber-forget-corpus": 1, "cyber-retain-corpus": 1}
    for name, count in shards.items():
        for k in range(count):
            texts = [f"{name} passage {k}.{j}: the {WORDS[j % 8]} exploit uses a buffer of {j} bytes." for j in range(5)]
            parquet(corpora / name / f"train-{k:05d}-of-{count:05d}.parquet", {"text": texts})
    (corpora / "README.md").write_text("---\nconfigs:\n" + "".join(f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/train-*\n" for n in shards) + "---\n")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    for repo, seed in (("MonetLLM/monet-vd-1.4B-100BT-hf", 5), ("MonetLLM/codemonet-vd-1.4B-100BT-hf", 6)):
        build_tiny_checkpoint(root / "models" / repo, hub_like=True, seed=seed)
    mmlu(root, MMLU_SUBJECTS)
    arc(root)
    real_toxicity(root)
    toxigen(root)
    stack_smol(root, ["python", "c++", "java", "javascript", "lua", "php"])
    wmdp(root)
    return root


def resect(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    environ = os.environ | {"RESECT_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} | env
    return subprocess.run([RESECT, *args], capture_output=True, text=True, timeout=900, env=environ, cwd=cache.parent)


FAST = ["limit=4", "batch_size=8"]
RUNS = {
    "paper-mmlu-domain": ["target=biology", "ratio=1.05", "min_target_drop=0", "max_general_drop=100"],
    "paper-realtoxicity": ["general_tasks=[mmlu_college_biology,arc_easy]", "toxicity.scorer=profanity", "toxicity.samples=2",
                           "toxicity.profile_samples=2", "toxicity.max_new_tokens=4", "max_general_drop=100"],
    "paper-toxigen": ["general_tasks=[mmlu_astronomy]", "toxicity.scorer=profanity", "toxicity.max_new_tokens=4", "max_general_drop=100"],
    "paper-codemonet-language": ["target=python", "ratio=1.05", "min_target_drop=0", "max_general_drop=1000"],
    "wmdp": ["target=cyber", "ratio=1.05", "min_target_drop=0", "max_general_drop=100"],
}  # fmt: skip


def test_every_paper_recipe_is_exercised():
    assert set(RUNS) == {name for name in recipe_files() if name.startswith("paper-") or name == "wmdp"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_paper_recipe_runs_to_its_verdict_offline(recipe, mirror, tmp_path):
    out = tmp_path / "run"
    res = resect("run", recipe, f"mirror={mirror}", f"out={out}", *FAST, *RUNS[recipe], cache=tmp_path / "cache")
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads((out / "verify.json").read_text())
    assert report["verdict"] in ("pass", "fail") and report["rows"]
    run = json.loads(json.dumps(__import__("yaml").safe_load((out / "run.yaml").read_text())))
    assert run["mirror"] == str(mirror)
    if recipe == "paper-mmlu-domain":
        rows = {r["task"]: r for r in report["rows"]}
        assert set(rows) == {f"resect_mmlu_pro_{c.replace(' ', '_')}" for c in __import__("resect.run.recipebook", fromlist=["x"]).MMLU_PRO}
        assert "profiling tokens" in (out / "report.md").read_text()
    if recipe == "paper-codemonet-language":
        assert {r["task"] for r in report["rows"]} == {f"heldout_{x}" for x in ("python", "cpp", "java", "javascript", "lua", "php")}
    if recipe == "wmdp":  # WMDP's target and the collateral its paper reports; profiled on the corpora alone
        rows = {r["task"]: r for r in report["rows"]}
        assert set(rows) == {"wmdp_cyber", "mmlu", *(f"resect_wmdp_mmlu_{s}" for s in ("college_biology", "virology", "college_computer_science", "computer_security"))}
        assert rows["wmdp_cyber"]["role"] == "target" and rows["mmlu"]["baseline"] is not None
        assert "profiling documents cyber 5, cyber-retain 5" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_search_on_the_paper_recipe_scores_its_part_of_mmlu_s_test_split_and_the_gate_the_rest(mirror, tmp_path):
    """Offline, from the mirror: trials read the search's part of the test split, the gate the other
    part, profiling the validation and dev splits."""
    out = tmp_path / "run"
    res = resect("run", "paper-mmlu-domain", f"mirror={mirror}", f"out={out}", *FAST, "target=biology", "rule=null", "ratio=null",
                 "search=2", "min_target_drop=0", "max_general_drop=100", cache=tmp_path / "cache")  # fmt: skip
    assert res.returncode in (0, 1), res.stderr[-3000:]
    categories = __import__("resect.run.recipebook", fromlist=["x"]).MMLU_PRO
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2
    scored = {task for t in trials for task in t["rows"]}
    assert scored and scored <= {f"resect_mmlu_pro_search_{c.replace(' ', '_')}" for c in categories}
    report = json.loads((out / "verify.json").read_text())
    assert {r["task"] for r in report["rows"]} == {f"resect_mmlu_pro_{c.replace(' ', '_')}" for c in categories}
    assert "fewer than 100 questions" in (out / "report.md").read_text()  # the tiny MMLU has a few per subject


@pytest.mark.slow
def test_the_mmlu_statistics_come_from_the_validation_and_dev_splits(mirror, tmp_path):
    """The profiling corpus reads the mirror's validation and dev files, which neither the search nor the gate reads."""
    from resect.run.mirror import Mirror
    from resect.run.recipebook import RECIPES_DIR

    os.environ["RESECT_CACHE_DIR"] = str(tmp_path / "cache")
    from resect.edit.corpus import load_corpus

    corpus = load_corpus(Mirror(mirror).corpus(str(RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml")))
    assert corpus.labels == sorted(__import__("resect.run.recipebook", fromlist=["x"]).MMLU_PRO)
    texts = [d.text for d in corpus.documents]
    assert texts and all("validation set" in t or "dev set" in t for t in texts) and not any("test set" in t for t in texts)
    assert any("dev set" in t for t in texts) and any("validation set" in t for t in texts)


def question_hashes(documents) -> dict[str, str]:
    """{digest of a question's words: where it came from} for MMLU-formatted documents (the question
    is the text before its first choice line)."""
    import hashlib

    from resect.run.search import question_key

    return {hashlib.sha256(question_key(d.text.split("\nA. ")[0]).encode()).hexdigest(): d.label for d in documents}


@pytest.mark.slow
def test_no_mmlu_question_or_prompt_serves_two_of_profiling_the_search_and_the_gate(mirror, tmp_path, monkeypatch):
    """By question hash over the mirror fixture: the profiling corpus (validation + dev), the search's
    part of the test split and the gate's part share no question, and together the two parts are the
    whole test split; the prompt collections' three parts share no prompt."""
    from resect.edit.corpus import Document, load_corpus, read_tasks
    from resect.run.mirror import PROMPT_PARTS, REAL_TOXICITY, TOXIGEN, Mirror
    from resect.run.recipebook import MMLU_PRO, RECIPES_DIR

    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))
    m = Mirror(mirror)
    categories = [c.replace(" ", "_") for c in MMLU_PRO]
    gate_names, search_names = [f"resect_mmlu_pro_{c}" for c in categories], [f"resect_mmlu_pro_search_{c}" for c in categories]
    local = m.localize(gate_names + search_names, [str(RECIPES_DIR / "tasks")])
    gate = question_hashes(read_tasks(gate_names, include_path=str(local.include_path)))
    search = question_hashes(read_tasks(search_names, include_path=str(local.include_path)))
    profiled = question_hashes(load_corpus(m.corpus(str(RECIPES_DIR / "corpora" / "mmlu-pro-categories.yaml"))).documents)
    assert gate and search and profiled
    assert not gate.keys() & search.keys() and not gate.keys() & profiled.keys() and not search.keys() & profiled.keys()
    tested = set()
    for subject in MMLU_SUBJECTS:
        table = pq.read_table(mirror / "datasets" / "cais" / "mmlu" / subject / "test-00000-of-00001.parquet")
        tested |= question_hashes([Document(q, subject) for q in table.column("question").to_pylist()]).keys()
    assert gate.keys() | search.keys() == tested  # the gate loses only the search's part
    for collection in (REAL_TOXICITY, TOXIGEN):
        parts = {part: {json.loads(line)["prompt"] for line in m.prompts(f"{collection}:{part}").read_text().splitlines()} for part in PROMPT_PARTS}
        assert all(parts.values()), collection
        assert not parts["gate"] & parts["search"] and not parts["gate"] & parts["profile"] and not parts["search"] & parts["profile"]


@pytest.mark.slow
@pytest.mark.parametrize("damage, phrase", [
    ("subject", "has no files for config 'college_biology'"),
    ("split", "lacks the split 'validation'"),
    ("prompts", "lacks prompts.jsonl"),
    ("model", "has no checkpoint 'MonetLLM/monet-vd-1.4B-100BT-hf'"),
    ("layout", "is not a resect mirror"),
    ("hub-cache", "a Hugging Face cache"),
])  # fmt: skip
def test_a_broken_mirror_is_one_line_before_any_model_loads(damage, phrase, mirror, tmp_path):
    broken = tmp_path / "broken"
    recipe, extra = "paper-mmlu-domain", ["target=biology"]
    if damage in ("layout", "hub-cache"):
        broken.mkdir()
        (broken / ("models--MonetLLM--x" if damage == "hub-cache" else "notes")).mkdir()
    else:
        shutil.copytree(mirror, broken, symlinks=True)
        mmlu_dir = broken / "datasets" / "cais" / "mmlu"
        if damage == "subject":
            shutil.rmtree(mmlu_dir / "college_biology")
        elif damage == "split":
            for f in mmlu_dir.glob("*/validation-*"):
                f.unlink()
        elif damage == "prompts":
            (broken / "datasets" / "allenai" / "real-toxicity-prompts" / "prompts.jsonl").unlink()
            recipe, extra = "paper-realtoxicity", []
        else:
            shutil.rmtree(broken / "models" / "MonetLLM" / "monet-vd-1.4B-100BT-hf")
    before = sorted(str(p) for p in broken.rglob("*"))
    res = resect("run", recipe, f"mirror={broken}", f"out={tmp_path / 'run'}", *extra, cache=tmp_path / "cache")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and phrase in lines[0] and "loading" not in res.stderr, res.stderr
    assert str(broken) in lines[0] or damage in ("model",) or "MonetLLM" in lines[0]
    assert sorted(str(p) for p in broken.rglob("*")) == before and not (tmp_path / "run").exists()


def test_a_collection_without_a_mirror_says_what_to_pass(tmp_path):
    res = resect("run", "paper-realtoxicity", f"out={tmp_path / 'run'}", cache=tmp_path / "cache")
    assert res.returncode == 2 and "mirror" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def hub_cache(root: Path, repo: str, checkpoint: Path) -> Path:
    """A Hugging Face hub cache as huggingface_hub lays it out: blobs, a snapshot of links, refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot, blobs = folder / "snapshots" / commit, folder / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for file in checkpoint.iterdir():
        import hashlib

        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return root


@pytest.mark.slow
def test_repo_ids_resolve_from_the_hugging_face_cache_offline(tmp_path):
    source = build_tiny_checkpoint(tmp_path / "src", hub_like=True, seed=8)
    cache = hub_cache(tmp_path / "hf", "MonetLLM/tiny-monet", source)
    env = {"HF_HUB_CACHE": str(cache)}
    info = resect("info", "MonetLLM/tiny-monet", "--json", cache=tmp_path / "rc", **env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["path"].startswith(str(cache))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"{w} story number {k} about a {w}.", "label": "ab"[k % 2]}) for k, w in enumerate(WORDS * 4)))
    stats = tmp_path / "s.safetensors"
    prof = resect("profile", "MonetLLM/tiny-monet", "--corpus", str(corpus), "--out", str(stats), cache=tmp_path / "rc", **env)
    assert prof.returncode == 0, prof.stderr
    from _eval_tasks import quiz_task

    tasks = quiz_task(tmp_path / "tasks")
    edit = resect("domain", "MonetLLM/tiny-monet", "--remove", "a", "--corpus", str(corpus), "--target-tasks", "resect_quiz",
                  "--include-path", str(tasks), "--min-target-drop", "0", "--limit", "3", "--out", str(tmp_path / "run"),
                  cache=tmp_path / "rc", **env)  # fmt: skip
    assert edit.returncode in (0, 1), edit.stderr[-2000:]
    missing = resect("info", "MonetLLM/not-cached", cache=tmp_path / "rc", **env)
    assert missing.returncode == 2 and "Hugging Face cache" in missing.stderr and str(cache) in missing.stderr


def test_a_local_path_with_one_slash_is_a_missing_path(tmp_path):
    (tmp_path / "run").mkdir()
    res = resect("info", "run/model", cache=tmp_path / "rc")
    assert res.returncode == 2 and "does not exist" in res.stderr and "Hub" not in res.stderr, res.stderr


@pytest.mark.slow
def test_mirror_dry_run_lists_what_a_recipe_reads(tmp_path):
    res = resect("mirror", "paper-mmlu-domain", "--out", str(tmp_path / "m"), "--dry-run", cache=tmp_path / "rc")
    assert res.returncode == 0, res.stderr
    assert "MonetLLM/monet-vd-1.4B-100BT-hf" in res.stdout and "cais/mmlu" in res.stdout and "57 configs" in res.stdout
    assert not (tmp_path / "m").exists()
    offline = resect("mirror", "paper-codemonet-language", "--out", str(tmp_path / "m"), cache=tmp_path / "rc")
    assert offline.returncode == 2 and "Hub is reachable" in offline.stderr and not (tmp_path / "m").exists()


def test_the_wmdp_corpus_is_the_target_s_forget_corpus_against_its_retain_corpus(mirror, tmp_path, monkeypatch):
    """Read from the mirror's parquet shards in order, at most DOCUMENTS_PER_LABEL each; the gated bio
    forget corpus from the user's file (its published JSONL: title, abstract, text, doi)."""
    from resect.edit.corpus import load_corpus
    from resect.run import wmdp as w
    from resect.run.mirror import Mirror

    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(w, "DOCUMENTS_PER_LABEL", 7)
    cyber = load_corpus(w.write_corpus(Mirror(mirror), "cyber", None))
    counts = {label: sum(d.label == label for d in cyber.documents) for label in cyber.labels}
    assert counts == {"cyber": 5, "cyber-retain": 5}
    forget = tmp_path / "bio_forget.jsonl"
    forget.write_text("".join(json.dumps({"title": f"t{k}", "abstract": "a", "text": f"hazard paper {k}", "doi": f"10.1/{k}"}) + "\n" for k in range(9)))
    bio = load_corpus(w.write_corpus(Mirror(mirror), "bio", str(forget)))
    texts = {label: [d.text for d in bio.documents if d.label == label] for label in bio.labels}
    assert texts["bio"] == [f"hazard paper {k}" for k in range(7)]
    assert texts["bio-retain"] == [f"bio-retain-corpus passage 0.{j}: the {WORDS[j]} exploit uses a buffer of {j} bytes." for j in range(5)] + [
        f"bio-retain-corpus passage 1.{j}: the {WORDS[j]} exploit uses a buffer of {j} bytes." for j in range(2)]  # across shards, in order


@pytest.mark.parametrize("extra, phrase", [
    (["target=bio"], "bio forget corpus is gated"),
    (["target=chem"], "Unknown WMDP target 'chem'"),
    (["target=bio", "forget_corpus={missing}"], "is not a file"),
    (["target=bio", "forget_corpus={no_text}"], "a string field 'text'"),
    (["corpus={corpus}", "forget_corpus={no_text}", "target_tasks=[wmdp_cyber]"], "forget_corpus names the forget corpus of the WMDP corpora"),
])  # fmt: skip
def test_bad_wmdp_input_is_one_line_before_any_model_loads(extra, phrase, mirror, tmp_path):
    no_text = tmp_path / "forget.jsonl"
    no_text.write_text(json.dumps({"title": "t", "abstract": "only an abstract"}) + "\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a", "label": "cyber"}) + "\n")
    words = [e.format(missing=tmp_path / "missing.jsonl", no_text=no_text, corpus=corpus) for e in extra]
    res = resect("run", "wmdp", f"mirror={mirror}", f"out={tmp_path / 'run'}", *words, cache=tmp_path / "cache")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and phrase in lines[0] and "loading" not in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_mirror_dry_run_lists_what_the_wmdp_recipe_reads(tmp_path):
    res = resect("mirror", "wmdp", "target=bio", "--out", str(tmp_path / "m"), "--dry-run", cache=tmp_path / "rc")
    assert res.returncode == 0, res.stderr
    for repo in ("MonetLLM/monet-vd-1.4B-100BT-hf", "cais/wmdp-corpora", "cais/wmdp", "cais/mmlu", "wmdp-bio-forget"):
        assert repo in res.stdout, res.stdout
    assert "bio-retain-corpus" in res.stdout and "57 configs" in res.stdout and not (tmp_path / "m").exists()


def edit_and_probe(recipe: str, examples: str, tmp_path: Path, mirror: Path) -> tuple[Path, Path, dict]:
    """The recipe's run from the mirror (FAST), then `resect probe` on it (a small LoRA); the run
    directory, the cache and probe.json."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = resect("run", recipe, f"mirror={mirror}", f"out={out}", *FAST, *RUNS[recipe], cache=cache)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    probe = resect("probe", str(out), "--examples", examples, "--epochs", "1", "--rank", "4", "--out", str(tmp_path / "p"), cache=cache)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return out, cache, json.loads((tmp_path / "p" / "probe.json").read_text())


@pytest.mark.slow
def test_the_relearning_probe_of_a_wmdp_edit_trains_on_its_forget_corpus_and_scores_wmdp(mirror, tmp_path):
    """Łucki et al.'s attack on an edit of a published checkpoint: LoRA on N forget-corpus documents,
    the run's WMDP task scored per question against the edit before the attack (no oracle, no world)."""
    out, cache, report = edit_and_probe("wmdp", "2,4", tmp_path, mirror)
    assert report["task"] == "wmdp_cyber" and report["world"] is None and set(report["models"]) == {"edited", "source"}
    rows = report["rows"]
    assert [r["setting"] for r in rows] == ["N=0 (no attack)", "N=2", "N=4"] and {r["probe"] for r in rows} == {"relearn"}
    for r in rows:
        assert r["reference"] == "edit before the attack" and r["reference_value"] == pytest.approx(rows[0]["edited"])
        assert r["recovery"] == pytest.approx(r["edited"] - rows[0]["edited"]) and r["questions"] == 6  # every WMDP-Cyber question of the fixture
    general = report["measured"]["edited"]["relearn"]["4"]["general"]
    assert "mmlu" in general and "resect_wmdp_mmlu_virology" in general
    refused = resect("probe", str(out), "--probes", "relearn,rtt", "--out", str(tmp_path / "q"), cache=cache)
    assert refused.returncode == 2 and "only the relearn probe runs" in refused.stderr and not (tmp_path / "q").exists()
    too_many = resect("probe", str(out), "--examples", "6", "--out", str(tmp_path / "q"), cache=cache)
    assert too_many.returncode == 2 and "more than the 5 'cyber' documents" in too_many.stderr, too_many.stderr


@pytest.mark.slow
def test_the_relearning_probe_scores_a_group_target_by_its_questions(mirror, tmp_path):
    """paper-mmlu-domain's target is a group of MMLU subjects: the probe pairs its questions, every
    one of the gate's part of those subjects' test split, and relearns on the category's profiling
    documents (MMLU's validation and dev questions with their answers)."""
    from resect.tasks import mmlu_part

    _, _, report = edit_and_probe("paper-mmlu-domain", "3", tmp_path, mirror)
    gate = sum(mmlu_part(q) == "gate" for s in ("college_biology", "high_school_biology")
               for q in pq.read_table(mirror / "datasets" / "cais" / "mmlu" / s / "test-00000-of-00001.parquet").column("question").to_pylist())  # fmt: skip
    assert report["task"] == "resect_mmlu_pro_biology" and gate > 0
    assert [r["questions"] for r in report["rows"]] == [gate, gate]
