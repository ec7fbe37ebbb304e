"""The ``kpt`` study: one trial = one expansion, refinement and calibration of the seed words."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ...artifact import Prompt
from ...errors import AutoPromptError
from ...prompts import Template
from ...search.base import SearchConfig, SearchContext, Searcher, TrialOutcome, register
from .config import KPTConfig
from .refine import SupportScores, expand, learn_weights, refine, support_scores

if TYPE_CHECKING:
    import optuna

    from ...data import Split, Task

logger = logging.getLogger(__name__)


def support_split(task: Task, size: int, seed: int) -> Split:
    """Unlabelled support examples: the task's ``unlabeled`` split if any, else train (labels unused)."""
    pool = task.splits.get("unlabeled") or task.train
    if len(pool) <= size:
        return pool
    return pool[np.random.default_rng(seed).choice(len(pool), size=size, replace=False)]


@register
class KPTSearcher(Searcher):
    """KPT: expand seed words through knowledge sources, refine on support data, calibrate."""

    name = "kpt"
    config_class = KPTConfig
    config: KPTConfig

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self._scores: SupportScores | None = None  # grows as trials bring new candidate words
        self._support: Split | None = None

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg, h, task = self.config, ctx.harness, ctx.task
        missing = [lab for lab in task.label_names if lab not in cfg.seed_words]
        if missing or len(cfg.seed_words) != len(task.label_names):
            raise AutoPromptError(
                f"seed_words must cover exactly the task's labels {task.label_names}; got {list(cfg.seed_words)}"
            )
        seeds = {lab: cfg.seed_words[lab] for lab in task.label_names}
        point = cfg.sample(trial)
        exp_settings, ref_settings = cfg.settings(point)
        learn = point["learn_weights"]
        template = Template(cfg.template)
        expansion = expand(seeds, exp_settings, h)
        if self._support is None:
            self._support = support_split(task, cfg.support_size, ctx.seed)
        self._scores = support_scores(
            h,
            self._support,
            template,
            expansion.all_words(),
            previous=self._scores,
            max_tokens=max(cfg.max_tokens),
            always=[w for ws in seeds.values() for w in ws],
            presence_rank=cfg.presence_rank,
        )
        result = refine(expansion, self._scores, ref_settings)
        verbalizer = result.verbalizer
        artifacts = result.artifacts()
        artifacts["expanded_counts"] = {lab: len(ws) for lab, ws in zip(expansion.labels, expansion.words)}
        if learn:
            verbalizer, losses = learn_weights(
                h, task.train, template, verbalizer, epochs=cfg.epochs, lr=cfg.lr, seed=ctx.seed + trial.number
            )
            artifacts["weight_losses"] = losses
            for c, entries in enumerate(result.kept.values()):
                for entry, w in zip(entries, verbalizer.weights[c]):  # type: ignore[index]
                    entry["weight"] = round(w, 5)
        dev = h.evaluate(task.dev, template, verbalizer, label_names=task.label_names)
        return TrialOutcome(Prompt([template], verbalizer), dev, artifacts)
