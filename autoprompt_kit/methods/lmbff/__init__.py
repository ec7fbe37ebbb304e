"""LM-BFF (Gao, Fisch & Chen, ACL 2021): generated templates, automatic label words, prompt fine-tuning.

    from autoprompt_kit.methods.lmbff import CausalTemplateGenerator, label_word_search
    generated = CausalTemplateGenerator(harness, beam=32).generate(task.train, verbalizer)
    found = label_word_search(harness, task.train, task.dev, "{text_a} It was {mask}.", task.label_names)

See :mod:`.generation` (seq2seq and causal template generation), :mod:`.label_words` (candidate
words, assignment search), :mod:`.finetune` (prompt-based fine-tuning), :mod:`.config` (the space)
and :mod:`.searcher` (the study: ranking, trials). Demonstrations are
:mod:`autoprompt_kit.demonstrations`' (``add_demonstrations``, :class:`~autoprompt_kit.demonstrations.Demonstrations`).
"""

from ...demonstrations import DEMO_FIELD, SentenceEncoder, demonstration_template
from .config import FINETUNE_PARAMETERS, LMBFFConfig
from .finetune import FineTunedWeights, prompt_finetune, restored_weights
from .generation import (
    SEQ2SEQ_FORMATS,
    CausalTemplateGenerator,
    GeneratedTemplate,
    Seq2SeqTemplateGenerator,
    span_token_mask,
)
from .label_words import (
    EXHAUSTIVE_LIMIT,
    LABEL_SEARCH_STRATEGIES,
    AssignmentSearch,
    LabelWordSearchResult,
    label_word_search,
    search_assignments,
)
from .searcher import LMBFFSearcher

__all__ = [
    "DEMO_FIELD",
    "EXHAUSTIVE_LIMIT",
    "FINETUNE_PARAMETERS",
    "FineTunedWeights",
    "LABEL_SEARCH_STRATEGIES",
    "SEQ2SEQ_FORMATS",
    "AssignmentSearch",
    "CausalTemplateGenerator",
    "GeneratedTemplate",
    "LMBFFConfig",
    "LMBFFSearcher",
    "LabelWordSearchResult",
    "SentenceEncoder",
    "Seq2SeqTemplateGenerator",
    "demonstration_template",
    "label_word_search",
    "prompt_finetune",
    "restored_weights",
    "search_assignments",
    "span_token_mask",
]
