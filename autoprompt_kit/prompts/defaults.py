"""Prompt defaults read off a task: label words from its class names, generic templates by input shape.

Nothing here knows a dataset: a class named ``sci_tech`` reads as the words ``science`` and
``technology``, ``World`` as ``world``, ``not_spam`` as ``not spam``; templates depend only on
whether examples have a second text (``text_b``). Methods build their default search space from
these (``Config.for_task``), and ``autoprompt-kit space METHOD --task …`` writes it out to edit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import AutoPromptError

if TYPE_CHECKING:
    from ..data import Task

#: Abbreviations common in label sets (AG News, 20 Newsgroups, intent and NLI sets), spelled out
#: so a language model can read them. Generic English, not any one corpus's classes.
ABBREVIATIONS = {
    "sci": "science",
    "tech": "technology",
    "biz": "business",
    "pol": "politics",
    "polit": "politics",
    "med": "medicine",
    "comp": "computers",
    "rec": "recreation",
    "misc": "miscellaneous",
    "soc": "society",
    "sys": "systems",
    "os": "operating system",
    "env": "environment",
    "edu": "education",
    "econ": "economy",
    "ent": "entertainment",
    "gov": "government",
    "intl": "international",
    "neg": "negative",
    "pos": "positive",
    "neu": "neutral",
    "info": "information",
    "qa": "question",
    "faq": "question",
    "msg": "message",
    "auto": "automobile",
    "autos": "automobiles",
    "govt": "government",
    "int": "international",
}
_STOP = {"and", "or", "the", "of", "a", "an", "&"}

#: Single-text templates: the label word read right after the text (every model kind reads these;
#: a causal LM reads the word as the next token), phrased for any kind of class. The first is what
#: one-template methods use: it ranked first zero-shot on both a topic task and a sentiment task
#: (README, "Your own task").
SINGLE_TEMPLATES = (
    "{text_a} Category: {mask}.",
    "{text_a} This text is about {mask}.",
    "{text_a} It was {mask}.",
    "Text: {text_a} Label: {mask}",
)
#: Sentence-pair templates (entailment, paraphrase, question-answer pairs): the word links the two.
PAIR_TEMPLATES = (
    "{text_a} Question: {text_b} Answer: {mask}.",
    "{text_a} ? {mask} , {text_b}",
    "First: {text_a} Second: {text_b} Relation: {mask}",
)


def label_words(name: str) -> list[str]:
    """Words a model can read for one class name: ``sci_tech`` → ``["science", "technology"]``,
    ``Business`` → ``["business"]``, ``not_spam`` → ``["not spam"]``, ``men-women`` → ``["men", "women"]``.

    Raises when the name has no letters (``0``, ``1``…): such classes need words given by hand.
    """
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))  # camelCase
    parts = [p for p in re.split(r"[\s_\-/.,:;|+]+", text.strip()) if p]
    words: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i].lower()
        if part in ("not", "no", "non") and i + 1 < len(parts):  # a negation belongs to the next word
            words.append(f"{part} {ABBREVIATIONS.get(parts[i + 1].lower(), parts[i + 1].lower())}")
            i += 2
            continue
        if part not in _STOP and re.search(r"[a-z]", part):
            words.append(ABBREVIATIONS.get(part, part))
        i += 1
    if not words:
        raise AutoPromptError(
            f"class name {name!r} has no word a model can read; give label words in a search "
            "space (autoprompt-kit space METHOD --task … writes one to edit) or name the classes "
            "in the data"
        )
    return list(dict.fromkeys(words))


def task_label_words(label_names: Sequence[str]) -> dict[str, list[str]]:
    """``{class: words}`` for every class, each word given to one class only (a word two classes
    share is dropped from both, unless that leaves a class with none)."""
    words = {name: label_words(name) for name in label_names}
    counts: dict[str, int] = {}
    for ws in words.values():
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    out = {}
    for name, ws in words.items():
        unique = [w for w in ws if counts[w] == 1]
        if not unique:
            raise AutoPromptError(
                f"classes {[n for n in words if set(words[n]) & set(ws)]} read as the same words "
                f"{ws}; give label words by hand"
            )
        out[name] = unique
    return out


def is_pair_task(task: Task) -> bool:
    """True when every training example has a second text."""
    split = task.train if len(task.train) else task.dev
    return "text_b" in split.fields()


def task_templates(task: Task) -> list[str]:
    """The generic templates for this task's input shape (pairs or single texts)."""
    return list(PAIR_TEMPLATES if is_pair_task(task) else SINGLE_TEMPLATES)
