"""The shape every search method has: a config dataclass, a Searcher, and the candidates it scores.

A method implements :class:`Searcher` — it never touches storage, seeds, printing or output files;
the backbone (:mod:`.runner`) owns those. Configs are dataclasses loadable from the YAML files in
``search_spaces/``; a registry maps the CLI name to the method.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..artifact import ENSEMBLE_WEIGHTINGS, HEADS, Prompt, combine_results  # noqa: F401  (re-exported)
from ..errors import AutoPromptError
from ..prompts import Template, Verbalizer

if TYPE_CHECKING:
    import optuna

    from ..data import Task
    from ..harness import EvalResult, Harness
    from .folds import Fold

logger = logging.getLogger(__name__)

#: Values Optuna stores as a categorical parameter as they are; anything else goes by its index.
_PLAIN = (str, int, float, bool, type(None))


def choice(default: Sequence[Any], help: str, **metadata: Any) -> Any:
    """A setting each trial takes one value of: the list of values is declared once, and the base
    class samples it (:meth:`SearchConfig.sample`), enumerates the grid (:meth:`SearchConfig.grid`)
    and validates every combination (:meth:`SearchConfig.check_point`)."""
    values = list(default)
    return field(default_factory=lambda: list(values), metadata={"choices": True, "help": help, **metadata})


def _plain(options: Sequence[Any]) -> bool:
    return all(isinstance(v, _PLAIN) for v in options)


def readable(value: Any) -> str:
    """The short form a user would write of a value: label words ``{"neg": ["bad"], "pos": ["good",
    "fine"]}`` → ``bad/good,fine``, a list → ``a,b``, anything else its text."""
    if isinstance(value, dict):
        return "/".join(readable(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return ",".join(readable(v) for v in value)
    return str(value)


def _encode(options: Sequence[Any]) -> list[Any]:
    """Optuna's categorical choices of an axis: the values themselves, or their :func:`readable`
    forms (so the dashboard shows the words, not a number); the index only when two values read alike."""
    if _plain(options):
        return list(options)
    labels = [readable(v) for v in options]
    if len(set(labels)) == len(labels) and all(labels):
        return labels
    return [str(i) for i in range(len(options))]


def suggest(trial: optuna.Trial, name: str, options: Sequence[Any]) -> Any:
    """The trial's value of one axis; values Optuna cannot store (mappings, lists) go by their
    readable form, or by their index (then the value is recorded beside it as ``<name>_value``).

    For axes a method derives at run time (a model's module groups, generated templates); declared
    settings go through :meth:`SearchConfig.sample`.
    """
    options = list(options)
    encoded = _encode(options)
    value = trial.suggest_categorical(name, encoded)
    if _plain(options):
        return value
    chosen = options[encoded.index(value)]
    if encoded[0] == "0":  # stored by index: say what the index means
        trial.set_user_attr(f"{name}_value", readable(chosen))
    return chosen


def _validating(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """``post_init`` followed by :meth:`SearchConfig.validate` — once, after the outermost one: a
    subclass's ``__post_init__`` that calls its parent's does not validate a half-checked config."""

    @functools.wraps(post_init)
    def __post_init__(self: SearchConfig) -> None:
        post_init(self)
        if type(self).__post_init__ is __post_init__:
            self.validate()

    __post_init__._validates = True  # type: ignore[attr-defined]
    return __post_init__


@dataclass
class SearchConfig:
    """Base of every method's config. Subclasses add fields with defaults and ``help`` metadata;
    a setting each trial picks one value of is declared with :func:`choice`.

    Every config validates itself: after the most derived ``__post_init__`` returns,
    :meth:`validate` runs (by default :meth:`check_points`, which checks every combination of
    axis values). A subclass checks its own fields in ``__post_init__`` and need not call it.
    """

    method: str = field(default="", metadata={"help": "the method this space is for (checked when loading)"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_validates", False):
            cls.__post_init__ = _validating(own)  # type: ignore[method-assign]

    @_validating
    def __post_init__(self) -> None:
        """Nothing of its own: a subclass's fields are checked in its ``__post_init__``."""

    def validate(self) -> None:
        """Checks that need the whole config, run after every ``__post_init__`` (extend with ``super().validate()``)."""
        self.check_points()

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = True) -> SearchConfig:
        """Build from a dict, checking every value's type against the field's annotation.

        An unknown key is an error with a "did you mean" suggestion (a typo would silently run the
        default); ``strict=False`` (a saved config, perhaps written by a newer version) only warns.
        """
        if not isinstance(data, dict):
            raise AutoPromptError(f"a search space must be a mapping of settings, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in set(data) - set(names))
        if unknown:
            import difflib

            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            message = (
                f"unknown setting(s) for {cls.__name__.removesuffix('Config') or cls.__name__}: {', '.join(hints)}"
            )
            if strict:
                raise AutoPromptError(f"{message}; known: {', '.join(names)}")
            logger.warning("ignoring %s", message)
        hints_by_name = typing.get_type_hints(cls)
        for key, value in data.items():
            if key in hints_by_name:
                check_type(key, value, hints_by_name[key])
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchConfig:
        """A space file: size, nesting and YAML alias expansion are bounded (:func:`autoprompt_kit.io.load_yaml`)."""
        from ..io import load_yaml

        data = load_yaml(path, "search space")
        if data is None or data == {}:
            # Said here, not as whichever setting happens to be checked first.
            raise AutoPromptError(
                f"search space {str(path)!r} is empty; write one with `autoprompt-kit space METHOD "
                "--task TASK --out space.yaml`, or leave out --space to build it from the task"
            )
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- the space a study searches ----------------------------------------------------------
    def axes(self) -> dict[str, list[Any]]:
        """Trial parameter → its values: every :func:`choice` setting, in declaration order.
        Methods whose parameters are not one-to-one with settings override this."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata.get("choices")}

    def valid_point(self, point: dict[str, Any]) -> bool:
        """Whether a combination of axis values is one the method can run (override to exclude some)."""
        return True

    def check_point(self, point: dict[str, Any]) -> None:
        """Raise :class:`AutoPromptError` if one combination of axis values is invalid (override)."""

    def points(self) -> list[dict[str, Any]]:
        """Every valid combination of axis values (the decoded values, not Optuna's encoding)."""
        axes = self.axes()
        combos = (dict(zip(axes, values)) for values in itertools.product(*axes.values()))
        return [p for p in combos if self.valid_point(p)]

    def check_points(self) -> None:
        """Validate every combination (run by :meth:`validate` once the config is built)."""
        points = self.points()
        if not points:
            raise AutoPromptError(f"the space has no valid combination of {', '.join(self.axes())}")
        for point in points:
            self.check_point(point)

    def grid(self) -> list[dict[str, Any]] | None:
        """Every valid combination as trial parameters (what the backbone enqueues, once each)."""
        encoded = {name: dict(zip(map(_key, values), _encode(values))) for name, values in self.axes().items()}
        return [{name: encoded[name][_key(v)] for name, v in point.items()} for point in self.points()]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's value of every axis (its enqueued grid point), decoded."""
        point = {name: suggest(trial, name, values) for name, values in self.axes().items()}
        if not self.valid_point(point):
            raise AutoPromptError(f"trial parameters {point} are not a valid combination of this space")
        return point

    @classmethod
    def for_task(cls, task: Task) -> SearchConfig:
        """The default space for a task: templates and label words read off the task itself (class
        names → words, single texts or pairs → templates; :mod:`autoprompt_kit.prompts.defaults`),
        every other setting at its default, then the method's own :meth:`task_defaults`."""
        from ..prompts import defaults

        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            role = f.metadata.get("role")
            if role == "template":
                values[f.name] = defaults.task_templates(task)[0]
            elif role == "templates":
                values[f.name] = defaults.task_templates(task)
            elif role == "label_words":
                values[f.name] = defaults.task_label_words(task.label_names)
            elif role == "label_word_sets":
                values[f.name] = [defaults.task_label_words(task.label_names)]
        values.update(cls.task_defaults(task))
        return cls.from_dict(values)

    @classmethod
    def task_defaults(cls, task: Task) -> dict[str, Any]:
        """Settings a method sets differently when its space is built from a task (override)."""
        return {}

    def to_yaml(self, header: str = "") -> str:
        """The space as YAML, each setting with its help text: a file to edit and pass to ``--space``."""
        import yaml

        lines = [f"# {line}" for line in header.splitlines()] if header else []
        values = self.to_dict()
        for f in dataclasses.fields(self):
            value = values[f.name]
            nested = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))
            # JSON is YAML: scalars and flat lists inline; mappings as indented blocks
            text = (
                yaml.safe_dump(
                    {f.name: value}, default_flow_style=None, sort_keys=False, allow_unicode=True, width=110
                ).rstrip()
                if nested
                else f"{f.name}: {json.dumps(value, ensure_ascii=False)}"
            )
            help_text = f.metadata.get("help")
            if help_text and "\n" not in text:
                lines.append(f"{text}  # {help_text}")
            else:
                lines.extend(([f"# {help_text}"] if help_text else []) + [text])
        return "\n".join(lines) + "\n"

    def check_task(self, task: Task) -> None:
        """Check the space's templates and label words against a task before anything runs: the
        fields a template reads, and the class names, order and count of every label-word set.
        Fields say what they hold with ``metadata={"role": "template" | "templates" | "label_words" |
        "label_word_sets"}``."""
        fields = task.train.fields() if len(task.train) else task.dev.fields()
        for f in dataclasses.fields(self):
            role, value = f.metadata.get("role"), getattr(self, f.name)
            if value is None or role is None:
                continue
            values = value if role in ("templates", "label_word_sets") else [value]
            for v in values:
                try:
                    if role.startswith("template"):
                        Template(v).check_fields(fields)
                    elif v:
                        Verbalizer.from_words(v).check_labels(task.label_names)
                except AutoPromptError as exc:
                    raise AutoPromptError(f"setting {f.name!r}: {exc}") from None


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        names: dict[Any, str] = {int: "integers", float: "numbers", str: "texts", bool: "true/false values"}
        inner = names.get(args[0] if args else None, "values")
        return f"a list of {inner}"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (or null)" if type(None) in args else ""
        )
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_conforms(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (
            len(args) < 2 or all(_conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
        )
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters without building the whole of it (a YAML alias
    bomb or a 100k-word list would take seconds or gigabytes to repr in full)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict = 3, 6, 6, 4
    short.maxstring, short.maxother, short.maxlong = limit, limit, limit
    return short.repr(value)[:limit]


def check_type(name: str, value: Any, hint: Any) -> None:
    """One clear error when a setting's value does not have its declared type (``"15"`` for an int,
    ``10`` for a list of choices, ``"no"`` for a bool)."""
    if not _conforms(value, hint):
        wants_mapping = any(typing.get_origin(h) is dict for h in (hint, *typing.get_args(hint)))
        if wants_mapping and isinstance(value, dict) and any(not isinstance(k, str) for k in value):
            key = next(k for k in value if not isinstance(k, str))
            # YAML reads `0:` as a number: the real mistake is the key, not the mapping's values.
            raise AutoPromptError(
                f"setting {name!r}: class names must be text, got {type(key).__name__} "
                f"{short_repr(key)}; quote it in YAML ('{key}':)"
            )
        shown = short_repr(value)
        tip = ""
        if typing.get_origin(hint) is list and not isinstance(value, (list, tuple)):
            tip = f" — write [{shown}] for a single choice"
        raise AutoPromptError(f"setting {name!r} must be {_type_name(hint)}, got {type(value).__name__} {shown}{tip}")


@dataclass
class TrialOutcome:
    """What :meth:`Searcher.run_trial` returns: the candidate (a :class:`~autoprompt_kit.Prompt`, the
    same object a search returns and a user loads), its dev result, extra artifacts."""

    candidate: Prompt
    dev: EvalResult
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchContext:
    """Everything a trial may use: the task (few-shot train/dev), the harness and the seed."""

    task: Task
    harness: Harness
    seed: int
    #: Under cross-validated selection, the fold this run of the trial learns and is scored in
    #: (``task.train`` / ``task.dev`` are then its two sides); None otherwise.
    fold: Fold | None = None

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
        #: Lines for the user (a staged search's plan and stages): the backbone prints and clears them.
        self.messages: list[str] = []

    #: Run the grid's candidates in the order :meth:`grid` gives (e.g. best-first), not shuffled.
    ordered_grid: ClassVar[bool] = False
    #: Trials only score (no training, no gradients): ``--precision auto`` may pick int8.
    scores_only: ClassVar[bool] = False

    def prepare(self, ctx: SearchContext, study: optuna.Study) -> None:  # noqa: B027 (an optional hook)
        """Work shared by every trial, done once before :meth:`grid` (e.g. generating candidates).

        Results that are costly to recompute belong in the study's user attributes, so a resumed
        job and extra workers reuse them; :func:`study_artifacts` reads the ``artifacts`` key into
        ``best.json``.
        """

    def check(self, ctx: SearchContext) -> None:
        """Everything the space can check against the task and the loaded model, run before the study
        opens: an error found inside a trial leaves FAIL/WAITING trials and Optuna's traceback behind.

        By default: every label word of the space is known to the tokenizer and fits the model's
        length. Methods extend it (module patterns, budgets, files a space names, encoders).
        """
        for f in dataclasses.fields(self.config):
            role, value = f.metadata.get("role"), getattr(self.config, f.name)
            if not value or role not in ("label_words", "label_word_sets"):
                continue
            for words in value if role == "label_word_sets" else [value]:
                try:
                    check_words_fit(ctx.harness, words)
                except AutoPromptError as exc:
                    raise AutoPromptError(f"setting {f.name!r}: {exc}") from None

    def grid(self) -> list[dict[str, Any]] | None:
        """All parameter sets of a finite space (by default the config's :meth:`SearchConfig.grid`),
        or None when the space is sampled."""
        return self.config.grid()

    #: How candidates are scored unless the user says (``dev`` or ``cv``), and the default time budget.
    default_selection: ClassVar[str] = "dev"
    default_budget: ClassVar[str | None] = None

    #: A staged search builds its candidates stage by stage from the results of the stages before:
    #: the backbone asks :meth:`next_stage` whenever the queue is empty, until it returns None.
    staged: ClassVar[bool] = False

    def next_stage(
        self, ctx: SearchContext, study: optuna.Study, seconds_left: float | None
    ) -> list[dict[str, Any]] | None:
        """The parameter sets still to run (a staged search): the current stage's that are not yet
        queued, or the next stage's, built from the finished trials; None when the search is done.
        Must be deterministic given the study, so that a resumed job and extra workers agree."""
        return None

    def refit_needed(self, params: dict[str, Any]) -> bool:
        """Whether a cross-validated winner with these parameters learnt from its folds (and is
        refit on every labelled example); False when every fold gives the same candidate."""
        return True

    def refit(self, trial: optuna.trial.FixedTrial, ctx: SearchContext) -> Prompt:
        """The candidate of ``trial``'s parameters learnt from ``ctx.task.train`` (every labelled
        example, in a refit). By default the trial is run again and its dev score dropped; a method
        that can build without scoring overrides this."""
        return self.run_trial(trial, ctx).candidate  # type: ignore[arg-type]

    def costly(self, params: dict[str, Any]) -> bool:
        """Whether each fold of this candidate costs real work; only then may the pruner stop it
        after a fold (a fold scored from cached states saves nothing and only adds noise)."""
        return True

    @abstractmethod
    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        """Sample settings from ``trial``, build a candidate, score it on ``ctx.task.dev``.

        Iterative methods report intermediate dev scores with ``trial.report`` and honour
        ``trial.should_prune()``.
        """


def check_words_fit(harness: Harness, words: Any) -> None:
    """Every label word in ``words`` (label → word(s)) tokenizes to something the model reads and,
    on models that read it in the input, leaves room in the model's maximum length."""
    if not isinstance(words, dict):
        return
    encoder = harness.encoder
    room = encoder.max_length - 8  # the template, a few text tokens and the special tokens need some
    for label, ws in words.items():
        for word in [ws] if isinstance(ws, str) else ws or []:
            if not isinstance(word, str) or not word.strip():
                continue
            ids = encoder.word_ids(word, True)
            if harness.kind != "seq2seq" and len(ids) > room:  # T5 reads the word in its decoder
                raise AutoPromptError(
                    f"label word {word[:30]!r}… of class {label!r} is {len(ids):,} tokens: it does not "
                    f"fit the model's maximum length ({encoder.max_length} tokens)"
                )


REGISTRY: dict[str, type[Searcher]] = {}


def register(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available by its name (CLI, YAML)."""
    REGISTRY[cls.name] = cls
    return cls


#: Entry-point group through which other packages add methods (``[project.entry-points."autoprompt_kit.methods"]``
#: ``mymethod = "my_package.module:MySearcher"``); loaded the first time a name is not registered.
ENTRY_POINT_GROUP = "autoprompt_kit.methods"
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 — a broken plugin must not break the built-in methods
            logger.warning("could not load search method %r from %s: %s", ep.name, ep.value, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Searcher):
            REGISTRY.setdefault(getattr(cls, "name", ep.name), cls)


def method_names() -> list[str]:
    """Every available search method: the built-ins and those other packages add by entry point."""
    _load_plugins()
    return sorted(REGISTRY)


def get_searcher(name: str) -> type[Searcher]:
    """The registered method ``name`` (built-ins register when the package is imported)."""
    if name not in REGISTRY:
        _load_plugins()
    try:
        return REGISTRY[name]
    except KeyError:
        raise AutoPromptError(f"unknown search method {name!r}; available: {', '.join(sorted(REGISTRY))}") from None
