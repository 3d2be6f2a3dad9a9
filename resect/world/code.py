"""Generated code snippets in python, javascript and lua: one small program shape, three syntaxes.

A snippet is a function built from a few random statements (assignments, loops, conditions,
list building, printing) over random identifiers, rendered in each language's own syntax.
"""

from __future__ import annotations

import random

LANGUAGES: tuple[str, ...] = ("python", "javascript", "lua")

_VERBS = ("count", "sum", "scale", "merge", "find", "clamp", "pick", "build", "score", "shift", "fold", "split")
_NOUNS = ("items", "values", "totals", "scores", "names", "rows", "points", "weights", "nodes", "prices", "steps", "cells")
_VARS = ("a", "b", "n", "x", "y", "k", "total", "acc", "best", "limit", "size", "step", "count", "offset")
_OPS = ("+", "-", "*")
_WORDS = ("done", "ready", "empty", "found", "skip", "ok", "retry", "late")


def _expr(rng: random.Random, names: list[str]) -> tuple[str, str, int]:
    """(left name, operator, constant) of a binary expression `left op constant`."""
    return rng.choice(names), rng.choice(_OPS), rng.randint(1, 99)


def _statements(rng: random.Random, params: list[str]) -> list[tuple]:
    """An abstract function body: a list of statement tuples, rendered per language later."""
    names = list(params)
    body: list[tuple] = []
    for _ in range(rng.randint(3, 6)):
        kind = rng.choice(("assign", "loop", "if", "list", "print", "assign"))
        target = rng.choice([v for v in _VARS if v not in params])
        if kind == "assign":
            body.append(("assign", target, *_expr(rng, names)))
            names.append(target) if target not in names else None
        elif kind == "loop":
            body.append(("loop", target, rng.choice(names), rng.randint(2, 20)))
            names.append(target) if target not in names else None
        elif kind == "if":
            body.append(("if", rng.choice(names), rng.choice((">", "<", "==")), rng.randint(0, 50), rng.choice(names)))
        elif kind == "list":
            body.append(("list", rng.choice(_NOUNS), [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]))
        else:
            body.append(("print", rng.choice(_WORDS), rng.choice(names)))
    body.append(("return", rng.choice(names)))
    return body


def _python(name: str, params: list[str], body: list[tuple]) -> str:
    lines = [f"def {name}({', '.join(params)}):"]
    for s in body:
        if s[0] == "assign":
            lines.append(f"    {s[1]} = {s[2]} {s[3]} {s[4]}")
        elif s[0] == "loop":
            lines += [f"    {s[1]} = 0", f"    for i in range({s[3]}):", f"        {s[1]} += i * {s[2]}"]
        elif s[0] == "if":
            lines += [f"    if {s[1]} {s[2]} {s[3]}:", f"        return {s[4]}"]
        elif s[0] == "list":
            lines += [f"    {s[1]} = [{', '.join(map(str, s[2]))}]", f"    {s[1]}.append(len({s[1]}))"]
        elif s[0] == "print":
            lines.append(f"    print(\"{s[1]}\", {s[2]})")
        else:
            lines.append(f"    return {s[1]}")
    return "\n".join(lines) + "\n"


def _javascript(name: str, params: list[str], body: list[tuple]) -> str:
    lines = [f"function {name}({', '.join(params)}) {{"]
    for s in body:
        if s[0] == "assign":
            lines.append(f"  let {s[1]} = {s[2]} {s[3]} {s[4]};")
        elif s[0] == "loop":
            lines += [f"  let {s[1]} = 0;", f"  for (let i = 0; i < {s[3]}; i++) {{", f"    {s[1]} += i * {s[2]};", "  }"]
        elif s[0] == "if":
            op = "===" if s[2] == "==" else s[2]
            lines += [f"  if ({s[1]} {op} {s[3]}) {{", f"    return {s[4]};", "  }"]
        elif s[0] == "list":
            lines += [f"  const {s[1]} = [{', '.join(map(str, s[2]))}];", f"  {s[1]}.push({s[1]}.length);"]
        elif s[0] == "print":
            lines.append(f"  console.log(\"{s[1]}\", {s[2]});")
        else:
            lines.append(f"  return {s[1]};")
    return "\n".join(lines) + "\n}\n"


def _lua(name: str, params: list[str], body: list[tuple]) -> str:
    lines = [f"local function {name}({', '.join(params)})"]
    for s in body:
        if s[0] == "assign":
            lines.append(f"  local {s[1]} = {s[2]} {s[3]} {s[4]}")
        elif s[0] == "loop":
            lines += [f"  local {s[1]} = 0", f"  for i = 1, {s[3]} do", f"    {s[1]} = {s[1]} + i * {s[2]}", "  end"]
        elif s[0] == "if":
            lines += [f"  if {s[1]} {s[2]} {s[3]} then", f"    return {s[4]}", "  end"]
        elif s[0] == "list":
            lines += [f"  local {s[1]} = {{{', '.join(map(str, s[2]))}}}", f"  table.insert({s[1]}, #{s[1]})"]
        elif s[0] == "print":
            lines.append(f"  print(\"{s[1]}\", {s[2]})")
        else:
            lines.append(f"  return {s[1]}")
    return "\n".join(lines) + "\nend\n"


_RENDER = {"python": _python, "javascript": _javascript, "lua": _lua}


def snippet(rng: random.Random, language: str) -> str:
    """One random function in `language`."""
    name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    if language == "javascript":
        head, tail = name.split("_")
        name = head + tail.capitalize()
    params = rng.sample(_VARS[:6], rng.randint(1, 3))
    return _RENDER[language](name, params, _statements(rng, params))


def unique_snippets(rng: random.Random, language: str, count: int, exclude: set[str]) -> list[str]:
    """`count` distinct snippets not in `exclude` (which is updated)."""
    out: list[str] = []
    while len(out) < count:
        text = snippet(rng, language)
        if text not in exclude:
            exclude.add(text)
            out.append(text)
    return out
