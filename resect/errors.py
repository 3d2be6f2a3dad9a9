"""One error hierarchy. Every message says what was expected, what was found and what to do;
the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ResectError(Exception):
    """Base of every error resect reports to a user."""

    exit_code = 2


class CheckpointError(ResectError):
    """A model folder that is missing, not Monet, or damaged."""


class MaskError(ResectError):
    """An expert mask that is malformed or made for another model."""


class StatsError(ResectError):
    """Routing statistics that are malformed, empty or from another model."""


class CorpusError(ResectError):
    """A corpus that cannot be read or has no usable text."""


class OutputError(ResectError):
    """An output path that exists, equals an input, or cannot be written."""


class EvalError(ResectError):
    """An evaluation that cannot run: unknown task, missing extra, mismatched baseline."""


class UsageError(ResectError):
    """An option value out of range or a combination that makes no sense."""


def unknown(kind: str, name: str, available: Iterable[str]) -> str:
    """'Unknown domain 'biolgy'. Did you mean: biology? Available: ...' for registry misses."""
    choices = sorted(available)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(choices[:SHOWN_CHOICES]) or "(none)"
    more = f" and {len(choices) - SHOWN_CHOICES:,} more" if len(choices) > SHOWN_CHOICES else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {shown}{more}."


SHOWN_CHOICES = 30  # lm-eval knows thousands of tasks: a refusal stays one readable line
