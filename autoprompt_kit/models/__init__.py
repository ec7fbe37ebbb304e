"""Model loading: the embedded default, HF names, local folders."""

from .loading import DEFAULT_MODEL, KINDS, LoadedModel, default_model_dir, detect_kind, load_model

__all__ = ["DEFAULT_MODEL", "KINDS", "LoadedModel", "default_model_dir", "detect_kind", "load_model"]
