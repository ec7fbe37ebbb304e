"""``auto``: one budgeted search that composes the whole prompt, stage by stage.

Stages (each one's best candidates seed the next; :data:`.config.STAGES`):

1. **words** on the first template: the class-name words and LM-BFF's label-word search, each
   with and without content-free calibration, and KPT's expansion of the class names (refined on
   the training texts, contextual calibration). Class-name words that the model never puts at the
   mask for a training example of their own class are dropped (the spam "ham" failure).
2. **templates**: every other template with the best word recipes.
3. **trained**: a ProtoVerb head on the mask states of the best templates.
4. **ensemble**: the best templates averaged, with the best word recipe.
5. **demonstrations**: the best untrained prompt with in-context demonstrations (per class,
   random or similar), drawn only from the training folds — last, because every input grows by a
   demonstration per class: it gets what is left of the budget.

A candidate is a *recipe* (a JSON spec): run once per fold, it learns only from the other folds
(label words searched, demonstrations drawn, heads trained there) and is scored on the held-out
one; the backbone pools the out-of-fold predictions (``--selection cv``, the default here) and
refits the winner on every labelled example. Each template's pass over the labelled pool is run
once and reused by every word set, calibration, head and fold that reads it.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import optuna
import torch

from ...artifact import Prompt
from ...data import Split
from ...demonstrations import Demonstrations, encoder_package
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...search.base import SearchContext, Searcher, TrialOutcome, combine_results, register, suggest
from ...search.folds import labelled_pool
from ...search.runner import queued_key
from ..kpt import (
    ExpansionSettings,
    RefineSettings,
    expand,
    refine,
    seed_valences,
    single_token_logprobs,
    support_scores_from_hidden,
)
from ..lmbff import label_word_search
from ..protoverb import ProtoSettings, train_prototypes
from .config import STAGES, AutoConfig

if TYPE_CHECKING:
    from ...harness import EvalResult, Harness, ScoreOutput

STAGE_ATTR = "auto.stage."  # study attribute: a stage's candidates (label → spec), fixed once built
PASS_ATTR = "auto.seconds_per_pass"
NAMES, SEARCH, KPT = "names", "search", "kpt"
WORD_RECIPES = {NAMES: "class-name words", SEARCH: "searched words", KPT: "KPT-expanded words"}


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(spec: dict[str, Any]) -> str:
    """A candidate as a reader would name it (the trial parameter the dashboard shows)."""
    parts = [" + ".join(_short(t) for t in spec["templates"]), WORD_RECIPES[spec["words"]]]
    if spec["calibration"] == "content_free":
        parts.append("calibrated")
    if spec.get("demos"):
        d = spec["demos"]
        parts.append(f"{d['per_class']}/class {d['selection']} demonstrations")
    if spec.get("head"):
        parts.append(f"ProtoVerb {spec['head']}")
    return " · ".join(parts)


def _untrained(spec: dict[str, Any]) -> bool:
    return not spec.get("demos") and not spec.get("head")


@register
class AutoSearcher(Searcher):
    """Composes words, templates, demonstrations, calibration, a trained head and an ensemble
    under a time budget, choosing by cross-validation."""

    name = "auto"
    config_class = AutoConfig
    config: AutoConfig
    staged: ClassVar[bool] = True
    default_selection: ClassVar[str] = "cv"
    default_budget: ClassVar[str | None] = "10m"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._specs: dict[str, dict[str, dict[str, Any]]] = {}
        self._scores: dict[tuple[str, str, str], ScoreOutput] = {}
        self._priors: dict[tuple[str, str], torch.Tensor] = {}
        self._searched: dict[tuple[str, str, str], Verbalizer] = {}
        self._kpt: dict[str, Any] = {}
        self._scoring = True  # False while a refit builds the winner
        self._rows: OrderedDict[Any, torch.Tensor] = OrderedDict()  # mask log-probabilities, kept across folds

    # -- the stages ------------------------------------------------------------------------------
    def prepare(self, ctx: SearchContext, study: optuna.Study) -> None:
        self._load(study)

    def _load(self, study: optuna.Study) -> None:
        for key, value in study.user_attrs.items():
            if key.startswith(STAGE_ATTR):
                self._specs[key[len(STAGE_ATTR) :]] = value

    def refit(self, trial: Any, ctx: SearchContext) -> Prompt:
        """The winner built from every labelled example, without the (costly, meaningless) pass that
        would score demonstrations on the examples they were drawn from."""
        self._scoring = False
        try:
            return self.run_trial(trial, ctx).candidate
        finally:
            self._scoring = True

    def costly(self, params: dict[str, Any]) -> bool:
        """Only demonstrations cost a pass per fold; every other recipe reads cached states."""
        return bool(self._spec(params["stage"], params[params["stage"]]).get("demos"))

    def refit_needed(self, params: dict[str, Any]) -> bool:  # learnt words, demonstrations and heads refit
        spec = self._spec(params["stage"], params[params["stage"]])
        return spec["words"] != NAMES or not _untrained(spec)

    def next_stage(
        self, ctx: SearchContext, study: optuna.Study, seconds_left: float | None
    ) -> list[dict[str, Any]] | None:
        self._load(study)
        queued = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False) if t.params}
        queued |= {key for t in study.get_trials(deepcopy=False) if (key := queued_key(t)) is not None}
        for stage in self.config.stages:
            if stage not in self._specs:
                specs = self._build(stage, ctx, study, seconds_left)
                self._specs[stage] = {label(s): s for s in specs}
                study.set_user_attr(STAGE_ATTR + stage, self._specs[stage])
                self.messages.append(
                    f"stage {stage}: {len(specs)} candidate(s)"
                    + (f", best so far {label(self._finished(study)[0][2])}" if self._finished(study) else "")
                )
            grid = [{"stage": stage, stage: name} for name in self._specs[stage]]
            missing = [p for p in grid if json.dumps(p, sort_keys=True) not in queued]
            if missing:
                return missing
        return None

    def _finished(self, study: optuna.Study) -> list[tuple[float, int, dict[str, Any]]]:
        """(value, complexity, spec) of every completed trial, best first."""
        out = []
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            stage = t.params.get("stage")
            if stage in self._specs and t.params.get(stage) in self._specs[stage]:
                out.append(
                    (
                        float(t.value or 0.0),
                        int(t.user_attrs.get("complexity", 0)),
                        t.number,
                        self._specs[stage][t.params[stage]],
                    )
                )
        out.sort(key=lambda r: (-r[0], r[1], r[2]))
        return [(v, c, s) for v, c, _, s in out]

    def _build(
        self, stage: str, ctx: SearchContext, study: optuna.Study, seconds_left: float | None
    ) -> list[dict[str, Any]]:
        cfg, task = self.config, ctx.task
        done = self._finished(study)
        per_pass = study.user_attrs.get(PASS_ATTR)
        if per_pass is None:
            per_pass = self._measure(ctx)
            study.set_user_attr(PASS_ATTR, per_pass)
        left = float("inf") if seconds_left is None else seconds_left
        cal = ["none", "content_free"]
        words = [NAMES] + ([SEARCH] if cfg.label_search else [])
        if stage == "words":
            self._print_plan(ctx, per_pass, seconds_left)
            specs: list[dict[str, Any]] = [
                {"templates": [cfg.templates[0]], "words": w, "calibration": c} for w in words for c in cal
            ]
            if cfg.kpt:  # KPT carries its own (contextual) calibration
                specs.append({"templates": [cfg.templates[0]], "words": KPT, "calibration": "contextual"})
            return specs
        untrained = [s for _, _, s in done if _untrained(s) and len(s["templates"]) == 1]
        if stage == "templates":
            recipes: list[tuple[str, str]] = []
            for s in untrained:
                if (s["words"], s["calibration"]) not in recipes:
                    recipes.append((s["words"], s["calibration"]))
            # No word recipe survived the first template: every recipe gets another chance on the others.
            recipes = recipes[: cfg.keep] or [(w, c) for w in words for c in cal]
            cost = per_pass  # one pass per template: every word recipe reads its mask states
            n = len(cfg.templates) - 1
            if cost > 0 and n * cost > 0.5 * left:  # leave half of what is left to the later stages
                n = max(0, min(n, int(0.5 * left / cost)))
                self.messages.append(f"stage templates: {n} of {len(cfg.templates) - 1} templates fit the budget")
            return [
                {"templates": [t], "words": w, "calibration": c} for t in cfg.templates[1 : 1 + n] for w, c in recipes
            ]
        if stage == "trained":
            templates = []
            for s in untrained:
                if s["templates"][0] not in templates:
                    templates.append(s["templates"][0])
            # Without surviving words the prototypes alone still classify (they read the mask states).
            return [
                {"templates": [t], "words": NAMES, "calibration": "none", "head": h}
                for t in (templates[: cfg.keep] or cfg.templates[:1])
                for h in cfg.head
            ]
        if not untrained:
            return []
        best = untrained[0]
        if stage == "demonstrations":
            smallest = (
                min(int((task.train.labels == c).sum()) for c in range(task.num_labels)) if len(task.train) else 0
            )
            # A training fold holds about (k-1)/k of the pool: what every fold can give per class.
            pool = labelled_pool(task)
            per_fold = min(int((pool.labels == c).sum()) for c in range(task.num_labels)) * 3 // 4
            selections = [
                s
                for s in cfg.demo_selection
                if s != "similar" or cfg.encoder or encoder_package("sentence-transformers/all-MiniLM-L6-v2")
            ]
            specs = []
            budget_used = 0.0
            for k in sorted(cfg.per_class):
                for sel in selections:
                    if k > max(per_fold, smallest, 0) or k < 1:
                        continue
                    cost = per_pass * (1 + k * task.num_labels)  # every input carries k demonstrations per class
                    if budget_used + cost > 0.9 * left:  # the last stage: what is left, bar the refit
                        continue
                    budget_used += cost
                    specs.append({**best, "demos": {"per_class": k, "selection": sel}})
            return specs
        if stage == "ensemble":
            recipe = (best["words"], best["calibration"])
            members = []
            for s in untrained:
                if (s["words"], s["calibration"]) == recipe and s["templates"][0] not in members:
                    members.append(s["templates"][0])
            if cfg.ensemble_size < 2 or len(members) < 2:
                return []
            return [{"templates": members[: cfg.ensemble_size], "words": recipe[0], "calibration": recipe[1]}]
        raise AutoPromptError(f"unknown stage {stage!r}")

    def _measure(self, ctx: SearchContext) -> float:
        """Seconds of one pass over the labelled pool with the first template (measured here: the
        pass is kept, the first candidates reuse it)."""
        pool = labelled_pool(ctx.task)
        start = time.perf_counter()
        self._pool_scores(ctx.harness, pool, Template(self.config.templates[0]), self._names())
        return round(time.perf_counter() - start, 3)

    def _print_plan(self, ctx: SearchContext, per_pass: float, seconds_left: float | None) -> None:
        cfg, task = self.config, ctx.task
        n_words = 2 * (1 + cfg.label_search) + cfg.kpt
        # One pass per template; every word recipe, calibration and head reads its mask states.
        passes = {
            "words": (n_words, 1.0),
            "templates": ((len(cfg.templates) - 1) * min(cfg.keep, n_words), len(cfg.templates) - 1.0),
            "trained": (cfg.keep * len(cfg.head), 0.2),
            "ensemble": (1 if cfg.ensemble_size >= 2 else 0, 0.0),
            "demonstrations": (
                len(cfg.per_class) * len(cfg.demo_selection),
                sum(1 + k * task.num_labels for k in cfg.per_class) * len(cfg.demo_selection),
            ),
        }
        rows = [(name, *passes[name]) for name in STAGES]
        n = len(labelled_pool(task))
        say = self.messages.append
        say(
            f"plan     one pass over the {n} labelled examples (train + dev) takes {per_pass:.1f} s here; "
            f"each candidate is scored by cross-validation"
        )
        total = 0.0
        for name, count, n_passes in rows:
            if name not in cfg.stages:
                continue
            total += n_passes * per_pass
            say(
                f"         {name:15s} up to {count:2d} candidates  ~{n_passes:5.1f} passes  "
                f"~{n_passes * per_pass / 60:5.1f} min"
            )
        fits = (
            "all stages at full size"
            if seconds_left is None or total <= seconds_left
            else "later stages are cut to what is left of the budget"
        )
        budget = "no budget" if seconds_left is None else f"budget {seconds_left / 60:.1f} min"
        say(f"         total ~{total / 60:.1f} min at full size, {budget}: {fits}")

    # -- one candidate in one fold ----------------------------------------------------------------
    def _spec(self, stage: str, name: str) -> dict[str, Any]:
        try:
            return self._specs[stage][name]
        except KeyError:
            raise AutoPromptError(f"auto: no candidate {name!r} in stage {stage!r} of this study") from None

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        stage = suggest(trial, "stage", list(STAGES))
        if stage not in self._specs and hasattr(trial, "study"):
            self._load(trial.study)
        spec = self._spec(stage, suggest(trial, stage, list(self._specs.get(stage, {}))))
        pool, train, held = self._view(ctx)
        train_split, held_split = pool[train], pool[held]
        h, names = ctx.harness, ctx.task.label_names
        templates = [Template(t) for t in spec["templates"]]
        try:
            verbalizer = self._words(spec["words"], h, templates[0], pool, train, names)
        except AutoPromptError as exc:  # a recipe that cannot run on this task is a dead candidate, not a failure
            trial.set_user_attr("note", f"pruned: {exc}")
            raise optuna.TrialPruned() from None
        if spec["words"] != KPT:
            verbalizer = verbalizer.replace(calibration=spec["calibration"])
        prompt = Prompt(
            templates,
            verbalizer,
            ensemble="uniform" if len(templates) > 1 else None,
            weights=[1.0] * len(templates) if len(templates) > 1 else None,
            label_names=list(names),
        )
        if spec.get("head"):
            return self._head(spec, h, pool, train, held, templates[0], ctx)
        if spec.get("demos"):
            d = spec["demos"]
            demos = Demonstrations(
                train_split,
                names,
                int(d["per_class"]),
                d["selection"],
                "balanced",
                self.config.separator,
                ctx.seed,
                encoder=self.config.encoder,
            )
            prompt = prompt.with_demonstrations(demos)
            if not self._scoring:  # a refit only builds the prompt: scoring it on its own pool says nothing
                return TrialOutcome(prompt, _unscored(pool.labels[held], len(names)))
            return TrialOutcome(prompt, prompt.evaluate(held_split, h))
        if spec["words"] == NAMES and self.config.drop_unread_words:
            dead = self._dead_words(h, pool, train, templates[0], verbalizer, names)
            if dead:
                trial.set_user_attr(
                    "note", f"pruned: the model never puts {dead} at the mask for a training example of its class"
                )
                raise optuna.TrialPruned()
        results = [self._result(h, pool, held, t, verbalizer) for t in templates]
        dev = results[0] if len(results) == 1 else combine_results(results, [1.0] * len(results))
        return TrialOutcome(prompt, dev)

    @staticmethod
    def _view(ctx: SearchContext) -> tuple[Split, np.ndarray, np.ndarray]:
        """The labelled pool and the positions this run learns from / is scored on."""
        if ctx.fold is not None:
            return ctx.fold.pool, ctx.fold.train, ctx.fold.held_out
        task = ctx.task
        if task.train is task.dev:  # a refit: everything is training data
            every = np.arange(len(task.train))
            return task.train, every, every
        pool = labelled_pool(task)
        return pool, np.arange(len(task.train)), np.arange(len(task.train), len(pool))

    def _names(self) -> Verbalizer:
        return Verbalizer.from_words(self.config.label_words)

    def _words(
        self, kind: str, h: Harness, template: Template, pool: Split, train: np.ndarray, names: list[str]
    ) -> Verbalizer:
        """The verbalizer a word recipe gives, learnt from the ``train`` positions of the pool only."""
        if kind == NAMES:
            return self._names()
        split = pool[train]
        key = (kind, split.fingerprint, template.text)
        if key in self._searched:
            return self._searched[key]
        if kind == SEARCH:
            # The template's pass over the pool gave every example's mask state: its vocabulary
            # log-probabilities (what the search reads) cost the output layer only, and come back
            # in every fold and in the re-ranking.
            with h.reused_scores(self._rows, max_rows=max(2048, 2 * len(pool))):
                h.prime_logprobs(split, template, self._hidden(h, pool, template)[torch.as_tensor(train)])
                found = label_word_search(h, split, split, template, names, k=self.config.label_search_k)
            verbalizer = found.verbalizer
        else:  # KPT: expanded class names, refined on the training texts' mask states (no labels used)
            hidden = self._hidden(h, pool, template)[torch.as_tensor(train)]
            space = self._space(h, template, pool)
            expansion = self._expansion(h)
            single = {w for ws in expansion.words for w in ws if len(h.encoder.word_ids(w, space)) == 1}
            expansion = replace(expansion, words=[[w for w in ws if w in single] for ws in expansion.words])
            if any(not ws for ws in expansion.words):
                raise AutoPromptError("KPT: a class has no single-token word after expansion")
            scores = support_scores_from_hidden(h, hidden, expansion.all_words(), space_before=space)
            verbalizer = refine(expansion, scores, RefineSettings()).verbalizer
        self._searched[key] = verbalizer
        return verbalizer

    def _expansion(self, h: Harness) -> Any:
        if "expansion" not in self._kpt:
            seeds = {k: [v] if isinstance(v, str) else list(v) for k, v in self.config.label_words.items()}
            try:  # VADER rates sentiment polarities only: topic classes expand through WordNet alone
                seed_valences(seeds)
                sources: tuple[str, ...] = ("wordnet", "vader")
            except AutoPromptError:
                sources = ("wordnet",)
            self._kpt["expansion"] = expand(seeds, ExpansionSettings(sources=sources), h)
        return self._kpt["expansion"]

    @staticmethod
    def _space(h: Harness, template: Template, pool: Split) -> bool:
        return bool(h.encoder.encode(template, pool[0]).space_before_mask)

    def _hidden(self, h: Harness, pool: Split, template: Template) -> torch.Tensor:
        out = self._pool_scores(h, pool, template, self._names())
        assert out.hidden is not None
        return out.hidden

    def _pool_scores(self, h: Harness, split: Split, template: Template, verbalizer: Verbalizer) -> ScoreOutput:
        key = (split.fingerprint, template.text, json.dumps(verbalizer.label_words))
        if key not in self._scores:
            self._scores[key] = h.score(split, template, verbalizer, hidden=True)
        return self._scores[key]

    def _prior(self, h: Harness, template: Template, verbalizer: Verbalizer) -> torch.Tensor:
        key = (template.text, json.dumps(verbalizer.label_words))
        if key not in self._priors:
            self._priors[key] = h.class_prior(template, verbalizer.replace(calibration="none"))
        return self._priors[key]

    def _word_logprobs(
        self, h: Harness, pool: Split, rows: np.ndarray, template: Template, verbalizer: Verbalizer
    ) -> torch.Tensor:
        """Label-word log-probabilities of the pool rows: the class-name words from the template's
        pool pass; other single-token words from its mask states (the output layer only); others
        by scoring those rows."""
        names = self._names()
        out = self._pool_scores(h, pool, template, names)
        index = torch.as_tensor(rows)
        if verbalizer.label_words == names.label_words:
            return out.word_logprobs.float()[index]
        space = self._space(h, template, pool)
        words = verbalizer.flat_words
        if out.hidden is not None and all(len(h.encoder.word_ids(w, space)) == 1 for w in words):
            return single_token_logprobs(h, out.hidden[index], words, space).float()
        return self._pool_scores(h, pool[rows], template, verbalizer.replace(calibration="none")).word_logprobs.float()

    def _class_logprobs(
        self, h: Harness, split: Split, rows: np.ndarray, template: Template, verbalizer: Verbalizer
    ) -> torch.Tensor:
        word_lp = self._word_logprobs(h, split, rows, template, verbalizer)
        prior = self._prior(h, template, verbalizer) if verbalizer.calibration == "content_free" else None
        return verbalizer.class_logprobs(word_lp, prior=prior)

    def _result(
        self, h: Harness, pool: Split, held: np.ndarray, template: Template, verbalizer: Verbalizer
    ) -> EvalResult:
        from ...harness import EvalResult

        class_lp = self._class_logprobs(h, pool, held, template, verbalizer)
        return EvalResult.from_class_logprobs(
            class_lp,
            pool.labels[held],
            word_logprobs=np.zeros((len(held), 0)),
            num_classes=verbalizer.num_classes,
            template=template.display(),
        )

    def _dead_words(
        self, h: Harness, pool: Split, train: np.ndarray, template: Template, verbalizer: Verbalizer, names: list[str]
    ) -> dict[str, list[str]]:
        """The classes (with their words) that win for no training example of their own class:
        class-name words must each be read at the mask for their class at least once."""
        predicted = self._class_logprobs(h, pool, train, template, verbalizer).argmax(dim=1).numpy()
        gold = pool.labels[train]
        return {
            names[c]: list(verbalizer.label_words[c])
            for c in range(len(names))
            if not ((predicted == c) & (gold == c)).any()
        }

    def _head(
        self,
        spec: dict[str, Any],
        h: Harness,
        pool: Split,
        train: np.ndarray,
        held: np.ndarray,
        template: Template,
        ctx: SearchContext,
    ) -> TrialOutcome:
        from ...harness import EvalResult

        verbalizer = self._names()
        out = self._pool_scores(h, pool, template, verbalizer)
        assert out.hidden is not None
        hidden = out.hidden.float().cpu()
        manual = verbalizer.class_logprobs(out.word_logprobs.float()).cpu()
        t_idx, h_idx = torch.as_tensor(train), torch.as_tensor(held)
        settings = ProtoSettings(inference=spec["head"])
        head, _ = train_prototypes(
            hidden[t_idx], pool.labels[train], verbalizer.num_classes, settings, manual=manual[t_idx], seed=ctx.seed
        )
        with torch.no_grad():
            class_lp = head.class_logprobs(hidden[h_idx], manual[h_idx])
        dev = EvalResult.from_class_logprobs(
            class_lp,
            pool.labels[held],
            word_logprobs=np.zeros((len(held), 0)),
            num_classes=verbalizer.num_classes,
            template=template.display(),
        )
        prompt = Prompt([template], verbalizer, head=head, label_names=list(ctx.task.label_names))
        return TrialOutcome(prompt, dev)


def _unscored(labels: np.ndarray, num_classes: int) -> EvalResult:
    """A placeholder result (uniform scores) for a prompt built but not scored."""
    from ...harness import EvalResult

    return EvalResult.from_class_logprobs(
        np.zeros((len(labels), num_classes)), labels, word_logprobs=np.zeros((len(labels), 0)), num_classes=num_classes
    )


__all__ = ["AutoSearcher", "label"]
