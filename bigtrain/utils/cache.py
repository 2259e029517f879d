"""Where bigtrain keeps things computed or filled once: feature-network weights, FID reference statistics.

Owning this location (instead of clean-fid's /tmp and site-packages defaults) keeps the cache on a
disk the user chose, shared between runs, and never inside an installed package.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The bigtrain cache: ``$BIGTRAIN_CACHE`` or ``~/.cache/bigtrain``, created on first use."""
    root = os.environ.get("BIGTRAIN_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "bigtrain"
    path.mkdir(parents=True, exist_ok=True)
    return path
