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
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch

from ..errors import AutoPromptError
from ..prompts import Template, Verbalizer, as_template, as_verbalizer

if TYPE_CHECKING:
    import optuna

    from ..data import Split, Task
    from ..harness import EvalResult, Harness

logger = logging.getLogger(__name__)

ENSEMBLE_WEIGHTINGS = ("uniform", "dev")

#: Trained scorers a candidate may carry instead of plain verbalizer scores (kind → loader of the
#: saved dict; the loaded object has ``evaluate(harness, split, template, verbalizer, label_names)``).
#: Methods register theirs, e.g. ProtoVerb's prototypes.
HEADS: dict[str, Any] = {}


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


@dataclass
class Candidate:
    """What a trial proposes: one template (or an ensemble of templates) and a verbalizer."""

    templates: list[Template]
    verbalizer: Verbalizer
    ensemble: str | None = None           # None, "uniform" or "dev" (weights from each template's dev score)
    weights: list[float] | None = None    # the ensemble weights actually used
    head: dict[str, Any] | None = None    # a trained scorer on the mask hidden state (see HEADS), saved as a dict

    @property
    def template(self) -> Template:
        return self.templates[0]

    def describe(self) -> str:
        words = " / ".join(",".join(ws) for ws in self.verbalizer.label_words)
        body = self.template.display() if len(self.templates) == 1 else f"ensemble[{self.ensemble}] of {len(self.templates)}"
        cal = "" if self.verbalizer.calibration == "none" else f" [{self.verbalizer.calibration}]"
        head = f" + {self.head.get('kind')} head" if self.head else ""
        return f"{body} -> {words}{cal}{head}"

    def evaluate(self, harness: "Harness", split: "Split", label_names: Sequence[str] | None = None) -> "EvalResult":
        """Score on a split; an ensemble averages its templates' class probabilities."""
        if self.head is not None:
            return load_head(self.head).evaluate(harness, split, self.template, self.verbalizer, label_names)
        results = harness.evaluate_many(split, self.templates, self.verbalizer, label_names=label_names)
        if len(results) == 1:
            return results[0]
        weights = self.weights if self.weights is not None else [1.0] * len(results)
        return combine_results(results, weights)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"template": self.template.to_dict(), "verbalizer": self.verbalizer.to_dict()}
        if len(self.templates) > 1:
            out["templates"] = [t.to_dict() for t in self.templates]
            out["ensemble"] = self.ensemble
            out["weights"] = self.weights
        if self.head is not None:
            out["head"] = self.head
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        if "template" not in data or "verbalizer" not in data:
            raise AutoPromptError("a saved prompt needs 'template' and 'verbalizer'")
        templates = [as_template(t) for t in data.get("templates") or [data["template"]]]
        return cls(templates, as_verbalizer(data["verbalizer"]), data.get("ensemble"), data.get("weights"),
                   data.get("head"))


def load_head(data: dict[str, Any]) -> Any:
    """The trained scorer saved in a candidate's ``head`` dict (its ``kind`` picks the loader)."""
    from .. import methods  # noqa: F401  (registers the built-in heads)

    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in HEADS:
        raise AutoPromptError(f"unknown candidate head {kind!r}; known: {', '.join(sorted(HEADS)) or 'none'}")
    return HEADS[kind](data)


def combine_results(results: Sequence["EvalResult"], weights: Sequence[float]) -> "EvalResult":
    """Weighted average of class probabilities over several templates' results."""
    from ..harness import EvalResult, classification_metrics

    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    w = w / w.sum()
    probs = sum(wi * np.exp(r.class_logprobs) for wi, r in zip(w, results))
    class_lp = np.log(np.clip(probs, 1e-30, None))
    preds = class_lp.argmax(axis=1)
    labels = results[0].labels
    acc, f1 = classification_metrics(labels, preds, class_lp.shape[1])
    return EvalResult(accuracy=acc, macro_f1=f1, predictions=preds, labels=labels, class_logprobs=class_lp,
                      word_logprobs=np.concatenate([r.word_logprobs for r in results], axis=1),
                      seconds=sum(r.seconds for r in results), template=" | ".join(r.template for r in results),
                      extra={"weights": w.tolist()})


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

    def before_test(self, ctx: SearchContext, artifacts: dict[str, Any]) -> None:
        """Restore what the best trial trained besides its prompt (e.g. attach its delta) before the test pass.

        ``artifacts`` are the best trial's :attr:`TrialOutcome.artifacts`.
        """

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
