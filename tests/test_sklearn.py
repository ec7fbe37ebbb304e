"""PromptClassifier: a prompt search as a scikit-learn estimator, on the tiny GPT-2 (never Gemma).

fit / predict / predict_proba / score, clone (the harness is shared), cross_val_score, Pipeline,
pickling without weights, and the ``sklearn.utils.estimator_checks`` that apply to a text
classifier (the ones built on numeric ``make_blobs`` data do not: see the module docstring).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as ec

from autoprompt_kit import Harness
from autoprompt_kit.sklearn import PromptClassifier

SPACE = {"templates": ["{text_a} It was {mask}.", "{text_a} All in all, {mask}."],
         "label_words": [{"negative": ["bad"], "positive": ["good"]}], "calibration": ["none"]}
GOOD = ["the movie was great", "a wonderful film", "brilliant , moving and funny", "great fun to watch",
        "i loved the ending", "a good movie with a fine cast"]
BAD = ["the film was terrible", "a bad film with awful dialogue", "what a waste of time", "the plot was boring",
       "truly awful", "dull and bad"]


def _data(n: int = 60) -> tuple[list[str], np.ndarray]:
    texts = [(GOOD if i % 2 else BAD)[(i // 2) % 6] + f" , part {i}" for i in range(n)]
    return texts, np.array(["positive" if i % 2 else "negative" for i in range(n)])


@pytest.fixture(scope="module")
def harness(tiny_model_dir):
    return Harness(tiny_model_dir, progress=False)


def _clf(harness: Harness, **kwargs) -> PromptClassifier:
    return PromptClassifier(method="select", model=harness, space=SPACE, shots=4, trials=2, **kwargs)


def test_fit_predict_proba_score(harness, tiny_model_dir):
    X, y = _data()
    clf = _clf(harness)
    assert clf.fit(X, y) is clf
    assert clf.classes_.tolist() == ["negative", "positive"]
    pred = clf.predict(X[:10])
    assert pred.shape == (10,) and set(pred) <= set(clf.classes_)
    proba = clf.predict_proba(X[:10])
    assert proba.shape == (10, 2) and np.allclose(proba.sum(1), 1)
    assert (clf.classes_[proba.argmax(1)] == pred).all()
    assert clf.score(X[:10], y[:10]) == pytest.approx((pred == y[:10]).mean())
    assert clf.prompt_.model["sha256"] and clf.search_["method"] == "select"
    assert clf.prompt_.label_names == ["negative", "positive"]
    # Pairs and int classes named through label_names.
    ints = np.where(y == "positive", 7, 3)
    named = _clf(harness, label_names={3: "negative", 7: "positive"}).fit([(t, "ok") for t in X], ints)
    assert set(named.predict([("great fun", "ok")])) <= {3, 7}
    with pytest.raises(ValueError, match="no name for the classes"):
        _clf(harness, label_names={3: "negative"}).fit(X, ints)


def test_params_clone_and_pickle_without_weights(harness, tiny_model_dir):
    clf = _clf(harness, budget="1m")
    params = clf.get_params()
    assert params["method"] == "select" and params["shots"] == 4 and params["model"] is harness
    assert clf.set_params(shots=6) is clf and clf.shots == 6
    twin = clone(clf)
    assert twin.model is harness  # shared, not a deep copy of the weights
    assert twin.get_params()["space"] == SPACE and not hasattr(twin, "prompt_")

    X, y = _data()
    clf.fit(X, y)
    want = clf.predict_proba(X[:6])
    blob = pickle.dumps(clf)
    weights = sum(p.numel() * 4 for p in harness.model.parameters())
    assert len(blob) < weights / 4  # the prompt and its record, not the model
    back = pickle.loads(blob)
    assert back.model == clf.prompt_.model["name"] == str(Path(tiny_model_dir).resolve())  # a name, no weights
    assert back.prompt_._harness is None
    np.testing.assert_allclose(back.predict_proba(X[:6]), want, atol=1e-6)  # reloaded from the pinned folder


def test_cross_val_score_and_pipeline(harness):
    X, y = _data()
    scores = cross_val_score(_clf(harness), X, y, cv=3)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    pipe = Pipeline([("lower", FunctionTransformer(lambda texts: [t.lower() for t in texts])), ("prompt", _clf(harness))])
    pipe.set_params(prompt__trials=1)
    assert pipe.fit(X, y).predict(["A GREAT FILM"]).tolist()[0] in ("negative", "positive")
    assert 0 <= pipe.score(X[:12], y[:12]) <= 1


def test_the_default_method_auto_fits_on_a_budget(harness):
    X, y = _data(48)
    clf = PromptClassifier(model=harness, shots=4, budget="5s")  # method="auto", selection by cv
    assert clf.get_params()["method"] == "auto"
    clf.fit(X, y)
    assert clf.search_["method"] == "auto" and "cv" in clf.search_["metrics"]
    assert clf.predict(X[:4]).shape == (4,)


#: Estimator checks that apply to a text classifier, and pass.
APPLICABLE = ["check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types",
              "check_estimator_repr", "check_no_attributes_set_in_init", "check_parameters_default_constructible",
              "check_get_params_invariance", "check_set_params", "check_do_not_raise_errors_in_init_or_set_params",
              "check_mixin_order", "check_estimators_unfitted", "check_classifiers_one_label",
              "check_classifiers_regression_target", "check_supervised_y_no_nan", "check_complex_data",
              "check_estimator_sparse_tag", "check_estimator_sparse_matrix"]
#: Checks that fit on numeric make_blobs / random arrays: a prompt reads text, so fit refuses them
#: (ValueError "reads texts"). check_estimator itself skips every check for an estimator without the
#: two_d_array input tag; the text versions of these are the tests above.
NUMERIC = ["check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
           "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_positive_only_tag_during_fit",
           "check_estimators_dtypes", "check_dtype_object", "check_estimators_empty_data_messages",
           "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimator_sparse_array",
           "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_classifier_data_not_an_array",
           "check_classifiers_classes", "check_classifiers_train", "check_supervised_y_2d"]


def test_estimator_checks_that_apply_to_a_text_classifier_pass():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in APPLICABLE:
            getattr(ec, name)("PromptClassifier", PromptClassifier(method="select"))
        results = ec.check_estimator(PromptClassifier(method="select"), on_fail=None)
    # check_estimator runs only the clone check: the input tags (strings, no 2-D array) skip the rest.
    assert [(r["check_name"], r["status"]) for r in results] == [("check_estimator_cloneable", "passed")]
    for name in NUMERIC:
        with pytest.raises(Exception):
            getattr(ec, name)("PromptClassifier", PromptClassifier(method="select"))


@pytest.mark.slow
def test_cross_val_score_on_the_real_model(real_harness):
    from autoprompt_kit import load_task

    train = load_task("mr").train[:90]
    texts, labels = [ex.text_a for ex in train], np.array(["negative", "positive"])[train.labels]
    clf = PromptClassifier(method="select", model=real_harness, shots=8, trials=4,
                           space={**SPACE, "label_words": [{"negative": ["terrible"], "positive": ["great"]}],
                                  "calibration": ["content_free"]})
    scores = cross_val_score(clf, texts, labels, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.55  # Gemma 3 270M reads MR above chance
