"""LM-BFF's prompt-based fine-tuning, restoring a shared model's weights after it, and the
fine-tuned weights a found prompt carries (the trained state of kind ``model_weights``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ...artifact import read_tensors, register_state, save_tensors
from ...data import Split
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer

if TYPE_CHECKING:
    from ...artifact import Prompt
    from ...harness import Harness

MODEL_FILE = "model.safetensors"


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


def prompt_finetune(
    harness: Harness,
    train: Split,
    template: Template | str,
    verbalizer: Verbalizer,
    *,
    epochs: int = 10,
    lr: float = 1e-5,
    batch_size: int = 8,
    seed: int = 0,
    parameters: Sequence[torch.nn.Parameter] | None = None,
) -> list[float]:
    """LM-BFF's prompt-based fine-tuning: cross-entropy over the label words' class scores at the mask,
    all model weights trained (or ``parameters``). Returns the loss of each epoch."""
    params = list(parameters) if parameters is not None else list(harness.model.parameters())
    return harness.train(train, template, verbalizer, params, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)


@register_state
@dataclass
class FineTunedWeights:
    """Every backbone parameter after full fine-tuning (CPU copies), copied into the model while
    the prompt is applied and put back after."""

    key: ClassVar[str] = "model_weights"

    tensors: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: torch.nn.Module) -> FineTunedWeights:
        return cls({n: p.detach().cpu().clone() for n, p in model.named_parameters()})

    def parameters(self) -> int:
        return int(sum(v.numel() for v in self.tensors.values()))

    def manifest(self) -> dict[str, Any]:
        return {"file": MODEL_FILE, "tensors": len(self.tensors), "parameters": self.parameters()}

    def save(self, folder: Path, prompt: Prompt) -> None:
        save_tensors(self.tensors, folder / MODEL_FILE)

    @classmethod
    def read(cls, entry: Any, folder: Path | None) -> FineTunedWeights:
        return cls(read_tensors(folder, (entry or {}).get("file", MODEL_FILE), "fine-tuned weights"))

    @contextlib.contextmanager
    def applied(self, harness: Harness) -> Iterator[None]:
        saved: dict[str, torch.Tensor] = {}
        params = dict(harness.model.named_parameters())
        try:
            unknown = sorted(set(self.tensors) - set(params))
            if unknown:
                raise AutoPromptError(f"the fine-tuned weights do not fit this model (no parameter {unknown[0]!r})")
            with torch.no_grad():
                for name, value in self.tensors.items():
                    if tuple(value.shape) != tuple(params[name].shape):
                        raise AutoPromptError(
                            f"fine-tuned weight {name!r} has shape {tuple(value.shape)}, "
                            f"the model's is {tuple(params[name].shape)}"
                        )
                    saved[name] = params[name].detach().clone()
                    params[name].copy_(value.to(params[name].device, params[name].dtype))
            yield
        finally:
            # Also after a shape error half-way: the parameters already replaced go back.
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    def describe(self) -> str:
        return "fine-tuned weights"

    def summary(self) -> str:
        return f"fine-tuned model weights ({self.parameters():,} parameters)"

    def card_line(self) -> str:
        return f"- fine-tuned backbone weights, {self.parameters():,} parameters (`{MODEL_FILE}`)"
