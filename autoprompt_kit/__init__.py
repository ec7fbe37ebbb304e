"""autoprompt-kit: search for the best prompt for a pretrained language model."""

from __future__ import annotations

__version__ = "0.1.0"
