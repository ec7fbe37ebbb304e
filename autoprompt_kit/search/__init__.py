"""The search backbone shared by every method: Searcher shape, Optuna studies, best.json."""

from .base import (REGISTRY, Candidate, SearchConfig, SearchContext, Searcher, TrialOutcome, combine_results,
                   get_searcher, register)
from .runner import (DEFAULT_STORAGE, SearchJob, best_candidate, build_best_json, open_storage, open_study,
                     run_search, storage_summaries, write_best_json)

__all__ = [
    "DEFAULT_STORAGE", "REGISTRY", "Candidate", "SearchConfig", "SearchContext", "SearchJob", "Searcher",
    "TrialOutcome", "best_candidate", "build_best_json", "combine_results", "get_searcher", "open_storage",
    "open_study", "register", "run_search", "storage_summaries", "write_best_json",
]
