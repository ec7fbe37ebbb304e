"""Templates: the text wrapped around an example, with one mask where the label word goes.

Two syntaxes are accepted and may be mixed:

* shorthand — ``{text_a} It was {mask}.``, ``{text_b}``, any example field ``{premise}``,
  ``{soft}`` / ``{soft:It was}`` (trainable tokens, optionally initialised from text),
  ``{trigger}`` / ``{trigger*4}`` (slots that a search method fills with tokens);
* OpenPrompt's JSON-ish parts — ``{"placeholder": "text_a"}``, ``{"mask"}``, ``{"soft"}``,
  ``{"soft": "It was"}``, ``{"meta": "premise"}``, ``{"text": "literal"}``.

A template is an immutable value: search methods make new ones with :meth:`Template.with_triggers`.
Templates serialise to/from JSON (:meth:`to_dict` / :meth:`from_dict`); the same JSON is what every
search job writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AutoPromptError

BUILTIN_FIELDS = ("text_a", "text_b")
#: The meta field that holds a prompt's in-context demonstrations. It is prompt context, not
#: input: content-free calibration inputs keep it (:meth:`Harness.evaluate_many`).
DEMO_FIELD = "demos"


@dataclass(frozen=True)
class Text:
    """Literal template text."""

    text: str


@dataclass(frozen=True)
class Field:
    """A placeholder filled from the example (``text_a``, ``text_b`` or a meta field)."""

    name: str


@dataclass(frozen=True)
class Mask:
    """Where the label word goes."""


@dataclass(frozen=True)
class Soft:
    """One trainable token; ``init`` is the token text its embedding starts from (may be empty)."""

    init: str = ""


@dataclass(frozen=True)
class Trigger:
    """A discrete slot filled by a search (AutoPrompt); ``token_id`` is None until filled.

    ``token`` keeps the filled token's text so a saved template stays readable.
    """

    token_id: int | None = None
    token: str | None = None


Part = Text | Field | Mask | Soft | Trigger

_BRACE = re.compile(r"\{([^{}]*)\}")
_TRIGGER = re.compile(r"^trigger(?:\*(\d+))?$")


def short(text: str, limit: int = 80) -> str:
    """A template's text for an error message: long ones are cut (a 25 KB message helps nobody)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _parse_jsonish(inner: str, source: str) -> list[Part]:
    """Parse an OpenPrompt-style ``{"key": value, ...}`` part."""
    body = inner.strip()
    # OpenPrompt allows bare keys like {"mask"} and Python literals like True.
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", body)))
    from ..io import loads_json  # nesting bounded: a part of 5,000 '[' is an error, not a RecursionError

    try:
        if ":" not in body:
            key = loads_json(body, f"template {short(source)!r}")
            if not isinstance(key, str):
                raise json.JSONDecodeError("expected a quoted key", body, 0)
            obj: dict[str, Any] = {key: None}
        else:
            obj = loads_json("{" + fixed + "}", f"template {short(source)!r}")
    except json.JSONDecodeError as exc:
        raise AutoPromptError(
            f"template {short(source)!r}: cannot parse part {short('{' + inner + '}', 40)}: "
            f'{exc.msg} (OpenPrompt syntax: {{"mask"}}, {{"placeholder": "text_a"}})'
        ) from None
    if "placeholder" in obj:
        name = str(obj["placeholder"])
        return [Field(name)]
    if "meta" in obj:
        return [Field(str(obj["meta"]))]
    if "mask" in obj:
        return [Mask()]
    if "soft" in obj:
        init = obj["soft"]
        if init is None:
            return [Soft()]
        # OpenPrompt makes one soft token per token of the init text; we keep one per word and let
        # the tokenizer split it (the harness counts the tokens).
        return [Soft(str(init))]
    if "trigger" in obj:
        count = obj["trigger"] if obj["trigger"] is not None else 1
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AutoPromptError(
                f'template {short(source)!r}: {{"trigger": {obj["trigger"]!r}}} needs a positive '
                "number of trigger tokens"
            )
        return [Trigger() for _ in range(count)]
    if "text" in obj:
        return [Text(str(obj["text"]))]
    raise AutoPromptError(
        f"template {short(source)!r}: unknown part {short('{' + inner + '}', 40)} "
        "(expected placeholder, meta, mask, soft, trigger or text)"
    )


def _parse_shorthand(inner: str, source: str) -> list[Part]:
    key = inner.strip()
    if key == "mask":
        return [Mask()]
    if key == "soft":
        return [Soft()]
    if key.startswith("soft:"):
        return [Soft(key[len("soft:") :].strip())]
    match = _TRIGGER.match(key)
    if match:
        count = int(match.group(1) or 1)
        if count < 1:
            raise AutoPromptError(f"template {short(source)!r}: {{{inner}}} needs at least one trigger")
        return [Trigger() for _ in range(count)]
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return [Field(key)]
    raise AutoPromptError(f"template {short(source)!r}: cannot parse placeholder {short('{' + inner + '}', 40)}")


def parse_template(source: str) -> list[Part]:
    """Split template text into parts; see the module docstring for the syntax."""
    parts: list[Part] = []
    pos = 0
    for match in _BRACE.finditer(source):
        if match.start() > pos:
            parts.append(Text(source[pos : match.start()]))
        inner = match.group(1)
        if inner.strip().startswith('"'):
            parts.extend(_parse_jsonish(inner, source))
        else:
            parts.extend(_parse_shorthand(inner, source))
        pos = match.end()
    if pos < len(source):
        parts.append(Text(source[pos:]))
    rest = "".join(p.text for p in parts if isinstance(p, Text))
    if "{" in rest or "}" in rest:
        raise AutoPromptError(f"template {short(source)!r}: unbalanced brace")
    return parts


@dataclass(frozen=True)
class Template:
    """A prompt template: parts around exactly one mask.

    Args:
        text: the template source (see module docstring).
        parts: parsed parts; filled in from ``text`` when not given.
    """

    text: str
    parts: tuple[Part, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise AutoPromptError(f"a template must be text, got {type(self.text).__name__} {self.text!r:.40}")
        if not self.text.strip():
            raise AutoPromptError("template is empty")
        if not self.parts:
            object.__setattr__(self, "parts", tuple(parse_template(self.text)))
        masks = sum(isinstance(p, Mask) for p in self.parts)
        if masks == 0:
            raise AutoPromptError(f"template {short(self.text)!r} has no mask: add {{mask}} where the label word goes")
        if masks > 1:
            raise AutoPromptError(f"template {short(self.text)!r} has {masks} masks: exactly one {{mask}} is allowed")
        if not self.fields:
            raise AutoPromptError(f"template {short(self.text)!r} uses no input field: add {{text_a}}")

    # -- views ---------------------------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        """Names of the example fields the template reads, in order."""
        return [p.name for p in self.parts if isinstance(p, Field)]

    @property
    def num_triggers(self) -> int:
        return sum(isinstance(p, Trigger) for p in self.parts)

    @property
    def num_soft(self) -> int:
        return sum(isinstance(p, Soft) for p in self.parts)

    @property
    def trigger_ids(self) -> list[int | None]:
        return [p.token_id for p in self.parts if isinstance(p, Trigger)]

    def check_fields(self, available: Iterable[str]) -> None:
        """Raise if the template reads a field the data does not have."""
        have = set(available)
        missing = [f for f in self.fields if f not in have]
        if missing:
            raise AutoPromptError(
                f"template {short(self.text)!r} reads unknown field(s) {missing}; the examples have {sorted(have)}"
            )

    # -- construction ----------------------------------------------------------------------------
    def with_triggers(self, token_ids: Sequence[int], tokens: Sequence[str] | None = None) -> Template:
        """Return a copy with the trigger slots filled, in order."""
        if len(token_ids) != self.num_triggers:
            raise AutoPromptError(
                f"template {short(self.text)!r} has {self.num_triggers} trigger slot(s), got {len(token_ids)} token(s)"
            )
        fills = iter(zip(token_ids, tokens if tokens is not None else [None] * len(token_ids)))
        parts = []
        for part in self.parts:
            if isinstance(part, Trigger):
                token_id, token = next(fills)
                part = Trigger(int(token_id), token)
            parts.append(part)
        return Template(self.text, tuple(parts))

    def fill(self, example: Any, word: str) -> str:
        """The template as plain text for one example with ``word`` at the mask (e.g. a demonstration)."""
        out = []
        for p in self.parts:
            if isinstance(p, Text):
                out.append(p.text)
            elif isinstance(p, Field):
                out.append(example.get_field(p.name).strip())
            elif isinstance(p, Mask):
                out.append(word)
            elif isinstance(p, Soft):
                out.append(p.init)
            elif isinstance(p, Trigger):
                out.append(p.token or "")
        return re.sub(r"\s+", " ", "".join(out)).strip()

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text}
        if self.num_triggers:
            out["trigger_ids"] = self.trigger_ids
            out["trigger_tokens"] = [p.token for p in self.parts if isinstance(p, Trigger)]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Template:
        if isinstance(data, str):
            return cls(data)
        if not isinstance(data, dict):
            raise AutoPromptError(f'a template must be text or {{"text": ...}}, got {type(data).__name__} {data!r:.40}')
        if "text" not in data:
            raise AutoPromptError("template JSON needs a 'text' key")
        template = cls(data["text"])
        ids = data.get("trigger_ids")
        if ids is not None and (
            not isinstance(ids, list)
            or not all(i is None or (isinstance(i, int) and not isinstance(i, bool) and i >= 0) for i in ids)
        ):
            raise AutoPromptError(
                f"template {short(template.text)!r}: trigger_ids must be a list of token ids, got {ids!r:.60}"
            )
        if ids and all(i is not None for i in ids):
            template = template.with_triggers(ids, data.get("trigger_tokens"))
        return template

    def display(self) -> str:
        """The template as text, with filled trigger slots shown as ``[token]``."""
        return _render_source(self.parts)

    def __str__(self) -> str:
        return self.display()


def _render_source(parts: Sequence[Part]) -> str:
    """Write parts back as shorthand text; filled triggers show as ``[token]``."""
    out = []
    for p in parts:
        if isinstance(p, Text):
            out.append(p.text)
        elif isinstance(p, Field):
            out.append("{" + p.name + "}")
        elif isinstance(p, Mask):
            out.append("{mask}")
        elif isinstance(p, Soft):
            out.append("{soft:" + p.init + "}" if p.init else "{soft}")
        elif isinstance(p, Trigger):
            out.append("{trigger}" if p.token_id is None else f"[{p.token if p.token is not None else p.token_id}]")
    return "".join(out)


def as_template(value: Template | str | dict[str, Any]) -> Template:
    """Accept a Template, its text or its JSON dict."""
    if isinstance(value, Template):
        return value
    return Template.from_dict(value)
