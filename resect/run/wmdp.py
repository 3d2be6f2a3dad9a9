"""WMDP (Li et al. 2024, "The WMDP Benchmark") as a recipe's data: the forget and retain corpora of
`cais/wmdp-corpora` read from a mirror, lm-eval's own `wmdp_bio` / `wmdp_cyber` tasks as the
target, and the collateral the WMDP paper reports (all of MMLU, and the four subjects nearest the
hazards).

Profiling reads only the corpora, never a question: the target's forget corpus, labelled with the
target, against its retain corpus, labelled `<target>-retain` (the WMDP authors' own contrast: text
of the same field without the hazardous knowledge). The gate reads WMDP's and MMLU's test splits.
`cais/wmdp-corpora` holds the cyber forget corpus and both retain corpora; the bio forget corpus is
gated (requested from its authors), so a bio edit names its file: `forget_corpus: PATH`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .spec import WMDP_CORPORA, WMDP_TARGETS

TARGET_TASKS = {target: f"wmdp_{target}" for target in WMDP_TARGETS}  # lm-eval's own tasks
SUBJECTS = ("college_biology", "virology", "college_computer_science", "computer_security")  # the WMDP paper's MMLU subjects nearest the hazards
# lm-eval's mmlu group, and the four subjects as resect's own tasks (recipes/tasks/wmdp: the same prompt
# and data as lm-eval's mmlu_<subject>, named apart so that lm-eval runs them beside the group)
COLLATERAL = ["mmlu", *(f"resect_wmdp_mmlu_{s}" for s in SUBJECTS)]
CONFIGS = {"bio": (None, "bio-retain-corpus"), "cyber": ("cyber-forget-corpus", "cyber-retain-corpus")}  # (forget, retain); None: gated
DOCUMENTS_PER_LABEL = 1000  # the cyber forget corpus's size; the bio retain corpus (60,887 papers) is read this far, in file order


def check_forget_corpus(target: str, forget_corpus: str | None) -> None:
    """The forget corpus's file of a run (bio needs one: its corpus is gated), before anything is
    read; the target itself is resect.run.spec.check_spec's to check."""
    if forget_corpus is None and CONFIGS[target][0] is None:
        raise UsageError("WMDP's bio forget corpus is gated (its authors send it on request): pass forget_corpus=PATH, "
                         "its JSONL or parquet file of {\"text\": ...} documents. target=cyber needs none.")  # fmt: skip
    if forget_corpus is not None and not Path(forget_corpus).expanduser().is_file():
        raise UsageError(f"forget_corpus '{forget_corpus}' is not a file. Pass the forget corpus's JSONL or parquet file.")


def wmdp_defaults(target: str) -> dict[str, Any]:
    """The labels and tasks of a WMDP edit of `target` (bio or cyber)."""
    from .recipebook import RECIPES_DIR

    return {"labels": [target, f"{target}-retain"], "target_tasks": [TARGET_TASKS[target]], "general_tasks": list(COLLATERAL),
            "include_path": str(RECIPES_DIR / "tasks" / "wmdp")}  # fmt: skip


def configs_of(target: str) -> set[str]:
    """The configurations of cais/wmdp-corpora an edit of `target` reads from the Hub."""
    return {c for c in CONFIGS.get(target, (None, None)) if c}


def write_corpus(mirror, target: str, forget_corpus: str | None) -> Path:
    """A profiling corpus (JSONL of text and label) of the target's forget and retain corpora, at
    most DOCUMENTS_PER_LABEL documents each, written under the mirror's work folder."""
    from .mirror import MirrorError, data_files

    folder = mirror.dataset(WMDP_CORPORA, what="WMDP's forget and retain corpora")
    forget_config, retain_config = CONFIGS[target]

    def files(config: str) -> list[Path]:
        found = data_files(folder, config).get("train", [])
        if not found:
            raise MirrorError(f"Mirror dataset '{WMDP_CORPORA}' has no train files for '{config}' (looked in {folder}/{config}). Run 'resect mirror wmdp' again.")
        return [Path(f) for f in found]

    forget = [Path(forget_corpus).expanduser()] if forget_corpus else files(str(forget_config))
    out = mirror.work / f"wmdp-{target}-corpus.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for label, sources in ((target, forget), (f"{target}-retain", files(retain_config))):
            texts = _texts(sources, DOCUMENTS_PER_LABEL)
            if not texts:
                raise MirrorError(f"{', '.join(map(str, sources))}: no text documents for '{label}'. Pass the corpus's own files.")
            f.writelines(json.dumps({"text": t, "label": label}) + "\n" for t in texts)
    return out


def _texts(files: list[Path], limit: int) -> list[str]:
    """Up to `limit` non-empty `text` values of parquet or JSONL files, in order."""
    from .mirror import MirrorError

    texts: list[str] = []
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                reader = pq.ParquetFile(file)
            except Exception as exc:  # noqa: BLE001 - not parquet, truncated: one line naming the file
                raise MirrorError(f"'{file}' is not a readable parquet file ({type(exc).__name__}). Download it again.") from None
            if "text" not in reader.schema_arrow.names:
                raise MirrorError(f"'{file}' has no 'text' column (it has {', '.join(reader.schema_arrow.names)}): not a WMDP corpus file.")
            for batch in reader.iter_batches(columns=["text"], batch_size=256):
                texts += [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip()]
                if len(texts) >= limit:
                    return texts[:limit]
        else:
            from ..files import jsonl_rows

            for where, row in jsonl_rows(file, what="corpus file", error=MirrorError):
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise MirrorError(f"{where}: expected an object with a string field 'text' (a WMDP corpus line).")
                if row["text"].strip():
                    texts.append(row["text"])
                if len(texts) >= limit:
                    return texts
    return texts


__all__ = ["COLLATERAL", "TARGET_TASKS", "WMDP_CORPORA", "check_forget_corpus", "configs_of", "wmdp_defaults", "write_corpus"]
