"""Content-free calibration: the inputs a prompt's class prior is measured on, and the prior.

A verbalizer with ``calibration="content_free"`` divides each example's class probabilities by
what the prompt gives inputs without content (``"N/A"``, ``""``, …). Those inputs keep the
examples' prompt context (a demonstration block), so a split whose examples carry different
demonstrations gets one prior per distinct block.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import Example, Split
from ..prompts.template import DEMO_FIELD, Template
from ..prompts.verbalizer import Verbalizer


def calibration_contexts(template: Template, split: Split) -> tuple[list[dict[str, str]], np.ndarray | None]:
    """What content-free inputs share with the examples: the distinct demonstration texts (when the
    template reads :data:`DEMO_FIELD`) and each example's index into them (None: one shared prior)."""
    if DEMO_FIELD not in template.fields or not len(split):
        return [{}], None
    index: dict[str, int] = {}
    group = np.array([index.setdefault(ex.get_field(DEMO_FIELD), len(index)) for ex in split])
    return [{DEMO_FIELD: text} for text in index], (None if len(index) == 1 else group)


def content_free(template: Template, verbalizer: Verbalizer, context: dict[str, str] | None = None) -> list[Example]:
    """Content-free examples (every field the template reads set to e.g. ``"N/A"``, except the
    prompt-context fields in ``context``, which keep their text)."""
    out = []
    for text in verbalizer.content_free_inputs:
        extra = {f: text for f in template.fields if f not in ("text_a", "text_b")}
        out.append(Example(text_a=text, label=-1, text_b=text, meta={**extra, **(context or {})}))
    return out


def prior(verbalizer: Verbalizer, word_lp: torch.Tensor, group: np.ndarray | None) -> torch.Tensor:
    """Class log-prior from the word scores ``word_lp`` of the content-free inputs of every context
    (in :func:`calibration_contexts` order): ``(C,)``, or ``(N, C)`` per example with ``group``."""
    cf_probs = verbalizer.class_logprobs(word_lp).exp()
    priors = cf_probs.view(-1, len(verbalizer.content_free_inputs), cf_probs.shape[1]).mean(dim=1)
    out = priors.clamp_min(1e-12).log()
    return out[0] if group is None else out[torch.as_tensor(group, device=out.device)]


def class_prior(verbalizer: Verbalizer, word_lp: torch.Tensor) -> torch.Tensor:
    """Class log-probabilities ``(C,)`` from the word scores of one set of content-free inputs."""
    return verbalizer.class_logprobs(word_lp.float()).exp().mean(dim=0).clamp_min(1e-12).log()
