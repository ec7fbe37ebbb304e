"""Vocabulary filters shared by methods that pick tokens (trigger tokens, label tokens, label words)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..harness import Harness

_WORD = re.compile(r"^[A-Za-z]+$")
_PREFIXES = ("▁", "Ġ")  # SentencePiece and byte-level BPE mark a word start with these


def token_strings(tokenizer: Any) -> list[str]:
    """Every token of the vocabulary as its raw string (index = token id)."""
    return _token_strings(id(tokenizer), tokenizer)


@lru_cache(maxsize=8)
def _token_strings(_key: int, tokenizer: Any) -> list[str]:
    size = len(tokenizer)
    return [t if t is not None else "" for t in tokenizer.convert_ids_to_tokens(list(range(size)))]


def word_of(token: str) -> tuple[str, bool]:
    """``(text, starts_a_word)`` of a raw token string."""
    if token.startswith(_PREFIXES):
        return token[1:], True
    if token.startswith("##"):
        return token[2:], False
    return token, False


def word_token_mask(
    tokenizer: Any,
    vocab_size: int,
    *,
    word_initial: bool = True,
    alphabetic: bool = True,
    lowercase_only: bool = False,
    min_length: int = 2,
    exclude_ids: Iterable[int] = (),
    exclude_words: Iterable[str] = (),
) -> torch.Tensor:
    """Boolean mask ``(vocab_size,)`` of tokens usable as words.

    Special tokens are always excluded. ``word_initial`` keeps only tokens that start a word (for
    WordPiece vocabularies, whose word starts carry no marker, every non-``##`` token counts);
    ``alphabetic`` keeps ASCII letters only; ``lowercase_only`` drops capitalised tokens (as
    AutoPrompt's reference does).
    """
    strings = token_strings(tokenizer)
    wordpiece = any(s.startswith("##") for s in strings[:5000]) and not any(
        s.startswith(_PREFIXES) for s in strings[:5000]
    )
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    banned = {w.lower() for w in exclude_words}
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i, raw in enumerate(strings[:vocab_size]):
        if i in specials or not raw:
            continue
        text, starts = word_of(raw)
        if word_initial and not (starts or (wordpiece and not raw.startswith("##"))):
            continue
        if alphabetic and not _WORD.match(text):
            continue
        if lowercase_only and text != text.lower():
            continue
        if len(text) < min_length or text.lower() in banned:
            continue
        mask[i] = True
    for i in exclude_ids:
        if 0 <= i < vocab_size:
            mask[i] = False
    return mask


def vocabulary_words(harness: Harness) -> torch.Tensor:
    """Boolean mask of the vocabulary's word tokens (lower-case, alphabetic, word-initial, 3+ letters):
    the words a verbalizer may be expanded with or a prototype described by."""
    # A 262k-token scan: once per harness.
    return harness.memo(
        "vocabulary_words",
        lambda: word_token_mask(harness.tokenizer, harness.head.weight.shape[0], lowercase_only=True, min_length=3),
    )
