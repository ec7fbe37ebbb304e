"""What scoring returns: raw label-word scores (:class:`ScoreOutput`) and a prompt's evaluation on a
split (:class:`EvalResult`, with accuracy and macro-F1 from :func:`classification_metrics`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import AutoPromptError


@dataclass
class ScoreOutput:
    """Raw scores of items (examples, possibly across several templates).

    Attributes:
        word_logprobs: ``(N, W)`` log-probability of each label word (summed over its tokens).
            When every word is one token read at one position, these are normalised over the
            label words only (the class decision is the same; the full vocabulary is skipped).
        hidden: ``(N, d)`` the input of the output layer at the mask (None if not asked for).
    """

    word_logprobs: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class EvalResult:
    """Accuracy, macro-F1 and per-example scores of one prompt on one split."""

    accuracy: float
    macro_f1: float
    predictions: np.ndarray
    labels: np.ndarray
    class_logprobs: np.ndarray
    word_logprobs: np.ndarray
    prior: np.ndarray | None = None  # content-free class log-probs (C,); (N, C) when demonstrations differ
    seconds: float = 0.0
    template: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_class_logprobs(
        cls,
        class_logprobs: torch.Tensor | np.ndarray,
        labels: np.ndarray,
        *,
        word_logprobs: torch.Tensor | np.ndarray,
        num_classes: int | None = None,
        prior: torch.Tensor | np.ndarray | None = None,
        seconds: float = 0.0,
        template: str = "",
        extra: dict[str, Any] | None = None,
    ) -> EvalResult:
        """The result of class log-probs ``(N, C)``: argmax predictions, accuracy and macro-F1 over
        ``num_classes`` (default ``C``); tensors are stored as NumPy arrays on the CPU."""
        # The argmax is taken by the library the scores come in (tie and NaN order stay as they were).
        if isinstance(class_logprobs, torch.Tensor):
            predictions = class_logprobs.argmax(dim=1).cpu().numpy()
            class_logprobs = class_logprobs.cpu().numpy()
        else:
            predictions = class_logprobs.argmax(axis=1)
        acc, f1 = classification_metrics(
            labels, predictions, class_logprobs.shape[1] if num_classes is None else num_classes
        )
        return cls(
            accuracy=acc,
            macro_f1=f1,
            predictions=predictions,
            labels=labels,
            class_logprobs=class_logprobs,
            word_logprobs=_numpy(word_logprobs),
            prior=None if prior is None else _numpy(prior),
            seconds=seconds,
            template=template,
            extra={} if extra is None else extra,
        )

    @property
    def n(self) -> int:
        return int(len(self.labels))

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n}

    def prediction_rate(self) -> np.ndarray:
        """Fraction of examples predicted as each class."""
        counts = np.bincount(self.predictions, minlength=self.class_logprobs.shape[1])
        return counts / max(1, len(self.predictions))

    def summary(self) -> str:
        return f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  (n={self.n}, {self.seconds:.1f}s)"


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else values


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 over the labelled examples (label >= 0), by scikit-learn.

    Macro-F1 averages over every class that occurs in the labels or the predictions: a gold class
    that is never predicted counts with F1 0 (so always answering the majority class scores low),
    and so does a predicted class absent from the labels; a class in neither (e.g. a test subsample
    without it) has no defined F1 and is left out rather than counted as 0
    (``f1_score(average="macro", labels=union(y, p), zero_division=0)``).
    """
    from sklearn.metrics import accuracy_score, f1_score

    keep = labels >= 0
    if not keep.any():
        return float("nan"), float("nan")
    y, p = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    if (p < 0).any() or (p >= num_classes).any():
        raise AutoPromptError(f"predictions must be class indices 0..{num_classes - 1}")
    acc = float(accuracy_score(y, p))
    f1 = float(f1_score(y, p, labels=np.union1d(y, p), average="macro", zero_division=0))
    return acc, f1
