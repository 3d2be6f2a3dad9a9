"""resect: cut knowledge out of Monet language models by ablating experts exactly.

`import resect` is light (no torch, no transformers): it asks to be told when transformers loads
its auto classes, and registers the Monet architecture with `AutoConfig` and
`AutoModel` and `AutoModelForCausalLM` then, so published and edited checkpoints load without
`trust_remote_code`, and `resect --help` answers at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0.dev0"

# What to register, and the transformers module that must have run first.
_AUTO_MODULES = {
    "config": "transformers.models.auto.configuration_auto",
    "model": "transformers.models.auto.modeling_auto",
}
# Modules whose end of execution is a moment to register what has become possible.
_WATCHED = {*_AUTO_MODULES.values(), "resect.model.configuration_monet", "resect.model.modeling_monet"}
_registered: set[str] = set()


def register() -> None:
    """Register MonetConfig, MonetModel and MonetForCausalLM with the transformers auto classes (idempotent)."""
    _register("config")
    _register("model")


def _register(what: str) -> None:
    if what in _registered:
        return
    from .model.configuration_monet import MonetConfig

    if what == "config":
        from transformers import AutoConfig

        AutoConfig.register("monet", MonetConfig, exist_ok=True)
    else:
        from transformers import AutoModel, AutoModelForCausalLM

        from .model.modeling_monet import MonetForCausalLM, MonetModel

        AutoModel.register(MonetConfig, MonetModel, exist_ok=True)
        AutoModelForCausalLM.register(MonetConfig, MonetForCausalLM, exist_ok=True)
    _registered.add(what)


def _loaded(name: str, finished: str | None) -> bool:
    """Imported and done executing (`finished` has just returned from its loader)."""
    module = sys.modules.get(name)
    return module is not None and (name == finished or not getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_ready(finished: str | None = None) -> None:
    """Register what transformers has loaded the auto classes for, unless the Monet module it
    needs is part-way through its own imports (it is registered when that module finishes)."""
    for what, auto in _AUTO_MODULES.items():
        ours = "resect.model.configuration_monet" if what == "config" else "resect.model.modeling_monet"
        if what in _registered or not _loaded(auto, finished) or (ours in sys.modules and not _loaded(ours, finished)):
            continue
        try:
            _register(what)
        except Exception as exc:  # noqa: BLE001 - never break transformers for a user who does not load Monet
            import logging

            logging.getLogger(__name__).warning("Monet is not registered with transformers (%s: %s)", type(exc).__name__, exc)


class _RegisterAfter(importlib.abc.Loader):
    """Runs a watched module with its own loader, then registers what has become possible."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register_ready(finished=module.__name__)

    def __getattr__(self, name: str):  # get_source, get_code, is_package, ... as the real loader has them
        return getattr(self._loader, name)


class _AutoClassWatcher(importlib.abc.MetaPathFinder):
    """Finds the watched modules through the path finder and wraps their loader."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in _WATCHED or len(_registered) == len(_AUTO_MODULES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfter(spec.loader)
        return spec


def _watch_transformers() -> None:
    if not any(isinstance(finder, _AutoClassWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoClassWatcher())
    _register_ready()  # transformers may have loaded its auto classes before resect


_watch_transformers()
