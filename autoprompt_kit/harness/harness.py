"""The evaluation harness: the one scoring path every search method uses.

``Harness.evaluate`` scores a template + verbalizer on a split. Under it, ``Harness.score`` runs
the model over length-bucketed batches of rows (see :mod:`.encoding`) and returns each example's
label-word log-probabilities and its hidden state at the mask. The model's output layer is never
applied to every position: while the harness runs, the output embedding layer is swapped for
one that first gathers the few positions that are read and, when only one position per example is
read, projects onto the label-word rows alone (:mod:`._output`; Gemma's 262k-row output matrix is
most of its compute). Rows of a causal LM that share a token prefix (see :mod:`.prefix`) run it
once and continue from its key/value cache. The same path exposes the mask hidden state (ProtoVerb).

:class:`Harness` is the public façade: it holds the model and the settings and checks its inputs.
The work is done by plain functions in modules that never import it back: the scoring engine
(:mod:`._engine`: rows, batches, shared-prefix passes, forward, gather), how a call is served
(:mod:`._scoring`: streamed or from kept scores), calibration (:mod:`._calibration`), input checks
(:mod:`._validation`), the training loop (:mod:`.training`), AutoPrompt's trigger-gradient pass
(:mod:`.gradients`) and decoding helpers (:mod:`.decoding`). Result types are in :mod:`.results`.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from ..data import Example, Split
from ..errors import AutoPromptError
from ..models.loading import as_loaded
from ..prompts.template import Template, as_template
from ..prompts.verbalizer import Verbalizer, as_verbalizer
from . import _calibration as calibration
from . import _engine as engine
from . import _evaluation, _output, _scoring, _validation, decoding, gradients, training
from . import precision as precisions
from .encoding import PromptCache, PromptEncoder, Row
from .results import EvalResult, ScoreOutput, classification_metrics

__all__ = ["EvalResult", "Harness", "ScoreOutput", "classification_metrics"]


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
        self.device = _validation.device_for(device, precision)
        loaded = as_loaded(model, tokenizer, kind)
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
            self.precision_probe = precisions.resolve_auto(
                self.model, self.tokenizer, self.kind, self.device, allow_int8=auto_int8
            )
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
        limits = [
            max_length,
            getattr(self.model.config, "max_position_embeddings", None),
            getattr(self.tokenizer, "model_max_length", None),
        ]
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
        #: Tokenised prompts of the splits scored before (see :meth:`clear_cache`).
        self.prompt_cache = PromptCache()
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

    def __sklearn_clone__(self) -> Harness:
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
        return self.evaluate_many(split, [template], verbalizer, label_names=label_names, exact=exact, checked=checked)[
            0
        ]

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
        split = _validation.as_split(split)
        parsed = [as_template(t) for t in templates]
        verbalizer = as_verbalizer(verbalizer)
        self._check(split, parsed, verbalizer, label_names, checked)
        return _evaluation.evaluate(self, split, parsed, verbalizer, self.score_blocks, exact, start)

    def clear_cache(self, pieces: bool = False) -> None:
        """Forget the tokenised prompts kept for splits scored before (streams keep memory flat);
        ``pieces`` also forgets the tokenised template pieces (a cold start, as benchmarks measure)."""
        self.prompt_cache.clear()
        if pieces:
            self.encoder._piece_cache.clear()

    def batches(
        self, templates: Sequence[Template], blocks: Sequence[Sequence[Example]], verbalizer: Verbalizer | None
    ) -> list[list[Row]]:
        """The rows of ``templates`` × ``blocks`` in the length-bucketed batches a scoring pass runs
        (whole rows: what a pass holds in Python before the model sees it)."""
        rows, _ = engine.build_rows(self, templates, blocks, verbalizer)
        return list(engine.batches(rows, self.batch_size, sort=True))

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
        return self.score_blocks(
            [template],
            [list(_validation.as_split(split))],
            verbalizer,
            exact=exact,
            hidden=hidden,
            grad=grad,
            soft_embeddings=soft_embeddings,
        )[0]

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
        kept = (
            None
            if self._hidden_store is None
            else _scoring.KeptStates(self._hidden_store, self._hidden_limit, self.score_cache_stats)
        )
        return _scoring.score_blocks(
            self,
            templates,
            blocks,
            verbalizer,
            exact=exact,
            hidden=hidden,
            grad=grad,
            soft_embeddings=soft_embeddings,
            kept=kept,
        )

    @contextlib.contextmanager
    def score_cache(
        self, store: OrderedDict[Any, torch.Tensor] | None = None, max_items: int = 100_000
    ) -> Iterator[Harness]:
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
        examples = list(_validation.as_split(split))
        if reduce is None and self._logprob_rows is not None:
            return _scoring.cached_logprobs(self, self._logprob_rows, self._logprob_limit, examples, template)
        return engine.mask_logprobs(self, examples, template, reduce)

    @contextlib.contextmanager
    def reused_scores(
        self, rows: OrderedDict[Any, torch.Tensor] | None = None, max_rows: int = 2048
    ) -> Iterator[Harness]:
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
        examples = list(_validation.as_split(split))
        keys = [(template, self.precision, e) for e in examples]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if not todo:
            return
        rows = hidden[torch.as_tensor(todo)]
        with torch.inference_mode():
            for part, logp in self.output_logprobs(rows):
                for j, row in zip(range(part.start, part.stop), logp.float().cpu()):
                    cache[keys[todo[j]]] = row.clone()

    def class_prior(self, template: Template | str, verbalizer: Verbalizer | dict[str, Any]) -> torch.Tensor:
        """Class log-probabilities ``(C,)`` the prompt gives to content-free inputs (for calibration)."""
        template = as_template(template)
        verbalizer = as_verbalizer(verbalizer)
        word_lp = self.score(calibration.content_free(template, verbalizer), template, verbalizer).word_logprobs
        return calibration.class_prior(verbalizer, word_lp)

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

    def train(
        self,
        split: Split | Sequence[Example],
        template: Template | str,
        verbalizer: Verbalizer | dict[str, Any],
        parameters: Iterable[torch.Tensor],
        *,
        epochs: int = 10,
        lr: float = 1e-5,
        batch_size: int = 8,
        weight_decay: float = 0.0,
        head: Callable[[ScoreOutput], torch.Tensor] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        soft_embeddings: torch.Tensor | None = None,
        seed: int = 0,
        on_epoch: Callable[[int, float], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> list[float]:
        """Prompt-based fine-tuning of ``parameters`` with AdamW (model weights, deltas, verbalizer
        weights, heads) through the scoring path; returns the mean loss of each epoch.

        See :func:`.training.train` for the arguments: each step scores a minibatch as
        :meth:`evaluate` does, with gradients on, and minimises cross-entropy on the class scores
        (or ``loss_fn`` on ``head(output)``).
        """
        return training.train(
            self,
            split,
            template,
            verbalizer,
            parameters,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            head=head,
            loss_fn=loss_fn,
            soft_embeddings=soft_embeddings,
            seed=seed,
            on_epoch=on_epoch,
            on_step=on_step,
        )

    def output_logits(
        self, hidden: torch.Tensor, token_ids: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """The output layer on hidden states ``(n, d)`` — weight, bias and the model's final logit
        soft-cap, as a forward pass applies them — for ``token_ids`` only (all tokens by default)."""
        return _output.output_logits(self, hidden, token_ids)

    def output_logprobs(self, hidden: torch.Tensor, chunk: int = 256) -> Iterator[tuple[slice, torch.Tensor]]:
        """Full-vocabulary log-probabilities of the output layer on hidden states ``(n, d)``.

        Yields ``(rows, log_probs)`` chunks so that ``n × V`` values never exist at once (Gemma's
        vocabulary has 262k tokens). Applies the model's final logit soft-capping when it has one.
        """
        return decoding.output_logprobs(self, hidden, chunk)

    def body(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Causal-LM body with a KV cache: last hidden state at every position and the cache.

        For incremental decoding (LM-BFF's causal template generation); pair with
        :meth:`output_logprobs`. ``attention_mask`` covers cached + new tokens; left padding needs
        explicit ``position_ids``.
        """
        return decoding.body(self, input_ids, attention_mask, cache, position_ids)

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token id lists into ``(ids, attention_mask)`` on the harness device."""
        return engine.pad(self, sequences)

    def put_soft_embeddings(self, embeds: torch.Tensor, batch: list[Row], soft: torch.Tensor) -> torch.Tensor:
        """Replace soft-token embeddings with the trainable ones (same order in every row)."""
        return engine.put_soft_embeddings(embeds, batch, soft)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The harness's precision as a context: bf16 autocast, or nothing for fp32 and int8."""
        return precisions.autocast(self.precision, self.device)

    def _check(
        self,
        split: Split,
        templates: Sequence[Template],
        verbalizer: Verbalizer,
        label_names: Sequence[str] | None,
        checked: bool = False,
    ) -> None:
        _validation.check(
            split, templates, verbalizer, label_names, self.model.get_input_embeddings().weight.shape[0], checked
        )
