"""The space of ``lmbff``: template generation, label-word search, calibration and prompt-based fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import AutoPromptError
from ...prompts import PLAIN_CALIBRATIONS, Template
from ...search.base import SearchConfig, choice
from .generation import SEQ2SEQ_FORMATS
from .label_words import EXHAUSTIVE_LIMIT, LABEL_SEARCH_STRATEGIES

FINETUNE_PARAMETERS = ("lora", "full")


@dataclass
class LMBFFConfig(SearchConfig):
    template: str = field(
        default="{text_a} It was {mask}.",
        metadata={"role": "template", "help": "manual template (label-word search; the baseline)"},
    )
    label_words: dict[str, Any] | None = field(
        default=None, metadata={"role": "label_words", "help": "manual label words (label → words)"}
    )
    generate_templates: bool = field(default=True, metadata={"help": "generate templates (else use `template`)"})
    search_label_words: bool = field(default=False, metadata={"help": "search label words with `template`"})
    generator_model: str | None = field(
        default=None,
        metadata={
            "help": "a separate model to generate templates with (e.g. t5-large for an MLM); default: the scoring model"
        },
    )
    formats: list[str] = field(
        default_factory=lambda: ["after"], metadata={"help": "seq2seq formats: after, before, pair"}
    )
    context: str = field(default="{text_a}", metadata={"help": "causal generation: text before the span"})
    suffix: str = field(default=".", metadata={"help": "causal generation: text after the mask"})
    beam: int = field(default=32, metadata={"help": "beam width (paper: 100)"})
    max_span_tokens: int = field(default=5, metadata={"help": "causal: longest span in tokens"})
    max_decode_tokens: int = field(default=20, metadata={"help": "seq2seq: longest decoded sequence"})
    ascii_only: bool = field(default=True, metadata={"help": "generated spans use ASCII tokens only"})
    keep_generated: int = field(default=40, metadata={"help": "generated templates scored on dev"})
    top_n: int = field(default=10, metadata={"help": "best templates (by zero-shot dev) that become trials"})
    label_k: int = field(default=20, metadata={"help": "label-word candidates per class"})
    label_assignments: int = field(default=5, metadata={"help": "label-word assignments that become trials"})
    label_candidates: str = field(
        default="contrastive",
        metadata={
            "help": "likelihood (the paper: most likely words per class) or contrastive (likely and class-specific)"
        },
    )
    label_pool: int = field(default=1000, metadata={"help": "contrastive: only the N words most likely at the mask"})
    label_search_strategy: str = field(
        default="auto",
        metadata={
            "help": "exhaustive (score all label_k^C assignments), beam (one class at a time, label_beam kept) or auto "
            f"(exhaustive up to {EXHAUSTIVE_LIMIT:,} assignments)"
        },
    )
    label_beam: int = field(default=100, metadata={"help": "beam search: partial assignments kept per class"})
    calibration: list[str] = choice(
        ["none"], help="choices: none and/or content_free; the first also ranks generated templates on dev"
    )
    finetune_epochs: int = field(
        default=0,
        metadata={
            "help": "prompt-based fine-tuning epochs per trial (0 = zero-shot); "
            "the trained state is saved with the prompt"
        },
    )
    finetune_parameters: str = field(
        default="lora",
        metadata={
            "help": "lora (a LoRA delta on the attention query/value layers: small on disk) or full (every weight)"
        },
    )
    finetune_lr: float | None = field(
        default=None,
        metadata={"help": "fine-tuning learning rate (default: 1e-3 with lora, 1e-5 with full, as LM-BFF)"},
    )
    finetune_batch_size: int = field(default=8, metadata={"help": "fine-tuning batch size"})
    finetune_lora_rank: int = field(default=8, metadata={"help": "LoRA rank (finetune_parameters: lora)"})
    finetune_lora_targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "LoRA target module patterns (default: the attention query/value projections, e.g. q_proj, v_proj)"
        },
    )

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        from ...prompts.defaults import is_pair_task

        # Calibrated ranking first: an uncalibrated small model often says one class for everything.
        return {
            "calibration": ["content_free", "none"],
            "context": "{text_a} {text_b}" if is_pair_task(task) else "{text_a}",
        }

    def __post_init__(self) -> None:
        Template(self.template)
        if not self.generate_templates and not self.search_label_words:
            raise AutoPromptError(
                "set generate_templates and/or search_label_words: otherwise there is nothing to search"
            )
        if self.generate_templates and not self.label_words and not self.search_label_words:
            raise AutoPromptError("template generation needs label_words (or search_label_words: true)")
        bad = [f for f in self.formats if f not in SEQ2SEQ_FORMATS]
        if bad or not self.formats:
            raise AutoPromptError(f"formats must be a list of {SEQ2SEQ_FORMATS}, got {self.formats}")
        for name in (
            "beam",
            "max_span_tokens",
            "max_decode_tokens",
            "keep_generated",
            "top_n",
            "label_k",
            "label_assignments",
            "label_pool",
        ):
            if getattr(self, name) < 1:
                raise AutoPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.calibration or any(c not in PLAIN_CALIBRATIONS for c in self.calibration):
            raise AutoPromptError(
                f"calibration must be a list of {'/'.join(PLAIN_CALIBRATIONS)}, got {self.calibration}"
            )
        if self.label_search_strategy not in LABEL_SEARCH_STRATEGIES:
            raise AutoPromptError(
                f"label_search_strategy must be one of {LABEL_SEARCH_STRATEGIES}, got {self.label_search_strategy!r}"
            )
        if self.label_beam < 1:
            raise AutoPromptError(f"label_beam must be at least 1, got {self.label_beam}")
        if self.label_candidates not in ("contrastive", "likelihood"):
            raise AutoPromptError(f"label_candidates must be contrastive or likelihood, got {self.label_candidates!r}")
        if self.finetune_epochs < 0:
            raise AutoPromptError("finetune_epochs must be >= 0")
        if self.finetune_parameters not in FINETUNE_PARAMETERS:
            raise AutoPromptError(
                f"finetune_parameters must be one of {FINETUNE_PARAMETERS}, got {self.finetune_parameters!r}"
            )
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise AutoPromptError(f"finetune_lr must be a positive number, got {self.finetune_lr!r}")
        if self.finetune_lora_rank < 1:
            raise AutoPromptError(f"finetune_lora_rank must be at least 1, got {self.finetune_lora_rank}")

    @property
    def learning_rate(self) -> float:
        return (
            self.finetune_lr if self.finetune_lr is not None else (1e-3 if self.finetune_parameters == "lora" else 1e-5)
        )
