"""LM-BFF's prompt-based fine-tuning, and restoring a shared model's weights after it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ...data import Split
from ...prompts import Template, Verbalizer

if TYPE_CHECKING:
    from ...harness import Harness


@contextlib.contextmanager
def restored_weights(model: torch.nn.Module) -> Iterator[None]:
    """Fine-tune inside this block; every parameter is put back afterwards (trials share one model)."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])


def prompt_finetune(harness: "Harness", train: Split, template: Template | str, verbalizer: Verbalizer, *,
                    epochs: int = 10, lr: float = 1e-5, batch_size: int = 8, seed: int = 0,
                    parameters: Sequence[torch.nn.Parameter] | None = None) -> list[float]:
    """LM-BFF's prompt-based fine-tuning: cross-entropy over the label words' class scores at the mask,
    all model weights trained (or ``parameters``). Returns the loss of each epoch."""
    params = list(parameters) if parameters is not None else list(harness.model.parameters())
    return harness.train(train, template, verbalizer, params, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
