"""Verbalizers: label → label words, and how word scores become class scores.

Pipeline (OpenPrompt's vocabulary): the harness *projects* the model's output onto each label
word (log-probability of the whole word, summed over its tokens), the verbalizer *aggregates*
the words of each class into one class score, *normalises* over classes and optionally
*calibrates* (contextual calibration: divide by the class probabilities the model gives to
content-free inputs such as ``"N/A"``; Zhao et al., 2021). ``contextual`` calibration (KPT, Hu et
al., 2022) instead divides each *word's* probability by its stored prior (``word_prior``: the mean
mask distribution over unlabelled support examples) before aggregating.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AutoPromptError

AGGREGATIONS = ("mean", "max", "sum", "weighted")
CALIBRATIONS = ("none", "content_free", "contextual")
#: The calibrations a verbalizer of plain label words takes (``contextual`` needs word priors).
PLAIN_CALIBRATIONS = tuple(c for c in CALIBRATIONS if c != "contextual")
LOSSES = ("likelihood", "cross_entropy")
DEFAULT_CONTENT_FREE = ("N/A", "", "[MASK]")


@dataclass(frozen=True)
class Verbalizer:
    """Label words per class.

    Args:
        label_words: for each class (in the task's label order), its label words. A word may be
            several tokens; it is scored as a whole (sum of its tokens' log-probabilities).
        labels: class names, in order; checked against the task's label names.
        weights: optional per-word weights, same shape as ``label_words`` (used by ``weighted``).
        aggregation: how a class's words combine — ``mean`` (log of the mean word probability),
            ``max``, ``sum`` (log of the summed probability, AutoPrompt's choice) or ``weighted``
            (log of the weighted mean; weights are normalised within each class).
        calibration: ``none``, ``content_free`` or ``contextual`` (needs ``word_prior``).
        content_free_inputs: the inputs used to estimate the calibration prior.
        word_prior: per-word prior log-probabilities, same shape as ``label_words``; with
            ``contextual`` calibration they are subtracted from the word log-probabilities.
    """

    label_words: tuple[tuple[str, ...], ...]
    labels: tuple[str, ...] = ()
    weights: tuple[tuple[float, ...], ...] | None = None
    aggregation: str = "mean"
    calibration: str = "none"
    content_free_inputs: tuple[str, ...] = DEFAULT_CONTENT_FREE
    word_prior: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        for i, ws in enumerate(self.label_words):
            name = self.labels[i] if i < len(self.labels) else str(i)
            items = (ws,) if isinstance(ws, str) else ws
            if isinstance(ws, Mapping) or not isinstance(items, (tuple, list)):
                raise AutoPromptError(f"verbalizer: class {name!r} needs a word or a list of words, got {ws!r:.60}")
            bad = [w for w in items if not isinstance(w, str)]
            if bad:
                raise AutoPromptError(
                    f"verbalizer: class {name!r} has a label word that is not text: {bad[0]!r} "
                    "(quote it in YAML, e.g. '5')"
                )
        words = tuple(tuple(ws) if not isinstance(ws, str) else (ws,) for ws in self.label_words)
        object.__setattr__(self, "label_words", words)
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "content_free_inputs", tuple(self.content_free_inputs))
        if len(words) < 2:
            raise AutoPromptError(f"verbalizer needs label words for at least two classes, got {len(words)}")
        for i, ws in enumerate(words):
            name = self.labels[i] if i < len(self.labels) else str(i)
            if not ws:
                raise AutoPromptError(f"verbalizer: class {name!r} has no label words")
            if any(not w.strip() for w in ws):
                raise AutoPromptError(f"verbalizer: class {name!r} has an empty label word")
        if len(set(self.labels)) != len(self.labels):
            raise AutoPromptError(f"verbalizer: class names repeat: {list(self.labels)}")
        if self.labels and len(self.labels) != len(words):
            raise AutoPromptError(
                f"verbalizer has {len(words)} classes of label words but {len(self.labels)} label names"
            )
        if self.aggregation not in AGGREGATIONS:
            raise AutoPromptError(f"unknown aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.calibration not in CALIBRATIONS:
            raise AutoPromptError(f"unknown calibration {self.calibration!r}; choose one of {CALIBRATIONS}")
        if self.weights is not None:
            weights = tuple(tuple(float(x) for x in ws) for ws in self.weights)
            if [len(w) for w in weights] != [len(w) for w in words]:
                raise AutoPromptError("verbalizer weights must have the same shape as label_words")
            object.__setattr__(self, "weights", weights)
        elif self.aggregation == "weighted":
            raise AutoPromptError("aggregation 'weighted' needs weights")
        if self.word_prior is not None:
            prior = tuple(tuple(float(x) for x in ws) for ws in self.word_prior)
            if [len(w) for w in prior] != [len(w) for w in words]:
                raise AutoPromptError("verbalizer word_prior must have the same shape as label_words")
            object.__setattr__(self, "word_prior", prior)
        elif self.calibration == "contextual":
            raise AutoPromptError("calibration 'contextual' needs word_prior (per-word prior log-probabilities)")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_words(
        cls, words: Mapping[str, Sequence[str] | str] | Sequence[Sequence[str] | str], **kwargs: Any
    ) -> Verbalizer:
        """Build from ``{"negative": ["terrible"], "positive": ["great"]}`` or ``[["terrible"], ["great"]]``."""
        if isinstance(words, Mapping):
            labels = tuple(words.keys())
            bad = [k for k in labels if not isinstance(k, str)]
            if bad:
                raise AutoPromptError(f"verbalizer: class name {bad[0]!r} is not text (quote it in YAML)")
            values: list[Any] = [[v] if isinstance(v, str) else v for v in words.values()]
            return cls(
                tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in values), labels=labels, **kwargs
            ).check_distinct()
        if isinstance(words, str):
            raise AutoPromptError(f"label words must map each class to its words, got the text {words!r:.60}")
        return cls(tuple((w,) if isinstance(w, str) else tuple(w) for w in words), **kwargs).check_distinct()

    def check_distinct(self) -> Verbalizer:
        """Raise when one word is given for two classes (a user's verbalizer must be unambiguous)."""
        owner: dict[str, int] = {}
        for i, ws in enumerate(self.label_words):
            stripped = [w.strip() for w in ws]
            twice = next((w for k, w in enumerate(stripped) if w in stripped[:k]), None)
            if twice is not None:  # it would count twice in the class's mean/sum: a typo, not a choice
                name = self.labels[i] if i < len(self.labels) else str(i)
                raise AutoPromptError(f"verbalizer: label word {twice!r} is given twice for class {name!r}")
            for w in ws:
                j = owner.setdefault(w.strip(), i)
                if j != i:
                    names = [self.labels[k] if k < len(self.labels) else str(k) for k in (j, i)]
                    raise AutoPromptError(
                        f"verbalizer: label word {w!r} is given for two classes, {names[0]!r} and "
                        f"{names[1]!r}; each word must point to one class"
                    )
        return self

    def replace(self, **changes: Any) -> Verbalizer:
        data = self.to_dict()
        data.update(changes)
        return Verbalizer.from_dict(data)

    # -- views --------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.label_words)

    @property
    def flat_words(self) -> list[str]:
        """All label words, class by class."""
        return [w for ws in self.label_words for w in ws]

    @property
    def word_class(self) -> list[int]:
        """Class index of each word in :attr:`flat_words`."""
        return [c for c, ws in enumerate(self.label_words) for _ in ws]

    def check_labels(self, label_names: Sequence[str]) -> None:
        """Raise if the verbalizer does not fit the task's classes."""
        if len(label_names) != self.num_classes:
            raise AutoPromptError(
                f"verbalizer has {self.num_classes} classes but the task has {len(label_names)}: {list(label_names)}"
            )
        if self.labels and list(self.labels) != list(label_names):
            raise AutoPromptError(
                f"verbalizer labels {list(self.labels)} do not match the task's labels {list(label_names)}"
            )

    # -- scoring ------------------------------------------------------------------------------
    def aggregate(self, word_logprobs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Combine word log-probabilities ``(N, W)`` into class scores ``(N, C)`` (not normalised).

        ``weights`` (``(W,)`` logits, softmaxed within each class) overrides the stored weights —
        used when the weights are being learned.
        """
        if self.calibration == "contextual" and self.word_prior is not None:
            # KPT's contextualised calibration: p(w | x) / p(w); a per-example constant (the
            # normalisation over label words) cancels when classes are normalised.
            prior = torch.tensor(
                [p for ps in self.word_prior for p in ps], dtype=word_logprobs.dtype, device=word_logprobs.device
            )
            word_logprobs = word_logprobs - prior
        out = []
        start = 0
        for c, ws in enumerate(self.label_words):
            block = word_logprobs[:, start : start + len(ws)]
            if weights is not None or self.aggregation == "weighted":
                if weights is not None:
                    logw = torch.log_softmax(weights[start : start + len(ws)], dim=0)
                else:
                    w = torch.tensor(self.weights[c], dtype=block.dtype, device=block.device)  # type: ignore[index]
                    logw = torch.log(w.clamp_min(1e-12) / w.clamp_min(1e-12).sum())
                out.append(torch.logsumexp(block + logw, dim=1))
            elif self.aggregation == "mean":
                out.append(torch.logsumexp(block, dim=1) - math.log(len(ws)))
            elif self.aggregation == "sum":
                out.append(torch.logsumexp(block, dim=1))
            else:  # max
                out.append(block.max(dim=1).values)
            start += len(ws)
        return torch.stack(out, dim=1)

    def class_logprobs(
        self, word_logprobs: torch.Tensor, prior: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class log-probabilities ``(N, C)``, normalised over classes, calibrated by ``prior`` if given.

        ``prior`` is the class log-probability vector ``(C,)`` of content-free inputs.
        """
        scores = torch.log_softmax(self.aggregate(word_logprobs, weights), dim=1)
        if prior is not None:
            scores = torch.log_softmax(scores - prior, dim=1)
        return scores

    def gold_logprob(self, word_logprobs: torch.Tensor, labels: torch.Tensor, loss: str = "likelihood") -> torch.Tensor:
        """Per-example score of the gold class: ``likelihood`` = the aggregated class score
        (AutoPrompt's log Σ p(w)); ``cross_entropy`` = normalised over classes first."""
        if loss not in LOSSES:
            raise AutoPromptError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        scores = self.aggregate(word_logprobs.float())
        if loss == "cross_entropy":
            scores = torch.log_softmax(scores, dim=1)
        return scores.gather(1, labels.to(scores.device)[:, None]).squeeze(1)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label_words": {
                (self.labels[i] if self.labels else str(i)): list(ws) for i, ws in enumerate(self.label_words)
            },
            "aggregation": self.aggregation,
            "calibration": self.calibration,
        }
        if self.weights is not None:
            out["weights"] = [list(w) for w in self.weights]
        if self.calibration == "content_free":
            out["content_free_inputs"] = list(self.content_free_inputs)
        if self.word_prior is not None:
            out["word_prior"] = [list(p) for p in self.word_prior]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verbalizer:
        if not isinstance(data, Mapping) or "label_words" not in data:
            raise AutoPromptError("verbalizer JSON needs a 'label_words' key")
        words = data["label_words"]
        kwargs = {k: data[k] for k in ("aggregation", "calibration") if k in data}
        for key in ("weights", "word_prior"):
            if data.get(key) is not None:
                kwargs[key] = _number_rows(data[key], key)
        if "content_free_inputs" in data:
            inputs = data["content_free_inputs"]
            if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, str) for x in inputs):
                raise AutoPromptError(f"verbalizer content_free_inputs must be a list of texts, got {inputs!r:.60}")
            kwargs["content_free_inputs"] = tuple(inputs)
        if isinstance(words, Mapping):
            bad = next((k for k, v in words.items() if not isinstance(v, (str, list, tuple))), None)
            if bad is not None:
                raise AutoPromptError(
                    f"verbalizer: class {bad!r} needs a word or a list of words, got {words[bad]!r:.60}"
                )
            labels = tuple(words.keys())
            if all(k.isdigit() for k in labels):
                labels = ()
            values = tuple(tuple([v] if isinstance(v, str) else v) for v in words.values())
            return cls(values, labels=labels, **kwargs)
        return cls.from_words(words, **kwargs)


def _number_rows(value: Any, key: str) -> tuple[tuple[float, ...], ...]:
    """Per-class lists of numbers (weights, priors) from JSON, or one clear error."""
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(row, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row)
        for row in value
    )
    if not ok:
        raise AutoPromptError(f"verbalizer {key} must be a list of number lists (one per class), got {value!r:.60}")
    return tuple(tuple(float(x) for x in row) for row in value)


def as_verbalizer(value: Verbalizer | Mapping[str, Any] | Sequence[Any]) -> Verbalizer:
    """Accept a Verbalizer, its JSON dict, or a plain ``{label: words}`` mapping."""
    if isinstance(value, Verbalizer):
        return value
    if isinstance(value, Mapping) and "label_words" in value:
        return Verbalizer.from_dict(value)
    return Verbalizer.from_words(value)
