"""Checks a scoring call makes before it runs: examples to score, templates that fit the split and
the model, a verbalizer that fits the labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import Example, Split
from ..errors import AutoPromptError
from ..prompts.template import Template
from ..prompts.verbalizer import Verbalizer
from .precision import CHOICES


def device_for(device: str | torch.device | None, precision: str | None) -> torch.device:
    """The device a harness runs on (CUDA when available), refusing one that cannot run here and a
    precision it cannot use."""
    try:
        chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise AutoPromptError(f"unknown device {device!r}; use e.g. 'cuda', 'cuda:1' or 'cpu'") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise AutoPromptError(
            f"device {device!r} asked for, but CUDA is not available here (torch {torch.__version__}); use 'cpu'"
        )
    if precision not in (None, *CHOICES):
        raise AutoPromptError(f"precision must be 'bf16' or 'fp32' (or 'int8', 'auto'), got {precision!r}")
    if precision == "int8" and chosen.type != "cpu":
        raise AutoPromptError("precision 'int8' (dynamic quantisation) runs on the CPU only; use bf16 on CUDA")
    return chosen


def as_split(split: Split | Sequence[Example]) -> Split:
    """``split`` as a non-empty :class:`Split` (a list of examples is wrapped as ``"examples"``)."""
    if isinstance(split, Split):
        if len(split) == 0:
            raise AutoPromptError(f"split {split.name!r} is empty")
        return split
    examples = list(split)
    if not examples:
        raise AutoPromptError("no examples to score (empty split)")
    return Split(examples, name="examples")


def check(
    split: Split,
    templates: Sequence[Template],
    verbalizer: Verbalizer,
    label_names: Sequence[str] | None,
    vocab_size: int,
    checked: bool = False,
) -> None:
    """Raise :class:`AutoPromptError` unless every template reads fields the split has and trigger
    ids below ``vocab_size``, and the verbalizer covers the labels (``label_names``, else the
    split's own). ``checked``: the caller already checked fields and labels (before the model loaded)."""
    if not checked:
        fields = split.fields()
        for template in templates:
            template.check_fields(fields)
    for template in templates:
        bad = [i for i in template.trigger_ids if i is not None and not 0 <= i < vocab_size]
        if bad:
            raise AutoPromptError(
                f"template {template.display()[:80]!r}: trigger token id {bad[0]} is outside this "
                f"model's vocabulary (0..{vocab_size - 1}); was the prompt found with another model?"
            )
    names = label_names if label_names is not None else getattr(split, "label_names", None)
    if names and not checked:
        verbalizer.check_labels(names)
    top = int(split.labels.max()) if len(split) else -1
    if top >= verbalizer.num_classes:
        raise AutoPromptError(
            f"the examples have label {top} but the verbalizer has only {verbalizer.num_classes} classes"
        )
