"""Mask hidden states of the embedded model, computed once per (split, template) and cached on disk.

The KPT and ProtoVerb example scripts score many verbalizers and prototype heads on the same test
split. Everything below the output layer is independent of the verbalizer, so one
``Harness.mask_hidden`` pass is stored under ``runs/mask_cache/``; word scores for any set of
single-token words then cost only the output layer
(:func:`autoprompt_kit.methods.kpt.single_token_logprobs`; the scripts check it against
``Harness.score`` on a few examples before they report anything).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from autoprompt_kit import Harness, Split, Template

CACHE = Path("runs/mask_cache")


def cached_mask_hidden(harness: Harness, split: Split, template: str, tag: str) -> torch.Tensor:
    """``harness.mask_hidden(split, template)`` as float32 on the CPU, cached by split fingerprint and template."""
    key = hashlib.sha1(f"{harness.model_name}|{template}|{split.fingerprint}".encode()).hexdigest()[:16]
    path = CACHE / f"{tag}-{key}.pt"
    if path.exists():
        return torch.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    hidden = harness.mask_hidden(split, Template(template)).float().cpu()
    torch.save(hidden, path)
    return hidden


def check_against_harness(harness: Harness, split: Split, hidden: torch.Tensor, template: str,
                          words: list[str], n: int = 8) -> float:
    """Largest difference between cached-path and harness word log-probs on the first ``n`` examples."""
    from autoprompt_kit import Verbalizer
    from autoprompt_kit.methods.kpt import single_token_logprobs

    sub = split[list(range(n))]
    direct = harness.score(sub, template, Verbalizer(tuple((w,) for w in words))).word_logprobs.float().cpu()
    cached = single_token_logprobs(harness, hidden[:n], words)
    return float((direct - cached).abs().max())
