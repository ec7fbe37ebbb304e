"""The space of ``kpt``: expansion sources, depth, thresholds, calibration and aggregation as trial parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import AutoPromptError
from ...prompts import Template
from ...search.base import SearchConfig, choice
from . import knowledge
from .refine import ExpansionSettings, RefineSettings

if TYPE_CHECKING:
    from ...data import Task


def _sources(choice: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in choice.split("+") if p.strip())
    bad = [p for p in parts if p not in knowledge.SOURCES]
    if not parts or bad:
        raise AutoPromptError(f"a sources choice is '+'-joined names from {knowledge.SOURCES}, got {choice!r}")
    return parts


@dataclass
class KPTConfig(SearchConfig):
    template: str = field(
        default="{text_a} It was {mask}.", metadata={"role": "template", "help": "the prompt template"}
    )
    seed_words: dict[str, Any] = field(
        default_factory=dict,
        metadata={"role": "label_words", "help": "label → seed word(s), the class names KPT expands"},
    )
    sources: list[str] = choice(
        ["wordnet+vader"], help="choices: '+'-joined knowledge sources from wordnet, vader, kb, embedding"
    )
    wordnet_relations: list[str] = field(
        default_factory=lambda: list(knowledge.WORDNET_RELATIONS), metadata={"help": "WordNet relations followed"}
    )
    depth: list[int] = choice([1], help="choices: hypernym/hyponym steps")
    wordnet_senses: int = field(default=3, metadata={"help": "WordNet senses (most frequent first) per seed"})
    vader_threshold: list[float] = choice([2.0], help="choices: minimum |valence| of VADER words")
    vader_max_words: int = field(default=150, metadata={"help": "strongest VADER words per class"})
    kb_file: str | None = field(default=None, metadata={"help": "knowledge-base file (key<TAB>w1,w2 or JSON)"})
    neighbours: int = field(default=20, metadata={"help": "output-embedding neighbours per seed"})
    on_missing_seed: str = field(
        default="warn", metadata={"help": "a seed unknown to WordNet: warn (keep it) or error"}
    )
    max_tokens: list[int] = choice([1], help="choices: tokens per word")
    prior_cut: list[float] = choice(
        [0.5], help="choices: drop words whose support prior is below this vocabulary quantile"
    )
    relevance_cut: list[float] = choice(
        [0.0],
        help="choices: fraction of each class's non-seed words with the lowest relevance dropped (after min_relevance)",
    )
    min_relevance: list[float] = choice(
        [0.3],
        help="choices: lowest correlation with the own class's seeds over the "
        "support texts (and above every other class's); -1 = off",
    )
    presence_rank: int = field(
        default=1000,
        metadata={
            "help": "a word must be among the model's N most likely vocabulary words at the mask "
            "for some support texts "
            "(0 = off)"
        },
    )
    presence_min: float = field(
        default=0.02,
        metadata={
            "help": "the fraction of support texts (at least one) that must have the word in their presence_rank top"
        },
    )
    calibration: list[str] = choice(["contextual"], help="choices: contextual (divide by the prior) and/or none")
    aggregation: list[str] = choice(["mean"], help="choices: mean, max, sum")
    learn_weights: list[bool] = choice([False], help="choices: train per-word weights on the few-shot train split")
    support_size: int = field(
        default=200,
        metadata={"help": "unlabelled support examples (the task's 'unlabeled' split, else train) for priors"},
    )
    epochs: int = field(default=5, metadata={"help": "epochs of weight learning"})
    lr: float = field(default=0.06, metadata={"help": "learning rate of weight learning"})

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        # The VADER lexicon only knows sentiment polarity: a task's own classes expand through WordNet.
        return {"sources": ["wordnet"]}

    def __post_init__(self) -> None:
        Template(self.template)
        if not isinstance(self.seed_words, dict) or len(self.seed_words) < 2:
            raise AutoPromptError("kpt needs seed_words: a mapping of every label to its seed word(s)")
        self.seed_words = {str(k): [v] if isinstance(v, str) else list(v) for k, v in self.seed_words.items()}
        for sources in self.sources:
            _sources(sources)
        if any("kb" in _sources(c) for c in self.sources) and not self.kb_file:
            raise AutoPromptError("a sources choice uses 'kb' but kb_file is not set")
        for name, values in self.axes().items():
            if not values:
                raise AutoPromptError(f"kpt: {name} must be a non-empty list of choices")
        if self.support_size < 2 or self.epochs < 1 or self.lr <= 0:
            raise AutoPromptError("support_size must be >= 2, epochs >= 1 and lr > 0")

    def check_point(self, point: dict[str, Any]) -> None:
        self.settings(point)

    def settings(self, point: dict[str, Any]) -> tuple[ExpansionSettings, RefineSettings]:
        """The expansion and refinement settings of one trial's parameters."""
        expansion = ExpansionSettings(
            sources=_sources(point["sources"]),
            relations=tuple(self.wordnet_relations),
            depth=point["depth"],
            senses=self.wordnet_senses,
            vader_threshold=point["vader_threshold"],
            vader_max_words=self.vader_max_words,
            kb_file=self.kb_file,
            neighbours=self.neighbours,
            on_missing_seed=self.on_missing_seed,
        )
        refinement = RefineSettings(
            max_tokens=point["max_tokens"],
            prior_cut=point["prior_cut"],
            relevance_cut=point["relevance_cut"],
            calibration=point["calibration"],
            aggregation=point["aggregation"],
            min_relevance=point["min_relevance"],
            presence_rank=self.presence_rank,
            presence_min=self.presence_min,
        )
        return expansion, refinement

    def check_task(self, task: Task) -> None:
        """Also refuse the VADER source before the study opens when the task's classes are not
        sentiment polarities (its lexicon would add sentiment words to topic classes)."""
        super().check_task(task)
        if any("kb" in _sources(c) for c in self.sources) and self.kb_file:
            knowledge.read_kb(self.kb_file)  # missing, binary or not TSV: said now, not in the first trial
        if any("vader" in _sources(c) for c in self.sources):
            knowledge.seed_valences({lab: self.seed_words.get(lab, []) for lab in task.label_names})
