"""S3Delta (Hu et al., NeurIPS 2022): search a sparse delta structure under a parameter budget.

Search space: every (layer × position × module type) is a candidate — LoRA (rank 1) on the
attention and FFN linear layers, LayerNorm tuning on the norms, a bottleneck adapter after the
attention and FFN blocks, and (opt-in) BitFit on the linear layers. Each candidate ``i`` (``c_i`` parameters)
has a gate logit ``α_i`` (init 0).

Differentiable search (the paper's):

* **shifted global sigmoid** — ``p_i = σ((α_i − b) / β)`` with the shift ``b`` solved numerically
  (bisection; ``Σ p_i c_i`` is monotone in ``b``) so that the expected number of trainable
  parameters equals the budget at every step; ``b`` is treated as a constant in the gradient;
* gates are sampled with a relaxed Bernoulli (Gumbel-sigmoid, temperature ``temperature``) while
  searching and are deterministic (``p_i``) otherwise;
* **warm-up** — every delta starts at zero (LoRA's B, the adapter's up-projection, LN's scale
  offset), so a gate's gradient is zero until its module has learnt something: the module weights
  train alone for ``warmup_epochs`` first;
* **bi-level** (DARTS first-order) — each step updates the module weights on a train batch
  (``Harness.train``), then the gate logits on a dev batch (its ``on_step`` hook); by default the
  gate step divides the gradient by its RMS over all gates (one scale for all), so in a short
  few-shot search the gates whose modules matter more on dev move further — Adam (``gate_optimizer:
  adam``) scales each gate separately and moves every consistently helpful gate by the same ``lr``;
* the final structure: candidates sorted by ``p_i``, added greedily while the total stays within
  the budget; it is then **re-trained from scratch** and evaluated.

Black-box alternative (``strategy: blackbox``): each study trial switches whole groups on or off
(one switch per module type × position, plus which layers) with Optuna's TPE, repairs the
structure to the same budget, trains it and scores it on dev — so both are comparable on the
dashboard. Training always runs through ``Harness.train`` with the template and verbalizer.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...delta import Delta, DeltaSpec, count_parameters
from ...delta.structure import check_patterns, structure_table
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer, as_template, as_verbalizer
from ...search.base import (
    Candidate,
    SearchConfig,
    SearchContext,
    Searcher,
    TrialOutcome,
    choice,
    register,
    suggest,
)

if TYPE_CHECKING:
    import optuna

    from ...data import Split
    from ...harness import Harness

logger = logging.getLogger(__name__)

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
    template: str = field(default="{text_a} It was {mask}.", metadata={"role": "template", "help": "the prompt the delta is trained with"})
    label_words: dict[str, list[str]] = field(
        default_factory=lambda: {"negative": ["terrible"], "positive": ["great"]},
        metadata={"role": "label_words", "help": "verbalizer: label → words"})
    strategy: str = field(default="differentiable", metadata={"help": "differentiable (bi-level) or blackbox (TPE)"})
    budget_percent: float = field(default=0.01, metadata={
        "help": "trainable parameters as a percentage of the backbone (0.01 = 0.01%)"})
    lora_targets: list[str] = field(default_factory=lambda: list(LINEAR), metadata={
        "help": "module patterns that get a LoRA candidate"})
    bitfit_targets: list[str] = field(default_factory=list, metadata={
        "help": "module patterns that get a BitFit candidate (off by default: new biases on Gemma diverge at "
                "the shared learning rate — measured 0.58 on MR)"})
    ln_targets: list[str] = field(default_factory=lambda: [r".*layers\.\d+\..*norm"], metadata={
        "help": "norm patterns that get a LayerNorm-tuning candidate"})
    adapter_targets: list[str] = field(default_factory=lambda: ["self_attn.o_proj", "mlp.down_proj"], metadata={
        "help": "outputs (after attention / after FFN) that get an adapter candidate"})
    lora_rank: int = field(default=1, metadata={"help": "rank of each LoRA candidate (paper: 1)"})
    adapter_bottleneck: int = field(default=1, metadata={"help": "bottleneck of each adapter candidate"})
    warmup_epochs: int = field(default=2, metadata={
        "help": "epochs of training the module weights before the gates move (every delta starts at zero, "
                "so a gate has no gradient until its module has learnt something)"})
    search_epochs: int = field(default=6, metadata={"help": "epochs of the bi-level search over train"})
    epochs: int = field(default=6, metadata={"help": "epochs of re-training the found structure"})
    lr: float = field(default=5e-3, metadata={"help": "learning rate of the delta weights"})
    gate_lr: list[float] = choice([0.1], help="choices: learning rate of the gate logits")
    gate_cost: list[str] = choice(["none"], help=(
        "choices: none, or per_parameter: each gate's gradient divided by its module's size (relative to the "
        "mean), so the gates rank value per parameter — the greedy knapsack order"))
    gate_optimizer: str = field(default="normalized_sgd", metadata={
        "help": "normalized_sgd (gradient / its RMS over all gates: keeps which gate matters more) or adam "
                "(per-gate scaling: with few steps every helpful gate moves by the same lr)"})
    beta: float = field(default=1.0, metadata={"help": "sigmoid temperature of the shifted global sigmoid"})
    temperature: list[float] = choice([0.5], help="choices: relaxed-Bernoulli temperature")
    batch_size: int = field(default=8, metadata={"help": "examples per step (train and dev)"})
    spaces: list[str] | None = field(default=None, metadata={
        "help": "module kinds in the space, sampled per trial, each a '+'-joined subset of lora, bitfit, ln, "
                "adapter (e.g. [lora+ln+adapter, lora+ln]); None: every kind whose *_targets list is given"})
    layer_choices: list[str] = field(default_factory=lambda: ["all", "upper", "lower", "even"], metadata={
        "help": "blackbox: which layers the switched-on groups cover"})

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
                raise AutoPromptError(f"spaces entries are '+'-joined module kinds from {sorted(KIND_TARGETS)}, "
                                      f"got {space!r}")
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
        return replace(self, spaces=None, **{f: [] for k, f in KIND_TARGETS.items() if k not in kinds})


def search_space(harness: Any, config: S3DeltaConfig) -> list[dict[str, Any]]:
    """Every candidate entry (kind × module) of the space on this backbone."""
    specs = []
    if config.lora_targets:
        specs.append(DeltaSpec("lora", list(config.lora_targets), r=config.lora_rank))
    if config.bitfit_targets:
        specs.append(DeltaSpec("bitfit", list(config.bitfit_targets)))
    if config.ln_targets:
        specs.append(DeltaSpec("ln", list(config.ln_targets)))
    if config.adapter_targets:
        specs.append(DeltaSpec("adapter", list(config.adapter_targets), bottleneck=config.adapter_bottleneck))
    entries: list[dict[str, Any]] = []
    for spec in specs:
        entries.extend(spec.entries(harness))
    return entries


def budget_params(harness: Any, budget_percent: float) -> int:
    return int(count_parameters(harness.model) * budget_percent / 100)


def check_budget(budget: int, sizes: Sequence[int]) -> None:
    """A clear error when no structure can meet the budget, or when it does not constrain anything."""
    if budget < min(sizes):
        raise AutoPromptError(f"a budget of {budget:,} parameters fits no candidate: the smallest has {min(sizes):,} "
                              "(raise budget_percent or add smaller candidates)")
    if budget >= sum(sizes):
        raise AutoPromptError(f"a budget of {budget:,} parameters covers the whole search space ({sum(sizes):,}); "
                              "lower budget_percent or widen the space")


def solve_shift(alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0, iters: int = 100) -> float:
    """The shift ``b`` with ``Σ σ((α_i − b)/β)·c_i = budget`` (bisection; the sum decreases in ``b``)."""
    total = float(sizes.sum())
    if not 0 < budget < total:
        raise AutoPromptError(f"the budget {budget:,.0f} must lie strictly between 0 and the space's {total:,.0f} parameters")
    a = alpha.detach().double()
    c = sizes.double()
    lo, hi = float(a.min()) - 60 * beta, float(a.max()) + 60 * beta
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float((torch.sigmoid((a - mid) / beta) * c).sum()) > budget:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def select_within_budget(probs: Sequence[float], sizes: Sequence[int], budget: int) -> list[int]:
    """Indices of candidates taken greedily by ``probs`` (highest first) while the total fits the budget."""
    chosen, used = [], 0
    for i in sorted(range(len(probs)), key=lambda j: (-probs[j], sizes[j])):
        if used + sizes[i] <= budget:
            chosen.append(i)
            used += sizes[i]
    return sorted(chosen)


class GateController(nn.Module):
    """Gate logits α of every candidate and the shifted global sigmoid that keeps them at the budget."""

    def __init__(self, sizes: Sequence[int], budget: int, beta: float = 1.0, temperature: float = 0.5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(len(sizes)))
        self.register_buffer("sizes", torch.tensor(list(sizes), dtype=torch.float64))
        self.budget = budget
        self.beta = beta
        self.temperature = temperature
        self.sampling = False
        self.current: torch.Tensor | None = None
        self.shift = 0.0

    def probabilities(self) -> torch.Tensor:
        self.shift = solve_shift(self.alpha, self.sizes, self.budget, self.beta)
        return torch.sigmoid((self.alpha - self.shift) / self.beta)

    def expected_parameters(self) -> float:
        return float((self.probabilities().detach().double() * self.sizes).sum())

    def resample(self, kwargs: dict[str, Any] | None = None, batch: Any = None) -> None:
        """New gate values for the next forward pass (a harness input hook: called before each one)."""
        p = self.probabilities()
        if self.sampling and torch.is_grad_enabled():
            u = torch.rand_like(p).clamp(1e-6, 1 - 1e-6)
            logit = torch.log(p.clamp_min(1e-12)) - torch.log1p(-p.clamp(max=1 - 1e-7))
            self.current = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.temperature)
        else:
            self.current = p if torch.is_grad_enabled() else p.detach()

    def gate(self, i: int) -> torch.Tensor:
        assert self.current is not None, "resample() runs before every forward pass"
        return self.current[i]


@dataclass
class S3DeltaResult:
    """A found structure with its gate probabilities."""

    structure: list[dict[str, Any]]
    parameters: int
    budget: int
    probabilities: list[float]
    candidates: int
    table: str
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)


def s3delta_search(harness: Harness, train: Split, dev: Split, template: Template | str,
                   verbalizer: Verbalizer | dict[str, Any], config: S3DeltaConfig, seed: int = 0,
                   gate_lr: float | None = None, temperature: float | None = None,
                   gate_cost: str | None = None) -> S3DeltaResult:
    """Bi-level differentiable structure search; returns the structure (not trained)."""
    start = time.perf_counter()
    template = as_template(template)
    verbalizer = as_verbalizer(verbalizer)
    entries = search_space(harness, config)
    budget = budget_params(harness, config.budget_percent)
    torch.manual_seed(seed)
    delta = Delta.from_structure(harness, entries)
    sizes = delta.module_parameters()
    check_budget(budget, sizes)
    controller = GateController(sizes, budget, config.beta,
                                float(temperature if temperature is not None else config.temperature[0]))
    controller.to(next(harness.model.parameters()).device)
    for i, module in enumerate(delta.deltas):
        module.gate = (lambda i=i: controller.gate(i))
    lr = float(gate_lr if gate_lr is not None else config.gate_lr[0])
    cost = gate_cost or config.gate_cost[0]
    gate_opt = (torch.optim.Adam([controller.alpha], lr=lr) if config.gate_optimizer == "adam"
                else torch.optim.SGD([controller.alpha], lr=lr))
    dev_examples = list(dev)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []

    def gate_step(step: int) -> None:
        # Second level: the gate logits on a dev batch (first-order DARTS).
        idx = rng.choice(len(dev_examples), size=min(config.batch_size, len(dev_examples)), replace=False)
        batch = [dev_examples[i] for i in idx]
        labels = torch.tensor([e.label for e in batch], device=harness.device)
        # Label-word rows only: class scores are normalised over classes, so the full vocabulary adds
        # nothing to this loss or its gradient (as in Harness.train).
        out = harness.score(batch, template, verbalizer, grad=True)
        loss = nn.functional.cross_entropy(verbalizer.class_logprobs(out.word_logprobs.float()), labels)
        gate_opt.zero_grad()
        loss.backward()
        grad = controller.alpha.grad
        grad_norm = float(grad.norm()) if grad is not None else 0.0
        if grad is not None and cost == "per_parameter":
            grad.div_((controller.sizes / controller.sizes.mean()).to(grad.dtype))
        if grad is not None and config.gate_optimizer == "normalized_sgd":
            # One scale for all gates: a step moves the gates by ~lr in RMS, and a gate whose module
            # matters more on dev moves further (Adam would move every consistent gate by lr).
            grad.div_(grad.pow(2).mean().sqrt().clamp_min(1e-12))
        gate_opt.step()
        history.append({"step": step, "dev_loss": float(loss.detach()), "shift": controller.shift,
                        "expected_params": controller.expected_parameters(), "gate_grad_norm": grad_norm})

    harness.input_hooks.insert(0, controller.resample)
    controller.sampling = True
    delta.attach(harness)
    try:
        if config.warmup_epochs > 0:
            harness.train(train, template, verbalizer, delta.parameters(), epochs=config.warmup_epochs, lr=config.lr,
                          batch_size=config.batch_size, seed=seed)
        if config.search_epochs > 0:
            harness.train(train, template, verbalizer, delta.parameters(), epochs=config.search_epochs, lr=config.lr,
                          batch_size=config.batch_size, seed=seed + 1, on_step=gate_step)
    finally:
        delta.detach()
        controller.sampling = False
        harness.input_hooks.remove(controller.resample)
    with torch.no_grad():
        probs = controller.probabilities().cpu().tolist()
    chosen = select_within_budget(probs, sizes, budget)
    structure = [entries[i] for i in chosen]
    used = sum(sizes[i] for i in chosen)
    table = structure_table(structure, [sizes[i] for i in chosen], count_parameters(harness.model))
    return S3DeltaResult(structure, used, budget, probs, len(entries), table, time.perf_counter() - start, history,
                         controller.alpha.detach().cpu().tolist())


_LAYER = re.compile(r"\.(\d+)\.")


def group_of(entry: dict[str, Any]) -> tuple[str, int | None]:
    """``("lora:self_attn.q_proj", layer)`` — the switch group of an entry and its layer."""
    m = _LAYER.search(entry["target"])
    position = entry["target"][m.end():] if m else entry["target"]
    return f"{entry['kind']}:{position}", int(m.group(1)) if m else None


def blackbox_structure(trial: optuna.Trial, entries: list[dict[str, Any]], sizes: Sequence[int], budget: int,
                       config: S3DeltaConfig, seed: int) -> list[int]:
    """One TPE-sampled structure: group switches × a layer subset, repaired to the budget."""
    groups = sorted({group_of(e)[0] for e in entries})
    layers = sorted({g for e in entries if (g := group_of(e)[1]) is not None})
    on = {g for g in groups if suggest(trial, f"on[{g}]", [False, True])}
    layer_choice = suggest(trial, "layers", list(config.layer_choices))
    half = layers[len(layers) // 2] if layers else 0
    keep_layer = {"all": lambda i: True, "upper": lambda i: i >= half, "lower": lambda i: i < half,
                  "even": lambda i: i % 2 == 0, "odd": lambda i: i % 2 == 1}[layer_choice]
    chosen = [i for i, e in enumerate(entries) if group_of(e)[0] in on
              and (group_of(e)[1] is None or keep_layer(group_of(e)[1]))]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(chosen))
    # Repair: drop random members until the structure fits the budget.
    while order and sum(sizes[i] for i in order) > budget:
        order.pop()
    if not order:
        # Nothing switched on (or nothing fits): a random structure that fills the budget instead.
        order = select_within_budget(list(rng.random(len(entries))), sizes, budget)
    return sorted(int(i) for i in order)


def train_structure(harness: Harness, structure: list[dict[str, Any]], train: Split, template: Template,
                    verbalizer: Verbalizer, config: S3DeltaConfig, seed: int) -> Delta:
    """Re-train a structure from scratch (fresh initialisation); returns it attached."""
    torch.manual_seed(seed)
    delta = Delta.from_structure(harness, structure).attach(harness)
    try:
        harness.train(train, template, verbalizer, delta.parameters(), epochs=config.epochs, lr=config.lr,
                      batch_size=config.batch_size, seed=seed)
    except BaseException:
        delta.detach()
        raise
    return delta


@register
class S3DeltaSearcher(Searcher):
    """One trial = one structure under the budget (found by bi-level search or sampled by TPE), re-trained and scored on dev."""

    name = "s3delta"
    config_class = S3DeltaConfig
    ordered_grid = True  # the first listed values (the defaults) run first

    def grid(self) -> list[dict[str, Any]] | None:
        """Differentiable search: every combination of the listed settings once (a finite space);
        blackbox: TPE samples the structure switches (a grid would be random search)."""
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        return cfg.grid() if cfg.strategy == "differentiable" else None

    def check(self, ctx: SearchContext) -> None:
        """Every module pattern matches on this backbone and the budget constrains every space
        (checked before the study opens, not in its first trial)."""
        super().check(ctx)
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        budget = budget_params(ctx.harness, cfg.budget_percent)
        for space in cfg.spaces or [None]:
            restricted = cfg.restricted(space) if space else cfg
            entries = search_space(ctx.harness, restricted)
            try:
                check_budget(budget, Delta.from_structure(ctx.harness, entries).module_parameters())
            except AutoPromptError as exc:
                raise AutoPromptError(f"{exc}" + (f" (space {space!r})" if space else "")) from None

    def run_trial(self, trial: optuna.Trial, ctx: SearchContext) -> TrialOutcome:
        cfg: S3DeltaConfig = self.config  # type: ignore[assignment]
        harness, task = ctx.harness, ctx.task
        template, verbalizer = as_template(cfg.template), cfg.verbalizer()
        seed = ctx.seed + trial.number
        start = time.perf_counter()
        info: dict[str, Any] = {"strategy": cfg.strategy, "budget_percent": cfg.budget_percent}
        point = cfg.sample(trial)
        if "space" in point:
            info["space"] = point["space"]
            cfg = cfg.restricted(info["space"])
        if cfg.strategy == "differentiable":
            gate_lr, temp, cost = point["gate_lr"], point["temperature"], point["gate_cost"]
            found = s3delta_search(harness, task.train, task.dev, template, verbalizer, cfg, seed=seed,
                                   gate_lr=gate_lr, temperature=temp, gate_cost=cost)
            structure = found.structure
            info["search_seconds"] = round(found.seconds, 2)
            info["candidates"] = found.candidates
        else:
            entries = search_space(harness, cfg)
            sizes = Delta.from_structure(harness, entries).module_parameters()
            budget = budget_params(harness, cfg.budget_percent)
            check_budget(budget, sizes)
            structure = [entries[i] for i in blackbox_structure(trial, entries, sizes, budget, cfg, seed)]
            info["candidates"] = len(entries)
        delta = train_structure(harness, structure, task.train, template, verbalizer, cfg, seed)
        try:
            dev = harness.evaluate(task.dev, template, verbalizer)
            backbone = count_parameters(harness.model)
            info.update(parameters=delta.num_parameters(), fraction=delta.num_parameters() / backbone,
                        modules=len(structure), table=delta.table(harness), structure=structure,
                        seconds=round(time.perf_counter() - start, 2))
        finally:
            delta.detach()
        # The trained delta travels with the prompt: the backbone saves it with the trial.
        return TrialOutcome(Candidate([template], verbalizer).with_delta(delta), dev, {"delta": info})


def describe_budget(harness: Any, config: S3DeltaConfig) -> str:
    entries = search_space(harness, config)
    sizes = Delta.from_structure(harness, entries).module_parameters()
    budget = budget_params(harness, config.budget_percent)
    return (f"{len(entries)} candidates, {sum(sizes):,} parameters in all; budget {budget:,} "
            f"({config.budget_percent}% of {count_parameters(harness.model):,}); "
            f"the space is {math.fsum(sizes) / max(1, budget):.1f}x the budget")
