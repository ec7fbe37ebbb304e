"""The evaluation harness: the one scoring path every search method uses.

``Harness.evaluate`` scores a template + verbalizer on a split. Under it, ``Harness.score`` runs
the model over length-bucketed batches of rows (see :mod:`.encoding`) and returns each example's
label-word log-probabilities and its hidden state at the mask. The model's output layer is never
applied to every position: while the harness runs, the output embedding layer is swapped for
one that first gathers the few positions that are read and, when only one position per example is
read, projects onto the label-word rows alone (Gemma's 262k-row output matrix is most of its
compute). Rows of a causal LM that share a token prefix (see :mod:`.prefix`) run it once and
continue from its key/value cache. The same path exposes the mask hidden state (ProtoVerb).

Built on its primitives, each in a module of its own with a thin ``Harness`` method in front:
the training loop (:mod:`.training`, ``Harness.train``), AutoPrompt's trigger-gradient pass
(:mod:`.gradients`, ``Harness.embedding_gradient``) and decoding helpers (:mod:`.decoding`,
``Harness.body`` / ``Harness.output_logprobs``).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import inspect
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data import Example, Split
from ..errors import AutoPromptError
from ..models.loading import KINDS, LoadedModel, detect_kind, load_model
from ..prompts.template import DEMO_FIELD, Template, as_template
from ..prompts.verbalizer import Verbalizer, as_verbalizer
from . import decoding, gradients, precision as precisions, training
from .encoding import EncodedPrompt, PromptEncoder, Row
from .prefix import PrefixGroup, group_by_prefix, suffix_cache

logger = logging.getLogger(__name__)


@dataclass
class ScoreOutput:
    """Raw scores of items (examples, possibly across several templates).

    Attributes:
        word_logprobs: ``(N, W)`` log-probability of each label word (summed over its tokens).
            When every word is one token read at one position, these are normalised over the
            label words only (the class decision is the same; the full vocabulary is skipped).
        hidden: ``(N, d)`` the input of the output layer at the mask (None if not asked for).
    """

    word_logprobs: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class EvalResult:
    """Accuracy, macro-F1 and per-example scores of one prompt on one split."""

    accuracy: float
    macro_f1: float
    predictions: np.ndarray
    labels: np.ndarray
    class_logprobs: np.ndarray
    word_logprobs: np.ndarray
    prior: np.ndarray | None = None  # content-free class log-probs (C,); (N, C) when demonstrations differ
    seconds: float = 0.0
    template: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_class_logprobs(
        cls,
        class_logprobs: torch.Tensor | np.ndarray,
        labels: np.ndarray,
        *,
        word_logprobs: torch.Tensor | np.ndarray,
        num_classes: int | None = None,
        prior: torch.Tensor | np.ndarray | None = None,
        seconds: float = 0.0,
        template: str = "",
        extra: dict[str, Any] | None = None,
    ) -> EvalResult:
        """The result of class log-probs ``(N, C)``: argmax predictions, accuracy and macro-F1 over
        ``num_classes`` (default ``C``); tensors are stored as NumPy arrays on the CPU."""
        # The argmax is taken by the library the scores come in (tie and NaN order stay as they were).
        if isinstance(class_logprobs, torch.Tensor):
            predictions = class_logprobs.argmax(dim=1).cpu().numpy()
            class_logprobs = class_logprobs.cpu().numpy()
        else:
            predictions = class_logprobs.argmax(axis=1)
        acc, f1 = classification_metrics(labels, predictions, class_logprobs.shape[1] if num_classes is None
                                         else num_classes)
        return cls(accuracy=acc, macro_f1=f1, predictions=predictions, labels=labels, class_logprobs=class_logprobs,
                   word_logprobs=_numpy(word_logprobs), prior=None if prior is None else _numpy(prior),
                   seconds=seconds, template=template, extra={} if extra is None else extra)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n}

    def prediction_rate(self) -> np.ndarray:
        """Fraction of examples predicted as each class."""
        counts = np.bincount(self.predictions, minlength=self.class_logprobs.shape[1])
        return counts / max(1, len(self.predictions))

    def summary(self) -> str:
        return f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  (n={self.n}, {self.seconds:.1f}s)"


@dataclass
class _Plan:
    """Index tensors of one batch: inputs, read positions and where each target's score goes."""

    rows: list[Row]
    ids: torch.Tensor            # (B, T) token ids (after each row's cached prefix, if any)
    mask: torch.Tensor           # (B, T)
    positions: torch.Tensor      # (B, K) read positions in ``ids``
    hidden_k: torch.Tensor       # (B,) which of the K positions is the hidden state's
    target_batch: torch.Tensor   # (n,) per target: row in the batch,
    target_k: torch.Tensor       # … read position index,
    target_column: torch.Tensor  # … output column (token id, or its index in the label subset),
    target_item: torch.Tensor    # … item and word it is added to
    target_word: torch.Tensor
    items: torch.Tensor          # (B,) item of each row


@dataclass
class _PrefixPass:
    """Prefix groups run together: their prefixes once, then every row's remaining tokens."""

    groups: list[PrefixGroup]


@dataclass
class _PrefixCache:
    """What a suffix batch continues: a key/value cache (see :func:`.prefix.suffix_cache`) with each
    row's prefix at the right end of ``width`` slots, which slots are real, and each prefix's length."""

    cache: Any
    mask: torch.Tensor      # (B, width)
    lengths: torch.Tensor   # (B,)


def calibration_contexts(template: Template, split: Split) -> tuple[list[dict[str, str]], np.ndarray | None]:
    """What content-free inputs share with the examples: the distinct demonstration texts (when the
    template reads :data:`DEMO_FIELD`) and each example's index into them (None: one shared prior)."""
    if DEMO_FIELD not in template.fields or not len(split):
        return [{}], None
    index: dict[str, int] = {}
    group = np.array([index.setdefault(ex.get_field(DEMO_FIELD), len(index)) for ex in split])
    return [{DEMO_FIELD: text} for text in index], (None if len(index) == 1 else group)


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else values


def _long_tensor(values: list[int]) -> torch.Tensor:
    """A 1-D int64 tensor from a list of ints, through a typed buffer (3× faster than ``torch.tensor``)."""
    if not values:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(array.array("q", values), dtype=torch.long)


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 over the labelled examples (label >= 0), by scikit-learn.

    Macro-F1 averages over every class that occurs in the labels or the predictions: a gold class
    that is never predicted counts with F1 0 (so always answering the majority class scores low),
    and so does a predicted class absent from the labels; a class in neither (e.g. a test subsample
    without it) has no defined F1 and is left out rather than counted as 0
    (``f1_score(average="macro", labels=union(y, p), zero_division=0)``).
    """
    from sklearn.metrics import accuracy_score, f1_score

    keep = labels >= 0
    if not keep.any():
        return float("nan"), float("nan")
    y, p = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    if (p < 0).any() or (p >= num_classes).any():
        raise AutoPromptError(f"predictions must be class indices 0..{num_classes - 1}")
    acc = float(accuracy_score(y, p))
    f1 = float(f1_score(y, p, labels=np.union1d(y, p), average="macro", zero_division=0))
    return acc, f1


class Harness:
    """Scores prompts with one model.

    Args:
        model: ``None`` (the embedded Gemma 3 270M), an HF name or local folder, a
            :class:`LoadedModel`, or a ``PreTrainedModel`` (then pass ``tokenizer``).
        tokenizer: the tokenizer, when ``model`` is a model object.
        kind: ``mlm``, ``seq2seq`` or ``causal``; detected when omitted.
        device: ``"cuda"``/``"cpu"``/…; CUDA when available, else CPU.
        precision: ``"fp32"`` (the default on CPU), ``"bf16"`` (autocast; the default on CUDA),
            ``"int8"`` (dynamic int8 linear layers; CPU, scoring only) or ``"auto"`` (the fastest of
            them that keeps fp32's predictions on a short probe, see :mod:`.precision`; what it picked
            is :attr:`precision`, why is :attr:`precision_probe`). On CUDA ``fp32`` gives fp32 scores
            to compare against, at a few times the cost.
        auto_int8: let ``auto`` consider int8 (only for scoring: searches that train or take
            gradients leave it off).
        batch_size: rows per forward pass.
        max_length: longest row in tokens (fields are truncated to fit).
        truncation: ``tail`` (cut the end of the longest field, default) or ``head`` (its start);
            template text, masks and label words are never cut. ``EvalResult.extra["truncated"]``
            counts the examples that were.
        progress: show a progress bar on long evaluations.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        kind: str | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        truncation: str = "tail",
        progress: bool = True,
        auto_int8: bool = False,
    ) -> None:
        try:
            self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        except RuntimeError:
            raise AutoPromptError(f"unknown device {device!r}; use e.g. 'cuda', 'cuda:1' or 'cpu'") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AutoPromptError(f"device {device!r} asked for, but CUDA is not available here (torch "
                                  f"{torch.__version__}); use 'cpu'")
        if precision not in (None, *precisions.CHOICES):
            raise AutoPromptError(f"precision must be 'bf16' or 'fp32' (or 'int8', 'auto'), got {precision!r}")
        if precision == "int8" and self.device.type != "cpu":
            raise AutoPromptError("precision 'int8' (dynamic quantisation) runs on the CPU only; use bf16 on CUDA")
        if model is None or isinstance(model, str):
            loaded = load_model(model, kind)
        elif isinstance(model, LoadedModel):
            loaded = model
        else:
            if tokenizer is None:
                raise AutoPromptError("pass the tokenizer together with a model object")
            loaded = LoadedModel(model, tokenizer, kind or detect_kind(model.config), type(model).__name__)
        if loaded.kind not in KINDS:
            raise AutoPromptError(f"unknown model kind {loaded.kind!r}; choose one of {KINDS}")
        if batch_size < 1:
            raise AutoPromptError("batch_size must be at least 1")
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.kind = loaded.kind
        self.model_name = loaded.name
        self.model.to(self.device)
        self.model.eval()
        #: What ``precision="auto"`` measured and why it picked :attr:`precision` (None otherwise).
        self.precision_probe: precisions.ProbeResult | None = None
        if precision == "auto":
            self.precision_probe = precisions.resolve_auto(self.model, self.tokenizer, self.kind, self.device,
                                                           allow_int8=auto_int8)
            precision = self.precision_probe.choice
            if progress:
                print(self.precision_probe.line(), flush=True)
        #: The precision scores are computed in: ``fp32``, ``bf16`` or ``int8`` (never ``auto``).
        self.precision: str = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        if self.precision == "int8":
            if not isinstance(model, (str, type(None))):
                # A model object the caller holds is not changed under them: a copy is quantised.
                import copy

                self.model = copy.deepcopy(self.model)
            precisions.quantize_int8(self.model, keep=self.model.get_output_embeddings())
        self.batch_size = batch_size
        self.progress = progress
        limits = [max_length, getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        self.max_length = int(min(x for x in limits if isinstance(x, int) and 0 < x < 10**7))
        self.encoder = PromptEncoder(self.tokenizer, self.kind, self.max_length, truncation)
        if self.kind == "seq2seq":
            start = self.model.config.decoder_start_token_id
            self.encoder.decoder_start_id = int(start if start is not None else self.tokenizer.pad_token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.head = self.model.get_output_embeddings()
        if self.head is None or not hasattr(self.head, "weight"):
            raise AutoPromptError(f"{type(self.model).__name__} has no output embedding layer to score words with")
        self._encoded: OrderedDict[tuple[Template, str, int], list[EncodedPrompt]] = OrderedDict()
        #: Items scored per chunk without gradients (bounds memory on large splits).
        self.stream_items = 4096
        #: Tokenised prompts kept in the cache, in examples summed over entries (~1.4 KiB each).
        self.cache_items = 200_000
        self._memo: dict[str, Any] = {}
        #: Mask log-probability rows kept inside :meth:`reused_scores` (None outside it).
        self._logprob_rows: OrderedDict[tuple[Any, ...], torch.Tensor] | None = None
        self._logprob_limit = 0
        #: Mask hidden states kept inside :meth:`score_cache` per (model, precision, template, room
        #: for the label word, example): trials that change only words, calibration or ensemble
        #: weights apply the output layer's label rows to them instead of running the model.
        self._hidden_store: OrderedDict[tuple[Any, ...], torch.Tensor] | None = None
        self._hidden_limit = 0
        #: Items served from / computed into the score cache (benchmarks and tests read them).
        self.score_cache_stats = {"hits": 0, "misses": 0}
        #: Callables ``hook(kwargs, batch)`` that may edit the model's keyword arguments before every
        #: forward pass (input-side deltas: prefix key/values, soft-prompt embeddings).
        self.input_hooks: list[Callable[[dict[str, Any], list[Row]], None]] = []
        #: Causal LMs, scoring without gradients: rows that share a token prefix (templates starting
        #: with ``{text_a}``, AutoPrompt candidates, a fixed demonstration block) run the prefix once
        #: and only their remaining tokens against its key/value cache — the same log-probabilities.
        #: ``False`` runs every row whole (the reference the benchmarks compare with).
        self.shared_prefix = True
        #: Shortest shared prefix, in tokens, worth a cached pass (and a pass is used only when its
        #: groups skip at least 1/8 of the tokens).
        self.shared_prefix_min = 4
        #: Rows per suffix batch, in multiples of ``batch_size``: suffixes are short, and the cache copy
        #: each row carries is bounded apart (``batch_size * 512`` cached tokens per batch).
        self.suffix_batch_factor = 8

    def __sklearn_clone__(self) -> "Harness":
        """``sklearn.base.clone`` of an estimator holding this harness shares it: a deep copy would
        copy the model's weights for every fold, and a search leaves the model as it found it."""
        return self

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    def evaluate(
        self,
        split: Split | Sequence[Example],
        template: Template | str,
        verbalizer: Verbalizer | dict[str, Any],
        *,
        label_names: Sequence[str] | None = None,
        exact: bool = False,
        checked: bool = False,
    ) -> EvalResult:
        """Score one prompt on a split: accuracy, macro-F1 and per-example class scores.

        Args:
            split: the examples (a :class:`Split`, e.g. ``task.dev``).
            template: a :class:`Template` or its text.
            verbalizer: a :class:`Verbalizer` or its JSON / ``{label: words}`` dict.
            label_names: the task's labels, checked against the verbalizer's.
            exact: always compute full-vocabulary log-probabilities (slower; same decisions).
            checked: the caller has checked the template's fields against the split and the
                verbalizer's labels against ``label_names`` (before loading the model): not again.
        """
        return self.evaluate_many(split, [template], verbalizer, label_names=label_names, exact=exact,
                                  checked=checked)[0]

    def evaluate_many(
        self,
        split: Split | Sequence[Example],
        templates: Sequence[Template | str],
        verbalizer: Verbalizer | dict[str, Any],
        *,
        label_names: Sequence[str] | None = None,
        exact: bool = False,
        checked: bool = False,
    ) -> list[EvalResult]:
        """Score several templates with one verbalizer, batched together (one pass over the data);
        ``checked`` as in :meth:`evaluate`."""
        start = time.perf_counter()
        split = self._as_split(split)
        templates = [as_template(t) for t in templates]
        verbalizer = as_verbalizer(verbalizer)
        self._check(split, templates, verbalizer, label_names, checked)
        calibrate = verbalizer.calibration == "content_free"
        # Content-free inputs carry each example's demonstrations: one prior per distinct demonstration text.
        contexts = [calibration_contexts(t, split) if calibrate else ([], None) for t in templates]
        cf = [[e for c in ctx for e in self._content_free(t, verbalizer, c)] for t, (ctx, _) in zip(templates, contexts)]
        # The split itself when nothing is appended: its content fingerprint (the tokenisation cache's key) is cached.
        blocks = [list(split) + c if c else split for c in cf]
        out = self.score_blocks(templates, blocks, verbalizer, exact=exact)
        labels = split.labels if isinstance(split, Split) else np.array([e.label for e in split])
        results = []
        seconds = (time.perf_counter() - start) / len(templates)
        for template, block_out, cf_block, (_, group) in zip(templates, out, cf, contexts):
            word_lp = block_out.word_logprobs.float()
            prior = None
            if calibrate:
                cf_probs = verbalizer.class_logprobs(word_lp[len(split):]).exp()
                priors = cf_probs.view(-1, len(verbalizer.content_free_inputs), cf_probs.shape[1]).mean(dim=1)
                prior = priors.clamp_min(1e-12).log()
                prior = prior[0] if group is None else prior[torch.as_tensor(group, device=prior.device)]
                word_lp = word_lp[: len(split)]
            class_lp = verbalizer.class_logprobs(word_lp, prior=prior)
            cut = sum(e.truncated > 0 for e in self._encode(template, list(split) + cf_block,
                                                             self.encoder.reserve(verbalizer.flat_words))[:len(split)])
            results.append(EvalResult.from_class_logprobs(
                class_lp, labels, word_logprobs=word_lp, num_classes=verbalizer.num_classes, prior=prior,
                seconds=seconds, template=template.display(), extra={"truncated": int(cut)}))
        return results

    def clear_cache(self, pieces: bool = False) -> None:
        """Forget the tokenised prompts kept for splits scored before (streams keep memory flat);
        ``pieces`` also forgets the tokenised template pieces (a cold start, as benchmarks measure)."""
        self._encoded.clear()
        if pieces:
            self.encoder._piece_cache.clear()

    def batches(self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]],
                verbalizer: Verbalizer | None) -> list[list[Row]]:
        """The rows of ``templates`` × ``blocks`` in the length-bucketed batches a scoring pass runs
        (whole rows: what a pass holds in Python before the model sees it)."""
        rows, _ = self._build_rows(templates, blocks, verbalizer)
        return list(self._batches(rows, sort=True))

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value computed once per harness (its model and tokenizer) under ``key``: e.g. a scan of
        the whole vocabulary that several trials need."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def score(
        self,
        split: Split | Sequence[Example],
        template: Template | str,
        verbalizer: Verbalizer | dict[str, Any] | None,
        *,
        exact: bool = False,
        hidden: bool = False,
        grad: bool = False,
        soft_embeddings: torch.Tensor | None = None,
    ) -> ScoreOutput:
        """Label-word log-probabilities (and optionally mask hidden states) for every example.

        With ``grad=True`` the result is differentiable (for training); otherwise it runs under
        ``torch.inference_mode``. ``verbalizer=None`` reads only the hidden state. Without gradients
        a causal LM's rows that share a token prefix run it once (:attr:`shared_prefix`); with
        ``grad=True`` (and in :meth:`train`, :meth:`embedding_gradient`) every row runs whole.
        """
        template = as_template(template)
        verbalizer = as_verbalizer(verbalizer) if verbalizer is not None else None
        return self.score_blocks([template], [list(self._as_split(split))], verbalizer, exact=exact,
                                 hidden=hidden, grad=grad, soft_embeddings=soft_embeddings)[0]

    def score_blocks(
        self,
        templates: Sequence[Template],
        blocks: Sequence[Sequence[Example]],
        verbalizer: Verbalizer | None,
        *,
        exact: bool = False,
        hidden: bool = False,
        grad: bool = False,
        soft_embeddings: torch.Tensor | None = None,
    ) -> list[ScoreOutput]:
        """Score ``blocks[i]`` with ``templates[i]``, all in one length-bucketed pass.

        Without gradients, more than :attr:`stream_items` items are scored chunk by chunk (rows built,
        bucketed and run per chunk), so memory does not grow with the split beyond the scores. A
        chunk takes the same examples from every block, so rows that share a prefix across
        templates (an ensemble of templates starting with ``{text_a}``) meet in one chunk.
        """
        if not grad and sum(len(b) for b in blocks) > self.stream_items:
            return self._score_streamed(templates, blocks, verbalizer, exact=exact, hidden=hidden,
                                        soft_embeddings=soft_embeddings)
        return self._score_chunk(templates, blocks, verbalizer, exact=exact, hidden=hidden, grad=grad,
                                 soft_embeddings=soft_embeddings)

    @contextlib.contextmanager
    def score_cache(self, store: "OrderedDict[Any, torch.Tensor] | None" = None,
                    max_items: int = 100_000) -> Iterator["Harness"]:
        """Within the block, scoring without gradients keeps each (template, example)'s mask hidden
        state and reuses it: a later call with other label words, calibration or ensemble weights
        applies the output layer's label rows to the kept states instead of running the model (the
        same log-probabilities: the model's own head and logit soft-cap, in this precision). Used
        when every word is one token read at the mask (else the call runs as usual). Pass ``store``
        (an empty ``OrderedDict`` the caller keeps, e.g. across a study's trials) to carry the states
        over to later blocks. Only for a frozen model: nothing may change its weights meanwhile. At
        most ``max_items`` states are kept (``d`` floats each: 2.5 KB on Gemma 3 270M)."""
        outer, limit = self._hidden_store, self._hidden_limit
        self._hidden_store = store if store is not None else (outer if outer is not None else OrderedDict())
        self._hidden_limit = max_items
        try:
            yield self
        finally:
            self._hidden_store, self._hidden_limit = outer, limit

    def _score_chunk(self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]],
                     verbalizer: Verbalizer | None, *, exact: bool, hidden: bool, grad: bool = False,
                     soft_embeddings: torch.Tensor | None = None) -> list[ScoreOutput]:
        if (self._hidden_store is not None and not grad and not exact and verbalizer is not None
                and soft_embeddings is None and not self.input_hooks):
            cached = self._score_from_states(templates, blocks, verbalizer, hidden)
            if cached is not None:
                return cached
        rows, sizes = self._build_rows(templates, blocks, verbalizer)
        n_items = sum(sizes)
        n_words = len(verbalizer.flat_words) if verbalizer is not None else 0
        subset = None if exact or verbalizer is None else self._label_subset(rows)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        with ctx:
            word_lp, hid = self._run(rows, n_items, n_words, subset, hidden=hidden or verbalizer is None,
                                     soft_embeddings=soft_embeddings, sort=not grad)
        outs, start = [], 0
        for size in sizes:
            outs.append(ScoreOutput(word_lp[start:start + size], None if hid is None else hid[start:start + size]))
            start += size
        return outs

    def _score_streamed(self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]],
                        verbalizer: Verbalizer | None, **kwargs: Any) -> list[ScoreOutput]:
        blocks = [b if isinstance(b, Split) else list(b) for b in blocks]
        step = max(1, self.stream_items // len(blocks))
        parts: list[list[ScoreOutput]] = [[] for _ in blocks]
        for start in range(0, max(len(b) for b in blocks), step):
            live = [j for j, b in enumerate(blocks) if start < len(b)]
            chunk = self._score_chunk([templates[j] for j in live], [blocks[j][start:start + step] for j in live],
                                      verbalizer, **kwargs)
            for j, out in zip(live, chunk):
                parts[j].append(out)
        outs = []
        for j, block_parts in enumerate(parts):
            if not block_parts:  # an empty block next to big ones: score it alone, as an empty pass
                block_parts = self._score_chunk([templates[j]], [blocks[j]], verbalizer, **kwargs)
            hid = [p.hidden for p in block_parts]
            outs.append(ScoreOutput(torch.cat([p.word_logprobs for p in block_parts]),
                                    None if any(h is None for h in hid) else torch.cat(hid)))  # type: ignore[arg-type]
        return outs

    def _score_from_states(self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]],
                           verbalizer: Verbalizer, hidden: bool) -> list[ScoreOutput] | None:
        """:meth:`_score_chunk` through the kept scores (see :meth:`score_cache`).

        When every item is one row read at its mask, the mask states are kept and the label rows of
        the output layer applied to them (scores normalised over the call's label tokens, as a pass
        does). Otherwise (a multi-token word, text after a causal LM's mask) each word's score is a
        full-vocabulary log-probability that depends on that word alone: those are kept per word.
        """
        store = self._hidden_store
        assert store is not None
        rows, sizes = self._build_rows(templates, blocks, verbalizer)
        n_items, n_words = sum(sizes), len(verbalizer.flat_words)
        reserve = self.encoder.reserve(verbalizer.flat_words)
        # The model object and precision in the key: a store handed to another harness never mixes.
        keys: list[tuple[Any, ...]] = []
        for template, block in zip(templates, blocks):
            keys += [(id(self.model), self.precision, template, reserve, e) for e in block]
        subset = self._label_subset(rows)
        if subset is None:
            if hidden:
                return None
            return [ScoreOutput(w) for w in self._word_scores(rows, keys, sizes, n_words).split(sizes)]
        by_item = sorted(rows, key=lambda r: r.item)
        missing = [i for i, k in enumerate(keys) if k not in store]
        self.score_cache_stats["hits"] += n_items - len(missing)
        self.score_cache_stats["misses"] += len(missing)
        with torch.inference_mode():
            if missing:
                todo = [dataclasses.replace(by_item[i], item=j) for j, i in enumerate(missing)]
                _, states = self._run(todo, len(todo), n_words, self._label_subset(todo), hidden=True, sort=True)
                assert states is not None
                for i, state in zip(missing, states):
                    store[keys[i]] = state
            states = torch.stack([store[k] for k in keys])
            self._trim(keys)
            # The label rows of the output layer on the kept states, normalised over the same label
            # subset as a forward pass would be (so the scores equal a pass's).
            logp = self._subset_logprobs(states, subset)
            col = {tok: i for i, tok in enumerate(subset)}
            flat = [(r.item, w, col[tok]) for r in by_item for _, tok, w in r.targets]
            index = torch.tensor(flat, device=self.device, dtype=torch.long).view(-1, 3).T
            word_lp = torch.zeros(n_items, n_words, device=self.device)
            word_lp = word_lp.index_put((index[0], index[1]), logp[index[0], index[2]].float(), accumulate=True)
        outs, start = [], 0
        for size in sizes:
            outs.append(ScoreOutput(word_lp[start:start + size], states[start:start + size] if hidden else None))
            start += size
        return outs

    def _word_scores(self, rows: list[Row], keys: list[tuple[Any, ...]], sizes: list[int],
                     n_words: int) -> torch.Tensor:
        """``(n_items, n_words)`` full-vocabulary word scores, each kept per (item, word tokens read)."""
        store = self._hidden_store
        assert store is not None
        read: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for r in rows:
            for pos, tok, w in r.targets:
                read.setdefault((r.item, w), []).append((pos, tok))
        word_key = {iw: (*keys[iw[0]], "word", tuple(sorted(t))) for iw, t in read.items()}
        missing = {iw for iw, k in word_key.items() if k not in store}
        self.score_cache_stats["hits"] += len(word_key) - len(missing)
        self.score_cache_stats["misses"] += len(missing)
        with torch.inference_mode():
            if missing:
                # Only the rows that read a missing word run, renumbered (their other words are kept too).
                todo_items = sorted({r.item for r in rows if any((r.item, w) in missing for _, _, w in r.targets)})
                number = {item: j for j, item in enumerate(todo_items)}
                todo = [dataclasses.replace(r, item=number[r.item]) for r in rows if r.item in number]
                fresh, _ = self._run(todo, len(todo_items), n_words, None, hidden=False, sort=True)
                fresh = fresh.cpu()
                for (item, w), k in word_key.items():
                    if item in number and k not in store:
                        store[k] = fresh[number[item], w].clone()
            word_lp = torch.zeros(len(keys), n_words)
            for (item, w), k in word_key.items():
                word_lp[item, w] = store[k]
            self._trim(list(word_key.values()))
        return word_lp.to(self.device)

    def _trim(self, used: list[tuple[Any, ...]]) -> None:
        """Mark ``used`` keys as recent and drop the oldest beyond the limit."""
        store = self._hidden_store
        assert store is not None
        for k in used:
            store.move_to_end(k)
        while len(store) > self._hidden_limit:
            store.popitem(last=False)

    def _subset_logprobs(self, states: torch.Tensor, subset: list[int]) -> torch.Tensor:
        """Log-softmax over ``subset`` of the output layer on mask states ``(n, d)``, computed as the
        model's forward computes its logits (the linear layer and its soft-cap under the harness's
        autocast, then float32)."""
        ids = torch.tensor(subset, device=self.device)
        bias = self.head.bias[ids] if getattr(self.head, "bias", None) is not None else None
        with self.autocast():
            logits = nn.functional.linear(states, self.head.weight[ids], bias)
            cap = getattr(self.model.config, "final_logit_softcapping", None)
            if cap:
                logits = logits / cap
                logits = torch.tanh(logits)
                logits = logits * cap
        return torch.log_softmax(logits.float(), dim=-1)

    def mask_hidden(self, split: Split | Sequence[Example], template: Template | str) -> torch.Tensor:
        """``(N, d)`` hidden state at the mask (the output layer's input), e.g. for ProtoVerb."""
        hidden = self.score(split, template, None, hidden=True).hidden
        assert hidden is not None
        return hidden

    def mask_logprobs(
        self, split: Split | Sequence[Example], template: Template | str, *, reduce: str | None = "mean"
    ) -> torch.Tensor:
        """Full-vocabulary log-probabilities of the first token at the mask.

        ``reduce="mean"`` returns the log of the mean distribution ``(V,)`` (a contextualised prior,
        as KPT uses) without holding ``N × V`` values; ``reduce=None`` returns ``(N, V)``.
        """
        template = as_template(template)
        examples = list(self._as_split(split))
        if reduce is None and self._logprob_rows is not None:
            return self._cached_logprobs(examples, template)
        rows, sizes = self._build_rows([template], [examples], None)
        total: torch.Tensor | None = None
        per_row = []
        with torch.inference_mode():
            for batch in self._batches(rows, sort=True):
                logp, _, _ = self._forward(self._plan(batch, None), None, full_at_hidden=True)
                if reduce == "mean":
                    chunk = logp.exp().sum(dim=0)
                    total = chunk if total is None else total + chunk
                else:
                    per_row.append((batch, logp))
        if reduce == "mean":
            assert total is not None
            return (total / sizes[0]).clamp_min(1e-30).log()
        out = torch.empty(sizes[0], self.head.weight.shape[0])
        for batch, logp in per_row:
            out[[r.item for r in batch]] = logp.float().cpu()
        return out

    @contextlib.contextmanager
    def reused_scores(self, rows: "OrderedDict[Any, torch.Tensor] | None" = None,
                      max_rows: int = 2048) -> Iterator["Harness"]:
        """Within the block, full-vocabulary mask log-probabilities (:meth:`mask_logprobs` with
        ``reduce=None``) are kept per (template, example) and reused: a search that scores the same
        examples again (each fold of a cross-validation, a re-ranking on the same split) runs each
        once. Pass ``rows`` (an empty ``OrderedDict`` the caller keeps) to carry them over to later
        blocks. Only for a frozen model: nothing may change its weights while rows are kept. At most
        ``max_rows`` rows are kept (a row is the vocabulary size in floats: 1 MB for Gemma 3)."""
        outer, limit = self._logprob_rows, self._logprob_limit
        self._logprob_rows = rows if rows is not None else (outer if outer is not None else OrderedDict())
        self._logprob_limit = max_rows
        try:
            yield self
        finally:
            self._logprob_rows, self._logprob_limit = outer, limit

    def prime_logprobs(self, split: Split | Sequence[Example], template: Template | str, hidden: torch.Tensor) -> None:
        """Inside :meth:`reused_scores`: keep the mask log-probabilities of ``split`` computed from
        its mask hidden states ``hidden`` (``(N, d)``, e.g. from ``score(..., hidden=True)``) — the
        output layer only, no second pass through the model."""
        cache = self._logprob_rows
        if cache is None:
            raise AutoPromptError("prime_logprobs works inside `with harness.reused_scores():`")
        template = as_template(template)
        examples = list(self._as_split(split))
        keys = [(template, self.precision, e) for e in examples]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if not todo:
            return
        rows = hidden[torch.as_tensor(todo)]
        with torch.inference_mode():
            for part, logp in self.output_logprobs(rows):
                for j, row in zip(range(part.start, part.stop), logp.float().cpu()):
                    cache[keys[todo[j]]] = row.clone()

    def _cached_logprobs(self, examples: list[Example], template: Template) -> torch.Tensor:
        cache = self._logprob_rows
        assert cache is not None
        keys = [(template, self.precision, e) for e in examples]
        missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in cache))
        if missing:
            self._logprob_rows = None  # compute the missing rows the ordinary way
            try:
                rows = self.mask_logprobs([examples[i] for i in missing], template, reduce=None)
            finally:
                self._logprob_rows = cache
            for i, row in zip(missing, rows):
                cache[keys[i]] = row
        out = torch.stack([cache[k] for k in keys]) if keys else torch.empty(0, self.head.weight.shape[0])
        for k in keys:
            cache.move_to_end(k)
        while len(cache) > self._logprob_limit:
            cache.popitem(last=False)
        return out

    def class_prior(self, template: Template | str, verbalizer: Verbalizer | dict[str, Any]) -> torch.Tensor:
        """Class log-probabilities ``(C,)`` the prompt gives to content-free inputs (for calibration)."""
        template = as_template(template)
        verbalizer = as_verbalizer(verbalizer)
        word_lp = self.score(self._content_free(template, verbalizer), template, verbalizer).word_logprobs
        return verbalizer.class_logprobs(word_lp.float()).exp().mean(dim=0).clamp_min(1e-12).log()

    def embedding_gradient(
        self,
        split: Split | Sequence[Example],
        template: Template | str,
        verbalizer: Verbalizer | dict[str, Any],
        *,
        loss: str = "likelihood",
    ) -> tuple[torch.Tensor, float]:
        """Gradient of the gold-label loss w.r.t. the trigger-slot input embeddings.

        ``likelihood`` is AutoPrompt's loss, ``-mean log Σ_{w ∈ gold class} p(w | prompt)`` (exact
        log-probabilities); ``cross_entropy`` normalises over the classes first. Returns
        ``(num_triggers, d)`` summed over examples, and the mean loss. Every row runs whole here
        (no shared-prefix cache: the gradient must reach each row's own trigger embeddings).
        """
        return gradients.embedding_gradient(self, split, template, verbalizer, loss=loss)

    #: Prompt-based fine-tuning of parameters (model weights, deltas, verbalizer weights, heads):
    #: :func:`.training.train` (the harness is its first argument).
    train = training.train

    def output_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """The output layer on hidden states ``(n, d)`` — weight, bias and the model's final logit
        soft-cap, as a forward pass applies them — for ``token_ids`` only (all tokens by default)."""
        hidden = hidden.to(self.device)
        with self.autocast():
            if token_ids is None:
                logits = self.head(hidden).float()
            else:
                ids = torch.as_tensor(token_ids, device=self.device)
                bias = self.head.bias[ids] if getattr(self.head, "bias", None) is not None else None
                logits = nn.functional.linear(hidden, self.head.weight[ids], bias).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def output_logprobs(self, hidden: torch.Tensor, chunk: int = 256) -> Iterator[tuple[slice, torch.Tensor]]:
        """Full-vocabulary log-probabilities of the output layer on hidden states ``(n, d)``.

        Yields ``(rows, log_probs)`` chunks so that ``n × V`` values never exist at once (Gemma's
        vocabulary has 262k tokens). Applies the model's final logit soft-capping when it has one.
        """
        return decoding.output_logprobs(self, hidden, chunk)

    def body(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None,
             position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Causal-LM body with a KV cache: last hidden state at every position and the cache.

        For incremental decoding (LM-BFF's causal template generation); pair with
        :meth:`output_logprobs`. ``attention_mask`` covers cached + new tokens; left padding needs
        explicit ``position_ids``.
        """
        return decoding.body(self, input_ids, attention_mask, cache, position_ids)

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _as_split(split: Split | Sequence[Example]) -> Split:
        if isinstance(split, Split):
            if len(split) == 0:
                raise AutoPromptError(f"split {split.name!r} is empty")
            return split
        examples = list(split)
        if not examples:
            raise AutoPromptError("no examples to score (empty split)")
        return Split(examples, name="examples")

    def _check(self, split: Split, templates: Sequence[Template], verbalizer: Verbalizer,
               label_names: Sequence[str] | None, checked: bool = False) -> None:
        if not checked:  # else the caller checked fields and labels before the model loaded
            fields = split.fields()
            for template in templates:
                template.check_fields(fields)
        vocab = self.model.get_input_embeddings().weight.shape[0]
        for template in templates:
            bad = [i for i in template.trigger_ids if i is not None and not 0 <= i < vocab]
            if bad:
                raise AutoPromptError(f"template {template.display()[:80]!r}: trigger token id {bad[0]} is outside this "
                                      f"model's vocabulary (0..{vocab - 1}); was the prompt found with another model?")
        names = label_names if label_names is not None else getattr(split, "label_names", None)
        if names and not checked:
            verbalizer.check_labels(names)
        top = int(split.labels.max()) if len(split) else -1
        if top >= verbalizer.num_classes:
            raise AutoPromptError(
                f"the examples have label {top} but the verbalizer has only {verbalizer.num_classes} classes"
            )

    def _content_free(self, template: Template, verbalizer: Verbalizer,
                      context: dict[str, str] | None = None) -> list[Example]:
        """Content-free examples (every field the template reads set to e.g. ``"N/A"``, except the
        prompt-context fields in ``context``, which keep their text)."""
        out = []
        for text in verbalizer.content_free_inputs:
            extra = {f: text for f in template.fields if f not in ("text_a", "text_b")}
            out.append(Example(text_a=text, label=-1, text_b=text, meta={**extra, **(context or {})}))
        return out

    def _encode(self, template: Template, examples: Sequence[Example], reserve: int = 1) -> list[EncodedPrompt]:
        """Tokenised prompts, cached per (template, examples, room for the label word) — searches
        score the same split often."""
        key = (template, Split(examples).fingerprint if not isinstance(examples, Split) else examples.fingerprint,
               reserve)
        hit = self._encoded.get(key)
        if hit is not None:
            self._encoded.move_to_end(key)
            return hit
        encoded = [self.encoder.encode(template, e, reserve) for e in examples]
        self._encoded[key] = encoded
        while len(self._encoded) > 1 and (len(self._encoded) > 256
                                          or sum(map(len, self._encoded.values())) > self.cache_items):
            self._encoded.popitem(last=False)
        return encoded

    def _build_rows(self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]],
                    verbalizer: Verbalizer | None) -> tuple[list[Row], list[int]]:
        rows: list[Row] = []
        sizes = []
        item = 0
        reserve = self.encoder.reserve(verbalizer.flat_words) if verbalizer is not None else 1
        # Label-word ids looked up once per call for each spacing before the mask, not per example.
        words_by_space: dict[bool, list[tuple[int, ...]]] = {}
        for template, block in zip(templates, blocks):
            encoded = self._encode(template, block, reserve)
            for enc in encoded:
                words = None
                if verbalizer is not None:
                    words = words_by_space.get(enc.space_before_mask)
                    if words is None:
                        words = [self.encoder.word_ids(w, enc.space_before_mask) for w in verbalizer.flat_words]
                        words_by_space[enc.space_before_mask] = words
                rows.extend(self.encoder.rows(item, enc, words))
                item += 1
            sizes.append(len(encoded))
        return rows, sizes

    @staticmethod
    def _label_subset(rows: list[Row]) -> list[int] | None:
        """Token ids to project onto, when each item is read at exactly one position in one row."""
        items = set()
        tokens: set[int] = set()
        for row in rows:
            if row.item in items or len({t[0] for t in row.targets}) > 1:
                return None
            items.add(row.item)
            tokens.update(t[1] for t in row.targets)
        return sorted(tokens)

    def _batches(self, rows: list[Row], sort: bool) -> Iterator[list[Row]]:
        """Length-bucketed batches (``sort``), or batches in item order that never split an item."""
        if sort:
            ordered = sorted(rows, key=lambda r: r.length)
            for start in range(0, len(ordered), self.batch_size):
                yield ordered[start:start + self.batch_size]
            return
        batch: list[Row] = []
        for row in rows:
            if len(batch) >= self.batch_size and row.item != batch[-1].item:
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    def _passes(self, rows: list[Row], sort: bool, shared: bool) -> list[list[Row] | _PrefixPass]:
        """The forward passes that cover ``rows``: whole-row batches and, with ``shared``, prefix passes.

        Prefix groups are length-bucketed like rows. A pass takes groups (shortest prefixes first)
        until their rows fill two suffix batches or it holds ``4 * batch_size`` prefixes; it runs the
        prefixes ``batch_size`` at a time, then the remaining tokens of all their rows against the
        cache. Groups are used only when they skip at least 1/8 of the rows' tokens.
        """
        groups, rest = group_by_prefix(rows, self.shared_prefix_min) if shared else ([], rows)
        # Each prefix pass adds forward calls: worth it only when the groups skip a good share of
        # the work (a few reviews that happen to start alike do not pay for it on a small model).
        if groups and 8 * sum((len(g.rows) - 1) * g.length for g in groups) < sum(len(r.input_ids) for r in rows):
            groups, rest = [], rows
        passes: list[list[Row] | _PrefixPass] = list(self._batches(rest, sort))
        groups.sort(key=lambda g: g.length)
        rows_wanted = 2 * self.suffix_batch_factor * self.batch_size
        current: list[PrefixGroup] = []
        for group in groups:
            current.append(group)
            if sum(len(g.rows) for g in current) >= rows_wanted or len(current) >= 4 * self.batch_size:
                passes.append(_PrefixPass(current))
                current = []
        if current:
            passes.append(_PrefixPass(current))
        return passes

    def _use_shared_prefix(self, soft_embeddings: torch.Tensor | None) -> bool:
        # Gradients (training, trigger gradients), input hooks (prefix deltas, S3Delta gates) and
        # trainable soft tokens edit what the prefix pass would see: those keep the whole-row path.
        return (self.shared_prefix and self.kind == "causal" and not torch.is_grad_enabled()
                and soft_embeddings is None and not self.input_hooks)

    def _run(
        self,
        rows: list[Row],
        n_items: int,
        n_words: int,
        subset: list[int] | None,
        *,
        hidden: bool,
        sort: bool,
        soft_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward all rows; scatter target log-probs into ``(n_items, n_words)``.

        Without gradients, rows of a causal LM that share a long token prefix are run through
        the prefix cache (see :attr:`shared_prefix`). Scores stay on the device; nothing is
        synchronised per batch. (Trigger gradients run their own pass: :mod:`.gradients`.)
        """
        word_lp = torch.zeros(n_items, n_words, device=self.device)
        hid: torch.Tensor | None = None
        col = {tok: i for i, tok in enumerate(subset)} if subset is not None else None
        subset_t = torch.tensor(subset, device=self.device) if subset is not None else None
        passes = self._passes(rows, sort, self._use_shared_prefix(soft_embeddings))
        bar = None
        if self.progress and len(passes) > 8 and not torch.is_grad_enabled():
            from tqdm.auto import tqdm

            bar = tqdm(total=len(passes), desc="scoring", unit="batch", leave=False)
        for one in passes:
            if isinstance(one, _PrefixPass):
                outputs = self._prefix_forwards(one, subset_t, col)
            else:
                plan = self._plan(one, col)
                outputs = [(plan, *self._forward(plan, subset_t, soft_embeddings=soft_embeddings))]
            for plan, logp, h, _ in outputs:
                if plan.target_batch.numel():
                    values, index = self._target_values(plan, logp)
                    word_lp = word_lp.index_put(index, values, accumulate=True)
                if hidden and h is not None:
                    if hid is None:
                        hid = torch.zeros(n_items, h.shape[-1], device=self.device, dtype=h.dtype)
                    # An item may span several rows; they share the mask position, so any row will do.
                    # In place when nothing is differentiated: a copy per batch would cost O(n²) on big splits.
                    index_h = (plan.items,)
                    hid = hid.index_put(index_h, h) if torch.is_grad_enabled() else hid.index_put_(index_h, h)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return word_lp, hid

    def _prefix_forwards(self, one: _PrefixPass, subset: torch.Tensor | None,
                         col: dict[int, int] | None) -> Iterator[tuple[_Plan, torch.Tensor, torch.Tensor, None]]:
        """Run the prefixes of ``one`` once, then its rows' remaining tokens against their cache.

        Prefixes of different lengths are run right-padded (a real token never attends to a later
        pad, so their states are exact) and then moved to the right end of the cache, pads first:
        every suffix then starts at the same cache index, and cache-index distances equal position
        distances, which is what causal and sliding-window masks are computed from. The pads are
        masked out and every row's positions are explicit.
        """
        dev = self.device
        groups = one.groups
        lengths = torch.tensor([g.length for g in groups], device=dev)
        width = max(g.length for g in groups)
        shift = width - lengths
        parts = []
        for i in range(0, len(groups), self.batch_size):
            part = self._prefix_states(self.pad([g.prefix for g in groups[i:i + self.batch_size]])[0])
            if any(g.length != width for g in groups[i:i + self.batch_size]):
                # Row b's slot j takes its prefix token j - shift[b]: real tokens at the right end.
                source = (torch.arange(width, device=dev)[None, :] - shift[i:i + self.batch_size, None]).clamp_min(0)
                part = [tuple(x.gather(2, source[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))
                              for x in kv) for kv in part]
            parts.append(part)
        states = parts[0] if len(parts) == 1 else [
            (torch.cat([p[layer][0] for p in parts]), torch.cat([p[layer][1] for p in parts]))
            for layer in range(len(parts[0]))]
        suffix = [len(row.input_ids) - group.length for group in groups for row in group.rows]
        members = sorted(zip(suffix, ((g, row) for g, group in enumerate(groups) for row in group.rows)),
                         key=lambda m: m[0])
        # Suffixes are short: a batch holds ``suffix_batch_factor`` batches' worth of rows, within
        # ``batch_size * 512`` cached tokens (the cache copy every row carries bounds memory).
        longest = width + members[-1][0]
        per_batch = max(self.batch_size, min(self.suffix_batch_factor * self.batch_size,
                                             self.batch_size * 512 // longest))
        for chunk in self._suffix_chunks(members, per_batch):
            which = torch.tensor([g for _, (g, _) in chunk], device=dev)
            plan = self._plan([row for _, (_, row) in chunk], col, offsets=[groups[g].length for _, (g, _) in chunk])
            cache = suffix_cache(states, None if len(groups) == 1 else which, len(chunk), plan.ids.shape[1])
            valid = torch.arange(width, device=dev)[None, :] >= shift[which][:, None]
            logp, h, _ = self._forward(plan, subset, cache=_PrefixCache(cache, valid.long(), lengths[which]))
            yield plan, logp, h, None

    @staticmethod
    def _suffix_chunks(members: list[tuple[int, Any]], per_batch: int) -> Iterator[list[tuple[int, Any]]]:
        """Batches of ``(suffix length, member)`` sorted by length: full, or cut where the length
        grows once half full (padding a short suffix to a longer one costs as much as running it)."""
        chunk: list[tuple[int, Any]] = []
        for member in members:
            if chunk and (len(chunk) >= per_batch or (member[0] > chunk[-1][0] and 2 * len(chunk) >= per_batch)):
                yield chunk
                chunk = []
            chunk.append(member)
        if chunk:
            yield chunk

    def _prefix_states(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer key/value states ``(B, heads, L, d)`` of right-padded prefixes (pads after each)."""
        from transformers import DynamicCache

        body = self.model.base_model
        # A cache without the model's config keeps every key in every layer (no sliding-window
        # trimming), so the suffix pass's masks, sliding windows included, are built from absolute
        # positions exactly as for a whole row.
        cache = DynamicCache()
        with self.autocast():
            out = body(input_ids=ids, use_cache=True, **{self._cache_key(body): cache})
        filled = out.get("cache")
        filled = filled if filled is not None else out.past_key_values
        return [(k, v) for k, v, *_ in filled]

    @staticmethod
    def _cache_key(module: nn.Module) -> str:
        # transformers 5.x renames ``past_key_values`` to ``cache``; older versions know only the former.
        return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    @staticmethod
    def _positions(row: Row) -> list[int]:
        return sorted({row.hidden_position, *(t[0] for t in row.targets)})

    def _plan(self, batch: list[Row], col: dict[int, int] | None, offsets: Sequence[int] | None = None) -> _Plan:
        """Every index tensor one batch needs, built in one pass over its rows and moved in one copy.

        ``offsets[b]`` leading tokens of row ``b`` are already in a prefix cache: the batch holds
        the rest, and its read positions count from there.
        """
        n = len(batch)
        offsets = offsets if offsets is not None else [0] * n
        width = max(len(r.input_ids) - o for r, o in zip(batch, offsets))
        positions = [self._positions(r) for r in batch]
        k = max(len(p) for p in positions)
        pad = self.pad_id
        # One flat buffer: ids (n·width) | positions (n·k) | hidden index, item, length (n each) | targets (5 per target)
        ids: list[int] = []
        pos: list[int] = []
        tail: list[int] = []
        targets: list[int] = []
        for b, (row, p, off) in enumerate(zip(batch, positions, offsets)):
            tokens = row.input_ids[off:] if off else row.input_ids
            ids += tokens
            ids += [pad] * (width - len(tokens))
            if len(p) == 1:  # the common case: one read position, where the hidden state is read too
                pos += [p[0] - off] * k
                tail += (0, row.item, len(tokens))
                for _, tok, w in row.targets:
                    targets += (b, 0, col[tok] if col is not None else tok, row.item, w)
                continue
            where = {q: i for i, q in enumerate(p)}
            pos += [q - off for q in p] + [p[0] - off] * (k - len(p))
            tail += (where[row.hidden_position], row.item, len(tokens))
            for q, tok, w in row.targets:
                targets += (b, where[q], col[tok] if col is not None else tok, row.item, w)
        flat = _long_tensor(ids + pos + tail + targets).to(self.device)
        ids_t = flat[: n * width].view(n, width)
        pos_t = flat[n * width: n * (width + k)].view(n, k)
        tail_t = flat[n * (width + k): n * (width + k + 3)].view(n, 3)
        t = flat[n * (width + k + 3):].view(-1, 5).T.contiguous()  # each row is an index tensor
        mask = (torch.arange(width, device=self.device)[None, :] < tail_t[:, 2:3]).long()
        return _Plan(batch, ids_t, mask, pos_t, tail_t[:, 0], t[0], t[1], t[2], t[3], t[4], tail_t[:, 1])

    @staticmethod
    def _target_values(plan: _Plan, logp: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Each target's log-prob in ``logp`` (float32) and the ``(item, word)`` index it is added at."""
        return logp[plan.target_batch, plan.target_k, plan.target_column].float(), (plan.target_item, plan.target_word)

    def _forward(
        self,
        plan: _Plan,
        subset: torch.Tensor | None,
        *,
        full_at_hidden: bool = False,
        soft_embeddings: torch.Tensor | None = None,
        embeds_grad: bool = False,
        cache: _PrefixCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One padded forward pass over a planned batch.

        Returns log-probs ``(B, K, V or |subset|)`` at each row's read positions, the output
        layer's input at each row's hidden position ``(B, d)``, and the input embeddings when
        gradients w.r.t. them were asked for. With ``cache`` (causal LMs) the rows continue the
        cached prefixes.
        """
        dev = self.device
        if self.precision == "int8" and torch.is_grad_enabled():
            raise AutoPromptError("an int8 harness scores only: training and gradients need --precision fp32 or bf16")
        batch = plan.rows
        ids, mask = plan.ids, plan.mask
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False}
        if cache is not None:
            kwargs["attention_mask"] = torch.cat([cache.mask, mask], dim=1)
            # Pads after a row's last token keep its last position: numbered on, a short suffix behind
            # a long prefix would run past an absolute position table (GPT-2) that the row itself fits.
            last = cache.lengths + mask.sum(1).clamp_min(1) - 1
            positions = cache.lengths[:, None] + torch.arange(ids.shape[1], device=dev)[None, :]
            kwargs["position_ids"] = torch.minimum(positions, last[:, None])
            kwargs[self._cache_key(self.model)] = cache.cache
            kwargs["use_cache"] = True
        if self.kind == "seq2seq":
            dec, dmask = self.pad([r.decoder_input_ids or [] for r in batch])
            kwargs["decoder_input_ids"] = dec
            kwargs["decoder_attention_mask"] = dmask
        embeds = None
        has_soft = soft_embeddings is not None and any(r.soft_positions for r in batch)
        if embeds_grad or has_soft:
            embeds = self.model.get_input_embeddings()(ids)
            if has_soft:
                embeds = self.put_soft_embeddings(embeds, batch, soft_embeddings)  # type: ignore[arg-type]
            if embeds_grad:
                embeds = embeds.detach().requires_grad_(True)
            kwargs["inputs_embeds"] = embeds
        else:
            kwargs["input_ids"] = ids
        captured: dict[str, torch.Tensor] = {}
        rows_only = None if full_at_hidden else subset
        for hook in self.input_hooks:
            hook(kwargs, batch)
        with self._gathering_head(plan.positions, rows_only, captured), self.autocast():
            logits = self.model(**kwargs).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        rows = torch.arange(len(batch), device=dev)
        hidden = captured["x"][rows, plan.hidden_k]
        if full_at_hidden:
            logp = logp[rows, plan.hidden_k]
        return logp, hidden, embeds

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id lists into ``(ids, attention_mask)`` on the harness device."""
        lengths = [len(seq) for seq in sequences]
        width = max(lengths)
        flat: list[int] = []
        for seq in sequences:
            flat += seq
            flat += [self.pad_id] * (width - len(seq))
        ids = _long_tensor(flat).view(len(sequences), width)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        return ids.to(self.device), mask.to(self.device)

    def put_soft_embeddings(self, embeds: torch.Tensor, batch: list[Row], soft: torch.Tensor) -> torch.Tensor:
        """Replace soft-token embeddings with the trainable ones (same order in every row)."""
        embeds = embeds.clone()
        for b, row in enumerate(batch):
            if row.soft_positions:
                if len(row.soft_positions) != soft.shape[0]:
                    raise AutoPromptError(
                        f"the template has {len(row.soft_positions)} soft tokens, soft_embeddings has {soft.shape[0]}"
                    )
                embeds[b, row.soft_positions] = soft.to(embeds.device, embeds.dtype)
        return embeds

    @contextlib.contextmanager
    def _gathering_head(self, pos: torch.Tensor, subset: torch.Tensor | None,
                        captured: dict[str, torch.Tensor]) -> Iterator[None]:
        """Swap the output layer for one that reads only ``pos`` (and only ``subset`` rows)."""
        head = self.head
        original = head.forward
        patched_before = "forward" in head.__dict__  # e.g. accelerate's hooks set an instance forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            gathered = x.gather(1, pos[:, :, None].expand(-1, -1, x.shape[-1]))
            captured["x"] = gathered
            if subset is None:
                return original(gathered)
            bias = head.bias[subset] if getattr(head, "bias", None) is not None else None
            return nn.functional.linear(gathered, head.weight[subset], bias)

        head.forward = forward
        try:
            yield
        finally:
            if patched_before:
                head.forward = original
            else:
                del head.forward

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The harness's precision as a context: bf16 autocast, or nothing for fp32 and int8."""
        return precisions.autocast(self.precision, self.device)
