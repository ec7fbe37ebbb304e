"""The ``autoprompt`` study: one trial = one trigger search under sampled settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...artifact import Prompt
from ...prompts import Template, Verbalizer
from ...search.base import SearchContext, Searcher, TrialOutcome, register
from .config import AutoPromptConfig
from .triggers import TriggerSearch, init_triggers, label_token_search, resize_triggers, trigger_token_mask

if TYPE_CHECKING:
    import optuna


@register
class AutoPromptSearcher(Searcher):
    """One trial = one trigger search under sampled settings; dev accuracy reported per iteration."""

    name = "autoprompt"
    config_class = AutoPromptConfig
    config: AutoPromptConfig

    def check(self, ctx: SearchContext) -> None:
        """Every initial trigger token is one token of this model (before the study opens)."""
        super().check(ctx)
        for init in self.config.init_token:
            init_triggers(ctx.harness, resize_triggers(Template(self.config.template), 1), init)

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg, h, task = self.config, ctx.harness, ctx.task
        point = cfg.sample(trial)
        n, k, init, loss = point["num_triggers"], point["num_candidates"], point["init_token"], point["loss"]
        seed = ctx.seed + trial.number
        template = resize_triggers(Template(cfg.template), n)
        template = init_triggers(h, template, init)
        if cfg.label_search:
            verbalizer = label_token_search(
                h, task.train, template, task.label_names, cfg.label_tokens_per_class, seed=seed
            )
        else:
            verbalizer = Verbalizer.from_words(cfg.label_words, aggregation="sum")  # type: ignore[arg-type]
        verbalizer.check_labels(task.label_names)
        mask = trigger_token_mask(
            h,
            verbalizer,
            word_initial=cfg.word_initial_only,
            lowercase_only=cfg.lowercase_only,
            exclude_words=cfg.exclude_words,
        )
        search = TriggerSearch(
            h,
            verbalizer,
            num_candidates=k,
            batch_size=cfg.batch_size,
            accumulation_steps=cfg.accumulation_steps,
            token_mask=mask,
            seed=seed,
            loss=loss,
        )

        def report(it: int, dev_acc: float, current: Template) -> None:
            trial.report(dev_acc, it)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()

        result = search.run(template, task.train, task.dev, cfg.iterations, on_iteration=report)
        best = result.template
        dev = h.evaluate(task.dev, best, verbalizer, label_names=task.label_names)
        artifacts = {
            "trigger_ids": list(best.trigger_ids),
            "trigger_tokens": h.tokenizer.convert_ids_to_tokens(list(best.trigger_ids)),
            "trigger_text": h.tokenizer.decode(list(best.trigger_ids)),
            "history": [{k: v for k, v in e.items() if k != "triggers"} for e in result.history],
        }
        return TrialOutcome(Prompt([best], verbalizer), dev, artifacts)
