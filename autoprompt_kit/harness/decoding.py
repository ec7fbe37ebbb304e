"""Vocabulary-side helpers off the scoring path: incremental decoding with a causal LM's body
(LM-BFF's template generation) and chunked full-vocabulary distributions of hidden states
(decoding steps, KPT's vocabulary statistics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..errors import AutoPromptError
from . import precision as precisions
from ._engine import Scorer, cache_key
from ._output import OutputLayer, output_logits


def output_logprobs(
    harness: OutputLayer, hidden: torch.Tensor, chunk: int = 256
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, log_probs)`` chunks of the output layer's full-vocabulary log-probabilities on
    ``hidden`` ``(n, d)`` (see :meth:`Harness.output_logprobs`)."""
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, min(start + chunk, hidden.shape[0]))
        yield rows, torch.log_softmax(output_logits(harness, hidden[rows]), dim=-1)


def body(
    harness: Scorer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """One incremental step of a causal LM's body: last hidden states and the updated KV cache
    (see :meth:`Harness.body`)."""
    if harness.kind != "causal":
        raise AutoPromptError("body() is for causal LMs")
    model_body = harness.model.base_model
    with precisions.autocast(harness.precision, harness.device):
        out = model_body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_key(model_body): cache},
        )
    new_cache = out.get("cache")
    return out.last_hidden_state, new_cache if new_cache is not None else out.past_key_values
