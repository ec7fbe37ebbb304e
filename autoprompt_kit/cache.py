"""Where downloaded data and converted model weights are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the kit's cache.

    The root is ``$AUTOPROMPT_KIT_CACHE`` if set, else ``$XDG_CACHE_HOME/autoprompt_kit``,
    else ``~/.cache/autoprompt_kit``.
    """
    root = os.environ.get("AUTOPROMPT_KIT_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "autoprompt_kit"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
