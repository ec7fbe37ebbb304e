"""Trigger-token search (HotFlip candidates, batched re-scoring) and label-token search."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import AutoPromptError
from ...models.vocab import token_strings, word_of, word_token_mask
from ...prompts import Template, Verbalizer
from ...prompts.template import Trigger

if TYPE_CHECKING:
    from ...data import Split
    from ...harness import Harness

logger = logging.getLogger(__name__)


def resize_triggers(template: Template, n: int) -> Template:
    """The template with its run of trigger slots replaced by ``n`` empty slots."""
    if template.num_triggers == 0:
        raise AutoPromptError(f"template {template.text!r} has no {{trigger}} slot for AutoPrompt to fill")
    if n < 1:
        raise AutoPromptError("num_triggers must be at least 1")
    parts: list[Any] = []
    placed = False
    for part in template.parts:
        if isinstance(part, Trigger):
            if not placed:
                parts.extend(Trigger() for _ in range(n))
                placed = True
            continue
        parts.append(part)
    text = re.sub(r"\{trigger(\*\d+)?\}(\s*\{trigger(\*\d+)?\})*", f"{{trigger*{n}}}", template.text, count=1)
    return Template(text, tuple(parts))


@dataclass
class TriggerSearchResult:
    template: Template
    dev_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


class TriggerSearch:
    """AutoPrompt's trigger search on the shared harness.

    Args:
        harness: the model.
        verbalizer: label words (AutoPrompt aggregates a class's words with ``sum``).
        num_candidates: candidates per iteration (``k``).
        batch_size: examples per gradient / candidate batch.
        accumulation_steps: batches per gradient estimate and per candidate evaluation.
        token_mask: allowed trigger tokens ``(V,)``; see :func:`trigger_token_mask`.
        seed: batches and positions are drawn from this seed.
        loss: ``likelihood`` (AutoPrompt's) or ``cross_entropy`` (normalised over classes, which
            also pushes the other classes down — useful for a model with a strong class bias).
    """

    def __init__(
        self,
        harness: Harness,
        verbalizer: Verbalizer,
        *,
        num_candidates: int = 10,
        batch_size: int = 16,
        accumulation_steps: int = 1,
        token_mask: torch.Tensor | None = None,
        seed: int = 0,
        loss: str = "likelihood",
    ) -> None:
        if num_candidates < 1:
            raise AutoPromptError(f"num_candidates (k) must be at least 1, got {num_candidates}")
        if batch_size < 1 or accumulation_steps < 1:
            raise AutoPromptError("batch_size and accumulation_steps must be at least 1")
        self.harness = harness
        self.verbalizer = verbalizer
        self.loss = loss
        self.k = num_candidates
        self.batch_size = batch_size
        self.accumulation_steps = accumulation_steps
        self.rng = np.random.default_rng(seed)
        vocab = harness.model.get_input_embeddings().weight.shape[0]
        self.token_mask = token_mask if token_mask is not None else torch.ones(vocab, dtype=torch.bool)
        if not bool(self.token_mask.any()):
            raise AutoPromptError("the trigger vocabulary filter removes every token")

    def _sample(self, train: Split) -> Split:
        n = min(len(train), self.batch_size * self.accumulation_steps)
        return train[self.rng.choice(len(train), size=n, replace=False)]

    def candidates(self, template: Template, batch: Split, position: int) -> list[int]:
        """Top-k tokens for one trigger slot by the first-order estimate ``-e_w · ∇loss``."""
        grads, _ = self.harness.embedding_gradient(batch, template, self.verbalizer, loss=self.loss)
        emb = self.harness.model.get_input_embeddings().weight
        scores = -(emb.detach() @ grads[position].to(emb.dtype)).float()
        scores[~self.token_mask.to(scores.device)] = float("-inf")
        current = template.trigger_ids[position]
        if current is not None:
            scores[current] = float("-inf")
        k = min(self.k, int(torch.isfinite(scores).sum()))
        return scores.topk(k).indices.tolist()

    def losses(self, templates: Sequence[Template], batch: Split) -> list[float]:
        """Mean gold log-likelihood loss of each template on one batch, all templates in one pass."""
        labels = torch.tensor([e.label for e in batch], device=self.harness.device)
        outs = self.harness.score_blocks(list(templates), [batch] * len(templates), self.verbalizer, exact=True)
        return [float(-self.verbalizer.gold_logprob(o.word_logprobs, labels, self.loss).mean()) for o in outs]

    def step(self, template: Template, train: Split) -> tuple[Template, dict[str, Any]]:
        """One iteration: propose candidates for one slot, keep the best if it lowers the loss."""
        position = int(self.rng.integers(template.num_triggers))
        ids = [int(i) for i in template.trigger_ids]  # type: ignore[arg-type]  # filled before the search steps
        cands = self.candidates(template, self._sample(train), position)
        trials = [template] + [template.with_triggers(ids[:position] + [c] + ids[position + 1 :]) for c in cands]
        losses = self.losses(trials, self._sample(train))
        best = int(np.argmin(losses))
        info = {"position": position, "loss": losses[0], "best_loss": losses[best], "swapped": best > 0}
        return (trials[best] if best > 0 else template), info

    def run(
        self,
        template: Template,
        train: Split,
        dev: Split,
        iterations: int,
        on_iteration: Callable[[int, float, Template], None] | None = None,
    ) -> TriggerSearchResult:
        template = named_triggers(self.harness, template)
        best = TriggerSearchResult(template, self.harness.evaluate(dev, template, self.verbalizer).accuracy)
        current, current_dev = template, best.dev_accuracy
        for it in range(iterations):
            current, info = self.step(current, train)
            if info["swapped"]:
                current = named_triggers(self.harness, current)
                current_dev = self.harness.evaluate(dev, current, self.verbalizer).accuracy
                if current_dev > best.dev_accuracy:
                    best = TriggerSearchResult(current, current_dev, best.history)
            info.update(iteration=it, dev_accuracy=current_dev, triggers=current.display())
            best.history.append(info)
            logger.info("iteration %d: %s", it, info)
            if on_iteration:
                on_iteration(it, best.dev_accuracy, current)
        return best


def named_triggers(harness: Harness, template: Template) -> Template:
    """Attach each filled trigger's token text (for readable output)."""
    ids = [i for i in template.trigger_ids if i is not None]
    if len(ids) < template.num_triggers:  # an empty slot: nothing to name yet
        return template
    return template.with_triggers(ids, harness.tokenizer.convert_ids_to_tokens(ids))


def init_triggers(harness: Harness, template: Template, init: str) -> Template:
    """Fill every trigger slot with the initial token (``mask`` = the mask token, else a word)."""
    tok = harness.tokenizer
    if init == "mask" and tok.mask_token_id is not None:
        token_id = int(tok.mask_token_id)
    elif init == "mask":
        # No mask token (causal, seq2seq): a neutral one-token word; on a BPE vocabulary "the" may be
        # several tokens, and the default space must still run.
        fitting = (ids for word in ("the", "a", ".", ",") if len(ids := harness.encoder.word_ids(word, True)) == 1)
        token_id = next(fitting, [harness.encoder.soft_fallback_id])[0]
    else:
        word = "the" if init == "mask" else init
        ids = harness.encoder.word_ids(word, True)
        if len(ids) != 1:
            raise AutoPromptError(f"initial trigger token {init!r} is {len(ids)} tokens; choose a single-token word")
        token_id = ids[0]
    return template.with_triggers([token_id] * template.num_triggers)


def trigger_token_mask(
    harness: Harness,
    verbalizer: Verbalizer,
    *,
    word_initial: bool = True,
    lowercase_only: bool = False,
    exclude_words: Sequence[str] = (),
) -> torch.Tensor:
    """Allowed trigger tokens: words only, never a label word's tokens or a user-excluded word."""
    label_ids = {i for w in verbalizer.flat_words for sp in (True, False) for i in harness.encoder.word_ids(w, sp)}
    vocab = harness.model.get_input_embeddings().weight.shape[0]
    mask = word_token_mask(
        harness.tokenizer,
        vocab,
        word_initial=word_initial,
        lowercase_only=lowercase_only,
        exclude_ids=label_ids,
        exclude_words=list(exclude_words) + verbalizer.flat_words,
    )
    if not bool(mask.any()):
        raise AutoPromptError("the trigger vocabulary filter removes every token")
    return mask


def label_token_search(
    harness: Harness,
    train: Split,
    template: Template,
    labels: Sequence[str],
    k: int,
    *,
    token_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> Verbalizer:
    """AutoPrompt §2.2: top-``k`` label tokens per class from a classifier on mask hidden states."""
    from sklearn.linear_model import LogisticRegression

    if k < 1:
        raise AutoPromptError("label tokens per class (k) must be at least 1")
    y = train.labels
    # scikit-learn fits only the classes it sees: a missing one would shift every later class's row.
    missing = [label for c, label in enumerate(labels) if not (y == c).any()]
    if missing:
        raise AutoPromptError(f"label-token search: no train example of class(es) {missing}")
    if int(y.max()) >= len(labels):
        raise AutoPromptError(f"label-token search: train has label {int(y.max())} but only {len(labels)} classes")
    hidden = harness.mask_hidden(train, template).float().cpu().numpy()
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(hidden, y)
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: scikit-learn keeps one row; the two classes are ±half of it
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    out_emb = harness.head.weight.detach().float().cpu()
    logits = out_emb @ torch.tensor(coef.T, dtype=torch.float32) + torch.tensor(bias, dtype=torch.float32)
    probs = torch.softmax(logits, dim=1)
    mask = token_mask if token_mask is not None else word_token_mask(harness.tokenizer, out_emb.shape[0])
    mask = mask[: probs.shape[0]]
    # Each token goes to the class it favours most, so no token is a label word of two classes.
    favourite = probs.argmax(dim=1)
    strings = token_strings(harness.tokenizer)
    words: list[list[str]] = []
    free = mask.clone()
    for c, label in enumerate(labels):
        allowed = free & (favourite == c)
        if not bool(allowed.any()):
            # A weak classifier can make every token favour one class: fall back to this class's
            # most probable tokens (still never another class's label token).
            logger.warning("label-token search: no token favours class %r; using its most probable tokens", label)
            allowed = free
        if not bool(allowed.any()):
            raise AutoPromptError(f"label-token search: no vocabulary token left for class {label!r}")
        scores = torch.where(allowed, probs[:, c], torch.full_like(probs[:, c], -1.0))
        top = scores.topk(min(k, int(allowed.sum()))).indices.tolist()
        free[top] = False
        words.append([word_of(strings[i])[0] for i in top])
    return Verbalizer.from_words(dict(zip(labels, words)), aggregation="sum")
