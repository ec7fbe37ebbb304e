from .searcher import (SelectConfig, TemplateSelection)  # noqa: F401
