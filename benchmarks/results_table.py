"""One results table for every method: tasks × methods, 16 shots per class, seeds 13/21/42.

Rows (``--methods``): ``manual`` (``{text_a} It was {mask}.``, terrible / great), ``calibrated``
(the same, content-free calibration), ``autoprompt`` (trigger search), ``lmbff-template``
(causal-LM template generation + dev ranking, content-free calibrated), ``lmbff-words`` (label-word
search with the manual template), ``kpt`` (zero-shot knowledgeable verbalizer, contextual
calibration), ``protoverb`` (16-shot prototypes, dev-selected) and ``s3delta`` (prompt fine-tuning
of a delta structure searched under a parameter budget, re-trained). Columns: the built-in tasks
(``--tasks``), test accuracy mean ± sd over seeds on one fixed seeded test subsample per task
(``load_task(task, max_examples=N).test``, the same for every row), plus each row's wall time.

Every (task, method, seed) cell is one trial of an Optuna study in SQLite (params ``task``,
``method``, ``seed``; settings, accuracies and artifacts as user attributes). A rerun skips
completed cells and retries failed or interrupted ones; the inner searches (AutoPrompt, LM-BFF,
ProtoVerb) are resumable studies in a second file. One process at a time per study; parallel
workers each use their own ``--storage`` and ``--merge-from`` gathers them into one study.

    OMP_NUM_THREADS=1 python benchmarks/results_table.py --profile quick           # ~10-13 min per task-seed
    OMP_NUM_THREADS=1 python benchmarks/results_table.py --profile paper           # the README's settings
    python benchmarks/results_table.py --profile quick --report   # same options as the run -> results.md + .png
    python benchmarks/results_table.py --tasks mr --seeds 13 --methods manual calibrated kpt --test-examples 200
    # two parallel workers (one core each), then one report from both:
    OMP_NUM_THREADS=1 python benchmarks/results_table.py --tasks mr tweets --storage sqlite:///runs/rt_a.db &
    OMP_NUM_THREADS=1 python benchmarks/results_table.py --tasks amazon nyt --storage sqlite:///runs/rt_b.db &
    wait; python benchmarks/results_table.py --merge-from sqlite:///runs/rt_a.db sqlite:///runs/rt_b.db --report
    optuna-dashboard sqlite:///runs/results_table.db

Measured, quick profile, all 4 tasks x 3 seeds (96 cells, all completed), test n = 200, as the two
workers above with OMP_NUM_THREADS=1 on the 2-core CPU, on a fresh clone (the CI suite sharing the
CPU): 3,647 s and 3,872 s per worker, ~10 min per task-seed. Mean per cell: manual 11 s (the first
row of a task pays the shared test pass), calibrated 0 s, autoprompt 3.5 min, lmbff-template
2.2 min, lmbff-words 35 s, kpt 71 s, protoverb 25 s, s3delta 2.3 min (benchmarks/results.md). An
earlier full run (4,762 s / 5,012 s per worker, more load) gave exactly the same accuracies.
The paper profile was not timed; from the README's runs expect roughly 40-60 min per task-seed on
an idle machine (AutoPrompt 15 iterations, LM-BFF beam 32, S3Delta 12 epochs, whole test splits).

A size knob given on the command line (``--ap-iterations``, ``--lmbff-beam``, ``--s3-epochs``, …)
overrides the profile; cells are keyed by their settings, so cells of other settings are not
reused (nor reported). Cells do not track library changes: after a method changes, ``--redo``
(with ``--methods``) runs its cells again, or use a new ``--study``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import torch

    from autoprompt_kit import Harness, Split, Task, Template, Verbalizer

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["terrible"], "positive": ["great"]}
#: Tasks whose classes are sentiment polarities use the manual sentiment prompt above (the numbers
#: since the table began); every other task uses the prompt its own class names give
#: (``prompts.defaults``: the first default template, the class names as words), as a user's would.
SENTIMENT_LABELS = ["negative", "positive"]
TASKS = ("mr", "tweets", "amazon", "nyt", "fortunes", "spam")
SEEDS = (13, 21, 42)
SHOTS = 16
METHODS: dict[str, str] = {
    "manual": "manual prompt (terrible / great, or the class names)",
    "calibrated": "manual + content-free calibration",
    "autoprompt": "AutoPrompt (trigger search)",
    "lmbff-template": "LM-BFF auto template (calibrated)",
    "lmbff-words": "LM-BFF auto label words",
    "kpt": "KPT (zero-shot, contextual calibration)",
    "protoverb": "ProtoVerb (16-shot, dev-selected)",
    "s3delta": "S3Delta prompt fine-tuning",
    "demos-random": "Demonstrations: random (1 per class)",
    "demos-similar": "Demonstrations: similar (1 per class)",
    "demos-dev": "Demonstrations: dev-selected set (1 per class)",
    "auto": "auto (budgeted, cross-validated)",
}
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = "sqlite:///runs/results_table.db"


@dataclass(frozen=True)
class Profile:
    """Size knobs of every method (one value each); ``test_examples`` 0 = the whole test split."""

    test_examples: int = 200
    ap_iterations: int = 5          # AutoPrompt trigger-search iterations
    ap_candidates: int = 5          # AutoPrompt k (candidates per iteration)
    ap_triggers: int = 3            # AutoPrompt trigger tokens
    lmbff_beam: int = 8             # LM-BFF generation beam width
    lmbff_templates: int = 10       # generated templates ranked on dev (keep_generated)
    lmbff_top_n: int = 3            # best-ranked templates run as trials
    lmbff_label_k: int = 10         # label-word candidates per class
    lmbff_assignments: int = 3      # label-word assignments run as trials
    kpt_support: int = 200          # unlabelled support examples (drawn from train with the seed)
    protoverb_trials: int = 8       # ProtoVerb heads tried (search_spaces/protoverb_sentiment.yaml)
    s3_budget: float = 0.02         # S3Delta budget, percent of the backbone's parameters
    s3_warmup_epochs: int = 1       # module-weight epochs before the gates move
    s3_search_epochs: int = 1       # bi-level search epochs
    s3_epochs: int = 3              # re-training epochs of the found structure
    demos_per_class: int = 1        # demonstrations per class (calibration none / content-free chosen on dev)
    auto_budget: int = 600          # auto: seconds of search (model load and the test pass excluded)


PROFILES: dict[str, Profile] = {
    # ~10-13 min per task-seed for all eight rows on one CPU core (measured: 4 tasks x 3 seeds, two workers; module doc).
    "quick": Profile(),
    # The settings behind the README's numbers (whole test split; AutoPrompt 15 iterations, k=10;
    # LM-BFF beam 32, 40 templates ranked, top 5; ProtoVerb all 16 settings; S3Delta 2+4+6 epochs).
    "paper": Profile(test_examples=0, ap_iterations=15, ap_candidates=10, lmbff_beam=32, lmbff_templates=40,
                     lmbff_top_n=5, lmbff_label_k=20, lmbff_assignments=5, protoverb_trials=16, s3_warmup_epochs=2,
                     s3_search_epochs=4, s3_epochs=6),
}
#: Which knobs a method's cells depend on (its cell key; other knobs never invalidate it).
KNOBS: dict[str, tuple[str, ...]] = {
    "manual": (), "calibrated": (),
    "autoprompt": ("ap_iterations", "ap_candidates", "ap_triggers"),
    "lmbff-template": ("lmbff_beam", "lmbff_templates", "lmbff_top_n"),
    "lmbff-words": ("lmbff_label_k", "lmbff_assignments"),
    "kpt": ("kpt_support",),
    "protoverb": ("protoverb_trials",),
    "s3delta": ("s3_budget", "s3_warmup_epochs", "s3_search_epochs", "s3_epochs"),
    "demos-random": ("demos_per_class",), "demos-similar": ("demos_per_class",), "demos-dev": ("demos_per_class",),
    "auto": ("auto_budget",),
}


@dataclass(frozen=True)
class Cell:
    """One (task, method, seed) of the table with the settings it runs under."""

    task: str
    method: str
    seed: int
    settings: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        blob = json.dumps([self.task, self.method, self.seed, dict(self.settings)], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def params(self) -> dict[str, Any]:
        return {"task": self.task, "method": self.method, "seed": self.seed}


@dataclass
class CellResult:
    """A finished cell: its test accuracy (the table's number) and what else it measured."""

    accuracy: float
    attrs: dict[str, Any]
    detail: str = ""


def plan(args: argparse.Namespace, model: str) -> list[Cell]:
    """Cells in run order: task, then seed, then method (frozen-model rows share a task's test pass)."""
    profile: Profile = args.knobs
    cells = []
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                settings = {"model": model, "shots": SHOTS, "test_examples": profile.test_examples,
                            **{k: getattr(profile, k) for k in KNOBS[method]}}
                cells.append(Cell(task, method, seed, tuple(sorted(settings.items()))))
    return cells


# ------------------------------------------------------------------------------------------------
# Running the methods: every row calls the library's public functions, as the examples do.
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)  # every row and every test-state lookup asks; the task loads once
def task_prompt(task: str) -> tuple[str, dict[str, list[str]]]:
    """The manual template and label words of a task's rows (see :data:`SENTIMENT_LABELS`)."""
    from autoprompt_kit import load_task
    from autoprompt_kit.prompts import defaults

    info = load_task(task, max_examples=32)
    if list(info.label_names) == SENTIMENT_LABELS:
        return TEMPLATE, WORDS
    return defaults.task_templates(info)[0], defaults.task_label_words(info.label_names)


def is_manual(template: Template | str, task: str) -> bool:
    """Whether ``template`` is the task's manual one (whose test states are cached)."""
    from autoprompt_kit import Template
    from autoprompt_kit.prompts import as_template

    return as_template(template) == Template(task_prompt(task)[0])


@dataclass
class TestStates:
    """One harness pass over a task's test subsample with the manual prompt: mask states + word scores."""

    test: Split
    hidden: torch.Tensor
    word_logprobs: torch.Tensor
    seconds: float


class Runner:
    """Runs cells on one harness; caches per-task test states and full tasks across cells."""

    def __init__(self, harness: Harness, profile: Profile, search_storage: str) -> None:
        self.harness = harness
        self.profile = profile
        self.search_storage = search_storage
        self._states: dict[str, TestStates] = {}
        self._full: dict[str, Task] = {}
        self._tests: dict[str, Split] = {}

    # -- shared pieces -------------------------------------------------------------------------
    def test_split(self, task: str) -> Split:
        """The fixed seeded test subsample of ``task`` (the same for every row)."""
        if task not in self._tests:
            from autoprompt_kit import load_task

            self._tests[task] = load_task(task, max_examples=self.profile.test_examples or None).test
        return self._tests[task]

    def states(self, task: str) -> TestStates:
        """The test subsample's mask hidden states and manual word scores (one pass per task)."""
        if task not in self._states:
            from autoprompt_kit import Verbalizer

            test = self.test_split(task)
            start = time.perf_counter()
            template, words = task_prompt(task)
            out = self.harness.score(test, template, Verbalizer.from_words(words), hidden=True)
            assert out.hidden is not None
            self._states[task] = TestStates(test, out.hidden.float().cpu(), out.word_logprobs.float().cpu(),
                                            time.perf_counter() - start)
        return self._states[task]

    def full_task(self, task: str) -> Task:
        if task not in self._full:
            from autoprompt_kit import load_task

            self._full[task] = load_task(task)
        return self._full[task]

    def word_logprobs(self, task: str, template: Template | str, verbalizer: Verbalizer) -> torch.Tensor:
        """Test word log-probs: from the cached states for the manual template and single-token
        words (the output layer only), else one harness pass."""
        from autoprompt_kit import AutoPromptError
        from autoprompt_kit.methods.kpt import single_token_logprobs

        st = self.states(task) if is_manual(template, task) else None
        if st is not None:
            try:
                return single_token_logprobs(self.harness, st.hidden, verbalizer.flat_words)
            except AutoPromptError:  # a multi-token word: score it whole with the harness
                pass
        test = st.test if st is not None else self.test_split(task)
        return self.harness.score(test, template, verbalizer).word_logprobs.float().cpu()

    def accuracies(self, task: str, template: Template | str, verbalizer: Verbalizer) -> tuple[float, float]:
        """Test accuracy uncalibrated and content-free calibrated (one pass for both).

        ``template`` is a :class:`Template` when it carries more than its text (AutoPrompt's trigger ids).
        """
        from autoprompt_kit.harness import classification_metrics

        labels = self.test_split(task).labels
        word_lp = self.word_logprobs(task, template, verbalizer)
        prior = self.harness.class_prior(template, verbalizer)
        plain = verbalizer.class_logprobs(word_lp).argmax(1).numpy()
        calibrated = verbalizer.class_logprobs(word_lp, prior=prior.float().cpu()).argmax(1).numpy()
        c = verbalizer.num_classes
        return classification_metrics(labels, plain, c)[0], classification_metrics(labels, calibrated, c)[0]

    def search(self, name: str, config: Any, study: str, task: Task, seed: int, n_trials: int, **job: Any) -> Any:
        """A resumable inner study of a library search method, finished as every search is (best trial →
        prompt with its trained state); the test pass reads this table's cached test states instead.
        ``job`` sets more of the search (``budget``, ``selection``, ``progress``)."""
        from autoprompt_kit.search import SearchContext, SearchJob, finish_search, get_searcher, run_search

        info = task.info(shots=SHOTS, seed=seed)
        job = SearchJob(get_searcher(name)(config), study, self.search_storage, n_trials=n_trials, seed=seed,
                        task_info=info, model_info={"name": self.harness.model_name, "kind": self.harness.kind},
                        **{"progress": False, **job})
        ctx = SearchContext(task, self.harness, seed)
        return finish_search(run_search(job, ctx), job, ctx, test_split=None)

    # -- rows ----------------------------------------------------------------------------------
    def run(self, cell: Cell) -> CellResult:
        from autoprompt_kit import load_task

        task = load_task(cell.task, shots=SHOTS, seed=cell.seed)
        row = getattr(self, "row_" + cell.method.replace("-", "_"))
        return row(cell, task)

    def row_manual(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer

        template, words = task_prompt(cell.task)
        plain, calibrated = self.accuracies(cell.task, template, Verbalizer.from_words(words))
        return CellResult(plain, {"calibrated_accuracy": calibrated,
                                  "shared_test_pass_seconds": round(self.states(cell.task).seconds, 1)})

    def row_calibrated(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer

        template, words = task_prompt(cell.task)
        plain, calibrated = self.accuracies(cell.task, template, Verbalizer.from_words(words))
        return CellResult(calibrated, {"uncalibrated_accuracy": plain})

    def row_autoprompt(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer
        from autoprompt_kit.methods import AutoPromptConfig

        p = self.profile
        _, words = task_prompt(cell.task)
        config = AutoPromptConfig(template="{text_a} {trigger*3} {mask}.", label_words=words,
                                  num_triggers=[p.ap_triggers], num_candidates=[p.ap_candidates], init_token=["the"],
                                  iterations=p.ap_iterations, batch_size=16, loss=["cross_entropy"])
        res = self.search("autoprompt", config, f"autoprompt-{cell.task}-s{cell.seed}-{cell.key}", task, cell.seed, 1)
        trial, found = res.study.best_trial, res.prompt
        # The found Template (with its trigger ids), not its text (which has only the slots).
        plain, calibrated = self.accuracies(cell.task, found.template, Verbalizer.from_words(words))
        shown = found.template.display()
        return CellResult(plain, {"template": shown, "template_json": found.template.to_dict(),
                                  "dev_accuracy": trial.value, "calibrated_accuracy": calibrated}, shown)

    def row_lmbff_template(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer
        from autoprompt_kit.methods import LMBFFConfig

        p = self.profile
        # Ranked and run with content-free calibration, as the README's LM-BFF results (uncalibrated,
        # Gemma says "great" to ~every review and every template ties near 0.5 on dev).
        template, words = task_prompt(cell.task)
        config = LMBFFConfig(template=template, label_words=words, beam=p.lmbff_beam, keep_generated=p.lmbff_templates,
                             top_n=p.lmbff_top_n, calibration=["content_free"])
        res = self.search("lmbff", config, f"lmbff-templates-{cell.task}-s{cell.seed}-{cell.key}", task, cell.seed,
                          p.lmbff_top_n)
        trial, best = res.study.best_trial, res.prompt
        art = res.study.user_attrs.get("artifacts", {})
        plain, calibrated = self.accuracies(cell.task, best.template.text, Verbalizer.from_words(words))
        return CellResult(calibrated, {"template": best.template.text, "dev_accuracy": trial.value,
                                       "uncalibrated_accuracy": plain,
                                       "generation_seconds": art.get("generation_seconds"),
                                       "ranking_seconds": art.get("ranking_seconds")}, best.template.text)

    def row_lmbff_words(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer
        from autoprompt_kit.methods import LMBFFConfig

        p = self.profile
        template, _ = task_prompt(cell.task)
        config = LMBFFConfig(template=template, generate_templates=False, search_label_words=True,
                             label_k=p.lmbff_label_k, label_assignments=p.lmbff_assignments)
        res = self.search("lmbff", config, f"lmbff-words-{cell.task}-s{cell.seed}-{cell.key}", task, cell.seed,
                          p.lmbff_assignments)
        trial, best = res.study.best_trial, res.prompt
        words = dict(zip(task.label_names, (list(ws) for ws in best.verbalizer.label_words)))
        plain, calibrated = self.accuracies(cell.task, template, Verbalizer.from_words(words))
        shown = " / ".join(ws[0] for ws in words.values())
        return CellResult(plain, {"label_words": words, "dev_accuracy": trial.value,
                                  "calibrated_accuracy": calibrated}, shown)

    def row_kpt(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit.harness import classification_metrics
        from autoprompt_kit.methods.kpt import (
            ExpansionSettings,
            RefineSettings,
            expand,
            refine,
            support_scores,
            support_split,
        )

        from autoprompt_kit.methods.kpt import KPTConfig

        # Zero-shot: no labels; the seed only draws the unlabelled support set from the train split.
        support = support_split(self.full_task(cell.task), self.profile.kpt_support, cell.seed)
        template, words = task_prompt(cell.task)
        if words is WORDS:  # sentiment: WordNet + VADER, the settings the table began with
            expansion_settings = ExpansionSettings(sources=("wordnet", "vader"))
            refine_settings = RefineSettings(prior_cut=0.5, relevance_cut=0.5, calibration="contextual")
        else:  # any other task: the space `autoprompt-kit search kpt --task` builds, its first setting
            config = KPTConfig.for_task(task)
            expansion_settings, refine_settings = config.settings(config.points()[0])
        expansion = expand(words, expansion_settings, self.harness)
        scores = support_scores(self.harness, support, template, expansion.all_words(), max_tokens=1,
                                always=[w for ws in words.values() for w in ws])
        result = refine(expansion, scores, refine_settings)
        verbalizer = result.verbalizer
        word_lp = self.word_logprobs(cell.task, template, verbalizer)
        preds = verbalizer.class_logprobs(word_lp).argmax(1).numpy()
        acc = classification_metrics(self.states(cell.task).test.labels, preds, verbalizer.num_classes)[0]
        sizes = [len(ws) for ws in verbalizer.label_words]
        return CellResult(acc, {"words_per_class": sizes, "support_n": len(support),
                                "label_words": {lab: list(ws)[:20] for lab, ws in
                                                zip(task.label_names, verbalizer.label_words)}},
                          f"{' + '.join(map(str, sizes))} words")

    def row_protoverb(self, cell: Cell, task: Task) -> CellResult:
        import torch

        from autoprompt_kit import Verbalizer
        from autoprompt_kit.harness import classification_metrics
        from autoprompt_kit.methods import ProtoVerbConfig
        from autoprompt_kit.methods.protoverb import PrototypeHead

        template, words = task_prompt(cell.task)
        config = ProtoVerbConfig.from_yaml(ROOT / "search_spaces" / "protoverb_sentiment.yaml")
        config = dataclasses.replace(config, template=template, label_words=words)
        res = self.search("protoverb", config, f"protoverb-{cell.task}-s{cell.seed}-{cell.key}", task, cell.seed,
                          self.profile.protoverb_trials)
        trial, head = res.study.best_trial, res.prompt.head
        assert isinstance(head, PrototypeHead)
        st = self.states(cell.task)
        manual = Verbalizer.from_words(words).class_logprobs(st.word_logprobs)
        with torch.no_grad():
            class_lp = head.class_logprobs(st.hidden.to(head.prototypes.device), manual.to(head.prototypes.device))
        acc = classification_metrics(st.test.labels, class_lp.argmax(1).cpu().numpy(), head.num_classes)[0]
        return CellResult(acc, {"dev_accuracy": trial.value, "params": trial.params},
                          ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items())))

    def row_s3delta(self, cell: Cell, task: Task) -> CellResult:
        from autoprompt_kit import Verbalizer
        from autoprompt_kit.delta import count_parameters
        from autoprompt_kit.methods.s3delta import S3DeltaConfig, s3delta_search, train_structure
        from autoprompt_kit.prompts import Template

        p = self.profile
        wanted = {"budget_percent": p.s3_budget, "warmup_epochs": p.s3_warmup_epochs,
                  "search_epochs": p.s3_search_epochs, "epochs": p.s3_epochs}
        names = {f.name for f in dataclasses.fields(S3DeltaConfig)}
        config = S3DeltaConfig(**{k: v for k, v in wanted.items() if k in names})
        text, words = task_prompt(cell.task)
        template, verbalizer = Template(text), Verbalizer.from_words(words)
        found = s3delta_search(self.harness, task.train, task.dev, template, verbalizer, config, seed=cell.seed)
        delta = train_structure(self.harness, found.structure, task.train, template, verbalizer, config, cell.seed)
        try:
            dev = self.harness.evaluate(task.dev, template, verbalizer)
            test = self.harness.evaluate(self.test_split(cell.task), template, verbalizer)
            backbone = count_parameters(self.harness.model)
            attrs = {"dev_accuracy": dev.accuracy, "parameters": delta.num_parameters(),
                     "percent_of_backbone": round(100 * delta.num_parameters() / backbone, 5),
                     "modules": len(found.structure), "search_seconds": round(found.seconds, 1),
                     "structure_table": found.table}
        finally:
            delta.detach()
        return CellResult(test.accuracy, attrs, f"{attrs['parameters']:,} params ({attrs['percent_of_backbone']}%)")


    def row_demos(self, cell: Cell, task: Task) -> CellResult:
        """The demos search with one selection rule: ``demos_per_class`` per class, calibration none
        or content-free (content-free inputs carry the demonstrations), the better on dev."""
        from autoprompt_kit.methods import DemosConfig

        selection = {"demos-random": "random", "demos-similar": "similar", "demos-dev": "dev_selected"}[cell.method]
        template, words = task_prompt(cell.task)
        config = DemosConfig(template=template, label_words=words, per_class=[self.profile.demos_per_class],
                             selection=[selection], order=["similar_last" if selection == "similar" else "balanced"],
                             separator=[" "], calibration=["none", "content_free"])
        res = self.search("demos", config, f"{cell.method}-{cell.task}-s{cell.seed}-{cell.key}", task, cell.seed, 2)
        trial = res.study.best_trial
        test = res.prompt.evaluate(self.test_split(cell.task), self.harness)
        return CellResult(test.accuracy, {"dev_accuracy": trial.value, "params": trial.params,
                                          "test_macro_f1": test.macro_f1}, f"calibration={trial.params['calibration']}")

    row_demos_random = row_demos_similar = row_demos_dev = row_demos

    def row_auto(self, cell: Cell, task: Task) -> CellResult:
        """``auto`` as a user runs it: the space read off the task, a time budget, cross-validated
        selection; the row reports its test accuracy next to its own estimate."""
        from autoprompt_kit.methods import AutoConfig

        start = time.perf_counter()
        res = self.search("auto", AutoConfig.for_task(task), f"auto-{cell.task}-s{cell.seed}-{cell.key}", task,
                          cell.seed, 1, budget=float(self.profile.auto_budget), selection="cv", progress=True)
        seconds = time.perf_counter() - start
        test = res.prompt.evaluate(self.test_split(cell.task), self.harness)
        cv = res.document["metrics"]["cv"]
        stages = res.document.get("stages", {})
        return CellResult(test.accuracy, {"cv_accuracy": cv["accuracy"], "cv_macro_f1": cv["macro_f1"],
                                          "cv_se": cv["se"], "cv_metric": cv.get("metric"), "cv_n": cv["n"],
                                          "test_macro_f1": test.macro_f1, "search_seconds": round(seconds, 1),
                                          "prompt": res.prompt.describe(), "stages": stages},
                          f"cv {cv['accuracy']:.3f} ± {cv['se']:.3f}; {res.prompt.describe()[:80]}")


# ------------------------------------------------------------------------------------------------
# The study: one trial per cell
# ------------------------------------------------------------------------------------------------
def open_results_study(storage: str, name: str, create: bool = True) -> optuna.Study:
    """The results study (no sampler logic: every trial's parameters are fixed by its cell)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}}
                                     if storage.startswith("sqlite") else {"pool_pre_ping": True})
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            raise SystemExit(f"results_table.py: error: no study {name!r} in {storage} (run the table first)") from None
    return optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=True)


def close_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING or WAITING by a killed run as failed (their cells run again)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the run was stopped)")
        study.tell(t.number, state=TrialState.FAIL)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for _ in waiting:  # a cell enqueued just before a kill: pop it and close it
        trial = study.ask()
        trial.set_user_attr("error", "interrupted before it started")
        study.tell(trial, state=TrialState.FAIL)
    return len(stale) + len(waiting)


def merge_from(study: optuna.Study, sources: Sequence[str]) -> int:
    """Copy the finished trials of the same-named study in each source storage into ``study``.

    Parallel workers each write their own storage (one process per study); this gathers their
    cells into one study for the report and the dashboard. A trial already copied (same cell,
    same start time) is skipped, so merging twice adds nothing.
    """
    import optuna
    from optuna.trial import TrialState

    seen = {(t.user_attrs.get("cell"), t.datetime_start) for t in study.get_trials(deepcopy=False)}
    added = 0
    for source in sources:
        try:
            other = optuna.load_study(study_name=study.study_name, storage=source)
        except KeyError:
            raise SystemExit(f"results_table.py: error: no study {study.study_name!r} in {source}") from None
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if "cell" in t.user_attrs and (t.user_attrs["cell"], t.datetime_start) not in seen:
                study.add_trial(t)
                seen.add((t.user_attrs["cell"], t.datetime_start))
                added += 1
    return added


def completed(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """Completed trials by cell key (the latest wins)."""
    from optuna.trial import TrialState

    return {t.user_attrs["cell"]: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "cell" in t.user_attrs}


def start_trial(study: optuna.Study, cell: Cell, profile_name: str) -> optuna.Trial:
    """A RUNNING trial whose parameters are the cell's (enqueued, then asked for)."""
    attrs = {"cell": cell.key, "settings": dict(cell.settings), "profile": profile_name,
             "row": METHODS[cell.method]}
    study.enqueue_trial(cell.params, user_attrs=attrs)
    trial = study.ask()
    trial.suggest_categorical("task", list(TASKS))
    trial.suggest_categorical("method", list(METHODS))
    trial.suggest_int("seed", 0, 2**31 - 1)
    assert trial.params == cell.params, (trial.params, cell.params)
    return trial


def run_table(args: argparse.Namespace) -> int:
    """Run every missing cell; returns the number of cells that failed."""
    import torch
    from optuna.trial import TrialState
    from tqdm import tqdm

    from autoprompt_kit import Harness

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    study = open_results_study(args.storage, args.study)
    closed = close_interrupted(study)
    model = args.model or "gemma-3-270m"
    cells = plan(args, model)
    done = completed(study)
    todo = [c for c in cells if c.key not in done or args.redo]
    print(f"study {args.study} in {args.storage}: {len(cells)} cells, {len(cells) - len(todo)} already complete, "
          f"{len(todo)} to run" + (f" ({closed} interrupted trial(s) marked failed)" if closed else ""), flush=True)
    if not todo:
        return 0
    start = time.perf_counter()
    harness = Harness(args.model, max_length=args.max_length, progress=False)
    print(f"model {harness.model_name} ({harness.kind}, {harness.device}) loaded in "
          f"{time.perf_counter() - start:.0f}s; "
          f"profile {args.profile}, test n={args.knobs.test_examples or 'all'}", flush=True)
    for p in harness.model.parameters():
        p.requires_grad_(False)
    runner = Runner(harness, args.knobs, args.search_storage)
    failed = 0
    bar = tqdm(todo, unit="cell", dynamic_ncols=True, disable=args.no_progress)
    for cell in bar:
        bar.set_description(f"{cell.task}/{cell.method}/s{cell.seed}")
        trial = start_trial(study, cell, args.profile)
        t0 = time.perf_counter()
        try:
            result = runner.run(cell)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 — a failed cell is recorded and retried on the next run
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            trial.set_user_attr("error", message)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            study.tell(trial, state=TrialState.FAIL)
            failed += 1
            tqdm.write(f"{cell.task:7s} {cell.method:15s} seed {cell.seed:3d}  FAILED  {message}")
            continue
        seconds = time.perf_counter() - t0
        for key, value in result.attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("test_accuracy", result.accuracy)
        trial.set_user_attr("test_n", len(runner.test_split(cell.task)))
        trial.set_user_attr("seconds", round(seconds, 1))
        study.tell(trial, result.accuracy)
        tqdm.write(f"{cell.task:7s} {cell.method:15s} seed {cell.seed:3d}  test {result.accuracy:.4f}  "
                   f"{seconds:6.0f}s  {result.detail}")
    bar.close()
    print(f"\n{len(todo) - failed} cells done, {failed} failed, {time.perf_counter() - start:.0f}s in all")
    print(markdown(study, args, footer=False))
    return failed


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def collect(study: optuna.Study, args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """(task, method) → [(seed, accuracy, seconds)] of the completed cells of the current plan."""
    done = completed(study)
    out: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for cell in plan(args, args.model or "gemma-3-270m"):
        t = done.get(cell.key)
        if t is not None and t.value is not None:
            out.setdefault((cell.task, cell.method), []).append((cell.seed, float(t.value),
                                                                 float(t.user_attrs.get("seconds", 0.0))))
    return out


def row_label(method: str, profile: Profile) -> str:
    """The table's name of a row (S3Delta's names its budget)."""
    return METHODS[method] + (f" @ {profile.s3_budget}%" if method == "s3delta" else "")


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def markdown(study: optuna.Study, args: argparse.Namespace, footer: bool = True) -> str:
    """The table: rows = methods, columns = tasks (``mean ± sd``), then wall time (sum; per run)."""
    data = collect(study, args)
    n_seeds = len(args.seeds)
    lines = ["| method | " + " | ".join(args.tasks) + " | wall time: sum (per run) |",
             "|---|" + "---:|" * len(args.tasks) + "---:|"]
    incomplete = False
    for method in args.methods:
        cells = []
        secs: list[float] = []
        for task in args.tasks:
            got = data.get((task, method), [])
            secs += [s for _, _, s in got]
            if not got:
                cells.append("–")
                incomplete = True
                continue
            mean, sd = _mean_sd([a for _, a, _ in got])
            mark = "" if len(got) == n_seeds else f" ({len(got)}/{n_seeds} seeds)*"
            incomplete |= len(got) < n_seeds
            cells.append((f"{mean:.4f} ± {sd:.4f}" if len(got) > 1 else f"{mean:.4f}") + mark)
        wall = f"{_duration(sum(secs))} ({_duration(sum(secs) / len(secs))})" if secs else "–"
        lines.append(f"| {row_label(method, args.knobs)} | " + " | ".join(cells) + f" | {wall} |")
    if not footer:
        return "\n".join(lines)
    p: Profile = args.knobs
    test_n = {task: _test_n(task, args) for task in args.tasks}
    lines += [
        "",
        f"Model {args.model or 'Gemma 3 270M (embedded default)'}; {SHOTS} shots per class for train and dev "
        f"(`load_task(task, shots={SHOTS}, seed=s)`); seeds {', '.join(map(str, args.seeds))}; mean ± sd (sample sd) "
        f"of test accuracy over seeds; test n = "
        + ", ".join(f"{t} {n}" for t, n in test_n.items())
        + f" (fixed seeded subsample, `load_task(task, max_examples={p.test_examples or 'None'}).test`, the same "
        f"for every row); profile `{args.profile}` ({_knob_text(p)}); generated "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from study `{args.study}`.",
        "",
        ("Rows: manual `{text_a} It was {mask}.` with terrible / great, no calibration; the same with content-free "
        "calibration (both from one test pass); AutoPrompt: 3 trigger tokens before the mask, cross-entropy loss, "
        "uncalibrated; LM-BFF template: causal-LM generation, ranked and scored with content-free calibration; "
        "LM-BFF label words: contrastive candidates with the manual template, uncalibrated; KPT: zero-shot WordNet + "
        "VADER expansion refined (prior cut 0.5, relevance cut 0.5) on unlabelled support examples drawn with the "
        "seed, contextual calibration; ProtoVerb: prototype head on the frozen model's mask states, the setting of "
        "search_spaces/protoverb_sentiment.yaml with the best dev accuracy; S3Delta: bi-level structure search under "
        f"the budget ({p.s3_budget}% of the backbone), the structure re-trained from scratch, uncalibrated; "
        f"Demonstrations: {p.demos_per_class} train example(s) per class before each input, chosen at random, as the "
        "nearest by sentence embedding (most similar last) or as one fixed set (the best of 8 random sets on the "
        "train examples outside each), calibration none or content-free (inputs carrying the demonstrations) "
        f"chosen on dev; auto: the space read off the task (class names as words, the generic templates) on every "
        f"task, a {p.auto_budget // 60}-minute budget, 4-fold cross-validation over train + dev, the winner refit on "
        "all of them. Tasks whose classes are not negative / positive (fortunes, spam) use the prompt their class "
        "names give in every row — the first default template `{text_a} Category: {mask}.` and the class names as "
        "label words (`prompts.defaults`); KPT there expands through WordNet only with the default filters of "
        "`autoprompt-kit space kpt --task`. Wall time of frozen-model rows: the first row of a task pays for the "
        "shared test pass."),
    ]
    if incomplete:
        lines.append("\n– = no completed cell; * = not every seed completed (mean ± sd over the completed ones).")
    lines += ["", "Per seed (" + " / ".join(map(str, args.seeds)) + "; – = not done):", "",
              "| method | " + " | ".join(args.tasks) + " |", "|---|" + "---|" * len(args.tasks)]
    for method in args.methods:
        row = []
        for task in args.tasks:
            got = {seed: acc for seed, acc, _ in data.get((task, method), [])}
            row.append(" / ".join(f"{got[s]:.4f}" if s in got else "–" for s in args.seeds))
        lines.append(f"| {row_label(method, args.knobs)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _test_n(task: str, args: argparse.Namespace) -> int:
    from autoprompt_kit import load_task

    return len(load_task(task, max_examples=args.knobs.test_examples or None).test)


def _knob_text(p: Profile) -> str:
    return (f"AutoPrompt {p.ap_iterations} iterations, k={p.ap_candidates}; LM-BFF beam {p.lmbff_beam}, "
            f"{p.lmbff_templates} templates ranked, top {p.lmbff_top_n}, label k={p.lmbff_label_k}, "
            f"{p.lmbff_assignments} assignments; KPT support {p.kpt_support}; ProtoVerb {p.protoverb_trials} trials; "
            f"S3Delta {p.s3_budget}% budget, {p.s3_warmup_epochs}+{p.s3_search_epochs} search + {p.s3_epochs} "
            "re-training epochs")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plot(study: optuna.Study, args: argparse.Namespace, path: Path) -> None:
    """Grouped bars (tasks on the x axis, one bar per method) with sd error bars; incomplete cells
    are hatched (not every seed done) or marked "n/a" (none done)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    data = collect(study, args)
    n_tasks, n_methods = len(args.tasks), len(args.methods)
    width = 0.8 / n_methods
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * n_tasks + 1.5), 4.5))
    colors = plt.get_cmap("tab10")
    for m, method in enumerate(args.methods):
        for t, task in enumerate(args.tasks):
            x = t - 0.4 + width * (m + 0.5)
            got = data.get((task, method), [])
            if not got:
                ax.text(x, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="grey")
                continue
            mean, sd = _mean_sd([a for _, a, _ in got])
            ax.bar(x, mean, width, yerr=sd, capsize=2, color=colors(m % 10),
                   hatch="//" if len(got) < len(args.seeds) else None, edgecolor="white", linewidth=0.3)
    ax.set_xticks(range(n_tasks))
    ax.set_xticklabels(args.tasks)
    ax.set_xlim(-0.5, n_tasks - 0.5)
    ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.set_ylim(0.0, 1.0)
    ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set_title(f"{args.model or 'Gemma 3 270M'}, {SHOTS}-shot, seeds {', '.join(map(str, args.seeds))}, "
                 f"profile {args.profile}; hatched: not every seed done, n/a: no cell", fontsize=8)
    handles = [Patch(color=colors(m % 10), label=row_label(method, args.knobs))
               for m, method in enumerate(args.methods)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(args: argparse.Namespace) -> None:
    study = open_results_study(args.storage, args.study, create=False)
    md = Path(args.out_md)
    md.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# Results: every method, one table\n\nRegenerate: `{command_line(args)}`\n\n"
            + markdown(study, args) + "\n")
    if args.out_png and importlib.util.find_spec("matplotlib") is not None:
        text += f"\n![results]({os.path.relpath(args.out_png, md.parent)})\n"
    md.write_text(text)
    print(markdown(study, args))
    print(f"\nwrote {md}")
    if args.out_png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("no chart: matplotlib is not installed (pip install matplotlib)")
            return
        plot(study, args, Path(args.out_png))
        print(f"wrote {args.out_png}")


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/results_table.py", f"--profile {args.profile}"]
    if list(args.tasks) != list(TASKS):
        parts.append("--tasks " + " ".join(args.tasks))
    if list(args.seeds) != list(SEEDS):
        parts.append("--seeds " + " ".join(map(str, args.seeds)))
    if list(args.methods) != list(METHODS):
        parts.append("--methods " + " ".join(args.methods))
    for f in dataclasses.fields(Profile):
        value = getattr(args.knobs, f.name)
        if value != getattr(PROFILES[args.profile], f.name):
            parts.append(f"--{f.name.replace('_', '-')} {value}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def _number(cast: type, low: float, what: str, high: float | None = None) -> Any:
    """An argparse type: ``cast(text)`` with ``low <= value`` (``low < value < high`` when ``high`` is set)."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        ok = value is not None and (low < value < high if high is not None else value >= low)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, 1, "a positive integer")
_count = _number(int, 0, "an integer >= 0")
_percent = _number(float, 0.0, "a percentage in (0, 100)", 100.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="results_table.py", description=__doc__,
                                     usage="%(prog)s [--profile {quick,paper}] [--tasks T ...] [--methods M ...] "
                                           "[--seeds S ...] [--test-examples N] [size knobs] [--report]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="size preset (default quick)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK",
                        help=f"columns, from {', '.join(TASKS)}")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD",
                        help=f"rows, from {', '.join(METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=_count, default=list(SEEDS), help="few-shot seeds (13 21 42)")
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded Gemma 3 270M)")
    parser.add_argument("--max-length", type=_positive_int, default=256, help="longest prompt in tokens")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage of the results study")
    parser.add_argument("--search-storage", default=None,
                        help="storage of the inner searches (default: <storage file>-searches.db beside it)")
    parser.add_argument("--study", default=None, help="results study name (default results-table-<profile>)")
    parser.add_argument("--report", action="store_true", help="write the markdown table and chart from the study")
    parser.add_argument("--merge-from", nargs="+", default=[], metavar="STORAGE",
                        help="first copy the study's finished cells from these storages (parallel workers, each "
                             "run with its own --storage and --tasks/--seeds) into --storage")
    parser.add_argument("--out-md", default=str(ROOT / "benchmarks" / "results.md"))
    parser.add_argument("--out-png", default=str(ROOT / "benchmarks" / "results.png"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--redo", action="store_true",
                        help="run the selected cells again even if complete (e.g. after a method changed); "
                             "the report uses each cell's latest trial")
    knobs = parser.add_argument_group("size knobs (override the profile)")
    for f in dataclasses.fields(Profile):
        kind = _percent if f.type in (float, "float") else (_count if f.name == "test_examples" else _positive_int)
        helps = {"test_examples": "fixed seeded test subsample per task (0 = the whole test split)"}
        knobs.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                           help=helps.get(f.name, f.name.replace("_", " ")))
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.tasks)) != len(args.tasks) \
            or len(set(args.methods)) != len(args.methods):
        parser.error("--tasks, --methods and --seeds must not repeat a value")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Profile)
                 if getattr(args, f.name) is not None}
    args.knobs = dataclasses.replace(PROFILES[args.profile], **overrides)
    if args.knobs.lmbff_top_n > args.knobs.lmbff_templates:
        parser.error(f"--lmbff-top-n ({args.knobs.lmbff_top_n}) cannot exceed --lmbff-templates "
                     f"({args.knobs.lmbff_templates})")
    if args.knobs.lmbff_assignments > args.knobs.lmbff_label_k ** 2:
        parser.error("--lmbff-assignments cannot exceed --lmbff-label-k squared")
    if args.study is None:
        args.study = f"results-table-{args.profile}"
    if args.search_storage is None:
        if args.storage.startswith("sqlite:///") and args.storage.endswith(".db"):
            args.search_storage = args.storage[:-3] + "-searches.db"
        else:
            args.search_storage = args.storage
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge_from:
        added = merge_from(open_results_study(args.storage, args.study), args.merge_from)
        print(f"merged {added} finished cell trial(s) into study {args.study} in {args.storage}")
    if args.report:
        write_report(args)
        return 0
    return 1 if run_table(args) else 0


if __name__ == "__main__":
    sys.exit(main())
