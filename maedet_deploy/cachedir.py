"""Where maedet-deploy keeps what it can rebuild: ~/.cache/maedet-deploy (XDG_CACHE_HOME honoured)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The folder of the latency cache and the sample image set."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maedet-deploy"
