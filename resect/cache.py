"""Where resect keeps what it can recompute: routing statistics, baseline results, task files."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$RESECT_CACHE_DIR, else $XDG_CACHE_HOME/resect, else ~/.cache/resect."""
    root = os.environ.get("RESECT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "resect")
    return Path(root).expanduser()
