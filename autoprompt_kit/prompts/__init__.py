"""The prompt data model: templates and verbalizers."""

from .template import Template, as_template, parse_template
from .verbalizer import AGGREGATIONS, CALIBRATIONS, PLAIN_CALIBRATIONS, Verbalizer, as_verbalizer

__all__ = [
    "AGGREGATIONS",
    "CALIBRATIONS",
    "PLAIN_CALIBRATIONS",
    "Template",
    "Verbalizer",
    "as_template",
    "as_verbalizer",
    "parse_template",
]
