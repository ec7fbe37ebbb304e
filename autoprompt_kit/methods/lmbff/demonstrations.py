"""LM-BFF's demonstrations as a transform of a split: every example gets a ``demos`` field sampled
from a pool. The searched, saved form is :class:`autoprompt_kit.demonstrations.Demonstrations`."""

from __future__ import annotations

import math

import numpy as np

from ...data import Example, Split
from ...demonstrations import DEMO_FIELD, SentenceEncoder
from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer


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
