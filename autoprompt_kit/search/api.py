"""The search verbs at the top of the package: run a search, load a study's best prompt.

    import autoprompt_kit as apk

    result = apk.find_prompt("select", apk.load_task("mr", shots=16), trials=20, out="best.json")
    result.prompt.predict(["A gripping, funny film."])
    apk.load_best(result.study.study_name)           # the best prompt of a stored study, trained state included
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import SearchConfig, SearchContext, get_searcher
from .runner import (SearchJob, SearchResult, best_candidate, default_study_name, finish_search, model_fingerprint,
                     open_storage, open_study, parse_budget, run_search)

if TYPE_CHECKING:
    from ..artifact import Prompt
    from ..data import Task
    from ..harness import Harness


def find_prompt(method: str, task: "Task", space: SearchConfig | dict[str, Any] | str | Path | None = None, *,
                harness: "Harness | None" = None, trials: int = 20, storage: str | None = None,
                study: str | None = None, seed: int = 13, test_split: str | None = "test",
                out: str | Path | None = None, budget: str | float | None = None, selection: str | None = None,
                folds: int = 4, progress: bool = False, trial_dir: str | Path | None = None) -> SearchResult:
    """Search ``task`` with ``method`` and return the found prompt (it predicts and saves).

    ``space`` is a config, its dict, a YAML path, or None for the default space built from the
    task. The study is resumable (same ``study`` and ``storage``); ``out`` also writes best.json
    and the prompt folder beside it. ``budget`` (seconds, or ``"10m"``) stops starting trials once
    spent; ``selection="cv"`` scores candidates by ``folds``-fold cross-validation over train + dev
    (the default of ``auto``). ``trial_dir`` is where trials keep what they trained (default: beside
    an SQLite storage).
    """
    from ..harness import Harness

    searcher_cls = get_searcher(method)
    seconds = parse_budget(budget if budget is not None else searcher_cls.default_budget)
    config_class = searcher_cls.config_class
    if space is None:
        config = config_class.for_task(task)
    elif isinstance(space, SearchConfig):
        config = space
    elif isinstance(space, dict):
        config = config_class.from_dict(space)
    else:
        config = config_class.from_yaml(space)
    config.method = config.method or method
    config.check_task(task)
    harness = harness or Harness(progress=False)
    searcher = searcher_cls(config)
    ctx = SearchContext(task, harness, seed)
    searcher.check(ctx)  # before the study opens: no trial fails on what the space could have said
    # Without a study name, the name carries a tag of the model: another model starts its own study.
    name = study or default_study_name(open_storage(storage), f"{method}-{task.name}-api-s{seed}",
                                       model_fingerprint(harness.model_name, harness))
    job = SearchJob(searcher, name, storage, n_trials=trials, seed=seed, progress=progress,
                    task_info=task.info(seed=seed),
                    model_info={"name": harness.model_name, "kind": harness.kind},
                    budget=seconds, selection=selection or searcher_cls.default_selection, folds=folds,
                    trial_dir=None if trial_dir is None else str(trial_dir),
                    command=_api_command(method, name, storage, trials, seed, budget, selection, folds))
    start = time.perf_counter()
    found = run_search(job, ctx)
    return finish_search(found, job, ctx, test_split=test_split, out=out, seconds=time.perf_counter() - start)


def _api_command(method: str, study: str, storage: str | None, trials: int, seed: int, budget: Any,
                 selection: str | None, folds: int) -> str:
    """The call that resumes this search, for the study's note (``task`` is the caller's own)."""
    from ._storage import public_url

    args = [repr(method), "task", f"trials={trials}", f"study={study!r}", f"seed={seed}"]
    args += [f"storage={public_url(storage)!r}"] if storage else []
    args += [f"budget={budget!r}"] if budget is not None else []
    args += [f"selection={selection!r}", *([f"folds={folds}"] if folds != 4 else [])] if selection else []
    return f"autoprompt_kit.find_prompt({', '.join(args)})"


def load_best(study: str, storage: str | None = None) -> "Prompt":
    """The best prompt of a stored study, with what its trial trained (no test pass, nothing written)."""
    found = open_study(study, open_storage(storage), seed=0, create=False)
    return best_candidate(found)[1]
