"""The ``s3delta`` study: one trial = one structure under the budget, re-trained and scored on dev."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...artifact import Prompt
from ...delta import Delta, DeltaState, count_parameters
from ...errors import AutoPromptError
from ...prompts import as_template
from ...search.base import SearchContext, Searcher, TrialOutcome, register
from .config import S3DeltaConfig
from .structure_search import (
    blackbox_structure,
    budget_params,
    check_budget,
    s3delta_search,
    search_space,
    train_structure,
)

if TYPE_CHECKING:
    import optuna


@register
class S3DeltaSearcher(Searcher):
    """One trial = one structure under the budget (found by bi-level search or sampled by TPE),
    re-trained and scored on dev."""

    name = "s3delta"
    config_class = S3DeltaConfig
    ordered_grid = True  # the first listed values (the defaults) run first

    def grid(self) -> list[dict[str, Any]] | None:
        """Differentiable search: every combination of the listed settings once (a finite space);
        blackbox: TPE samples the structure switches (a grid would be random search)."""
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        return cfg.grid() if cfg.strategy == "differentiable" else None

    def check(self, ctx: SearchContext) -> None:
        """Every module pattern matches on this backbone and the budget constrains every space
        (checked before the study opens, not in its first trial)."""
        super().check(ctx)
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        budget = budget_params(ctx.harness, cfg.budget_percent)
        spaces: list[str | None] = [*cfg.spaces] if cfg.spaces else [None]
        for space in spaces:
            restricted = cfg.restricted(space) if space else cfg
            entries = search_space(ctx.harness, restricted)
            try:
                check_budget(budget, Delta.from_structure(ctx.harness, entries).module_parameters())
            except AutoPromptError as exc:
                raise AutoPromptError(f"{exc}" + (f" (space {space!r})" if space else "")) from None

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        harness, task = ctx.harness, ctx.task
        template, verbalizer = as_template(cfg.template), cfg.verbalizer()
        seed = ctx.seed + trial.number
        start = time.perf_counter()
        info: dict[str, Any] = {"strategy": cfg.strategy, "budget_percent": cfg.budget_percent}
        point = cfg.sample(trial)
        if "space" in point:
            info["space"] = point["space"]
            cfg = cfg.restricted(info["space"])
        if cfg.strategy == "differentiable":
            gate_lr, temp, cost = point["gate_lr"], point["temperature"], point["gate_cost"]
            found = s3delta_search(
                harness,
                task.train,
                task.dev,
                template,
                verbalizer,
                cfg,
                seed=seed,
                gate_lr=gate_lr,
                temperature=temp,
                gate_cost=cost,
            )
            structure = found.structure
            info["search_seconds"] = round(found.seconds, 2)
            info["candidates"] = found.candidates
        else:
            entries = search_space(harness, cfg)
            sizes = Delta.from_structure(harness, entries).module_parameters()
            budget = budget_params(harness, cfg.budget_percent)
            check_budget(budget, sizes)
            structure = [entries[i] for i in blackbox_structure(trial, entries, sizes, budget, cfg, seed)]
            info["candidates"] = len(entries)
        delta = train_structure(harness, structure, task.train, template, verbalizer, cfg, seed)
        try:
            dev = harness.evaluate(task.dev, template, verbalizer)
            backbone = count_parameters(harness.model)
            info.update(
                parameters=delta.num_parameters(),
                fraction=delta.num_parameters() / backbone,
                modules=len(structure),
                table=delta.table(harness),
                structure=structure,
                seconds=round(time.perf_counter() - start, 2),
            )
        finally:
            delta.detach()
        # The trained delta travels with the prompt: the backbone saves it with the trial.
        return TrialOutcome(Prompt([template], verbalizer).with_state(DeltaState.of(delta)), dev, {"delta": info})
