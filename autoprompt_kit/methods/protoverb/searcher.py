"""The ``protoverb`` study: one trial = one prototype head trained on the frozen model's mask states."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...artifact import Prompt
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...search.base import SearchConfig, SearchContext, Searcher, TrialOutcome, register
from .config import ProtoVerbConfig
from .head import PrototypeHead
from .training import prototype_words, train_prototypes

if TYPE_CHECKING:
    import optuna

    from ...data import Split
    from ...harness import EvalResult, Harness


@register
class ProtoVerbSearcher(Searcher):
    """ProtoVerb: one trial = one prototype head trained on the frozen model's mask states."""

    name = "protoverb"
    config_class = ProtoVerbConfig
    config: ProtoVerbConfig

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self._cache: dict[str, Any] = {}  # split fingerprint → (hidden, manual class log-probs)

    def _states(
        self, harness: Harness, split: Split, template: Template, verbalizer: Verbalizer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = split.fingerprint
        if key not in self._cache:  # the model is frozen: one pass per split serves every trial
            out = harness.score(split, template, verbalizer, hidden=True)
            assert out.hidden is not None
            self._cache[key] = (out.hidden.float().cpu(), verbalizer.class_logprobs(out.word_logprobs.float()).cpu())
        return self._cache[key]

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg, h, task = self.config, ctx.harness, ctx.task
        verbalizer = Verbalizer.from_words(cfg.label_words, calibration=cfg.calibration)
        verbalizer.check_labels(task.label_names)
        if verbalizer.calibration == "content_free":
            raise AutoPromptError(
                "protoverb's manual verbalizer takes calibration none (combined inference "
                "standardises its scores on the training set instead)"
            )
        settings = cfg.settings(cfg.sample(trial))
        template = Template(cfg.template)
        hidden, manual = self._states(h, task.train, template, verbalizer)
        head, history = train_prototypes(
            hidden, task.train.labels, verbalizer.num_classes, settings, manual=manual, seed=ctx.seed + trial.number
        )
        dev_hidden, dev_manual = self._states(h, task.dev, template, verbalizer)
        dev = _result(head, dev_hidden, dev_manual, task.dev.labels, template)
        words = prototype_words(h, head, hidden, task.train.labels, cfg.top_words)
        for entry in words:
            entry["class"] = task.label_names[entry["class"]]
        artifacts = {"prototype_words": words, "loss_history": history, "settings": asdict(settings)}
        return TrialOutcome(Prompt([template], verbalizer, head=head), dev, artifacts)


def _result(
    head: PrototypeHead, hidden: torch.Tensor, manual: torch.Tensor, labels: np.ndarray, template: Template
) -> EvalResult:
    """An EvalResult from cached states (same numbers as :meth:`PrototypeHead.evaluate`)."""
    from ...harness import EvalResult

    with torch.no_grad():
        class_lp = head.class_logprobs(hidden, manual)
    return EvalResult.from_class_logprobs(
        class_lp,
        np.asarray(labels),
        word_logprobs=np.zeros((len(class_lp), 0)),
        num_classes=head.num_classes,
        template=template.display(),
    )
