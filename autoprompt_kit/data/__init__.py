"""Task data: examples, splits, tasks, few-shot sampling and loaders.

``load_task`` reads the built-in offline corpora (sentiment: ``mr``, ``tweets``, ``amazon``,
``nyt``; topic: ``fortunes``; e-mail: ``spam``), local CSV/TSV/JSON/JSONL files or folders, and
HuggingFace datasets.
"""

from __future__ import annotations

from .builtin import list_builtin_tasks
from .loaders import load_task, task_from_examples
from .task import Example, Split, Task, few_shot
from .vader import vader_lexicon_path

__all__ = [
    "Example",
    "Split",
    "Task",
    "few_shot",
    "list_builtin_tasks",
    "load_task",
    "task_from_examples",
    "vader_lexicon_path",
]
