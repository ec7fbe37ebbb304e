"""What every speed benchmark does with its table: print it, and append it to ``--out`` when given."""

from __future__ import annotations


def emit(text: str, out: str | None) -> None:
    """Print ``text``; with ``out``, also append it (and a blank line) to that Markdown file."""
    print(text)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n\n")
