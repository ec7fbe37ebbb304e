"""Search methods; importing this package registers them with the backbone."""

from .autoprompt import AutoPromptConfig, AutoPromptSearcher, TriggerSearch, label_token_search
from .lmbff import LMBFFConfig, LMBFFSearcher, label_word_search
from .select import SelectConfig, TemplateSelection
from .demos import DemosConfig, DemosSearcher, select_fixed_demonstrations  # noqa: F401
from .kpt import KPTConfig, KPTSearcher  # noqa: F401
from .protoverb import ProtoVerbConfig, ProtoVerbSearcher  # noqa: F401
from .s3delta import S3DeltaConfig, S3DeltaSearcher, s3delta_search  # noqa: F401
from .auto import AutoConfig, AutoSearcher  # noqa: F401  (composes the methods above)

__all__ = ["AutoPromptConfig", "AutoPromptSearcher", "LMBFFConfig", "LMBFFSearcher", "SelectConfig",
           "TemplateSelection", "TriggerSearch", "label_token_search", "label_word_search"]
