"""Reading inputs to predict on, in chunks: CSV, TSV, JSON lines or plain text lines.

Columns follow the task loaders' rules (``text_a``/``text``/``sentence``…, optional ``text_b``…,
an id column ``guid``/``idx``/``id``; other string columns are extra template fields); a label
column, if present, is ignored. Blank lines are skipped. Every problem is an
:class:`AutoPromptError` naming the source and line.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import AutoPromptError
from .loaders import GUID_COLUMNS, LABEL_COLUMNS, TEXT_A_COLUMNS, TEXT_B_COLUMNS, _find
from .task import Example

INPUT_FORMATS = ("lines", "csv", "tsv", "jsonl")


@dataclass
class InputRow:
    """One input: the example to score, its line number and its id value (if the input had an id column)."""

    example: Example
    line: int
    id: Any = None


def input_format(path: str, given: str | None = None) -> str:
    """The format of ``path`` (``-`` = stdin): ``given``, else by suffix (plain lines otherwise)."""
    if given is not None:
        if given not in INPUT_FORMATS:
            raise AutoPromptError(f"unknown input format {given!r}; choose one of {', '.join(INPUT_FORMATS)}")
        return given
    suffix = Path(path).suffix.lower() if path != "-" else ""
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "lines")


def open_input(path: str) -> IO[str]:
    """A text stream for ``path`` (``-`` = stdin); a clear error for a folder or a missing file."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="strict")
    p = Path(path)
    try:
        if p.is_dir():
            raise AutoPromptError(f"--input {path!r} is a folder; give a file (or - for stdin)")
        if not p.is_file():
            raise AutoPromptError(f"--input file {path!r} does not exist")
        return p.open(encoding="utf-8-sig", newline="")
    except OSError as exc:  # a name too long, no permission
        raise AutoPromptError(f"cannot read --input {path[:60]!r}: {exc.strerror or exc}") from None


class _Columns:
    def __init__(self, names: list[str], source: str) -> None:
        self.text_a = _find(names, None, TEXT_A_COLUMNS, "text_a", source)
        if self.text_a is None:
            raise AutoPromptError(f"{source}: no text column among {names}; name it one of {', '.join(TEXT_A_COLUMNS)}")
        self.text_b = _find(names, None, TEXT_B_COLUMNS, "text_b", source)
        label = _find(names, None, LABEL_COLUMNS, "label", source)
        used = {self.text_a, self.text_b, label} - {None}
        self.id = next(
            (lower for c in GUID_COLUMNS for lower in names if lower.lower() == c and lower not in used), None
        )
        self.meta = [c for c in names if c not in used and c != self.id]


def _record_row(record: Any, cols: _Columns, line: int, source: str) -> InputRow:
    if not isinstance(record, dict):
        raise AutoPromptError(
            f"{source} line {line}: expected an object with named fields, got {type(record).__name__}"
        )
    text = record.get(cols.text_a)
    if not isinstance(text, str) or not text.strip():
        what = "missing" if text is None else "empty" if isinstance(text, str) else f"not a string ({text!r:.40})"
        raise AutoPromptError(f"{source} line {line}: the text (column {cols.text_a!r}) is {what}")
    text_b = record.get(cols.text_b) if cols.text_b else None
    if cols.text_b and not isinstance(text_b, str):
        raise AutoPromptError(f"{source} line {line}: the second text (column {cols.text_b!r}) is missing")
    meta = {c: record[c] for c in cols.meta if isinstance(record.get(c), str)}
    return InputRow(
        Example(text, -1, text_b, guid=f"line {line}", meta=meta), line, record.get(cols.id) if cols.id else None
    )


def iter_inputs(stream: IO[str], fmt: str, source: str) -> Iterator[InputRow]:
    """Yield every input of a stream, one at a time (nothing is read ahead beyond a line)."""
    if fmt == "lines":
        for line, text in enumerate(stream, start=1):
            text = text.rstrip("\r\n")
            if text.strip():
                yield InputRow(Example(text.strip(), -1, guid=f"line {line}"), line)
        return
    if fmt in ("csv", "tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents exceed the 128 KiB default
        reader = csv.DictReader(
            stream,
            delimiter="," if fmt == "csv" else "\t",
            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
        )
        try:
            if not reader.fieldnames:
                raise AutoPromptError(f"{source} is empty: expected a header row naming the columns")
            cols = _Columns(list(reader.fieldnames), source)
            for record in reader:
                if None in record:
                    raise AutoPromptError(f"{source} line {reader.line_num}: more fields than the header")
                if not any((v or "").strip() for v in record.values()):
                    continue
                yield _record_row(record, cols, reader.line_num, source)
        except csv.Error as exc:
            raise AutoPromptError(f"{source} line {reader.line_num}: {exc}") from None
        return
    from ..io import loads_json

    cols_json: _Columns | None = None
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            record = loads_json(text, f"{source} line {line}")  # nesting bounded: no RecursionError
        except json.JSONDecodeError as exc:
            raise AutoPromptError(f"{source} line {line} is not valid JSON: {exc.msg}") from None
        if cols_json is None:
            if not isinstance(record, dict):
                raise AutoPromptError(
                    f"{source} line {line}: expected an object with named fields, got {type(record).__name__}"
                )
            cols_json = _Columns(list(record), source)
        yield _record_row(record, cols_json, line, source)


def read_chunks(stream: IO[str], fmt: str, source: str, size: int) -> Iterator[list[InputRow]]:
    """Inputs in lists of at most ``size`` (memory stays flat in the input's length)."""
    chunk: list[InputRow] = []
    try:
        for row in iter_inputs(stream, fmt, source):
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except UnicodeDecodeError as exc:
        raise AutoPromptError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if chunk:
        yield chunk
