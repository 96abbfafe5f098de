"""Where experts and demonstrations are cached on disk."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "safe_name"]


def default_cache_dir() -> Path:
    """``$RLOX_DP_CACHE`` if set, else ``$XDG_CACHE_HOME/rlox_dp`` (default ``~/.cache/rlox_dp``)."""
    if os.environ.get("RLOX_DP_CACHE"):
        return Path(os.environ["RLOX_DP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "rlox_dp"



def safe_name(env_id: str) -> str:
    """``env_id`` as a file-name part (``/`` and ``:`` become ``_``)."""
    return env_id.replace("/", "_").replace(":", "_")
