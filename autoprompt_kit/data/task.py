"""Task data model: :class:`Example`, :class:`Split` and :class:`Task`, plus few-shot sampling.

Everything here is a value: examples and splits are immutable, so a split's content fingerprint
can key caches (encoded prompts, model scores) safely.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, overload

import numpy as np

from ..errors import AutoPromptError

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1")


class FrozenMeta(Mapping[str, str]):
    """A read-only, hashable ``str -> str`` mapping (the type of :attr:`Example.meta`)."""

    __slots__ = ("_items", "_dict")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = dict(items.items() if isinstance(items, Mapping) else items)
        for key, value in pairs.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise AutoPromptError(f"example meta fields must map strings to strings; got {key!r}: {value!r}")
        # Sorted pairs give a hash and fingerprint that do not depend on column order.
        self._items: tuple[tuple[str, str], ...] = tuple(sorted(pairs.items()))
        self._dict = dict(self._items)

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMeta):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._dict == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._dict)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMeta, (self._items,))


@dataclass(frozen=True)
class Example:
    """One input: one or two texts, a label index and optional extra string fields.

    Attributes:
        text_a: The main text.
        label: Index into :attr:`Task.label_names`; ``-1`` means unlabelled.
        text_b: The second text of a sentence-pair task, else ``None``.
        guid: An identifier for error messages and debugging (not part of the fingerprint).
        meta: Extra string fields a template may read by name, e.g. ``{premise}``. Stored as a
            hashable :class:`FrozenMeta`; any mapping is accepted.
    """

    text_a: str
    label: int
    text_b: str | None = None
    guid: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text_a, str):
            raise AutoPromptError(f"example {self.guid!r}: text_a must be a string, got {self.text_a!r}")
        if self.text_b is not None and not isinstance(self.text_b, str):
            raise AutoPromptError(f"example {self.guid!r}: text_b must be a string or None, got {self.text_b!r}")
        if isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)):
            raise AutoPromptError(f"example {self.guid!r}: label must be an int, got {self.label!r}")
        if self.label < -1:
            raise AutoPromptError(f"example {self.guid!r}: label {self.label} is negative (use -1 for unlabelled)")
        # Normalise numpy ints and plain dicts so equality, hashing and pickling behave.
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "guid", str(self.guid))
        if not isinstance(self.meta, FrozenMeta):
            object.__setattr__(self, "meta", FrozenMeta(self.meta))

    def get_field(self, name: str) -> str:
        """Return the field a template refers to: ``text_a``, ``text_b`` or a meta key.

        Raises:
            AutoPromptError: if the example has no such field (or ``text_b`` is ``None``).
        """
        if name == "text_a":
            return self.text_a
        if name == "text_b":
            if self.text_b is None:
                raise AutoPromptError(
                    f"example {self.guid!r} has no text_b (not a sentence-pair task); "
                    f"available fields: {sorted(self.field_names())}"
                )
            return self.text_b
        try:
            return self.meta[name]
        except KeyError:
            raise AutoPromptError(
                f"example {self.guid!r} has no field {name!r}; available fields: {sorted(self.field_names())}"
            ) from None

    def field_names(self) -> set[str]:
        """Names :meth:`get_field` accepts for this example."""
        names = {"text_a", *self.meta}
        if self.text_b is not None:
            names.add("text_b")
        return names


def _example_key(ex: Example) -> list[Any]:
    return [ex.text_a, ex.text_b, ex.label, [list(p) for p in ex.meta.items()]]


class Split(Sequence[Example]):
    """An immutable, named list of examples with a content fingerprint (used as a cache key).

    Indexing with an int gives an :class:`Example`; with a slice, a list of ints, an int array or
    a boolean mask it gives a new :class:`Split` with the same name.
    """

    def __init__(
        self, examples: Iterable[Example], name: str = "split", label_names: Sequence[str] | None = None
    ) -> None:
        items = tuple(examples)
        for i, ex in enumerate(items):
            if not isinstance(ex, Example):
                raise AutoPromptError(f"split {name!r} item {i} is a {type(ex).__name__}, not an Example")
        self._examples = items
        self.name = str(name)
        # The task's class names, when known: lets the harness check a verbalizer against them.
        self.label_names: list[str] | None = list(label_names) if label_names is not None else None

    @cached_property
    def fingerprint(self) -> str:
        """SHA-1 over (text_a, text_b, label, meta) of every example, in order."""
        digest = hashlib.sha1()
        for ex in self._examples:
            digest.update(json.dumps(_example_key(ex), ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    @cached_property
    def labels(self) -> np.ndarray:
        """Labels as a read-only int64 array (``-1`` = unlabelled)."""
        arr = np.fromiter((ex.label for ex in self._examples), dtype=np.int64, count=len(self._examples))
        arr.flags.writeable = False
        return arr

    def fields(self) -> set[str]:
        """Field names every example has: ``text_a``, ``text_b`` if all have one, shared meta keys."""
        if not self._examples:
            return set()
        common = self._examples[0].field_names()
        for ex in self._examples[1:]:
            common &= ex.field_names()
        return common

    def __len__(self) -> int:
        return len(self._examples)

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> Split: ...

    def __getitem__(self, index: Any) -> Example | Split:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self._examples[index]
        if isinstance(index, slice):
            return Split(self._examples[index], name=self.name, label_names=self.label_names)
        arr = np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {arr.shape} for a split of length {len(self)}")
            arr = np.flatnonzero(arr)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"split indices must be ints, slices, int sequences or masks, not {index!r}")
        return Split((self._examples[int(i)] for i in arr), name=self.name, label_names=self.label_names)

    def __iter__(self) -> Iterator[Example]:
        return iter(self._examples)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self._examples == other._examples

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Split(name={self.name!r}, size={len(self)}, fingerprint={self.fingerprint[:10]})"


@dataclass
class Task:
    """A classification task: label names and named splits.

    Attributes:
        name: Short task name (``"mr"``, a file stem, a HF dataset name).
        label_names: Class names; an example's label indexes this list.
        splits: Split name to :class:`Split` (usually ``train``, ``dev``, ``test``). Plain
            iterables of examples are converted.
        metric: ``"accuracy"`` or ``"macro_f1"``.
        description: Free text: where the data came from.
    """

    name: str
    label_names: list[str]
    splits: dict[str, Split]
    metric: str = "accuracy"
    description: str = ""
    shots: int | None = None  # K per class of train and dev when they were sampled few-shot

    def __post_init__(self) -> None:
        self.label_names = [str(n) for n in self.label_names]
        if not self.label_names:
            raise AutoPromptError(f"task {self.name!r} has no label names")
        if len(set(self.label_names)) != len(self.label_names):
            raise AutoPromptError(f"task {self.name!r} has duplicate label names: {self.label_names}")
        if self.metric not in METRICS:
            raise AutoPromptError(f"task {self.name!r}: unknown metric {self.metric!r}; use one of {list(METRICS)}")
        if not self.splits:
            raise AutoPromptError(f"task {self.name!r} has no splits")
        splits: dict[str, Split] = {}
        for key, split in self.splits.items():
            if not isinstance(split, Split):
                split = Split(split, name=key)
            if len(split) == 0:
                raise AutoPromptError(f"task {self.name!r}: split {key!r} is empty")
            top = int(split.labels.max())
            if top >= len(self.label_names):
                raise AutoPromptError(
                    f"task {self.name!r}: split {key!r} has label {top} but only "
                    f"{len(self.label_names)} label names {self.label_names}"
                )
            if split.label_names is None:
                split.label_names = self.label_names
            splits[key] = split
        self.splits = splits

    def __getitem__(self, split_name: str) -> Split:
        try:
            return self.splits[split_name]
        except KeyError:
            raise AutoPromptError(
                f"task {self.name!r} has no split {split_name!r}; available splits: {', '.join(self.splits)}"
            ) from None

    @property
    def train(self) -> Split:
        """The ``train`` split."""
        return self["train"]

    @property
    def dev(self) -> Split:
        """The ``dev`` split."""
        return self["dev"]

    @property
    def test(self) -> Split:
        """The ``test`` split."""
        return self["test"]

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    def info(self, **extra: Any) -> dict[str, Any]:
        """What a study records about the task (``best.json``'s ``task``): name, label names, metric,
        split sizes, plus ``extra`` (e.g. ``shots``, ``seed``, ``source``)."""
        return {
            "name": self.name,
            "label_names": list(self.label_names),
            "metric": self.metric,
            "splits": {k: len(v) for k, v in self.splits.items()},
            **extra,
        }

    def summary(self) -> str:
        """One line: name, labels and split sizes."""
        sizes = " ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"{self.name}: {self.num_labels} labels [{', '.join(self.label_names)}]; {sizes}; metric={self.metric}"


SMALL_CLASS = ("error", "all")


def few_shot_indices(
    labels: np.ndarray,
    k: int,
    rng: np.random.Generator,
    what: str,
    label_names: Sequence[str] | None,
    on_small_class: str = "error",
    shots_flag: str | None = None,
) -> np.ndarray:
    """``k`` indices per class; ``shots_flag`` (e.g. ``--shots``) is what an error tells the user to lower."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise AutoPromptError(f"few-shot k must be a positive integer, got {k!r}")
    if on_small_class not in SMALL_CLASS:
        raise AutoPromptError(f"on_small_class must be one of {SMALL_CLASS}, got {on_small_class!r}")
    present = np.unique(labels[labels >= 0])
    if present.size == 0:
        raise AutoPromptError(f"cannot sample {k} shots from {what}: it has no labelled examples")
    # With the task's class names known, a class absent from the split is an error too, not a
    # K-shot split that silently lacks it.
    classes = np.arange(len(label_names)) if label_names else present

    def name(c: int | np.integer) -> str:
        return f"{int(c)} ({label_names[int(c)]!r})" if label_names and int(c) < len(label_names) else str(int(c))

    counts = {int(x): int((labels == x).sum()) for x in classes}
    chosen, short = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if idx.size < k:
            if idx.size == 0 or on_small_class == "error":
                knob = shots_flag or "k"
                fix = f"lower {knob}" if idx.size else f"lower {knob} or give the class examples"
                if idx.size and on_small_class == "error" and shots_flag is None:
                    fix += " (or on_small_class='all' to take all of a smaller class)"
                raise AutoPromptError(
                    f"cannot sample {k} examples per class from {what}: class {name(c)} has only {idx.size} "
                    f"(class counts: {counts}); {fix}"
                )
            short.append(f"{name(c)}: {idx.size}")
        chosen.append(rng.choice(idx, size=min(k, idx.size), replace=False))
    if short:
        logger.warning(
            "few-shot sampling from %s: %d per class asked, but %s — all of those taken (on_small_class='all')",
            what,
            k,
            ", ".join(short),
        )
    return rng.permutation(np.concatenate(chosen))


def few_shot(
    split: Split,
    k: int,
    seed: int,
    name: str | None = None,
    *,
    label_names: Sequence[str] | None = None,
    on_small_class: str = "error",
) -> Split:
    """Sample ``k`` examples per class (the LM-BFF protocol), deterministically.

    Classes are visited in label order, each sampled without replacement from one
    ``numpy.random.Generator(seed)``, which then shuffles the result. Unlabelled examples are
    ignored.

    Args:
        split: Source examples.
        k: Examples per class (>= 1).
        seed: Sampling seed.
        name: Name of the new split (default: the source split's name).
        label_names: The classes (default: the split's ``label_names``); every one must have examples.
            Without names, the classes are the labels present.
        on_small_class: A class with fewer than ``k`` examples: ``error`` (default) or ``all`` (take
            all of them, with a warning: the split is then imbalanced). A class with none is an error.

    Raises:
        AutoPromptError: if ``k < 1`` or a class has fewer than ``k`` examples (``on_small_class="error"``)
            or none.
    """
    rng = np.random.default_rng(seed)
    names = label_names if label_names is not None else split.label_names
    idx = few_shot_indices(split.labels, k, rng, f"split {split.name!r}", names, on_small_class)
    return Split((split[int(i)] for i in idx), name=split.name if name is None else name, label_names=split.label_names)
