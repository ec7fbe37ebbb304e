"""``auto`` and what it stands on: cross-validated selection, the budget, staged studies, the tie rule."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Harness, Prompt, find_prompt, load_task
from autoprompt_kit.cli import main
from autoprompt_kit.harness import EvalResult
from autoprompt_kit.methods.auto import AutoConfig
from autoprompt_kit.search import (SearchConfig, SearchContext, SearchJob, Searcher, TrialOutcome, best_trial,
                                   labelled_pool, make_folds, run_search)
from autoprompt_kit.search.runner import parse_budget


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    model, tok, kind = tiny_models["gpt2"]
    return Harness(model, tok, kind=kind, progress=False)


@pytest.fixture(scope="module")
def task():
    return load_task("fortunes", shots=4, max_examples=120)


# -- a method that records what each run of a trial saw ----------------------------------------------
@dataclass
class SpyConfig(SearchConfig):
    n: int = 3
    seen: list[Any] = field(default_factory=list, metadata={"help": "runs recorded (test only)"})

    def grid(self) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(self.n)]


class Spy(Searcher):
    name = "spy-cv"
    config_class = SpyConfig
    config: SpyConfig

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        i = trial.suggest_categorical("i", list(range(self.config.n)))
        train, dev = ctx.task.train, ctx.task.dev
        self.config.seen.append((i, {e.text_a for e in train}, [e.text_a for e in dev]))
        # Predict class 0 for every dev example, with confidence growing with i.
        lp = np.log(np.full((len(dev), len(ctx.task.label_names)), 0.5 / max(1, len(ctx.task.label_names) - 1)))
        lp[:, 0] = np.log(0.5 + 0.1 * i)
        result = EvalResult.from_class_logprobs(lp, dev.labels, word_logprobs=np.zeros((len(dev), 0)))
        return TrialOutcome(Prompt(["{text_a} {mask}"], {n: n for n in ctx.task.label_names}), result)



def _job(searcher: Searcher, tmp_path, name: str, **kw: Any) -> SearchJob:
    return SearchJob(searcher, name, f"sqlite:///{tmp_path / 'cv.db'}", progress=False, task_info={"name": "t"},
                     model_info={"name": "tiny", "kind": "causal"}, **kw)


def test_folds_are_stratified_disjoint_and_cover_the_pool(task):
    pool = labelled_pool(task)
    folds = make_folds(task, 4, seed=13)
    held = np.concatenate([f.held_out for f in folds])
    assert sorted(held.tolist()) == list(range(len(pool)))  # every example held out exactly once
    for f in folds:
        assert not set(f.train) & set(f.held_out)
        counts = np.bincount(pool.labels[f.held_out], minlength=task.num_labels)
        assert counts.max() - counts.min() <= 1  # each class spread evenly
    assert [f.held_out.tolist() for f in make_folds(task, 4, seed=13)] == [f.held_out.tolist() for f in folds]
    with pytest.raises(AutoPromptError, match="--folds"):
        make_folds(task, 1, seed=13)


def test_cv_scores_no_example_with_a_candidate_that_learnt_from_it(task, gpt2, tmp_path):
    config = SpyConfig(n=2)
    spy = Spy(config)
    study = run_search(_job(spy, tmp_path, "spy", n_trials=2, selection="cv", folds=4),
                       SearchContext(task, gpt2, 13))
    assert len(config.seen) == 2 * 4
    pool_texts = [e.text_a for e in labelled_pool(task)]
    for i in range(2):
        runs = [(train, dev) for j, train, dev in config.seen if j == i]
        for train, dev in runs:
            assert not train & set(dev)  # learnt from the other folds only
        assert sorted(t for _, dev in runs for t in dev) == sorted(pool_texts)
    best = best_trial(study)
    cv = best.user_attrs["cv"]
    assert cv["n"] == len(pool_texts) and cv["folds"] == 4 and len(cv["fold_scores"]) == 4
    if task.metric == "accuracy":  # binomial over the pooled examples
        assert cv["se"] == pytest.approx(np.sqrt(best.value * (1 - best.value) / len(pool_texts)))
    else:  # macro-F1 (fortunes): across folds
        assert cv["se"] == pytest.approx(np.std(cv["fold_scores"], ddof=1) / 2)


def test_ties_go_to_the_simpler_then_the_more_confident_prompt(tmp_path):
    study = optuna.create_study(direction="maximize")
    for number, (complexity, gold) in enumerate([(3, -0.1), (1, -0.9), (1, -0.5), (2, -0.01)]):
        study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={"complexity": complexity,
                                                                          "dev_gold_logprob": gold}))
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs={"complexity": 0, "dev_gold_logprob": 0.0}))
    assert best_trial(study).number == 2  # not trial 0, which Optuna's best_trial returns (first of the ties)
    assert study.best_trial.number == 0


@dataclass
class SleepConfig(SearchConfig):
    seconds: float = 0.3

    def grid(self) -> list[dict[str, Any]]:
        return [{"i": i} for i in range(50)]


class Sleeper(Searcher):
    name = "sleep-budget"
    config_class = SleepConfig

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        trial.suggest_categorical("i", list(range(50)))
        time.sleep(self.config.seconds)  # type: ignore[attr-defined]
        dev = ctx.task.dev
        lp = np.zeros((len(dev), ctx.task.num_labels))
        result = EvalResult.from_class_logprobs(lp, dev.labels, word_logprobs=np.zeros((len(dev), 0)))
        return TrialOutcome(Prompt(["{text_a} {mask}"], {n: n for n in ctx.task.label_names}), result)


def test_budget_stops_starting_trials_and_a_rerun_continues(task, gpt2, tmp_path):
    start = time.perf_counter()
    study = run_search(_job(Sleeper(SleepConfig()), tmp_path, "sleep", n_trials=50, budget=2.0),
                       SearchContext(task, gpt2, 13))
    took = time.perf_counter() - start
    done = len(study.get_trials(states=(TrialState.COMPLETE,)))
    # 50 trials of 0.3 s would take 15 s: it stops after the trial that spent the budget.
    assert 1 <= done <= 8 and took < 2.0 + 0.3 + 3.0
    again = run_search(_job(Sleeper(SleepConfig()), tmp_path, "sleep", n_trials=50, budget=2.0),
                       SearchContext(task, gpt2, 13))
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) > done  # the queue left is worked on


@pytest.mark.parametrize("value, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("45", 45), (None, None)])
def test_budget_values(value, seconds):
    assert parse_budget(value) == seconds


@pytest.mark.parametrize("value", ["ten minutes", "0m", "-3m", "5d"])
def test_bad_budget_is_one_line_on_the_cli(value, capsys):
    assert main(["search", "auto", "--task", "mr", f"--budget={value}", "--out", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert "--budget" in err and "\n" not in err and "Traceback" not in err


def test_reused_scores_are_the_same_scores(gpt2, task):
    split = task.dev[:12]
    plain = gpt2.mask_logprobs(split, "{text_a} Category: {mask}.", reduce=None)
    with gpt2.reused_scores():
        first = gpt2.mask_logprobs(split[:5], "{text_a} Category: {mask}.", reduce=None)
        again = gpt2.mask_logprobs(split, "{text_a} Category: {mask}.", reduce=None)
        assert len(gpt2._logprob_rows) == 12
    assert gpt2._logprob_rows is None  # nothing kept after the block
    assert torch.allclose(first, plain[:5], atol=1e-5)
    assert torch.equal(again.argmax(1), plain.argmax(1)) and torch.allclose(again, plain, atol=1e-5)
    # From the mask states of a scoring pass: the same rows, the output layer only.
    hidden = gpt2.mask_hidden(split, "{text_a} Category: {mask}.")
    with gpt2.reused_scores():
        gpt2.prime_logprobs(split, "{text_a} Category: {mask}.", hidden)
        primed = gpt2.mask_logprobs(split, "{text_a} Category: {mask}.", reduce=None)
    assert torch.allclose(primed, plain, atol=1e-4) and torch.equal(primed.argmax(1), plain.argmax(1))
    with pytest.raises(AutoPromptError, match="reused_scores"):
        gpt2.prime_logprobs(split, "{text_a} Category: {mask}.", hidden)


def _auto(task, gpt2, tmp_path, name: str, budget: float | None = 120, **space: Any):
    config = AutoConfig.for_task(task)
    for key, value in space.items():
        setattr(config, key, value)
    return find_prompt("auto", task, config, harness=gpt2, storage=f"sqlite:///{tmp_path / 'auto.db'}", study=name,
                       budget=budget, out=tmp_path / f"{name}.json", test_split="test")


def test_auto_runs_every_stage_and_reports_a_cross_validated_estimate(task, gpt2, tmp_path):
    result = _auto(task, gpt2, tmp_path, "all", per_class=[1], demo_selection=["random"])
    study = result.study
    stages = {t.params["stage"] for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    assert {"words", "templates", "trained"} <= stages
    built = {k for k in study.user_attrs if k.startswith("auto.stage.")}
    assert {f"auto.stage.{s}" for s in ("words", "templates", "demonstrations", "trained", "ensemble")} == built
    doc = json.loads((tmp_path / "all.json").read_text())
    cv = doc["metrics"]["cv"]
    assert cv["n"] == len(labelled_pool(task)) and cv["folds"] == 4 and cv["se"] > 0
    assert doc["metrics"]["test"]["n"] == len(task.test)
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs.get("note")  # every dropped candidate says why
    # The dashboard's view: the CV estimate named, each stage's trials noted, a trained head sized.
    from optuna_dashboard._note import get_note_from_system_attrs

    assert study.metric_names == [f"CV {'macro-F1' if task.metric == 'macro_f1' else 'accuracy'} (4 folds)"]
    attrs = study._storage.get_study_system_attrs(study._study_id)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        note = get_note_from_system_attrs(attrs, t._trial_id)["body"]
        assert "4-fold cross-validation over train + dev" in note and "Out-of-fold predictions" in note
        if t.params["stage"] == "trained":
            assert "- trained state: protoverb head (" in note, note
    # The refit prompt reloads and predicts.
    loaded = Prompt.load(tmp_path / "all.prompt")
    assert len(loaded.predict(["a new text about food and cooking"], gpt2)) == 1
    # A rerun of the finished study adds nothing.
    before = len(study.trials)
    again = _auto(task, gpt2, tmp_path, "all", per_class=[1], demo_selection=["random"])
    assert len(again.study.trials) == before


def test_auto_demonstrations_come_from_the_training_folds_only(task, gpt2, tmp_path, monkeypatch):
    from autoprompt_kit.methods.auto import searcher as auto_searcher

    seen: list[tuple[set[str], set[str]]] = []
    real = Prompt.evaluate

    def spy(self, split, harness=None):
        if self.demonstrations is not None:
            seen.append(({e.text_a for e in self.demonstrations.pool}, {e.text_a for e in split}))
        return real(self, split, harness)

    monkeypatch.setattr(auto_searcher.Prompt, "evaluate", spy)
    _auto(task, gpt2, tmp_path, "demos", budget=None, stages=["words", "demonstrations"], label_search=False,
          per_class=[1], demo_selection=["random"], drop_unread_words=False)
    folds = [(pool, held) for pool, held in seen if pool != held]  # the refit on everything scores its own pool
    assert len(folds) == 4 + 1  # each fold, then the test split with the refit prompt
    for pool, held in folds:
        assert not pool & held


def test_auto_drops_class_name_words_the_model_never_reads(task, gpt2, tmp_path):
    result = _auto(task, gpt2, tmp_path, "dead", budget=None, stages=["words", "trained"], label_search=False)
    notes = [t.user_attrs.get("note", "") for t in result.study.get_trials(states=(TrialState.PRUNED,))]
    # The tiny random model reads none of the ten class names: those candidates are pruned with the
    # words named, and the prototypes (which read the mask states, not words) give the answer.
    assert any("never puts" in n for n in notes)
    assert result.prompt.head is not None


def test_auto_resumes_where_the_budget_stopped_it(task, gpt2, tmp_path):
    with pytest.raises(AutoPromptError, match="budget of 0:00 was spent before any trial finished"):
        _auto(task, gpt2, tmp_path, "resume", budget=0.05, per_class=[1], demo_selection=["random"])
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'auto.db'}")
    n_first = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    assert "auto.stage.words" in study.user_attrs
    second = _auto(task, gpt2, tmp_path, "resume", budget=300, per_class=[1], demo_selection=["random"])
    finished = second.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) > n_first
    keys = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(keys) == len(set(keys))  # nothing ran twice


def test_selection_cv_works_for_another_method(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "best.json"
    code = main(["search", "select", "--task", "mr", "--model", tiny_model_dir, "--shots", "4", "--max-examples", "60",
                 "--selection", "cv", "--folds", "3", "--trials", "2", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["metrics"]["cv"]["folds"] == 3 and doc["metrics"]["cv"]["n"] == 16
    assert "cv" in capsys.readouterr().out


def test_cv_and_dev_studies_do_not_mix(tmp_path, tiny_model_dir, capsys):
    args = ["search", "select", "--task", "mr", "--model", tiny_model_dir, "--shots", "4", "--max-examples", "60",
            "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "one", "--out", "", "--quiet",
            "--test-split", ""]
    assert main(args) == 0
    assert main(args + ["--selection", "cv"]) == 2
    assert "another selection" in capsys.readouterr().err


def test_selection_bias_is_what_winning_on_the_same_folds_adds():
    from autoprompt_kit.search.folds import selection_bias

    scores = [[0.9, 0.5, 0.7, 0.7],   # the winner on the mean (0.70)
              [0.6, 0.8, 0.6, 0.6],   # better on fold 2
              [0.5, 0.5, 0.8, 0.5]]   # better on fold 3
    assert selection_bias(scores, 0) == pytest.approx(((0.9 - 0.9) + (0.8 - 0.5) + (0.8 - 0.7) + 0) / 4)
    assert selection_bias([[0.7, 0.8]], 0) == 0.0  # one candidate: nothing was chosen


def test_best_json_reports_the_corrected_estimate(task, gpt2, tmp_path):
    result = _auto(task, gpt2, tmp_path, "estimate", budget=None, stages=["words", "trained"], label_search=False)
    cv = result.document["metrics"]["cv"]
    value = cv["accuracy"] if cv["metric"] == "accuracy" else cv["macro_f1"]
    assert cv["candidates"] >= 1 and cv["selection_bias"] >= 0
    assert cv["estimate"] == pytest.approx(value - cv["selection_bias"])


def test_a_trial_that_would_overrun_the_budget_is_stopped_between_folds(task, gpt2, tmp_path):
    config = SleepConfig(seconds=1.0)
    spy = Sleeper(config)
    # Each fold sleeps 1 s (4 s a trial): with a 6.5 s budget the first trial finishes even after a
    # slow set-up on a loaded machine, and the second cannot finish in time.
    study = run_search(_job(spy, tmp_path, "overrun", n_trials=50, budget=6.5, selection="cv", folds=4),
                       SearchContext(task, gpt2, 13))
    # Timed by the trials' own clocks, so a slow set-up on a loaded machine does not count: at most
    # the budget (+10 %) and one fold over it, with half a second for the storage's bookkeeping.
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    spent = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    assert spent < 1.1 * 6.5 + 1.0 + 0.5
    notes = [t.user_attrs.get("note", "") for t in study.get_trials(states=(TrialState.PRUNED,))]
    assert any(n.startswith("budget spent after") for n in notes)
