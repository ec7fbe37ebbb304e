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

from .config import GATE_COSTS, GATE_OPTIMIZERS, KIND_TARGETS, LINEAR, STRATEGIES, S3DeltaConfig
from .searcher import S3DeltaSearcher
from .structure_search import (
    GateController,
    S3DeltaResult,
    blackbox_structure,
    budget_params,
    check_budget,
    describe_budget,
    group_of,
    s3delta_search,
    search_space,
    select_within_budget,
    solve_shift,
    train_structure,
)

__all__ = [
    "GATE_COSTS",
    "GATE_OPTIMIZERS",
    "KIND_TARGETS",
    "LINEAR",
    "STRATEGIES",
    "GateController",
    "S3DeltaConfig",
    "S3DeltaResult",
    "S3DeltaSearcher",
    "blackbox_structure",
    "budget_params",
    "check_budget",
    "describe_budget",
    "group_of",
    "s3delta_search",
    "search_space",
    "select_within_budget",
    "solve_shift",
    "train_structure",
]
