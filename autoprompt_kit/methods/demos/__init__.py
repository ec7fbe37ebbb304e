"""In-context demonstrations as a searched part of the prompt (GPT-3; KATE; LM-BFF; DSPy's few-shot optimizers).

Each trial scores, on dev, one prompt with ``per_class`` train examples of every class in front
of each input (after it for masked LMs and T5): chosen ``random``-ly per input, as the
``similar``-est per input by a sentence encoder (KATE), or as one ``dev_selected`` fixed set — the
best of ``fixed_candidates`` random class-balanced sets, scored on the train examples outside each
set (or on dev, as DSPy's BootstrapFewShotWithRandomSearch does) — arranged in an ``order``, joined by
a ``separator``, with or without content-free calibration (whose inputs carry the same
demonstrations). ``per_class: 0`` is the prompt without demonstrations.

The demonstrations start from ``template`` + ``label_words``, or from a saved prompt (``prompt:``,
any method's result): its templates, verbalizer and trained state are kept.
"""

from .config import SELECT_ON, SELECTIONS, DemosConfig
from .searcher import DemosSearcher, select_fixed_demonstrations

__all__ = ["SELECTIONS", "SELECT_ON", "DemosConfig", "DemosSearcher", "select_fixed_demonstrations"]
