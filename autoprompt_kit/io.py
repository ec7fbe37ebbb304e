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


# -- bounded reading ---------------------------------------------------------------------------------
# Every file a user (or someone they got it from) hands the kit goes through these: a hostile file
# must end in one clear line, never in a hang (YAML aliases expanding exponentially), a
# RecursionError (deep nesting) or memory exhaustion (a huge file read whole).

#: Deepest nesting of lists/mappings accepted in any YAML or JSON input (a real space or prompt has < 10).
MAX_DEPTH = 64
#: Most values a YAML document may hold once its aliases are expanded (a real space has a few hundred).
MAX_YAML_VALUES = 100_000
#: Largest settings-like file read whole: search spaces, prompt.json, best.json, verbalizers, KBs.
MAX_CONFIG_BYTES = 64 * 2**20
#: Largest task data file read whole (CSV/TSV/JSON/JSONL); larger data belongs in a HF dataset.
MAX_DATA_BYTES = 4 * 2**30


def _size(num: int) -> str:
    """A byte count for a message: ``812 bytes``, ``3.4 KiB``, ``64 MiB``, ``4.2 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num >= scale:
            return f"{num / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{num} bytes"


def check_file(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> Path:
    """``path`` as a readable regular file no larger than ``limit`` bytes, else one clear error."""
    from .errors import AutoPromptError

    path = Path(path)
    try:
        if path.is_dir():
            raise AutoPromptError(f"{what} {str(path)!r} is a folder; give a file")
        if not path.exists():
            raise AutoPromptError(f"{what} {str(path)!r} does not exist")
        size = path.stat().st_size
    except OSError as exc:  # a name too long, a path through a file, no permission
        raise AutoPromptError(f"cannot read {what} {str(path)[:200]!r}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise AutoPromptError(f"{what} {str(path)!r} is not a regular file")
    if size > limit:
        raise AutoPromptError(f"{what} {str(path)!r} is {_size(size)}; at most {_size(limit)} is read")
    return path


def read_text(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES, encoding: str = "utf-8") -> str:
    """The text of a file, size-bounded; a folder, a missing or binary file is one clear error."""
    from .errors import AutoPromptError

    path = check_file(path, what, limit)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AutoPromptError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if b"\x00" in data[:8192]:  # NUL bytes: a binary file (UTF-8 text never holds them)
        raise AutoPromptError(f"{what} {str(path)!r} is a binary file, not text")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise AutoPromptError(f"{what} {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_depth(data: Any, what: str, limit: int = MAX_DEPTH) -> Any:
    """``data`` unchanged if its lists/mappings nest at most ``limit`` deep (checked without recursion)."""
    from .errors import AutoPromptError

    if not isinstance(data, (list, dict)):
        return data
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[int] = set()
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise AutoPromptError(f"{what} nests lists/objects more than {limit} levels deep")
        if id(value) in seen:  # shared (YAML alias) values are walked once
            continue
        seen.add(id(value))
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return data


def loads_json(text: str, what: str) -> Any:
    """``json.loads`` with bounded nesting; a syntax error stays a ``json.JSONDecodeError`` for the caller."""
    from .errors import AutoPromptError

    try:
        data = json.loads(text)
    except RecursionError:  # CPython's parser recurses: thousands of '[' end here
        raise AutoPromptError(f"{what} nests lists/objects more than {MAX_DEPTH} levels deep") from None
    return check_depth(data, what)


def load_json(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """A JSON file, bounded in size and nesting; every failure is one line."""
    from .errors import AutoPromptError

    text = read_text(path, what, limit)
    try:
        return loads_json(text, f"{what} {str(path)!r}")
    except json.JSONDecodeError as exc:
        raise AutoPromptError(
            f"{what} {str(path)!r} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def loads_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs (values counted as expanded), deep nesting and
    recursive aliases, each before anything is built; a syntax error is one line with its position."""
    import yaml

    from .errors import AutoPromptError

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            # The composer recurses once per level: stop before Python's recursion limit does.
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise AutoPromptError(f"{what} nests lists/mappings more than {MAX_DEPTH} levels deep")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, what)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise AutoPromptError(f"{what} is not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise AutoPromptError(f"{what} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    finally:
        loader.dispose()


def _check_yaml_size(root: Any, what: str) -> None:
    """Count the values of a composed YAML graph, and its depth, as if every alias were copied
    (memoised per node, so a billion-laughs file is counted in microseconds: aliases chained one
    inside another multiply the size and add up the depth) and refuse recursive aliases."""
    from .errors import AutoPromptError

    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _yaml_children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            depths[key] = 1 + max((depths[id(c)] for c in children), default=0)
            open_nodes.discard(key)
            if depths[key] > MAX_DEPTH:
                raise AutoPromptError(
                    f"{what} nests lists/mappings more than {MAX_DEPTH} levels deep (YAML aliases included)"
                )
            if sizes[key] > MAX_YAML_VALUES:
                raise AutoPromptError(f"{what} expands to more than {MAX_YAML_VALUES:,} values (YAML aliases); refused")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise AutoPromptError(f"{what} has a recursive YAML alias (a value that contains itself)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _yaml_children(node) if id(c) not in sizes)


def _yaml_children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> Any:
    """A YAML file, bounded in size, nesting and alias expansion; every failure is one line."""
    text = read_text(path, what, limit)
    return loads_yaml(text, f"{what} {str(path)!r}")


def writable_target(path: Path, label: str, folder_hint: str) -> Path:
    """The nearest existing folder a new file at ``path`` would be written under, checked: ``path``
    is not a folder (``folder_hint`` says what to give instead), that ancestor is a folder, not a
    file, and this process may write into it. ``label`` names the input in the one-line errors."""
    from .errors import AutoPromptError

    try:
        if path.is_dir():
            raise AutoPromptError(f"{label} is a folder; {folder_hint}")
        parent = path.resolve().parent
        while not parent.exists():
            parent = parent.parent
    except OSError as exc:  # a name too long, a loop of links
        raise AutoPromptError(f"{label[:220]}: {exc.strerror or exc}") from None
    if not parent.is_dir():
        raise AutoPromptError(f"{label}: cannot write under {str(parent)!r}, which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AutoPromptError(f"{label}: cannot write into {str(parent)!r}")
    return parent
