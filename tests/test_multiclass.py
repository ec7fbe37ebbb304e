"""Multi-class paths that have no method file of their own: template selection (and its
ensembles and calibration) with five classes, and — slow — a KPT search on the 10-class
``fortunes`` task with the real Gemma 3 270M."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from optuna.trial import TrialState

from autoprompt_kit import Example, Harness, Split, load_task
from autoprompt_kit.data import Task
from autoprompt_kit.harness import classification_metrics
from autoprompt_kit.methods.select import SelectConfig
from autoprompt_kit.search import SearchContext, SearchJob, best_candidate, get_searcher, run_search

NAMES = ["art", "food", "law", "science", "work"]
WORDS = {"art": ["fun"], "food": ["nice"], "law": ["bad"], "science": ["great", "fine"], "work": ["dull"]}


def five_class_task() -> Task:
    texts = [f"{a} {b}" for a in ("the movie", "a film", "the plot", "what a story", "the cast", "the music")
             for b in ("was great", "was bad", "is dull", "is fun", "was awful")]
    split = Split([Example(t, i % 5) for i, t in enumerate(texts)], name="all", label_names=NAMES)
    return Task("five", NAMES, {"train": split[:10], "dev": split[10:25], "test": split[25:]})


def test_select_with_five_classes_ensembles_and_calibration(tiny_models, tmp_path):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False, precision="fp32")
    task = five_class_task()
    config = SelectConfig(templates=["{text_a} It was {mask}.", "{text_a} Topic: {mask}"], label_words=[WORDS],
                          calibration=["none", "content_free"], ensembles=["uniform"])
    job = SearchJob(get_searcher("select")(config), "sel5", f"sqlite:///{tmp_path / 's.db'}", n_trials=6,
                    progress=False, task_info={"name": "five"}, model_info={"name": "tiny", "kind": kind})
    study = run_search(job, SearchContext(task, h, 13))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6                                   # 3 template choices × 2 calibrations
    for trial in done:
        preds = np.array(trial.user_attrs["~dev_predictions"])
        assert preds.min() >= 0 and preds.max() < 5
        acc, f1 = classification_metrics(task.dev.labels, preds, 5)
        assert trial.user_attrs["dev_accuracy"] == pytest.approx(acc)
        assert trial.user_attrs["dev_macro_f1"] == pytest.approx(f1)
    _, candidate = best_candidate(study)
    result = candidate.evaluate(task.test, h)
    assert candidate.verbalizer.num_classes == 5 and result.class_logprobs.shape == (len(task.test), 5)


@pytest.mark.slow
def test_kpt_search_on_fortunes_beats_the_majority_class(real_harness, tmp_path):
    """KPT, 10 topic classes, WordNet expansion of the class names (VADER is refused for topics),
    8 shots, seed 13: search → finish on Gemma 3 270M, scored on the whole test split (877)."""
    from autoprompt_kit.methods.kpt import KPTConfig
    from autoprompt_kit.prompts.defaults import task_label_words
    from autoprompt_kit.search import finish_search

    start = time.perf_counter()
    task = load_task("fortunes", shots=8, seed=13)
    seeds = task_label_words(task.label_names)
    config = KPTConfig(template="{text_a} This text is about {mask}.", seed_words=seeds, sources=["wordnet"],
                       prior_cut=[0.5], relevance_cut=[0.0, 0.5], min_relevance=[0.3], learn_weights=[True],
                       epochs=3, support_size=80)
    job = SearchJob(get_searcher("kpt")(config), "kpt-fortunes", f"sqlite:///{tmp_path / 'k.db'}", n_trials=2,
                    seed=13, progress=False,
                    task_info={"name": "fortunes", "label_names": task.label_names, "splits": {}},
                    model_info={"name": "gemma-3-270m", "kind": "causal"})
    ctx = SearchContext(task, real_harness, 13)
    study = run_search(job, ctx)
    searched = time.perf_counter() - start
    result = finish_search(study, job, ctx, out=tmp_path / "best.json")
    doc = json.loads((tmp_path / "best.json").read_text())
    majority = np.bincount(task.test.labels, minlength=10).max() / len(task.test)
    test = result.test
    assert test is not None and test.n == len(task.test) == 877
    assert doc["metrics"]["test"]["accuracy"] == pytest.approx(test.accuracy)
    kept = doc["trial_artifacts"]["kept_words"]
    assert list(kept) == task.label_names and all(entries for entries in kept.values())
    print(f"fortunes KPT: dev {doc['metrics']['dev']['accuracy']:.4f}, test accuracy {test.accuracy:.4f} macro-F1 "
          f"{test.macro_f1:.4f} (majority {majority:.4f}); params {doc['params']}; search {searched:.0f}s, total "
          f"{time.perf_counter() - start:.0f}s; words {doc['trial_artifacts']['kept_counts']}")
    assert test.accuracy > majority + 0.05, (test.accuracy, majority)
    assert test.macro_f1 > 0.2
