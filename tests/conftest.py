"""Shared fixtures: tiny real Monet checkpoints on disk (two shards), offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each (and their child processes)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import resect  # noqa: E402,F401  (registers Monet with the auto classes)

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
from resect.model.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def cache_of_the_session(tmp_path_factory):
    """Statistics and evaluation caches in a folder of the test session, never the user's."""
    os.environ.setdefault("RESECT_CACHE_DIR", str(tmp_path_factory.mktemp("resect-cache")))


@pytest.fixture(scope="session")
def tiny_vd(tmp_path_factory):
    """4 layers, 2 routing groups of 2 layers, E 16, H 2, vertical decomposition, 2 shards."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_vd"), decompose="vertical", seed=0)


@pytest.fixture(scope="session")
def tiny_hd(tmp_path_factory):
    """Same geometry, horizontal decomposition, 3 layers per group (last group shorter)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_hd"), decompose="horizontal", layers=5, groups=3, seed=1)


@pytest.fixture(params=["vertical", "horizontal"])
def tiny_ckpt(request, tiny_vd, tiny_hd):
    return tiny_vd if request.param == "vertical" else tiny_hd
