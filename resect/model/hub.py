"""Where a checkpoint is: a local folder, the built-in model, or a Hugging Face repo id (the Hub, its
local cache when offline, or a mirror made by `resect mirror`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError


def resolve_model_path(model: str | os.PathLike | None, *, mirror=None) -> Path:
    """A local folder as is; None means the built-in model; anything else a Hugging Face repo id:
    from `mirror` (a resect.run.mirror.Mirror) when given, else the Hub or, offline, its local cache."""
    if model is None:
        from ..builtin import builtin_model_path

        return builtin_model_path()
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    first = text.split("/")[0]
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or Path(first).is_dir() or not first:
        raise CheckpointError(f"Model path '{model}' does not exist. Pass a checkpoint folder or a Hugging Face repo id.")
    if mirror is not None:
        return mirror.model(text)
    return _download(text)


def _download(repo_id: str) -> Path:
    """A Hub repo's checkpoint files: downloaded, or from the Hugging Face cache when offline."""
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or cached in part): one answer for a user
            raise CheckpointError(
                f"'{repo_id}' is neither a folder here nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set. "
                "Download it where the network allows (resect mirror), or pass the checkpoint folder."
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way for a user
        raise CheckpointError(
            f"'{repo_id}' is not a folder here, and fetching it from the Hugging Face Hub failed ({type(exc).__name__}). "
            "Download it where the network allows (resect mirror) and pass the local folder."
        ) from None


__all__ = ["resolve_model_path"]
