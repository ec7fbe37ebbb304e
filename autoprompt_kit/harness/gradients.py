"""AutoPrompt's trigger gradients: the gold-label loss back-propagated to the input embeddings.

A pass of its own over the engine's primitives (rows, batches, plans, forwards: :mod:`._engine`): every row runs
whole with its input embeddings as leaves (no shared-prefix cache: the gradient must reach each
row's own trigger embeddings), each batch's loss is back-propagated at once, and the gradient at
the trigger slots is summed (so one batch's graph is freed before the next).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data import Example, Split
from ..errors import AutoPromptError
from ..prompts.template import Template, as_template
from ..prompts.verbalizer import Verbalizer, as_verbalizer
from . import _engine as engine
from . import _validation
from ._engine import Scorer
from .encoding import Row


def embedding_gradient(
    harness: Scorer,
    split: Split | Sequence[Example],
    template: Template | str,
    verbalizer: Verbalizer | dict[str, Any],
    *,
    loss: str = "likelihood",
) -> tuple[torch.Tensor, float]:
    """Gradient of the gold-label loss w.r.t. the trigger-slot input embeddings (see
    :meth:`Harness.embedding_gradient`): ``(num_triggers, d)`` summed over examples, and the mean loss."""
    template = as_template(template)
    verbalizer = as_verbalizer(verbalizer)
    if template.num_triggers == 0:
        raise AutoPromptError(f"template {template.text!r} has no {{trigger}} slot to take gradients at")
    split = _validation.as_split(split)
    labels = torch.tensor([e.label for e in split], device=harness.device)
    rows, sizes = engine.build_rows(harness, [template], [list(split)], verbalizer)
    grads = torch.zeros(
        template.num_triggers, harness.model.get_input_embeddings().weight.shape[1], device=harness.device
    )
    with torch.enable_grad():
        word_lp = trigger_gradient_pass(harness, rows, sizes[0], verbalizer, labels, loss, grads)
    return grads, float(-verbalizer.gold_logprob(word_lp.detach(), labels, loss).mean())


def trigger_gradient_pass(
    harness: Scorer,
    rows: list[Row],
    n_items: int,
    verbalizer: Verbalizer,
    gold: torch.Tensor,
    loss_kind: str,
    grads: torch.Tensor,
) -> torch.Tensor:
    """Forward ``rows`` batch by batch (item order, full vocabulary), add each batch's trigger-slot
    gradient into ``grads`` and return the (detached) word log-probs ``(n_items, W)``."""
    n_words = len(verbalizer.flat_words)
    word_lp = torch.zeros(n_items, n_words, device=harness.device)
    # Unsorted batches never split an item's rows, so each batch's class scores are whole.
    for batch in engine.batches(rows, harness.batch_size, sort=False):
        plan = engine.plan(harness, batch, None)
        logp, _, embeds = engine.forward(harness, plan, None, embeds_grad=True)
        if not plan.target_batch.numel():
            continue
        values, index = engine.target_values(plan, logp)
        assert embeds is not None
        accumulate_trigger_grad(harness, plan.rows, values, index, embeds, grads, gold, verbalizer, loss_kind, n_words)
        word_lp = word_lp.index_put(index, values.detach(), accumulate=True)
    return word_lp


def accumulate_trigger_grad(
    harness: Scorer,
    batch: list[Row],
    values: torch.Tensor,
    index: tuple[torch.Tensor, torch.Tensor],
    embeds: torch.Tensor,
    grads: torch.Tensor,
    gold: torch.Tensor,
    verbalizer: Verbalizer,
    loss_kind: str,
    n_words: int,
) -> None:
    """Back-propagate one batch's gold-label loss to ``embeds`` and add the trigger slots' gradient
    (summed over rows) into ``grads`` ``(num_triggers, d)``."""
    device = harness.device
    items = sorted({r.item for r in batch})
    items_t = torch.tensor(items, device=device)
    # Each target's place among the batch's items, found on the device (no per-target read-back).
    local = torch.searchsorted(items_t, index[0])
    word_lp = torch.zeros(len(items), n_words, device=device)
    word_lp = word_lp.index_put((local, index[1]), values, accumulate=True)
    loss = -verbalizer.gold_logprob(word_lp, gold[items_t], loss_kind).sum()
    (g,) = torch.autograd.grad(loss, embeds)
    with_triggers = [(b, row.trigger_positions) for b, row in enumerate(batch) if row.trigger_positions]
    if with_triggers:
        rows_b = [b for b, positions in with_triggers for _ in positions]
        slots = [p for _, positions in with_triggers for p in positions]
        picked = g[torch.tensor(rows_b, device=g.device), torch.tensor(slots, device=g.device)]
        grads += picked.view(len(with_triggers), -1, g.shape[-1]).sum(0).float()
