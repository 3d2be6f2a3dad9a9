"""The ranges of every numeric option, in one place, and the one check that applies them.

A value outside its range, not a number, or not finite (`inf`, `nan`, a JSON `1e309`) is refused
with the same sentence wherever it comes from: a command-line option, a recipe key, a corpus score,
a statistics file. The bounds are what a run can use, not what a type can hold: 100 million
samples per prompt or a seed beyond 2**32 - 1 are refused, not attempted.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

# name -> (low, high, low inclusive, whole number)
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "ratio": (1.0, 1e6, False, False),  # skew rules: the target over the runner-up (or the others' mean)
    "threshold": (-1.0, 1.0, True, False),  # a Pearson correlation
    "quantile": (0.0, 1.0, True, False),  # keep the top (1 - q) share: q = 1 would keep nothing (HIGH_OPEN)
    "k": (1, 2**31, True, True),
    "seed": (0, 2**32 - 1, True, True),
    "batch_size": (1, 65_536, True, True),
    "limit": (0.0, 2**31, False, False),  # a count, or a fraction below 1
    "min_target_drop": (0.0, 1e6, True, False),
    "max_general_drop": (0.0, 1e6, True, False),
    "refine": (0, 1 << 24, True, True),
    "tune": (0, 1_000_000, True, True),
    "search": (1, 10_000, True, True),
    "max_tokens_per_label": (1, 10**12, True, True),
    "min_tokens": (0, 10**12, True, True),
    "max_length": (2, 1 << 20, True, True),
    "samples": (1, 10_000, True, True),
    "profile_samples": (1, 10_000, True, True),
    "max_new_tokens": (1, 65_536, True, True),
    "temperature": (0.0, 1e3, False, False),
    "top_p": (0.0, 1.0, False, False),
    "top_k": (1, 1 << 24, True, True),
    "score_window": (1, 1 << 20, True, True),
    "checkpoint_every": (1, 1 << 30, True, True),
    "top": (0, 1 << 24, True, True),
    "context": (0, 4096, True, True),
    "prompt_limit": (1, 10**9, True, True),
    "score": (-1e12, 1e12, True, False),  # a corpus document's score
    "confidence": (0.0, 1.0, False, False),  # of a gate's or a search's bounds: strictly between 0 and 1 (HIGH_OPEN)
    "search_confidence": (0.0, 1.0, False, False),
    "min_toxicity_drop": (0.0, 100.0, True, False),  # the toxicity probability's fall, % of the baseline's
    "max_recovery": (0.0, 100.0, True, False),  # points a probe may give back (resect probe, or an edit's max_recovery)
}
HIGH_OPEN = {"quantile", "confidence", "search_confidence"}  # ranges whose upper bound is not a value


def check_number(name: str, value: Any, *, option: str | None = None) -> None:
    """Refuse `value` unless it is a number (a whole one where the range says so) in `name`'s range."""
    low, high, inclusive, whole = RANGES[name]
    label = option or f"--{name.replace('_', '-')}"
    kind = "a whole number" if whole else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and whole:
        ok = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    interval = _interval(low, high, inclusive, name in HIGH_OPEN)
    if not ok or not math.isfinite(value):
        raise UsageError(f"{label} must be {kind} in {interval}, got {value!r}.")
    above = value >= high if name in HIGH_OPEN else value > high
    if not ((low <= value) if inclusive else (low < value)) or above:
        raise UsageError(f"{label} must be {kind} in {interval}, got {value!r}.")


def check_numbers(values: dict[str, Any], *, prefix: str = "--") -> None:
    """check_number for every value that is not None (option names spelled with `prefix`)."""
    for name, value in values.items():
        if value is not None:
            check_number(name, value, option=f"{prefix}{name.replace('_', '-') if prefix == '--' else name}")


def _interval(low: float, high: float, inclusive: bool, high_open: bool = False) -> str:
    show = lambda v: f"{int(v):,}" if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000 else f"{v:g}"  # noqa: E731
    return f"{'[' if inclusive else '('}{show(low)}, {show(high)}{')' if high_open else ']'}"


__all__ = ["RANGES", "check_number", "check_numbers"]
