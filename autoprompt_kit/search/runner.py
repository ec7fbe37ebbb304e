"""The search backbone: every search is a resumable Optuna study.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from .. import __version__
from ..artifact import BEST_SCHEMA_VERSION, Prompt, model_reference
from ..errors import AutoPromptError
from ..io import write_json_atomic
from ..prompts import Template
from ._storage import (check_url, claim, fail_dead_trials, public_url, running_elsewhere, storage_lock,
                       take_trials_atomically)
from .base import SearchContext, Searcher

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///runs/autoprompt.db"
QUEUED = "autoprompt.queued"
ARTIFACT_KEYS = "autoprompt.artifacts"  # names of the user attributes a trial's method produced
PROMPT_DIR = "prompt_dir"               # a trained trial's prompt folder
SCHEMA_VERSION = BEST_SCHEMA_VERSION


def default_storage() -> str:
    Path("runs").mkdir(exist_ok=True)
    return DEFAULT_STORAGE


def open_storage(url: str | None, heartbeat: int = 30) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats: a trial whose process died is failed and retried."""
    url = check_url(url or default_storage())
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but stable since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Optuna 4.9 renamed the retry hook; older releases (>= 3.6 is supported) only have the old one.
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
            # Two processes creating a fresh storage's tables at once collide (alembic_version): one at a time.
            with _creation_lock(url):
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


def open_study(name: str, storage: optuna.storages.RDBStorage, seed: int, meta: dict[str, Any] | None = None,
               create: bool = True) -> optuna.Study:
    """Create the study, or load it to resume; checks it was made by the same method."""
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise AutoPromptError(f"no study named {name!r} in this storage") from None
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
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
FINGERPRINT = {"space": "another space", "task": "another task", "model": "another model",
               "weights": "other model weights", "kind": "another kind", "precision": "another precision"}


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
        raise AutoPromptError(f"study {name!r} was run with {' and '.join(FINGERPRINT[w] for w in differ)} ({pairs}); "
                              "resuming would mix their results: give a new --study name")
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


def fill_queue(study: optuna.Study, grid: Sequence[dict[str, Any]], n_trials: int, seed: int,
               shuffle: bool = True) -> int:
    """Enqueue distinct candidates so the study holds ``n_trials`` of them (finished or pending).

    Returns the number enqueued now. Failed trials do not count: the heartbeat's retry callback
    re-enqueues their parameters. Safe for any number of processes at once: reading the queue and
    adding to it happen under a storage-wide lock (see :func:`._storage.storage_lock`).
    """
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache wrapper
    url, engine = getattr(storage, "url", None), getattr(storage, "engine", None)
    if url is None:  # an in-memory storage: one process only
        return _fill_queue(study, grid, n_trials, seed, shuffle)
    with storage_lock(url, f"queue:{study.study_name}", engine):
        return _fill_queue(study, grid, n_trials, seed, shuffle)


def _fill_queue(study: optuna.Study, grid: Sequence[dict[str, Any]], n_trials: int, seed: int,
                shuffle: bool) -> int:
    # A queued trial carries its candidate's key as a user attribute: WAITING trials have no
    # params yet, and the heartbeat's retry copies keep user attributes.
    key = lambda params: json.dumps(params, sort_keys=True)  # noqa: E731
    present = {t.user_attrs[QUEUED] for t in study.get_trials(deepcopy=False)
               if QUEUED in t.user_attrs and t.state != TrialState.FAIL}
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
    worker: bool = False                       # a helper process: runs trials, writes nothing
    progress: bool = True
    task_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    trial_dir: str | None = None               # where trials keep trained state (default: beside the storage)

    def trial_root(self) -> Path:
        """Folder of this study's per-trial prompt folders (``<root>/<study>/trial-<n>``)."""
        if self.trial_dir:
            return Path(self.trial_dir) / self.study_name
        url = self.storage_url or DEFAULT_STORAGE
        base = Path(url[len("sqlite:///"):]).expanduser().parent if url.startswith("sqlite:///") else Path("runs")
        return base / "trials" / self.study_name


def run_search(job: SearchJob, ctx: SearchContext,
               start_workers: Callable[[], list[Any]] | None = None) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials; return it."""
    if job.n_trials < 1:
        raise AutoPromptError("--trials must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job.searcher.config.check_task(ctx.task)  # an input error must not leave a failed trial in the study
    storage = open_storage(job.storage_url, job.heartbeat)
    config = job.searcher.config.to_dict()
    meta = {"method": job.searcher.name, "task": job.task_info, "model": job.model_info, "config": config,
            "seed": job.seed, "fingerprint": {"space": _digest(config), "task": task_fingerprint(ctx.task),
                                              **model_fingerprint(job.model_info.get("name"), ctx.harness)}}
    study = open_study(job.study_name, storage, job.seed, meta)
    take_trials_atomically(study)  # no queued trial run twice; a taken trial has its owner at once
    _recover(study, job)
    job.searcher.prepare(ctx, study)
    grid = job.searcher.grid()
    if grid is not None and not job.worker:
        fill_queue(study, grid, job.n_trials, job.seed, shuffle=not job.searcher.ordered_grid)
    workers = start_workers() if start_workers else []
    metric = ctx.task.metric

    def objective(trial: optuna.Trial) -> float:
        claim(trial)
        if grid is not None and not trial.user_attrs.get(QUEUED):
            # Another worker took the last queued candidate between our check and our ask.
            trial.set_user_attr("note", "no queued candidate left")
            raise optuna.TrialPruned()
        ctx.seed_everything(trial.number)
        start = time.perf_counter()
        outcome = job.searcher.run_trial(trial, ctx)
        cand = outcome.candidate
        trial.set_user_attr("template", cand.template.display() if len(cand.templates) == 1
                            else " | ".join(t.display() for t in cand.templates))
        trial.set_user_attr("label_words", json.dumps(cand.verbalizer.to_dict()["label_words"]))
        trial.set_user_attr("prompt", cand.describe())
        trial.set_user_attr("candidate", cand.to_dict())
        if cand.trained:  # tensors do not belong in the storage: the trial's prompt folder holds them
            trial.set_user_attr(PROMPT_DIR, str(cand.save(job.trial_root() / f"trial-{trial.number}")))
        trial.set_user_attr("dev_accuracy", outcome.dev.accuracy)
        trial.set_user_attr("dev_macro_f1", outcome.dev.macro_f1)
        trial.set_user_attr("dev_predictions", np.asarray(outcome.dev.predictions).tolist())
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        for name, value in outcome.artifacts.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr(ARTIFACT_KEYS, sorted(outcome.artifacts))
        return outcome.dev.accuracy if metric == "accuracy" else outcome.dev.macro_f1

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if grid is not None and waiting(study) == 0:
            study.stop()
        if not job.progress or trial.state != TrialState.COMPLETE:
            return
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        print(f"[trial {trial.number:3d} · {done}/{job.n_trials}] dev {metric} {trial.value:.4f}  "
              f"best {study.best_value:.4f}  {trial.user_attrs.get('prompt', trial.user_attrs.get('template'))}",
              flush=True)

    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [report]
    if grid is None:
        callbacks.append(optuna.study.MaxTrialsCallback(job.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def work_left() -> bool:
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        return waiting(study) > 0 if grid is not None else finished < job.n_trials

    announced: set[int] = set()
    while True:
        if work_left():
            study.optimize(objective, callbacks=callbacks)
        # The study is done only when no other process still runs one of its trials: wait for them,
        # and take over (at once, or after the heartbeat's grace period) the trials of processes that died.
        others = running_elsewhere(study)
        if not others:
            break
        if _recover(study, job):
            continue
        new = [t.number for t in others if t.number not in announced]
        if new and job.progress and not job.worker:
            print(f"waiting for running trial(s) {', '.join(map(str, new))} of other processes "
                  f"(a dead one is retried after the {2 * job.heartbeat} s heartbeat grace period)…", flush=True)
        announced.update(new)
        time.sleep(min(2.0, job.heartbeat))
    for proc in workers:
        if proc.wait() != 0:
            raise AutoPromptError(f"a worker process exited with code {proc.returncode}")
    return study


def _recover(study: optuna.Study, job: SearchJob) -> list[int]:
    """Fail and re-queue the trials of dead processes: on this host at once, elsewhere after the
    heartbeat's grace period. Returns the trial numbers taken over."""
    revived = fail_dead_trials(study)
    stale_before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    revived += [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if t.number not in stale_before]
    for number in revived:  # its retry gets a new number (and folder): what the dead one saved is garbage
        _drop_trial_folder(job.trial_root(), number)
    if revived and job.progress and not job.worker:
        print(f"trial(s) {', '.join(map(str, sorted(revived)))} of a process that is gone: failed and queued again",
              flush=True)
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
    """The best trial and its prompt, trained state included."""
    try:
        best = study.best_trial
    except ValueError:
        raise AutoPromptError(f"study {study.study_name!r} has no completed trial yet") from None
    return best, trial_prompt(best)


def trial_prompt(trial: optuna.trial.FrozenTrial) -> Prompt:
    """A finished trial's prompt: from its folder when it trained something, else from its attributes."""
    folder = trial.user_attrs.get(PROMPT_DIR)
    if folder:
        if not Path(folder).is_dir():
            raise AutoPromptError(f"trial {trial.number}'s trained state {folder!r} is gone (was the trial "
                                  "folder deleted or written on another machine?)")
        return Prompt.load(folder)
    return Prompt.from_dict(trial.user_attrs["candidate"])


def build_best_json(study: optuna.Study, job: SearchJob, test: Any | None, seconds: float,
                    test_split: str, prompt: Prompt | None = None) -> dict[str, Any]:
    """The document a search job writes (schema: ``autoprompt_kit/schemas/best.schema.json``).

    It is the study's record; its ``prompt`` key embeds the found prompt's manifest (and, once
    :func:`finish_search` saved it, the ``path`` of the folder that holds its tensors).
    """
    best, found = best_candidate(study) if prompt is None else (study.best_trial, prompt)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -(t.value or 0.0))
    manifest = found.to_dict()
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "method": job.searcher.name,
        "template": manifest["templates"][0],
        "verbalizer": manifest["verbalizer"],
        **({"templates": manifest["templates"], "ensemble": manifest.get("ensemble"), "weights": manifest.get("weights")}
           if len(found.templates) > 1 else {}),
        "prompt": manifest,
        "model": job.model_info,
        "task": job.task_info,
        "metrics": {"dev": {"accuracy": best.user_attrs["dev_accuracy"], "macro_f1": best.user_attrs["dev_macro_f1"],
                            "n": job.task_info.get("splits", {}).get("dev")}},
        "study": {"name": study.study_name, "storage": public_url(job.storage_url or DEFAULT_STORAGE),
                  "best_trial": best.number, "trials": counts, "direction": "maximize"},
        "params": best.params,
        "config": job.searcher.config.to_dict(),
        "seed": job.seed,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "candidates": [{"trial": t.number, "value": t.value, **{k: t.user_attrs.get(k) for k in ("template", "label_words")},
                        "params": t.params} for t in ranked],
    }
    keys = best.user_attrs.get(ARTIFACT_KEYS) or []
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


def prompt_folder(out: str | Path) -> Path:
    """The prompt folder written beside a best.json: ``best.json`` → ``best.prompt/``."""
    out = Path(out)
    return out.with_suffix(".prompt") if out.suffix == ".json" else out.with_name(out.name + ".prompt")


def finish_search(study: optuna.Study, job: SearchJob, ctx: SearchContext, *, test_split: str | None = "test",
                  out: str | Path | None = None, seconds: float = 0.0, progress: bool = False) -> SearchResult:
    """The post-study phase every caller shares: best trial → prompt (trained state restored) →
    test pass → best.json (+ the prompt folder beside it).

    The test split is scored by the same :meth:`Prompt.evaluate` that ``predict`` and a reloaded
    prompt use, so the numbers in best.json are the artifact's own.
    """
    best, prompt = best_candidate(study)
    task, harness = ctx.task, ctx.harness
    prompt.label_names = list(task.label_names)
    prompt.model = {**model_reference(job.model_info.get("name"), harness), **job.model_info}
    prompt.provenance = {
        "method": job.searcher.name, "study": study.study_name, "storage": public_url(job.storage_url or DEFAULT_STORAGE),
        "trial": best.number, "params": best.params, "task": job.task_info, "seed": job.seed, "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {"dev": {"accuracy": best.user_attrs["dev_accuracy"], "macro_f1": best.user_attrs["dev_macro_f1"],
                            "n": len(task.dev), "fingerprint": task.dev.fingerprint,
                            "predictions": best.user_attrs.get("dev_predictions")}},
    }
    test = None
    if test_split:
        if test_split not in task.splits:
            raise AutoPromptError(f"--test-split {test_split!r} is not a split of task {task.name!r} "
                                  f"(splits: {', '.join(task.splits)})")
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
    _drop_stale_trial_state(study, best.number, job.trial_root())
    return SearchResult(prompt, doc, study, test)


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
    lines.append(f"top {min(top, len(doc['candidates']))} on dev:")
    for c in doc["candidates"][:top]:
        lines.append(f"  #{c['trial']:<3d} {c['value']:.4f}  {c['template']}  {c['label_words']}")
    best = Template.from_dict(doc["template"]).display()  # filled trigger slots shown as [token]
    lines.append(f"best prompt: {best}" + (f"  (ensemble of {len(doc['templates'])})" if doc.get("templates") else ""))
    lines.append(f"label words: {json.dumps(doc['verbalizer']['label_words'])}  calibration: {doc['verbalizer']['calibration']}")
    demos = doc.get("prompt", {}).get("demonstrations")
    if demos:
        how = f"fixed set {demos['fixed']}" if "fixed" in demos else f"{demos['per_class']} per class, {demos['selection']}"
        lines.append(f"demonstrations: {how}, {demos['order']}, separator {demos['separator']!r} "
                     f"(from {len(demos['pool'])} train examples)")
    for split, m in doc["metrics"].items():
        lines.append(f"{split:5s} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  (n={m['n']})")
    if out:
        folder = doc.get("prompt", {}).get("path")
        lines.append(f"wrote {out}" + (f" and the prompt folder {Path(out).parent / folder}" if folder else ""))
        lines.append(f"use it:  autoprompt-kit predict --prompt {out} --input texts.txt")
    lines.append(f"inspect: autoprompt-kit dashboard --storage {doc['study']['storage']}")
    return "\n".join(lines)


def storage_summaries(url: str) -> list[dict[str, Any]]:
    """Every study in a storage with its trial count and best value (for ``autoprompt-kit studies``)."""
    storage = open_storage(url)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = s.best_trial
        out.append({"name": s.study_name, "method": s.user_attrs.get("method"), "trials": s.n_trials,
                    "best": None if best is None else best.value,
                    "template": None if best is None else best.user_attrs.get("template")})
    return out


