"""Turning (template, example, verbalizer) into model rows.

A *row* is one model input plus the targets read from it: ``(position, token id, word index)``.
How a label word is read depends on the model kind:

* causal — the word (plus the rest of the template when the mask is not at the end) is the
  continuation of the prompt; the row is ``prompt + continuation[:-1]`` and every continuation
  token is a target. Words whose continuations share all but the last token share one row, so
  single-token words at a final mask cost one forward per example.
* mlm — one row per distinct word length ``L`` with ``L`` mask tokens; the word's tokens are
  read at those masks (independently, as in LAMA-style multi-token probing).
* seq2seq — the mask becomes the first sentinel in the encoder input; the decoder reads
  ``<start> <sentinel> word[:-1]`` and the word's tokens are the targets.

Text is tokenised piece by piece (fields and literal text separately, cached) so fields can be
truncated to fit the model and identical texts are tokenised once.
Whole prompts of a split are kept by :class:`PromptCache` (searches score the same split often).
"""

from __future__ import annotations

import string
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import Example, Split
from ..errors import AutoPromptError
from ..prompts.template import Field, Mask, Soft, Template, Text, Trigger

_PUNCT_ONLY = set(string.punctuation + string.whitespace)


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one example in one template, without special tokens or label words."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    space_before_mask: bool
    # Positions (in prefix + [mask] + suffix, before special tokens) of trigger and soft tokens.
    trigger_positions: tuple[int, ...]
    soft_positions: tuple[int, ...]
    # True when only punctuation/whitespace follows the mask: a causal LM then reads the word as
    # the next token(s) and ignores the trailing punctuation.
    mask_at_end: bool
    truncated: int = 0  # field tokens cut so the row fits the model


@dataclass
class Row:
    """One model input and the targets read from it."""

    item: int  # which (template, example) item the targets belong to
    input_ids: list[int]
    decoder_input_ids: list[int] | None
    targets: list[tuple[int, int, int]]  # (position, token id, word index); position in the decoder for seq2seq
    hidden_position: int  # where the mask's hidden state is read
    trigger_positions: list[int] = field(default_factory=list)
    soft_positions: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.input_ids) + len(self.decoder_input_ids or ())


TRUNCATIONS = ("tail", "head")


class PromptEncoder:
    """Tokenises templates and builds rows for one tokenizer and model kind.

    ``truncation`` says which end of an over-long field is cut: ``tail`` (keep the start, the
    default) or ``head`` (keep the end). Only example fields are cut, never template text or masks.
    """

    def __init__(self, tokenizer: Any, kind: str, max_length: int, truncation: str = "tail") -> None:
        if truncation not in TRUNCATIONS:
            raise AutoPromptError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.truncation = truncation
        self._piece_cache: dict[str, tuple[int, ...]] = {}
        self._word_cache: dict[tuple[str, bool], tuple[int, ...]] = {}
        self.special_prefix, self.special_suffix = self._special_tokens()
        if kind == "causal":
            self.special_suffix = []  # the continuation follows the prompt directly
        self.mask_id = self._mask_token_id()
        fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
        self.soft_fallback_id = int(fallback if fallback is not None else 0)
        self.decoder_start_id: int | None = None

    # -- tokenizer facts ------------------------------------------------------------------------
    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a single text."""
        plain = self.tokenizer("hello", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("hello", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return list(full[:start]), list(full[start + len(plain) :])
        return [], []

    def _mask_token_id(self) -> int | None:
        if self.kind == "mlm":
            if self.tokenizer.mask_token_id is None:
                raise AutoPromptError("this masked LM's tokenizer has no mask token")
            return int(self.tokenizer.mask_token_id)
        if self.kind == "seq2seq":
            ids = self.tokenizer.convert_tokens_to_ids(["<extra_id_0>"])
            if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
                raise AutoPromptError("this seq2seq tokenizer has no <extra_id_0> sentinel (T5-style models only)")
            return int(ids[0])
        return None

    def tokenize(self, text: str) -> tuple[int, ...]:
        """Token ids of a piece of text, no special tokens (cached)."""
        ids = self._piece_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()
            self._piece_cache[text] = ids
        return ids

    def word_ids(self, word: str, space_before: bool) -> tuple[int, ...]:
        """Token ids of a label word as it appears at the mask (with its leading space)."""
        key = (word, space_before)
        ids = self._word_cache.get(key)
        if ids is None:
            ids = self.tokenize((" " + word.strip()) if space_before else word.strip())
            if not ids:
                raise AutoPromptError(f"label word {word!r} tokenizes to nothing with this model's tokenizer")
            unk = self.tokenizer.unk_token_id
            if unk is not None and all(i == unk for i in ids):
                raise AutoPromptError(
                    f"label word {word!r} is unknown to this model's tokenizer (every token is "
                    f"{self.tokenizer.unk_token!r}); choose a word the model can read"
                )
            self._word_cache[key] = ids
        return ids

    # -- templates --------------------------------------------------------------------------------
    def reserve(self, words: Sequence[str]) -> int:
        """Tokens a row needs beyond the prompt for the longest of ``words`` (its masks, or its
        continuation on a causal LM); seq2seq models read words in the decoder (one sentinel)."""
        if self.kind == "seq2seq" or not words:
            return 1
        return max(len(self.word_ids(w, space)) for w in words for space in (True, False))

    def encode(self, template: Template, example: Example, reserve: int = 1) -> EncodedPrompt:
        """Tokenise one example in one template, truncating its fields so the row (with ``reserve``
        tokens for the label word) fits ``max_length``."""
        pieces: list[tuple[str, Any]] = []  # (kind, payload): text/field → ids, trigger → id, soft → ids
        pending_space = False
        space_before_mask = False
        for part in template.parts:
            if isinstance(part, (Text, Field)):
                raw = example.get_field(part.name) if isinstance(part, Field) else part.text
                text = raw.strip() if isinstance(part, Field) else raw
                if not text:
                    continue
                if pending_space or (text[0].isspace() and pieces):
                    text = " " + text.lstrip()
                elif not pieces:
                    text = text.lstrip()
                    if not text:  # only spaces at the start (an empty field before them): nothing to add
                        continue
                pending_space = text[-1].isspace()
                text = text.rstrip()
                if text:
                    pieces.append(("field" if isinstance(part, Field) else "text", list(self.tokenize(text))))
            elif isinstance(part, Mask):
                space_before_mask = pending_space or not pieces or pieces[-1][0] in ("trigger", "soft")
                pending_space = False
                pieces.append(("mask", None))
            elif isinstance(part, Trigger):
                token_id = part.token_id
                if token_id is None:
                    token_id = self.mask_id if self.mask_id is not None else self.soft_fallback_id
                pieces.append(("trigger", [int(token_id)]))
                pending_space = True
            elif isinstance(part, Soft):
                init = (" " + part.init.strip()) if (pending_space and part.init) else part.init.strip()
                ids = list(self.tokenize(init)) if init else [self.soft_fallback_id]
                pieces.append(("soft", ids))
                pending_space = True
        truncated = self._truncate(pieces, template, reserve)

        prefix: list[int] = []
        suffix: list[int] = []
        triggers: list[int] = []
        softs: list[int] = []
        seen_mask = False
        for kind, ids in pieces:
            if kind == "mask":
                seen_mask = True
                continue
            offset = len(prefix) + (1 if seen_mask else 0) + len(suffix)
            if kind == "trigger":
                triggers.append(offset)
            elif kind == "soft":
                softs.extend(range(offset, offset + len(ids)))
            (suffix if seen_mask else prefix).extend(ids)
        after = "".join(
            p.text if isinstance(p, Text) else "x"
            for p in template.parts[[isinstance(p, Mask) for p in template.parts].index(True) + 1 :]
        )
        return EncodedPrompt(
            tuple(prefix),
            tuple(suffix),
            space_before_mask,
            tuple(triggers),
            tuple(softs),
            mask_at_end=set(after) <= _PUNCT_ONLY,
            truncated=truncated,
        )

    def _truncate(self, pieces: list[tuple[str, Any]], template: Template, reserve: int) -> int:
        """Cut the longest field (at its tail or head) until the row fits with ``reserve`` tokens for
        the label word; returns the number of tokens cut."""
        budget = self.max_length - len(self.special_prefix) - len(self.special_suffix) - max(1, reserve)
        fixed = sum(len(ids) for kind, ids in pieces if ids is not None and kind != "field")
        if fixed > budget:
            text = template.text if len(template.text) <= 80 else template.text[:77] + "..."
            raise AutoPromptError(
                f"template {text!r} ({fixed} tokens without its fields) and a label word of {reserve} tokens do not "
                f"fit the model's maximum length ({self.max_length} tokens, "
                f"{len(self.special_prefix) + len(self.special_suffix)} special); "
                "shorten the template or the label words"
            )
        total = sum(len(ids) for kind, ids in pieces if ids is not None)
        cut_total = 0
        while total > budget:
            longest = max(
                (i for i, (kind, ids) in enumerate(pieces) if kind == "field" and ids), key=lambda i: len(pieces[i][1])
            )
            ids = pieces[longest][1]
            cut = min(total - budget, len(ids))
            if self.truncation == "head":
                del ids[:cut]
            else:
                del ids[len(ids) - cut :]
            total -= cut
            cut_total += cut
        return cut_total

    # -- rows --------------------------------------------------------------------------------------
    def rows(self, item: int, enc: EncodedPrompt, words: Sequence[tuple[int, ...]] | None) -> list[Row]:
        """Rows that score every word (token ids) for one encoded prompt; ``words=None`` → hidden state only."""
        if self.kind == "causal":
            return self._causal_rows(item, enc, words)
        if self.kind == "mlm":
            return self._mlm_rows(item, enc, words)
        return self._seq2seq_rows(item, enc, words)

    def _causal_rows(self, item: int, enc: EncodedPrompt, words: Sequence[tuple[int, ...]] | None) -> list[Row]:
        prompt = self.special_prefix + list(enc.prefix)
        if not prompt:
            raise AutoPromptError("a causal LM needs some text before the mask (its tokenizer adds no BOS token)")
        shift = len(self.special_prefix)
        trig = [p + shift for p in enc.trigger_positions if p < len(enc.prefix)]
        soft = [p + shift for p in enc.soft_positions if p < len(enc.prefix)]
        last = len(prompt) - 1
        if words is None:
            return [Row(item, prompt, None, [], last, trig, soft)]
        if enc.mask_at_end and all(len(ids) == 1 for ids in words):  # the common case: one row, read at ``last``
            return [Row(item, prompt, None, [(last, ids[0], w) for w, ids in enumerate(words)], last, trig, soft)]
        tail = () if enc.mask_at_end else tuple(enc.suffix)
        groups: dict[tuple[int, ...], Row] = {}
        for w, ids in enumerate(words):
            cont = tuple(ids) + tail
            key = cont[:-1]
            row = groups.get(key)
            if row is None:
                row = Row(item, prompt + list(key), None, [], last, trig, soft)
                groups[key] = row
            row.targets += [(last + j, tok, w) for j, tok in enumerate(cont)]
        return sorted(groups.values(), key=lambda r: len(r.input_ids))

    def _mlm_rows(self, item: int, enc: EncodedPrompt, words: Sequence[tuple[int, ...]] | None) -> list[Row]:
        shift = len(self.special_prefix)
        mask = self.mask_id
        assert mask is not None  # a masked LM's encoder always has one
        lengths = sorted({len(ids) for ids in words}) if words is not None else [1]
        rows = []
        for length in lengths:
            ids = self.special_prefix + list(enc.prefix) + [mask] * length + list(enc.suffix) + self.special_suffix
            start = shift + len(enc.prefix)

            def moved(p: int, length: int = length) -> int:  # positions after the mask move by the extra masks
                return p + shift + (length - 1 if p > len(enc.prefix) else 0)

            row = Row(
                item,
                ids,
                None,
                [],
                start,
                [moved(p) for p in enc.trigger_positions],
                [moved(p) for p in enc.soft_positions],
            )
            if words is not None:
                for w, wids in enumerate(words):
                    if len(wids) == length:
                        row.targets.extend((start + j, tok, w) for j, tok in enumerate(wids))
            rows.append(row)
        return rows

    def _seq2seq_rows(self, item: int, enc: EncodedPrompt, words: Sequence[tuple[int, ...]] | None) -> list[Row]:
        shift = len(self.special_prefix)
        mask = self.mask_id
        assert mask is not None and self.decoder_start_id is not None  # a seq2seq encoder always has both
        encoder_ids = self.special_prefix + list(enc.prefix) + [mask] + list(enc.suffix) + self.special_suffix
        trig = [p + shift for p in enc.trigger_positions]
        soft = [p + shift for p in enc.soft_positions]
        head = [self.decoder_start_id, mask]
        if words is None:
            return [Row(item, encoder_ids, head, [], 1, trig, soft)]
        groups: dict[tuple[int, ...], Row] = {}
        for w, ids in enumerate(words):
            key = tuple(ids[:-1])
            row = groups.get(key)
            if row is None:
                row = Row(item, encoder_ids, head + list(key), [], 1, trig, soft)
                groups[key] = row
            row.targets.extend((1 + j, tok, w) for j, tok in enumerate(ids))
        return sorted(groups.values(), key=lambda r: r.length)


class PromptCache:
    """Tokenised prompts kept per (template, examples, room for the label word), least recently
    used dropped first — searches score the same split often."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[Template, str, int], list[EncodedPrompt]] = OrderedDict()

    def encode(
        self, encoder: PromptEncoder, template: Template, examples: Sequence[Example], reserve: int, max_items: int
    ) -> list[EncodedPrompt]:
        """The prompts of ``examples``, tokenised once; at most ``max_items`` examples stay kept
        (summed over entries, the newest entry always)."""
        key = (
            template,
            Split(examples).fingerprint if not isinstance(examples, Split) else examples.fingerprint,
            reserve,
        )
        entries = self.entries
        hit = entries.get(key)
        if hit is not None:
            entries.move_to_end(key)
            return hit
        encoded = [encoder.encode(template, e, reserve) for e in examples]
        entries[key] = encoded
        while len(entries) > 1 and (len(entries) > 256 or sum(map(len, entries.values())) > max_items):
            entries.popitem(last=False)
        return encoded

    def clear(self) -> None:
        """Forget every kept prompt."""
        self.entries.clear()
