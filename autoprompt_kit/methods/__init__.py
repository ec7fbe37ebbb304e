"""Search methods, one package each (``config.py``, ``searcher.py`` and the algorithm's modules);
importing this package registers them with the backbone."""

# The order methods register in (and are listed in where a listing is not sorted), kept as it was.
from .auto import AutoConfig, AutoSearcher  # composes the methods above
from .autoprompt import AutoPromptConfig, AutoPromptSearcher, TriggerSearch, label_token_search
from .demos import DemosConfig, DemosSearcher, select_fixed_demonstrations
from .kpt import KPTConfig, KPTSearcher
from .lmbff import LMBFFConfig, LMBFFSearcher, label_word_search
from .protoverb import ProtoVerbConfig, ProtoVerbSearcher
from .s3delta import S3DeltaConfig, S3DeltaSearcher, s3delta_search
from .select import SelectConfig, TemplateSelection

__all__ = [
    "AutoConfig",
    "AutoPromptConfig",
    "AutoPromptSearcher",
    "AutoSearcher",
    "DemosConfig",
    "DemosSearcher",
    "KPTConfig",
    "KPTSearcher",
    "LMBFFConfig",
    "LMBFFSearcher",
    "ProtoVerbConfig",
    "ProtoVerbSearcher",
    "S3DeltaConfig",
    "S3DeltaSearcher",
    "SelectConfig",
    "TemplateSelection",
    "TriggerSearch",
    "label_token_search",
    "label_word_search",
    "s3delta_search",
    "select_fixed_demonstrations",
]
