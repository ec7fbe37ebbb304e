"""Shared fixtures: tiny random models of every kind with small real (trained) tokenizers, a
``make_harness`` factory over them, and ``run_cli`` — the command line run in this process.

No real masked LM or T5 weights exist offline, so the mechanics of those paths are tested on
random models built from configs; accuracy is tested on the real default model (slow tests).

Test files import the plain helpers (``from conftest import run_cli``): ``tests/`` is on sys.path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

# Tests never reach the hub: unknown names must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the film was terrible and the plot was boring",
    "it was a good movie with a fine cast",
    "a bad film with awful dialogue",
    "overall it was great fun to watch",
    "the story is dull but the music is nice",
    "i loved the ending and hated the start",
    "what a waste of time , truly awful",
    "brilliant , moving and funny",
    "not good , not bad , just okay",
    "n / a it was . ! ? ' \" : ;",
]


def _train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "causal":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<pad>", "<s>", "</s>"]
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # As bert-base-uncased: accents are stripped, so a lone combining accent tokenizes to nothing.
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if kind == "mlm":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<pad>", "</s>", "[UNK]"] + [f"<extra_id_{i}>" for i in range(3)]
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials)
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "mlm":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="</s>",
                                   additional_special_tokens=[f"<extra_id_{i}>" for i in range(3)])


def _build(kind: str, arch: str):
    from transformers import (BertConfig, BertForMaskedLM, Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config,
                              GPT2LMHeadModel, T5Config, T5ForConditionalGeneration)

    torch.manual_seed(0)
    tok = _train_tokenizer(kind)
    vocab = len(tok)
    if arch == "bert":
        model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=128,
                                           pad_token_id=tok.pad_token_id))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    elif arch == "gemma3":
        # Same architecture as the real default (scaled embeddings, tied head) plus a logit soft-cap
        # so the harness's head swap is checked against the model's own post-processing.
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=128, final_logit_softcapping=5.0,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            sliding_window=16, layer_types=["sliding_attention", "full_attention"]))
    else:
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
            decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_models():
    """``{arch: (model, tokenizer, kind)}`` for bert (mlm), gpt2 and gemma3 (causal), t5 (seq2seq)."""
    return {
        "bert": (*_build("mlm", "bert"), "mlm"),
        "gpt2": (*_build("causal", "gpt2"), "causal"),
        "gemma3": (*_build("causal", "gemma3"), "causal"),
        "t5": (*_build("seq2seq", "t5"), "seq2seq"),
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_models):
    """The tiny GPT-2 saved as a local model folder, so CLI subprocesses can load it."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model, tok, _ = tiny_models["gpt2"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def make_harness(tiny_models):
    """``make_harness(arch="gpt2", precision="fp32", **kw)``: a :class:`Harness` on a tiny model, no progress bar.

    ``precision`` defaults to fp32 (exact comparisons; on CUDA the harness's own default is bf16);
    ``precision=None`` is the harness's default. Other keywords (``batch_size``, ``device``, …) go to Harness.
    """
    from autoprompt_kit import Harness

    def make(arch: str = "gpt2", precision: str | None = "fp32", **kw):
        model, tok, kind = tiny_models[arch]
        return Harness(model, tok, kind=kind, progress=False, precision=precision, **kw)

    return make


@pytest.fixture(scope="session")
def real_harness():
    """The embedded default model (Gemma 3 270M); converted once into the cache."""
    from autoprompt_kit import Harness

    return Harness(batch_size=16, progress=False, precision="fp32")  # exactness tests stay fp32


#: Per-test time limits (pytest-timeout) for the marked tests; the rest get ``timeout`` in pyproject.toml.
TIMEOUTS = {"slow": 3600, "services": 2400}


def pytest_collection_modifyitems(config, items):
    """Slow tests run only with ``-m slow`` (``make test``'s second step), services tests only with
    ``-m services`` (``make test-services``, its own CI step); both get longer time limits."""
    chosen = config.getoption("-m") or ""
    for marker, seconds in TIMEOUTS.items():
        run = marker in chosen or os.environ.get(f"AUTOPROMPT_KIT_{marker.upper()}") == "1"
        skip = pytest.mark.skip(reason=f"{marker} test; run with -m {marker}")
        for item in items:
            if item.get_closest_marker(marker) is None:
                continue
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(seconds))
            if not run:
                item.add_marker(skip)


# -- the CLI in this process --------------------------------------------------------------------------
@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """Whatever ``main()`` may change for the whole process is put back afterwards: environment, cwd,
    signal handlers, logging levels and handlers, warnings filters, torch threads/dtype and RNGs."""
    import optuna
    from transformers.utils import logging as hf_logging

    env, cwd = dict(os.environ), os.getcwd()
    signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("huggingface_hub",)}
    optuna_verbosity, hf_verbosity = optuna.logging.get_verbosity(), hf_logging.get_verbosity()
    hf_bars = hf_logging.is_progress_bar_enabled()
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    try:
        with warnings.catch_warnings():
            yield
    finally:
        if os.environ != env:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(cwd)
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        optuna.logging.set_verbosity(optuna_verbosity)
        hf_logging.set_verbosity(hf_verbosity)
        (hf_logging.enable_progress_bar if hf_bars else hf_logging.disable_progress_bar)()
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])


@contextlib.contextmanager
def _log_streams_to(err: io.StringIO) -> Iterator[None]:
    """Log records reach ``err`` as they would reach a fresh process's stderr: the root handler that
    ``main()``'s ``basicConfig`` adds there (under pytest the root already has handlers, so it adds
    none) and every library's own stderr handler (optuna's, bound to the stderr of its import)."""
    plain = [h for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
             for h in getattr(lg, "handlers", []) if type(h) is logging.StreamHandler]
    before = [h.setStream(err) for h in plain]
    root = logging.getLogger()
    ours = logging.StreamHandler(err)
    ours.setFormatter(logging.Formatter("%(message)s"))
    ours.setLevel(logging.WARNING)
    root.addHandler(ours)
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(ours)
        root.setLevel(level)
        for h, stream in zip(plain, before):
            h.setStream(stream)


#: The warnings filters of a fresh interpreter (no ``-W``, no PYTHONWARNINGS), first match first.
_FRESH_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                  ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                  ("ignore", ResourceWarning, "")]


@contextlib.contextmanager
def _warnings_to(err: io.StringIO) -> Iterator[None]:
    """Warnings filtered as in a fresh interpreter and printed to ``err`` (not recorded by pytest), so a
    warning counts against "one line on stderr" as it would in a real run. The libraries' own targeted
    ``ignore`` filters (torch adds some on import) stay. Inside _process_state_restored, whose
    catch_warnings puts the filters and ``showwarning`` back."""
    libraries = [f for f in warnings.filters if f[0] == "ignore" and (f[1] is not None or f[3] is not None)]
    warnings.resetwarnings()
    for action, category, module in reversed(_FRESH_FILTERS):  # each one goes in front
        warnings.filterwarnings(action, category=category, module=module)
    for _, message, category, module, lineno in reversed(libraries):
        warnings.filterwarnings("ignore", message=message.pattern if message else "", category=category,
                                module=module.pattern if module else "", lineno=lineno)
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    yield


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as subprocess.run(text=True) reads a pipe


def run_cli(*args: str, input: str | None = None, timeout: float | None = None,
            **_ignored) -> subprocess.CompletedProcess:
    """``autoprompt-kit ARGS`` in this process: ``autoprompt_kit.cli.main(argv)`` with stdin/stdout/stderr
    captured and SystemExit caught; returns what ``subprocess.run(..., capture_output=True, text=True)``
    would (``returncode``, ``stdout``, ``stderr``). An uncaught exception is exit 1 with its traceback on
    stderr, as in a fresh interpreter. ``timeout`` (and ``env=`` etc. of the old subprocess helpers) is
    accepted and ignored: pytest-timeout bounds the test.

    For what only a real process shows (signals, kill -9, worker processes, the console script,
    import-time behaviour) use ``subprocess`` and ``sys.executable -m autoprompt_kit.cli``.
    """
    from autoprompt_kit.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    with _process_state_restored(), _warnings_to(err), _log_streams_to(err), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), _stdin(stdin):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse (--help, bad choices) and sys.exit()
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 — what the interpreter would print and exit with
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["autoprompt-kit", *argv], code or 0, _universal_newlines(out.getvalue()),
                                       _universal_newlines(err.getvalue()))


@contextlib.contextmanager
def _stdin(stream) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved
