"""Perplexity tasks generated from held-out text: a universal metric for labels without a quiz.

A JSONL of {"text", "label"} lines becomes one lm-eval task per label
(`loglikelihood_rolling`, metrics word_perplexity / byte_perplexity / bits_per_byte), written as
a YAML beside a JSONL of that label's texts, with absolute data paths so the folder works as an
`--include-path` from anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import yaml

from ..errors import CorpusError, OutputError, UsageError
from ..tasks import perplexity_task_config

log = logging.getLogger(__name__)


def read_labelled_texts(path: str | os.PathLike, *, text_field: str = "text", label_field: str = "label") -> dict[str, list[str]]:
    """Texts grouped by label from a JSONL file; malformed lines fail with their line number."""
    from ..files import jsonl_rows

    by_label: dict[str, list[str]] = defaultdict(list)
    for where, row in jsonl_rows(path, what="held-out text file", error=CorpusError):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str) or label_field not in row:
            raise CorpusError(f"{where}: lacks a string '{text_field}' or a '{label_field}'.")
        label = row[label_field]
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise CorpusError(f"{where}: the label {label!r} is not text (or a whole number). Write labels as text, e.g. \"python\".")
        if row[text_field].strip():
            by_label[str(row[label_field])].append(row[text_field])
    if not by_label:
        raise CorpusError(f"'{path}' holds no non-empty text. Add {{\"{text_field}\", \"{label_field}\"}} lines.")
    return dict(by_label)


def task_name(prefix: str, label: str) -> str:
    """`<prefix>_<label>` with the label reduced to [a-z0-9_] (lm-eval task names are identifiers)."""
    return f"{prefix}_{re.sub(r'[^a-z0-9]+', '_', label.lower().replace('+', 'p')).strip('_') or 'unlabelled'}"  # c++ -> cpp


def make_perplexity_tasks(
    corpus: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "ppl",
    text_field: str = "text",
    label_field: str = "label",
    max_docs: int | None = None,
    force: bool = False,
    option: str = "OUT_DIR",
) -> list[str]:
    """Write a new folder `out_dir` of `<prefix>_<label>.yaml` + `.jsonl` per label; returns the
    task names. An existing folder is replaced only with `force`, and only one of tasks resect wrote."""
    from ..outputs import claim
    from ..ownership import check_output

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
        raise OutputError(f"Task prefix '{prefix}' must be an identifier (letters, digits, underscores).")
    if max_docs is not None and max_docs < 1:
        raise UsageError(f"--max-docs must be at least 1, found {max_docs}.")
    check_output(out_dir, [corpus], kind="tasks", force=force, option=option, make_parents=True)
    texts = read_labelled_texts(corpus, text_field=text_field, label_field=label_field)
    out = Path(out_dir).expanduser().resolve()
    ordered = sorted(texts.items(), key=lambda kv: task_name(prefix, kv[0]))
    seen: set[str] = set()
    for label, _ in ordered:  # before anything is written
        name = task_name(prefix, label)
        if name in seen:
            raise CorpusError(f"Labels collide in task name '{name}'. Rename one of the labels in '{corpus}'.")
        seen.add(name)
    names = []
    with claim(out_dir, "tasks", inputs=[corpus], force=force, option=option) as c:  # named as the user gave it
        work = c.work_folder()
        with c.naming_the_output():
            for label, docs in ordered:
                name = task_name(prefix, label)
                lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[:max_docs])
                (work / f"{name}.jsonl").write_text(lines, encoding="utf-8")  # the YAML names where it will live
                (work / f"{name}.yaml").write_text(yaml.safe_dump(perplexity_task_config(name, out / f"{name}.jsonl"), sort_keys=False))
                names.append(name)
        c.finish(work)
    log.info("wrote %d perplexity tasks to %s", len(names), out)
    return names
