"""The built-in model and its world, shipped inside the package.

`builtin_model_path()` is what `--model` means when omitted: a small VD Monet (6 layers, d 256,
E 256, m 4, H 4, 3 routing groups) trained by `recipes/world.yaml` on the generated world of
`resect.world`. `builtin_data_path()` holds that world's profiling corpora, toxicity prompts and
evaluation sets; `task_dir()` materialises the lm-eval tasks over them (`world_<domain>`,
`world_ppl_<language>`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import CheckpointError
from ..world import DOMAINS, LANGUAGES

__all__ = ["DOMAINS", "LANGUAGES", "builtin_data_path", "builtin_model_path", "ship", "task_dir", "world_data_of"]

_HERE = Path(__file__).resolve().parent


def builtin_model_path() -> Path:
    """The shipped checkpoint folder (config.json, model.safetensors, tokenizer)."""
    path = _HERE / "model"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"The built-in model is missing from '{path}'. Reinstall resect or pass --model.")
    return path


def builtin_data_path() -> Path:
    """The shipped data folder: corpus/, prompts/, eval/ and world.json."""
    path = _HERE / "data"
    if not (path / "world.json").is_file():
        raise CheckpointError(f"The built-in data is missing from '{path}'. Reinstall resect.")
    return path


def world_data_of(model_path: str | os.PathLike) -> Path | None:
    """The world a checkpoint folder was trained on, or None.

    `resect world train --out RUN` writes RUN/model (with recipe.json) beside RUN/data (with
    world.json): such a model brings its world's corpora, prompts and quizzes, as the built-in one does.
    """
    model = Path(model_path)
    data = model.parent / "data"
    if (model / "recipe.json").is_file() and (data / "world.json").is_file():
        return data.resolve()
    return None


def task_dir(data: str | os.PathLike | None = None) -> Path:
    """An lm-eval include_path with a world's tasks (the built-in one's by default), their data_files absolute.

    Written on first use into the cache (resect.cache.cache_root()), one folder per
    data location, so an installed package never needs to write inside itself.
    """
    from ..cache import cache_root
    from ..world.tasks import write_tasks

    data = builtin_data_path() if data is None else Path(data).resolve()
    key = hashlib.sha256(str(data).encode()).hexdigest()[:12]
    return write_tasks(data, cache_root() / "tasks" / key)


def ship(run: str | os.PathLike) -> None:
    """Replace the shipped model and data with those of a `resect world train --out RUN` folder.

    The data keeps what resect reads at run time (corpus/, prompts/, eval/, world.json): the
    training text and the path-bound task YAMLs stay behind.
    """
    import shutil

    run = Path(run)
    for part in ("model", "data"):
        if not (run / part).is_dir():
            raise CheckpointError(f"'{run}' has no {part}/ folder. Pass the --out folder of 'resect world train'.")
    for name, ignore in (("model", None), ("data", shutil.ignore_patterns("train.jsonl", "tasks"))):
        tmp = _HERE / f".{name}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run / name, tmp, ignore=ignore)
        shutil.rmtree(_HERE / name, ignore_errors=True)
        tmp.rename(_HERE / name)
