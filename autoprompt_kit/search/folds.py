"""Cross-validated selection: k stratified folds over every labelled example (train + dev).

Sixteen dev examples per class rank prompts badly (Perez, Kiela & Cho 2021, "True Few-Shot
Learning with Language Models"): with ``selection="cv"`` a trial runs its method once per fold —
learning only from the other folds, scored on the held-out one — and its value is the accuracy of
the pooled out-of-fold predictions, reported with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AutoPromptError

if TYPE_CHECKING:
    from ..data import Split, Task
    from ..harness import EvalResult

SELECTIONS = ("dev", "cv")


@dataclass(frozen=True)
class Fold:
    """One fold of the labelled pool: ``train`` indexes what a candidate may learn from,
    ``held_out`` what it is scored on (positions in ``pool``)."""

    number: int
    k: int
    pool: Split
    train: np.ndarray
    held_out: np.ndarray


def labelled_pool(task: Task) -> Split:
    """Every labelled example a search may use: the train split, then the dev split."""
    from ..data import Split

    return Split(list(task.train) + list(task.dev), name="pool", label_names=task.label_names)


def make_folds(task: Task, k: int, seed: int) -> list[Fold]:
    """``k`` stratified folds of :func:`labelled_pool` (each class spread evenly, order seeded)."""
    pool = labelled_pool(task)
    labels = pool.labels
    counts = np.bincount(labels, minlength=len(task.label_names))
    if k < 2:
        raise AutoPromptError(f"--folds must be at least 2, got {k}")
    if len(pool) < k:
        raise AutoPromptError(
            f"cross-validation with {k} folds needs at least {k} labelled examples (train + dev "
            f"hold {len(pool)}); lower --folds"
        )
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(pool), dtype=int)
    offset = 0
    for c in range(len(counts)):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        # Continue the round-robin where the previous class stopped, so fold sizes stay even.
        assignment[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    folds = []
    for i in range(k):
        held = np.flatnonzero(assignment == i)
        folds.append(Fold(i, k, pool, np.flatnonzero(assignment != i), held))
    return folds


def fold_task(task: Task, fold: Fold) -> Task:
    """The task a method sees in one fold: ``train`` = the other folds, ``dev`` = the held-out one."""
    from ..data import Task

    splits = dict(task.splits)
    splits["train"] = fold.pool[fold.train]
    splits["dev"] = fold.pool[fold.held_out]
    splits["train"].name, splits["dev"].name = "train", "dev"
    return Task(task.name, list(task.label_names), splits, metric=task.metric, description=task.description)


def refit_task(task: Task) -> Task:
    """The task a cross-validated winner is refit on: every labelled example is train (and dev)."""
    from ..data import Task

    pool = labelled_pool(task)
    splits = {**task.splits, "train": pool, "dev": pool}
    return Task(task.name, list(task.label_names), splits, metric=task.metric, description=task.description)


def pooled_result(results: Sequence[EvalResult], folds: Sequence[Fold], num_classes: int) -> EvalResult:
    """The out-of-fold result over the whole pool, in pool order (each example scored once, by a
    candidate that did not learn from it)."""
    from ..harness import EvalResult

    n = len(folds[0].pool)
    done = [f for f, _ in zip(folds, results)]
    class_lp = np.full((n, num_classes), np.nan)
    labels = np.full(n, -1)
    for fold, result in zip(done, results):
        class_lp[fold.held_out] = result.class_logprobs
        labels[fold.held_out] = result.labels
    seen = labels >= 0
    return EvalResult.from_class_logprobs(
        class_lp[seen], labels[seen], word_logprobs=np.zeros((int(seen.sum()), 0)), num_classes=num_classes
    )


def standard_error(result: EvalResult, fold_scores: Sequence[float], metric: str) -> float:
    """Standard error of the estimate: binomial over the pooled examples for accuracy; across
    folds for macro-F1 (no per-example form)."""
    if metric == "accuracy":
        p = result.accuracy
        return math.sqrt(max(p * (1 - p), 0.0) / max(result.n, 1))
    scores = np.asarray(fold_scores, dtype=float)
    return float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else float("nan")


def gold_logprob(result: EvalResult) -> float:
    """Mean log-probability of the gold class: the tie-breaker between equally accurate prompts."""
    lp = np.asarray(result.class_logprobs, dtype=float)
    if not len(lp) or not lp.shape[1]:
        return float("-inf")
    shifted = lp - lp.max(axis=1, keepdims=True)
    norm = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    value = float(norm[np.arange(len(lp)), np.asarray(result.labels)].mean())
    return value if math.isfinite(value) else float("-inf")


def selection_bias(fold_scores: Sequence[Sequence[float]], winner: int) -> float:
    """How much choosing the best of many candidates on the same folds flatters the winner's score
    (Tibshirani & Tibshirani 2009, "A bias correction for the minimum error rate in
    cross-validation"): the mean over folds of how far the winner falls short of the best candidate
    *of that fold*. Subtract it from the winner's cross-validated score for an estimate of how the
    chosen prompt does on new data. ``fold_scores[i]`` are candidate ``i``'s per-fold scores."""
    scores = np.asarray([list(f) for f in fold_scores], dtype=float)
    if scores.ndim != 2 or len(scores) < 2:
        return 0.0
    return float(np.mean(scores.max(axis=0) - scores[winner]))
