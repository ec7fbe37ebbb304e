"""KPT's expansion and refinement: from seed words to a calibrated, filtered, optionally weighted
verbalizer.

Pipeline (Hu et al., ACL 2022), with what each step removes recorded as ``(word, class, reason)``:

1. **expand** each class's seed words through the chosen sources (:mod:`.knowledge`); a word found
   for two classes is dropped from both — except a seed word, which stays in its own class;
2. **tokenization**: words longer than ``max_tokens`` tokens at the mask are dropped. Kept
   multi-token words are scored whole by the harness: the sum of their tokens' log-probabilities
   (chain rule; on a causal LM the continuation is fed token by token, one extra row per distinct
   prefix; on an MLM one mask per token), so a multi-token word is never truncated to its first
   token. Its prior is estimated the same way, which keeps calibration fair across lengths;
3. **frequency**: the contextualised prior ``p(w)`` = mean of ``p(w | x)`` over unlabelled support
   examples; words whose prior is below the ``prior_cut`` quantile of the vocabulary's word tokens
   (priors from ``Harness.mask_logprobs(reduce="mean")``) are dropped;
4. **relevance**: calibrated word probabilities over the support set form one vector per word;
   ``tf`` = cosine to the own class's seed vector, ``idf`` = 1 / mean cosine to other classes;
   in each class, the ``relevance_cut`` fraction of its non-seed words with the lowest ``tf·idf``
   is dropped (per class, so that no class is stripped);
5. **contextualised calibration**: the verbalizer stores each word's prior (``calibration:
   contextual``) and divides by it at scoring time;
6. **learnable refinement** (few-shot): one weight per word (init 0, softmax within its class)
   trained with ``Harness.train`` on the labelled train split, the language model frozen.

Seed words are never removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer, as_template
from . import knowledge

if TYPE_CHECKING:
    from ...data import Split
    from ...harness import Harness

logger = logging.getLogger(__name__)

MISSING_SEED = ("warn", "error")


@dataclass
class ExpansionSettings:
    """Where related words come from (one trial's choices)."""

    sources: tuple[str, ...] = ("wordnet", "vader")
    relations: tuple[str, ...] = knowledge.WORDNET_RELATIONS
    depth: int = 1
    senses: int = 3
    vader_threshold: float = 2.0
    vader_max_words: int = 150
    kb_file: str | None = None
    neighbours: int = 20
    on_missing_seed: str = "warn"

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        bad = [s for s in self.sources if s not in knowledge.SOURCES]
        if bad:
            raise AutoPromptError(f"unknown knowledge source(s) {bad}; choose from {knowledge.SOURCES}")
        if "kb" in self.sources and not self.kb_file:
            raise AutoPromptError("the 'kb' source needs kb_file (a knowledge-base file)")
        if self.depth < 0 or self.senses < 1 or self.neighbours < 1 or self.vader_max_words < 1:
            raise AutoPromptError("depth must be >= 0; senses, neighbours and vader_max_words >= 1")
        if self.on_missing_seed not in MISSING_SEED:
            raise AutoPromptError(f"on_missing_seed must be one of {MISSING_SEED}, got {self.on_missing_seed!r}")


@dataclass
class Expansion:
    """Candidate words per class (seeds first) with the sources that proposed them, and removals."""

    labels: list[str]
    words: list[list[str]]
    seeds: list[list[str]]
    sources: list[dict[str, list[str]]]
    removed: list[dict[str, Any]] = field(default_factory=list)

    def all_words(self) -> list[str]:
        return sorted({w for ws in self.words for w in ws})


def expand(seeds: Mapping[str, Sequence[str]], settings: ExpansionSettings,
           harness: "Harness | None" = None) -> Expansion:
    """Gather related words for every class and drop words claimed by two classes (not seeds)."""
    labels = list(seeds)
    seed_lists = [[w.strip() for w in seeds[label]] for label in labels]
    if any(not ws for ws in seed_lists):
        raise AutoPromptError("every class needs at least one seed word")
    kb = knowledge.read_kb(settings.kb_file) if "kb" in settings.sources else {}
    found: list[dict[str, list[str]]] = []
    for label, class_seeds in zip(labels, seed_lists):
        words: dict[str, list[str]] = {w: ["seed"] for w in class_seeds}

        def add(new: Mapping[str, str], words: dict[str, list[str]] = words) -> None:
            for w, why in new.items():
                words.setdefault(w, []).append(why)

        if "wordnet" in settings.sources:
            for seed in class_seeds:
                related = knowledge.wordnet_related(seed, relations=settings.relations, depth=settings.depth,
                                                    senses=settings.senses)
                if related is None:
                    msg = (f"seed word {seed!r} (class {label!r}) is not in WordNet; it is kept but expands "
                           "through the other sources only")
                    if settings.on_missing_seed == "error":
                        raise AutoPromptError(msg.split(";")[0] + " (set on_missing_seed: warn to continue without it)")
                    logger.warning(msg)
                    continue
                add({w: f"wordnet:{why}:{seed}" for w, why in related.items()})
        if "vader" in settings.sources:
            vader, polarity = knowledge.vader_words(class_seeds, threshold=settings.vader_threshold,
                                                    max_words=settings.vader_max_words)
            if polarity == 0:
                logger.warning("VADER: no valence known for the seeds of class %r; no lexicon words added", label)
            add(vader)
        if "kb" in settings.sources:
            for key in [label.lower()] + [s.lower() for s in class_seeds]:
                add({w: f"kb:{key}" for w in kb.get(key, [])})
        if "embedding" in settings.sources:
            if harness is None:
                raise AutoPromptError("the 'embedding' source needs the model (pass harness)")
            add(knowledge.embedding_neighbours(harness, class_seeds, settings.neighbours))
        found.append(words)
    seed_sets = [set(ws) for ws in seed_lists]
    owners: dict[str, list[int]] = {}
    for c, words in enumerate(found):
        for w in words:
            owners.setdefault(w, []).append(c)
    removed = []
    out_words: list[list[str]] = []
    for c, words in enumerate(found):
        keep = []
        for w in words:
            if len(owners[w]) > 1 and w not in seed_sets[c]:
                others = [labels[o] for o in owners[w] if o != c]
                removed.append({"word": w, "class": labels[c], "reason": f"also found for {', '.join(others)}",
                                "sources": words[w]})
                continue
            keep.append(w)
        # Seeds first, in the user's order; then the rest as found.
        out_words.append(seed_lists[c] + [w for w in keep if w not in seed_sets[c]])
    return Expansion(labels, out_words, seed_lists, found, removed)


@dataclass
class SupportScores:
    """Scores of candidate words on unlabelled support examples (computed once, reused per trial).

    Attributes:
        words: the candidate words (columns).
        word_logprobs: ``(N, W)`` log-probabilities on the support examples (a per-example
            normalisation constant does not matter: everything below is invariant to it).
        word_prior: ``(W,)`` log of the mean probability over the support set (absolute).
        vocab_prior: ``(V',)`` prior log-probabilities of the vocabulary's word tokens (for quantiles).
        num_tokens: tokens of each word at the mask.
        too_long: words not scored because they have more than ``max_tokens`` tokens → their count.
    """

    words: list[str]
    word_logprobs: torch.Tensor
    word_prior: torch.Tensor
    vocab_prior: torch.Tensor
    num_tokens: list[int]
    too_long: dict[str, int] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}


def _space_before_mask(harness: "Harness", template: Template, example: Any) -> bool:
    return harness.encoder.encode(template, example).space_before_mask


def support_scores(harness: "Harness", support: "Split", template: Template | str, words: Sequence[str],
                   previous: SupportScores | None = None, max_tokens: int | None = None,
                   always: Sequence[str] = ()) -> SupportScores:
    """Scores of ``words`` on the support set: the full-vocabulary mean prior (one pass, skipped
    when ``previous`` has it) and exact scores of the words not in ``previous`` (one pass).

    Words with more than ``max_tokens`` tokens are not scored (the tokenization filter would drop
    them anyway), only recorded in ``too_long`` — except the ``always`` words (the seeds).
    """
    template = as_template(template)
    space = _space_before_mask(harness, template, next(iter(support)))
    too_long = dict(previous.too_long) if previous is not None else {}
    short = []
    for w in dict.fromkeys(words):
        n = len(harness.encoder.word_ids(w, space))
        if max_tokens is not None and n > max_tokens and w not in always:
            too_long[w] = n
        else:
            short.append(w)
    known = previous.index() if previous is not None else {}
    new = [w for w in short if w not in known]
    if previous is not None and not new:
        previous.too_long = too_long
        return previous
    if not new:
        raise AutoPromptError(f"no candidate word has at most {max_tokens} tokens")
    if previous is None:
        vocab = harness.mask_logprobs(support, template, reduce="mean").float().cpu()
        vocab_prior = vocab[knowledge.vocabulary_words(harness)[: vocab.shape[0]]]
    else:
        vocab_prior = previous.vocab_prior
    # A one-word "class" per word: the verbalizer only carries the words to score (it needs two
    # classes, so a lone new word is scored twice and the copy dropped).
    verb = Verbalizer(tuple((w,) for w in (new if len(new) > 1 else new * 2)))
    lp = harness.score(support, template, verb, exact=True).word_logprobs.float().cpu()[:, : len(new)]
    prior = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])
    ntok = [len(harness.encoder.word_ids(w, space)) for w in new]
    if previous is None:
        return SupportScores(new, lp, prior, vocab_prior, ntok, too_long)
    return SupportScores(previous.words + new, torch.cat([previous.word_logprobs, lp], dim=1),
                         torch.cat([previous.word_prior, prior]), vocab_prior, previous.num_tokens + ntok, too_long)


def support_scores_from_hidden(harness: "Harness", hidden: torch.Tensor, words: Sequence[str],
                               space_before: bool = True) -> SupportScores:
    """:func:`support_scores` from cached mask hidden states (single-token words only).

    For scripts that score one support set many times: ``hidden = harness.mask_hidden(support,
    template)`` once, then any candidate set costs only the output layer.
    """
    words = list(dict.fromkeys(words))
    vocab_sum = None
    with torch.no_grad():
        for _, logp in harness.output_logprobs(hidden.to(harness.device)):
            chunk = logp.exp().sum(dim=0)
            vocab_sum = chunk if vocab_sum is None else vocab_sum + chunk
    assert vocab_sum is not None
    vocab = (vocab_sum / hidden.shape[0]).clamp_min(1e-30).log().float().cpu()
    ids = single_token_ids(harness, words, space_before)
    lp = single_token_logprobs(harness, hidden, words, space_before)
    mask = knowledge.vocabulary_words(harness)[: vocab.shape[0]]
    return SupportScores(words, lp, vocab[torch.tensor(ids)], vocab[mask], [1] * len(words))


def single_token_ids(harness: "Harness", words: Sequence[str], space_before: bool = True) -> list[int]:
    ids = []
    for w in words:
        tok = harness.encoder.word_ids(w, space_before)
        if len(tok) != 1:
            raise AutoPromptError(f"{w!r} is {len(tok)} tokens; scoring from hidden states handles single-token words")
        ids.append(tok[0])
    return ids


def single_token_logprobs(harness: "Harness", hidden: torch.Tensor, words: Sequence[str],
                          space_before: bool = True) -> torch.Tensor:
    """``(N, W)`` log-probabilities of single-token words from mask hidden states, normalised over
    ``words`` — what ``Harness.score`` returns for a verbalizer of single-token words."""
    ids = torch.tensor(single_token_ids(harness, words, space_before))
    weight = harness.head.weight.detach().float().cpu()[ids]
    logits = hidden.float().cpu() @ weight.T
    cap = getattr(harness.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


@dataclass
class RefineSettings:
    """Noise filtering and calibration (one trial's choices)."""

    max_tokens: int = 1
    prior_cut: float = 0.5
    relevance_cut: float = 0.0
    calibration: str = "contextual"
    aggregation: str = "mean"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise AutoPromptError("max_tokens must be at least 1")
        if not 0.0 <= self.prior_cut < 1.0 or not 0.0 <= self.relevance_cut < 1.0:
            raise AutoPromptError(f"prior_cut and relevance_cut are fractions in [0, 1), got {self.prior_cut}, "
                                  f"{self.relevance_cut}")
        if self.calibration not in ("contextual", "none"):
            raise AutoPromptError(f"KPT calibration is 'contextual' or 'none', got {self.calibration!r}")
        if self.aggregation not in ("mean", "max", "sum"):
            raise AutoPromptError(f"KPT aggregation is mean, max or sum, got {self.aggregation!r}")


@dataclass
class KPTResult:
    """A refined verbalizer and the record of what was kept and removed (and why)."""

    verbalizer: Verbalizer
    removed: list[dict[str, Any]]
    kept: dict[str, list[dict[str, Any]]]

    def artifacts(self) -> dict[str, Any]:
        counts = {label: len(ws) for label, ws in self.kept.items()}
        return {"kept_words": self.kept, "removed_words": self.removed, "kept_counts": counts,
                "removed_count": len(self.removed)}


def refine(expansion: Expansion, scores: SupportScores, settings: RefineSettings) -> KPTResult:
    """Tokenization, frequency and relevance refinement; returns the calibrated verbalizer."""
    col = scores.index()
    removed = list(expansion.removed)
    missing = [w for ws in expansion.words for w in ws if w not in col and w not in scores.too_long]
    if missing:
        raise AutoPromptError(f"support scores lack {len(missing)} candidate words (e.g. {missing[:3]}); "
                              "compute them for every expanded word")
    seed_sets = [set(s) for s in expansion.seeds]
    threshold = (float(torch.quantile(scores.vocab_prior, settings.prior_cut)) if settings.prior_cut > 0
                 else -math.inf)
    classes: list[list[str]] = []
    for c, words in enumerate(expansion.words):
        keep = []
        for w in words:
            reason = None
            if w in scores.too_long or scores.num_tokens[col[w]] > settings.max_tokens:
                n = scores.too_long.get(w) or scores.num_tokens[col[w]]
                if w not in seed_sets[c]:
                    reason = f"{n} tokens > max_tokens {settings.max_tokens}"
            if reason is None and w not in seed_sets[c]:
                i = col[w]
                if float(scores.word_prior[i]) < threshold:
                    reason = (f"prior {math.exp(scores.word_prior[i]):.2e} below the {settings.prior_cut:.0%} "
                              f"vocabulary quantile {math.exp(threshold):.2e}")
            if reason:
                removed.append({"word": w, "class": expansion.labels[c], "reason": reason,
                                "sources": expansion.sources[c].get(w, [])})
            else:
                keep.append(w)
        classes.append(keep)
    relevance = _relevance(classes, expansion.seeds, scores)
    if settings.relevance_cut > 0:
        # The cut applies within each class: one global cut can strip a class whose words score
        # lower overall (seen on MR: 67 negative vs 21 positive words left, and lower accuracy).
        for c, ws in enumerate(classes):
            pool = sorted((relevance[w], w) for w in ws if w not in seed_sets[c])
            for score, w in pool[: int(len(pool) * settings.relevance_cut)]:
                classes[c].remove(w)
                removed.append({"word": w, "class": expansion.labels[c], "sources": expansion.sources[c].get(w, []),
                                "reason": f"relevance tf-idf {score:.3f} in the class's lowest "
                                          f"{settings.relevance_cut:.0%}"})
    prior = tuple(tuple(float(scores.word_prior[col[w]]) for w in ws) for ws in classes)
    verbalizer = Verbalizer(tuple(tuple(ws) for ws in classes), labels=tuple(expansion.labels),
                            aggregation=settings.aggregation, calibration=settings.calibration, word_prior=prior)
    kept = {label: [{"word": w, "prior": float(f"{math.exp(scores.word_prior[col[w]]):.3g}"),
                     "relevance": round(relevance[w], 4), "sources": expansion.sources[c].get(w, [])}
                    for w in ws] for c, (label, ws) in enumerate(zip(expansion.labels, classes))}
    return KPTResult(verbalizer, removed, kept)


def _relevance(classes: Sequence[Sequence[str]], seeds: Sequence[Sequence[str]], scores: SupportScores) -> dict[str, float]:
    """KPT's tf·idf relevance of each word to its class on the support set."""
    col = scores.index()
    words = [w for ws in classes for w in ws]
    idx = torch.tensor([col[w] for w in words])
    # Calibrated probabilities, normalised over the current label words (per-example constants cancel).
    calibrated = torch.softmax(scores.word_logprobs[:, idx] - scores.word_prior[idx], dim=1)
    vectors = torch.nn.functional.normalize(calibrated.T, dim=1)  # (W, N)
    pos = {w: i for i, w in enumerate(words)}
    class_vecs = torch.nn.functional.normalize(
        torch.stack([vectors[[pos[s] for s in ss if s in pos]].mean(dim=0) for ss in seeds]), dim=1)
    sims = (vectors @ class_vecs.T).clamp_min(1e-6)  # (W, C)
    out = {}
    n_classes = len(classes)
    for c, ws in enumerate(classes):
        for w in ws:
            row = sims[pos[w]]
            others = torch.cat([row[:c], row[c + 1:]]).mean() if n_classes > 1 else torch.tensor(1.0)
            out[w] = float(row[c] / others)
    return out


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients for every model weight (so training a verbalizer never back-propagates
    through the language model), and restore them afterwards."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def learn_weights(harness: "Harness", train: "Split", template: Template | str, verbalizer: Verbalizer, *,
                  epochs: int = 5, lr: float = 0.06, batch_size: int = 8, seed: int = 0) -> tuple[Verbalizer, list[float]]:
    """KPT's learnable refinement: per-word weights (softmax within class) trained on labelled data.

    Returns the verbalizer with ``aggregation: weighted`` and the learned weights, and the epoch losses.
    """
    logits = torch.zeros(len(verbalizer.flat_words), device=harness.device, requires_grad=True)

    def head(out: Any) -> torch.Tensor:
        return verbalizer.class_logprobs(out.word_logprobs.float(), weights=logits)

    with frozen(harness.model):
        losses = harness.train(train, template, verbalizer, [logits], epochs=epochs, lr=lr, batch_size=batch_size,
                               head=head, loss_fn=torch.nn.functional.nll_loss, seed=seed)
    weights, start = [], 0
    for ws in verbalizer.label_words:
        weights.append(tuple(torch.softmax(logits.detach()[start:start + len(ws)], dim=0).cpu().tolist()))
        start += len(ws)
    return verbalizer.replace(aggregation="weighted", weights=[list(w) for w in weights]), losses
