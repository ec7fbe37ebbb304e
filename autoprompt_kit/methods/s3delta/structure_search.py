"""S3Delta's structure search: the candidate modules, the budget, the gates (shifted global sigmoid,
bi-level updates) and the black-box alternative; then re-training the found structure."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...delta import Delta, DeltaSpec, count_parameters
from ...delta.structure import structure_table
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer, as_template, as_verbalizer
from ...search.base import suggest
from .config import S3DeltaConfig

if TYPE_CHECKING:
    import optuna

    from ...data import Split
    from ...harness import Harness

logger = logging.getLogger(__name__)


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
        raise AutoPromptError(
            f"a budget of {budget:,} parameters fits no candidate: the smallest has {min(sizes):,} "
            "(raise budget_percent or add smaller candidates)"
        )
    if budget >= sum(sizes):
        raise AutoPromptError(
            f"a budget of {budget:,} parameters covers the whole search space ({sum(sizes):,}); "
            "lower budget_percent or widen the space"
        )


def solve_shift(alpha: torch.Tensor, sizes: torch.Tensor, budget: float, beta: float = 1.0, iters: int = 100) -> float:
    """The shift ``b`` with ``Σ σ((α_i − b)/β)·c_i = budget`` (bisection; the sum decreases in ``b``)."""
    total = float(sizes.sum())
    if not 0 < budget < total:
        raise AutoPromptError(
            f"the budget {budget:,.0f} must lie strictly between 0 and the space's {total:,.0f} parameters"
        )
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
    sizes: torch.Tensor  # a buffer: parameters per gated module
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


def s3delta_search(
    harness: Harness,
    train: Split,
    dev: Split,
    template: Template | str,
    verbalizer: Verbalizer | dict[str, Any],
    config: S3DeltaConfig,
    seed: int = 0,
    gate_lr: float | None = None,
    temperature: float | None = None,
    gate_cost: str | None = None,
) -> S3DeltaResult:
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
    controller = GateController(
        sizes, budget, config.beta, float(temperature if temperature is not None else config.temperature[0])
    )
    controller.to(next(harness.model.parameters()).device)
    for i, module in enumerate(delta.deltas):
        module.gate = lambda i=i: controller.gate(i)
    lr = float(gate_lr if gate_lr is not None else config.gate_lr[0])
    cost = gate_cost or config.gate_cost[0]
    gate_opt = (
        torch.optim.Adam([controller.alpha], lr=lr)
        if config.gate_optimizer == "adam"
        else torch.optim.SGD([controller.alpha], lr=lr)
    )
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
        history.append(
            {
                "step": step,
                "dev_loss": float(loss.detach()),
                "shift": controller.shift,
                "expected_params": controller.expected_parameters(),
                "gate_grad_norm": grad_norm,
            }
        )

    harness.input_hooks.insert(0, controller.resample)
    controller.sampling = True
    delta.attach(harness)
    try:
        if config.warmup_epochs > 0:
            harness.train(
                train,
                template,
                verbalizer,
                delta.parameters(),
                epochs=config.warmup_epochs,
                lr=config.lr,
                batch_size=config.batch_size,
                seed=seed,
            )
        if config.search_epochs > 0:
            harness.train(
                train,
                template,
                verbalizer,
                delta.parameters(),
                epochs=config.search_epochs,
                lr=config.lr,
                batch_size=config.batch_size,
                seed=seed + 1,
                on_step=gate_step,
            )
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
    return S3DeltaResult(
        structure,
        used,
        budget,
        probs,
        len(entries),
        table,
        time.perf_counter() - start,
        history,
        controller.alpha.detach().cpu().tolist(),
    )


_LAYER = re.compile(r"\.(\d+)\.")


def group_of(entry: dict[str, Any]) -> tuple[str, int | None]:
    """``("lora:self_attn.q_proj", layer)`` — the switch group of an entry and its layer."""
    m = _LAYER.search(entry["target"])
    position = entry["target"][m.end() :] if m else entry["target"]
    return f"{entry['kind']}:{position}", int(m.group(1)) if m else None


def blackbox_structure(
    trial: optuna.Trial,
    entries: list[dict[str, Any]],
    sizes: Sequence[int],
    budget: int,
    config: S3DeltaConfig,
    seed: int,
) -> list[int]:
    """One TPE-sampled structure: group switches × a layer subset, repaired to the budget."""
    groups = sorted({group_of(e)[0] for e in entries})
    layers = sorted({g for e in entries if (g := group_of(e)[1]) is not None})
    on = {g for g in groups if suggest(trial, f"on[{g}]", [False, True])}
    layer_choice = suggest(trial, "layers", list(config.layer_choices))
    half = layers[len(layers) // 2] if layers else 0
    keep_layer = {
        "all": lambda i: True,
        "upper": lambda i: i >= half,
        "lower": lambda i: i < half,
        "even": lambda i: i % 2 == 0,
        "odd": lambda i: i % 2 == 1,
    }[layer_choice]
    chosen = [
        i
        for i, e in enumerate(entries)
        if group_of(e)[0] in on and (group_of(e)[1] is None or keep_layer(group_of(e)[1]))
    ]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(chosen))
    # Repair: drop random members until the structure fits the budget.
    while order and sum(sizes[i] for i in order) > budget:
        order.pop()
    if not order:
        # Nothing switched on (or nothing fits): a random structure that fills the budget instead.
        order = select_within_budget(list(rng.random(len(entries))), sizes, budget)
    return sorted(int(i) for i in order)


def train_structure(
    harness: Harness,
    structure: list[dict[str, Any]],
    train: Split,
    template: Template,
    verbalizer: Verbalizer,
    config: S3DeltaConfig,
    seed: int,
) -> Delta:
    """Re-train a structure from scratch (fresh initialisation); returns it attached."""
    torch.manual_seed(seed)
    delta = Delta.from_structure(harness, structure).attach(harness)
    try:
        harness.train(
            train,
            template,
            verbalizer,
            delta.parameters(),
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=seed,
        )
    except BaseException:
        delta.detach()
        raise
    return delta


def describe_budget(harness: Any, config: S3DeltaConfig) -> str:
    entries = search_space(harness, config)
    sizes = Delta.from_structure(harness, entries).module_parameters()
    budget = budget_params(harness, config.budget_percent)
    return (
        f"{len(entries)} candidates, {sum(sizes):,} parameters in all; budget {budget:,} "
        f"({config.budget_percent}% of {count_parameters(harness.model):,}); "
        f"the space is {math.fsum(sizes) / max(1, budget):.1f}x the budget"
    )
