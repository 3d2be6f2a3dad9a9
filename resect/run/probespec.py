"""What `resect probe` is asked (ProbeSpec, from the command line) and what it resolved (ProbePlan,
from resect.run.probe's checks), and the checks of the options alone: shared by the probes' planning, runner and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError, unknown
from .attacks import METHODS, Tuning

PROBES = ("relearn", "rtt", "in-context", "representation")
TOXICITY_PROBES = ("relearn", "in-context")  # the toxic register has no facts to fold or read out
DEFAULT_EXAMPLES = (5, 10, 50, 100)
MODELS = ("edited", "source", "oracle")


@dataclass
class ProbeSpec:
    run: str
    baseline: str | None = None
    oracle: str | None = None  # a checkpoint folder; None: the shipped oracle for the target, if any
    use_oracle: bool = True
    target: str | None = None  # the removed domain, when the run does not say
    probes: list[str] | None = None  # None: every probe the model allows (a world model: all; a published one: relearn)
    corpus: str | None = None  # a model without a world: what relearning trains on (default: the run's profiling corpus)
    examples: list[int] = field(default_factory=lambda: list(DEFAULT_EXAMPLES))
    tuning: Tuning = field(default_factory=Tuning)
    folds: int = 5
    shots: int = 5
    max_recovery: float | None = None
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    use_cache: bool = True


@dataclass
class ProbePlan:
    spec: ProbeSpec
    edited: Path
    source: Path
    oracle: Path | None
    world: Path | None  # None: a published checkpoint's edit, probed by relearning on its corpus (texts) alone
    domain: str
    general: list[str]  # the other domains' quiz tasks (a published edit: the run's general tasks)
    includes: list[str]
    examples_available: int
    target_tasks: list[str] = field(default_factory=list)  # a published edit: the run's target task (empty: the world's quiz)
    texts: list[str] | None = None  # a published edit: the target's profiling documents, in the order relearning takes them
    members: list[str] = field(default_factory=list)  # a target that is a group: the tasks whose questions it scores
    metric: str = "acc"  # what the rows compare: accuracy (points), a language's held-out word_perplexity (%), or "toxicity" (points of toxicity probability)
    prompts: str | None = None  # toxicity: the gate's prompts file, whose toxic prompts the probes sample continuations of
    sampling: dict = field(default_factory=dict)  # toxicity: how each prompt is sampled and scored (the run's settings)

    @property
    def unit(self) -> str:
        return "%" if self.metric == "word_perplexity" else "points"

    @property
    def target_task(self) -> str:
        return self.target_tasks[0] if self.target_tasks else f"world_{self.domain}"

    @property
    def models(self) -> dict[str, Path]:
        return {"edited": self.edited, "source": self.source, **({"oracle": self.oracle} if self.oracle else {})}


def check_spec(spec: ProbeSpec) -> None:
    """Every option of a probe in range, before anything is read."""
    from ..checks import check_numbers

    bad = [p for p in spec.probes or [] if p not in PROBES]
    if bad:
        raise UsageError(unknown("probe", bad[0], PROBES))
    if spec.probes is not None and not spec.probes:
        raise UsageError(f"--probes names no probe. Pass some of {', '.join(PROBES)}.")
    if not spec.examples or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in spec.examples):
        raise UsageError(f"--examples must be positive whole numbers (how many examples each relearning attack trains on), got {spec.examples!r}.")
    if spec.tuning.method not in METHODS:
        raise UsageError(unknown("--method", spec.tuning.method, METHODS))
    t = spec.tuning
    for name, value, whole, low in (("--rank", t.rank, True, 1), ("--epochs", t.epochs, True, 1), ("--folds", spec.folds, True, 2),
                                    ("--shots", spec.shots, True, 1), ("--alpha", t.alpha, False, 0), ("--lr", t.lr, False, 0)):  # fmt: skip
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        if not ok or (whole and int(value) != value) or (value < low if whole else value <= low):
            raise UsageError(f"{name} must be {'a whole number of at least ' + str(low) if whole else 'a number above 0'}, got {value!r}.")
    check_numbers({"batch_size": spec.batch_size, "seed": spec.seed, "max_recovery": spec.max_recovery})


__all__ = ["DEFAULT_EXAMPLES", "MODELS", "PROBES", "TOXICITY_PROBES", "ProbePlan", "ProbeSpec", "check_spec"]
