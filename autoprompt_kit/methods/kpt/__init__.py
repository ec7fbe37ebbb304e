"""KPT — knowledgeable prompt-tuning (Hu et al., ACL 2022): a verbalizer expanded from seed words
through knowledge bases, refined on unlabelled support data and calibrated by each word's prior.

    from autoprompt_kit.methods.kpt import ExpansionSettings, RefineSettings, expand, refine, support_scores
    exp = expand({"negative": ["bad"], "positive": ["good"]}, ExpansionSettings(sources=("wordnet", "vader")), harness)
    scores = support_scores(harness, unlabeled, "{text_a} It was {mask}.", exp.all_words())
    result = refine(exp, scores, RefineSettings(prior_cut=0.5, min_relevance=0.3))
    harness.evaluate(test, "{text_a} It was {mask}.", result.verbalizer)

See :mod:`.knowledge` (sources, WordNet set-up, KB file format) and :mod:`.refine` (the pipeline).
"""

from .config import KPTConfig
from .knowledge import (
    WORDNET_INSTALL,
    embedding_neighbours,
    install_wordnet_from,
    read_kb,
    seed_valences,
    vader_class_words,
    vader_words,
    wordnet,
    wordnet_related,
)
from .refine import (
    Expansion,
    ExpansionSettings,
    KPTResult,
    RefineSettings,
    SupportScores,
    expand,
    learn_weights,
    refine,
    single_token_logprobs,
    support_scores,
    support_scores_from_hidden,
    vocabulary_statistics,
)
from .searcher import KPTSearcher, support_split

__all__ = [
    "WORDNET_INSTALL",
    "Expansion",
    "ExpansionSettings",
    "KPTConfig",
    "KPTResult",
    "KPTSearcher",
    "RefineSettings",
    "SupportScores",
    "embedding_neighbours",
    "expand",
    "install_wordnet_from",
    "learn_weights",
    "read_kb",
    "refine",
    "seed_valences",
    "single_token_logprobs",
    "support_scores",
    "support_scores_from_hidden",
    "support_split",
    "vader_class_words",
    "vader_words",
    "vocabulary_statistics",
    "wordnet",
    "wordnet_related",
]
