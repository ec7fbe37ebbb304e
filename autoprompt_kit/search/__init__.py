"""The search backbone shared by every method: Searcher shape, Optuna studies, best.json."""

from .base import (REGISTRY, SearchConfig, SearchContext, Searcher, TrialOutcome, choice, combine_results,
                   get_searcher, register, suggest)
from .folds import Fold, labelled_pool, make_folds
from .runner import (DEFAULT_STORAGE, SearchJob, SearchResult, best_candidate, best_trial, build_best_json, finish_search,
                     open_storage, open_study, prompt_folder, run_search, storage_summaries, trial_prompt,
                     write_best_json)

__all__ = [
    "DEFAULT_STORAGE", "Fold", "REGISTRY", "best_trial", "labelled_pool", "make_folds", "SearchConfig", "SearchContext", "SearchJob", "SearchResult", "Searcher",
    "TrialOutcome", "best_candidate", "build_best_json", "choice", "combine_results", "finish_search", "get_searcher",
    "open_storage", "open_study", "prompt_folder", "register", "run_search", "storage_summaries", "suggest",
    "trial_prompt", "write_best_json",
]
