"""Template / verbalizer selection over a declared space — the simplest search.

Every trial scores one candidate on the dev split: one manual template (or an ensemble of all
templates, averaged uniformly or weighted by each template's dev accuracy) × one label-word set ×
one calibration mode.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...errors import AutoPromptError
from ...prompts import CALIBRATIONS, Template, Verbalizer
from ...search.base import (ENSEMBLE_WEIGHTINGS, Candidate, SearchConfig, SearchContext, Searcher, TrialOutcome,
                           choice, combine_results, register)

if TYPE_CHECKING:
    import optuna


@dataclass
class SelectConfig(SearchConfig):
    templates: list[str] = field(default_factory=list, metadata={"role": "templates", "help": "manual templates to choose from"})
    label_words: list[dict[str, Any]] = field(
        default_factory=list, metadata={"role": "label_word_sets", "help": "label-word sets: each maps every label to its word(s)"})
    calibration: list[str] = choice(["none"], help="none and/or content_free")
    aggregation: str = field(default="mean", metadata={"help": "how a class's words combine"})
    ensembles: list[str] = field(
        default_factory=list, metadata={"help": "also try the ensemble of all templates: uniform and/or dev"})

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        return {"calibration": ["none", "content_free"], "ensembles": ["uniform"]}

    def __post_init__(self) -> None:
        if not self.templates:
            raise AutoPromptError("the select space needs at least one template under 'templates'")
        if not self.label_words:
            raise AutoPromptError("the select space needs at least one label-word set under 'label_words'")
        for t in self.templates:
            Template(t)  # validates (mask, fields) with a clear message
        for words in self.label_words:
            if not isinstance(words, dict):
                raise AutoPromptError(f"each label-word set must map labels to words, got {words!r}")
            for calibration in self.calibration:
                Verbalizer.from_words(words, aggregation=self.aggregation,
                                      calibration=calibration if calibration in CALIBRATIONS else "none")
        bad = [c for c in self.calibration if c not in CALIBRATIONS]
        if bad or not self.calibration:
            raise AutoPromptError(f"calibration must be a non-empty list of {CALIBRATIONS}, got {self.calibration}")
        bad = [e for e in self.ensembles if e not in ENSEMBLE_WEIGHTINGS]
        if bad:
            raise AutoPromptError(f"ensembles must be a list of {ENSEMBLE_WEIGHTINGS}, got {self.ensembles}")
        self.check_points()

    def axes(self) -> dict[str, list[Any]]:
        """A template (its text), or an ensemble of all of them; a label-word set (stored in the
        study as its words, e.g. ``terrible/great``)."""
        return {"template": list(self.templates) + [self.ensemble_label(e) for e in self.ensembles],
                "label_words": list(self.label_words), "calibration": list(self.calibration)}

    def ensemble_label(self, weighting: str) -> str:
        """The template parameter of an ensemble trial: ``ensemble of 4 (uniform)``."""
        return f"ensemble of {len(self.templates)} ({weighting})"


@register
class TemplateSelection(Searcher):
    """Pick the best (template, label words, calibration) on dev."""

    name = "select"
    scores_only = True
    config_class = SelectConfig
    config: SelectConfig
    #: Keep each (template, dev example)'s mask state across this process's trials
    #: (:meth:`Harness.score_cache`): a trial that changes only words or calibration runs no model
    #: pass. The scores equal a fresh pass's; False recomputes every trial (what benchmarks compare).
    score_cache = True

    def prepare(self, ctx: SearchContext, study: "optuna.Study") -> None:
        """Refuse a study made before parameters were stored readably (templates and label-word
        sets by index): its candidates would be queued again under their new names."""
        import re

        legacy = re.compile(r"\d+|ensemble-(uniform|dev)")
        # A queued trial has no params yet: its candidate is in the fixed parameters Optuna keeps for it.
        values = [(t.params or t.system_attrs.get("fixed_params") or {}).get("template", "")
                  for t in study.get_trials(deepcopy=False)]
        if any(legacy.fullmatch(str(v)) for v in values):
            raise AutoPromptError(f"study {study.study_name!r} was made by an older autoprompt-kit that stored templates "
                                  "and label words by index; resuming it would run its candidates again: give a new "
                                  "--study name")

    def run_trial(self, trial: "optuna.Trial", ctx: SearchContext) -> TrialOutcome:
        if not self.score_cache:
            return self._run_trial(trial, ctx)
        store: OrderedDict[Any, torch.Tensor] = self.__dict__.setdefault("_states", OrderedDict())
        with ctx.harness.score_cache(store):
            return self._run_trial(trial, ctx)

    def _run_trial(self, trial: "optuna.Trial", ctx: SearchContext) -> TrialOutcome:
        cfg = self.config
        point = cfg.sample(trial)
        template, words, calibration = point["template"], point["label_words"], point["calibration"]
        verbalizer = Verbalizer.from_words(words, calibration=calibration, aggregation=cfg.aggregation)
        names = ctx.task.label_names
        if not verbalizer.labels:
            verbalizer = Verbalizer.from_words(dict(zip(names, verbalizer.label_words)), calibration=calibration,
                                               aggregation=cfg.aggregation)
        ensembles = {cfg.ensemble_label(e): e for e in cfg.ensembles}
        if template in ensembles:
            weighting = ensembles[template]
            templates = [Template(t) for t in cfg.templates]
            singles = ctx.harness.evaluate_many(ctx.task.dev, templates, verbalizer, label_names=names)
            weights = [1.0] * len(templates) if weighting == "uniform" else [r.accuracy for r in singles]
            candidate = Candidate(templates, verbalizer, ensemble=weighting, weights=weights)
            dev = combine_results(singles, weights)
            return TrialOutcome(candidate, dev, {"member_dev_accuracy": [r.accuracy for r in singles]})
        candidate = Candidate([Template(template)], verbalizer)
        return TrialOutcome(candidate, candidate.evaluate(ctx.task.dev, ctx.harness))
