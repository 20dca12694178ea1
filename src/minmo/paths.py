"""Where minmo keeps what it builds once: ``$MINMO_CACHE``, default ``~/.cache/minmo``.

A module of its own, free of torch, so that light users (corpus synthesis workers) can ask.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MINMO_CACHE`` or ``~/.cache/minmo``."""
    return Path(os.environ.get("MINMO_CACHE", Path.home() / ".cache" / "minmo"))
