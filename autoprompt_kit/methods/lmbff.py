"""LM-BFF (Gao, Fisch & Chen, ACL 2021): generated templates, automatic label words, prompt fine-tuning.

Template generation
    *seq2seq (T5, the paper)*: each few-shot train example becomes a T5 input with sentinel spans
    around its label word (``<S> <X> word <Y>``, ``<X> word <Y> <S>``, ``<S1> <X> word <Y> <S2>``);
    ONE beam search runs over the whole train set — at every step the decoder's log-probabilities
    are summed over all examples — and each decoded ``<X> … <Y> … </s>`` becomes a template with
    the mask where the label word was.

    *causal LM (new)*: a decoder-only model cannot fill a span in the middle, so the span ``Y``
    between the sentence and the label word is searched directly: beam search over span tokens
    maximising ``Σ_i log p(Y | s_i) + log p(w_i | s_i, Y)`` summed over all train examples, with a
    KV cache reordered per beam step. Every beam prefix is a candidate ``{text_a} Y {mask}.``; text
    after the mask cannot change a causal LM's scores, so only a fixed ``suffix`` follows it.

Ranking: all generated templates are scored zero-shot on the few-shot dev split in one batched
harness pass; the best ``top_n`` become the study's trials (best first), optionally re-ranked by
prompt-based fine-tuning. Label words: per class the top-k vocabulary words by mean log-probability
at the mask over the class's train examples; assignments (one word per class) are ranked by
zero-shot train accuracy — all ``k^C`` of them for a few classes, beam search over classes for many —
and the best few by dev accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from ..data import Example, Split
from ..delta import Delta, DeltaSpec, default_lora_targets
from ..demonstrations import DEMO_FIELD, SentenceEncoder, demonstration_template  # noqa: F401  (re-exported)
from ..errors import AutoPromptError
from ..models.vocab import token_strings, word_of, word_token_mask
from ..prompts import Template, Verbalizer
from ..search.base import Candidate, SearchConfig, SearchContext, Searcher, TrialOutcome, choice, register, suggest

if TYPE_CHECKING:
    import optuna

    from ..harness import Harness

logger = logging.getLogger(__name__)

SEQ2SEQ_FORMATS = ("after", "before", "pair")
_BAD_CHARS = set("\n\r\t{}<>\u010a\u0109")  # \u010a/\u0109: byte-level BPE's newline and tab


@dataclass
class GeneratedTemplate:
    """One generated template and its generation score (log-likelihood summed over train examples)."""

    template: str
    score: float
    format: str
    span_tokens: list[str] = field(default_factory=list)


def span_token_mask(harness: "Harness", ascii_only: bool = True) -> torch.Tensor:
    """Tokens a generated span may use: no special tokens, braces, angle brackets, newlines or tabs."""
    strings = token_strings(harness.tokenizer)
    vocab = harness.head.weight.shape[0]
    specials = set(getattr(harness.tokenizer, "all_special_ids", []) or [])
    mask = torch.zeros(vocab, dtype=torch.bool)
    for i, raw in enumerate(strings[:vocab]):
        if i in specials or not raw or _BAD_CHARS & set(raw):
            continue
        text = raw.replace("▁", " ").replace("Ġ", " ")
        if ascii_only and not text.isascii():
            continue
        mask[i] = True
    return mask


class CausalTemplateGenerator:
    """Beam search over the span between the sentence and the label word, for a causal LM.

    Args:
        harness: a harness on a causal LM.
        beam: beam width (the paper's T5 search uses 100; 16–32 is CPU-friendly).
        max_span_tokens / min_span_tokens: span length limits, in tokens.
        context: the text before the span (a template without mask, e.g. ``"{text_a}"``).
        suffix: fixed text after the mask.
        ascii_only: keep spans to ASCII tokens (Gemma's vocabulary is multilingual).
        chunk: rows per output-layer chunk (memory bound: ``chunk × V`` floats).
    """

    def __init__(self, harness: "Harness", *, beam: int = 32, max_span_tokens: int = 5, min_span_tokens: int = 1,
                 context: str = "{text_a}", suffix: str = ".", ascii_only: bool = True, chunk: int = 256) -> None:
        if harness.kind != "causal":
            raise AutoPromptError(f"CausalTemplateGenerator needs a causal LM, got a {harness.kind} model")
        if beam < 1 or max_span_tokens < 1 or not 0 <= min_span_tokens <= max_span_tokens:
            raise AutoPromptError("need beam >= 1 and 0 <= min_span_tokens <= max_span_tokens (>= 1)")
        if "{mask}" in context:
            raise AutoPromptError(f"context {context!r} must not contain {{mask}}: the span and mask follow it")
        self.harness, self.beam, self.chunk = harness, beam, chunk
        self.max_span, self.min_span = max_span_tokens, min_span_tokens
        self.context, self.suffix, self.ascii_only = context, suffix, ascii_only

    def _prefixes(self, examples: Sequence[Example]) -> list[list[int]]:
        enc = self.harness.encoder
        probe = Template(self.context + " {mask}")
        # Room for the span and the label word after the context: long inputs are cut, not the span.
        reserve = self.max_span + 2 + len(self.harness.encoder.tokenize(self.suffix))
        return [list(enc.special_prefix) + list(enc.encode(probe, ex, reserve).prefix) for ex in examples]

    def template_text(self, span_ids: Sequence[int]) -> str:
        span = self.harness.tokenizer.decode(list(span_ids)) if span_ids else ""
        return f"{self.context}{span.rstrip()} {{mask}}{self.suffix}"

    def generate(self, examples: Sequence[Example], verbalizer: Verbalizer, keep: int = 50) -> list[GeneratedTemplate]:
        """Top ``keep`` templates by ``Σ_i log p(Y | s_i) + log p(w_i | s_i, Y)``.

        ``w_i`` is the first label word of example i's class; for a multi-token word its first token
        guides the search (the dev ranking afterwards scores whole words).
        """
        h, dev = self.harness, self.harness.device
        examples = list(examples)
        if not examples:
            raise AutoPromptError("template generation needs train examples")
        enc = h.encoder
        gold = torch.tensor([enc.word_ids(verbalizer.label_words[ex.label][0], True)[0] for ex in examples], device=dev)
        prefixes = self._prefixes(examples)
        n, width = len(prefixes), max(len(p) for p in prefixes)
        ids = torch.full((n, width), h.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prefixes):  # left padding: every row's next token sits at the end
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        positions = (attn.cumsum(1) - 1).clamp_min(0)
        allowed = span_token_mask(h, self.ascii_only).to(dev)
        finished: dict[str, GeneratedTemplate] = {}
        hyps: list[tuple[int, ...]] = [()]
        lm = torch.zeros(1, device=dev)
        with torch.inference_mode():
            hidden, cache = h.body(ids, attn, None, positions)
            last, next_pos = hidden[:, -1], positions[:, -1] + 1
            for step in range(self.max_span + 1):
                total = torch.zeros(len(hyps), allowed.shape[0], device=dev)
                label = torch.zeros(len(hyps), device=dev)
                for rows, logp in h.output_logprobs(last, self.chunk):
                    r = torch.arange(rows.start, rows.stop, device=dev)
                    total.index_add_(0, r // n, logp)
                    label.index_add_(0, r // n, logp[torch.arange(len(r), device=dev), gold[r % n]])
                for b, hyp in enumerate(hyps):
                    if len(hyp) >= self.min_span:
                        text = self.template_text(hyp)
                        score = float(lm[b] + label[b])
                        if text not in finished or finished[text].score < score:
                            finished[text] = GeneratedTemplate(text, score, "causal",
                                                               h.tokenizer.convert_ids_to_tokens(list(hyp)))
                if step == self.max_span:
                    break
                scores = (lm[:, None] + total).masked_fill(~allowed, float("-inf")).flatten()
                top = scores.topk(min(self.beam, int(allowed.sum()) * len(hyps)))
                parents, tokens = top.indices // allowed.shape[0], top.indices % allowed.shape[0]
                hyps = [hyps[p] + (t,) for p, t in zip(parents.tolist(), tokens.tolist())]
                lm = top.values
                index = (parents[:, None] * n + torch.arange(n, device=dev)[None]).flatten()
                cache.reorder_cache(index)
                attn = torch.cat([attn[index], torch.ones(len(index), 1, dtype=attn.dtype, device=dev)], dim=1)
                pos = next_pos[index]
                hidden, cache = h.body(tokens.repeat_interleave(n)[:, None], attn, cache, pos[:, None])
                last, next_pos = hidden[:, -1], pos + 1
        return sorted(finished.values(), key=lambda g: -g.score)[:keep]


class Seq2SeqTemplateGenerator:
    """The paper's T5 generation: sentinel spans around the label word, one beam over all examples."""

    def __init__(self, harness: "Harness", *, beam: int = 100, max_tokens: int = 20, ascii_only: bool = True,
                 chunk: int = 256) -> None:
        if harness.kind != "seq2seq":
            raise AutoPromptError(f"Seq2SeqTemplateGenerator needs a seq2seq (T5-style) model, got {harness.kind}")
        tok = harness.tokenizer
        self.sentinels = [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(3)]
        if any(s is None or s == tok.unk_token_id for s in self.sentinels):
            raise AutoPromptError("the seq2seq tokenizer has no <extra_id_0..2> sentinel tokens (T5-style needed)")
        self.harness, self.beam, self.max_tokens, self.ascii_only, self.chunk = harness, beam, max_tokens, ascii_only, chunk

    def source(self, example: Example, word: str, fmt: str) -> str:
        """The T5 input for one example (sentence(s), sentinels, label word)."""
        s0, s1 = "<extra_id_0>", "<extra_id_1>"
        a = example.text_a.strip()
        if fmt == "after":
            return f"{a} {s0} {word} {s1}"
        if fmt == "before":
            return f"{s0} {word} {s1} {a}"
        if fmt == "pair":
            return f"{a} {s0} {word} {s1} {example.get_field('text_b').strip()}"
        raise AutoPromptError(f"unknown template format {fmt!r}; choose from {SEQ2SEQ_FORMATS}")

    def template_text(self, tokens: Sequence[int], fmt: str) -> str:
        """Map decoded ``<X> x… <Y> y…`` to a template: x before the mask, y after it."""
        tok = self.harness.tokenizer
        body = list(tokens)
        cut = body.index(self.sentinels[1]) if self.sentinels[1] in body else len(body)
        x = tok.decode(body[:cut], skip_special_tokens=True).strip()
        y = tok.decode(body[cut + 1:], skip_special_tokens=True).strip()
        middle = " ".join(p for p in (x, "{mask}") if p)
        if y:
            middle += ("" if y[0] in ".,!?;:" else " ") + y
        if fmt == "after":
            return "{text_a} " + middle
        if fmt == "before":
            return middle + " {text_a}"
        return "{text_a} " + middle + " {text_b}"

    def generate(self, examples: Sequence[Example], verbalizer: Verbalizer, formats: Sequence[str] = ("after",),
                 keep: int = 50) -> list[GeneratedTemplate]:
        """Top templates over ``formats`` (each format keeps ``keep // len(formats)``, as the paper keeps beam/2)."""
        out: list[GeneratedTemplate] = []
        for fmt in formats:
            out.extend(self._generate(list(examples), verbalizer, fmt, max(1, keep // len(formats))))
        return sorted(out, key=lambda g: -g.score)

    def _generate(self, examples: list[Example], verbalizer: Verbalizer, fmt: str, keep: int) -> list[GeneratedTemplate]:
        h, dev, tok = self.harness, self.harness.device, self.harness.tokenizer
        if not examples:
            raise AutoPromptError("template generation needs train examples")
        sources = [self.source(ex, verbalizer.label_words[ex.label][0], fmt) for ex in examples]
        batch = tok(sources, padding=True, truncation=True, max_length=h.max_length, return_tensors="pt")
        ids, attn = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        n = len(examples)
        start = [h.encoder.decoder_start_id, self.sentinels[0]]
        ends = {tok.eos_token_id, self.sentinels[2]}
        base = span_token_mask(h, self.ascii_only).to(dev)
        hyps: list[tuple[int, ...]] = [()]
        lm = torch.zeros(1, device=dev)
        finished: dict[str, GeneratedTemplate] = {}
        with torch.inference_mode():
            enc_hidden = h.model.get_encoder()(input_ids=ids, attention_mask=attn).last_hidden_state
            for step in range(self.max_tokens):
                total = torch.zeros(len(hyps), base.shape[0], device=dev)
                rows = len(hyps) * n
                for lo in range(0, rows, self.chunk):
                    r = torch.arange(lo, min(lo + self.chunk, rows), device=dev)
                    dec = torch.tensor([start + list(hyps[i]) for i in (r // n).tolist()], device=dev)
                    with h.autocast():
                        logits = h.model(encoder_outputs=(enc_hidden[r % n],), attention_mask=attn[r % n],
                                         decoder_input_ids=dec, use_cache=False).logits[:, -1].float()
                    total.index_add_(0, r // n, torch.log_softmax(logits, dim=-1))
                scores = lm[:, None] + total
                for b, hyp in enumerate(hyps):
                    row_mask = base.clone()
                    if self.sentinels[1] not in hyp:
                        row_mask[self.sentinels[1]] = True
                    for e in ends:
                        row_mask[e] = self.sentinels[1] in hyp or e == tok.eos_token_id
                    scores[b] = scores[b].masked_fill(~row_mask, float("-inf"))
                flat = scores.flatten()
                top = flat.topk(min(2 * self.beam, int(torch.isfinite(flat).sum())))
                new_hyps, new_lm = [], []
                for value, index in zip(top.values.tolist(), top.indices.tolist()):
                    parent, token = divmod(index, base.shape[0])
                    hyp = hyps[parent] + (token,)
                    if token in ends:
                        text = self.template_text(hyp[:-1], fmt)
                        if text not in finished or finished[text].score < value:
                            finished[text] = GeneratedTemplate(text, value, fmt, tok.convert_ids_to_tokens(list(hyp)))
                    elif len(new_hyps) < self.beam:
                        new_hyps.append(hyp)
                        new_lm.append(value)
                if not new_hyps:
                    break
                hyps, lm = new_hyps, torch.tensor(new_lm, device=dev)
            # Spans still open at the length limit count too (closed at the limit), so a short
            # limit never returns nothing.
            for hyp, value in zip(hyps, lm.tolist()):
                text = self.template_text(hyp, fmt)
                if text not in finished:
                    finished[text] = GeneratedTemplate(text, value, fmt, tok.convert_ids_to_tokens(list(hyp)))
        return sorted(finished.values(), key=lambda g: -g.score)[:keep]


# -- label words -----------------------------------------------------------------------------------
LABEL_SEARCH_STRATEGIES = ("auto", "exhaustive", "beam")
#: ``auto`` enumerates every assignment up to this many (k^C); above it, beam search.
EXHAUSTIVE_LIMIT = 20_000


@dataclass
class LabelWordSearchResult:
    verbalizer: Verbalizer
    per_class: list[list[str]]                       # the top-k candidate words of each class
    ranked: list[dict[str, Any]]                     # assignments: words, train_accuracy, dev_accuracy
    strategy: str = "exhaustive"                     # how assignments were searched: exhaustive or beam
    scored: int = 0                                  # assignments (full or partial) scored on train
    seconds: float = 0.0                             # the assignment search alone (after the (N, V) pass)


@dataclass
class AssignmentSearch:
    """Assignments of one candidate per class, best first (indices into each class's candidates)."""

    combos: torch.Tensor                             # (M, C) long: column c indexes class c's candidates
    accuracy: torch.Tensor                           # (M,) zero-shot train accuracy
    margin: torch.Tensor                             # (M,) mean gold-class margin (the tie-break)
    strategy: str
    scored: int


class _AssignmentScorer:
    """Zero-shot accuracy and mean gold margin of assignments, from the ``(N, C·k)`` log-probabilities
    of the candidate words (one column block per class), optionally restricted to a class subset."""

    def __init__(self, cand_lp: torch.Tensor, labels: np.ndarray, num: int, k: int) -> None:
        self.lp = cand_lp.float()                    # (N, C*k)
        self.labels = torch.tensor(np.array(labels, dtype=np.int64))
        self.num, self.k = num, k
        self.scored = 0

    def __call__(self, combos: torch.Tensor, classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score assignments of the first ``classes`` classes (default all) on those classes' examples."""
        c = combos.shape[1] if classes is None else classes
        keep = self.labels < c
        lp, gold = self.lp[keep], self.labels[keep]
        cols = combos[:, :c] + torch.arange(c)[None] * self.k          # (M, c) columns of lp
        accs, margins = [], []
        step = max(1, 4_000_000 // max(1, len(gold) * c))             # bound the (N, m, c) block's memory
        for lo in range(0, len(cols), step):
            scores = lp[:, cols[lo:lo + step]]                           # (N, m, c)
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


def search_assignments(cand_lp: torch.Tensor, labels: np.ndarray, cand: torch.Tensor, keep: int, *,
                       strategy: str = "auto", beam: int = 100, exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                       max_combinations: int = 200_000) -> AssignmentSearch:
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
    total = k ** num
    if strategy == "auto":
        strategy = "exhaustive" if total <= exhaustive_limit else "beam"
    score = _AssignmentScorer(cand_lp, labels, num, k)
    if strategy == "exhaustive":
        if total > max_combinations:
            raise AutoPromptError(f"exhaustive label-word search would score {total:,} assignments ({k}^{num}), more "
                                  f"than {max_combinations:,}; use label_search_strategy: beam (or auto), or lower k")
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


def _polish(start: torch.Tensor, score: _AssignmentScorer, cand: torch.Tensor, pool: torch.Tensor,
            pool_acc: torch.Tensor, pool_margin: torch.Tensor, sweeps: int = 3) -> torch.Tensor:
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
                    current, best, moved = trials[top].clone(), (acc[top:top + 1], margin[top:top + 1]), True
            if not moved:
                break
        found.append(current[None])
    return torch.unique(torch.cat(found), dim=0)


def label_word_search(harness: "Harness", train: Split, dev: Split, template: Template | str,
                      label_names: Sequence[str], *, k: int = 20, n_assignments: int = 10,
                      candidates: str = "contrastive", pool: int = 1000, lowercase_only: bool = True,
                      strategy: str = "auto", beam: int = 100, exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                      max_combinations: int = 200_000) -> LabelWordSearchResult:
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
    usable = word_token_mask(harness.tokenizer, vocab, word_initial=True, alphabetic=True, lowercase_only=lowercase_only)
    strings = token_strings(harness.tokenizer)
    lp_train = harness.mask_logprobs(train, template, reduce=None)          # (N, V): small, few-shot
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
    cand = torch.tensor(per_class_ids)                                       # (C, k)
    start = time.perf_counter()
    found = search_assignments(lp_train[:, cand.flatten()], labels, cand, n_assignments, strategy=strategy,
                               beam=beam, exhaustive_limit=exhaustive_limit, max_combinations=max_combinations)
    seconds = time.perf_counter() - start
    logger.info("label-word search: %s over %d^%d assignments, %d scored in %.2fs", found.strategy, cand.shape[1],
                num, found.scored, seconds)
    dev_lp = harness.mask_logprobs(dev, template, reduce=None)[:, cand.flatten()]
    dev_acc, _ = _AssignmentScorer(dev_lp, dev.labels, num, cand.shape[1])(found.combos)
    ranked = []
    for j in range(len(found.combos)):
        words = [word_of(strings[int(cand[c, int(found.combos[j, c])])])[0] for c in range(num)]
        ranked.append({"words": dict(zip(label_names, words)), "train_accuracy": float(found.accuracy[j]),
                       "dev_accuracy": float(dev_acc[j])})
    ranked.sort(key=lambda r: (-r["dev_accuracy"], -r["train_accuracy"]))
    per_class = [[word_of(strings[i])[0] for i in ids] for ids in per_class_ids]
    best = Verbalizer.from_words({name: [w] for name, w in ranked[0]["words"].items()})
    return LabelWordSearchResult(best, per_class, ranked, found.strategy, found.scored, round(seconds, 4))


# -- demonstrations and fine-tuning --------------------------------------------------------------
def add_demonstrations(split: Split, pool: Split, template: Template | str, verbalizer: Verbalizer, *,
                       selection: str = "random", per_class: int = 1, encoder: SentenceEncoder | None = None,
                       top_fraction: float = 0.5, seed: int = 0) -> Split:
    """Give every example a ``demos`` field: ``per_class`` pool examples of each class, rendered with
    the template and their label word (LM-BFF's demonstrations).

    ``selection="similar"`` samples them from the ``top_fraction`` most similar pool examples (cosine
    of sentence embeddings), as the paper does; ``"random"`` samples uniformly. An example never
    demonstrates itself.
    """
    if selection not in ("random", "similar"):
        raise AutoPromptError(f"demonstration selection must be 'random' or 'similar', got {selection!r}")
    template = Template(template) if isinstance(template, str) else template
    rng = np.random.default_rng(seed)
    pool_labels = pool.labels
    by_class = [np.flatnonzero(pool_labels == c) for c in range(verbalizer.num_classes)]
    empty = [verbalizer.labels[c] if c < len(verbalizer.labels) else c for c, idx in enumerate(by_class) if len(idx) == 0]
    if empty:
        raise AutoPromptError(f"demonstrations: the pool has no example of class(es) {empty}")
    sims = None
    if selection == "similar":
        encoder = encoder or SentenceEncoder()
        sims = encoder.encode([e.text_a for e in split]) @ encoder.encode([e.text_a for e in pool]).T
    rendered = [template.fill(e, verbalizer.label_words[e.label][0]) for e in pool]
    pool_keys = [(e.text_a, e.text_b) for e in pool]
    out = []
    for i, ex in enumerate(split):
        demos = []
        for c, idx in enumerate(by_class):
            idx = np.array([j for j in idx if pool_keys[j] != (ex.text_a, ex.text_b)]) if len(idx) > 1 else idx
            if sims is not None:
                ranked = idx[np.argsort(-sims[i, idx])]
                idx = ranked[: max(per_class, int(math.ceil(len(ranked) * top_fraction)))]
            demos.extend(rendered[j] for j in rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        rng.shuffle(demos)
        out.append(Example(ex.text_a, ex.label, ex.text_b, ex.guid, {**ex.meta, DEMO_FIELD: " ".join(demos)}))
    return Split(out, name=split.name, label_names=split.label_names)


@contextlib.contextmanager
def restored_weights(model: torch.nn.Module) -> Iterator[None]:
    """Fine-tune inside this block; every parameter is put back afterwards (trials share one model)."""
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])


def prompt_finetune(harness: "Harness", train: Split, template: Template | str, verbalizer: Verbalizer, *,
                    epochs: int = 10, lr: float = 1e-5, batch_size: int = 8, seed: int = 0,
                    parameters: Sequence[torch.nn.Parameter] | None = None) -> list[float]:
    """LM-BFF's prompt-based fine-tuning: cross-entropy over the label words' class scores at the mask,
    all model weights trained (or ``parameters``). Returns the loss of each epoch."""
    params = list(parameters) if parameters is not None else list(harness.model.parameters())
    return harness.train(train, template, verbalizer, params, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)


# -- the study -------------------------------------------------------------------------------------
FINETUNE_PARAMETERS = ("lora", "full")


@dataclass
class LMBFFConfig(SearchConfig):
    template: str = field(default="{text_a} It was {mask}.",
                          metadata={"role": "template", "help": "manual template (label-word search; the baseline)"})
    label_words: dict[str, Any] | None = field(default=None, metadata={"role": "label_words", "help": "manual label words (label → words)"})
    generate_templates: bool = field(default=True, metadata={"help": "generate templates (else use `template`)"})
    search_label_words: bool = field(default=False, metadata={"help": "search label words with `template`"})
    generator_model: str | None = field(default=None, metadata={
        "help": "a separate model to generate templates with (e.g. t5-large for an MLM); default: the scoring model"})
    formats: list[str] = field(default_factory=lambda: ["after"],
                               metadata={"help": "seq2seq formats: after, before, pair"})
    context: str = field(default="{text_a}", metadata={"help": "causal generation: text before the span"})
    suffix: str = field(default=".", metadata={"help": "causal generation: text after the mask"})
    beam: int = field(default=32, metadata={"help": "beam width (paper: 100)"})
    max_span_tokens: int = field(default=5, metadata={"help": "causal: longest span in tokens"})
    max_decode_tokens: int = field(default=20, metadata={"help": "seq2seq: longest decoded sequence"})
    ascii_only: bool = field(default=True, metadata={"help": "generated spans use ASCII tokens only"})
    keep_generated: int = field(default=40, metadata={"help": "generated templates scored on dev"})
    top_n: int = field(default=10, metadata={"help": "best templates (by zero-shot dev) that become trials"})
    label_k: int = field(default=20, metadata={"help": "label-word candidates per class"})
    label_assignments: int = field(default=5, metadata={"help": "label-word assignments that become trials"})
    label_candidates: str = field(default="contrastive", metadata={
        "help": "likelihood (the paper: most likely words per class) or contrastive (likely and class-specific)"})
    label_pool: int = field(default=1000, metadata={"help": "contrastive: only the N words most likely at the mask"})
    label_search_strategy: str = field(default="auto", metadata={
        "help": "exhaustive (score all label_k^C assignments), beam (one class at a time, label_beam kept) or auto "
                f"(exhaustive up to {EXHAUSTIVE_LIMIT:,} assignments)"})
    label_beam: int = field(default=100, metadata={"help": "beam search: partial assignments kept per class"})
    calibration: list[str] = choice(["none"], help="choices: none and/or content_free; the first also ranks generated "
                                                   "templates on dev")
    finetune_epochs: int = field(default=0, metadata={
        "help": "prompt-based fine-tuning epochs per trial (0 = zero-shot); the trained state is saved with the prompt"})
    finetune_parameters: str = field(default="lora", metadata={
        "help": "lora (a LoRA delta on the attention query/value layers: small on disk) or full (every weight)"})
    finetune_lr: float | None = field(default=None, metadata={
        "help": "fine-tuning learning rate (default: 1e-3 with lora, 1e-5 with full, as LM-BFF)"})
    finetune_batch_size: int = field(default=8, metadata={"help": "fine-tuning batch size"})
    finetune_lora_rank: int = field(default=8, metadata={"help": "LoRA rank (finetune_parameters: lora)"})
    finetune_lora_targets: list[str] | None = field(default=None, metadata={
        "help": "LoRA target module patterns (default: the attention query/value projections, e.g. q_proj, v_proj)"})

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        from ..prompts.defaults import is_pair_task

        # Calibrated ranking first: an uncalibrated small model often says one class for everything.
        return {"calibration": ["content_free", "none"], "context": "{text_a} {text_b}" if is_pair_task(task) else "{text_a}"}

    def __post_init__(self) -> None:
        Template(self.template)
        if not self.generate_templates and not self.search_label_words:
            raise AutoPromptError("set generate_templates and/or search_label_words: otherwise there is nothing to search")
        if self.generate_templates and not self.label_words and not self.search_label_words:
            raise AutoPromptError("template generation needs label_words (or search_label_words: true)")
        bad = [f for f in self.formats if f not in SEQ2SEQ_FORMATS]
        if bad or not self.formats:
            raise AutoPromptError(f"formats must be a list of {SEQ2SEQ_FORMATS}, got {self.formats}")
        for name in ("beam", "max_span_tokens", "max_decode_tokens", "keep_generated", "top_n", "label_k",
                     "label_assignments", "label_pool"):
            if getattr(self, name) < 1:
                raise AutoPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.calibration or any(c not in ("none", "content_free") for c in self.calibration):
            raise AutoPromptError(f"calibration must be a list of none/content_free, got {self.calibration}")
        if self.label_search_strategy not in LABEL_SEARCH_STRATEGIES:
            raise AutoPromptError(f"label_search_strategy must be one of {LABEL_SEARCH_STRATEGIES}, "
                                  f"got {self.label_search_strategy!r}")
        if self.label_beam < 1:
            raise AutoPromptError(f"label_beam must be at least 1, got {self.label_beam}")
        if self.label_candidates not in ("contrastive", "likelihood"):
            raise AutoPromptError(f"label_candidates must be contrastive or likelihood, got {self.label_candidates!r}")
        if self.finetune_epochs < 0:
            raise AutoPromptError("finetune_epochs must be >= 0")
        if self.finetune_parameters not in FINETUNE_PARAMETERS:
            raise AutoPromptError(f"finetune_parameters must be one of {FINETUNE_PARAMETERS}, got {self.finetune_parameters!r}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise AutoPromptError(f"finetune_lr must be a positive number, got {self.finetune_lr!r}")
        if self.finetune_lora_rank < 1:
            raise AutoPromptError(f"finetune_lora_rank must be at least 1, got {self.finetune_lora_rank}")

    @property
    def learning_rate(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else (1e-3 if self.finetune_parameters == "lora" else 1e-5)


@register
class LMBFFSearcher(Searcher):
    """Generation and label-word search run once (:meth:`prepare`, stored in the study); each trial
    scores one (template, label words, calibration) candidate, best zero-shot dev first."""

    name = "lmbff"
    config_class = LMBFFConfig
    config: LMBFFConfig
    ordered_grid = True

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self.templates: list[str] = []
        self.words: list[dict[str, list[str]]] = []

    def prepare(self, ctx: SearchContext, study: "optuna.Study") -> None:
        saved = study.user_attrs.get("artifacts")
        if saved and "trial_templates" in saved:       # resumed job or extra worker: reuse, don't regenerate
            self.templates, self.words = saved["trial_templates"], saved["trial_words"]
            return
        artifacts = self.run_generation(ctx)
        study.set_user_attr("artifacts", artifacts)
        self.templates, self.words = artifacts["trial_templates"], artifacts["trial_words"]

    def run_generation(self, ctx: SearchContext) -> dict[str, Any]:
        """Label-word search and template generation + zero-shot dev ranking (the study's artifacts)."""
        cfg, h, task = self.config, ctx.harness, ctx.task
        artifacts: dict[str, Any] = {}
        words: list[dict[str, list[str]]] = []
        if cfg.search_label_words:
            start = time.perf_counter()
            found = label_word_search(h, task.train, task.dev, cfg.template, task.label_names, k=cfg.label_k,
                                      n_assignments=cfg.label_assignments, candidates=cfg.label_candidates,
                                      pool=cfg.label_pool, strategy=cfg.label_search_strategy, beam=cfg.label_beam)
            artifacts["label_word_candidates"] = dict(zip(task.label_names, found.per_class))
            artifacts["label_word_assignments"] = found.ranked
            artifacts["label_search_strategy"] = found.strategy
            artifacts["label_assignments_scored"] = found.scored
            artifacts["label_search_seconds"] = round(time.perf_counter() - start, 2)
            words = [{k: [v] for k, v in r["words"].items()} for r in found.ranked]
        manual = {k: [v] if isinstance(v, str) else list(v) for k, v in (cfg.label_words or {}).items()}
        if manual:
            Verbalizer.from_words(manual).check_labels(task.label_names)
            if not cfg.search_label_words:  # searched words, when asked for, replace the manual ones in trials
                words = [manual]
        templates = [cfg.template]
        if cfg.generate_templates:
            verbalizer = Verbalizer.from_words(manual or words[0])
            start = time.perf_counter()
            generated = self.generate(ctx, verbalizer)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            results = h.evaluate_many(task.dev, [g.template for g in generated],
                                      verbalizer.replace(calibration=cfg.calibration[0]), label_names=task.label_names)
            ranked = sorted(zip(generated, results), key=lambda gr: (-gr[1].accuracy, -gr[0].score))
            artifacts["generated_templates"] = [
                {**asdict(g), "dev_accuracy": r.accuracy, "dev_macro_f1": r.macro_f1} for g, r in ranked]
            artifacts["generation_seconds"] = round(seconds, 2)
            artifacts["ranking_seconds"] = round(time.perf_counter() - start, 2)
            templates = [g.template for g, _ in ranked[: cfg.top_n]]
        artifacts["trial_templates"] = templates
        artifacts["trial_words"] = words[: cfg.label_assignments] if cfg.search_label_words else words[:1]
        return artifacts

    def generate(self, ctx: SearchContext, verbalizer: Verbalizer) -> list[GeneratedTemplate]:
        cfg = self.config
        from ..harness import Harness

        gen = ctx.harness if cfg.generator_model is None else Harness(cfg.generator_model, progress=False)
        if gen.kind == "causal":
            return CausalTemplateGenerator(gen, beam=cfg.beam, max_span_tokens=cfg.max_span_tokens, context=cfg.context,
                                           suffix=cfg.suffix, ascii_only=cfg.ascii_only).generate(
                ctx.task.train, verbalizer, keep=cfg.keep_generated)
        if gen.kind == "seq2seq":
            formats = [f for f in cfg.formats if f != "pair" or "text_b" in ctx.task.train.fields()]
            if not formats:
                raise AutoPromptError(f"no usable format in {cfg.formats}: 'pair' needs a text_b field")
            return Seq2SeqTemplateGenerator(gen, beam=cfg.beam, max_tokens=cfg.max_decode_tokens,
                                            ascii_only=cfg.ascii_only).generate(
                ctx.task.train, verbalizer, formats, keep=cfg.keep_generated)
        raise AutoPromptError("a masked LM cannot generate templates: set generator_model to a T5 model (e.g. t5-large)")

    def grid(self) -> list[dict[str, Any]]:
        import json

        return [{"template": t, "label_words": json.dumps(w, sort_keys=True), "calibration": c}
                for t in self.templates for w in self.words for c in self.config.calibration]

    def run_trial(self, trial: "optuna.Trial", ctx: SearchContext) -> TrialOutcome:
        import json

        cfg, h, task = self.config, ctx.harness, ctx.task
        grid = self.grid()
        text = suggest(trial, "template", sorted({g["template"] for g in grid}))
        words = json.loads(suggest(trial, "label_words", sorted({g["label_words"] for g in grid})))
        calibration = suggest(trial, "calibration", cfg.calibration)
        verbalizer = Verbalizer.from_words(words, calibration=calibration)
        verbalizer.check_labels(task.label_names)
        candidate = Candidate([Template(text)], verbalizer)
        if cfg.finetune_epochs == 0:
            return TrialOutcome(candidate, candidate.evaluate(task.dev, h))
        zero_shot = candidate.evaluate(task.dev, h)
        seed = ctx.seed + trial.number
        fit = dict(epochs=cfg.finetune_epochs, lr=cfg.learning_rate, batch_size=cfg.finetune_batch_size, seed=seed)
        if cfg.finetune_parameters == "full":
            with restored_weights(h.model):  # trials share one model: the trained copy leaves with the prompt
                losses = prompt_finetune(h, task.train, candidate.template, verbalizer, **fit)
                dev = candidate.evaluate(task.dev, h)
                candidate = candidate.with_model_weights(h.model)
        else:
            torch.manual_seed(seed)
            targets = cfg.finetune_lora_targets or default_lora_targets(h)
            delta = Delta.from_specs(h, [DeltaSpec("lora", targets, r=cfg.finetune_lora_rank,
                                                   alpha=2.0 * cfg.finetune_lora_rank)]).attach(h)
            try:
                losses = prompt_finetune(h, task.train, candidate.template, verbalizer,
                                         parameters=list(delta.parameters()), **fit)
                dev = candidate.evaluate(task.dev, h)
            finally:
                delta.detach()
            candidate = candidate.with_delta(delta)
        return TrialOutcome(candidate, dev, {"zero_shot_dev_accuracy": zero_shot.accuracy,
                                             "finetune_losses": [round(x, 4) for x in losses]})
