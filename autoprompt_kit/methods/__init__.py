"""Search methods; importing this package registers them with the backbone."""

from .select import SelectConfig, TemplateSelection

__all__ = ["SelectConfig", "TemplateSelection"]
