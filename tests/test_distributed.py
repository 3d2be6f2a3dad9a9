"""`torchrun --nproc-per-node 2 -m resect profile` (gloo on CPU) equals the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resect.edit.profile import profile_corpus
from resect.edit.stats import RoutingStats
from resect.model.loading import load_model, load_tokenizer

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(), reason="needs torchrun and torch.distributed")
def test_two_gloo_processes_equal_one(tiny_vd, tmp_path):
    rows = [{"text": f"Line {k}: the quick brown fox jumps {k} times.", "label": "prose"} for k in range(7)]
    rows += [{"text": f"def f{k}(x): return x * {k}  # damn", "label": "code"} for k in range(6)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "two.safetensors"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "resect", "profile", str(tiny_vd),
           "--corpus", str(corpus), "--out", str(out), "--batch-size", "2", "--scorer", "profanity", "--checkpoint-every", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = RoutingStats.load(out)
    one = profile_corpus(load_model(tiny_vd), load_tokenizer(tiny_vd), corpus, batch_size=2, scorer="profanity")
    assert two.meta["world_size"] == 2
    assert two.token_counts == one.token_counts
    assert torch.allclose(two.sums, one.sums, rtol=1e-6, atol=1e-9)
    assert all(torch.allclose(two.corr[k], one.corr[k], rtol=1e-6, atol=1e-9) for k in one.corr)
    # Only rank 0 wrote; no partial state is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".two.safetensors.resect-output", "c.jsonl", "two.safetensors"]  # and rank 1 wrote nothing
