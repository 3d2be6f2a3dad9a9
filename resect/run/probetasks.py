"""The in-context probe's lm-eval tasks over one domain of a world, written into the cache.

- `probe_<domain>_fewshot<k>`: the test quiz with k other solved questions of it in the prompt
  (lm-eval's num_fewshot; with the few-shot split the test split, lm-eval never shows a question
  its own answer);
- `probe_<domain>_rephrased`, `_truefalse`, `_cloze`: the quiz's facts in the question wording no
  split asks, as yes/no judgements of a proposed answer, and as sentences to complete
  (resect.world.probesets).
The data files sit beside the YAMLs and are named by absolute path, as lm-eval needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..tasks import multiple_choice_task


@dataclass(frozen=True)
class ProbeTasks:
    folder: Path
    names: dict[str, str]  # variant -> task name
    digest: str  # of the YAMLs and data: part of the probe cache's key
    chance: dict[str, float]  # variant -> accuracy of guessing, in points


def write_probe_tasks(world: Path, domain: str, *, shots: int) -> ProbeTasks:
    """Write (or find, unchanged) the probe tasks of `domain`; returns their names and folder."""
    from ..cache import cache_root, digest
    from ..paths import write_atomic
    from ..world.probesets import cloze, read_quiz, rephrased, true_false

    quiz = read_quiz(world, domain)
    sets = {"rephrased": rephrased(quiz), "truefalse": true_false(quiz), "cloze": cloze(quiz)}
    files = {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) for name, rows in sets.items()}
    key = digest({"world": str(Path(world).resolve()), "quiz": quiz, "files": files, "shots": shots}, 16)
    folder = cache_root() / "probe-tasks" / key
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"fewshot-{shots}": f"probe_{domain}_fewshot{shots}", "rephrased": f"probe_{domain}_rephrased",
             "true-false": f"probe_{domain}_truefalse", "cloze": f"probe_{domain}_cloze"}  # fmt: skip
    configs = [multiple_choice_task(names[f"fewshot-{shots}"], Path(world) / "eval" / f"quiz_{domain}.jsonl", num_fewshot=shots, fewshot_split="test",
                     fewshot_config={"sampler": "default"})]  # fmt: skip
    for variant, stem in (("rephrased", "rephrased"), ("true-false", "truefalse"), ("cloze", "cloze")):
        data = folder / f"{stem}.jsonl"
        if not data.is_file() or data.read_text(encoding="utf-8") != files[stem]:
            write_atomic(data, files[stem])
        configs.append(multiple_choice_task(names[variant], data))
    for cfg in configs:
        text = yaml.safe_dump(cfg, sort_keys=False)
        target = folder / f"{cfg['task']}.yaml"
        if not target.is_file() or target.read_text() != text:
            write_atomic(target, text)
    chance = {variant: 100.0 * sum(1 / len(r["choices"]) for r in rows) / max(len(rows), 1)
              for variant, rows in (("quiz", quiz), (f"fewshot-{shots}", quiz), ("rephrased", sets["rephrased"]), ("true-false", sets["truefalse"]), ("cloze", sets["cloze"]))}  # fmt: skip
    return ProbeTasks(folder, names, key, chance)


__all__ = ["ProbeTasks", "write_probe_tasks"]
