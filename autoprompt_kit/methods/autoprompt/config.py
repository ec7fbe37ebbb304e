"""The space of ``autoprompt``: trigger counts, candidate counts, initial tokens and losses per trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import AutoPromptError
from ...prompts import Template
from ...prompts.verbalizer import LOSSES
from ...search.base import SearchConfig, choice
from .triggers import resize_triggers


@dataclass
class AutoPromptConfig(SearchConfig):
    template: str = field(
        default="{text_a} {trigger*3} {mask}.", metadata={"role": "template", "help": "template with trigger slots"}
    )
    label_words: dict[str, Any] | None = field(
        default=None, metadata={"role": "label_words", "help": "fixed label words (label → words)"}
    )
    label_search: bool = field(default=False, metadata={"help": "find label tokens instead (AutoPrompt §2.2)"})
    label_tokens_per_class: int = field(default=3, metadata={"help": "label tokens per class when searching"})
    num_triggers: list[int] = choice([3], help="choices for the trigger count")
    num_candidates: list[int] = choice([10], help="choices for k")
    init_token: list[str] = choice(["mask"], help="choices: mask or a word")
    loss: list[str] = choice(["likelihood"], help="choices: likelihood (AutoPrompt) and/or cross_entropy")
    iterations: int = field(default=20, metadata={"help": "trigger-search iterations (reference: 100-180)"})
    batch_size: int = field(default=16, metadata={"help": "examples per batch (reference: 24-32)"})
    accumulation_steps: int = field(default=1, metadata={"help": "batches per estimate (reference: 10-30)"})
    word_initial_only: bool = field(default=True, metadata={"help": "triggers must be whole-word tokens"})
    lowercase_only: bool = field(default=False, metadata={"help": "drop capitalised trigger tokens"})
    exclude_words: list[str] = field(default_factory=list, metadata={"help": "never use these as triggers"})

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        from ...prompts.defaults import is_pair_task

        # Triggers between the input and the mask, as the paper's templates put them.
        return {
            "template": "{text_a} {text_b} {trigger*3} {mask}."
            if is_pair_task(task)
            else "{text_a} {trigger*3} {mask}."
        }

    def __post_init__(self) -> None:
        resize_triggers(Template(self.template), 1)  # validates the template and its trigger slots
        if not self.label_words and not self.label_search:
            raise AutoPromptError("give label_words, or set label_search: true")
        if any(k < 1 for k in self.num_candidates) or not self.num_candidates:
            raise AutoPromptError(f"num_candidates (k) must be a list of integers >= 1, got {self.num_candidates}")
        if any(n < 1 for n in self.num_triggers) or not self.num_triggers:
            raise AutoPromptError(f"num_triggers must be a list of integers >= 1, got {self.num_triggers}")
        if self.iterations < 1:
            raise AutoPromptError("iterations must be at least 1")
        if not self.loss or any(x not in LOSSES for x in self.loss):
            raise AutoPromptError(f"loss must be a list of {LOSSES}, got {self.loss}")
