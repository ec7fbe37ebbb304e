"""Template / verbalizer selection over a declared space — the simplest search.

Every trial scores one candidate on the dev split: one manual template (or an ensemble of all
templates, averaged uniformly or weighted by each template's dev accuracy) × one label-word set ×
one calibration mode.
"""

from .config import SelectConfig
from .searcher import TemplateSelection

__all__ = ["SelectConfig", "TemplateSelection"]
