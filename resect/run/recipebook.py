"""Recipes: YAML files of a RunSpec, shipped under recipes/ and runnable with `resect run`.

A recipe's first line is a comment holding the command that runs it. Values resolve as
command line over recipe over defaults: `resect run recipes/world-domain.yaml target=law`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import UsageError, unknown

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"
if not RECIPES_DIR.is_dir():  # installed from a wheel: the recipes travel as package data
    RECIPES_DIR = Path(__file__).resolve().parent.parent / "_recipes"

# The 57 MMLU subjects in the 14 MMLU-Pro categories. MMLU's own subject categories, with its
# geography, politics and culture subjects counted as "other" (the paper does not list its mapping).
MMLU_PRO = {
    "biology": ["college_biology", "high_school_biology"],
    "business": ["business_ethics", "management", "marketing"],
    "chemistry": ["college_chemistry", "high_school_chemistry"],
    "computer science": ["college_computer_science", "computer_security", "high_school_computer_science", "machine_learning"],
    "economics": ["econometrics", "high_school_macroeconomics", "high_school_microeconomics"],
    "engineering": ["electrical_engineering"],
    "health": ["anatomy", "clinical_knowledge", "college_medicine", "human_aging", "medical_genetics", "nutrition", "professional_medicine", "virology"],
    "history": ["high_school_european_history", "high_school_us_history", "high_school_world_history", "prehistory"],
    "law": ["international_law", "jurisprudence", "professional_law"],
    "math": ["abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics", "high_school_statistics"],
    "other": ["global_facts", "miscellaneous", "professional_accounting", "high_school_geography", "high_school_government_and_politics",
              "public_relations", "security_studies", "us_foreign_policy", "human_sexuality", "sociology"],  # fmt: skip
    "philosophy": ["formal_logic", "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy", "world_religions"],
    "physics": ["astronomy", "college_physics", "conceptual_physics", "high_school_physics"],
    "psychology": ["high_school_psychology", "professional_psychology"],
}


def mmlu_pro_categories() -> dict[str, list[str]]:
    return MMLU_PRO


def recipe_files() -> dict[str, Path]:
    """Shipped recipes by name (file stem), excluding task and corpus definitions."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    files = recipe_files()
    if name_or_path in files:
        return files[name_or_path]
    raise UsageError(unknown("recipe", name_or_path, files))


def read_recipe(name_or_path: str) -> dict[str, Any]:

    path = find_recipe(name_or_path)
    from ..files import JSON_BYTES, load_yaml, read_text

    data = load_yaml(read_text(path, what="Recipe", max_bytes=JSON_BYTES), where=f"Recipe '{path}'")
    if not isinstance(data, dict):
        raise UsageError(f"Recipe '{path}' must be a mapping of options, found {type(data).__name__}.")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """key=value words (toxicity.KEY=value for one toxicity setting); values read as YAML."""
    from ..files import load_yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"Override '{pair}' is not key=value (for example target=law or limit=20).")
        out[key.replace("-", "_")] = load_yaml(value, where=f"Override '{pair}': the value")
    return out


def spec_from(data: dict[str, Any], overrides: dict[str, Any] | None = None):
    """A RunSpec from recipe data and overrides; unknown keys get a 'did you mean'."""
    from .spec import RunSpec

    merged = {**data}
    for key, value in (overrides or {}).items():
        section, dot, sub = key.partition(".")
        if dot and section == "toxicity":  # toxicity.samples=10 sets one toxicity setting
            settings = merged.get("toxicity") or {}
            if not isinstance(settings, dict):
                raise UsageError(f"'toxicity' must be a mapping of toxicity settings, found {settings!r}.")
            merged["toxicity"] = {**settings, sub: value}
        else:
            merged[key] = value
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    for key in merged:
        if not isinstance(key, str):
            raise UsageError(f"Recipe option names are text, found {key!r}. Name one of: {', '.join(sorted(fields))}.")
        if key not in fields:
            raise UsageError(unknown("recipe option", key, fields))
    if "kind" not in merged:
        raise UsageError("A recipe needs 'kind' (domain, language or toxicity).")
    return RunSpec(**merged)


def is_training(data: dict[str, Any]) -> bool:
    """Training recipes (the built-in model's) describe a model and a schedule, not an edit."""
    return "kind" not in data and "train" in data


def validate_recipe(name_or_path: str) -> None:
    """Raise when a shipped recipe is malformed (option names, kind, ranges, first-line command)."""
    from .spec import check_spec

    path = find_recipe(name_or_path)
    from ..files import read_text

    text = read_text(path, what="Recipe")
    first = text.splitlines()[0] if text else ""
    if not first.startswith("# resect "):
        raise UsageError(f"Recipe '{path}' must start with a comment holding the command that runs it.")
    data = read_recipe(str(path))
    if is_training(data):
        from ..world.train import load_recipe

        load_recipe(path)
        return
    check_spec(spec_from(data))
