"""lm-eval task folders: the index of task names, the YAMLs resect writes, the world's task folder.

Shared by profiling corpora made of task documents (resect.edit.corpus), evaluation and the gate
(resect.gate) and mirrors (resect.run.mirror):
- `resolve_tasks` turns task names, task folders and YAML files into names and include paths,
  checked against lm-eval's index (a typo costs seconds and ends with a "did you mean");
- `task_manager` builds lm-eval's TaskManager once per include set;
- `perplexity_task_config`, `quiz_task` and `ppl_task` are the YAMLs of resect's own tasks: a
  rolling-loglikelihood task over held-out text, a world's 4-option quiz and held-out code;
- `write_world_tasks` writes a world folder's tasks, `world_task_dir` the built-in world's (or
  another world's) into the cache, with absolute data paths (lm-eval resolves `data_files`
  against the working directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .builtin import builtin_data_path, world_labels
from .errors import EvalError, ResectError, unknown


@lru_cache(maxsize=8)
def task_manager(include_paths: tuple[str, ...], defaults: bool = True):
    """lm-eval's TaskManager; indexing its ~15k built-in YAMLs takes seconds, so built once per include set."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=defaults)


def task_manager_for(names: Sequence[str], include_paths: Sequence[str]):
    """The include paths alone when they define every task (fast), else with lm-eval's built-in tasks."""
    if include_paths:
        local = task_manager(tuple(include_paths), defaults=False)
        if set(names) <= set(local.all_tasks):
            return local
    return task_manager(tuple(include_paths))


def _tasks_in(folder: Path) -> list[str]:
    """Names of the tasks defined by the YAML files directly under or below a folder."""
    names = []
    for file in sorted(folder.rglob("*.yaml")):
        try:
            cfg = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError:
            continue  # lm-eval YAMLs may use !function tags; those tasks are reached by name
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
            names.append(cfg["task"])
    return names


def resolve_tasks(tasks: Sequence[str], include_path: str | os.PathLike | Sequence | None = None) -> tuple[list[str], list[str]]:
    """Task names and include paths from names, local task folders and YAML files; unknown names fail.

    A folder contributes every task its YAML files define; a YAML file contributes its `task`.
    """
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    includes = [str(Path(p).resolve()) for p in paths]
    for p in includes:
        if not Path(p).is_dir():
            raise EvalError(f"Include path '{p}' is not a folder. Pass a folder of lm-eval task YAML files.")
    names: list[str] = []
    for task in tasks:
        path = Path(task).expanduser()
        if task.endswith((".yaml", ".yml")) or path.is_dir():
            if not path.exists():
                raise EvalError(f"Task file '{task}' does not exist. Pass a task name, a task folder or a YAML file.")
            folder = path if path.is_dir() else path.parent
            found = _tasks_in(folder) if path.is_dir() else _tasks_in_file(path)
            if not found:
                raise EvalError(f"'{task}' defines no lm-eval task (no YAML with a 'task:' key). Check the path.")
            includes.append(str(folder.resolve()))
            names += found
        else:
            names.append(task)
    if not names:
        return [], list(dict.fromkeys(includes))
    world = [n for n in names if n.startswith(BUILTIN_PREFIX)]
    if world and not set(world) <= {t for p in includes for t in _tasks_in(Path(p))} and (builtin := _builtin_task_dir()):
        # The built-in world's tasks need no --include-path. First in the list: lm-eval lets a later
        # path redefine a task, so another world's tasks of the same names (RUN/data of
        # 'resect world train') are the ones evaluated.
        includes.insert(0, builtin)
    includes = list(dict.fromkeys(includes))
    manager = task_manager_for(names, includes)
    known = set(manager.all_tasks)
    missing = [n for n in names if n not in known]
    if missing and includes:  # a typo of a local task is answered with the local names near it
        _check_known(missing, set(task_manager(tuple(includes), defaults=False).all_tasks), only_if_close=True)
    _check_known(names, known)
    _check_not_inside(list(dict.fromkeys(names)), manager)
    return list(dict.fromkeys(names)), includes


def _check_not_inside(names: list[str], manager) -> None:
    """lm-eval refuses to run a task named alone and also inside a group (or tag) it runs: one line first."""
    from lm_eval.tasks._index import Kind

    index = manager._index
    wide = [n for n in names if index.get(n) is not None and index[n].kind in (Kind.GROUP, Kind.TAG)]
    inside = {group: group_members(manager, group, set()) for group in wide}
    for group in wide:
        for name in names:
            if name != group and name in inside[group]:
                raise EvalError(f"Task '{name}' is also inside '{group}', and lm-eval runs a task once. "
                                f"Gate on one of them, or on a copy of '{name}' under another name.")  # fmt: skip
    for k, a in enumerate(wide):
        for b in wide[k + 1 :]:
            if shared := sorted(inside[a] & inside[b]):
                raise EvalError(f"'{a}' and '{b}' both run '{shared[0]}', and lm-eval runs a task once. Gate on groups that share no task.")


def group_members(manager, name: str, seen: set[str]) -> set[str]:
    """Every task and group a group or tag runs, nested ones included."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager._index.get(name)
    if entry is None or name in seen:
        return set()
    seen.add(name)
    if entry.kind == Kind.TAG:
        direct = [member for member, other in manager._index.items() if name in other.tags]
    elif entry.kind == Kind.GROUP and entry.yaml_path is not None:
        config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        direct = [m if isinstance(m, str) else m.get("task") for m in config.get("task") or [] if isinstance(m, (str, dict))]
    else:
        return set()
    found = {m for m in direct if isinstance(m, str)}
    for member in list(found):
        found |= group_members(manager, member, seen)
    return found


def _check_known(names: Sequence[str], known: set[str], *, only_if_close: bool = False) -> None:
    for name in names:
        if name not in known:
            near = _near(name, known, fallback=not only_if_close)
            if near or not only_if_close:
                raise EvalError(unknown("lm-eval task", name, near) + " Add --include-path for local tasks.")

BUILTIN_PREFIX = "world_"


def _builtin_task_dir() -> str | None:
    """The built-in world's task folder, when this installation ships one."""
    try:
        return str(world_task_dir())
    except ResectError:
        return None


def _tasks_in_file(file: Path) -> list[str]:
    try:
        cfg = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EvalError(f"Task file '{file}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    return [cfg["task"]] if isinstance(cfg, dict) and isinstance(cfg.get("task"), str) else []


def _near(name: str, known: set[str], *, fallback: bool = True) -> list[str]:
    """The candidates worth listing after 'Available:' (lm-eval knows ~15k names: show the close ones)."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=10, cutoff=0.6)
    if close or not fallback:
        return close
    return sorted(k for k in known if k.split("_")[0] == name.split("_")[0])[:10]


def task_config_hash(tasks: Sequence[str], include_paths: Sequence[str]) -> str:
    """Hash of the YAML configs behind the tasks and of the local data files they read.

    Editing a task YAML or its JSONL changes the hash, so cached baseline results are not reused.
    """
    digest = hashlib.sha256()
    if not tasks:
        return digest.hexdigest()[:16]
    manager = task_manager_for(tasks, include_paths)
    for name in sorted(tasks):
        entry = manager.task_index.get(name)
        digest.update(name.encode())
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path and Path(yaml_path).is_file():
            text = Path(yaml_path).read_text()
            digest.update(text.encode())
            for data_file in _local_data_files(entry.cfg or {}):
                digest.update(hashlib.sha256(data_file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _local_data_files(cfg: dict[str, Any]) -> list[Path]:
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) or {}
    values = files.values() if isinstance(files, dict) else [files]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return [Path(v) for v in flat if isinstance(v, str) and Path(v).is_file()]


@contextlib.contextmanager
def task_data_errors(error: type[ResectError] = EvalError) -> Iterator[None]:
    """A task whose data cannot be read (offline Hub, missing or malformed file) is one line, not a traceback."""
    from datasets.exceptions import DatasetGenerationError

    try:
        yield
    except (OSError, DatasetGenerationError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(
            f"A task's data could not be loaded ({type(exc).__name__}: {cause}). Hub tasks download their data: "
            "run once with network (HF_DATASETS_OFFLINE unset), or use local tasks with absolute data_files."
        ) from None


PPL_METRICS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte"}


def perplexity_task_config(name: str, data_file: Path) -> dict:
    """The YAML config of one rolling-loglikelihood task over a JSONL of {"text"} lines."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "should_decontaminate": False,
        "metric_list": [{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in PPL_METRICS.items()],
        "metadata": {"version": 1.0},
    }


QUIZ_METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]


def _dataset(file: Path) -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(file.resolve())}}, "test_split": "test"}


def validation_name(task: str) -> str:
    """The validation twin of a world task: world_<domain> -> world_val_<domain>, world_ppl_<l> -> world_val_ppl_<l>."""
    return task.replace("world_", "world_val_", 1)


def quiz_task(domain: str, data: Path, *, validation: bool = False) -> dict:
    """A 4-option multiple-choice task over eval/quiz_<domain>.jsonl (`world_<domain>`), or over its
    validation quiz (`world_val_<domain>`), scored by accuracy."""
    name = validation_name(f"world_{domain}") if validation else f"world_{domain}"
    return multiple_choice_task(name, data / "eval" / f"{'validation_' if validation else ''}quiz_{domain}.jsonl")


def multiple_choice_task(name: str, data_file: Path, **extra: Any) -> dict:
    """A multiple-choice task over a JSONL of {"question", "choices", "answer"} lines, scored by
    accuracy (the world's quizzes; `resect probe`'s variants of them, with `extra` config keys)."""
    return {
        "task": name,
        **_dataset(data_file),
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": QUIZ_METRICS,
        "metadata": {"version": 1.0},
        **extra,
    }


def ppl_task(language: str, data: Path, *, validation: bool = False) -> dict:
    """A rolling-loglikelihood (perplexity) task over eval/code_<language>.jsonl (`world_ppl_<language>`),
    or over its validation code (`world_val_ppl_<language>`): the one builder of perplexity tasks
    (`resect ppl-tasks` writes the same)."""
    name = validation_name(f"world_ppl_{language}") if validation else f"world_ppl_{language}"
    return perplexity_task_config(name, data / "eval" / f"{'validation_' if validation else ''}code_{language}.jsonl")


def has_validation(data: str | Path) -> bool:
    """Whether a world data folder has the validation splits a search scores on (worlds generated
    before they existed do not)."""
    data = Path(data)
    DOMAINS, LANGUAGES = world_labels(data)  # noqa: N806
    return all((data / "eval" / f"validation_quiz_{d}.jsonl").is_file() for d in DOMAINS) and all(
        (data / "eval" / f"validation_code_{lang}.jsonl").is_file() for lang in LANGUAGES
    )


def write_world_tasks(data: str | Path, out: str | Path, *, located_at: str | Path | None = None) -> Path:
    """Write world_<domain>.yaml and world_ppl_<language>.yaml (and their world_val_ validation
    twins, where the data has them) into `out`; returns `out`. The YAMLs name the data where it
    lives (`located_at`, default `data`: a folder being written names its final place)."""
    from .paths import write_atomic

    data, out = Path(data), Path(out)
    DOMAINS, LANGUAGES = world_labels(data)  # noqa: N806
    at = Path(located_at) if located_at is not None else data
    out.mkdir(parents=True, exist_ok=True)
    kinds = (False, True) if has_validation(data) else (False,)
    tasks = [quiz_task(d, at, validation=v) for v in kinds for d in DOMAINS] + [ppl_task(lang, at, validation=v) for v in kinds for lang in LANGUAGES]
    for task in tasks:
        text = yaml.safe_dump(task, sort_keys=False)
        target = out / f"{task['task']}.yaml"
        if not target.is_file() or target.read_text() != text:
            write_atomic(target, text)
    return out


def world_task_names(data: str | Path | None = None) -> list[str]:
    """The gate's tasks of a world (the built-in one's by default): a quiz per domain, held-out code per language."""
    domains, languages = world_labels(builtin_data_path() if data is None else Path(data))
    return [f"world_{d}" for d in domains] + [f"world_ppl_{lang}" for lang in languages]


def world_task_dir(data: str | os.PathLike | None = None) -> Path:
    """An lm-eval include_path with a world's tasks (the built-in one's by default), their data_files absolute.

    Written on first use into the cache (resect.cache.cache_root()), one folder per
    data location, so an installed package never needs to write inside itself.
    """
    from .cache import cache_root

    data = builtin_data_path() if data is None else Path(data).resolve()
    key = hashlib.sha256(str(data).encode()).hexdigest()[:12]
    return write_world_tasks(data, cache_root() / "tasks" / key)


# ---- MMLU's questions in parts: no question serves two of profiling, a search and the gate -------------
# Profiling reads MMLU's validation and dev splits; the test split is cut by a digest of each
# question's text: a fifth for a search (`resect_mmlu_search_*`), the rest for the gate
# (`resect_mmlu_gate_*`, what the MMLU-Pro groups score). The task YAMLs name these functions.

SEARCH_SHARE = 5  # one test question in this many goes to the search


def mmlu_part(question: str) -> str:
    """'search' or 'gate': the part of MMLU's test split a question belongs to, fixed by its text."""
    return "search" if hashlib.sha256(question.strip().encode()).digest()[0] % SEARCH_SHARE == 0 else "gate"


def mmlu_search_docs(dataset):
    """lm-eval `process_docs`: the search's part of MMLU's test split."""
    return dataset.filter(lambda doc: mmlu_part(doc["question"]) == "search")


def mmlu_gate_docs(dataset):
    """lm-eval `process_docs`: the gate's part of MMLU's test split (every question the search does not read)."""
    return dataset.filter(lambda doc: mmlu_part(doc["question"]) == "gate")


__all__ = ["resolve_tasks", "task_manager", "task_manager_for", "task_config_hash", "task_data_errors", "perplexity_task_config", "quiz_task",
           "ppl_task", "validation_name", "has_validation", "write_world_tasks", "world_task_names", "world_task_dir", "BUILTIN_PREFIX",
           "mmlu_part", "mmlu_search_docs", "mmlu_gate_docs"]  # fmt: skip
