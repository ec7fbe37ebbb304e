"""The ``demos`` study, and the search for one fixed demonstration set (:func:`select_fixed_demonstrations`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...artifact import Prompt
from ...data import Split
from ...demonstrations import Demonstrations, arrange
from ...errors import AutoPromptError
from ...search.base import SearchConfig, SearchContext, Searcher, TrialOutcome, register
from .config import DemosConfig

if TYPE_CHECKING:
    import optuna

    from ...harness import Harness


def select_fixed_demonstrations(
    harness: Harness,
    prompt: Prompt,
    pool: Split,
    label_names: Sequence[str],
    per_class: int,
    *,
    order: str = "balanced",
    separator: str = " ",
    seed: int = 0,
    candidates: int = 8,
    held_out: Split | None = None,
    metric: str = "accuracy",
) -> tuple[Demonstrations, list[dict[str, Any]]]:
    """One fixed demonstration set for every input, chosen as DSPy's few-shot random search does:
    ``candidates`` distinct random class-balanced sets, each scored with ``prompt`` on ``held_out``
    (default: the pool examples outside that set), the best kept (ties: the first drawn).

    Returns the chosen set and every candidate's pool indices and score.
    """
    if order not in ("balanced", "shuffled"):
        raise AutoPromptError(f"a fixed set is arranged balanced or shuffled, not {order!r}")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(pool.labels == c) for c in range(len(label_names))]
    sets: list[list[int]] = []
    for _ in range(50 * candidates):  # small pools may have fewer distinct sets than asked for
        if len(sets) == candidates:
            break
        chosen = [[int(j) for j in rng.choice(idx, size=per_class, replace=False)] for idx in by_class]
        arranged = arrange(chosen, order, rng)
        if arranged not in sets:
            sets.append(arranged)
    ranked: list[dict[str, Any]] = []
    best: tuple[float, Demonstrations] | None = None
    for fixed in sets:
        demos = Demonstrations(pool, label_names, per_class, "fixed", order, separator, seed, fixed=fixed)
        split = held_out if held_out is not None else pool[[i for i in range(len(pool)) if i not in set(fixed)]]
        result = prompt.with_demonstrations(demos).evaluate(split, harness)
        score = result.accuracy if metric == "accuracy" else result.macro_f1
        ranked.append({"fixed": fixed, metric: score})
        if best is None or score > best[0]:
            best = (score, demos)
    assert best is not None
    return best[1], ranked


@register
class DemosSearcher(Searcher):
    """Each trial: how many demonstrations per class, which, in what order, what separator, and
    the calibration — scored on dev with the base prompt."""

    name = "demos"
    config_class = DemosConfig
    config: DemosConfig

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self._base: Prompt | None = None

    def check(self, ctx: SearchContext) -> None:
        """The base prompt loads and, when a trial may pick ``similar``, the sentence encoder loads
        (it is loaded once per process anyway, so this costs nothing more)."""
        super().check(ctx)
        self.config.base_prompt()
        if "similar" in self.config.selection and any(int(k) > 0 for k in self.config.per_class):
            from ...demonstrations import sentence_encoder

            sentence_encoder(self.config.encoder)

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg, task, h = self.config, ctx.task, ctx.harness
        params = cfg.sample(trial)
        if self._base is None:
            self._base = cfg.base_prompt()
        candidate = replace(self._base, verbalizer=self._base.verbalizer.replace(calibration=params["calibration"]))
        k, artifacts = int(params["per_class"]), {}
        if k > 0:
            if params["selection"] == "dev_selected":
                demos, ranked = select_fixed_demonstrations(
                    h,
                    candidate,
                    task.train,
                    task.label_names,
                    k,
                    order=params["order"],
                    separator=params["separator"],
                    seed=ctx.seed,
                    candidates=cfg.fixed_candidates,
                    held_out=task.dev if cfg.fixed_select_on == "dev" else None,
                    metric=task.metric,
                )
                artifacts["fixed_set_candidates"] = ranked
            else:
                demos = Demonstrations(
                    task.train,
                    task.label_names,
                    k,
                    params["selection"],
                    params["order"],
                    params["separator"],
                    ctx.seed,
                    encoder=cfg.encoder,
                )
            candidate = candidate.with_demonstrations(demos)
        return TrialOutcome(candidate, candidate.evaluate(task.dev, h), artifacts)
