"""autoprompt-kit: search for the best prompt for a pretrained language model.

from autoprompt_kit import Harness, Template, Verbalizer, load_task

task = load_task("mr", shots=16, seed=13)
h = Harness()                                   # the embedded Gemma 3 270M
result = h.evaluate(task.test, "{text_a} It was {mask}.", {"negative": "terrible", "positive": "great"})
"""

from __future__ import annotations

from ._version import __version__
from .artifact import Predictions, Prompt
from .data import Example, Split, Task, few_shot, list_builtin_tasks, load_task, task_from_examples
from .errors import AutoPromptError
from .harness import EvalResult, Harness, ScoreOutput
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .prompts import Template, Verbalizer

__all__ = [
    "AutoPromptError",
    "DEFAULT_MODEL",
    "Predictions",
    "Prompt",
    "EvalResult",
    "Example",
    "Harness",
    "LoadedModel",
    "ScoreOutput",
    "Split",
    "Task",
    "Template",
    "Verbalizer",
    "__version__",
    "few_shot",
    "find_prompt",
    "list_builtin_tasks",
    "load_best",
    "load_task",
    "load_model",
    "task_from_examples",
]

# The built-in methods register themselves (the search backbone never imports them).
from . import methods  # noqa: E402,F401
from .search.api import find_prompt, load_best  # noqa: E402
