"""The space of ``select``: manual templates (and their ensembles) × label-word sets × calibrations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import AutoPromptError
from ...prompts import CALIBRATIONS, Template, Verbalizer
from ...search.base import ENSEMBLE_WEIGHTINGS, SearchConfig, choice


@dataclass
class SelectConfig(SearchConfig):
    templates: list[str] = field(
        default_factory=list, metadata={"role": "templates", "help": "manual templates to choose from"}
    )
    label_words: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"role": "label_word_sets", "help": "label-word sets: each maps every label to its word(s)"},
    )
    calibration: list[str] = choice(["none"], help="none and/or content_free")
    aggregation: str = field(default="mean", metadata={"help": "how a class's words combine"})
    ensembles: list[str] = field(
        default_factory=list, metadata={"help": "also try the ensemble of all templates: uniform and/or dev"}
    )

    @classmethod
    def task_defaults(cls, task: Any) -> dict[str, Any]:
        return {"calibration": ["none", "content_free"], "ensembles": ["uniform"]}

    def __post_init__(self) -> None:
        if not self.templates:
            raise AutoPromptError("the select space needs at least one template under 'templates'")
        if not self.label_words:
            raise AutoPromptError("the select space needs at least one label-word set under 'label_words'")
        for t in self.templates:
            Template(t)  # validates (mask, fields) with a clear message
        for words in self.label_words:
            if not isinstance(words, dict):
                raise AutoPromptError(f"each label-word set must map labels to words, got {words!r}")
            for calibration in self.calibration:
                Verbalizer.from_words(
                    words,
                    aggregation=self.aggregation,
                    calibration=calibration if calibration in CALIBRATIONS else "none",
                )
        bad = [c for c in self.calibration if c not in CALIBRATIONS]
        if bad or not self.calibration:
            raise AutoPromptError(f"calibration must be a non-empty list of {CALIBRATIONS}, got {self.calibration}")
        bad = [e for e in self.ensembles if e not in ENSEMBLE_WEIGHTINGS]
        if bad:
            raise AutoPromptError(f"ensembles must be a list of {ENSEMBLE_WEIGHTINGS}, got {self.ensembles}")

    def axes(self) -> dict[str, list[Any]]:
        """A template (its text), or an ensemble of all of them; a label-word set (stored in the
        study as its words, e.g. ``terrible/great``)."""
        return {
            "template": list(self.templates) + [self.ensemble_label(e) for e in self.ensembles],
            "label_words": list(self.label_words),
            "calibration": list(self.calibration),
        }

    def ensemble_label(self, weighting: str) -> str:
        """The template parameter of an ensemble trial: ``ensemble of 4 (uniform)``."""
        return f"ensemble of {len(self.templates)} ({weighting})"
