"""Writing result files safely.

Temp files and folders (``mkstemp`` 0600, ``mkdtemp`` 0700) are given the permissions any new
file gets (0644 / 0755 under the usual umask 022) before they are renamed into place: results
are meant to be read by others (a shared run folder, a web server, a Hub upload).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename: never a half-written file."""
    # Serialised first: a value JSON cannot hold fails before any file exists.
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temp file and a rename (the old file or the new one, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: A temp file older than this is a killed writer's leftover, not a write in progress.
STALE_SECONDS = 600.0


def drop_stale_temps(path: Path) -> int:
    """Delete ``.<name>.*.tmp`` leftovers of writes to ``path`` that were killed; returns how many."""
    import time

    now, dropped = time.time(), 0
    for leftover in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_SECONDS:
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
                dropped += 1
        except OSError:
            pass
    return dropped


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` whole, on failure it vanishes.

    Readers see the old folder or the new one, never a mix (the swap is two renames).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                raise FileExistsError(f"{path} exists and is not a folder")
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
