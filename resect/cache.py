"""Where resect keeps what it can recompute: routing statistics, baseline results, task files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """$RESECT_CACHE_DIR, else $XDG_CACHE_HOME/resect, else ~/.cache/resect."""
    root = os.environ.get("RESECT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "resect")
    return Path(root).expanduser()


def digest(value: Any, length: int = 16) -> str:
    """The one digest of JSON-able data (cache keys, plan fingerprints): sha256 of its canonical
    JSON (sorted keys, anything else as text), `length` hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]
