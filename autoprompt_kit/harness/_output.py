"""The model's output layer, applied where the harness reads it and nowhere else.

While a scoring pass runs, :func:`gathering_head` swaps the output embedding layer for one that
first gathers the few positions that are read and, when one position per example is read,
projects onto the label-word rows alone (Gemma's 262k-row output matrix is most of its compute).
:func:`output_logits` and :func:`subset_logprobs` apply the layer to hidden states kept from
earlier passes, as the model's own forward would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from . import precision as precisions


class OutputLayer(Protocol):
    """What the output-layer helpers read off a harness (:class:`~.harness.Harness` is one)."""

    model: Any  # a transformers ``PreTrainedModel``
    head: Any  # its output embedding layer (``nn.Linear``-like: ``weight``, optional ``bias``)
    device: torch.device
    precision: str


@contextlib.contextmanager
def gathering_head(
    head: Any, pos: torch.Tensor, subset: torch.Tensor | None, captured: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Swap ``head``'s forward for one that reads only positions ``pos`` ``(B, K)`` (and only the
    ``subset`` rows of its weight); the gathered input is left in ``captured["x"]``."""
    original = head.forward
    patched_before = "forward" in head.__dict__  # e.g. accelerate's hooks set an instance forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        gathered = x.gather(1, pos[:, :, None].expand(-1, -1, x.shape[-1]))
        captured["x"] = gathered
        if subset is None:
            return original(gathered)
        bias = head.bias[subset] if getattr(head, "bias", None) is not None else None
        return nn.functional.linear(gathered, head.weight[subset], bias)

    head.forward = forward
    try:
        yield
    finally:
        if patched_before:
            head.forward = original
        else:
            del head.forward


def output_logits(
    h: OutputLayer, hidden: torch.Tensor, token_ids: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """The output layer on hidden states ``(n, d)`` — weight, bias and the model's final logit
    soft-cap, as a forward pass applies them — for ``token_ids`` only (all tokens by default)."""
    hidden = hidden.to(h.device)
    head = h.head
    with precisions.autocast(h.precision, h.device):
        if token_ids is None:
            logits = head(hidden).float()
        else:
            ids = torch.as_tensor(token_ids, device=h.device)
            bias = head.bias[ids] if getattr(head, "bias", None) is not None else None
            logits = nn.functional.linear(hidden, head.weight[ids], bias).float()
    cap = getattr(h.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def subset_logprobs(h: OutputLayer, states: torch.Tensor, subset: list[int]) -> torch.Tensor:
    """Log-softmax over ``subset`` of the output layer on mask states ``(n, d)``, computed as the
    model's forward computes its logits (the linear layer and its soft-cap under the harness's
    autocast, then float32) — so the scores equal a pass's to the bit."""
    ids = torch.tensor(subset, device=h.device)
    head = h.head
    bias = head.bias[ids] if getattr(head, "bias", None) is not None else None
    with precisions.autocast(h.precision, h.device):
        logits = nn.functional.linear(states, head.weight[ids], bias)
        cap = getattr(h.model.config, "final_logit_softcapping", None)
        if cap:
            logits = logits / cap
            logits = torch.tanh(logits)
            logits = logits * cap
    return torch.log_softmax(logits.float(), dim=-1)
