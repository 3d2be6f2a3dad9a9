"""Device and dtype from every command, one model in memory at a time, fingerprints that do not depend
on how a checkpoint was loaded, a baseline cache that answers without loading, progress, resume."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from _cli import run_cli
from _eval_tasks import quiz_task

import resect.model.loading
from resect.errors import UsageError
from resect.model.fingerprint import checkpoint_fingerprint, model_fingerprint
from resect.model.loading import load_model, resolve_placement
from resect.model.tiny import build_tiny_checkpoint


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RESECT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "ckpt", hub_like=True, seed=4)


def test_auto_placement_and_refusals():
    assert resolve_placement("auto", "auto") == (("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32"))
    assert resolve_placement("cpu", "bfloat16") == ("cpu", "bfloat16")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_placement("cuda", "auto")
    with pytest.raises(UsageError, match="not a torch device"):
        resolve_placement("gpu0", "auto")
    with pytest.raises(UsageError, match="Unknown --dtype 'f16'"):
        resolve_placement("cpu", "f16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_fingerprint_is_the_checkpoint_s_whatever_the_load(hub_like, dtype):
    """Read from the files (no load), and equal to the fingerprint of the model's own tensors in
    memory, in every dtype: statistics taken in bf16 serve a float32 run and the reverse."""
    on_disk = checkpoint_fingerprint(hub_like)
    model = load_model(hub_like, dtype=dtype)
    assert model_fingerprint(model) == on_disk
    model.resect_fingerprint = None  # the same digest taken from the tensors in memory
    assert model_fingerprint(model) == on_disk


def test_fingerprint_tells_checkpoints_apart(tiny_vd, hub_like):
    assert checkpoint_fingerprint(tiny_vd) != checkpoint_fingerprint(hub_like)


def test_a_float32_load_of_a_bf16_checkpoint_keeps_no_mapping_of_the_file(hub_like):
    """The file is read in its own dtype and converted tensor by tensor; no buffer keeps a view of it."""
    model = load_model(hub_like, dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = load_model(hub_like, dtype="bfloat16").state_dict()
    assert all(torch.equal(t, reference[n].to(t.dtype)) for n, t in model.state_dict().items())
    gc.collect()
    maps = open("/proc/self/maps").read() if resect.model.loading.Path("/proc/self/maps").exists() else ""
    mine = [line for line in maps.splitlines() if str(hub_like) in line]
    assert len(mine) <= 1  # the bf16 model above still maps it (zero-copy); the float32 one does not add one


def test_bad_device_and_dtype_are_refused_before_any_model_loads(tiny_vd, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "hello there", "label": "a"}) + "\n")
    tasks = quiz_task(tmp_path / "tasks")
    commands = [
        ["profile", str(tiny_vd), "--corpus", str(corpus), "--out", str(tmp_path / "s.st"), "--device", "npu"],
        ["eval", str(tiny_vd), "--tasks", "resect_quiz", "--include-path", str(tasks), "--device", "npu"],
        ["toxicity-eval", str(tiny_vd), "--toxicity-prompts", str(corpus), "--device", "npu"],
        ["domain", "--remove", "biology", "--device", "npu", "--out", str(tmp_path / "run")],
        ["run", "world-domain", "target=law", "device=npu", f"out={tmp_path / 'run2'}"],
        ["domain", "--remove", "biology", "--dtype", "f16", "--out", str(tmp_path / "run")],
    ]
    if not torch.cuda.is_available():
        commands.append(["domain", "--remove", "biology", "--device", "cuda", "--out", str(tmp_path / "run")])
    for args in commands:
        code, _, err = run_cli(args, capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "tasks"]


def test_statistics_of_another_checkpoint_are_refused_without_loading(tiny_vd, tiny_hd, tmp_path, capsys, monkeypatch):
    from resect.edit.profile import profile_corpus
    from resect.model.loading import load_tokenizer

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"line {k} of text", "label": "ab"[k % 2]}) for k in range(8)))
    stats = profile_corpus(load_model(tiny_vd), load_tokenizer(tiny_vd), corpus, batch_size=4)
    stats.save(tmp_path / "s.safetensors")
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    args = ["select", "--stats", str(tmp_path / "s.safetensors"), "--rule", "skew", "--target", "a", "--min-tokens", "1",
            "--out", str(tmp_path / "m.json")]  # fmt: skip
    code, _, err = run_cli([*args, str(tiny_hd)], capsys, monkeypatch)
    assert code == 2 and "computed on model" in err, err
    assert not (tmp_path / "m.json").exists()
    code, _, err = run_cli([*args, str(tiny_vd)], capsys, monkeypatch)
    assert code == 0, err


def test_an_edit_loads_the_model_twice_at_most_and_never_holds_two(monkeypatch, tmp_path):
    """Profiling, selection and the baseline share one load; the written checkpoint is loaded once
    for its own evaluation, after the first model is gone."""
    from resect.run.pipeline import run_edit
    from resect.run.spec import RunSpec

    real, alive, loads = resect.model.loading.load_model, [], []

    def counting(*args, **kwargs):
        live = [ref for ref in alive if ref() is not None]
        gc.collect()
        assert not [ref for ref in live if ref() is not None], "a second model was loaded while the first was alive"
        model = real(*args, **kwargs)
        loads.append(str(args[0] if args else kwargs.get("model")))
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(resect.model.loading, "load_model", counting)
    spec = RunSpec("domain", "biology", max_tokens_per_label=300, limit=4, out=str(tmp_path / "run"))
    result = run_edit(spec)
    assert result.verdict in ("pass", "fail") and len(loads) == 2
    assert loads[1].endswith("checkpoint")
    again = run_edit(RunSpec("domain", "biology", max_tokens_per_label=300, limit=4, out=str(tmp_path / "run2")))
    assert len(loads) == 3 and again.stats_cached  # statistics and baseline from the cache: only the edited checkpoint loads
    assert json.loads((tmp_path / "run2" / "verify.json").read_text())["baseline"]["cached"] is True
    assert again.mask_total == result.mask_total and again.report.rows == result.report.rows


def test_the_baseline_cache_key_is_one_per_request(tiny_vd, tmp_path, monkeypatch):
    """--limit 10 and 10.0 are one request; a hit neither loads the model nor reads its weights."""
    from resect.gate.verify import verify

    tasks = quiz_task(tmp_path / "tasks")
    gate = dict(target_tasks=["resect_quiz"], min_target_drop=0.0, include_path=tasks)
    assert verify(tiny_vd, tiny_vd, limit=3.0, **gate)["baseline"]["cached"] is False
    loads = []
    real = resect.model.loading.load_model
    monkeypatch.setattr(resect.model.loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert verify(tiny_vd, tiny_vd, limit=3, **gate)["baseline"]["cached"] is True
    assert len(loads) == 1  # the edited model only


def test_eval_and_verify_share_the_cache(tiny_vd, tmp_path, capsys, monkeypatch):
    from resect.gate.verify import verify

    tasks = quiz_task(tmp_path / "tasks")
    code, out, err = run_cli(["eval", str(tiny_vd), "--tasks", "resect_quiz", "--include-path", str(tasks), "--limit", "3.0"], capsys, monkeypatch)
    assert code == 0, err
    report = verify(tiny_vd, tiny_vd, target_tasks=["resect_quiz"], min_target_drop=0.0, include_path=tasks, limit=3)
    assert report["baseline"]["cached"] is True
    assert report["results"]["baseline"]["results"] == json.loads(out[: out.rindex("}") + 1])["results"]


def test_interrupted_profiling_of_an_edit_resumes(monkeypatch, tmp_path):
    """Ctrl-C during an edit's profiling keeps its partial statistics; the rerun resumes them and
    ends with the statistics of an uninterrupted run."""
    import resect.run.pipeline as pipeline
    from resect.edit.corpus import load_corpus
    from resect.edit.profile import profile_corpus
    from resect.model.loading import load_tokenizer
    from resect.run.pipeline import profile_cached, stats_cache_dir
    from resect.run.plan import plan
    from resect.run.spec import RunSpec

    monkeypatch.setattr(pipeline, "PARTIAL_EVERY", 1)
    p = plan(RunSpec("domain", "biology", max_tokens_per_label=300, out=str(tmp_path / "run")))
    model, tok = load_model(p.model_path), load_tokenizer(p.model_path)
    corpus = load_corpus(p.corpus)

    def interrupt(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_cached(model, tok, corpus, p=p, progress=interrupt)
    partial = list(stats_cache_dir().glob("*.partial"))
    assert len(partial) == 1
    seen = []
    stats, cached = profile_cached(model, tok, corpus, p=p, progress=lambda done, total: seen.append(done))
    assert not cached and seen[0] > total_tokens(stats) // 2  # it started where the interrupted run stopped
    assert not partial[0].exists()
    fresh = profile_corpus(model, tok, corpus, max_tokens_per_label=300, batch_size=p.spec.batch_size)
    assert fresh.token_counts == stats.token_counts and torch.allclose(fresh.sums, stats.sums, rtol=1e-6, atol=1e-9)


def total_tokens(stats) -> int:
    return sum(stats.token_counts.values())


def test_progress_lines_in_a_log():
    import io

    from resect.progress import Reporter, describe

    assert describe("profiling", "tok", 1200, 4800, 8.0) == "profiling: 1,200/4,800 tok (25%), 150 tok/s, 0:24 left"
    assert describe("evaluating", "requests", 40, 40, 100.0).endswith("0.4 requests/s, 1:40 in all")
    stream = io.StringIO()
    r = Reporter(stream, every=0.0, live=False)
    meter = r.meter("generating", "prompts")
    for k in range(1, 4):
        meter(k, 3)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("generating: 3/3 prompts (100%)") and len(lines) == 3


def test_batched_sampling_draws_each_prompt_s_own_samples():
    """Prompts decoded together give the samples each gives alone (its own seeded generator)."""
    from resect.gate.toxicity import sample_prompts
    from resect.model.loading import load_tokenizer

    model, tok = load_model(None), load_tokenizer(None)
    prompts, seeds = ["You are a", "The river", "Honestly, I think", "Listen"], [5, 6, 7, 8]
    options = dict(samples=3, max_new_tokens=6, temperature=1.0, top_p=0.9)
    together = sample_prompts(model, tok, prompts, seeds, **options)
    alone = [sample_prompts(model, tok, [p], [s], **options)[0] for p, s in zip(prompts, seeds)]
    assert together == alone
    assert together != sample_prompts(model, tok, prompts, [s + 1 for s in seeds], **options)
