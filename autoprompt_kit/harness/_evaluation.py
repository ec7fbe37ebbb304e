"""From a split and prompts to :class:`EvalResult` s: content-free inputs added where the
verbalizer calibrates, one scoring pass, the prior applied, truncation counted."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ..data import Example, Split
from ..prompts.template import Template
from ..prompts.verbalizer import Verbalizer
from . import _calibration as calibration
from ._engine import Scorer
from .results import EvalResult, ScoreOutput

#: ``score_blocks(templates, blocks, verbalizer, exact=...)``: the harness's scoring call.
ScoreBlocks = Callable[..., list[ScoreOutput]]


def evaluate(
    h: Scorer,
    split: Split,
    templates: Sequence[Template],
    verbalizer: Verbalizer,
    score_blocks: ScoreBlocks,
    exact: bool,
    start: float,
) -> list[EvalResult]:
    """One result per template on ``split`` (checked by the caller); ``start`` is when the call began."""
    calibrate = verbalizer.calibration == "content_free"
    # Content-free inputs carry each example's demonstrations: one prior per distinct demonstration text.
    contexts = [calibration.calibration_contexts(t, split) if calibrate else ([], None) for t in templates]
    cf = [
        [e for c in ctx for e in calibration.content_free(t, verbalizer, c)] for t, (ctx, _) in zip(templates, contexts)
    ]
    # The split itself when nothing is appended: its content fingerprint (the tokenisation cache's key) is cached.
    blocks: list[Sequence[Example]] = [list(split) + c if c else split for c in cf]
    out = score_blocks(templates, blocks, verbalizer, exact=exact)
    labels = split.labels if isinstance(split, Split) else np.array([e.label for e in split])
    results = []
    seconds = (time.perf_counter() - start) / len(templates)
    reserve = h.encoder.reserve(verbalizer.flat_words)
    for template, block_out, cf_block, (_, group) in zip(templates, out, cf, contexts):
        word_lp = block_out.word_logprobs.float()
        prior = None
        if calibrate:
            prior = calibration.prior(verbalizer, word_lp[len(split) :], group)
            word_lp = word_lp[: len(split)]
        class_lp = verbalizer.class_logprobs(word_lp, prior=prior)
        encoded = h.prompt_cache.encode(h.encoder, template, list(split) + cf_block, reserve, h.cache_items)
        cut = sum(e.truncated > 0 for e in encoded[: len(split)])
        results.append(
            EvalResult.from_class_logprobs(
                class_lp,
                labels,
                word_logprobs=word_lp,
                num_classes=verbalizer.num_classes,
                prior=prior,
                seconds=seconds,
                template=template.display(),
                extra={"truncated": int(cut)},
            )
        )
    return results
