"""The settings of ``auto``: which parts it may compose, and how many candidates each stage keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer
from ...prompts.template import DEMO_FIELD
from ...search.base import SearchConfig

if TYPE_CHECKING:
    from ...data import Task

#: The stages, in the order they run; each one's best candidates seed the next. The costly one
#: (demonstrations: every input grows by a demonstration per class) runs last, on what is left.
STAGES = ("words", "templates", "trained", "ensemble", "demonstrations")
DEMO_SELECTIONS = ("random", "similar")


@dataclass
class AutoConfig(SearchConfig):
    templates: list[str] = field(
        default_factory=list,
        metadata={"role": "templates", "help": "templates to compose (the first one is where the words are chosen)"},
    )
    label_words: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "role": "label_words",
            "help": "the class-name words (label → words): the verbalizer every stage starts from",
        },
    )
    stages: list[str] = field(
        default_factory=lambda: list(STAGES), metadata={"help": f"stages to run, in this order: {', '.join(STAGES)}"}
    )
    label_search: bool = field(
        default=True,
        metadata={
            "help": "words stage: also LM-BFF's label-word search (one word per class, beam search for many classes)"
        },
    )
    kpt: bool = field(
        default=True,
        metadata={
            "help": "words stage: also KPT's expansion of the class names (WordNet; VADER for sentiment polarities), "
            "refined on the training texts, contextual calibration"
        },
    )
    drop_unread_words: bool = field(
        default=True,
        metadata={
            "help": "words stage: drop class-name words the model never puts at the mask for a training example of "
            "their own class"
        },
    )
    label_search_k: int = field(default=20, metadata={"help": "label-word search: candidate words per class"})
    keep: int = field(default=2, metadata={"help": "best candidates of a stage that seed the next"})
    per_class: list[int] = field(
        default_factory=lambda: [1, 2],
        metadata={
            "help": "demonstrations stage: demonstrations per class to try "
            "(0, the prompt without, is always a candidate)"
        },
    )
    demo_selection: list[str] = field(
        default_factory=lambda: ["random", "similar"],
        metadata={
            "help": "demonstrations stage: random and/or similar (nearest by sentence embedding; skipped when no "
            "encoder is installed)"
        },
    )
    separator: str = field(default=" ", metadata={"help": "demonstrations stage: text between two demonstrations"})
    encoder: str | None = field(
        default=None, metadata={"help": "sentence encoder of similar (default all-MiniLM-L6-v2)"}
    )
    head: list[str] = field(
        default_factory=lambda: ["combined", "proto"],
        metadata={"help": "trained stage: ProtoVerb heads to try (combined with the words, or prototypes alone)"},
    )
    ensemble_size: int = field(default=3, metadata={"help": "ensemble stage: templates averaged (0 = no ensemble)"})

    def __post_init__(self) -> None:
        if not self.templates:
            raise AutoPromptError("the auto space needs at least one template under 'templates'")
        for t in self.templates:
            if DEMO_FIELD in Template(t).fields:
                raise AutoPromptError(
                    f"template {t!r} must not read {{{DEMO_FIELD}}}: the demonstrations stage adds it"
                )
        if not isinstance(self.label_words, dict) or len(self.label_words) < 2:
            raise AutoPromptError("the auto space needs label_words: a mapping of every label to its word(s)")
        Verbalizer.from_words(self.label_words)
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise AutoPromptError(f"stages must be a non-empty list of {STAGES}, got {self.stages}")
        if "words" not in self.stages:
            raise AutoPromptError("stages must include 'words': every later stage starts from its best words")
        if self.keep < 1 or self.label_search_k < 1:
            raise AutoPromptError("keep and label_search_k must be at least 1")
        if any(k < 1 for k in self.per_class):
            raise AutoPromptError(f"per_class must list numbers of demonstrations >= 1, got {self.per_class}")
        bad = [s for s in self.demo_selection if s not in DEMO_SELECTIONS]
        if bad:
            raise AutoPromptError(f"demo_selection must be a list of {DEMO_SELECTIONS}, got {self.demo_selection}")
        bad = [h for h in self.head if h not in ("combined", "proto")]
        if bad:
            raise AutoPromptError(f"head must be a list of 'combined' and/or 'proto', got {self.head}")
        if self.ensemble_size < 0 or self.ensemble_size == 1:
            raise AutoPromptError(f"ensemble_size must be 0 (none) or at least 2, got {self.ensemble_size}")

    def grid(self) -> list[dict[str, Any]] | None:
        return None  # staged: the candidates come stage by stage

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        counts = [
            int((task.train.labels == c).sum() + (task.dev.labels == c).sum()) for c in range(len(task.label_names))
        ]
        if min(counts) < 2:
            c = counts.index(min(counts))
            raise AutoPromptError(
                f"auto needs at least 2 labelled examples (train + dev) of every class; "
                f"{task.label_names[c]!r} has {counts[c]}"
            )
