"""Labelled text corpora for profiling: documents with a label and, optionally, a score.

Sources (`load_corpus(spec)`):
- a JSONL file, one `{"text": ..., "label": ..., "score": ..., "spans": ...}` object per line;
  `score` is optional and is either one number for the whole text or a list with one number per
  token; `spans` is optional, a list of [start, end) character ranges of the text that carry the
  label's knowledge (a fact's value, a question's answer): attribution and mask tuning count the
  loss there;
- a folder with one sub-folder per label holding `*.txt` files (one document each), or
  `<label>.txt` files directly in the folder (one document each);
- a corpus YAML (see `recipes/corpora/`): a list of `sources`, each a `path` (JSONL or folder,
  relative to the YAML file), a `builtin` path inside the built-in data folder, or an lm-eval
  `task` (a name or a list; with `include_path`, `split` and `limit`); optional `label` (a fixed
  label for every document of the source) and field names `text_field`, `label_field`, `score_field`;
- `task:NAME[,NAME...]`: the documents of lm-eval tasks (question plus correct answer), labelled
  by task name.

A corpus keeps its documents in source order; sampling and batching are the profiler's job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CorpusError

log = logging.getLogger(__name__)

Score = float | list[float] | None


@dataclass(frozen=True)
class Document:
    text: str
    label: str
    score: Score = None
    spans: tuple[tuple[int, int], ...] | None = None  # [start, end) characters the label's knowledge sits in


@dataclass
class Corpus:
    """Documents in a fixed order, and where they came from."""

    documents: list[Document]
    source: str = ""

    @property
    def labels(self) -> list[str]:
        """Distinct labels, sorted (the order of the statistics' label axis)."""
        return sorted({d.label for d in self.documents})

    @property
    def has_scores(self) -> bool:
        return any(d.score is not None for d in self.documents)

    def fingerprint(self) -> str:
        """sha256 over every (label, text, score), in order: 16 hex digits."""
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(json.dumps([doc.label, doc.text, doc.score]).encode())
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.documents)


def _score(value: Any, where: str) -> Score:
    if value is None:
        return None
    from ..checks import RANGES

    low, high = RANGES["score"][:2]
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high  # noqa: E731  (NaN, inf: no)
    if isinstance(value, bool) or isinstance(value, (int, float)):
        if not isinstance(value, bool) and not finite(value):
            raise CorpusError(f"{where}: score {value!r} is not a finite number in [{low:g}, {high:g}].")
        return float(value)
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if not all(finite(v) for v in value):
            raise CorpusError(f"{where}: a per-token score is not a finite number in [{low:g}, {high:g}].")
        return [float(v) for v in value]
    raise CorpusError(f"{where}: score must be a number or a list of numbers (one per token), found {type(value).__name__}.")


def _spans(value: Any, text: str, where: str) -> tuple[tuple[int, int], ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in s) and 0 <= s[0] < s[1] <= len(text)
        for s in value
    )
    if not ok:
        raise CorpusError(f"{where}: 'spans' must be a list of [start, end] character ranges inside the text (0 <= start < end <= {len(text)}).")
    return tuple((s, e) for s, e in value)


def read_jsonl(
    path: Path, *, label: str | None = None, text_field: str = "text", label_field: str = "label", score_field: str = "score"
) -> list[Document]:
    """Documents of a JSONL file; a fixed `label` overrides the label field."""
    from ..files import jsonl_rows

    docs = []
    for where, row in jsonl_rows(path, what="corpus file", error=CorpusError):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise CorpusError(f"{where}: expected an object with a string field '{text_field}'.")
        doc_label = label if label is not None else row.get(label_field)
        if doc_label is None or doc_label == "":
            raise CorpusError(f"{where}: missing label field '{label_field}' (or give the source a fixed label).")
        if isinstance(doc_label, bool) or not isinstance(doc_label, (str, int)):
            raise CorpusError(f"{where}: the label {doc_label!r} is not text (or a whole number). Write labels as text, e.g. \"biology\".")
        text = row[text_field]
        docs.append(Document(text, str(doc_label), _score(row.get(score_field), where), _spans(row.get("spans"), text, where)))
    return docs


def read_folder(path: Path, *, label: str | None = None) -> list[Document]:
    """`<label>/*.txt` sub-folders and `<label>.txt` files, each file one document, sorted by name."""
    from ..files import read_text

    text = lambda f: read_text(f, what="corpus text file", error=CorpusError)  # noqa: E731  (not UTF-8: refused, naming the byte)
    docs = []
    for entry in sorted(path.iterdir()):
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CorpusError(f"Corpus folder entry '{entry}' has a name that is not UTF-8 (labels come from names). Rename it.") from None
        if entry.is_dir():
            docs += [Document(text(f), label or entry.name) for f in sorted(entry.glob("*.txt"))]
        elif entry.suffix == ".txt":
            docs.append(Document(text(entry), label or entry.stem))
    return docs


SPLITS = {"train": ("has_training_docs", "training_docs"), "validation": ("has_validation_docs", "validation_docs"), "test": ("has_test_docs", "test_docs"),
          "dev": (None, "fewshot_docs")}  # dev: the task's few-shot split (MMLU's dev)  # fmt: skip


def read_tasks(
    names: list[str], *, include_path: str | list[str] | None = None, label: str | None = None, limit: int | None = None, split: str | None = None
) -> list[Document]:
    """Documents of lm-eval tasks: the prompt followed by the correct answer, labelled by task name.

    `split`: train | validation | test (default: test, else validation); `limit`: documents per task.
    """
    try:
        from lm_eval.tasks import get_task_dict
    except ImportError:
        raise CorpusError("Task corpora need lm-eval: pip install 'resect[eval]'.") from None
    from ..errors import unknown
    from ..tasks import task_data_errors, task_manager_for

    if split is not None and split not in SPLITS:
        raise CorpusError(unknown("split", split, SPLITS))
    manager = task_manager_for(names, [include_path] if isinstance(include_path, str) else list(include_path or []))
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        raise CorpusError(unknown("lm-eval task", missing[0], manager.all_tasks))
    docs = []
    with task_data_errors(CorpusError):
        for name, task in sorted(_flatten(get_task_dict(names, manager)).items()):
            for k, doc in enumerate(_split_docs(task, name, split)):
                if limit is not None and k >= limit:
                    break
                text, spans = _task_text(task, doc)
                docs.append(Document(text, label or name, spans=spans))
    return docs


def _split_docs(task: Any, name: str, split: str | None) -> Any:
    if split is None:
        split = "test" if task.has_test_docs() else "validation"
    has, get = SPLITS[split]
    available = bool(getattr(task.config, "fewshot_split", None)) if has is None else getattr(task, has)()
    if not available:
        raise CorpusError(f"lm-eval task '{name}' has no {split} split. Choose another split for it in the corpus recipe.")
    return getattr(task, get)() or []


def _flatten(tasks: dict) -> dict:
    out = {}
    for key, value in tasks.items():
        if isinstance(value, dict):
            out.update(_flatten(value))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = value
    return out


def _task_text(task: Any, doc: dict) -> tuple[str, tuple[tuple[int, int], ...] | None]:
    """Prompt plus the correct answer (index into the choices for multiple choice), and the answer's span."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    if isinstance(target, list):
        target = target[0] if target else ""
    sep = task.config.target_delimiter if hasattr(task.config, "target_delimiter") else " "
    if not str(target):
        return str(text), None
    start = len(f"{text}{sep}")
    return f"{text}{sep}{target}", ((start, start + len(str(target))),)


def parse_recipe(path: Path) -> dict:
    """A corpus YAML, checked (every source well formed) but not read."""

    from ..files import JSON_BYTES, load_yaml, read_text

    text = read_text(path, what="corpus recipe", error=CorpusError, max_bytes=JSON_BYTES)
    recipe = load_yaml(text, where=f"Corpus recipe '{path}'", error=CorpusError)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sources"), list) or not recipe["sources"]:
        raise CorpusError(f"'{path}': a corpus recipe needs a non-empty 'sources' list (each with path, builtin or task).")
    for k, source in enumerate(recipe["sources"]):
        check_source(source, f"{path} source {k}")
    return recipe


def read_recipe(path: Path) -> tuple[list[Document], str]:
    """Documents of a corpus YAML (sources relative to the YAML's folder)."""
    recipe = parse_recipe(path)
    docs = []
    for k, source in enumerate(recipe["sources"]):
        docs += _read_source(source, path.parent, f"{path} source {k}")
    return docs, str(recipe.get("name", path.stem))


SOURCE_KINDS = ("path", "builtin", "task")
SOURCE_KEYS = {*SOURCE_KINDS, "label", "text_field", "label_field", "score_field", "include_path", "split", "limit"}


def check_source(source: Any, where: str) -> None:
    """A recipe source is a mapping with exactly one of path / builtin / task and known keys only."""
    from ..errors import unknown

    if not isinstance(source, dict):
        raise CorpusError(f"{where}: expected a mapping with 'path', 'builtin' or 'task'.")
    for key in source:
        if key not in SOURCE_KEYS:
            raise CorpusError(f"{where}: {unknown('key', str(key), SOURCE_KEYS)}")
    kinds = [k for k in SOURCE_KINDS if k in source]
    if len(kinds) != 1:
        raise CorpusError(f"{where}: a source needs exactly one of 'path', 'builtin' or 'task', found {kinds or 'none'}.")


def _read_source(source: Any, base: Path, where: str) -> list[Document]:
    check_source(source, where)
    label = None if source.get("label") is None else str(source["label"])
    fields = {k: source[k] for k in ("text_field", "label_field", "score_field") if k in source}
    if "task" in source:
        names = source["task"] if isinstance(source["task"], list) else [source["task"]]
        include = source.get("include_path")
        include = str(_builtin_tasks() if include == "builtin" else base / include) if include else None
        split = None if source.get("split") is None else str(source["split"])
        return read_tasks([str(n) for n in names], include_path=include, label=label, limit=source.get("limit"), split=split)
    if "builtin" in source:
        from ..builtin import builtin_data_path

        target = builtin_data_path() / str(source["builtin"])
    else:
        target = base / os.path.expanduser(str(source["path"]))
    return _read_path(target, label=label, **fields)


def _builtin_tasks() -> Path:
    from ..tasks import world_task_dir

    return world_task_dir()


def _read_path(path: Path, *, label: str | None = None, **fields: str) -> list[Document]:
    if path.is_dir():
        return read_folder(path, label=label)
    if path.is_file():
        return read_jsonl(path, label=label, **fields)
    raise CorpusError(f"Corpus path '{path}' does not exist. Pass a JSONL file, a folder of text files or a corpus YAML.")


def load_corpus(spec: str | os.PathLike | Corpus) -> Corpus:
    """A corpus from a JSONL path, a folder, a recipe YAML or `task:NAME[,NAME]`; CorpusError when empty."""
    if isinstance(spec, Corpus):
        corpus = spec
    elif str(spec).startswith("task:"):
        names = [n for n in str(spec)[5:].split(",") if n]
        corpus = Corpus(read_tasks(names), source=str(spec))
    else:
        path = Path(spec).expanduser()
        if path.suffix in (".yaml", ".yml") and path.is_file():
            docs, _ = read_recipe(path)
            corpus = Corpus(docs, source=str(path))
        else:
            corpus = Corpus(_read_path(path), source=str(path))
    if not any(d.text.strip() for d in corpus.documents):
        raise CorpusError(f"Corpus '{corpus.source}' has no text. Give it at least one non-empty document per label.")
    return corpus


__all__ = ["Corpus", "Document", "load_corpus", "parse_recipe", "read_jsonl", "read_folder", "read_recipe", "read_tasks"]
