"""Model loading: the embedded default, HF names, local folders, local GGUF files."""

from .loading import DEFAULT_MODEL, KINDS, LoadedModel, default_model_dir, detect_kind, gguf_model_dir, load_model

__all__ = ["DEFAULT_MODEL", "KINDS", "LoadedModel", "default_model_dir", "detect_kind", "gguf_model_dir", "load_model"]
