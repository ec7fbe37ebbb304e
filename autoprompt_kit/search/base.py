"""The shape every search method has: a config dataclass, a Searcher, and the candidates it scores.

A method implements :class:`Searcher` — it never touches storage, seeds, printing or output files;
the backbone (:mod:`.runner`) owns those. Configs are dataclasses loadable from the YAML files in
``search_spaces/``; a registry maps the CLI name to the method.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..artifact import ENSEMBLE_WEIGHTINGS, HEADS, Prompt, combine_results  # noqa: F401  (re-exported)
from ..errors import AutoPromptError

if TYPE_CHECKING:
    import optuna

    from ..data import Task
    from ..harness import EvalResult, Harness

logger = logging.getLogger(__name__)

@dataclass
class SearchConfig:
    """Base of every method's config. Subclasses add fields with defaults and ``help`` metadata."""

    method: str = field(default="", metadata={"help": "the method this space is for (checked when loading)"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        """Build from a dict; unknown keys are dropped with a warning so old files keep loading."""
        if not isinstance(data, dict):
            raise AutoPromptError(f"a search space must be a mapping of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            logger.warning("ignoring unknown search-space keys for %s: %s", cls.__name__, ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchConfig":
        import yaml

        path = Path(path)
        if not path.exists():
            raise AutoPromptError(f"search space file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise AutoPromptError(f"search space {str(path)!r} is not valid YAML: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: What a trial proposes is the same object a search returns and a user loads: a found prompt.
Candidate = Prompt


@dataclass
class TrialOutcome:
    """What :meth:`Searcher.run_trial` returns: the candidate, its dev result, extra artifacts."""

    candidate: Candidate
    dev: "EvalResult"
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchContext:
    """Everything a trial may use: the task (few-shot train/dev), the harness and the seed."""

    task: "Task"
    harness: "Harness"
    seed: int

    def seed_everything(self, offset: int = 0) -> None:
        import random

        random.seed(self.seed + offset)
        np.random.seed(self.seed + offset)
        torch.manual_seed(self.seed + offset)


class Searcher(ABC):
    """A search method.

    Subclasses set ``name`` (the CLI name) and ``config_class``, and implement :meth:`run_trial`.
    Methods with a finite space return it from :meth:`grid` so the backbone can enqueue exactly the
    requested number of distinct candidates (no duplicates across workers).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[SearchConfig]]

    def __init__(self, config: SearchConfig) -> None:
        if not isinstance(config, self.config_class):
            raise AutoPromptError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.method and config.method != self.name:
            raise AutoPromptError(f"this search space is for method {config.method!r}, not {self.name!r}")
        self.config = config

    #: Run the grid's candidates in the order :meth:`grid` gives (e.g. best-first), not shuffled.
    ordered_grid: ClassVar[bool] = False

    def prepare(self, ctx: SearchContext, study: "optuna.Study") -> None:
        """Work shared by every trial, done once before :meth:`grid` (e.g. generating candidates).

        Results that are costly to recompute belong in the study's user attributes, so a resumed
        job and extra workers reuse them; :func:`study_artifacts` reads the ``artifacts`` key into
        ``best.json``.
        """

    def grid(self) -> list[dict[str, Any]] | None:
        """All parameter sets of a finite space, or None when the space is sampled."""
        return None

    @abstractmethod
    def run_trial(self, trial: "optuna.Trial", ctx: SearchContext) -> TrialOutcome:
        """Sample settings from ``trial``, build a candidate, score it on ``ctx.task.dev``.

        Iterative methods report intermediate dev scores with ``trial.report`` and honour
        ``trial.should_prune()``.
        """


REGISTRY: dict[str, type[Searcher]] = {}


def register(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available by its name (CLI, YAML)."""
    REGISTRY[cls.name] = cls
    return cls


def get_searcher(name: str) -> type[Searcher]:
    from .. import methods  # noqa: F401  (registers the built-in methods)

    try:
        return REGISTRY[name]
    except KeyError:
        raise AutoPromptError(f"unknown search method {name!r}; available: {', '.join(sorted(REGISTRY))}") from None
