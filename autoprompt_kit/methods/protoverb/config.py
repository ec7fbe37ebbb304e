"""The space of ``protoverb``: projection size, prototypes per class, temperature, loss weight and
inference per trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...search.base import SearchConfig, choice
from .head import ProtoSettings


@dataclass
class ProtoVerbConfig(SearchConfig):
    template: str = field(
        default="{text_a} It was {mask}.", metadata={"role": "template", "help": "the prompt template"}
    )
    label_words: dict[str, Any] = field(
        default_factory=dict,
        metadata={"role": "label_words", "help": "the manual verbalizer (label → words), used by combined inference"},
    )
    calibration: str = field(default="none", metadata={"help": "the manual verbalizer's calibration"})
    proj_dim: list[int] = choice([64], help="choices: projection size")
    prototypes_per_class: list[int] = choice([1], help="choices: K per class")
    temperature: list[float] = choice([0.1], help="choices: cosine temperature")
    instance_weight: list[float] = choice([1.0], help="choices: weight of the instance-instance loss")
    inference: list[str] = choice(["combined", "proto"], help="choices: proto (prototypes alone) and/or combined")
    manual_weight: float = field(default=1.0, metadata={"help": "weight of the manual verbalizer when combined"})
    steps: int = field(default=100, metadata={"help": "optimisation steps (batches of batch_size)"})
    lr: float = field(default=0.01, metadata={"help": "learning rate (Adam)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    on_small_class: str = field(
        default="reduce",
        metadata={"help": "a class with fewer examples than K: reduce (one prototype per example) or error"},
    )
    top_words: int = field(default=10, metadata={"help": "words shown per prototype"})

    def __post_init__(self) -> None:
        Template(self.template)
        if not isinstance(self.label_words, dict) or len(self.label_words) < 2:
            raise AutoPromptError("protoverb needs label_words: the manual verbalizer, a mapping of label → word(s)")
        Verbalizer.from_words(self.label_words, calibration=self.calibration)
        for name, values in self.axes().items():
            if not values:
                raise AutoPromptError(f"protoverb: {name} must be a non-empty list of choices")
        if self.top_words < 1:
            raise AutoPromptError("top_words must be at least 1")

    def check_point(self, point: dict[str, Any]) -> None:
        self.settings(point)

    def settings(self, point: dict[str, Any]) -> ProtoSettings:
        """The head's settings for one trial's parameters."""
        return ProtoSettings(
            proj_dim=point["proj_dim"],
            prototypes_per_class=point["prototypes_per_class"],
            temperature=point["temperature"],
            instance_weight=point["instance_weight"],
            inference=point["inference"],
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            manual_weight=self.manual_weight,
            on_small_class=self.on_small_class,
        )
