"""Search methods; importing this package registers them with the backbone."""

from .autoprompt import AutoPromptConfig, AutoPromptSearcher, TriggerSearch, label_token_search
from .select import SelectConfig, TemplateSelection

__all__ = ["AutoPromptConfig", "AutoPromptSearcher", "SelectConfig", "TemplateSelection", "TriggerSearch",
           "label_token_search"]
