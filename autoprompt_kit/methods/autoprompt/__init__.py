from .triggers import (resize_triggers, TriggerSearchResult, TriggerSearch, named_triggers, init_triggers, trigger_token_mask, label_token_search, AutoPromptConfig, AutoPromptSearcher)  # noqa: F401
