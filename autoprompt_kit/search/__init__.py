"""The search backbone shared by every method: Searcher shape, Optuna studies, best.json."""

from .base import (REGISTRY, SearchConfig, SearchContext, Searcher, TrialOutcome, choice, combine_results,
                   get_searcher, register, suggest)
from .folds import Fold, labelled_pool, make_folds
from .runner import (DEFAULT_STORAGE, QUEUED, SearchJob, SearchResult, best_candidate, best_trial, build_best_json,
                     default_storage, finish_search, model_fingerprint, open_existing_storage, open_storage,
                     open_study, parse_budget, prompt_folder, recover_for_view, run_search, storage_summaries,
                     trial_prompt, trial_rows, write_best_json)
from ._storage import public_url

__all__ = [
    "DEFAULT_STORAGE", "Fold", "QUEUED", "REGISTRY", "best_trial", "labelled_pool", "make_folds",
    "SearchConfig", "SearchContext", "SearchJob", "SearchResult", "Searcher", "TrialOutcome", "best_candidate",
    "build_best_json", "choice", "combine_results", "default_storage", "finish_search", "get_searcher",
    "model_fingerprint", "open_existing_storage", "open_storage", "open_study", "parse_budget", "prompt_folder",
    "public_url", "recover_for_view", "register", "run_search", "storage_summaries", "suggest", "trial_prompt",
    "trial_rows", "write_best_json",
]
