"""LM-BFF's study: the registered :class:`LMBFFSearcher` (its space is :class:`~.config.LMBFFConfig`).

Ranking: all generated templates are scored zero-shot on the few-shot dev split in one batched
harness pass; the best ``top_n`` become the study's trials (best first), optionally re-ranked by
prompt-based fine-tuning.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from ...artifact import Prompt
from ...delta import Delta, DeltaSpec, DeltaState, default_lora_targets
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...search.base import SearchConfig, SearchContext, Searcher, TrialOutcome, register, suggest
from .config import LMBFFConfig
from .finetune import FineTunedWeights, prompt_finetune, restored_weights
from .generation import CausalTemplateGenerator, GeneratedTemplate, Seq2SeqTemplateGenerator
from .label_words import label_word_search

if TYPE_CHECKING:
    import optuna


@register
class LMBFFSearcher(Searcher):
    """Generation and label-word search run once (:meth:`prepare`, stored in the study); each trial
    scores one (template, label words, calibration) candidate, best zero-shot dev first."""

    name = "lmbff"
    config_class = LMBFFConfig
    config: LMBFFConfig
    ordered_grid = True

    #: Zero-shot studies keep each (template, dev example)'s score from the generated templates' dev
    #: ranking for the trials (:meth:`Harness.score_cache`): a trial re-scores a template the ranking
    #: already ran, so it runs no model pass. Off when trials fine-tune (the weights change).
    score_cache = True

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self.templates: list[str] = []
        self.words: list[dict[str, list[str]]] = []
        self._states: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def _kept_scores(self, harness: Any) -> contextlib.AbstractContextManager[Any]:
        """The score cache for a frozen model (zero-shot trials), else nothing."""
        if self.score_cache and self.config.finetune_epochs == 0:
            return harness.score_cache(self._states)
        return contextlib.nullcontext()

    def prepare(self, ctx: SearchContext, study: optuna.Study) -> None:
        saved = study.user_attrs.get("artifacts")
        if saved and "trial_templates" in saved:  # resumed job or extra worker: reuse, don't regenerate
            self.templates, self.words = saved["trial_templates"], saved["trial_words"]
            return
        artifacts = self.run_generation(ctx)
        study.set_user_attr("artifacts", artifacts)
        self.templates, self.words = artifacts["trial_templates"], artifacts["trial_words"]

    def run_generation(self, ctx: SearchContext) -> dict[str, Any]:
        """Label-word search and template generation + zero-shot dev ranking (the study's artifacts)."""
        cfg, h, task = self.config, ctx.harness, ctx.task
        artifacts: dict[str, Any] = {}
        words: list[dict[str, list[str]]] = []
        if cfg.search_label_words:
            start = time.perf_counter()
            found = label_word_search(
                h,
                task.train,
                task.dev,
                cfg.template,
                task.label_names,
                k=cfg.label_k,
                n_assignments=cfg.label_assignments,
                candidates=cfg.label_candidates,
                pool=cfg.label_pool,
                strategy=cfg.label_search_strategy,
                beam=cfg.label_beam,
            )
            artifacts["label_word_candidates"] = dict(zip(task.label_names, found.per_class))
            artifacts["label_word_assignments"] = found.ranked
            artifacts["label_search_strategy"] = found.strategy
            artifacts["label_assignments_scored"] = found.scored
            artifacts["label_search_seconds"] = round(time.perf_counter() - start, 2)
            words = [{k: [v] for k, v in r["words"].items()} for r in found.ranked]
        manual = {k: [v] if isinstance(v, str) else list(v) for k, v in (cfg.label_words or {}).items()}
        if manual:
            Verbalizer.from_words(manual).check_labels(task.label_names)
            if not cfg.search_label_words:  # searched words, when asked for, replace the manual ones in trials
                words = [manual]
        templates = [cfg.template]
        if cfg.generate_templates:
            verbalizer = Verbalizer.from_words(manual or words[0])
            start = time.perf_counter()
            generated = self.generate(ctx, verbalizer)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            with self._kept_scores(h):
                results = h.evaluate_many(
                    task.dev,
                    [g.template for g in generated],
                    verbalizer.replace(calibration=cfg.calibration[0]),
                    label_names=task.label_names,
                )
            ranked = sorted(zip(generated, results), key=lambda gr: (-gr[1].accuracy, -gr[0].score))
            artifacts["generated_templates"] = [
                {**asdict(g), "dev_accuracy": r.accuracy, "dev_macro_f1": r.macro_f1} for g, r in ranked
            ]
            artifacts["generation_seconds"] = round(seconds, 2)
            artifacts["ranking_seconds"] = round(time.perf_counter() - start, 2)
            templates = [g.template for g, _ in ranked[: cfg.top_n]]
        artifacts["trial_templates"] = templates
        artifacts["trial_words"] = words[: cfg.label_assignments] if cfg.search_label_words else words[:1]
        return artifacts

    def generate(self, ctx: SearchContext, verbalizer: Verbalizer) -> list[GeneratedTemplate]:
        cfg = self.config
        from ...harness import Harness

        gen = ctx.harness if cfg.generator_model is None else Harness(cfg.generator_model, progress=False)
        if gen.kind == "causal":
            return CausalTemplateGenerator(
                gen,
                beam=cfg.beam,
                max_span_tokens=cfg.max_span_tokens,
                context=cfg.context,
                suffix=cfg.suffix,
                ascii_only=cfg.ascii_only,
            ).generate(ctx.task.train, verbalizer, keep=cfg.keep_generated)
        if gen.kind == "seq2seq":
            formats = [f for f in cfg.formats if f != "pair" or "text_b" in ctx.task.train.fields()]
            if not formats:
                raise AutoPromptError(f"no usable format in {cfg.formats}: 'pair' needs a text_b field")
            return Seq2SeqTemplateGenerator(
                gen, beam=cfg.beam, max_tokens=cfg.max_decode_tokens, ascii_only=cfg.ascii_only
            ).generate(ctx.task.train, verbalizer, formats, keep=cfg.keep_generated)
        raise AutoPromptError(
            "a masked LM cannot generate templates: set generator_model to a T5 model (e.g. t5-large)"
        )

    def grid(self) -> list[dict[str, Any]]:
        import json

        return [
            {"template": t, "label_words": json.dumps(w, sort_keys=True), "calibration": c}
            for t in self.templates
            for w in self.words
            for c in self.config.calibration
        ]

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        import json

        cfg, h, task = self.config, ctx.harness, ctx.task
        grid = self.grid()
        text = suggest(trial, "template", sorted({g["template"] for g in grid}))
        words = json.loads(suggest(trial, "label_words", sorted({g["label_words"] for g in grid})))
        calibration = suggest(trial, "calibration", cfg.calibration)
        verbalizer = Verbalizer.from_words(words, calibration=calibration)
        verbalizer.check_labels(task.label_names)
        candidate = Prompt([Template(text)], verbalizer)
        if cfg.finetune_epochs == 0:
            with self._kept_scores(h):
                return TrialOutcome(candidate, candidate.evaluate(task.dev, h))
        zero_shot = candidate.evaluate(task.dev, h)
        seed = ctx.seed + trial.number
        fit: dict[str, Any] = dict(
            epochs=cfg.finetune_epochs, lr=cfg.learning_rate, batch_size=cfg.finetune_batch_size, seed=seed
        )
        if cfg.finetune_parameters == "full":
            with restored_weights(h.model):  # trials share one model: the trained copy leaves with the prompt
                losses = prompt_finetune(h, task.train, candidate.template, verbalizer, **fit)
                dev = candidate.evaluate(task.dev, h)
                candidate = candidate.with_state(FineTunedWeights.of(h.model))
        else:
            torch.manual_seed(seed)
            targets = cfg.finetune_lora_targets or default_lora_targets(h)
            delta = Delta.from_specs(
                h, [DeltaSpec("lora", targets, r=cfg.finetune_lora_rank, alpha=2.0 * cfg.finetune_lora_rank)]
            ).attach(h)
            try:
                losses = prompt_finetune(
                    h, task.train, candidate.template, verbalizer, parameters=list(delta.parameters()), **fit
                )
                dev = candidate.evaluate(task.dev, h)
            finally:
                delta.detach()
            candidate = candidate.with_state(DeltaState.of(delta))
        return TrialOutcome(
            candidate,
            dev,
            {"zero_shot_dev_accuracy": zero_shot.accuracy, "finetune_losses": [round(x, 4) for x in losses]},
        )
