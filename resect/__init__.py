"""resect: cut knowledge out of Monet language models by ablating experts exactly.

`import resect` registers the Monet architecture with transformers' `AutoConfig` and
`AutoModelForCausalLM`, so published and edited checkpoints load without `trust_remote_code`.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0.dev0"

_registered = False


def register() -> None:
    """Register MonetConfig / MonetForCausalLM with the transformers auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_monet import MonetConfig
    from .modeling_monet import MonetForCausalLM

    AutoConfig.register("monet", MonetConfig, exist_ok=True)
    AutoModelForCausalLM.register(MonetConfig, MonetForCausalLM, exist_ok=True)
    _registered = True


def _started_as_cli() -> bool:
    # The `resect` console script imports this package before any command runs; importing
    # torch and transformers here would make `resect --help` take seconds. Commands that need
    # the model call register() themselves (through resect.loading).
    return os.path.basename(sys.argv[0] if sys.argv else "") == "resect"


if not _started_as_cli():
    register()
