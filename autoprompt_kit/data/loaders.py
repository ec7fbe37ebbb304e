"""``load_task``: built-in corpora, local CSV/TSV/JSON/JSONL files, or HuggingFace datasets.

Column mapping (local files and HF datasets alike; names match case-insensitively, and the
``text_a=``/``text_b=``/``label=`` arguments override):

* text_a: ``text_a``, ``text``, ``sentence``, ``sentence1``, ``premise``, ``question1``,
  ``question``, ``content``, ``review``, ``tweet``, ``document``
* text_b: ``text_b``, ``sentence2``, ``hypothesis``, ``question2``
* label: ``label``, ``labels``, ``gold_label``, ``class``, ``target``
* guid: ``guid``, ``idx``, ``id`` (else ``<split>-<row>``)

Every other string column becomes an :attr:`Example.meta` field, and the source column names of
text_a/text_b (e.g. ``premise``) are kept as meta aliases, so a template may say ``{premise}``.

Labels: ints (or int-like strings) are class indices when ``label_names`` is given; otherwise
the distinct values in numeric order become the classes (``0, 1`` stay ``0, 1``; ``1..5`` become
``0..4`` named ``"1".."5"``). Other strings are class names, sorted unless ``label_names`` gives
the order. Empty/missing labels and ``-1`` mean unlabelled.

Splits:

* A single file (or a dataset with only a train split) is cut 80/10/10 into train/dev/test,
  stratified by label (seed 0): every class keeps its share in each split. With ``shots=K`` the
  K-shot dev is drawn from that dev cut and the train examples not picked for train.
* If the test split is missing or entirely unlabelled (GLUE/SuperGLUE hide their test labels as
  -1), the labelled validation split becomes ``test`` and ``dev`` is carved from train.
* A missing dev is carved from train: with ``shots=K`` it is sampled from the train examples not
  picked for the K-shot train split; otherwise it is a seeded, stratified 10% of train (seed 0).

The fixed seed 0 for these cuts and for ``max_examples`` subsampling keeps the evaluation data the
same across few-shot seeds, as in LM-BFF.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import AutoPromptError
from .builtin import BUILTIN_TASKS, list_builtin_tasks, load_builtin
from .task import Example, Split, Task, few_shot_indices

__all__ = ["load_task", "list_builtin_tasks"]

FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
TEXT_A_COLUMNS = (
    "text_a",
    "text",
    "sentence",
    "sentence1",
    "premise",
    "question1",
    "question",
    "content",
    "review",
    "tweet",
    "document",
)
TEXT_B_COLUMNS = ("text_b", "sentence2", "hypothesis", "question2")
LABEL_COLUMNS = ("label", "labels", "gold_label", "class", "target")
GUID_COLUMNS = ("guid", "idx", "id")
SPLIT_ALIASES = {
    "train": "train",
    "dev": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "test": "test",
}
FIXED_SEED = 0
DEV_FRACTION = 0.1
SINGLE_FILE_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class _Table:
    """Raw columns of one split, before they become examples."""

    source: str  # for error messages, e.g. "train.csv" or "glue/sst2 validation"
    columns: dict[str, list[Any]]
    string_columns: set[str]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # HF ClassLabel columns
    rows: int = 0


@dataclass
class _Columns:
    text_a: str
    text_b: str | None
    label: str | None
    guid: str | None
    meta: list[str] = field(default_factory=list)


# -- column resolution -----------------------------------------------------------------------------
def _find(
    columns: Sequence[str], explicit: str | None, candidates: Sequence[str], what: str, source: str
) -> str | None:
    lower = {c.lower(): c for c in columns}
    if explicit is not None:
        if explicit in columns:
            return explicit
        if explicit.lower() in lower:
            return lower[explicit.lower()]
        raise AutoPromptError(f"{source}: no {what} column {explicit!r}; columns are {list(columns)}")
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _resolve(table: _Table, text_a: str | None, text_b: str | None, label: str | None) -> _Columns:
    names = list(table.columns)
    a = _find(names, text_a, TEXT_A_COLUMNS, "text_a", table.source)
    if a is None:
        raise AutoPromptError(
            f"{table.source}: no text column found among {names}; name one with text_a=... "
            f"(recognised: {', '.join(TEXT_A_COLUMNS)})"
        )
    b = _find(names, text_b, TEXT_B_COLUMNS, "text_b", table.source)
    lab = _find(names, label, LABEL_COLUMNS, "label", table.source)
    used = {a, b, lab} - {None}
    guid = next((c for c in _ci_matches(names, GUID_COLUMNS) if c not in used), None)
    if b is not None and b == a:
        raise AutoPromptError(f"{table.source}: text_a and text_b are the same column {a!r}")
    meta = [c for c in names if c not in used and c != guid and c in table.string_columns]
    return _Columns(text_a=a, text_b=b, label=lab, guid=guid, meta=meta)


def _ci_matches(names: Sequence[str], candidates: Sequence[str]) -> list[str]:
    lower = {c.lower(): c for c in names}
    return [lower[c] for c in candidates if c in lower]


# -- labels ----------------------------------------------------------------------------------------
def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _known_int(value: Any) -> int:
    """``_as_int`` of a value already seen to be an integer label."""
    as_int = _as_int(value)
    assert as_int is not None
    return as_int


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _is_nan(value: Any) -> bool:
    """A NaN label (JSON ``NaN``, or the text ``nan`` a pandas export writes for a missing value)."""
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and value.strip().lower() == "nan"


def _check_labels_present(table: _Table, column: str) -> None:
    """A split is labelled on every row or on none (hidden test labels): a row with an empty or NaN
    label among labelled rows is a broken row, never a class and never silently unlabelled."""
    values = table.columns[column]
    bad = [r for r, v in enumerate(values) if _is_missing(v) or _is_nan(v)]
    if bad and len(bad) < len(values):
        what = "NaN" if _is_nan(values[bad[0]]) else "empty"
        raise AutoPromptError(
            f"{table.source} row {bad[0] + 1}: the label (column {column!r}) is {what}"
            + (f" ({len(bad)} rows like it)" if len(bad) > 1 else "")
            + "; fill it in or remove the row"
        )


def _label_mapping(
    tables: dict[str, _Table], cols: dict[str, _Columns], label_names: list[str] | None
) -> tuple[list[str], Callable[[Any], int]]:
    """Decide the class names and return ``(names, to_index)`` mapping a raw label to its index."""
    label_columns = {key: column for key in tables if (column := cols[key].label) is not None}
    class_names = next(
        (t.class_names[label_columns[k]] for k, t in tables.items() if label_columns.get(k) in t.class_names), None
    )
    values = [v for key, column in label_columns.items() for v in tables[key].columns[column] if not _is_missing(v)]
    if class_names is not None:  # HF ClassLabel: values are already indices
        if label_names is not None and len(label_names) != len(class_names):
            raise AutoPromptError(
                f"label_names has {len(label_names)} names but the dataset has {len(class_names)} classes {class_names}"
            )
        names = list(label_names) if label_names is not None else list(class_names)
        return names, lambda v: -1 if _is_missing(v) else int(v)

    maybe_ints = [_as_int(v) for v in values]
    if all(i is not None for i in maybe_ints):
        ints = [i for i in maybe_ints if i is not None]
        labelled = sorted({i for i in ints if i != -1})
        if labelled and labelled[0] < -1:
            raise AutoPromptError(f"label {labelled[0]} is negative; labels must be >= 0 (or -1 for unlabelled)")
        if label_names is not None:
            if labelled and labelled[-1] >= len(label_names):
                raise AutoPromptError(
                    f"label {labelled[-1]} is out of range for {len(label_names)} label_names {label_names}"
                )
            return list(label_names), lambda v: -1 if _is_missing(v) else _known_int(v)
        position = {v: i for i, v in enumerate(labelled)}
        return [
            str(v) for v in labelled
        ], lambda v: -1 if _is_missing(v) or _known_int(v) == -1 else position[_known_int(v)]

    strings = {str(v).strip() for v in values}
    if label_names is not None:
        unknown = sorted(strings - set(label_names))
        if unknown:
            raise AutoPromptError(f"labels {unknown[:5]} are not among label_names {label_names}")
        names = list(label_names)
    else:
        names = sorted(strings)
    index = {n: i for i, n in enumerate(names)}
    return names, lambda v: -1 if _is_missing(v) else index[str(v).strip()]


# -- tables -> examples ----------------------------------------------------------------------------
def _text(value: Any, table: _Table, row: int, column: str, role: str) -> str:
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else ("empty" if isinstance(value, str) else f"not a string ({value!r})")
        raise AutoPromptError(f"{table.source} row {row + 1}: {role} (column {column!r}) is {what}")
    return value.strip()


def _build_split(table: _Table, cols: _Columns, to_index: Callable[[Any], int], split: str, num_labels: int) -> Split:
    data = table.columns
    examples = []
    for r in range(table.rows):
        a = _text(data[cols.text_a][r], table, r, cols.text_a, "text_a")
        b = _text(data[cols.text_b][r], table, r, cols.text_b, "text_b") if cols.text_b else None
        label = -1 if cols.label is None else to_index(data[cols.label][r])
        if label >= num_labels or label < -1:
            raise AutoPromptError(f"{table.source} row {r + 1}: label {label} is out of range for {num_labels} classes")
        meta = {c: ("" if data[c][r] is None else data[c][r]) for c in cols.meta}
        # Aliases let templates use the dataset's own names, e.g. {premise} / {hypothesis}.
        if cols.text_a != "text_a":
            meta[cols.text_a] = a
        if cols.text_b and cols.text_b != "text_b":
            meta[cols.text_b] = b
        guid = f"{split}-{r}" if cols.guid is None else str(data[cols.guid][r])
        examples.append(Example(text_a=a, text_b=b, label=label, guid=guid, meta=meta))
    return Split(examples, name=split)


def _tables_to_splits(
    tables: dict[str, _Table],
    text_a: str | None,
    text_b: str | None,
    label: str | None,
    label_names: list[str] | None,
) -> tuple[list[str], dict[str, Split]]:
    for key, t in tables.items():
        if t.rows == 0:
            raise AutoPromptError(f"{t.source}: the {key} split is empty")
    cols = {key: _resolve(t, text_a, text_b, label) for key, t in tables.items()}
    if cols["train"].label is None:
        raise AutoPromptError(
            f"{tables['train'].source}: no label column among {list(tables['train'].columns)}; "
            f"name it with label=... (recognised: {', '.join(LABEL_COLUMNS)})"
        )
    for key, t in tables.items():
        if (column := cols[key].label) is not None:
            _check_labels_present(t, column)
    names, to_index = _label_mapping(tables, cols, label_names)
    splits = {key: _build_split(t, cols[key], to_index, key, len(names)) for key, t in tables.items()}
    return names, splits


# -- split bookkeeping -----------------------------------------------------------------------------
def _labelled(split: Split | None) -> bool:
    return split is not None and bool((split.labels >= 0).any())


def _cut(split: Split, fractions: Sequence[float], names: Sequence[str]) -> list[Split]:
    """Cut ``split`` into parts of ``fractions`` (the first takes the rounding), stratified by label.

    Every class is spread over the parts in proportion (within one example): an unstratified cut
    of a small or imbalanced file can leave a class nearly absent from dev or test. Each example's
    key is its seeded rank within its class over the class size, so consecutive slices of the
    examples sorted by key take every class's share.
    """
    rng = np.random.default_rng(FIXED_SEED)
    labels = split.labels
    # Drawn for all examples at once, so the cut does not depend on the classes' order (label_names).
    shuffled, jitter = rng.permutation(len(split)), rng.random(len(split))
    key = np.empty(len(split))
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        key[idx] = (np.argsort(np.argsort(shuffled[idx])) + jitter[idx]) / len(idx)
    order = np.argsort(key, kind="stable")
    sizes = [int(len(split) * f) for f in fractions[1:]]
    first = len(split) - sum(sizes)
    bounds = np.cumsum([0, first, *sizes])
    parts = [Split(split[rng.permutation(order[bounds[i] : bounds[i + 1]])], name=n) for i, n in enumerate(names)]
    for part in parts:
        if len(part) == 0:
            raise AutoPromptError(
                f"split {split.name!r} has only {len(split)} examples: too few to carve a {part.name} split from it"
            )
    return parts


def _normalise_splits(splits: dict[str, Split]) -> tuple[Split, Split | None, Split, bool]:
    """``(train, dev, test, carved)``: ``carved`` when dev was cut from the same labelled pool as train."""
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    if not _labelled(train):
        raise AutoPromptError("the train split has no labelled examples")
    if not _labelled(dev):
        dev = None
    if not _labelled(test):
        if dev is not None:
            # GLUE-style: hidden test labels, so validation is the test set and dev comes from train.
            test, dev = Split(dev, name="test"), None
        else:
            train, dev, test = _cut(train, SINGLE_FILE_FRACTIONS, ("train", "dev", "test"))
            return train, dev, test, True
    assert test is not None  # labelled
    return train, dev, test, False


def _cap(split: Split, max_examples: int | None) -> Split:
    if max_examples is None or len(split) <= max_examples:
        return split
    idx = np.sort(np.random.default_rng(FIXED_SEED).choice(len(split), size=max_examples, replace=False))
    return split[idx]


# -- local files -----------------------------------------------------------------------------------
def _table_from_records(records: list[Any], source: str) -> _Table:
    columns: dict[str, list[Any]] = {}
    for r, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise AutoPromptError(f"{source} row {r + 1} is a {type(rec).__name__}, not an object with named fields")
        for key in rec:
            if key is None:
                raise AutoPromptError(f"{source} row {r + 1} has more fields than the header")
            columns.setdefault(str(key), [None] * r)
        for key, col in columns.items():
            col.append(rec.get(key))
    table = _table_from_columns(columns, source)
    table.rows = len(records)  # a file of empty records has rows but no columns
    return table


def _read_delimited(path: Path, delimiter: str) -> list[dict[str, Any]]:
    from ..io import MAX_DATA_BYTES, check_file

    check_file(path, "task file", MAX_DATA_BYTES)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents exceed the 128 KiB default
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            # TSV files (GLUE style) are unquoted: a leading '"' in a text is part of the text.
            quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
            if not reader.fieldnames:
                raise AutoPromptError(f"{path} is empty: expected a header row naming the columns")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AutoPromptError(f"could not read {path}: {exc}") from exc
    finally:
        csv.field_size_limit(old_limit)


def _read_json(path: Path) -> list[Any] | dict[str, list[Any]]:
    from ..io import MAX_DATA_BYTES, loads_json, read_text

    text = read_text(path, "task file", MAX_DATA_BYTES, encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = loads_json(text, f"task file {str(path)!r}")
        except json.JSONDecodeError:
            data = None  # many ".json" exports (e.g. datasets' to_json) are really JSON lines
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            if isinstance(data.get("data"), list):
                return data["data"]
            if data and all(isinstance(v, list) for v in data.values()):
                return data  # {"train": [...], "test": [...]}
            raise AutoPromptError(
                f'{path}: expected a list of records, {{"data": [...]}} or {{split: [records]}}; got an object '
                f"with keys {list(data)[:8]}"
            )
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(loads_json(line, f"{path} line {lineno}"))
            except json.JSONDecodeError as exc:
                raise AutoPromptError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from None
    return records


def _read_file_tables(path: Path) -> dict[str, _Table]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return {"train": _table_from_records(_read_delimited(path, "," if suffix == ".csv" else "\t"), path.name)}
    data = _read_json(path)
    if isinstance(data, dict):
        tables = {}
        for key, records in data.items():
            split = SPLIT_ALIASES.get(key.lower())
            if split is None:
                raise AutoPromptError(f"{path}: unknown split {key!r}; use train, dev/validation, test")
            tables[split] = _table_from_records(records, f"{path.name} [{key}]")
        if "train" not in tables:
            raise AutoPromptError(f"{path}: no 'train' split among {list(data)}")
        return tables
    return {"train": _table_from_records(data, path.name)}


def _read_dir_tables(folder: Path) -> dict[str, _Table]:
    found: dict[str, Path] = {}
    for child in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(child.stem.lower())
        if split is None or child.suffix.lower() not in FILE_SUFFIXES or not child.is_file():
            continue
        if split in found:
            raise AutoPromptError(f"{folder} has two {split} files: {found[split].name} and {child.name}; keep one")
        found[split] = child
    if "train" not in found:
        raise AutoPromptError(
            f"{folder} has no train file: expected train.csv/.tsv/.json/.jsonl plus optional "
            f"dev (or validation) and test files"
        )
    tables = {}
    for split, path in found.items():
        file_tables = _read_file_tables(path)
        if set(file_tables) != {"train"}:
            raise AutoPromptError(f"{path} holds several splits; in a folder each file must hold one")
        tables[split] = file_tables["train"]
    return tables


# -- HuggingFace datasets --------------------------------------------------------------------------
def _hf_tables(name: str, hf_config: str | None) -> dict[str, _Table]:
    def unknown(reason: str) -> AutoPromptError:
        return AutoPromptError(
            f"unknown task {name!r}: not a built-in task ({', '.join(BUILTIN_TASKS)}), not a local file, "
            f"and the HF datasets hub could not load it: {reason}"
        )

    try:
        import datasets
    except ImportError as exc:
        raise unknown(f"the 'datasets' package is not installed ({exc})") from exc
    try:
        loaded = datasets.load_dataset(name, hf_config)
    except Exception as exc:  # noqa: BLE001 - any failure (network, unknown name, bad config) is a user error here
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
        raise unknown(reason[:300]) from exc

    label = f"{name}/{hf_config}" if hf_config else name
    return _dataset_tables(loaded, label)


def _dataset_tables(loaded: Any, label: str) -> dict[str, _Table]:
    """Tables of a ``datasets.Dataset`` (one split: train) or ``DatasetDict`` (splits by name)."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    available = list(loaded)
    chosen: dict[str, Any] = {}
    for split_name, ds in loaded.items():
        key = SPLIT_ALIASES.get(split_name.lower())
        if key is not None and key not in chosen:
            chosen[key] = (split_name, ds)
    if "train" not in chosen:
        if len(available) != 1:
            raise AutoPromptError(f"HF dataset {label!r} has no train split; its splits are {available}")
        chosen = {"train": (available[0], loaded[available[0]])}

    tables = {}
    for key, (split_name, ds) in chosen.items():
        features = ds.features
        strings = {
            c for c, f in features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
        }
        class_names = {c: list(f.names) for c, f in features.items() if isinstance(f, datasets.ClassLabel)}
        # Only scalar columns are materialised: images, token lists etc. are never needed.
        columns = {c: list(ds[c]) for c, f in features.items() if isinstance(f, (datasets.Value, datasets.ClassLabel))}
        tables[key] = _Table(
            source=f"{label} {split_name}",
            columns=columns,
            string_columns=strings,
            class_names=class_names,
            rows=len(ds),
        )
    return tables


# -- in-memory data --------------------------------------------------------------------------------
def _columns_table(columns: Mapping[str, Any], source: str) -> _Table:
    """A table from ``{column: values}`` (lists, arrays, pandas Series), all of one length."""
    lists: dict[str, list[Any]] = {}
    for key, values in columns.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise AutoPromptError(f"{source}: column {key!r} must be a sequence of values, got {type(values).__name__}")
        lists[str(key)] = list(values)
    sizes = {k: len(v) for k, v in lists.items()}
    if len(set(sizes.values())) > 1:
        raise AutoPromptError(f"{source}: columns have different lengths {sizes}")
    return _table_from_columns(lists, source)


def _table_from_columns(columns: dict[str, list[Any]], source: str) -> _Table:
    rows = len(next(iter(columns.values()), []))
    strings = {c for c, vals in columns.items() if all(v is None or isinstance(v, str) for v in vals)}
    return _Table(source=source, columns=columns, string_columns=strings, rows=rows)


def _frame_table(frame: Any, source: str) -> _Table:
    """A pandas DataFrame as one table; missing cells (NaN, None, NA) become None, as in a CSV."""
    import pandas as pd

    columns = {str(c): [None if _pandas_missing(pd, v) else v for v in frame[c].tolist()] for c in frame.columns}
    return _table_from_columns(columns, source)


def _pandas_missing(pd: Any, value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array in a cell is not missing
        return False


def _in_memory_tables(data: Any, task_name: str | None) -> tuple[dict[str, _Table], str, str]:
    """``(tables, name, description)`` of a DataFrame, a ``datasets`` object or a dict of columns."""
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "columns"):
        name = task_name or "dataframe"
        return {"train": _frame_table(data, name)}, name, f"pandas DataFrame ({len(data)} rows)"
    if module == "datasets":
        import datasets

        if isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
            info = getattr(data, "info", None) if isinstance(data, datasets.Dataset) else None
            name = task_name or getattr(info, "dataset_name", None) or "dataset"
            return _dataset_tables(data, name), name, f"datasets.{type(data).__name__} object"
    if isinstance(data, Mapping):
        name = task_name or "examples"
        table = _columns_table(data, name)
        return {"train": table}, name, f"in-memory data ({table.rows} examples)"
    raise AutoPromptError(
        f"load_task takes a task name or path, a pandas DataFrame, a datasets.Dataset/DatasetDict "
        f"or a dict of columns; got {type(data).__name__}"
    )


# -- entry point -----------------------------------------------------------------------------------
def _task_path(name: str) -> Path:
    """``name`` as a local path, ``~`` expanded; a path the system cannot even look at is one clear error."""
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~nouser/…": no such user
        raise AutoPromptError(
            f"task path {name[:200]!r}: {name.split('/')[0][:60]!r} is not a known user's home folder"
        ) from None
    try:
        path.is_dir()
        path.exists()
    except OSError as exc:  # a name longer than the file system allows, a loop of links
        raise AutoPromptError(f"cannot read task path {name[:60]!r}…: {exc.strerror or exc}") from None
    return path


def _fitting_shots(train: Split, dev: Split | None, carved: bool, num_classes: int, wanted: int) -> int:
    """The largest K <= ``wanted`` that every class allows: K train examples, and K dev examples from
    the dev split (or, when dev is carved from the same file, from dev plus the unpicked train rows)."""
    fit = wanted
    for c in range(num_classes):
        in_train = int((train.labels == c).sum())
        in_dev = int((dev.labels == c).sum()) if dev is not None else 0
        if dev is None or carved:
            fit = min(fit, in_train, (in_train + in_dev) // 2)
        else:
            fit = min(fit, in_train, in_dev)
    return max(fit, 1)  # a class with no example is still the sampler's clear error


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise AutoPromptError(f"{name} must be a positive integer, got {value!r}")


def load_task(
    name: str | Any,
    *,
    shots: int | None = None,
    seed: int = 13,
    dev_shots: int | None = None,
    text_a: str | None = None,
    text_b: str | None = None,
    label: str | None = None,
    label_names: list[str] | None = None,
    hf_config: str | None = None,
    max_examples: int | None = None,
    on_small_class: str = "error",
    fit_shots: bool = False,
    shots_flag: str | None = None,
    task_name: str | None = None,
) -> Task:
    """Load a task: a built-in corpus, a local file or folder, a HF dataset, or data in memory.

    Args:
        name: ``mr``/``tweets``/``amazon``/``nyt`` (case-insensitive); a ``.csv``/``.tsv``/
            ``.json``/``.jsonl`` file; a folder with ``train``, ``dev``/``validation`` and ``test``
            files; a HuggingFace ``datasets`` name; or in memory: a pandas ``DataFrame`` (one
            table, like a single file), a ``datasets.Dataset`` / ``DatasetDict`` (splits by name),
            or a dict of columns (``{"text": [...], "label": [...]}``). In-memory data follows the
            file rules: the same column names, label mapping, validation, splits and few-shot.
        shots: If set, train and dev become K-shot samples per class (LM-BFF); test stays full.
        seed: Few-shot sampling seed.
        dev_shots: Per-class size of the few-shot dev split (default: ``shots``).
        text_a: Column holding the main text (overrides the default column names).
        text_b: Column holding the second text of a pair.
        label: Column holding the label.
        label_names: Class names (and order) to use instead of the inferred ones.
        hf_config: HF dataset configuration, e.g. ``"sst2"`` for ``glue``.
        max_examples: Cap every split (test included) by seeded subsampling (seed 0).
        on_small_class: With ``shots``, a class with fewer than K examples: ``error`` (default) or
            ``all`` (take all of its examples, with a warning; train and dev are then imbalanced).
        fit_shots: ``shots`` is an upper bound: lower it to the largest K that every class allows in
            train and dev (a small file); the K used is ``task.shots``.
        shots_flag: the name errors give the shots setting (the CLI passes ``--shots``).
        task_name: The name of an in-memory task (default ``dataframe``, the dataset's name, or
            ``examples``).

    Returns:
        A :class:`Task` with ``train``, ``dev`` and ``test`` splits.

    Raises:
        AutoPromptError: for unknown names, unreadable files, missing columns, empty splits or
            texts, and too few examples for ``shots``.
    """
    _check_positive("shots", shots)
    _check_positive("dev_shots", dev_shots)
    _check_positive("max_examples", max_examples)
    if dev_shots is not None and shots is None:
        raise AutoPromptError("dev_shots only applies with shots=K")
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if not label_names or len(set(label_names)) != len(label_names):
            raise AutoPromptError(f"label_names must be non-empty and unique, got {label_names}")

    if isinstance(name, str) and not name.strip():
        raise AutoPromptError(
            f"the task name is empty; give a built-in task ({', '.join(BUILTIN_TASKS)}), "
            "a local file or folder, or a HF dataset name"
        )
    key = name.strip().lower() if isinstance(name, str) else None
    if key is None:
        if hf_config:
            raise AutoPromptError("hf_config applies to a dataset loaded by name, not to data in memory")
        tables, task_name, description = _in_memory_tables(name, task_name)
        names, raw = _tables_to_splits(tables, text_a, text_b, label, label_names)
        train, dev, test, carved = _normalise_splits(raw)
        metric = "accuracy"
    elif key in BUILTIN_TASKS:
        if text_a or text_b or label or hf_config:
            raise AutoPromptError(f"built-in task {key!r} takes no text_a/text_b/label/hf_config arguments")
        base = load_builtin(key)
        names = base.label_names
        if label_names is not None:
            if len(label_names) != len(names):
                raise AutoPromptError(
                    f"built-in task {key!r} has {len(names)} labels {names}; got label_names {label_names}"
                )
            names = label_names
        train, dev, test = base.train, base.dev, base.test
        carved = False
        task_name, metric, description = key, base.metric, base.description
    else:
        path = _task_path(name)
        if path.suffix.lower() in FILE_SUFFIXES or path.is_dir():
            if not path.exists():
                raise AutoPromptError(f"task file {str(path)!r} does not exist")
            tables = _read_dir_tables(path) if path.is_dir() else _read_file_tables(path)
            task_name, description = (path.name if path.is_dir() else path.stem), f"local data: {path}"
        elif path.suffix and path.is_file():
            raise AutoPromptError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}"
            )
        else:
            tables = _hf_tables(name, hf_config)
            task_name = f"{name}/{hf_config}" if hf_config else name
            description = f"HuggingFace dataset {task_name}"
        names, raw = _tables_to_splits(tables, text_a, text_b, label, label_names)
        train, dev, test, carved = _normalise_splits(raw)
        metric = "accuracy"

    if shots is not None and fit_shots:
        shots = _fitting_shots(train, dev, carved, len(names), shots)
    if shots is not None:
        rng = np.random.default_rng(seed)
        picked = few_shot_indices(train.labels, shots, rng, "the train split", names, on_small_class, shots_flag)
        pool = dev
        if pool is None or carved:
            # A dev cut from the same file as train is only 10% of it: K per class is drawn from it
            # and the train examples not picked (a 10-class file of 1,000 rows has 10 per class in it).
            rest = np.ones(len(train), dtype=bool)
            rest[picked] = False
            pool = Split([*train[rest], *(dev if dev is not None else [])], name="dev")
        train = Split((train[int(i)] for i in picked), name="train")
        dev_rng = np.random.default_rng(seed)
        what = "the dev split" if dev is not None and not carved else "the train examples left for dev"
        dev_idx = few_shot_indices(pool.labels, dev_shots or shots, dev_rng, what, names, on_small_class, shots_flag)
        dev = Split((pool[int(i)] for i in dev_idx), name="dev")
    elif dev is None:
        train, dev = _cut(train, (1 - DEV_FRACTION, DEV_FRACTION), ("train", "dev"))

    splits = {"train": _cap(train, max_examples), "dev": _cap(dev, max_examples), "test": _cap(test, max_examples)}
    return Task(name=task_name, label_names=names, splits=splits, metric=metric, description=description, shots=shots)


def task_from_examples(
    texts: Sequence[str] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    label_names: Sequence[str] | None = None,
    text_b: Sequence[str] | np.ndarray | None = None,
    name: str = "examples",
    **options: Any,
) -> Task:
    """A task from texts and labels in memory, by the rules :func:`load_task` applies to a file.

    The labels are class names (sorted unless ``label_names`` gives the order) or ints (class
    indices with ``label_names``; otherwise the distinct values in order); the examples are cut
    80/10/10 into train/dev/test, stratified, and ``shots=K`` (in ``options``, with ``seed``,
    ``dev_shots``, ``max_examples``, ``on_small_class``) draws K per class for train and dev.

    Example::

        task = task_from_examples(["great fun", "a waste of time", ...], ["pos", "neg", ...], shots=8)
    """
    if isinstance(texts, str) or isinstance(labels, str) or isinstance(text_b, str):
        raise AutoPromptError("task_from_examples takes sequences of texts and labels, not a single string")
    columns: dict[str, Any] = {"text_a": texts, "label": labels}
    if text_b is not None:
        columns["text_b"] = text_b
    return load_task(columns, label_names=None if label_names is None else list(label_names), task_name=name, **options)
