"""LM-BFF template generation (Gao, Fisch & Chen, ACL 2021).

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...data import Example
from ...errors import AutoPromptError
from ...models.vocab import token_strings
from ...prompts import Template, Verbalizer

if TYPE_CHECKING:
    from ...harness import Harness

SEQ2SEQ_FORMATS = ("after", "before", "pair")
_BAD_CHARS = set("\n\r\t{}<>\u010a\u0109")  # \u010a/\u0109: byte-level BPE's newline and tab


@dataclass
class GeneratedTemplate:
    """One generated template and its generation score (log-likelihood summed over train examples)."""

    template: str
    score: float
    format: str
    span_tokens: list[str] = field(default_factory=list)


def span_token_mask(harness: Harness, ascii_only: bool = True) -> torch.Tensor:
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

    def __init__(
        self,
        harness: Harness,
        *,
        beam: int = 32,
        max_span_tokens: int = 5,
        min_span_tokens: int = 1,
        context: str = "{text_a}",
        suffix: str = ".",
        ascii_only: bool = True,
        chunk: int = 256,
    ) -> None:
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
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
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
                            finished[text] = GeneratedTemplate(
                                text, score, "causal", h.tokenizer.convert_ids_to_tokens(list(hyp))
                            )
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

    def __init__(
        self, harness: Harness, *, beam: int = 100, max_tokens: int = 20, ascii_only: bool = True, chunk: int = 256
    ) -> None:
        if harness.kind != "seq2seq":
            raise AutoPromptError(f"Seq2SeqTemplateGenerator needs a seq2seq (T5-style) model, got {harness.kind}")
        tok = harness.tokenizer
        self.sentinels = [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(3)]
        if any(s is None or s == tok.unk_token_id for s in self.sentinels):
            raise AutoPromptError("the seq2seq tokenizer has no <extra_id_0..2> sentinel tokens (T5-style needed)")
        self.harness, self.beam, self.max_tokens, self.ascii_only, self.chunk = (
            harness,
            beam,
            max_tokens,
            ascii_only,
            chunk,
        )

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
        y = tok.decode(body[cut + 1 :], skip_special_tokens=True).strip()
        middle = " ".join(p for p in (x, "{mask}") if p)
        if y:
            middle += ("" if y[0] in ".,!?;:" else " ") + y
        if fmt == "after":
            return "{text_a} " + middle
        if fmt == "before":
            return middle + " {text_a}"
        return "{text_a} " + middle + " {text_b}"

    def generate(
        self, examples: Sequence[Example], verbalizer: Verbalizer, formats: Sequence[str] = ("after",), keep: int = 50
    ) -> list[GeneratedTemplate]:
        """Top templates over ``formats`` (each format keeps ``keep // len(formats)``, as the paper keeps beam/2)."""
        out: list[GeneratedTemplate] = []
        for fmt in formats:
            out.extend(self._generate(list(examples), verbalizer, fmt, max(1, keep // len(formats))))
        return sorted(out, key=lambda g: -g.score)

    def _generate(
        self, examples: list[Example], verbalizer: Verbalizer, fmt: str, keep: int
    ) -> list[GeneratedTemplate]:
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
            for _ in range(self.max_tokens):
                total = torch.zeros(len(hyps), base.shape[0], device=dev)
                rows = len(hyps) * n
                for lo in range(0, rows, self.chunk):
                    r = torch.arange(lo, min(lo + self.chunk, rows), device=dev)
                    dec = torch.tensor([start + list(hyps[i]) for i in (r // n).tolist()], device=dev)
                    with h.autocast():
                        logits = (
                            h.model(
                                encoder_outputs=(enc_hidden[r % n],),
                                attention_mask=attn[r % n],
                                decoder_input_ids=dec,
                                use_cache=False,
                            )
                            .logits[:, -1]
                            .float()
                        )
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
                new_hyps: list[Any] = []
                new_lm: list[Any] = []
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
