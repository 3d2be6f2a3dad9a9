"""Making a mirror: what a run of a recipe reads from the Hub (its checkpoint, its lm-eval tasks'
datasets, the collections it names), and fetching exactly that into a mirror folder (resect.run.mirror
reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .mirror import PAPER_LANGUAGES, REAL_TOXICITY, STACK_SMOL, TOXIGEN, _readme_configs
from .wmdp import TARGET_TASKS, WMDP_CORPORA, configs_of, wmdp_defaults


@dataclass
class Download:
    """One repository to fetch into a mirror: a checkpoint, or some configs of a dataset."""

    repo: str
    kind: str  # "model" | "dataset"
    configs: set[str | None]  # dataset configurations needed (None: the whole default one)
    patterns: list[str] | None = None  # files to fetch, when known without the repository's README
    note: str | None = None  # kind "manual": what the user must copy by hand


MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]


def downloads(spec) -> list[Download]:
    """What a run of `spec` (a RunSpec) reads from the Hub: its checkpoint, the datasets of its
    lm-eval tasks (corpus task sources included) and the collections it names."""
    from .defaults import published_defaults
    from .spec import MIRRORED_COLLECTIONS

    out: dict[tuple[str, str], Download] = {}
    if spec.model and not Path(spec.model).exists() and spec.model.count("/") == 1:
        out[("model", spec.model)] = Download(spec.model, "model", {None}, MODEL_FILES)
    custom = any(v is not None for v in (spec.corpus, spec.target_tasks, spec.general_tasks, spec.toxicity_prompts))
    defaults = published_defaults(spec) if not custom and spec.kind == "domain" else {}
    tasks = list(spec.target_tasks or defaults.get("target_tasks", [])) + list(spec.general_tasks or defaults.get("general_tasks", []))
    includes = [p for value in (spec.include_path, defaults.get("include_path")) for p in ([value] if isinstance(value, str) else value or [])]
    corpus = spec.corpus or defaults.get("corpus")
    if corpus == WMDP_CORPORA and spec.target in TARGET_TASKS:
        found = wmdp_defaults(spec.target)
        tasks = list(spec.target_tasks or found["target_tasks"]) + list(spec.general_tasks or found["general_tasks"])
        includes.append(found["include_path"])
        out[("dataset", WMDP_CORPORA)] = Download(WMDP_CORPORA, "dataset", configs_of(spec.target))
        if spec.forget_corpus is None and spec.target == "bio":
            out[("manual", "wmdp-bio-forget")] = Download("wmdp-bio-forget", "manual", {None}, note=(
                "request WMDP's bio forget corpus from its authors (it is gated) and pass its file: forget_corpus=PATH"))
    if corpus and Path(corpus).suffix in (".yaml", ".yml") and Path(corpus).is_file():
        from ..edit.corpus import parse_recipe

        for source in parse_recipe(Path(corpus))["sources"]:
            if "task" in source:
                tasks += source["task"] if isinstance(source["task"], list) else [source["task"]]
    for path, name in _task_datasets(tasks, includes):
        out.setdefault(("dataset", path), Download(path, "dataset", set())).configs.add(name)
    named = {corpus, *(str(v).partition(":")[0] for v in (spec.toxicity_prompts, spec.profile_prompts, spec.validation_prompts) if v)}
    for collection in named & set(MIRRORED_COLLECTIONS):
        if collection == REAL_TOXICITY:
            out[("dataset", REAL_TOXICITY)] = Download(REAL_TOXICITY, "dataset", {None}, ["prompts.jsonl", "README.md"])
        elif collection == STACK_SMOL:
            out[("dataset", STACK_SMOL)] = Download(STACK_SMOL, "dataset", {None}, [f"data/{lang}/*" for lang in PAPER_LANGUAGES])
        elif collection == TOXIGEN:
            note = f"copy the prompts/ folder of github.com/microsoft/TOXIGEN to MIRROR/datasets/{TOXIGEN}/prompts"
            out[("manual", TOXIGEN)] = Download(TOXIGEN, "manual", {None}, note=note)
    return list(out.values())


def _task_datasets(names: list[str], includes: list[str]) -> set[tuple[str, str | None]]:
    """(dataset_path, dataset_name) of every Hub dataset the tasks (groups and tags expanded) read."""
    if not names:
        return set()
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    from ..tasks import task_manager

    manager = task_manager(tuple(str(Path(p).resolve()) for p in includes))
    found, seen, todo = set(), set(), list(names)
    while todo:
        name = todo.pop()
        entry = manager._index.get(name)
        if name in seen or entry is None:
            continue
        seen.add(name)
        if entry.kind == Kind.TAG:
            todo += [member for member, other in manager._index.items() if name in other.tags]
        elif entry.yaml_path is not None:
            config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
            if entry.kind == Kind.GROUP:
                todo += [m if isinstance(m, str) else m.get("task") for m in config.get("task") or [] if isinstance(m, (str, dict))]
            elif isinstance(config.get("dataset_path"), str) and "/" in config["dataset_path"]:
                found.add((config["dataset_path"], config.get("dataset_name")))
    return found


def fetch(items: list[Download], out: Path) -> list[str]:
    """Download into the mirror `out`; returns what a user must still copy by hand."""
    from huggingface_hub import hf_hub_download, snapshot_download

    manual = []
    for item in items:
        if item.kind == "manual":
            manual.append(str(item.note).replace("MIRROR", str(out)))
            continue
        target = out / ("models" if item.kind == "model" else "datasets") / item.repo
        patterns = item.patterns
        if patterns is None:  # the configs' files, as the dataset's README declares them
            hf_hub_download(item.repo, "README.md", repo_type="dataset", local_dir=target)
            declared = _readme_configs(target)
            patterns = ["README.md"]
            for config in item.configs:
                entry = declared.get(config or "default")
                patterns += [p for ps in entry.values() for p in ps] if entry else [f"{config}/*"] if config else ["*"]
        snapshot_download(item.repo, repo_type="model" if item.kind == "model" else "dataset", local_dir=target, allow_patterns=patterns)
    return manual


__all__ = ["Download", "downloads", "fetch"]
