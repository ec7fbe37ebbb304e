"""A scikit-learn estimator over the prompt search: ``PromptClassifier``.

    from autoprompt_kit.sklearn import PromptClassifier
    from sklearn.model_selection import cross_val_score

    clf = PromptClassifier(method="select", shots=16, budget="2m")
    cross_val_score(clf, texts, labels, cv=3)                # a search per fold
    clf.fit(texts, labels).predict(["a gripping, funny film"])
    clf.prompt_.save_pretrained("my.prompt")                 # the found prompt, as after any search

``fit(X, y)`` is :func:`autoprompt_kit.find_prompt` on the task ``task_from_examples(X, y)``: the
file rules carve the dev split the search selects on (``shots=K``: K per class for train and dev;
otherwise 90% / 10% stratified), the study lives in a temporary SQLite file, and the fitted
estimator holds the found :class:`~autoprompt_kit.Prompt` (``prompt_``). X is a sequence of texts,
or of ``(text_a, text_b)`` pairs (an ``(n, 2)`` array); y any class labels (``classes_`` is
``numpy.unique(y)``, the columns of ``predict_proba``).

The model: ``model=None`` is the embedded Gemma 3 270M, a string any name :class:`Harness`
takes, or a :class:`Harness` object (shared by ``clone``: one model in memory for every fold).
A pickled estimator holds no model weights: the prompt reloads its model from the pinned
reference (sha256 / revision) on first use, and a harness passed as ``model`` pickles as its
model's name.

Estimator checks (``sklearn.utils.estimator_checks``; ``tests/test_sklearn.py`` runs them):

* ``check_estimator`` runs only ``check_estimator_cloneable`` (passes): the estimator declares
  ``input_tags.string`` without ``two_d_array`` (it reads texts, not a feature matrix), and
  scikit-learn skips every other check for such an estimator with a SkipTestWarning.
* Run one by one, these apply and pass: ``check_estimator_tags_renamed``,
  ``check_valid_tag_types``, ``check_estimator_repr``, ``check_no_attributes_set_in_init``,
  ``check_parameters_default_constructible``, ``check_get_params_invariance``,
  ``check_set_params``, ``check_do_not_raise_errors_in_init_or_set_params``,
  ``check_mixin_order``, ``check_estimators_unfitted`` (NotFittedError before any model loads),
  ``check_classifiers_one_label``, ``check_classifiers_regression_target``,
  ``check_supervised_y_no_nan`` (y is checked first, with scikit-learn's messages),
  ``check_complex_data``, ``check_estimator_sparse_tag``, ``check_estimator_sparse_matrix``
  (sparse input is refused with a TypeError naming it).
* Pass vacuously (what they check is absent): ``check_n_features_in_after_fitting`` (no
  ``n_features_in_`` for text), ``check_estimators_partial_fit_n_features`` (no ``partial_fit``),
  ``check_non_transformer_estimators_n_iter`` (no ``max_iter``), ``check_decision_proba_consistency``
  (no ``decision_function``), ``check_classifiers_one_label_sample_weights`` (no ``sample_weight``).
* Do not apply: the checks that fit on numeric ``make_blobs`` / random arrays (dtypes, NaN/inf,
  ``dtype=object`` floats, empty and zero-feature arrays, memmaps, F-contiguous arrays, 1-D
  sparse arrays, ``_NotAnArray``, 2-D y, overwrite-parameters, fit-returns-self, pickle,
  pipeline consistency, classes, train accuracy): fit refuses numbers with a ValueError ("reads
  texts"). Their text counterparts (fit returns self, predict shape and labels, probability rows,
  score, pickle, clone, Pipeline, cross_val_score) are tested on the tiny models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

if TYPE_CHECKING:
    from .artifact import Prompt
    from .harness import Harness


class PromptClassifier(ClassifierMixin, BaseEstimator):
    """Find a prompt for ``(X, y)`` on ``fit``; classify texts with it.

    Args:
        method: a registered search method (``auto``, ``select``, ``lmbff``, …).
        budget: time for the search's trials (``"2m"``, seconds; default: the method's).
        model: ``None`` (the embedded default), a model name / folder / ``.gguf`` file, or a
            :class:`Harness`.
        shots: K examples per class for train and dev (``None``: all of X, 10% of it as dev).
        space: the search space (a dict, a YAML path or a config); ``None`` builds it from the
            class names.
        trials: finished trials the study should hold (staged methods size their stages to
            ``budget`` instead).
        selection: ``"dev"`` or ``"cv"`` (default: the method's).
        folds: folds of ``selection="cv"``.
        seed: few-shot sampling and search seed.
        label_names: the class names the prompt reads (label words are built from them): a
            list in ``classes_`` order or a ``{class: name}`` dict; default ``str(class)``.
        batch_size: rows per forward pass when the estimator loads its model.
        progress: print the search's trial lines and progress bars.

    Attributes:
        classes_: the classes seen in ``fit`` (sorted).
        prompt_: the found :class:`~autoprompt_kit.Prompt`.
        search_: the search's record (the best.json document).
    """

    def __init__(
        self,
        method: str = "auto",
        *,
        budget: str | float | None = None,
        model: Any = None,
        shots: int | None = None,
        space: Any = None,
        trials: int = 20,
        selection: str | None = None,
        folds: int = 4,
        seed: int = 13,
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> None:
        self.method = method
        self.budget = budget
        self.model = model
        self.shots = shots
        self.space = space
        self.trials = trials
        self.selection = selection
        self.folds = folds
        self.seed = seed
        self.label_names = label_names
        self.batch_size = batch_size
        self.progress = progress

    # -- scikit-learn protocol -----------------------------------------------------------------
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # Texts in, not a numeric matrix: check_estimator skips the checks built on make_blobs.
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    def fit(self, X: Any, y: Any) -> PromptClassifier:
        """Search a prompt on ``(X, y)``; returns the fitted estimator."""
        from . import find_prompt
        from .data import Split, Task, task_from_examples

        # y first: its errors (one class, a continuous target) are the ones scikit-learn users know.
        y = np.asarray(y)
        check_classification_targets(y)
        classes, indices = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"PromptClassifier needs samples of at least 2 classes in y; got {len(classes)} class")
        texts, pairs = _texts(X)
        if not texts:
            raise ValueError("Found array with 0 sample(s): fit needs texts")
        if y.ndim != 1 or len(y) != len(texts):
            raise ValueError(f"y must be 1-D with one label per text ({len(texts)}), got shape {y.shape}")
        names = self._class_names(classes)
        task = task_from_examples(
            texts,
            indices,
            label_names=names,
            text_b=pairs,
            name="fit",
            **({"shots": self.shots, "seed": self.seed} if self.shots else {}),
        )
        if not self.shots:
            # The file rules cut a held-out test split too; a fit has no use for it, so it trains.
            task = Task(
                task.name,
                task.label_names,
                {"train": Split([*task.train, *task.test], name="train"), "dev": task.dev},
                description=task.description,
            )
        harness = self._harness()
        with tempfile.TemporaryDirectory(prefix="autoprompt-fit-") as tmp:
            # A private study per fit: cross-validation folds and refits never resume each other.
            result = find_prompt(
                self.method,
                task,
                self.space,
                harness=harness,
                trials=self.trials,
                storage=f"sqlite:///{tmp}/study.db",
                study="fit",
                seed=self.seed,
                test_split=None,
                budget=self.budget,
                selection=self.selection,
                folds=self.folds,
                progress=self.progress,
                trial_dir=tmp,
            )
        self.prompt_: Prompt = result.prompt
        self.prompt_._harness = harness
        self.classes_ = classes
        self.search_ = result.document
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The class of each text (from ``classes_``)."""
        indices = self._predictions(X).indices  # first: an unfitted estimator raises NotFittedError
        return self.classes_[indices]

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in ``classes_`` order."""
        return self._predictions(X).probabilities

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if _is_harness(state.get("model")):
            # No weights in the pickle: the name the harness was loaded from (the prompt's pin checks it).
            state["model"] = state["prompt_"].model.get("name") if "prompt_" in state else state["model"].model_name
        return state  # prompt_ pickles without its harness (Prompt.__getstate__)

    # -- helpers -------------------------------------------------------------------------------
    def _predictions(self, X: Any) -> Any:
        check_is_fitted(self, "prompt_")
        texts, pairs = _texts(X)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        if not inputs:
            raise ValueError("X has no texts to predict")
        return self.prompt_.predict(
            inputs,
            self.prompt_.harness(batch_size=self.batch_size)
            if self.prompt_._harness is None
            else self.prompt_._harness,
        )

    def _harness(self) -> Harness:
        from .harness import Harness

        if _is_harness(self.model):
            return self.model
        return Harness(self.model, batch_size=self.batch_size, progress=self.progress)

    def _class_names(self, classes: np.ndarray) -> list[str]:
        if self.label_names is None:
            names = [str(c) for c in classes]
        elif isinstance(self.label_names, Mapping):
            missing = [c for c in classes.tolist() if c not in self.label_names]
            if missing:
                raise ValueError(f"label_names has no name for the classes {missing[:5]}")
            names = [str(self.label_names[c]) for c in classes.tolist()]
        else:
            names = [str(n) for n in self.label_names]
            if len(names) != len(classes):
                raise ValueError(f"label_names has {len(names)} names for {len(classes)} classes {classes.tolist()}")
        if len(set(names)) != len(names):
            raise ValueError(f"the class names must be distinct, got {names}")
        return names


def _is_harness(value: Any) -> bool:
    from .harness import Harness

    return isinstance(value, Harness)


def _texts(X: Any) -> tuple[list[str], list[str] | None]:
    """``(texts, second texts or None)`` from a sequence of texts, of pairs, or an (n, 1|2) array."""
    import scipy.sparse

    if isinstance(X, str):
        raise ValueError("X must be a sequence of texts, not a single string")
    if scipy.sparse.issparse(X):
        raise TypeError("PromptClassifier reads texts; sparse input (a feature matrix) is not supported")
    if hasattr(X, "to_numpy"):  # pandas Series / DataFrame
        X = X.to_numpy()
    elif hasattr(X, "__array__") and not isinstance(X, (list, tuple)):
        X = np.asarray(X)
    rows = list(X)
    if rows and all(isinstance(r, (tuple, list, np.ndarray)) for r in rows):
        widths = {len(r) for r in rows}
        if widths == {1}:
            rows = [r[0] for r in rows]
        elif widths == {2}:
            first, second = [r[0] for r in rows], [r[1] for r in rows]
            _check_strings(first + second)
            return [str(t) for t in first], [str(t) for t in second]
        else:
            raise ValueError(f"X rows must be texts or (text_a, text_b) pairs, got rows of {sorted(widths)} values")
    _check_strings(rows)
    return [str(t) for t in rows], None


def _check_strings(values: list[Any]) -> None:
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        # A numeric X is a feature matrix, not text: say so in sklearn's words (a ValueError).
        raise ValueError(f"PromptClassifier reads texts; X holds a {type(bad).__name__} ({bad!r:.40})")


__all__ = ["PromptClassifier"]
