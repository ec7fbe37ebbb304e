"""The search backbone (private: its public verbs are exported by :mod:`autoprompt_kit.search`):
every search is a resumable Optuna study.

It owns the study and its storage, seeds, the queue of candidates, pruning, heartbeats (a killed
job's running trial is marked failed and retried when the job starts again), per-trial artifacts
(user attributes the dashboard shows), progress lines and the ``best.json`` output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from .._version import __version__
from ..artifact import BEST_SCHEMA_VERSION, Prompt, model_reference
from ..errors import AutoPromptError
from ..io import write_json_atomic
from ..prompts import Template
from . import report as reporting
from ._storage import (
    OWNER,
    bookkept,
    check_url,
    claim,
    fail_dead_trials,
    public_url,
    running_elsewhere,
    storage_lock,
    take_trials_atomically,
)
from .base import SearchContext, Searcher, TrialOutcome
from .folds import (
    SELECTIONS,
    Fold,
    fold_task,
    gold_logprob,
    labelled_pool,
    make_folds,
    pooled_result,
    refit_task,
    selection_bias,
    standard_error,
)

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///runs/autoprompt.db"
QUEUED = "~autoprompt.queued"  # a queued trial's candidate key (bookkeeping: sorts last, see _storage)
ARTIFACT_KEYS = "~autoprompt.artifacts"  # names of the user attributes a trial's method produced
CANDIDATE = "~candidate"  # the trial's whole prompt as JSON (what best.json and refit read)
PREDICTIONS = "~dev_predictions"  # class index per dev (or out-of-fold) example
PROMPT_DIR = "prompt_dir"  # a trained trial's prompt folder
REFIT = "refit:"  # study attribute prefix: a cross-validated winner refit on all data
SCHEMA_VERSION = BEST_SCHEMA_VERSION


def queued_key(trial: Any) -> str | None:
    """The candidate key a trial was queued with (its parameters as sorted JSON); None for a trial
    the sampler proposed. Retried copies of a queued trial keep it."""
    return bookkept(trial, QUEUED)


def default_storage() -> str:
    Path("runs").mkdir(exist_ok=True)
    return DEFAULT_STORAGE


def open_storage(url: str | None, heartbeat: int = 30) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats: a trial whose process died is failed and retried."""
    url = check_url(url or default_storage())
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return _rdb_storage(url, heartbeat, lock=True)


def open_existing_storage(url: str | None, heartbeat: int = 30) -> optuna.storages.RDBStorage | None:
    """The storage a view reads (``studies``, ``trials``): None when an SQLite file does not exist,
    so that looking creates no file (neither the database, its folder nor its lock file)."""
    url = check_url(url or DEFAULT_STORAGE)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).expanduser().is_file():
        return None
    return _rdb_storage(url, heartbeat, lock=False)


def _rdb_storage(url: str, heartbeat: int, lock: bool) -> optuna.storages.RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but stable since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Optuna 4.9 renamed the retry hook; older releases (>= 3.6 is supported) only have the old one.
            retry: dict[str, Any]
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
                retry = {
                    "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                }
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
            # Two processes creating a fresh storage's tables at once collide (alembic_version): one at a time.
            with _creation_lock(url) if lock else contextlib.nullcontext():
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **retry
                )
    except AutoPromptError:
        raise
    except Exception as exc:  # noqa: BLE001 — any failure to open is a bad --storage
        raise AutoPromptError(f"cannot open storage {public_url(url)!r}: {str(exc).splitlines()[0][:200]}") from None


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    if url.startswith("sqlite"):
        with storage_lock(url, "create"):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    try:
        with storage_lock(url, "create", engine):
            yield
    finally:
        engine.dispose()


def open_study(
    name: str, storage: optuna.storages.RDBStorage, seed: int, meta: dict[str, Any] | None = None, create: bool = True
) -> optuna.Study:
    """Create the study, or load it to resume; checks it was made by the same method."""
    sampler = optuna.samplers.TPESampler(seed=seed)
    # Iterative methods report dev scores per epoch (warm-up 1); cross-validation reports the running
    # out-of-fold score after each fold, so a candidate under the median of the others costs one fold.
    cv = (meta or {}).get("selection", {}).get("mode") == "cv"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4 if cv else 3, n_warmup_steps=0 if cv else 1)
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise AutoPromptError(f"no study named {name!r} in this storage") from None
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )
    if meta:
        made_by = study.user_attrs.get("method")
        if made_by and made_by != meta.get("method"):
            raise AutoPromptError(f"study {name!r} was made by method {made_by!r}, not {meta.get('method')!r}")
        _check_fingerprint(name, study, meta.get("fingerprint") or {})
        for key, value in meta.items():
            if key not in study.user_attrs:
                study.set_user_attr(key, value)
    return study


#: What a study's fingerprint holds (see :func:`run_search`) → how a difference is named.
FINGERPRINT = {
    "space": "another space",
    "task": "another task",
    "selection": "another selection",
    "model": "another model",
    "weights": "other model weights",
    "kind": "another kind",
    "precision": "another precision",
}


def _check_fingerprint(name: str, study: optuna.Study, now: dict[str, str]) -> None:
    """Refuse to resume a study whose results came from another space, task, model, weights, kind or
    precision, with one line naming each difference. A part the study does not record yet (made by
    an older version) is not compared, except the model name and kind its ``model`` attribute
    kept; it is recorded now, so the next resume compares it."""
    stored = study.user_attrs.get("fingerprint") or {}
    before = stored
    if stored and "model" not in stored and now.get("model"):
        before = {**stored, **_legacy_model_fingerprint(study.user_attrs.get("model"), now)}
    differ = [what for what in FINGERPRINT if before.get(what) and now.get(what) and before[what] != now[what]]
    if "model" in differ and "weights" in differ:
        differ.remove("weights")  # another model has other weights: saying so adds nothing
    if differ:

        def shown(what: str, value: str) -> str:  # digests cut to 12 characters, names in full
            pin, _, digest = value.partition(":")
            if what == "weights":
                return f"{pin}:{digest[:12]}" if pin in ("sha256", "revision") else value
            return f"{what} {value[:12] if what in ('space', 'task') else value}"

        pairs = "; ".join(f"{shown(w, before[w])}, now {shown(w, now[w]).removeprefix(w + ' ')}" for w in differ)
        raise AutoPromptError(
            f"study {name!r} was run with {' and '.join(FINGERPRINT[w] for w in differ)} ({pairs}); "
            "resuming would mix their results: give a new --study name"
        )
    if stored and set(now) - set(stored):
        study.set_user_attr("fingerprint", {**now, **stored})


def _legacy_model_fingerprint(recorded: Any, now: dict[str, Any]) -> dict[str, str]:
    """What a study made before models were fingerprinted says about its model: the name and kind
    its ``model`` attribute recorded, normalised as :func:`model_fingerprint` does. A name that
    names the same folder, or the same last part of a path that moved, counts as the same model."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("name"), str):
        return {}
    name = _model_name(recorded["name"])
    if name != now["model"] and Path(name).name == Path(now["model"]).name:
        name = now["model"]
    out = {"model": name}
    if isinstance(recorded.get("kind"), str):
        out["kind"] = recorded["kind"]
    return out


def fill_queue(
    study: optuna.Study, grid: Sequence[dict[str, Any]], n_trials: int, seed: int, shuffle: bool = True
) -> int:
    """Enqueue distinct candidates so the study holds ``n_trials`` of them (finished or pending).

    Returns the number enqueued now. Failed trials do not count: the heartbeat's retry callback
    re-enqueues their parameters. Safe for any number of processes at once: reading the queue and
    adding to it happen under a storage-wide lock (see :func:`._storage.storage_lock`).
    """
    storage: Any = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache wrapper
    url, engine = getattr(storage, "url", None), getattr(storage, "engine", None)
    if url is None:  # an in-memory storage: one process only
        return _fill_queue(study, grid, n_trials, seed, shuffle)
    with storage_lock(url, f"queue:{study.study_name}", engine):
        return _fill_queue(study, grid, n_trials, seed, shuffle)


def _fill_queue(study: optuna.Study, grid: Sequence[dict[str, Any]], n_trials: int, seed: int, shuffle: bool) -> int:
    # A queued trial carries its candidate's key as a user attribute: WAITING trials have no
    # params yet, and the heartbeat's retry copies keep user attributes.
    key = lambda params: json.dumps(params, sort_keys=True)  # noqa: E731
    present = {
        bookkept(t, QUEUED)
        for t in study.get_trials(deepcopy=False)
        if bookkept(t, QUEUED) and t.state != TrialState.FAIL
    }
    if n_trials > len(grid):
        logger.warning("the space has %d candidates; running %d trials, not %d", len(grid), len(grid), n_trials)
        n_trials = len(grid)
    need = n_trials - len(present)
    order = np.random.default_rng(seed).permutation(len(grid)) if shuffle else np.arange(len(grid))
    added = 0
    for i in order:
        if added >= need:
            break
        if key(grid[i]) not in present:
            study.enqueue_trial(grid[i], user_attrs={QUEUED: key(grid[i])})
            added += 1
    return added


def waiting(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


@dataclass
class SearchJob:
    """One search run: the method, where the study lives, and how many trials."""

    searcher: Searcher
    study_name: str
    storage_url: str | None = None
    n_trials: int = 20
    seed: int = 13
    heartbeat: int = 30
    worker: bool = False  # a helper process: runs trials, writes nothing
    progress: bool = True
    task_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    trial_dir: str | None = None  # where trials keep trained state (default: beside the storage)
    budget: float | None = None  # seconds: no trial starts after it is spent (None: no limit)
    selection: str = "dev"  # "dev": score on the dev split; "cv": k-fold over train + dev
    folds: int = 4  # folds of cross-validated selection
    command: str | None = None  # the command line that reproduces the search (the study's note shows it)

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise AutoPromptError(f"--selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.selection == "cv" and self.folds < 2:
            raise AutoPromptError(f"--folds must be at least 2, got {self.folds}")
        if self.budget is not None and not self.budget > 0:
            raise AutoPromptError(f"--budget must be a positive duration, got {self.budget} s")

    def selection_info(self) -> dict[str, Any]:
        """How trials are scored (part of the study's fingerprint: values of two modes do not mix)."""
        return {"mode": "cv", "folds": self.folds} if self.selection == "cv" else {"mode": "dev"}

    def trial_root(self) -> Path:
        """Folder of this study's per-trial prompt folders (``<root>/<study>/trial-<n>``)."""
        if self.trial_dir:
            return Path(self.trial_dir) / self.study_name
        url = self.storage_url or DEFAULT_STORAGE
        base = Path(url[len("sqlite:///") :]).expanduser().parent if url.startswith("sqlite:///") else Path("runs")
        return base / "trials" / self.study_name


def run_search(
    job: SearchJob, ctx: SearchContext, start_workers: Callable[[], list[Any]] | None = None
) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials (a staged method: until
    its last stage is done), or its ``budget`` is spent; return it.

    ``start_workers`` is called once the queue is filled; the processes it returns run trials of the
    same study and are waited for (one that exits with an error fails the search).
    """
    job.searcher.config.check_task(ctx.task)  # an input error must not leave a failed trial in the study
    return run_study(job, ctx, start_workers)


def run_study(
    job: SearchJob,
    ctx: SearchContext,
    start_workers: Callable[[], list[Any]] | None = None,
    storage: optuna.storages.RDBStorage | None = None,
) -> optuna.Study:
    """:func:`run_search` for a caller that has checked the space against the task already
    (:func:`.api.find_prompt` checks before the model loads, a worker's parent before it starts);
    ``storage``: the job's storage, when the caller has opened it already."""
    if job.n_trials < 1:
        raise AutoPromptError("--trials must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folds = make_folds(ctx.task, job.folds, job.seed) if job.selection == "cv" else None
    storage = storage or open_storage(job.storage_url, job.heartbeat)
    config = job.searcher.config.to_dict()
    selection = job.selection_info()
    fingerprint = {
        "space": _digest(config),
        "task": task_fingerprint(ctx.task),
        "selection": _digest(selection),
        **model_fingerprint(job.model_info.get("name"), ctx.harness),
    }
    meta = {
        "method": job.searcher.name,
        "task": job.task_info,
        "model": job.model_info,
        "config": config,
        "seed": job.seed,
        "selection": selection,
        "heartbeat": job.heartbeat,
        "fingerprint": fingerprint,
    }
    # The readable attributes go first: the dashboard lists a study's attributes in the order they were set.
    overview = study_overview(job, ctx, fingerprint)
    study = open_study(job.study_name, storage, job.seed, {**overview, **meta})
    describe_study(study, job, ctx, overview)
    store = reporting.artifact_store(job.storage_url or DEFAULT_STORAGE)
    started = time.perf_counter()
    take_trials_atomically(study)  # no queued trial run twice; a taken trial has its owner at once
    _recover(study, job)
    job.searcher.prepare(ctx, study)
    searcher = job.searcher
    staged = searcher.staged

    def seconds_left() -> float | None:
        return None if job.budget is None else job.budget - (time.perf_counter() - started)

    def spent() -> bool:
        left = seconds_left()
        return left is not None and left <= 0

    grid = searcher.grid() if not staged else []
    if staged and not job.worker:
        _next_stage(study, searcher, ctx, seconds_left(), job.progress)
    elif grid is not None and not job.worker:
        fill_queue(study, grid, job.n_trials, job.seed, shuffle=not searcher.ordered_grid)
    workers = start_workers() if start_workers else []
    metric = ctx.task.metric
    queued = grid is not None

    def objective(trial: optuna.Trial) -> float:
        claim(trial)
        if queued and not bookkept(trial, QUEUED):
            # Another worker took the last queued candidate between our check and our ask.
            trial.set_user_attr("note", "no queued candidate left")
            raise optuna.TrialPruned()
        start = time.perf_counter()
        try:
            outcome = _run_trial(trial, job, ctx, folds, metric, job.budget, started)
        except optuna.TrialPruned:
            reporting.save_note(
                study, f"## Trial {trial.number}: pruned\n\n{trial.user_attrs.get('note', '')}\n", trial._trial_id
            )
            raise
        except Exception as exc:  # the dashboard shows the trial failed: its note says why
            reporting.save_note(
                study, reporting.failed_note(trial.number, f"`{type(exc).__name__}: {exc}`"), trial._trial_id
            )
            raise
        cand = outcome.candidate
        trial.set_user_attr(
            "template",
            cand.template.display() if len(cand.templates) == 1 else " | ".join(t.display() for t in cand.templates),
        )
        trial.set_user_attr("label_words", json.dumps(cand.verbalizer.to_dict()["label_words"]))
        trial.set_user_attr("prompt", cand.describe())
        trial.set_user_attr(CANDIDATE, cand.to_dict())
        trial.set_user_attr("complexity", complexity(cand))
        if cand.trained:  # tensors do not belong in the storage: the trial's prompt folder holds them
            trial.set_user_attr(PROMPT_DIR, str(cand.save(job.trial_root() / f"trial-{trial.number}")))
        trial.set_user_attr("dev_accuracy", outcome.dev.accuracy)
        trial.set_user_attr("dev_macro_f1", outcome.dev.macro_f1)
        trial.set_user_attr("dev_gold_logprob", gold_logprob(outcome.dev))
        trial.set_user_attr(PREDICTIONS, np.asarray(outcome.dev.predictions).tolist())
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        for name, value in outcome.artifacts.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr(ARTIFACT_KEYS, sorted(outcome.artifacts))
        value = outcome.dev.accuracy if metric == "accuracy" else outcome.dev.macro_f1
        try:
            _report_trial(study, trial, outcome, ctx, folds is not None, metric, value, store)
        except Exception as exc:  # noqa: BLE001 — a report must never fail the trial it describes
            logger.warning("trial %d: no note (%s: %s)", trial.number, type(exc).__name__, exc)
        return value

    finished_here: list[int] = []

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if (queued and waiting(study) == 0) or spent():
            study.stop()
        if trial.state == TrialState.COMPLETE and not job.worker:  # the study's note follows the best so far
            reporting.save_note(
                study, reporting.study_note(study.study_name, overview, best_trial(study), job.command, None)
            )
        if not job.progress or trial.state != TrialState.COMPLETE:
            return
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        cv = trial.user_attrs.get("cv")
        score = f"{trial.value:.4f}" + (f" ± {cv['se']:.3f}" if cv else "")
        left = seconds_left()
        total = f"{done}" if staged else f"{done}/{job.n_trials}"
        finished_here.append(trial.number)
        elapsed = time.perf_counter() - started
        if left is not None:
            clock = f"  [{_clock(elapsed)} of {_clock(job.budget)}]"
        elif not staged:
            # Remaining time from this process's own pace (a resumed study's earlier trials ran elsewhere).
            eta = elapsed / len(finished_here) * max(0, job.n_trials - done)
            clock = f"  [{_clock(elapsed)}, ~{_clock(eta)} left]"
        else:
            clock = f"  [{_clock(elapsed)}]"
        print(
            f"[trial {trial.number:3d} · {total}] {'cv' if folds else 'dev'} {metric} {score}  "
            f"best {best_trial(study).value:.4f}{clock}  "
            f"{trial.user_attrs.get('prompt', trial.user_attrs.get('template'))}",
            flush=True,
        )

    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [report]
    if not queued:
        callbacks.append(optuna.study.MaxTrialsCallback(job.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def work_left() -> bool:
        if spent():
            return False
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        return waiting(study) > 0 if queued else finished < job.n_trials

    announced: set[int] = set()
    while True:
        if work_left():
            study.optimize(objective, callbacks=callbacks)
        # The study is done only when no other process still runs one of its trials: wait for them,
        # and take over (at once, or after the heartbeat's grace period) the trials of processes that died.
        others = running_elsewhere(study)
        if not others:
            if (
                staged
                and not spent()
                and _next_stage(study, searcher, ctx, seconds_left(), job.progress and not job.worker)
            ):
                continue
            break
        if _recover(study, job):
            continue
        new = [t.number for t in others if t.number not in announced]
        if new and job.progress and not job.worker:
            print(
                f"waiting for running trial(s) {', '.join(map(str, new))} of other processes "
                f"(a dead one is retried after the {2 * job.heartbeat} s heartbeat grace period)…",
                flush=True,
            )
        announced.update(new)
        time.sleep(min(2.0, job.heartbeat))
    if spent() and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise AutoPromptError(
            f"the budget of {_clock(job.budget)} was spent before any trial finished; rerun with a "
            f"larger --budget (the study resumes where it stopped)"
        )
    if spent() and job.progress and not job.worker:
        print(
            f"budget of {_clock(job.budget)} spent: no further trial started "
            f"({waiting(study)} queued candidate(s) left for a rerun)",
            flush=True,
        )
    for proc in workers:
        if proc.wait() != 0:
            raise AutoPromptError(f"a worker process exited with code {proc.returncode}")
    return study


def parse_budget(value: str | float | int | None) -> float | None:
    """Seconds in a budget: ``90s``, ``10m``, ``1.5h``, or a number of seconds; None for no limit."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        import re

        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*", str(value))
        if not match:
            raise AutoPromptError(f"--budget {value!r} is not a duration: write e.g. 90s, 10m or 1h")
        seconds = float(match.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, None: 1}[match.group(2)]
    if not 0 < seconds < 10**7:
        raise AutoPromptError(f"--budget must be a positive duration, got {value!r}")
    return seconds


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _next_stage(
    study: optuna.Study, searcher: Searcher, ctx: SearchContext, seconds_left: float | None, progress: bool
) -> bool:
    """Queue what a staged searcher runs next; False when it has nothing left."""
    grid = searcher.next_stage(ctx, study, seconds_left)
    if progress:
        for line in searcher.messages:
            print(line, flush=True)
    searcher.messages.clear()
    if not grid:
        return False
    added = extend_queue(study, grid)
    return added > 0 or waiting(study) > 0


def extend_queue(study: optuna.Study, grid: Sequence[dict[str, Any]]) -> int:
    """Enqueue the candidates of ``grid`` not queued before (in order); returns how many."""
    storage = getattr(study._storage, "_backend", study._storage)
    url, engine = getattr(storage, "url", None), getattr(storage, "engine", None)
    lock = storage_lock(url, f"queue:{study.study_name}", engine) if url is not None else contextlib.nullcontext()
    with lock:
        present = {
            bookkept(t, QUEUED)
            for t in study.get_trials(deepcopy=False)
            if bookkept(t, QUEUED) and t.state != TrialState.FAIL
        }
        added = 0
        for params in grid:
            key = json.dumps(params, sort_keys=True)
            if key not in present:
                study.enqueue_trial(params, user_attrs={QUEUED: key})
                present.add(key)
                added += 1
        return added


def _run_trial(
    trial: optuna.Trial,
    job: SearchJob,
    ctx: SearchContext,
    folds: list[Fold] | None,
    metric: str,
    budget: float | None,
    started: float,
) -> TrialOutcome:
    """One trial: on dev, or once per fold (learning from the others) with the out-of-fold score."""
    if folds is None:
        ctx.seed_everything(trial.number)
        return job.searcher.run_trial(trial, ctx)
    results, scores, outcome = [], [], None
    prunable = True
    trial_start = time.perf_counter()  # reset at fold 0, after whatever ran before the folds
    for fold in folds:
        # A fold that would end past the budget (+10 %), judging by the folds so far, is not started.
        if budget is not None and fold.number > 0:
            per_fold = (time.perf_counter() - trial_start) / fold.number
            if time.perf_counter() - started + per_fold > 1.1 * budget:
                trial.set_user_attr("note", f"budget spent after {fold.number} of {len(folds)} folds")
                raise optuna.TrialPruned()
        fctx = SearchContext(fold_task(ctx.task, fold), ctx.harness, ctx.seed, fold=fold)
        fctx.seed_everything(trial.number)
        if fold.number == 0:
            trial_start = time.perf_counter()
        outcome = job.searcher.run_trial(trial, fctx)
        results.append(outcome.dev)
        scores.append(outcome.dev.accuracy if metric == "accuracy" else outcome.dev.macro_f1)
        if fold.number == 0:
            prunable = job.searcher.costly(trial.params)
        if fold.number + 1 < len(folds):
            so_far = pooled_result(results, folds, len(ctx.task.label_names))
            trial.report(so_far.accuracy if metric == "accuracy" else so_far.macro_f1, fold.number)
            if prunable and trial.should_prune():
                trial.set_user_attr("note", f"pruned after {fold.number + 1} of {len(folds)} folds")
                raise optuna.TrialPruned()
    assert outcome is not None
    pooled = pooled_result(results, folds, len(ctx.task.label_names))
    value = pooled.accuracy if metric == "accuracy" else pooled.macro_f1
    cv = {
        "metric": metric,
        "mean": value,
        "se": standard_error(pooled, scores, metric),
        "n": pooled.n,
        "folds": len(folds),
        "fold_scores": scores,
    }
    trial.set_user_attr("cv", cv)
    return TrialOutcome(outcome.candidate, pooled, outcome.artifacts)


def study_overview(job: SearchJob, ctx: SearchContext, fingerprint: dict[str, str]) -> dict[str, str]:
    """The readable study attributes: method, task, model (name and weights' hash), space, metric."""
    searcher = job.searcher
    stages = list(getattr(searcher.config, "stages", []) or []) if searcher.staged else []
    grid = None if searcher.staged else searcher.grid()
    space = reporting.space_label(
        {} if searcher.staged else searcher.config.axes(), None if grid is None else len(grid), stages
    )
    return reporting.study_overview(
        searcher.name,
        ctx.task.summary(),
        fingerprint,
        space,
        reporting.metric_name(ctx.task.metric, job.selection_info()),
    )


def describe_study(study: optuna.Study, job: SearchJob, ctx: SearchContext, overview: dict[str, str]) -> None:
    """Name the study's value (``study.set_metric_names``) and keep the readable attributes current."""
    name = overview["Metric"]
    if study.metric_names != [name]:
        with warnings.catch_warnings():  # "experimental" in Optuna, stable since 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([name])
    for key, value in overview.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def _report_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    ctx: SearchContext,
    cv: bool,
    metric: str,
    value: float,
    store: Any,
) -> None:
    """The trial's note (Markdown) and its dev (or out-of-fold) predictions as a CSV artifact."""
    examples = labelled_pool(ctx.task) if cv else ctx.task.dev
    names = list(ctx.task.label_names)
    seconds = time.perf_counter()
    note = reporting.trial_note(
        trial.number,
        outcome.candidate,
        outcome.dev,
        examples,
        names,
        metric,
        value,
        trial.user_attrs.get("cv"),
        float(trial.user_attrs.get("seconds", 0.0)),
    )
    reporting.save_note(study, note, trial._trial_id)
    with reporting.scratch() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-{'oof' if cv else 'dev'}-predictions.csv"
        path.write_text(
            reporting.predictions_csv(reporting.prediction_rows(outcome.dev, examples, names)), encoding="utf-8"
        )
        reporting.upload(store, study, trial._trial_id, path, mimetype="text/csv")
    logger.debug("trial %d report in %.2f s", trial.number, time.perf_counter() - seconds)


def complexity(prompt: Prompt) -> int:
    """How many parts a prompt has (templates, extra words, calibration, demonstrations, trained
    state): the tie-breaker that prefers the simpler of two equally good prompts."""
    words = sum(len(ws) for ws in prompt.verbalizer.label_words) - prompt.verbalizer.num_classes
    demos = prompt.demonstrations.per_class if prompt.demonstrations is not None else 0
    return len(prompt.templates) + words + (prompt.verbalizer.calibration != "none") + demos + 2 * int(prompt.trained)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's best finished trial. Ties on the value are broken by the simpler prompt
    (:func:`complexity`), then the higher mean gold-class log-probability on dev (the more confident
    of two equally accurate prompts), then the earlier trial — never by trial order alone."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise AutoPromptError(f"study {study.study_name!r} has no completed trial yet")
    top = max(t.value for t in done)  # type: ignore[type-var]
    tied = [t for t in done if t.value == top]
    return min(
        tied,
        key=lambda t: (
            t.user_attrs.get("complexity", 0),
            -float(t.user_attrs.get("dev_gold_logprob", float("-inf"))),
            t.number,
        ),
    )


def _recover(study: optuna.Study, job: SearchJob) -> list[int]:
    """Fail and re-queue the trials of dead processes: on this host at once, elsewhere after the
    heartbeat's grace period. Returns the trial numbers taken over."""
    revived = fail_dead_trials(study) + _fail_stale_trials(study)
    for number in revived:  # its retry gets a new number (and folder): what the dead one saved is garbage
        _drop_trial_folder(job.trial_root(), number)
    note_revived(study, revived, job.heartbeat)
    if revived and job.progress and not job.worker:
        print(
            f"trial(s) {', '.join(map(str, sorted(revived)))} of a process that is gone: failed and queued again",
            flush=True,
        )
    return revived


def _fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the running trials whose heartbeat is older than the storage's grace period (Optuna's
    retry callback queues them again); the numbers of the trials failed."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number not in before]


def note_revived(study: optuna.Study, numbers: Sequence[int], heartbeat: int) -> None:
    """Say in each failed trial's note why it failed: its process is gone, or sent no heartbeat."""
    if not numbers:
        return
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in numbers:
        t = by_number.get(number)
        if t is None:
            continue
        owner = bookkept(t, OWNER) or {}
        who = f"process {owner.get('pid')} on {owner.get('host')}" if owner.get("pid") else "its process"
        reason = (
            f"{who} stopped while running it (killed, or its machine went down): no heartbeat for "
            f"{2 * heartbeat} s, or the process is gone. The trial was failed and its candidate queued again."
        )
        reporting.save_note(study, reporting.failed_note(number, reason), t._trial_id)


def recover_for_view(study: optuna.Study) -> list[int]:
    """What a read-only view (``studies``, ``trials``, ``dashboard``) does first: fail the trials of
    dead processes, as a rerun of the search would, so they show as failed and not "Running" forever.
    Uses the heartbeat the study was run with (a shorter one would fail live trials)."""
    recorded = study.user_attrs.get("heartbeat")
    heartbeat = int(recorded) if isinstance(recorded, int) else 30
    storage: Any = getattr(study._storage, "_backend", study._storage)
    revived = fail_dead_trials(study)  # exact: the owner's pid on this host is gone
    # By heartbeat only where the study says which interval its processes beat at (a guess could fail live trials).
    if isinstance(recorded, int) and getattr(storage, "heartbeat_interval", None) is not None:
        storage.heartbeat_interval, storage.grace_period = heartbeat, 2 * heartbeat
        revived += _fail_stale_trials(study)
    note_revived(study, revived, heartbeat)
    return revived


def _drop_trial_folder(root: Path, number: int) -> None:
    """Delete trial ``number``'s prompt folder and the staging folders a kill mid-save leaves beside it."""
    import shutil

    if not root.is_dir():
        return
    for path in [root / f"trial-{number}", *root.glob(f".trial-{number}.*.tmp"), *root.glob(f".trial-{number}.*.old")]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def task_fingerprint(task: Any) -> str:
    """What a study's results depend on in the task: its labels and its train/dev examples."""
    return _digest([list(task.label_names), task.train.fingerprint, task.dev.fingerprint, task.metric])


def _model_name(name: str) -> str:
    """One spelling per model: the embedded default's aliases as one name, a local path resolved."""
    from ..models.loading import DEFAULT_ALIASES, DEFAULT_MODEL

    if name.lower() in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def model_fingerprint(name: str | None, harness: Any) -> dict[str, str]:
    """What a study's results depend on in the model: its name, what pins its weights (file
    sha256, hub revision or registry package, where known), its kind and the precision it runs in."""
    name = name or harness.model_name
    origin = getattr(harness.model.config, "_name_or_path", "")
    if name == type(harness.model).__name__ and origin:  # a model object: the class says little, its origin more
        name = origin
    ref = model_reference(name, harness)
    out = {"model": _model_name(ref["name"]), "kind": harness.kind, "precision": harness.precision}
    for pin in ("sha256", "revision", "package"):
        if ref.get(pin):
            out["weights"] = f"{pin}:{ref[pin]}"
            break
    return out


def model_tag(fingerprint: dict[str, str]) -> str:
    """A short tag of a model for default study names: the last part of its name and 6 hex digits
    of its whole fingerprint (weights, kind and precision included), e.g. ``gemma-3-270m-1a2b3c``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(fingerprint["model"]).name or fingerprint["model"]).strip("-.")
    return f"{stem[:40] or 'model'}-{_digest(fingerprint)[:6]}"


def default_study_name(storage: optuna.storages.BaseStorage, base: str, fingerprint: dict[str, str]) -> str:
    """The study a search uses when no name is given: ``<base>-<model tag>``, so that another model
    (weights, kind or precision) starts a study of its own instead of mixing with this one.

    A study from before the tag, under the bare ``base`` name, keeps that name when it was run with
    this model (or records no model): a plain rerun resumes it as before.
    """
    tagged = f"{base}-{model_tag(fingerprint)}"
    names = set(optuna.get_all_study_names(storage))
    if tagged in names or base not in names:
        return tagged
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(base))
    recorded = attrs.get("fingerprint") or {}
    if "model" in recorded:  # made with tags: its own model's study has the tagged name
        return tagged
    legacy = _legacy_model_fingerprint(attrs.get("model"), fingerprint)
    same = all(fingerprint.get(k) == v for k, v in legacy.items())
    return base if same else tagged


def best_candidate(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, Prompt]:
    """The best trial (:func:`best_trial`) and its prompt, trained state included (for a
    cross-validated study, the winner refit on all labelled examples once :func:`finish_search` did)."""
    best = best_trial(study)
    refit = study.user_attrs.get(f"{REFIT}{best.number}")
    if refit:
        return best, _prompt_from(refit.get(PROMPT_DIR), refit.get("candidate"), best.number)
    return best, trial_prompt(best)


def trial_prompt(trial: optuna.trial.FrozenTrial) -> Prompt:
    """A finished trial's prompt: from its folder when it trained something, else from its attributes."""
    return _prompt_from(trial.user_attrs.get(PROMPT_DIR), bookkept(trial, CANDIDATE), trial.number)


def _prompt_from(folder: str | None, candidate: dict[str, Any] | None, number: int) -> Prompt:
    if folder:
        if not Path(folder).is_dir():
            raise AutoPromptError(
                f"trial {number}'s trained state {folder!r} is gone (was the trial "
                "folder deleted or written on another machine?)"
            )
        return Prompt.load(folder)
    if candidate is None:
        raise AutoPromptError(f"trial {number} recorded no prompt")
    return Prompt.from_dict(candidate)


def build_best_json(
    study: optuna.Study, job: SearchJob, test: Any | None, seconds: float, test_split: str, prompt: Prompt | None = None
) -> dict[str, Any]:
    """The document a search job writes (schema: ``autoprompt_kit/schemas/best.schema.json``).

    It is the study's record; its ``prompt`` key embeds the found prompt's manifest (and, once
    :func:`finish_search` saved it, the ``path`` of the folder that holds its tensors).
    """
    best, found = best_candidate(study) if prompt is None else (best_trial(study), prompt)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -(t.value or 0.0))
    manifest = found.to_dict()
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "method": job.searcher.name,
        "template": manifest["templates"][0],
        "verbalizer": manifest["verbalizer"],
        **(
            {
                "templates": manifest["templates"],
                "ensemble": manifest.get("ensemble"),
                "weights": manifest.get("weights"),
            }
            if len(found.templates) > 1
            else {}
        ),
        "prompt": manifest,
        "model": job.model_info,
        "task": job.task_info,
        "metrics": _selection_metrics(best, job.task_info.get("splits", {}).get("dev"), study),
        "study": {
            "name": study.study_name,
            "storage": public_url(job.storage_url or DEFAULT_STORAGE),
            "best_trial": best.number,
            "trials": counts,
            "direction": "maximize",
        },
        "params": best.params,
        "config": job.searcher.config.to_dict(),
        "seed": job.seed,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "candidates": [
            {
                "trial": t.number,
                "value": t.value,
                **{k: t.user_attrs.get(k) for k in ("template", "label_words")},
                "params": t.params,
            }
            for t in ranked
        ],
    }
    stages: dict[str, dict[str, Any]] = {}
    for t in ranked:  # a staged search: each stage's best candidate (ranked is best first)
        stage = t.params.get("stage")
        if isinstance(stage, str) and stage not in stages:
            stages[stage] = {
                "trial": t.number,
                "value": t.value,
                "candidate": t.params.get(stage),
                **({"se": t.user_attrs["cv"]["se"]} if t.user_attrs.get("cv") else {}),
            }
    if stages:
        doc["stages"] = stages
    keys = bookkept(best, ARTIFACT_KEYS) or []
    if keys:
        doc["trial_artifacts"] = {k: best.user_attrs[k] for k in keys if k in best.user_attrs}
    if study.user_attrs.get("artifacts"):
        doc["artifacts"] = study.user_attrs["artifacts"]
    if test is not None:
        doc["metrics"][test_split] = {"accuracy": test.accuracy, "macro_f1": test.macro_f1, "n": test.n}
    return doc


@dataclass
class SearchResult:
    """What a finished search gives: the found prompt (it predicts and saves), the best.json
    document, the study, and the test result (None without a test split)."""

    prompt: Prompt
    document: dict[str, Any]
    study: optuna.Study
    test: Any | None = None

    def summary(self, out: str | Path | None = None, top: int = 5) -> str:
        """What the CLI prints at the end: trial counts, the top candidates, the best prompt, its
        scores, and (with ``out``, where best.json was written) how to use it."""
        return summary(self.study, self.document, None if out is None else str(out), top)


def prompt_folder(out: str | Path) -> Path:
    """The prompt folder written beside a best.json: ``best.json`` → ``best.prompt/``."""
    out = Path(out)
    return out.with_suffix(".prompt") if out.suffix == ".json" else out.with_name(out.name + ".prompt")


def finish_search(
    study: optuna.Study,
    job: SearchJob,
    ctx: SearchContext,
    *,
    test_split: str | None = "test",
    out: str | Path | None = None,
    seconds: float = 0.0,
    progress: bool = False,
) -> SearchResult:
    """The post-study phase every caller shares: best trial → prompt (trained state restored) →
    test pass → best.json (+ the prompt folder beside it).

    The test split is scored by the same :meth:`Prompt.evaluate` that ``predict`` and a reloaded
    prompt use, so the numbers in best.json are the artifact's own.
    """
    if job.selection == "cv":
        refit(study, job, ctx, progress=progress)
    best, prompt = best_candidate(study)
    task, harness = ctx.task, ctx.harness
    prompt.label_names = list(task.label_names)
    # The reference last: a local folder or GGUF file is recorded by its absolute path, with its pin.
    prompt.model = {**job.model_info, **model_reference(job.model_info.get("name"), harness)}
    prompt.provenance = {
        "method": job.searcher.name,
        "study": study.study_name,
        "storage": public_url(job.storage_url or DEFAULT_STORAGE),
        "trial": best.number,
        "params": best.params,
        "task": job.task_info,
        "seed": job.seed,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": _selection_metrics(best, len(task.dev), study),
    }
    if "dev" in prompt.provenance["metrics"]:
        prompt.provenance["metrics"]["dev"].update(
            fingerprint=task.dev.fingerprint, predictions=bookkept(best, PREDICTIONS)
        )
    test = None
    if test_split:
        if test_split not in task.splits:
            raise AutoPromptError(
                f"--test-split {test_split!r} is not a split of task {task.name!r} (splits: {', '.join(task.splits)})"
            )
        if progress:
            print(f"scoring the best prompt on {test_split} ({len(task[test_split])} examples)…", flush=True)
        shown, harness.progress = harness.progress, progress
        try:
            test = prompt.evaluate(task[test_split], harness)
        finally:
            harness.progress = shown
        prompt.provenance["metrics"][test_split] = {"accuracy": test.accuracy, "macro_f1": test.macro_f1, "n": test.n}
    doc = build_best_json(study, job, test, seconds, test_split or "test", prompt=prompt)
    if out:
        folder = prompt_folder(out)
        prompt.save(folder)
        doc["prompt"] = {"path": folder.name, **prompt.to_dict()}
        write_best_json(out, doc)
    if not job.worker:
        report_best(study, job, ctx, best, prompt, out)
    _drop_stale_trial_state(study, best.number, job.trial_root())
    return SearchResult(prompt, doc, study, test)


def report_best(
    study: optuna.Study,
    job: SearchJob,
    ctx: SearchContext,
    best: optuna.trial.FrozenTrial,
    prompt: Prompt,
    out: str | Path | None,
) -> None:
    """The best trial's artifacts (confusion matrix PNG, the prompt folder as a zip) and the study's
    final note. A file already stored for this trial (a rerun) is not stored twice."""
    store = reporting.artifact_store(job.storage_url or DEFAULT_STORAGE)
    cv = job.selection == "cv"
    examples = labelled_pool(ctx.task) if cv else ctx.task.dev
    predictions = bookkept(best, PREDICTIONS)
    metric = reporting.metric_name(ctx.task.metric, job.selection_info())
    try:
        from optuna.artifacts import get_all_artifact_meta

        stored = {m.filename for m in get_all_artifact_meta(best, storage=study._storage)}
    except Exception:  # noqa: BLE001 — an older Optuna: store again rather than not at all
        stored = set()
    extra = ""
    with reporting.scratch() as tmp:
        png = Path(tmp) / f"trial-{best.number}-confusion-matrix.png"
        if png.name not in stored and predictions is not None and len(predictions) == len(examples):
            title = f"{study.study_name}\ntrial {best.number}: {metric} {best.value:.4f} (n={len(examples)})"
            if reporting.confusion_png(examples.labels.tolist(), predictions, ctx.task.label_names, title, png):
                reporting.upload(store, study, best._trial_id, png, mimetype="image/png")
            else:
                extra = "\n(no confusion-matrix image: matplotlib is not installed — `pip install matplotlib`)\n"
        archive = Path(tmp) / f"trial-{best.number}-prompt.zip"
        if archive.name not in stored:
            folder = prompt_folder(out) if out else Path(tmp) / "prompt"
            if not folder.is_dir():
                prompt.save(folder)
            reporting.upload(
                store, study, best._trial_id, reporting.zip_folder(folder, archive), mimetype="application/zip"
            )
    overview = {k: study.user_attrs[k] for k in reporting.READABLE if k in study.user_attrs}
    reporting.save_note(
        study, reporting.study_note(study.study_name, overview, best, job.command, str(out) if out else None) + extra
    )


def _selection_metrics(
    best: optuna.trial.FrozenTrial, dev_n: int | None, study: optuna.Study | None = None
) -> dict[str, Any]:
    """What the best trial was chosen on: its dev scores, or its cross-validated score with the
    estimate corrected for having been chosen as the best of many (:func:`.folds.selection_bias`)."""
    cv = best.user_attrs.get("cv")
    if cv:
        out = {
            "accuracy": best.user_attrs["dev_accuracy"],
            "macro_f1": best.user_attrs["dev_macro_f1"],
            "metric": cv["metric"],
            "se": cv["se"],
            "n": cv["n"],
            "folds": cv["folds"],
            "fold_scores": cv["fold_scores"],
        }
        if study is not None:
            rivals = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if len((t.user_attrs.get("cv") or {}).get("fold_scores", [])) == len(cv["fold_scores"])
            ]
            winner = next((i for i, t in enumerate(rivals) if t.number == best.number), None)
            if winner is not None:
                bias = selection_bias([t.user_attrs["cv"]["fold_scores"] for t in rivals], winner)
                value = out["accuracy"] if cv["metric"] == "accuracy" else out["macro_f1"]
                out.update(selection_bias=bias, estimate=value - bias, candidates=len(rivals))
        return {"cv": out}
    return {
        "dev": {"accuracy": best.user_attrs["dev_accuracy"], "macro_f1": best.user_attrs["dev_macro_f1"], "n": dev_n}
    }


def refit(study: optuna.Study, job: SearchJob, ctx: SearchContext, progress: bool = False) -> None:
    """Refit a cross-validated study's best trial on every labelled example (train + dev) and record
    the result on the study (each fold's candidate learnt from part of the data only). Done once."""
    from optuna.trial import FixedTrial

    best = best_trial(study)
    key = f"{REFIT}{best.number}"
    if key in study.user_attrs:
        return
    if not job.searcher.refit_needed(best.params):
        study.set_user_attr(key, {"candidate": bookkept(best, CANDIDATE), PROMPT_DIR: best.user_attrs.get(PROMPT_DIR)})
        return
    if progress:
        print(
            f"refitting trial {best.number} on all {len(ctx.task.train) + len(ctx.task.dev)} labelled examples…",
            flush=True,
        )
    full = SearchContext(refit_task(ctx.task), ctx.harness, ctx.seed)
    full.seed_everything(best.number)
    cand = job.searcher.refit(FixedTrial(best.params, number=best.number), full)
    record: dict[str, Any] = {"candidate": cand.to_dict(), PROMPT_DIR: None}
    if cand.trained:
        record[PROMPT_DIR] = str(cand.save(job.trial_root() / f"refit-{best.number}"))
    study.set_user_attr(key, record)


def _drop_stale_trial_state(study: optuna.Study, best: int, root: Path | None = None) -> None:
    """Delete the prompt folders of finished trials that lost (a finished trial's value never
    changes, so it can never become best again); the best one and running trials stay. Under
    ``root``, also what failed trials left without recording it (killed between save and record)."""
    import shutil

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        folder = t.user_attrs.get(PROMPT_DIR)
        if folder and t.number != best and Path(folder).is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        if root is not None and t.state == TrialState.FAIL:
            _drop_trial_folder(root, t.number)


def write_best_json(path: str | Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(path), doc)


def summary(study: optuna.Study, doc: dict[str, Any], out: str | None, top: int = 5) -> str:
    lines = [f"\nstudy {study.study_name!r}: " + ", ".join(f"{v} {k}" for k, v in doc["study"]["trials"].items() if v)]
    if doc.get("stages"):
        lines.append("best of each stage:")
        for stage, b in doc["stages"].items():
            se = f" ± {b['se']:.3f}" if "se" in b else ""
            lines.append(f"  {stage:15s} {b['value']:.4f}{se}  #{b['trial']:<3d} {b['candidate']}")
    lines.append(
        f"top {min(top, len(doc['candidates']))} on {'cross-validation' if 'cv' in doc['metrics'] else 'dev'}:"
    )
    for c in doc["candidates"][:top]:
        lines.append(f"  #{c['trial']:<3d} {c['value']:.4f}  {c['template']}  {c['label_words']}")
    best = Template.from_dict(doc["template"]).display()  # filled trigger slots shown as [token]
    lines.append(f"best prompt: {best}" + (f"  (ensemble of {len(doc['templates'])})" if doc.get("templates") else ""))
    lines.append(
        f"label words: {json.dumps(doc['verbalizer']['label_words'])}  calibration: {doc['verbalizer']['calibration']}"
    )
    demos = doc.get("prompt", {}).get("demonstrations")
    if demos:
        how = (
            f"fixed set {demos['fixed']}"
            if "fixed" in demos
            else f"{demos['per_class']} per class, {demos['selection']}"
        )
        lines.append(
            f"demonstrations: {how}, {demos['order']}, separator {demos['separator']!r} "
            f"(from {len(demos['pool'])} train examples)"
        )
    for split, m in doc["metrics"].items():
        se = f" ± {m['se']:.4f}" if "se" in m else ""
        on_f1 = m.get("metric") == "macro_f1"
        how = f", {m['folds']}-fold cross-validation over train + dev" if "folds" in m else ""
        lines.append(
            f"{split:5s} accuracy {m['accuracy']:.4f}{'' if on_f1 else se}  macro-F1 {m['macro_f1']:.4f}"
            f"{se if on_f1 else ''}  (n={m['n']}{how})"
        )
        if "estimate" in m:
            lines.append(
                f"      estimate for new data {m['estimate']:.4f} ({m.get('metric')}: the score above less "
                f"{m['selection_bias']:.4f}, what winning among {m['candidates']} candidates on the same folds adds)"
            )
    if out:
        folder = doc.get("prompt", {}).get("path")
        lines.append(f"wrote {out}" + (f" and the prompt folder {Path(out).parent / folder}" if folder else ""))
        lines.append(f"use it:  autoprompt-kit predict --prompt {out} --input texts.txt")
    lines.append(f"inspect: autoprompt-kit dashboard --storage {doc['study']['storage']}")
    return "\n".join(lines)


def storage_summaries(url: str | None) -> list[dict[str, Any]] | None:
    """Every study in a storage (for ``autoprompt-kit studies``): method, task, model, trials by
    state, best value and its metric name; None when there is no storage (nothing is created).
    Trials of dead processes are failed first (:func:`recover_for_view`), as a rerun would."""
    storage = open_existing_storage(url)
    if storage is None:
        return None
    out = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        recover_for_view(study)
        trials = study.get_trials(deepcopy=False)
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        attrs = study.user_attrs
        try:
            best: optuna.trial.FrozenTrial | None = best_trial(study)
        except AutoPromptError:
            best = None
        task: dict[str, Any] = attrs["task"] if isinstance(attrs.get("task"), dict) else {}
        model: dict[str, Any] = attrs["model"] if isinstance(attrs.get("model"), dict) else {}
        out.append(
            {
                "name": name,
                "method": attrs.get("method"),
                "task": task.get("name"),
                "model": attrs.get("Model") or model.get("name"),
                "trials": len(trials),
                "states": states,
                "best": None if best is None else best.value,
                "best_trial": None if best is None else best.number,
                "metric": study.metric_names[0] if study.metric_names else None,
                "template": None if best is None else best.user_attrs.get("template"),
            }
        )
    return out


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial (for ``autoprompt-kit trials``): number, state, value, readable parameters,
    seconds, the prompt, and the note's reason for a failed or pruned trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "seconds": seconds,
                "prompt": t.user_attrs.get("prompt"),
                **({"note": t.user_attrs["note"]} if t.user_attrs.get("note") else {}),
            }
        )
    return rows
