"""Grouping causal-LM rows by a shared token prefix, so the prefix runs once.

Many rows of one pass start with the same tokens: every template of an ensemble that begins with
``{text_a}`` repeats the review, AutoPrompt's ``k`` candidates differ in one trigger token, and a
fixed block of demonstrations precedes every example. :func:`group_by_prefix` finds groups of
rows whose token ids agree on their first ``length`` tokens; the harness runs each group's prefix
once, keeps its key/value cache and runs only the rows' remaining tokens against it.

Groups are chosen on the rows sorted by token ids, where rows sharing a prefix are neighbours and
the common prefix of a run of rows is the smallest common prefix of adjacent pairs. Over the
tree those minima define (a Cartesian tree of the adjacent common-prefix lengths) the partition
that skips the most tokens, ``Σ (rows − 1) · length`` over the groups, is found in one pass: a
run is either one group at its smallest common length or split where that minimum occurs,
whichever skips more. Runs whose common prefix is shorter than ``min_length`` tokens are not
grouped (the cache bookkeeping would cost more than the tokens saved).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .encoding import Row


@dataclass
class PrefixGroup:
    """Rows whose first ``length`` token ids are the same.

    ``length`` never reaches a position that is read: the hidden state at every read position
    is computed in the suffix pass.
    """

    length: int
    rows: list[Row]

    @property
    def prefix(self) -> list[int]:
        return self.rows[0].input_ids[: self.length]


def read_limit(row: Row) -> int:
    """How many leading tokens of ``row`` may go into a cached prefix (up to its first read position)."""
    return min(row.hidden_position, *(t[0] for t in row.targets)) if row.targets else row.hidden_position


def common_prefix_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of two token id lists, at most ``limit``."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect with C-speed slice comparisons
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class _Run:
    """A run of sorted rows ``[lo, hi]`` and the best grouping found inside it."""

    lo: int
    hi: int
    saved: int = 0
    groups: list[tuple[int, int, int]] = field(default_factory=list)  # (lo, hi, length)


def group_by_prefix(rows: Sequence[Row], min_length: int) -> tuple[list[PrefixGroup], list[Row]]:
    """Split causal-LM rows into prefix groups (two rows or more) and the rows left to run whole."""
    if len(rows) < 2:
        return [], list(rows)
    # Only rows whose first ``min_length`` tokens occur in another row can share a long enough
    # prefix: a dictionary finds them without sorting and comparing every row.
    keys = [tuple(row.input_ids[:min_length]) for row in rows]
    heads: dict[tuple[int, ...], int] = {}
    for key in keys:
        heads[key] = heads.get(key, 0) + 1
    candidates = [i for i, (row, key) in enumerate(zip(rows, keys)) if heads[key] > 1 and read_limit(row) >= min_length]
    if len(candidates) < 2:
        return [], list(rows)
    order = sorted(candidates, key=lambda i: rows[i].input_ids)
    limits = [read_limit(rows[i]) for i in order]
    shared = [
        common_prefix_length(rows[order[i]].input_ids, rows[order[i + 1]].input_ids, min(limits[i], limits[i + 1]))
        for i in range(len(order) - 1)
    ]

    def close(length: int, children: list[_Run]) -> _Run:
        lo, hi = children[0].lo, children[-1].hi
        split = sum(c.saved for c in children)
        whole = (hi - lo) * length if length >= min_length else -1
        if whole >= split:
            return _Run(lo, hi, whole, [(lo, hi, length)])
        return _Run(lo, hi, split, [g for c in children for g in c.groups])

    # Bottom-up over the Cartesian tree of ``shared``: the stack holds open runs by their length.
    stack: list[tuple[int, list[_Run]]] = []
    current = _Run(0, 0)
    for i, length in enumerate(shared):
        while stack and stack[-1][0] > length:
            top_length, children = stack.pop()
            children.append(current)
            current = close(top_length, children)
        if stack and stack[-1][0] == length:
            stack[-1][1].append(current)
        else:
            stack.append((length, [current]))
        current = _Run(i + 1, i + 1)
    while stack:
        top_length, children = stack.pop()
        children.append(current)
        current = close(top_length, children)

    groups, grouped = [], set()
    for lo, hi, length in current.groups:
        members = [rows[order[i]] for i in range(lo, hi + 1)]
        groups.append(PrefixGroup(length, members))
        grouped.update(order[lo : hi + 1])
    rest = [row for i, row in enumerate(rows) if i not in grouped]
    return groups, rest


@functools.cache
def _suffix_layer_class() -> type | None:
    """The cache layer :func:`suffix_cache` builds (defined once; None on transformers 4.x, which has no layers)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class SuffixLayer(DynamicLayer):
        """A layer whose prefix sits in a buffer with room for the suffix; ``update`` writes into it."""

        def __init__(self, keys: Any, values: Any, width: int) -> None:
            super().__init__()
            self._buffers, self._width = (keys, values), width
            self.keys, self.values = keys[:, :, :width], values[:, :, :width]
            self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            end = self._width + key_states.shape[-2]
            keys, values = self._buffers
            if end > keys.shape[-2]:  # not the one suffix pass this cache was sized for
                return super().update(key_states, value_states, *args, **kwargs)
            keys[:, :, self._width : end].copy_(key_states)
            values[:, :, self._width : end].copy_(value_states)
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return self.keys, self.values

    return SuffixLayer


def suffix_cache(states: Sequence[tuple[Any, Any]], which: Any | None, rows: int, suffix_width: int) -> Any:
    """A key/value cache for ``rows`` suffixes of ``suffix_width`` tokens behind cached prefixes.

    ``states`` are per-layer ``(P, heads, width, d)`` prefix states; row ``b`` continues prefix
    ``which[b]`` (``which`` None: the one prefix, broadcast). Each layer's prefix and the suffix's
    keys share one buffer allocated once, so a suffix pass copies the prefix states once (into the
    buffer) rather than three times (batch gather, cache fill and the concatenation of every
    layer's update). transformers versions without cache layers get a plain ``DynamicCache``.
    """
    from transformers import DynamicCache

    def rows_of(x: Any) -> Any:
        return x.expand(rows, *x.shape[1:]) if which is None else x.index_select(0, which)

    layer_class = _suffix_layer_class()
    if layer_class is None:  # transformers 4.x: a cache of per-layer lists, filled by concatenation
        return DynamicCache.from_legacy_cache(  # type: ignore[attr-defined]  # 4.x only; 5 removed it
            tuple((rows_of(k), rows_of(v)) for k, v in states)
        )
    layers = []
    for k, v in states:
        buffers = []
        for x in (k, v):
            buffer = x.new_empty(rows, x.shape[1], x.shape[2] + suffix_width, x.shape[3])
            buffer[:, :, : x.shape[2]].copy_(rows_of(x))
            buffers.append(buffer)
        layers.append(layer_class(*buffers, k.shape[2]))
    cache = DynamicCache()
    cache.layers = layers
    return cache
