"""LM-BFF automatic label words: ``k`` candidate words per class (the paper's ``likelihood``: the
top-k vocabulary words by mean log-probability at the mask over the class's train examples; the
default ``contrastive`` also subtracts the other classes' mean, see :func:`label_word_search`);
assignments (one word per class) are ranked by zero-shot train accuracy — all ``k^C`` of them for a
few classes (up to :data:`EXHAUSTIVE_LIMIT`), beam search over classes for many
(:func:`search_assignments`) — and the best few by dev accuracy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...data import Split
from ...errors import AutoPromptError
from ...models.vocab import token_strings, word_of, word_token_mask
from ...prompts import Template, Verbalizer

if TYPE_CHECKING:
    from ...harness import Harness

logger = logging.getLogger(__name__)

LABEL_SEARCH_STRATEGIES = ("auto", "exhaustive", "beam")
#: ``auto`` enumerates every assignment up to this many (k^C); above it, beam search.
EXHAUSTIVE_LIMIT = 20_000


@dataclass
class LabelWordSearchResult:
    verbalizer: Verbalizer
    per_class: list[list[str]]  # the top-k candidate words of each class
    ranked: list[dict[str, Any]]  # assignments: words, train_accuracy, dev_accuracy
    strategy: str = "exhaustive"  # how assignments were searched: exhaustive or beam
    scored: int = 0  # assignments (full or partial) scored on train
    seconds: float = 0.0  # the assignment search alone (after the (N, V) pass)


@dataclass
class AssignmentSearch:
    """Assignments of one candidate per class, best first (indices into each class's candidates)."""

    combos: torch.Tensor  # (M, C) long: column c indexes class c's candidates
    accuracy: torch.Tensor  # (M,) zero-shot train accuracy
    margin: torch.Tensor  # (M,) mean gold-class margin (the tie-break)
    strategy: str
    scored: int


class _AssignmentScorer:
    """Zero-shot accuracy and mean gold margin of assignments, from the ``(N, C·k)`` log-probabilities
    of the candidate words (one column block per class), optionally restricted to a class subset."""

    def __init__(self, cand_lp: torch.Tensor, labels: np.ndarray, num: int, k: int) -> None:
        self.lp = cand_lp.float()  # (N, C*k)
        self.labels = torch.tensor(np.array(labels, dtype=np.int64))
        self.num, self.k = num, k
        self.scored = 0

    def __call__(self, combos: torch.Tensor, classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score assignments of the first ``classes`` classes (default all) on those classes' examples."""
        c = combos.shape[1] if classes is None else classes
        keep = self.labels < c
        lp, gold = self.lp[keep], self.labels[keep]
        cols = combos[:, :c] + torch.arange(c)[None] * self.k  # (M, c) columns of lp
        accs, margins = [], []
        step = max(1, 4_000_000 // max(1, len(gold) * c))  # bound the (N, m, c) block's memory
        for lo in range(0, len(cols), step):
            scores = lp[:, cols[lo : lo + step]]  # (N, m, c)
            acc = (scores.argmax(-1) == gold[:, None]).float().mean(0)
            gold_s = scores.gather(2, gold[:, None, None].expand(-1, scores.shape[1], 1)).squeeze(2)
            is_gold = torch.nn.functional.one_hot(gold, c).bool()[:, None, :]
            margin = (gold_s - scores.masked_fill(is_gold, float("-inf")).amax(-1)).mean(0)
            accs.append(acc)
            margins.append(margin)
        self.scored += len(cols)
        return torch.cat(accs), torch.cat(margins)


def _rank(combos: torch.Tensor, acc: torch.Tensor, margin: torch.Tensor) -> np.ndarray:
    """Order: accuracy, then margin (both descending), then the assignment itself (lexicographic),
    so that ties break the same way whichever strategy produced the assignments."""
    keys = [combos[:, c].numpy() for c in reversed(range(combos.shape[1]))]
    return np.lexsort(keys + [-margin.numpy(), -acc.numpy()])


def _distinct(cand: torch.Tensor, combos: torch.Tensor) -> torch.Tensor:
    """Which assignments use a different word for every class."""
    ids = cand[torch.arange(combos.shape[1])[None], combos].sort(dim=1).values
    return (ids[:, 1:] != ids[:, :-1]).all(dim=1) if combos.shape[1] > 1 else torch.ones(len(combos), dtype=torch.bool)


def search_assignments(
    cand_lp: torch.Tensor,
    labels: np.ndarray,
    cand: torch.Tensor,
    keep: int,
    *,
    strategy: str = "auto",
    beam: int = 100,
    exhaustive_limit: int = EXHAUSTIVE_LIMIT,
    max_combinations: int = 200_000,
) -> AssignmentSearch:
    """The ``keep`` best assignments (one distinct candidate word per class) by zero-shot accuracy.

    Args:
        cand_lp: ``(N, C·k)`` log-probabilities of every class's ``k`` candidates (class-major).
        labels: ``(N,)`` gold classes.
        cand: ``(C, k)`` candidate token ids (to tell words apart).
        keep: assignments returned.
        strategy: ``exhaustive`` scores all ``k^C`` assignments; ``beam`` adds one class at a time,
            scoring a partial assignment by accuracy among its classes on their examples and keeping
            the ``beam`` best, then polishes the final ones by coordinate ascent (each class's word
            swapped for its best alternative while it helps); ``auto`` is exhaustive up to
            ``exhaustive_limit`` assignments.
        beam: partial assignments kept per step.
        max_combinations: ``exhaustive`` refuses more assignments than this.
    """
    if strategy not in LABEL_SEARCH_STRATEGIES:
        raise AutoPromptError(f"label_search_strategy must be one of {LABEL_SEARCH_STRATEGIES}, got {strategy!r}")
    if beam < 1:
        raise AutoPromptError(f"label_beam must be at least 1, got {beam}")
    num, k = cand.shape
    total = k**num
    if strategy == "auto":
        strategy = "exhaustive" if total <= exhaustive_limit else "beam"
    score = _AssignmentScorer(cand_lp, labels, num, k)
    if strategy == "exhaustive":
        if total > max_combinations:
            raise AutoPromptError(
                f"exhaustive label-word search would score {total:,} assignments ({k}^{num}), more "
                f"than {max_combinations:,}; use label_search_strategy: beam (or auto), or lower k"
            )
        combos = torch.cartesian_prod(*[torch.arange(k)] * num).reshape(-1, num)
        combos = combos[_distinct(cand, combos)]
        if len(combos) == 0:
            raise AutoPromptError("label-word search: every assignment repeats a word across classes; raise k")
        acc, margin = score(combos)
    else:
        combos = torch.arange(k)[:, None]
        for c in range(1, num):
            ext = torch.cat([combos.repeat_interleave(k, 0), torch.arange(k).repeat(len(combos))[:, None]], dim=1)
            ext = ext[_distinct(cand, ext)]
            if len(ext) == 0:
                raise AutoPromptError(f"label-word search: no distinct word left for class {c}; raise k")
            acc, margin = score(ext, c + 1)
            order = _rank(ext, acc, margin)[: max(beam, keep) if c == num - 1 else beam]
            combos, acc, margin = ext[order], acc[order], margin[order]
        combos = _polish(combos[:keep], score, cand, combos, acc, margin)
        acc, margin = score(combos)
    order = _rank(combos, acc, margin)[:keep]
    return AssignmentSearch(combos[order], acc[order], margin[order], strategy, score.scored)


def _polish(
    start: torch.Tensor,
    score: _AssignmentScorer,
    cand: torch.Tensor,
    pool: torch.Tensor,
    pool_acc: torch.Tensor,
    pool_margin: torch.Tensor,
    sweeps: int = 3,
) -> torch.Tensor:
    """Coordinate ascent from each of ``start``: swap one class's word for the best alternative
    while that raises (accuracy, margin); returns ``pool`` plus the improved assignments, deduplicated."""
    num, k = cand.shape
    found = [pool]
    for combo in start:
        current = combo.clone()
        best = score(current[None])
        for _ in range(sweeps):
            moved = False
            for c in range(num):
                trials = current.repeat(k, 1)
                trials[:, c] = torch.arange(k)
                trials = trials[_distinct(cand, trials)]
                acc, margin = score(trials)
                top = int(_rank(trials, acc, margin)[0])
                if (float(acc[top]), float(margin[top])) > (float(best[0][0]), float(best[1][0])):
                    current, best, moved = trials[top].clone(), (acc[top : top + 1], margin[top : top + 1]), True
            if not moved:
                break
        found.append(current[None])
    return torch.unique(torch.cat(found), dim=0)


def label_word_search(
    harness: Harness,
    train: Split,
    dev: Split,
    template: Template | str,
    label_names: Sequence[str],
    *,
    k: int = 20,
    n_assignments: int = 10,
    candidates: str = "contrastive",
    pool: int = 1000,
    lowercase_only: bool = True,
    strategy: str = "auto",
    beam: int = 100,
    exhaustive_limit: int = EXHAUSTIVE_LIMIT,
    max_combinations: int = 200_000,
) -> LabelWordSearchResult:
    """LM-BFF's automatic label words with a fixed template.

    Candidates per class (``k`` whole-word tokens):

    * ``likelihood`` (the paper): highest mean log-probability at the mask over the class's train
      examples. With a biased model (Gemma 270M) every class gets the same generic words ("the",
      "not", "one"), which no assignment can separate.
    * ``contrastive`` (default): among the ``pool`` words most likely at the mask over all train
      examples, the highest mean log-probability on the class minus that on the other classes —
      words that are both plausible and class-specific (MR negative: "annoying", "worse", "boring").

    Assignments of one candidate per class (distinct words) are ranked by zero-shot train accuracy
    (ties: mean gold-class margin), all from one ``(N, V)`` pass over train; the paper enumerates all
    ``k^C``, which is only possible for a few classes, so :func:`search_assignments` does that up to
    ``exhaustive_limit`` assignments and beam search over classes above it (``strategy``). The top
    ``n_assignments`` are re-ranked by dev accuracy.
    """
    if candidates not in ("contrastive", "likelihood"):
        raise AutoPromptError(f"label-word candidates must be 'contrastive' or 'likelihood', got {candidates!r}")
    if strategy not in LABEL_SEARCH_STRATEGIES:
        raise AutoPromptError(f"label_search_strategy must be one of {LABEL_SEARCH_STRATEGIES}, got {strategy!r}")
    template = Template(template) if isinstance(template, str) else template
    num = len(label_names)
    if k < 1 or n_assignments < 1:
        raise AutoPromptError("label-word search needs k >= 1 and n_assignments >= 1")
    labels = train.labels
    missing = [label_names[c] for c in range(num) if not (labels == c).any()]
    if missing:
        raise AutoPromptError(f"label-word search: no train example of class(es) {missing}")
    vocab = harness.head.weight.shape[0]
    usable = word_token_mask(
        harness.tokenizer, vocab, word_initial=True, alphabetic=True, lowercase_only=lowercase_only
    )
    strings = token_strings(harness.tokenizer)
    lp_train = harness.mask_logprobs(train, template, reduce=None)  # (N, V): small, few-shot
    if candidates == "contrastive":
        overall = lp_train.exp().mean(dim=0).masked_fill(~usable, 0.0)
        keep = torch.zeros_like(usable)
        keep[overall.topk(min(pool, int(usable.sum()))).indices] = True
        usable = usable & keep
    per_class_ids: list[list[int]] = []
    for c in range(num):
        in_class = torch.as_tensor(labels == c)
        score = lp_train[in_class].mean(dim=0)
        if candidates == "contrastive":
            score = score - lp_train[~in_class].mean(dim=0)
        per_class_ids.append(score.masked_fill(~usable, float("-inf")).topk(min(k, int(usable.sum()))).indices.tolist())
    cand = torch.tensor(per_class_ids)  # (C, k)
    start = time.perf_counter()
    found = search_assignments(
        lp_train[:, cand.flatten()],
        labels,
        cand,
        n_assignments,
        strategy=strategy,
        beam=beam,
        exhaustive_limit=exhaustive_limit,
        max_combinations=max_combinations,
    )
    seconds = time.perf_counter() - start
    logger.info(
        "label-word search: %s over %d^%d assignments, %d scored in %.2fs",
        found.strategy,
        cand.shape[1],
        num,
        found.scored,
        seconds,
    )
    dev_lp = harness.mask_logprobs(dev, template, reduce=None)[:, cand.flatten()]
    dev_acc, _ = _AssignmentScorer(dev_lp, dev.labels, num, cand.shape[1])(found.combos)
    ranked: list[dict[str, Any]] = []
    for j in range(len(found.combos)):
        words = [word_of(strings[int(cand[c, int(found.combos[j, c])])])[0] for c in range(num)]
        ranked.append(
            {
                "words": dict(zip(label_names, words)),
                "train_accuracy": float(found.accuracy[j]),
                "dev_accuracy": float(dev_acc[j]),
            }
        )
    ranked.sort(key=lambda r: (-r["dev_accuracy"], -r["train_accuracy"]))
    per_class = [[word_of(strings[i])[0] for i in ids] for ids in per_class_ids]
    best = Verbalizer.from_words({name: [w] for name, w in ranked[0]["words"].items()})
    return LabelWordSearchResult(best, per_class, ranked, found.strategy, found.scored, round(seconds, 4))
