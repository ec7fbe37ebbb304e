"""Prompt-based fine-tuning through the scoring path (:meth:`Harness.train`).

Each step scores a minibatch through the engine as :meth:`Harness.score` does (gradients on), so
training sees exactly the prompts, truncation and label-word scores that evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..data import Example, Split
from ..errors import AutoPromptError
from ..prompts.template import Template, as_template
from ..prompts.verbalizer import Verbalizer, as_verbalizer
from . import _scoring, _validation
from ._engine import Scorer
from .results import ScoreOutput


def train(
    harness: Scorer,
    split: Split | Sequence[Example],
    template: Template | str,
    verbalizer: Verbalizer | dict[str, Any],
    parameters: Iterable[torch.Tensor],
    *,
    epochs: int = 10,
    lr: float = 1e-5,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    head: Callable[[ScoreOutput], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    soft_embeddings: torch.Tensor | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Prompt-based fine-tuning of ``parameters`` with AdamW (model weights, deltas, verbalizer weights, heads).

    Each step scores a minibatch through the same path as :meth:`Harness.evaluate` with gradients on,
    turns word scores into class log-probabilities (or ``head(output)`` logits) and minimises
    cross-entropy (or ``loss_fn(logits, labels)``). Dropout is on while training. ``on_step(step)``
    runs after every optimizer step (e.g. the second level of a bi-level search). Training
    runs every row whole (the shared-prefix cache is for scoring without gradients).

    Returns the mean loss of each epoch.
    """
    template = as_template(template)
    verbalizer = as_verbalizer(verbalizer)
    split = _validation.as_split(split)
    _validation.check(split, [template], verbalizer, None, harness.model.get_input_embeddings().weight.shape[0])
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise AutoPromptError("train() got no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    examples = list(split)
    losses = []
    step = 0
    harness.model.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = [examples[i] for i in order[start : start + batch_size]]
                labels = torch.tensor([e.label for e in batch], device=harness.device)
                # Without a custom head the loss reads class scores normalised over classes, which a
                # per-example shift of the word scores leaves unchanged: the label-word rows of the
                # output layer suffice (same loss and gradients; Gemma's 262k-row matrix is skipped).
                # As ``harness.score(..., grad=True)``: with gradients no kept scores are read.
                out = _scoring.score_blocks(
                    harness,
                    [template],
                    [batch],
                    verbalizer,
                    exact=head is not None,
                    hidden=head is not None,
                    grad=True,
                    soft_embeddings=soft_embeddings,
                )[0]
                logits = head(out) if head is not None else verbalizer.class_logprobs(out.word_logprobs.float())
                loss = loss_fn(logits, labels) if loss_fn else nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                step += 1
                if on_step:
                    on_step(step)
            losses.append(total / len(examples))
            if on_epoch:
                on_epoch(epoch, losses[-1])
    finally:
        harness.model.eval()
    return losses
