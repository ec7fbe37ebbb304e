"""A trained delta as part of a saved prompt: its structure and weights, attached while the prompt
is applied (the :class:`~autoprompt_kit.artifact.TrainedState` of kind ``delta``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..artifact import read_tensors, register_state, save_tensors
from ..errors import AutoPromptError
from .structure import FORMAT, FORMAT_VERSION, STRUCTURE_FILE, WEIGHTS_FILE, Delta, read_structure

if TYPE_CHECKING:
    from ..artifact import Prompt
    from ..harness import Harness


@register_state
@dataclass
class DeltaState:
    """A delta's structure entries and weights (on the CPU), attached when the prompt is applied."""

    key: ClassVar[str] = "delta"

    structure: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def of(cls, delta: Delta) -> DeltaState:
        """A (trained) delta's structure and a float32 CPU copy of its weights."""
        return cls(delta.structure(), {k: v.detach().float().cpu().clone() for k, v in delta.state_dict().items()})

    def parameters(self) -> int:
        return int(sum(v.numel() for v in self.tensors.values()))

    def manifest(self) -> dict[str, Any]:
        return {
            "structure": self.structure,
            "file": WEIGHTS_FILE,
            "structure_file": STRUCTURE_FILE,
            "parameters": self.parameters(),
        }

    def save(self, folder: Path, prompt: Prompt) -> None:
        from ..io import write_json_atomic

        save_tensors(self.tensors, folder / WEIGHTS_FILE)
        # delta.json too, so the folder is a delta folder as well (``autoprompt-kit delta DIR``).
        write_json_atomic(
            folder / STRUCTURE_FILE,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "modules": self.structure,
                "parameters": self.parameters(),
                "model": prompt.model.get("name"),
            },
        )

    @classmethod
    def read(cls, entry: Any, folder: Path | None) -> DeltaState:
        if not isinstance(entry, Mapping):
            raise AutoPromptError(f"'delta' must be an object, got {entry!r:.80}")
        structure = entry.get("structure")
        if structure is None and folder is not None:
            structure = read_structure(folder)["modules"]
        if not isinstance(structure, list) or not all(isinstance(e, dict) for e in structure):
            raise AutoPromptError("the saved delta's 'structure' must be a list of module entries")
        return cls(structure, read_tensors(folder, entry.get("file", WEIGHTS_FILE), "delta weights"))

    @contextlib.contextmanager
    def applied(self, harness: Harness) -> Iterator[None]:
        delta = Delta.from_structure(harness, self.structure)
        missing, unexpected = delta.load_state_dict(self.tensors, strict=False)
        if missing or unexpected:
            raise AutoPromptError(
                f"the delta's weights do not match its structure (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        delta.attach(harness)
        try:
            yield
        finally:
            delta.detach()

    def describe(self) -> str:
        return f"delta ({len(self.structure)} modules)" if self.structure else ""

    def summary(self) -> str:
        return f"delta of {len(self.structure)} modules ({self.parameters():,} parameters)"

    def card_line(self) -> str:
        return (
            f"- a delta of {len(self.structure)} modules, {self.parameters():,} parameters "
            f"(`{STRUCTURE_FILE}`, `{WEIGHTS_FILE}`)"
        )
