"""The study runner's public verbs; the machinery behind them is private (:mod:`._runner`)."""

from ._runner import (DEFAULT_STORAGE, QUEUED, SearchJob, SearchResult, best_candidate, best_trial, build_best_json,
                      default_storage, finish_search, model_fingerprint, open_existing_storage, open_storage,
                      open_study, parse_budget, prompt_folder, recover_for_view, run_search, storage_summaries,
                      trial_prompt, trial_rows, write_best_json)

__all__ = [
    "DEFAULT_STORAGE", "QUEUED", "SearchJob", "SearchResult", "best_candidate", "best_trial", "build_best_json",
    "default_storage", "finish_search", "model_fingerprint", "open_existing_storage", "open_storage", "open_study",
    "parse_budget", "prompt_folder", "recover_for_view", "run_search", "storage_summaries", "trial_prompt",
    "trial_rows", "write_best_json",
]
