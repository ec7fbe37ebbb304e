"""The ``select`` study: each trial scores one (template or ensemble, label words, calibration) on dev."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from ...artifact import Prompt
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...search.base import SearchContext, Searcher, TrialOutcome, combine_results, register
from .config import SelectConfig

if TYPE_CHECKING:
    import optuna


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

    def prepare(self, ctx: SearchContext, study: optuna.Study) -> None:
        """Refuse a study made before parameters were stored readably (templates and label-word
        sets by index): its candidates would be queued again under their new names."""
        import re

        legacy = re.compile(r"\d+|ensemble-(uniform|dev)")
        # A queued trial has no params yet: its candidate is in the fixed parameters Optuna keeps for it.
        values = [
            (t.params or t.system_attrs.get("fixed_params") or {}).get("template", "")
            for t in study.get_trials(deepcopy=False)
        ]
        if any(legacy.fullmatch(str(v)) for v in values):
            raise AutoPromptError(
                f"study {study.study_name!r} was made by an older autoprompt-kit that stored templates "
                "and label words by index; resuming it would run its candidates again: give a new "
                "--study name"
            )

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        if not self.score_cache:
            return self._run_trial(trial, ctx)
        store: OrderedDict[Any, torch.Tensor] = self.__dict__.setdefault("_states", OrderedDict())
        with ctx.harness.score_cache(store):
            return self._run_trial(trial, ctx)

    def _run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg = self.config
        point = cfg.sample(trial)
        template, words, calibration = point["template"], point["label_words"], point["calibration"]
        verbalizer = Verbalizer.from_words(words, calibration=calibration, aggregation=cfg.aggregation)
        names = ctx.task.label_names
        if not verbalizer.labels:
            verbalizer = Verbalizer.from_words(
                dict(zip(names, verbalizer.label_words)), calibration=calibration, aggregation=cfg.aggregation
            )
        ensembles = {cfg.ensemble_label(e): e for e in cfg.ensembles}
        if template in ensembles:
            weighting = ensembles[template]
            templates = [Template(t) for t in cfg.templates]
            singles = ctx.harness.evaluate_many(ctx.task.dev, templates, verbalizer, label_names=names)
            weights = [1.0] * len(templates) if weighting == "uniform" else [r.accuracy for r in singles]
            candidate = Prompt(templates, verbalizer, ensemble=weighting, weights=weights)
            dev = combine_results(singles, weights)
            return TrialOutcome(candidate, dev, {"member_dev_accuracy": [r.accuracy for r in singles]})
        candidate = Prompt([Template(template)], verbalizer)
        return TrialOutcome(candidate, candidate.evaluate(ctx.task.dev, ctx.harness))
