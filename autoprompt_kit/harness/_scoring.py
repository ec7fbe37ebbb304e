"""How a score call is served: in one pass, streamed chunk by chunk, or from kept scores.

:func:`score_blocks` is :meth:`Harness.score_blocks` (and :meth:`Harness.train`'s step) over the
engine. Inside :meth:`Harness.score_cache` a :class:`KeptStates` serves repeated calls from the
mask states of earlier ones (:func:`score_from_states`); inside :meth:`Harness.reused_scores`
:func:`cached_logprobs` serves full-vocabulary mask log-probabilities kept per example.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data import Example, Split
from ..prompts.template import Template
from ..prompts.verbalizer import Verbalizer
from . import _engine as engine
from ._output import subset_logprobs
from .encoding import Row
from .results import ScoreOutput


@dataclass
class KeptStates:
    """The store of :meth:`Harness.score_cache`: kept scores, at most ``max_items`` of them, and the
    hit / miss counts (the harness's ``score_cache_stats``) updated as they are used."""

    store: OrderedDict[tuple[Any, ...], torch.Tensor]
    max_items: int
    stats: dict[str, int]


def score_blocks(
    h: engine.Scorer,
    templates: Sequence[Template],
    blocks: Sequence[Sequence[Example]],
    verbalizer: Verbalizer | None,
    *,
    exact: bool = False,
    hidden: bool = False,
    grad: bool = False,
    soft_embeddings: torch.Tensor | None = None,
    kept: KeptStates | None = None,
) -> list[ScoreOutput]:
    """Score ``blocks[i]`` with ``templates[i]`` (see :meth:`Harness.score_blocks`): streamed in
    chunks of the same examples from every block past ``h.stream_items`` items without gradients,
    and served from ``kept`` scores where they apply."""
    if not grad and sum(len(b) for b in blocks) > h.stream_items:
        return _score_streamed(
            h, templates, blocks, verbalizer, exact=exact, hidden=hidden, soft_embeddings=soft_embeddings, kept=kept
        )
    return _score_chunk(
        h,
        templates,
        blocks,
        verbalizer,
        exact=exact,
        hidden=hidden,
        grad=grad,
        soft_embeddings=soft_embeddings,
        kept=kept,
    )


def _score_chunk(
    h: engine.Scorer,
    templates: Sequence[Template],
    blocks: Sequence[Sequence[Example]],
    verbalizer: Verbalizer | None,
    *,
    exact: bool,
    hidden: bool,
    grad: bool = False,
    soft_embeddings: torch.Tensor | None = None,
    kept: KeptStates | None = None,
) -> list[ScoreOutput]:
    if (
        kept is not None
        and not grad
        and not exact
        and verbalizer is not None
        and soft_embeddings is None
        and not h.input_hooks
    ):
        cached = score_from_states(h, kept, templates, blocks, verbalizer, hidden)
        if cached is not None:
            return cached
    rows, sizes = engine.build_rows(h, templates, blocks, verbalizer)
    n_items = sum(sizes)
    n_words = len(verbalizer.flat_words) if verbalizer is not None else 0
    subset = None if exact or verbalizer is None else engine.label_subset(rows)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        word_lp, hid = engine.run(
            h,
            rows,
            n_items,
            n_words,
            subset,
            hidden=hidden or verbalizer is None,
            soft_embeddings=soft_embeddings,
            sort=not grad,
        )
    outs, start = [], 0
    for size in sizes:
        outs.append(ScoreOutput(word_lp[start : start + size], None if hid is None else hid[start : start + size]))
        start += size
    return outs


def _score_streamed(
    h: engine.Scorer,
    templates: Sequence[Template],
    blocks: Sequence[Sequence[Example]],
    verbalizer: Verbalizer | None,
    **kwargs: Any,
) -> list[ScoreOutput]:
    blocks = [b if isinstance(b, Split) else list(b) for b in blocks]
    step = max(1, h.stream_items // len(blocks))
    parts: list[list[ScoreOutput]] = [[] for _ in blocks]
    for start in range(0, max(len(b) for b in blocks), step):
        live = [j for j, b in enumerate(blocks) if start < len(b)]
        chunk = _score_chunk(
            h, [templates[j] for j in live], [blocks[j][start : start + step] for j in live], verbalizer, **kwargs
        )
        for j, out in zip(live, chunk):
            parts[j].append(out)
    outs = []
    for j, block_parts in enumerate(parts):
        if not block_parts:  # an empty block next to big ones: score it alone, as an empty pass
            block_parts = _score_chunk(h, [templates[j]], [blocks[j]], verbalizer, **kwargs)
        hid = [p.hidden for p in block_parts]
        outs.append(
            ScoreOutput(
                torch.cat([p.word_logprobs for p in block_parts]),
                None if any(x is None for x in hid) else torch.cat([x for x in hid if x is not None]),
            )
        )
    return outs


def score_from_states(
    h: engine.Scorer,
    kept: KeptStates,
    templates: Sequence[Template],
    blocks: Sequence[Sequence[Example]],
    verbalizer: Verbalizer,
    hidden: bool,
) -> list[ScoreOutput] | None:
    """A score call through the kept scores (None: this call cannot use them).

    When every item is one row read at its mask, the mask states are kept and the label rows of
    the output layer applied to them (scores normalised over the call's label tokens, as a pass
    does). Otherwise (a multi-token word, text after a causal LM's mask) each word's score is a
    full-vocabulary log-probability that depends on that word alone: those are kept per word.
    """
    store = kept.store
    rows, sizes = engine.build_rows(h, templates, blocks, verbalizer)
    n_items, n_words = sum(sizes), len(verbalizer.flat_words)
    reserve = h.encoder.reserve(verbalizer.flat_words)
    # The model object and precision in the key: a store handed to another harness never mixes.
    keys: list[tuple[Any, ...]] = []
    for template, block in zip(templates, blocks):
        keys += [(id(h.model), h.precision, template, reserve, e) for e in block]
    subset = engine.label_subset(rows)
    if subset is None:
        if hidden:
            return None
        return [ScoreOutput(w) for w in _word_scores(h, kept, rows, keys, n_words).split(sizes)]
    by_item = sorted(rows, key=lambda r: r.item)
    missing = [i for i, k in enumerate(keys) if k not in store]
    kept.stats["hits"] += n_items - len(missing)
    kept.stats["misses"] += len(missing)
    with torch.inference_mode():
        if missing:
            todo = [dataclasses.replace(by_item[i], item=j) for j, i in enumerate(missing)]
            _, states = engine.run(h, todo, len(todo), n_words, engine.label_subset(todo), hidden=True, sort=True)
            assert states is not None
            for i, state in zip(missing, states):
                store[keys[i]] = state
        states = torch.stack([store[k] for k in keys])
        _trim(kept, keys)
        # The label rows of the output layer on the kept states, normalised over the same label
        # subset as a forward pass would be (so the scores equal a pass's).
        logp = subset_logprobs(h, states, subset)
        col = {tok: i for i, tok in enumerate(subset)}
        flat = [(r.item, w, col[tok]) for r in by_item for _, tok, w in r.targets]
        index = torch.tensor(flat, device=h.device, dtype=torch.long).view(-1, 3).T
        word_lp = torch.zeros(n_items, n_words, device=h.device)
        word_lp = word_lp.index_put((index[0], index[1]), logp[index[0], index[2]].float(), accumulate=True)
    outs, start = [], 0
    for size in sizes:
        outs.append(ScoreOutput(word_lp[start : start + size], states[start : start + size] if hidden else None))
        start += size
    return outs


def _word_scores(
    h: engine.Scorer, kept: KeptStates, rows: list[Row], keys: list[tuple[Any, ...]], n_words: int
) -> torch.Tensor:
    """``(n_items, n_words)`` full-vocabulary word scores, each kept per (item, word tokens read)."""
    store = kept.store
    read: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in rows:
        for pos, tok, w in r.targets:
            read.setdefault((r.item, w), []).append((pos, tok))
    word_key = {iw: (*keys[iw[0]], "word", tuple(sorted(t))) for iw, t in read.items()}
    missing = {iw for iw, k in word_key.items() if k not in store}
    kept.stats["hits"] += len(word_key) - len(missing)
    kept.stats["misses"] += len(missing)
    with torch.inference_mode():
        if missing:
            # Only the rows that read a missing word run, renumbered (their other words are kept too).
            todo_items = sorted({r.item for r in rows if any((r.item, w) in missing for _, _, w in r.targets)})
            number = {item: j for j, item in enumerate(todo_items)}
            todo = [dataclasses.replace(r, item=number[r.item]) for r in rows if r.item in number]
            fresh, _ = engine.run(h, todo, len(todo_items), n_words, None, hidden=False, sort=True)
            fresh = fresh.cpu()
            for (item, w), k in word_key.items():
                if item in number and k not in store:
                    store[k] = fresh[number[item], w].clone()
        word_lp = torch.zeros(len(keys), n_words)
        for (item, w), k in word_key.items():
            word_lp[item, w] = store[k]
        _trim(kept, list(word_key.values()))
    return word_lp.to(h.device)


def _trim(kept: KeptStates, used: list[tuple[Any, ...]]) -> None:
    """Mark ``used`` keys as recent and drop the oldest beyond the limit."""
    store = kept.store
    for k in used:
        store.move_to_end(k)
    while len(store) > kept.max_items:
        store.popitem(last=False)


def cached_logprobs(
    h: engine.Scorer, cache: OrderedDict[Any, torch.Tensor], max_rows: int, examples: list[Example], template: Template
) -> torch.Tensor:
    """:func:`.engine.mask_logprobs` rows ``(N, V)`` through ``cache`` (see :meth:`Harness.reused_scores`):
    missing rows are computed in one pass, and at most ``max_rows`` rows stay kept."""
    keys = [(template, h.precision, e) for e in examples]
    missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in cache))
    if missing:
        rows = engine.mask_logprobs(h, [examples[i] for i in missing], template, None)
        for i, row in zip(missing, rows):
            cache[keys[i]] = row
    out = torch.stack([cache[k] for k in keys]) if keys else torch.empty(0, h.head.weight.shape[0])
    for k in keys:
        cache.move_to_end(k)
    while len(cache) > max_rows:
        cache.popitem(last=False)
    return out
