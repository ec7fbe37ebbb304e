"""``auto``: the whole prompt (words, template, demonstrations, calibration, a trained head, an
ensemble) in one budgeted, cross-validated search over the other methods' public functions."""

from .config import STAGES, AutoConfig
from .searcher import AutoSearcher

__all__ = ["STAGES", "AutoConfig", "AutoSearcher"]
