"""User-facing errors.

Every problem caused by the user's input (a template, a verbalizer, a task name, a model name, a
file) is raised as :class:`AutoPromptError`. The CLI prints its message and exits with code 2;
Python callers can catch it. Anything else is a bug.
"""

from __future__ import annotations


class AutoPromptError(ValueError):
    """Bad input: the message names the problem and, where possible, how to fix it."""
