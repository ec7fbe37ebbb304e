"""The space and schedule of ``s3delta``: candidate module patterns, the budget, the gate settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...delta.structure import check_patterns
from ...errors import AutoPromptError
from ...prompts import Verbalizer, as_verbalizer
from ...search.base import SearchConfig, choice

STRATEGIES = ("differentiable", "blackbox")
GATE_OPTIMIZERS = ("normalized_sgd", "adam")
GATE_COSTS = ("none", "per_parameter")
#: Module kinds of the space and the config field that lists each kind's targets.
KIND_TARGETS = {"lora": "lora_targets", "bitfit": "bitfit_targets", "ln": "ln_targets", "adapter": "adapter_targets"}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class S3DeltaConfig(SearchConfig):
    """Search space and schedule of S3Delta. List values are sampled per trial by the study."""

    method: str = "s3delta"
    template: str = field(
        default="{text_a} It was {mask}.", metadata={"role": "template", "help": "the prompt the delta is trained with"}
    )
    label_words: dict[str, list[str]] = field(
        default_factory=lambda: {"negative": ["terrible"], "positive": ["great"]},
        metadata={"role": "label_words", "help": "verbalizer: label → words"},
    )
    strategy: str = field(default="differentiable", metadata={"help": "differentiable (bi-level) or blackbox (TPE)"})
    budget_percent: float = field(
        default=0.01, metadata={"help": "trainable parameters as a percentage of the backbone (0.01 = 0.01%)"}
    )
    lora_targets: list[str] = field(
        default_factory=lambda: list(LINEAR), metadata={"help": "module patterns that get a LoRA candidate"}
    )
    bitfit_targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "module patterns that get a BitFit candidate (off by default: new biases on Gemma diverge at "
            "the shared learning rate — measured 0.58 on MR)"
        },
    )
    ln_targets: list[str] = field(
        default_factory=lambda: [r".*layers\.\d+\..*norm"],
        metadata={"help": "norm patterns that get a LayerNorm-tuning candidate"},
    )
    adapter_targets: list[str] = field(
        default_factory=lambda: ["self_attn.o_proj", "mlp.down_proj"],
        metadata={"help": "outputs (after attention / after FFN) that get an adapter candidate"},
    )
    lora_rank: int = field(default=1, metadata={"help": "rank of each LoRA candidate (paper: 1)"})
    adapter_bottleneck: int = field(default=1, metadata={"help": "bottleneck of each adapter candidate"})
    warmup_epochs: int = field(
        default=2,
        metadata={
            "help": "epochs of training the module weights before the gates move (every delta starts at zero, "
            "so a gate has no gradient until its module has learnt something)"
        },
    )
    search_epochs: int = field(default=6, metadata={"help": "epochs of the bi-level search over train"})
    epochs: int = field(default=6, metadata={"help": "epochs of re-training the found structure"})
    lr: float = field(default=5e-3, metadata={"help": "learning rate of the delta weights"})
    gate_lr: list[float] = choice([0.1], help="choices: learning rate of the gate logits")
    gate_cost: list[str] = choice(
        ["none"],
        help=(
            "choices: none, or per_parameter: each gate's gradient divided by its module's size (relative to the "
            "mean), so the gates rank value per parameter — the greedy knapsack order"
        ),
    )
    gate_optimizer: str = field(
        default="normalized_sgd",
        metadata={
            "help": "normalized_sgd (gradient / its RMS over all gates: keeps which gate matters more) or adam "
            "(per-gate scaling: with few steps every helpful gate moves by the same lr)"
        },
    )
    beta: float = field(default=1.0, metadata={"help": "sigmoid temperature of the shifted global sigmoid"})
    temperature: list[float] = choice([0.5], help="choices: relaxed-Bernoulli temperature")
    batch_size: int = field(default=8, metadata={"help": "examples per step (train and dev)"})
    spaces: list[str] | None = field(
        default=None,
        metadata={
            "help": "module kinds in the space, sampled per trial, each a '+'-joined subset of lora, bitfit, ln, "
            "adapter (e.g. [lora+ln+adapter, lora+ln]); None: every kind whose *_targets list is given"
        },
    )
    layer_choices: list[str] = field(
        default_factory=lambda: ["all", "upper", "lower", "even"],
        metadata={"help": "blackbox: which layers the switched-on groups cover"},
    )

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise AutoPromptError(f"s3delta strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not isinstance(self.budget_percent, (int, float)) or not 0 < self.budget_percent < 100:
            raise AutoPromptError(f"budget_percent must be a number in (0, 100), got {self.budget_percent!r}")
        for name in ("lora_rank", "adapter_bottleneck", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise AutoPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.gate_cost or any(c not in GATE_COSTS for c in self.gate_cost):
            raise AutoPromptError(f"gate_cost must be a list of {GATE_COSTS}, got {self.gate_cost!r}")
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise AutoPromptError(f"gate_optimizer must be one of {GATE_OPTIMIZERS}, got {self.gate_optimizer!r}")
        if self.search_epochs < 0 or self.warmup_epochs < 0:
            raise AutoPromptError("search_epochs and warmup_epochs must be >= 0")
        if self.beta <= 0:
            raise AutoPromptError("beta must be positive")
        for name in ("gate_lr", "temperature"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values):
                raise AutoPromptError(f"{name} must be a list of positive numbers, got {values!r}")
        for name in ("lora_targets", "bitfit_targets", "ln_targets", "adapter_targets"):
            check_patterns(getattr(self, name), name)
        if not (self.lora_targets or self.bitfit_targets or self.ln_targets or self.adapter_targets):
            raise AutoPromptError("the s3delta search space is empty: give at least one *_targets list")
        for space in self.spaces or []:
            kinds = space.split("+") if isinstance(space, str) else []
            if not kinds or any(k not in KIND_TARGETS for k in kinds):
                raise AutoPromptError(
                    f"spaces entries are '+'-joined module kinds from {sorted(KIND_TARGETS)}, got {space!r}"
                )
            if not any(getattr(self, KIND_TARGETS[k]) for k in kinds):
                raise AutoPromptError(f"space {space!r} is empty: none of its kinds has targets")
        if self.spaces is not None and not self.spaces:
            raise AutoPromptError("spaces must list at least one space (or be left out)")
        bad = [c for c in self.layer_choices if c not in ("all", "upper", "lower", "even", "odd")]
        if bad or not self.layer_choices:
            raise AutoPromptError(f"layer_choices must be from all, upper, lower, even, odd; got {self.layer_choices}")

    def axes(self) -> dict[str, list[Any]]:
        """Per trial: the module kinds (``spaces``), and for the differentiable search its gate settings."""
        axes: dict[str, list[Any]] = {"space": list(self.spaces)} if self.spaces else {}
        if self.strategy == "differentiable":
            axes.update(gate_cost=list(self.gate_cost), gate_lr=list(self.gate_lr), temperature=list(self.temperature))
        return axes

    def verbalizer(self) -> Verbalizer:
        return as_verbalizer(self.label_words)

    def restricted(self, space: str) -> S3DeltaConfig:
        """This config with only the module kinds of ``space`` (e.g. ``"lora+ln"``) in the search space."""
        kinds = set(space.split("+"))
        cleared: dict[str, Any] = {f: [] for k, f in KIND_TARGETS.items() if k not in kinds}
        return replace(self, spaces=None, **cleared)
