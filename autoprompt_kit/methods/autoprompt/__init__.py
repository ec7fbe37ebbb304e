"""AutoPrompt (Shin et al., EMNLP 2020): gradient-guided trigger-token search + label-token search.

Trigger search, per iteration (defaults from the paper's reference code where CPU allows):

1. gradient of the gold label log-likelihood (log Σ_{w ∈ gold class} p(w), exact probabilities)
   w.r.t. the trigger-slot input embeddings, over ``batch_size × accumulation_steps`` train
   examples (``Harness.embedding_gradient``);
2. one trigger position at random; candidate tokens = top ``num_candidates`` of ``-e_w · ∇``
   over the filtered vocabulary (HotFlip's first-order estimate);
3. the current trigger and every candidate are scored on a fresh train batch — **all candidates in
   one batched pass** (``Harness.score_blocks``; the reference runs one forward per candidate);
4. the best candidate replaces the current token if its loss is lower; the template is then
   scored on dev and the best-on-dev trigger is kept.

Label-token search (§2.2): logistic regression (scikit-learn) on the mask hidden states of the
train examples; every vocabulary token is scored by its output embedding against the class
weights; the top ``k`` per class become the verbalizer.
"""

from .config import AutoPromptConfig
from .searcher import AutoPromptSearcher
from .triggers import (
    TriggerSearch,
    TriggerSearchResult,
    init_triggers,
    label_token_search,
    named_triggers,
    resize_triggers,
    trigger_token_mask,
)

__all__ = [
    "AutoPromptConfig",
    "AutoPromptSearcher",
    "TriggerSearch",
    "TriggerSearchResult",
    "init_triggers",
    "label_token_search",
    "named_triggers",
    "resize_triggers",
    "trigger_token_mask",
]
