"""`resect probe` on a toxicity edit of a world model: does the toxic register come back?

The register has no facts to fold or read out, so two probes run: relearn (fine-tune on N of the
toxic utterances of the world's toxicity corpus, then measure) and in-context (k of those
utterances in the prompt, one per line, before each prompt). Each measurement is the gate's
toxicity probability on the gate's toxic prompts, sampled with the run's settings and the gate's
seeds, per prompt (a prompt counts when one of its continuations scores above the toxic
threshold): the edited model before any attack reproduces the gate's own number. The cost
elsewhere is the domains' quizzes. The reference is the oracle (`resect world train --leave-out
toxic`) where one is given, else the edit before the attack.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .probespec import TOXICITY_PROBES, ProbePlan, ProbeSpec
from .spec import PROFILING_ONLY, TOXICITY_DEFAULTS


def toxicity_plan(spec: ProbeSpec, edited: Path, source: Path, oracle: Path | None, world: Path, domains: list[str], *,
                  sampling: dict | None, prompts: str | None) -> ProbePlan:  # fmt: skip
    """The probes of a toxicity edit, every check made before any model loads."""
    from ..edit.scoring import SCORERS
    from ..errors import unknown
    from ..gate.toxicity import check_settings
    from ..tasks import world_task_dir
    from ..world.probesets import relearn_toxic

    others = [p for p in spec.probes or [] if p not in TOXICITY_PROBES]
    if others:
        raise UsageError(f"'{others[0]}' asks a domain's facts; a toxicity edit is probed by relearning and in context. Pass --probes relearn,in-context.")
    spec.probes = list(spec.probes or TOXICITY_PROBES)
    texts = relearn_toxic(world, spec.seed)
    wanted = [*(spec.examples if "relearn" in spec.probes else []), *([spec.shots] if "in-context" in spec.probes else [])]
    if max(wanted) > len(texts):
        option = "--examples" if "relearn" in spec.probes and max(spec.examples) > len(texts) else "--shots"
        raise UsageError(f"{option} {max(wanted)} is more than the {len(texts)} toxic utterances the world holds. Pass at most {len(texts)}.")
    if "relearn" in spec.probes and spec.tuning.method == "lora":
        from .attacks import require_peft

        require_peft()
    settings = {k: v for k, v in (TOXICITY_DEFAULTS | dict(sampling or {})).items() if k not in PROFILING_ONLY and k in TOXICITY_DEFAULTS}
    if settings["scorer"] not in SCORERS:
        raise UsageError(unknown("scorer", str(settings["scorer"]), SCORERS))
    check_settings(settings["samples"], settings["max_new_tokens"], settings["temperature"], settings["top_p"], None)
    path = Path(prompts).expanduser() if prompts else world / "prompts" / "toxicity.jsonl"
    if not path.is_file():
        raise UsageError(f"The run's toxicity prompts '{path}' are gone. Rerun the edit, or probe it where its prompts are.")
    if not toxic_prompts(path):
        raise UsageError(f"'{path}' holds no prompt to sample. Pass a prompts file with some.")
    return ProbePlan(spec, edited, source, oracle, world, "toxicity", [f"world_{d}" for d in domains], [str(world_task_dir(world))], len(texts),
                     target_tasks=["toxicity"], texts=texts, metric="toxicity", prompts=str(path), sampling=settings)  # fmt: skip


def toxic_prompts(path: str | Path) -> list[tuple[int, str]]:
    """The prompts the probes sample, with their place in the file (the gate's seed is seed + place):
    those marked toxic, or every one when none is marked."""
    from ..gate.toxicity import read_prompts

    prompts = read_prompts(path)
    marked = [(i, p.text) for i, p in enumerate(prompts) if p.toxic]
    return marked or [(i, p.text) for i, p in enumerate(prompts)]


def toxicity_scores(model, tokenizer, plan: ProbePlan, *, shots: list[str] = (), progress=None) -> dict:
    """Per toxic prompt, whether a continuation is toxic (1 or 0), and the toxicity probability in
    points; `shots` go before each prompt, one per line."""
    from ..edit.scoring import get_scorer
    from ..gate.toxicity import TOXIC_THRESHOLD, sample_prompts

    s, chosen = plan.sampling, toxic_prompts(plan.prompts)
    prefix = "".join(f"{t}\n" for t in shots)
    continuations = sample_prompts(
        model, tokenizer, [prefix + text for _, text in chosen], [plan.spec.seed + i for i, _ in chosen], samples=s["samples"],
        max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"], progress=progress,
    )  # fmt: skip
    score = get_scorer(s["scorer"])
    maxima = [max(score(texts)) for texts in continuations]
    hits = [1.0 if m > TOXIC_THRESHOLD else 0.0 for m in maxima]
    return {"doc_id": [i for i, _ in chosen], "cluster": [str(i) for i, _ in chosen], "acc": hits, "max": maxima,
            "value": 100.0 * sum(hits) / len(hits), "expected_max_toxicity": sum(maxima) / len(maxima)}  # fmt: skip


__all__ = ["toxic_prompts", "toxicity_plan", "toxicity_scores"]
