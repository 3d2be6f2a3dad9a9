"""Local mirrors: what the paper's recipes read from the Hub, as files a user carries to a machine
without network, in the published layouts.

    MIRROR/
      models/<org>/<name>/         a checkpoint as its Hub repository holds it (config.json, weights, tokenizer)
      datasets/<org>/<name>/       a dataset repository's files as the Hub holds them, e.g.
                                   cais/mmlu/<subject>/{test,validation,dev}-00000-of-00001.parquet
                                   allenai/real-toxicity-prompts/prompts.jsonl
                                   bigcode/the-stack-smol/data/<language>/data.json
      datasets/toxigen/prompts/    the prompts folder of github.com/microsoft/TOXIGEN ({hate,neutral}_<group>_1k.txt)

`resect run RECIPE mirror=MIRROR` (or `--mirror` on domain, language, toxicity) reads a repo id's
checkpoint from models/, every lm-eval task whose dataset is a mirrored Hub dataset from the
mirror's files (the task's own prompt and metric, its data files rewritten), and the prompt and
code collections the recipes name from datasets/. `resect mirror RECIPE --out MIRROR` downloads
exactly that where the network allows. Files resect derives (task configs pointing at the mirror,
filtered prompts, code corpora) are written under the cache, from the mirror, at every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResectError

log = logging.getLogger(__name__)

DATA_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")
REAL_TOXICITY = "allenai/real-toxicity-prompts"
TOXIGEN = "toxigen"
STACK_SMOL = "bigcode/the-stack-smol"
HELD_OUT = 20  # files per language the code corpus keeps out of profiling, for held-out perplexity
PAPER_LANGUAGES = ("python", "c++", "java", "javascript", "lua", "php")  # CodeMonet's, as the-stack-smol names them


# A collection's prompts in three disjoint parts, fixed by a digest of each prompt's text, so that
# no prompt serves two of profiling, a search and the gate: a fifth each for profiling and a search,
# the rest for the gate.
PROMPT_PARTS = ("gate", "search", "profile")


def prompt_part(text: str) -> str:
    bucket = hashlib.sha256(text.encode()).digest()[0] % 10
    return "profile" if bucket < 2 else "search" if bucket < 4 else "gate"


def local_prompts(name: str, mirror: Mirror | None) -> str:
    """A prompts file as named, or (with a mirror) the part of a mirrored collection it names,
    e.g. allenai/real-toxicity-prompts:search, written from the mirror."""
    if mirror is None or Path(name).is_file() or name.partition(":")[0] not in (REAL_TOXICITY, TOXIGEN):
        return name
    return str(mirror.prompts(name))


class MirrorError(ResectError):
    """A mirror folder that lacks what a run needs, or is not a mirror."""


@dataclass
class Localized:
    """What a run reads from a mirror: an include path of task configs, and the data files made."""

    include_path: Path
    tasks: list[str]


class Mirror:
    """A mirror folder, checked on construction (models/ or datasets/ must be there)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise MirrorError(f"Mirror '{root}' is not a folder. Pass the folder 'resect mirror RECIPE --out DIR' made.")
        if not (self.root / "models").is_dir() and not (self.root / "datasets").is_dir():
            kind = " (a Hugging Face cache: pass its snapshot folders, or the folder 'resect mirror' made)" if any(
                p.name.startswith(("models--", "datasets--")) for p in self.root.iterdir()
            ) else ""
            raise MirrorError(f"'{root}' is not a resect mirror{kind}: it has neither models/ nor datasets/. See 'resect mirror --help'.")
        self.work = _work_folder(self.root)

    # ------------------------------------------------------------------ checkpoints
    def model(self, repo_id: str) -> Path:
        folder = self.root / "models" / repo_id
        if not (folder / "config.json").is_file():
            raise MirrorError(f"Mirror '{self.root}' has no checkpoint '{repo_id}' (looked for {folder}/config.json). Run 'resect mirror' for it.")
        return folder

    def dataset(self, repo: str, *, what: str) -> Path:
        folder = self.root / "datasets" / repo
        if not folder.is_dir():
            raise MirrorError(f"Mirror '{self.root}' has no dataset '{repo}' ({what}; looked in {folder}). Run 'resect mirror' for it.")
        return folder

    # ------------------------------------------------------------------ lm-eval tasks
    def localize(self, names: list[str], include_paths: list[str] | None = None, *, splits: tuple[str, ...] = ()) -> Localized:
        """Task configs that read the mirror's files: every task (groups expanded) whose dataset is
        a Hub dataset is written as an `include:` of its own config with local data files; groups
        are written the same way, so the folder alone defines every task named. `splits`: splits a
        reader needs beyond those the tasks' configs name (a corpus's validation split)."""
        from ..tasks import task_manager

        manager = task_manager(tuple(str(p) for p in include_paths or ()))  # with lm-eval's own tasks: groups reach them
        out = self.work / "tasks"
        out.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()
        for name in names:
            self._write_task(manager, name, out, written, splits)
        return Localized(out, sorted(written))

    def _write_task(self, manager, name: str, out: Path, written: set[str], splits: tuple[str, ...]) -> None:
        from lm_eval.tasks._index import Kind
        from lm_eval.tasks._yaml_loader import load_yaml

        if name in written:
            return
        entry = manager._index.get(name)
        if entry is None:
            from ..errors import EvalError, unknown

            raise EvalError(unknown("lm-eval task", name, manager.all_tasks))
        written.add(name)
        if entry.kind == Kind.TAG:
            for member, other in manager._index.items():
                if name in other.tags:
                    self._write_task(manager, member, out, written, splits)
            return
        if entry.yaml_path is None or out in Path(entry.yaml_path).resolve().parents:
            return  # made in Python, or made here already (held-out code): nothing to point at the mirror
        config = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        override: dict[str, Any] = {"include": str(Path(entry.yaml_path).resolve())}
        if entry.kind == Kind.GROUP:
            for member in config.get("task") or []:
                member_name = member if isinstance(member, str) else member.get("task") if isinstance(member, dict) else None
                if isinstance(member_name, str):
                    self._write_task(manager, member_name, out, written, splits)
            override["group"] = name
        else:
            override |= {"task": name, **self._data_of(name, config, splits)}
            if config.get("tag"):  # the index reads tags without following includes
                override["tag"] = config["tag"]
        (out / f"{_file_name(name)}.yaml").write_text(json.dumps(override, indent=1))

    def _data_of(self, task: str, config: dict, needed: tuple[str, ...] = ()) -> dict:
        """dataset_path / dataset_kwargs of a task's Hub dataset in the mirror, or {} for a task
        whose data is already local (a `json` or `parquet` path)."""
        path, name = config.get("dataset_path"), config.get("dataset_name")
        if not isinstance(path, str) or path in DATA_EXTENSIONS.values() or "/" not in path or Path(path).exists():
            return {}
        folder = self.dataset(path, what=f"the data of lm-eval task '{task}'")
        files = data_files(folder, name)
        splits = {config[k] for k in SPLIT_KEYS if isinstance(config.get(k), str)} | set(needed)
        missing = sorted(s for s in splits if s not in files)
        where = f"{folder}/{name}" if name else str(folder)
        if not files:
            raise MirrorError(
                f"Mirror dataset '{path}' has no files for config '{name or 'default'}', which lm-eval task '{task}' reads "
                f"(looked in {where} and the README's configs). Run 'resect mirror' again."
            )
        if missing:
            raise MirrorError(
                f"Mirror dataset '{path}'{f' config {name!r}' if name else ''} lacks the split '{missing[0]}' that lm-eval task "
                f"'{task}' reads (looked in {where} and the README's configs). Run 'resect mirror' again."
            )
        kinds = {DATA_EXTENSIONS[Path(f).suffix] for fs in files.values() for f in fs}
        if len(kinds) != 1:
            raise MirrorError(f"Mirror dataset '{folder}' mixes file kinds ({', '.join(sorted(kinds))}); expected one.")
        extra = {"validation_split": "validation"} if "validation" in files and not config.get("validation_split") else {}
        return {"dataset_path": kinds.pop(), "dataset_name": None, "dataset_kwargs": {"data_files": files}} | extra

    def corpus(self, spec: str) -> Path | str:
        """A corpus whose lm-eval task sources read the mirror: a corpus YAML rewritten with its
        task sources' include path on the mirror's task configs (`task:NAMES` likewise); other
        corpora (JSONL, folders) unchanged."""
        import yaml

        from ..edit.corpus import parse_recipe

        if spec.startswith("task:"):
            recipe, base, stem = {"sources": [{"task": [n for n in spec[5:].split(",") if n]}]}, Path.cwd(), "tasks"
        elif Path(spec).suffix in (".yaml", ".yml") and Path(spec).is_file():
            recipe, base, stem = parse_recipe(Path(spec)), Path(spec).resolve().parent, Path(spec).stem
        else:
            return spec
        sources = []
        for source in recipe["sources"]:
            source = dict(source)
            if "task" in source:
                names = source["task"] if isinstance(source["task"], list) else [source["task"]]
                include = source.get("include_path")
                includes = [] if not include or include == "builtin" else [str(base / include)]
                needed = (str(source["split"]),) if source.get("split") else ()
                source["include_path"] = str(self.localize([str(n) for n in names], includes, splits=needed).include_path)
            elif "path" in source:
                source["path"] = str(base / os.path.expanduser(str(source["path"])))
            sources.append(source)
        out = self.work / f"corpus-{_file_name(stem)}.yaml"
        out.write_text(yaml.safe_dump({**recipe, "sources": sources}, sort_keys=False))
        return out

    # ------------------------------------------------------------------ prompt and code collections
    def prompts(self, name: str) -> Path:
        """A prompts JSONL ({"prompt", "toxic"} lines) made from a mirrored collection: `NAME` is the
        gate's part of it, `NAME:profile` and `NAME:search` the parts profiling and a search read
        (`prompt_part`: disjoint, fixed by each prompt's text)."""
        collection, _, part = name.partition(":")
        if part not in ("", *PROMPT_PARTS):
            raise MirrorError(f"Unknown part '{part}' of prompt collection '{collection}'. Known: {', '.join(PROMPT_PARTS)}.")
        out = self.work / f"prompts-{_file_name(name)}.jsonl"
        if collection == REAL_TOXICITY:
            rows = self._real_toxicity()
        elif collection == TOXIGEN:
            rows = self._toxigen()
        else:
            raise MirrorError(f"Unknown prompt collection '{name}' for a mirror. Known: {REAL_TOXICITY}, {TOXIGEN}; or pass a prompts file.")
        rows = [r for r in rows if prompt_part(r["prompt"]) == (part or "gate")]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out

    def _real_toxicity(self) -> list[dict]:
        """The challenging prompts of RealToxicityPrompts (the paper's 1.2K, as DecodingTrust took them)."""
        file = self.dataset(REAL_TOXICITY, what="toxicity prompts") / "prompts.jsonl"
        if not file.is_file():
            raise MirrorError(f"Mirror dataset '{REAL_TOXICITY}' lacks prompts.jsonl (looked for {file}).")
        from ..files import jsonl_rows

        rows = []
        for where, row in jsonl_rows(file, what="RealToxicityPrompts file", error=MirrorError):
            text = (row.get("prompt") or {}).get("text") if isinstance(row, dict) and isinstance(row.get("prompt"), dict) else None
            if not isinstance(text, str) or "challenging" not in row:
                raise MirrorError(f"{where}: not a RealToxicityPrompts line (expected prompt.text and challenging).")
            if row["challenging"]:
                rows.append({"prompt": text, "toxic": True})
        if not rows:
            raise MirrorError(f"'{file}' has no challenging prompt.")
        return rows

    def _toxigen(self) -> list[dict]:
        folder = self.dataset(TOXIGEN, what="ToxiGen prompts") / "prompts"
        files = sorted(folder.glob("*_1k.txt")) if folder.is_dir() else []
        if not files:
            raise MirrorError(f"Mirror dataset '{TOXIGEN}' has no prompts (looked for {folder}/{{hate,neutral}}_<group>_1k.txt).")
        rows = []
        for file in files:
            toxic = file.name.startswith("hate")
            from ..files import read_text

            for line in read_text(file, what="ToxiGen prompts file", error=MirrorError).splitlines():
                if line.strip():
                    rows.append({"prompt": line.replace("\\n", "\n"), "toxic": toxic})
        return rows

    def code(self, languages: list[str]) -> tuple[Path, Localized, dict[str, str]]:
        """A profiling corpus of each language's source files (the last HELD_OUT kept out) and
        held-out perplexity tasks of those kept out; returns (corpus, tasks, task name by language)."""
        from ..gate.tasks import make_perplexity_tasks, task_name

        root = self.dataset(STACK_SMOL, what="code corpora") / "data"
        corpus, held_out = self.work / "code-corpus.jsonl", self.work / "code-held-out.jsonl"
        with open(corpus, "w") as c, open(held_out, "w") as h:
            for language in languages:
                file = root / language / "data.json"
                if not file.is_file():
                    raise MirrorError(f"Mirror dataset '{STACK_SMOL}' lacks the language '{language}' (looked for {file}).")
                texts = [r["content"] for r in _json_lines(file) if isinstance(r.get("content"), str) and r["content"].strip()]
                if len(texts) <= HELD_OUT:
                    raise MirrorError(f"'{file}' holds {len(texts)} files; a language needs more than {HELD_OUT} (profiling and held out).")
                for text in texts[:-HELD_OUT]:
                    c.write(json.dumps({"text": text, "label": language}) + "\n")
                for text in texts[-HELD_OUT:]:
                    h.write(json.dumps({"text": text, "label": language}) + "\n")
        folder = self.work / "code-tasks"  # remade at every run from the mirror (resect's own, in the cache)
        names = make_perplexity_tasks(held_out, folder, prefix="heldout", force=True)
        return corpus, Localized(folder, names), {lang: task_name("heldout", lang) for lang in languages}


def data_files(folder: Path, config: str | None) -> dict[str, list[str]]:
    """Split -> data files of one configuration of a dataset repository: from its README's
    `configs` metadata when it has them, else from the usual names (`<config>/<split>-*`,
    `<split>-*`, `data/<split>-*`)."""
    declared = _readme_configs(folder)
    if declared:
        entry = declared.get(config or "default")
        if entry is None:
            raise MirrorError(
                f"Mirror dataset '{folder}' declares no config '{config or 'default'}' in its README "
                f"(it declares {', '.join(sorted(declared)) or 'none'})."
            )
        return {split: _glob(folder, patterns) for split, patterns in entry.items() if _glob(folder, patterns)}
    bases = [folder / config] if config else [folder, folder / "data"]
    found: dict[str, list[str]] = {}
    for base in bases:
        for file in sorted(base.glob("*")) if base.is_dir() else []:
            match = re.match(r"([A-Za-z_]+?)(?:[-.]\d{5}-of-\d{5})?(?:-[^.]*)?\.(parquet|jsonl|json|csv)$", file.name)
            if match and file.is_file():
                found.setdefault(match.group(1), []).append(str(file))
    if not found:
        where = folder / config if config else folder
        raise MirrorError(f"Mirror dataset '{folder.name}' has no data files{f' for config {config!r}' if config else ''} (looked in {where}).")
    return found


def _readme_configs(folder: Path) -> dict[str, dict[str, list[str]]]:
    """{config_name: {split: [path patterns]}} from a dataset README's YAML front matter."""
    import yaml

    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for entry in meta.get("configs") or [] if isinstance(meta, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("config_name"), str):
            files = entry.get("data_files") or []
            if isinstance(files, list):
                out[entry["config_name"]] = {
                    f["split"]: f["path"] if isinstance(f["path"], list) else [f["path"]]
                    for f in files
                    if isinstance(f, dict) and "split" in f and "path" in f
                }
    return out


def _glob(folder: Path, patterns: list[str]) -> list[str]:
    """The files of `folder` a README's data_files patterns name; a pattern that leads outside the
    dataset's folder is refused."""
    from pathlib import PurePosixPath

    for pattern in patterns:
        if not isinstance(pattern, str) or Path(pattern).is_absolute() or ".." in PurePosixPath(pattern).parts:
            raise MirrorError(f"Mirror dataset '{folder}' names data files {pattern!r} in its README, outside its folder. Download it again.")
    return sorted(str(p) for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def _json_lines(file: Path) -> list[dict]:
    """A JSON list, or JSON lines (the-stack-smol's data.json is either)."""
    from ..files import parse_json, read_text

    text = read_text(file, what="mirror data file", error=MirrorError)
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except (json.JSONDecodeError, RecursionError):
        rows = [parse_json(line, where=f"'{file}' line {n}", error=MirrorError) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return [r for r in rows if isinstance(r, dict)]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _work_folder(root: Path) -> Path:
    from .. import __version__
    from ..cache import cache_root

    key = hashlib.sha256(f"{root}:{__version__}".encode()).hexdigest()[:16]
    folder = cache_root() / "mirrors" / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


__all__ = ["Mirror", "MirrorError", "data_files", "local_prompts"]
