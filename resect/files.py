"""Reading what users hand resect, with bounds: JSON, YAML, JSONL and text files.

Every structured input (config.json, a shard index, a mask, a recipe or run.yaml, a corpus YAML,
a cache entry) goes through these readers, so that the same bounds hold everywhere and a bad file
is one line naming it, before any work:
- a size bound, checked before the file is read (a 200 MB "mask" is refused at once, not parsed);
- a depth bound (deeply nested data is refused, never a RecursionError);
- a key given twice in one object or mapping is refused (JSON and YAML would keep the last one
  silently);
- YAML aliases are refused (a few lines of aliases can stand for billions of nodes);
- NaN and infinities are refused in JSON;
- text must be UTF-8: a file that is not says which byte.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ResectError, UsageError

JSON_BYTES = 16 << 20  # configs, indexes, provenance, recipes, run.yaml: far below this
MAX_DEPTH = 64  # nesting of objects and lists: resect's own files stay under 8


def _cap(what: str) -> str:
    return what[:1].upper() + what[1:]


def _size_problem(path: Path, limit: int) -> str | None:
    try:
        size = path.stat().st_size
    except OSError:
        return None  # the read itself says why
    if size > limit:
        return f"is {size / (1 << 20):,.1f} MiB, more than the {limit / (1 << 20):,.0f} MiB such a file can be"
    return None


def not_a_file(path: Path) -> str | None:
    """Why `path` is not a regular file to read (a device or a pipe would be read without end)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # the read itself says why
    if stat.S_ISDIR(mode):
        return "is a folder. Pass a file"
    return None if stat.S_ISREG(mode) else "is not a regular file (a device or a pipe). Pass a file"


def read_text(path: str | os.PathLike, *, what: str, error: type[ResectError] = UsageError, max_bytes: int | None = None) -> str:
    """A UTF-8 text file; anything else (missing, a folder, a device, too large, not UTF-8) is `error` naming it."""
    path = Path(path)
    if not_a_file(path):
        raise error(f"{_cap(what)} '{path}' {not_a_file(path)}.")
    problem = _size_problem(path, max_bytes) if max_bytes else None
    if problem:
        raise error(f"{_cap(what)} '{path}' {problem}. Check that it is the right file.")
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{_cap(what)} '{path}' is a folder. Pass a file.") from None
    except FileNotFoundError:
        raise error(f"{_cap(what)} '{path}' does not exist.") from None
    except OSError as exc:
        raise error(f"Cannot read {what} '{path}' ({exc.strerror}).") from None
    return decode(raw, where=f"{_cap(what)} '{path}'", error=error)


def decode(raw: bytes, *, where: str, error: type[ResectError] = UsageError) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start:,}). Save it as UTF-8.") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(text: str | bytes, *, where: str, error: type[ResectError] = UsageError, max_depth: int = MAX_DEPTH) -> Any:
    """JSON with duplicate keys, NaN/Infinity and nesting beyond `max_depth` refused."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where} nests deeper than {max_depth} levels: it is not a file resect reads.") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start:,}). Save it as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).") from None
    except ValueError as exc:
        raise error(f"{where} is refused: {exc}.") from None
    check_depth(value, where=where, error=error, max_depth=max_depth)
    return value


def read_json(path: str | os.PathLike, *, what: str, error: type[ResectError] = UsageError, max_bytes: int = JSON_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:  # fmt: skip
    """A JSON file within the size and depth bounds (see the module's docstring)."""
    path = Path(path)
    if not_a_file(path):
        raise error(f"{_cap(what)} '{path}' {not_a_file(path)}.")
    problem = _size_problem(path, max_bytes)
    if problem:
        raise error(f"{_cap(what)} '{path}' {problem}. Check that it is the right file.")
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{_cap(what)} '{path}' is a folder. Pass a file.") from None
    except FileNotFoundError:
        raise error(f"{_cap(what)} '{path}' does not exist.") from None
    except OSError as exc:
        raise error(f"Cannot read {what} '{path}' ({exc.strerror}).") from None
    return parse_json(raw, where=f"{_cap(what)} '{path}'", error=error, max_depth=max_depth)


def check_depth(value: Any, *, where: str, error: type[ResectError] = UsageError, max_depth: int = MAX_DEPTH) -> None:
    """Refuse data nested deeper than `max_depth` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        nested = [c for c in children if isinstance(c, (dict, list))]
        if nested and depth >= max_depth:
            raise error(f"{where} nests deeper than {max_depth} levels: it is not a file resect reads.")
        stack += [(c, depth + 1) for c in nested]


def load_yaml(text: str, *, where: str, error: type[ResectError] = UsageError, max_depth: int = MAX_DEPTH) -> Any:
    """YAML as plain data: aliases (`*name`) and keys given twice refused, nesting bounded."""
    import yaml

    class Strict(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise error(f"{where} uses a YAML alias (*{self.peek_event().anchor}); write the values out instead.")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise error(f"{where} gives the key {key!r} twice (line {key_node.start_mark.line + 1}); keep one.")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        value = yaml.load(text, Loader=Strict)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise error(f"{where} nests deeper than {max_depth} levels: it is not a file resect reads.") from None
    except yaml.YAMLError as exc:
        raise error(f"{where} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    check_depth(value, where=where, error=error, max_depth=max_depth)
    return value


def jsonl_rows(path: str | os.PathLike, *, what: str, error: type[ResectError] = UsageError) -> Iterator[tuple[str, Any]]:
    """(where, row) for each non-blank line of a JSONL file; an unreadable file or line is `error`
    naming the file (and line) and what was expected."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise error(f"{what[0].upper() + what[1:]} '{path}' {state}. Pass a JSONL file, one JSON object per line.")
    text = read_text(path, what=what, error=error)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"'{path}' line {number}"
        row = parse_json(line, where=where, error=error)
        try:  # a JSON escape can spell half of a surrogate pair, which is no text at all
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
            raise error(f"{where} holds an unpaired surrogate ({bad}), which is not text. Write it as valid Unicode.") from None
        yield where, row


__all__ = ["not_a_file", "read_text", "read_json", "parse_json", "load_yaml", "jsonl_rows", "check_depth", "decode", "JSON_BYTES", "MAX_DEPTH"]
