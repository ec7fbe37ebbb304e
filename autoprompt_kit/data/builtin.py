"""The built-in offline tasks: the VADER sentiment corpora and the non-sentiment corpora, by name."""

from __future__ import annotations

from ..errors import AutoPromptError
from . import corpora, vader
from .task import Task

BUILTIN_TASKS: tuple[str, ...] = (*vader.CORPUS_FILES, *corpora.CORPORA)


def list_builtin_tasks() -> list[str]:
    """Names of the built-in offline tasks (``mr``, ``tweets``, ``amazon``, ``nyt``, ``fortunes``, ``spam``)."""
    return list(BUILTIN_TASKS)


def load_builtin(name: str) -> Task:
    """Load a built-in task with its fixed splits, fetching its corpus on first use.

    Raises:
        AutoPromptError: if ``name`` is not built in or its corpus cannot be obtained.
    """
    key = name.lower()
    if key in vader.CORPUS_FILES:
        return vader.load_builtin(key)
    if key in corpora.CORPORA:
        return corpora.load_corpus(key)
    raise AutoPromptError(f"{name!r} is not a built-in task; built-in tasks: {', '.join(BUILTIN_TASKS)}")
