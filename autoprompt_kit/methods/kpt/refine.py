"""KPT's expansion and refinement: from seed words to a calibrated, filtered, optionally weighted
verbalizer.

Pipeline (Hu et al., ACL 2022), with what each step removes recorded as ``(word, class, reason)``:

1. **expand** each class's seed words through the chosen sources (:mod:`.knowledge`); a word found
   for two classes is dropped from both — except a seed word, which stays in its own class. The
   VADER source needs sentiment classes and refuses others (:func:`.knowledge.seed_valences`);
2. **tokenization**: words longer than ``max_tokens`` tokens at the mask are dropped. Kept
   multi-token words are scored whole by the harness: the sum of their tokens' log-probabilities
   (chain rule; on a causal LM the continuation is fed token by token, one extra row per distinct
   prefix; on an MLM one mask per token), so a multi-token word is never truncated to its first
   token. Its prior is estimated the same way, which keeps calibration fair across lengths;
3. **frequency**: the contextualised prior ``p(w)`` = mean of ``p(w | x)`` over unlabelled support
   examples; words whose prior is below the ``prior_cut`` quantile of the vocabulary's word tokens
   (priors from the same support pass) are dropped;
4. **presence** (domain): a word must be among the model's ``presence_rank`` most likely vocabulary
   words at the mask for at least ``presence_min`` of the support texts. A lexicon word the task's
   texts never bring up (MR with the VADER lexicon: "raping", "slavery", "terrorism") goes, however
   high its prior over the whole vocabulary;
5. **relevance** (class): each word's calibrated log-probability over the support texts, centred
   per text (by the mean over classes of their words' scores: what a text does to label words in
   general) and per word, is correlated with each class's seed profile (the mean of its seeds').
   A word stays when its correlation with its own class is at least ``min_relevance`` and higher
   than with any other class (the paper's tf·idf divides by the *mean* similarity to the other
   classes, which with many classes hides a word that follows one other class; and the cosine of
   non-negative probability vectors is high for every pair, so it cannot reject a word outright).
   Then, per class, the ``relevance_cut`` fraction of its non-seed words with the lowest relevance
   is dropped (per class, so that no class is stripped);
6. **contextualised calibration**: the verbalizer stores each word's prior (``calibration:
   contextual``) and divides by it at scoring time;
7. **learnable refinement** (few-shot): one weight per word (init 0, softmax within its class)
   trained with ``Harness.train`` on the labelled train split, the language model frozen.

Seed words are never removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...errors import AutoPromptError
from ...models.vocab import vocabulary_words
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


def expand(
    seeds: Mapping[str, Sequence[str]], settings: ExpansionSettings, harness: Harness | None = None
) -> Expansion:
    """Gather related words for every class and drop words claimed by two classes (not seeds)."""
    labels = list(seeds)
    seed_lists = [[w.strip() for w in seeds[label]] for label in labels]
    if any(not ws for ws in seed_lists):
        raise AutoPromptError("every class needs at least one seed word")
    if "kb" in settings.sources and not settings.kb_file:
        raise AutoPromptError("the 'kb' source needs kb_file (a knowledge-base file)")
    kb = knowledge.read_kb(settings.kb_file) if "kb" in settings.sources and settings.kb_file else {}
    vader = (
        knowledge.vader_class_words(
            dict(zip(labels, seed_lists)), threshold=settings.vader_threshold, max_words=settings.vader_max_words
        )
        if "vader" in settings.sources
        else {}
    )
    found: list[dict[str, list[str]]] = []
    for label, class_seeds in zip(labels, seed_lists):
        words: dict[str, list[str]] = {w: ["seed"] for w in class_seeds}

        def add(new: Mapping[str, str], words: dict[str, list[str]] = words) -> None:
            for w, why in new.items():
                words.setdefault(w, []).append(why)

        if "wordnet" in settings.sources:
            for seed in class_seeds:
                related = knowledge.wordnet_related(
                    seed, relations=settings.relations, depth=settings.depth, senses=settings.senses
                )
                if related is None:
                    msg = (
                        f"seed word {seed!r} (class {label!r}) is not in WordNet; it is kept but expands "
                        "through the other sources only"
                    )
                    if settings.on_missing_seed == "error":
                        raise AutoPromptError(msg.split(";")[0] + " (set on_missing_seed: warn to continue without it)")
                    logger.warning(msg)
                    continue
                add({w: f"wordnet:{why}:{seed}" for w, why in related.items()})
        if "vader" in settings.sources:
            add(vader[label])
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
                removed.append(
                    {
                        "word": w,
                        "class": labels[c],
                        "reason": f"also found for {', '.join(others)}",
                        "sources": words[w],
                    }
                )
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
        top_logprobs: ``(N, R)`` per support example, the log-probabilities of its ``R`` most likely
            vocabulary word tokens, descending (for the presence filter; then ``word_logprobs`` are
            absolute, normalised over the whole vocabulary). None: no presence filter possible.
    """

    words: list[str]
    word_logprobs: torch.Tensor
    word_prior: torch.Tensor
    vocab_prior: torch.Tensor
    num_tokens: list[int]
    too_long: dict[str, int] = field(default_factory=dict)
    top_logprobs: torch.Tensor | None = None

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}


def _space_before_mask(harness: Harness, template: Template, example: Any) -> bool:
    return harness.encoder.encode(template, example).space_before_mask


def vocabulary_statistics(harness: Harness, hidden: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From mask hidden states ``(N, d)``: the mean-probability prior of every vocabulary token
    ``(V,)`` (log) and, per example, the ``top`` largest log-probabilities among the vocabulary's
    word tokens ``(N, top)`` — one streamed pass through the output layer."""
    mask = vocabulary_words(harness)
    total, tops = None, []
    with torch.no_grad():
        for _, logp in harness.output_logprobs(hidden.to(harness.device)):
            chunk = logp.exp().sum(dim=0)
            total = chunk if total is None else total + chunk
            words = logp[:, mask[: logp.shape[1]].to(logp.device)]
            tops.append(words.topk(min(max(top, 1), words.shape[1]), dim=1).values.float().cpu())
    assert total is not None
    return (total / hidden.shape[0]).clamp_min(1e-30).log().float().cpu(), torch.cat(tops)


def support_scores(
    harness: Harness,
    support: Split,
    template: Template | str,
    words: Sequence[str],
    previous: SupportScores | None = None,
    max_tokens: int | None = None,
    always: Sequence[str] = (),
    presence_rank: int = 1000,
) -> SupportScores:
    """Scores of ``words`` on the support set: the full-vocabulary mean prior and each example's
    top ``presence_rank`` word-token log-probabilities (one pass, skipped when ``previous`` has
    them) and exact scores of the words not in ``previous`` (one pass).

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
    top: torch.Tensor | None
    if previous is None:
        vocab, top = vocabulary_statistics(harness, harness.mask_hidden(support, template), presence_rank)
        vocab_prior = vocab[vocabulary_words(harness)[: vocab.shape[0]]]
    else:
        vocab_prior, top = previous.vocab_prior, previous.top_logprobs
    # A one-word "class" per word: the verbalizer only carries the words to score (it needs two
    # classes, so a lone new word is scored twice and the copy dropped).
    verb = Verbalizer(tuple((w,) for w in (new if len(new) > 1 else new * 2)))
    lp = harness.score(support, template, verb, exact=True).word_logprobs.float().cpu()[:, : len(new)]
    prior = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])
    ntok = [len(harness.encoder.word_ids(w, space)) for w in new]
    if previous is None:
        return SupportScores(new, lp, prior, vocab_prior, ntok, too_long, top)
    return SupportScores(
        previous.words + new,
        torch.cat([previous.word_logprobs, lp], dim=1),
        torch.cat([previous.word_prior, prior]),
        vocab_prior,
        previous.num_tokens + ntok,
        too_long,
        top,
    )


def support_scores_from_hidden(
    harness: Harness, hidden: torch.Tensor, words: Sequence[str], space_before: bool = True, presence_rank: int = 1000
) -> SupportScores:
    """:func:`support_scores` from cached mask hidden states (single-token words only).

    For scripts that score one support set many times: ``hidden = harness.mask_hidden(support,
    template)`` once, then any candidate set costs only the output layer.
    """
    words = list(dict.fromkeys(words))
    vocab, top = vocabulary_statistics(harness, hidden, presence_rank)
    ids = single_token_ids(harness, words, space_before)
    lp = single_token_logprobs(harness, hidden, words, space_before, normalise=False)
    mask = vocabulary_words(harness)[: vocab.shape[0]]
    return SupportScores(words, lp, vocab[torch.tensor(ids)], vocab[mask], [1] * len(words), top_logprobs=top)


def single_token_ids(harness: Harness, words: Sequence[str], space_before: bool = True) -> list[int]:
    ids = []
    for w in words:
        tok = harness.encoder.word_ids(w, space_before)
        if len(tok) != 1:
            raise AutoPromptError(f"{w!r} is {len(tok)} tokens; scoring from hidden states handles single-token words")
        ids.append(tok[0])
    return ids


def single_token_logprobs(
    harness: Harness, hidden: torch.Tensor, words: Sequence[str], space_before: bool = True, normalise: bool = True
) -> torch.Tensor:
    """``(N, W)`` log-probabilities of single-token words from mask hidden states, normalised over
    ``words`` — what ``Harness.score`` returns for a verbalizer of single-token words — or, with
    ``normalise=False``, over the whole vocabulary (absolute, comparable across word sets)."""
    ids = torch.tensor(single_token_ids(harness, words, space_before))
    if not normalise:
        out = torch.empty(hidden.shape[0], len(ids))
        with torch.no_grad():
            for rows, logp in harness.output_logprobs(hidden.to(harness.device)):
                out[rows] = logp[:, ids.to(logp.device)].float().cpu()
        return out
    with torch.no_grad():
        logits = harness.output_logits(hidden, ids)  # the bias too: masked LMs' decoders have one
    return torch.log_softmax(logits, dim=-1).cpu()


@dataclass
class RefineSettings:
    """Noise filtering and calibration (one trial's choices).

    ``presence_rank`` / ``presence_min``: a word must be among the model's ``presence_rank`` most
    likely vocabulary words at the mask for at least that fraction of the support texts (at least
    one text; ``presence_rank`` 0 turns the filter off). ``min_relevance``: the lowest correlation
    with the own class's seed profile a word may have (it must also exceed the word's correlation
    with every other class); -1 turns both off.
    """

    max_tokens: int = 1
    prior_cut: float = 0.5
    relevance_cut: float = 0.0
    calibration: str = "contextual"
    aggregation: str = "mean"
    min_relevance: float = 0.3
    presence_rank: int = 1000
    presence_min: float = 0.02

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise AutoPromptError("max_tokens must be at least 1")
        if not 0.0 <= self.prior_cut < 1.0 or not 0.0 <= self.relevance_cut < 1.0:
            raise AutoPromptError(
                f"prior_cut and relevance_cut are fractions in [0, 1), got {self.prior_cut}, {self.relevance_cut}"
            )
        if self.calibration not in ("contextual", "none"):
            raise AutoPromptError(f"KPT calibration is 'contextual' or 'none', got {self.calibration!r}")
        if self.aggregation not in ("mean", "max", "sum"):
            raise AutoPromptError(f"KPT aggregation is mean, max or sum, got {self.aggregation!r}")
        if not -1.0 <= self.min_relevance < 1.0:
            raise AutoPromptError(f"min_relevance is a correlation in [-1, 1) (-1: off), got {self.min_relevance}")
        if self.presence_rank < 0 or not 0.0 <= self.presence_min <= 1.0:
            raise AutoPromptError(
                f"presence_rank must be >= 0 (0: off) and presence_min a fraction in [0, 1], got "
                f"{self.presence_rank}, {self.presence_min}"
            )


@dataclass
class KPTResult:
    """A refined verbalizer and the record of what was kept and removed (and why)."""

    verbalizer: Verbalizer
    removed: list[dict[str, Any]]
    kept: dict[str, list[dict[str, Any]]]

    def artifacts(self) -> dict[str, Any]:
        counts = {label: len(ws) for label, ws in self.kept.items()}
        return {
            "kept_words": self.kept,
            "removed_words": self.removed,
            "kept_counts": counts,
            "removed_count": len(self.removed),
        }


def _presence(scores: SupportScores, settings: RefineSettings) -> tuple[torch.Tensor, int] | None:
    """Per word, the number of support texts that have it among their ``presence_rank`` most likely
    vocabulary words, and the number needed; None when the filter is off or cannot run."""
    if settings.presence_rank == 0 or scores.top_logprobs is None:
        return None
    kept = scores.top_logprobs.shape[1]
    # Fewer kept than asked is fine only when they are all the vocabulary's word tokens (a small model).
    if settings.presence_rank > kept and kept < scores.vocab_prior.shape[0]:
        raise AutoPromptError(
            f"presence_rank {settings.presence_rank} is above the {kept} top words per text the "
            "support scores kept; compute them with support_scores(..., presence_rank=…)"
        )
    threshold = scores.top_logprobs[:, min(settings.presence_rank, kept) - 1]
    hits = (scores.word_logprobs >= threshold[:, None] - 1e-4).sum(dim=0)  # a word token ties with itself
    need = max(1, math.ceil(settings.presence_min * scores.word_logprobs.shape[0] - 1e-9))
    return hits, need


def refine(expansion: Expansion, scores: SupportScores, settings: RefineSettings) -> KPTResult:
    """Tokenization, frequency, presence and relevance refinement; returns the calibrated verbalizer."""
    col = scores.index()
    removed = list(expansion.removed)
    missing = [w for ws in expansion.words for w in ws if w not in col and w not in scores.too_long]
    if missing:
        raise AutoPromptError(
            f"support scores lack {len(missing)} candidate words (e.g. {missing[:3]}); "
            "compute them for every expanded word"
        )
    seed_sets = [set(s) for s in expansion.seeds]
    threshold = float(torch.quantile(scores.vocab_prior, settings.prior_cut)) if settings.prior_cut > 0 else -math.inf
    presence = _presence(scores, settings)
    n_support = scores.word_logprobs.shape[0]

    def drop(w: str, c: int, reason: str) -> None:
        removed.append(
            {"word": w, "class": expansion.labels[c], "reason": reason, "sources": expansion.sources[c].get(w, [])}
        )

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
                    reason = (
                        f"prior {math.exp(scores.word_prior[i]):.2e} below the {settings.prior_cut:.0%} "
                        f"vocabulary quantile {math.exp(threshold):.2e}"
                    )
            if reason:
                drop(w, c, reason)
            else:
                keep.append(w)
        classes.append(keep)
    # Relevance is measured among every candidate left so far, so that the presence filter below
    # does not change the per-text reference it is centred on.
    relevance, closest = _relevance(classes, expansion.seeds, scores)
    if presence is not None:
        for c, ws in enumerate(classes):
            for w in [w for w in ws if w not in seed_sets[c] and int(presence[0][col[w]]) < presence[1]]:
                ws.remove(w)
                drop(
                    w,
                    c,
                    f"among the model's top {settings.presence_rank} words for {int(presence[0][col[w]])} of "
                    f"{n_support} support texts (needs {presence[1]})",
                )
    if settings.min_relevance > -1.0:
        for c, ws in enumerate(classes):
            for w in [w for w in ws if w not in seed_sets[c]]:
                other, other_score = closest[w]
                if relevance[w] < settings.min_relevance:
                    reason = f"relevance {relevance[w]:.3f} below min_relevance {settings.min_relevance}"
                elif other is not None and other_score >= relevance[w]:
                    reason = (
                        f"follows class {expansion.labels[other]!r} ({other_score:.3f}) at least as much as "
                        f"its own ({relevance[w]:.3f})"
                    )
                else:
                    continue
                ws.remove(w)
                drop(w, c, reason)
    if settings.relevance_cut > 0:
        # The cut applies within each class: one global cut can strip a class whose words score
        # lower overall (seen on MR: 67 negative vs 21 positive words left, and lower accuracy).
        for c, ws in enumerate(classes):
            pool = sorted((relevance[w], w) for w in ws if w not in seed_sets[c])
            for score, w in pool[: int(len(pool) * settings.relevance_cut)]:
                ws.remove(w)
                drop(w, c, f"relevance {score:.3f} in the class's lowest {settings.relevance_cut:.0%}")
    prior = tuple(tuple(float(scores.word_prior[col[w]]) for w in ws) for ws in classes)
    verbalizer = Verbalizer(
        tuple(tuple(ws) for ws in classes),
        labels=tuple(expansion.labels),
        aggregation=settings.aggregation,
        calibration=settings.calibration,
        word_prior=prior,
    )
    kept = {}
    for c, (label, ws) in enumerate(zip(expansion.labels, classes)):
        entries = []
        for w in ws:
            entry: dict[str, Any] = {
                "word": w,
                "prior": float(f"{math.exp(scores.word_prior[col[w]]):.3g}"),
                "relevance": round(relevance[w], 4),
            }
            if presence is not None:
                entry["presence"] = round(int(presence[0][col[w]]) / n_support, 4)
            entry["sources"] = expansion.sources[c].get(w, [])
            entries.append(entry)
        kept[label] = entries
    return KPTResult(verbalizer, removed, kept)


def _relevance(
    classes: Sequence[Sequence[str]], seeds: Sequence[Sequence[str]], scores: SupportScores
) -> tuple[dict[str, float], dict[str, tuple[int | None, float]]]:
    """Each word's correlation with its own class's seed profile over the support texts, and the
    other class it correlates with most (with that correlation); see the module docstring."""
    col = scores.index()
    words = [w for ws in classes for w in ws]
    owner = torch.tensor([c for c, ws in enumerate(classes) for _ in ws])
    idx = torch.tensor([col[w] for w in words])
    calibrated = scores.word_logprobs[:, idx].double() - scores.word_prior[idx].double()  # (N, W)
    # Per text, what it does to label words in general: the mean over classes (each class counts
    # once, however many words it has) of its words' scores. Removing it leaves how a text favours
    # one class's words over the others'.
    general = torch.stack([calibrated[:, owner == c].mean(dim=1) for c in range(len(classes))], dim=1).mean(dim=1)
    centred = calibrated - general[:, None]
    centred = centred - centred.mean(dim=0)
    pos = {w: i for i, w in enumerate(words)}
    profiles = torch.stack([centred[:, [pos[s] for s in ss if s in pos]].mean(dim=1) for ss in seeds], dim=1)
    corr = torch.nn.functional.normalize(centred.T, dim=1) @ torch.nn.functional.normalize(profiles.T, dim=1).T
    relevance, closest = {}, {}
    for j, w in enumerate(words):
        c = int(owner[j])
        relevance[w] = float(corr[j, c])
        others = [(float(corr[j, o]), o) for o in range(len(classes)) if o != c]
        best = max(others) if others else (-1.0, None)
        closest[w] = (best[1], best[0])
    return relevance, closest


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


def learn_weights(
    harness: Harness,
    train: Split,
    template: Template | str,
    verbalizer: Verbalizer,
    *,
    epochs: int = 5,
    lr: float = 0.06,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[Verbalizer, list[float]]:
    """KPT's learnable refinement: per-word weights (softmax within class) trained on labelled data.

    Returns the verbalizer with ``aggregation: weighted`` and the learned weights, and the epoch losses.
    """
    logits = torch.zeros(len(verbalizer.flat_words), device=harness.device, requires_grad=True)

    def head(out: Any) -> torch.Tensor:
        return verbalizer.class_logprobs(out.word_logprobs.float(), weights=logits)

    with frozen(harness.model):
        losses = harness.train(
            train,
            template,
            verbalizer,
            [logits],
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            head=head,
            loss_fn=torch.nn.functional.nll_loss,
            seed=seed,
        )
    weights, start = [], 0
    for ws in verbalizer.label_words:
        weights.append(tuple(torch.softmax(logits.detach()[start : start + len(ws)], dim=0).cpu().tolist()))
        start += len(ws)
    return verbalizer.replace(aggregation="weighted", weights=[list(w) for w in weights]), losses
