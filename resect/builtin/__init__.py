"""The built-in model and its world, shipped inside the package.

`builtin_model_path()` is what `--model` means when omitted: a small VD Monet (6 layers, d 256,
E 256, m 4, H 4, 3 routing groups) trained by `recipes/world.yaml` on the generated world of
`resect.world`. `builtin_data_path()` holds that world's profiling corpora, toxicity prompts and
evaluation sets (`resect.tasks.world_task_dir()` materialises the lm-eval tasks over them), and
`world_labels()` names its domains and languages, as its world.json records them. Data and the
paths to it only: this package imports nothing of resect but its errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["DOMAINS", "LANGUAGES", "builtin_data_path", "builtin_model_path", "builtin_oracle_path", "ship", "world_data_of", "world_labels"]

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


def world_labels(data: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """(domains, languages) of a world data folder (the built-in one's by default), from its world.json."""
    folder = builtin_data_path() if data is None else Path(data)
    try:
        manifest = json.loads((folder / "world.json").read_text(encoding="utf-8"))
        domains, languages = manifest["domains"], manifest["languages"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"'{folder}/world.json' does not name the world's domains and languages. Regenerate the world.") from None
    if not all(isinstance(x, list) and all(isinstance(v, str) for v in x) for x in (domains, languages)):
        raise CheckpointError(f"'{folder}/world.json' does not name the world's domains and languages. Regenerate the world.")
    return list(domains), list(languages)


def __getattr__(name: str) -> list[str]:
    """DOMAINS and LANGUAGES: the built-in world's labels, read when first asked for."""
    if name in ("DOMAINS", "LANGUAGES"):
        return world_labels()[name == "LANGUAGES"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def builtin_oracle_path(target: str) -> Path | None:
    """The shipped oracle for a target of the built-in world: the built-in recipe trained with the
    target left out (`resect world train --leave-out TARGET`), or None when none is shipped."""
    path = _HERE / "oracles" / target
    return path if (path / "config.json").is_file() else None
