"""The search verbs at the top of the package: run a search, load a study's best prompt.

    import autoprompt_kit as apk

    result = apk.find_prompt("select", apk.load_task("mr", shots=16), trials=20, out="best.json")
    result.prompt.predict(["A gripping, funny film."])
    apk.load_best(result.study.study_name)           # the best prompt of a stored study, trained state included

``autoprompt-kit search`` is this verb: it parses its flags, calls :func:`find_prompt` and prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AutoPromptError
from ._runner import (
    DEFAULT_STORAGE,
    SearchJob,
    SearchResult,
    best_candidate,
    default_storage,
    default_study_name,
    finish_search,
    model_fingerprint,
    open_storage,
    open_study,
    parse_budget,
    prompt_folder,
    run_study,
)
from .base import SearchConfig, SearchContext, get_searcher

if TYPE_CHECKING:
    from ..artifact import Prompt
    from ..data import Task
    from ..harness import Harness

#: Shots when a task given by name has none: K per class for train and dev, lowered to what a small file allows.
DEFAULT_SHOTS = 16

#: Settings the start-up lines show of a space built from the task (the rest are defaults).
_SHOWN_SETTINGS = ("template", "templates", "label_words", "seed_words", "calibration", "sources")


def find_prompt(
    method: str,
    task: Task | str,
    space: SearchConfig | dict[str, Any] | str | Path | None = None,
    *,
    harness: Harness | None = None,
    trials: int = 20,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 13,
    test_split: str | None = "test",
    out: str | Path | None = None,
    budget: str | float | None = None,
    selection: str | None = None,
    folds: int = 4,
    progress: bool = False,
    trial_dir: str | Path | None = None,
    shots: int | None = None,
    max_examples: int | None = None,
    model: str | None = None,
    kind: str | None = None,
    harness_options: dict[str, Any] | None = None,
    heartbeat: int = 30,
    workers: int = 1,
    verbose: bool = False,
    command: Callable[[str, dict[str, Any]], str] | None = None,
) -> SearchResult:
    """Search ``task`` with ``method`` and return the found prompt (it predicts and saves).

    Everything is checked before the study opens (the space against the task before the model
    loads, then against the model), each check once. The study is resumable (same ``study`` and
    ``storage``); ``out`` also writes best.json and the prompt folder beside it.

    Args:
        method: a registered search method (``select``, ``auto``, …).
        task: a :class:`Task`, or what :func:`load_task` loads (a built-in name, a file or folder,
            a HF dataset) with ``shots`` (default :data:`DEFAULT_SHOTS` per class, lowered to fit a
            small file; 0: the full splits), ``seed`` and ``max_examples``.
        space: a config, its dict, a YAML path, or None for the default space built from the task.
        harness: the model to search with; None loads ``model`` (default: the embedded Gemma 3
            270M) with ``kind`` and ``harness_options`` (:class:`Harness` keyword arguments:
            ``batch_size``, ``device``, ``precision``, ``truncation``, ``auto_int8``). Resuming a
            named study with precision ``auto`` takes the precision its trials were scored in.
        trials: finished trials the study should hold.
        storage: an Optuna storage URL (default ``sqlite:///runs/autoprompt.db``).
        study: the study's name. Without one, ``<method>-<task>-<space>-s<seed>-<model tag>``
            (``<space>``: the YAML file's stem, ``task`` for the default space; ``api`` instead
            when ``task`` is a Task object), so a rerun resumes and another model starts its own.
        test_split: scored with the best prompt at the end (None: none).
        budget: seconds, or ``"10m"``: no trial starts once it is spent (default: the method's).
        selection: ``"dev"``, or ``"cv"`` to score candidates by ``folds``-fold cross-validation
            over train + dev (default: the method's; ``cv`` for ``auto``).
        progress: a line per finished trial (with ``verbose``, also the precision probe and the
            refit and test passes).
        trial_dir: where trials keep what they trained (default: beside an SQLite storage).
        heartbeat: seconds between trial heartbeats; a trial silent for twice that is retried.
        workers: processes sharing the study; the N - 1 extra ones run from a
            :class:`.worker.WorkerJob` file, so ``task`` must be given by name and the model by
            ``model`` (use a server database such as PostgreSQL).
        verbose: print what the CLI prints before the trials: the space built from the task, the
            task, model and study lines (and the ``shots`` note on stderr).
        command: given the study's name and the task's record (``Task.info``: source, shots, …),
            the command that resumes this search, for the study's note (default: this call).
    """
    start = time.perf_counter()
    searcher_cls = get_searcher(method)
    config = _space(searcher_cls, space)
    if trials < 1:
        raise AutoPromptError("--trials must be at least 1")
    if workers < 1:
        raise AutoPromptError("--workers must be at least 1")
    if heartbeat < 1:
        raise AutoPromptError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    seconds = parse_budget(budget if budget is not None else searcher_cls.default_budget)
    chosen, selection = selection, selection or searcher_cls.default_selection
    if selection == "cv" and folds < 2:
        raise AutoPromptError(f"--folds must be at least 2, got {folds}")
    if workers > 1 and (not isinstance(task, str) or harness is not None):
        raise AutoPromptError(
            "workers > 1 load the task and the model again in each worker: give the task by "
            "name or path and the model by `model`, not as objects"
        )
    if out:
        _check_out(out)
    # Everything that can be wrong with the input is found before the storage is touched or the model loads.
    by_name = isinstance(task, str)
    if isinstance(task, str):
        source = task
        task, shots = load_search_task(source, shots, seed, max_examples, note=verbose)
        task_info = task.info(source=task_source(source), shots=shots, seed=seed, max_examples=max_examples)
    else:
        source = task.name
        task_info = task.info(seed=seed)
    if test_split and test_split not in task.splits:
        raise AutoPromptError(
            f"--test-split {test_split!r} is not a split of {task.name!r} (splits: {', '.join(task.splits)}; '' = none)"
        )
    if config is None:  # the default space, read off the task
        config = default_space(method, task)
        if verbose:
            print(
                f"space    built from the task (write it to edit: autoprompt-kit space {method} --task "
                f"{source} --out space.yaml):"
            )
            print("\n".join(f"         {line}" for line in _shown_settings(config.to_yaml())))
    if not by_name:
        # A space given to the Python verb records its method; the CLI's --space YAML is kept as
        # written (its settings are the study's fingerprint: a resumed study must match them).
        config.method = config.method or method
    searcher = searcher_cls(config)
    config.check_task(task)
    from ._storage import check_url, public_url

    check_url(storage or default_storage())  # a bad URL is said before the model loads
    if harness is None:
        options = {"progress": False, **(harness_options or {})}
        if options.get("precision") in (None, "auto") and study:
            # Resuming a named study: auto takes the precision its trials were scored in (one study, one precision).
            options["precision"] = _study_precision(open_storage(storage, heartbeat), study) or options.get("precision")
        from ..harness import Harness

        harness = Harness(model, kind=kind, **options)
        if harness.precision_probe is not None and verbose and progress:
            print(harness.precision_probe.line())
    ctx = SearchContext(task=task, harness=harness, seed=seed)
    # What the space can check against the model is checked before the study (or its file) exists:
    # a trial that fails on it would leave FAIL/WAITING trials and Optuna's traceback behind.
    searcher.check(ctx)
    model_info = {"name": harness.model_name, "kind": harness.kind}
    # Without a study name, the name carries a tag of the model: another model starts its own study.
    space_tag = (Path(space).stem if isinstance(space, (str, Path)) else "task") if by_name else "api"
    # The storage is opened once for the search (a named study's only after its trial folder is checked).
    opened = None
    name = study
    if not name:
        opened = open_storage(storage, heartbeat)
        name = default_study_name(
            opened, f"{method}-{task.name}-{space_tag}-s{seed}", model_fingerprint(model_info["name"], harness)
        )
    note = (
        command(name, task_info)
        if command
        else _api_command(method, name, storage, trials, seed, budget, chosen, folds)
    )
    job = SearchJob(
        searcher,
        name,
        storage,
        n_trials=trials,
        seed=seed,
        heartbeat=heartbeat,
        progress=progress,
        task_info=task_info,
        model_info=model_info,
        budget=seconds,
        selection=selection,
        folds=folds,
        trial_dir=str(trial_dir) if trial_dir else None,
        command=note,
    )
    _check_trial_root(job.trial_root(), given=bool(trial_dir))
    opened = opened or open_storage(storage, heartbeat)
    if verbose:
        print(f"task     {task.summary()}")
        print(f"model    {model_info['name']} ({harness.kind}, {harness.device})")
        size = "stages sized to the budget" if searcher.staged else f"{trials} trials"
        print(
            f"study    {name} in {public_url(storage or DEFAULT_STORAGE)}; {size}"
            + (f", {workers} workers" if workers > 1 else "")
            + (f", budget {budget or searcher_cls.default_budget}" if seconds else "")
            + (f", selection by {folds}-fold cross-validation over train + dev" if selection == "cv" else "")
        )
    start_workers = None
    if workers > 1:
        from .worker import WorkerJob

        worker_job = WorkerJob.of(
            job,
            method=method,
            task=dict(source=task_source(source), shots=shots, seed=seed, max_examples=max_examples),
            model=model,
            kind=kind,
            harness={**(harness_options or {}), "precision": harness.precision},
        )
        start_workers = _WorkerStarter(worker_job, workers - 1, storage)
    try:
        found = run_study(job, ctx, start_workers, storage=opened)
    finally:
        if start_workers is not None:
            start_workers.cleanup()
    return finish_search(
        found,
        job,
        ctx,
        test_split=test_split or None,
        out=out or None,
        seconds=time.perf_counter() - start,
        progress=progress and verbose,
    )


class _WorkerStarter:
    """Starts ``count`` worker processes of a job (once the leader has filled the study's queue);
    ``cleanup`` deletes the job file after the search."""

    def __init__(self, job: Any, count: int, storage: str | None) -> None:
        self.job, self.count, self.storage = job, count, storage
        self.path: Path | None = None

    def __call__(self) -> list[Any]:
        import subprocess

        from .processes import child_env, die_with_parent, forward_signals
        from .worker import worker_command

        self.path = path = self.job.save()
        # They die with this process, even when it is killed with SIGKILL; the storage URL (perhaps
        # with a password) goes through the environment, not the command line or the job file.
        procs = [
            subprocess.Popen(worker_command(path), env=child_env(self.storage), preexec_fn=die_with_parent)
            for _ in range(self.count)
        ]
        forward_signals(procs)
        return procs

    def cleanup(self) -> None:
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


def load_search_task(
    source: str, shots: int | None, seed: int, max_examples: int | None, note: bool = False
) -> tuple[Task, int | None]:
    """The task ``source`` names and the shots used: ``shots`` per class for train and dev (0: the
    full splits), or :data:`DEFAULT_SHOTS` lowered to fit a small file (``note``: said on stderr).
    Errors name the CLI's flags."""
    from ..data import load_task

    if not str(source).strip():
        raise AutoPromptError(
            "--task is empty; give a built-in task (mr, tweets, amazon, nyt, fortunes, spam), "
            "a local file or folder, or a HF dataset name"
        )
    if shots is not None and shots < 0:
        raise AutoPromptError(f"--shots must be 0 (the full splits) or a positive integer, got {shots}")
    if max_examples is not None and max_examples < 1:
        raise AutoPromptError(f"--max-examples must be a positive integer, got {max_examples}")
    fit = shots is None
    task = load_task(
        source,
        shots=DEFAULT_SHOTS if fit else (shots or None),
        seed=seed,
        max_examples=max_examples,
        fit_shots=fit,
        shots_flag="--shots",
    )
    if fit:
        if note and task.shots is not None and task.shots < DEFAULT_SHOTS:
            print(
                f"shots    {task.name}'s smallest class is too small for the default {DEFAULT_SHOTS} per class: "
                f"using --shots {task.shots} (train and dev {task.shots} per class; set --shots to choose)",
                file=sys.stderr,
            )
        shots = task.shots
    return task, shots


def default_space(method: str, task: Task) -> SearchConfig:
    """A method's default search space for a task (what ``autoprompt-kit space`` writes)."""
    config = get_searcher(method).config_class.for_task(task)
    config.method = method
    return config


def _space(searcher_cls: Any, space: SearchConfig | dict[str, Any] | str | Path | None) -> SearchConfig | None:
    config_class = searcher_cls.config_class
    if space is None:
        return None
    if isinstance(space, SearchConfig):
        return space
    if isinstance(space, dict):
        return config_class.from_dict(space)
    return config_class.from_yaml(space)


def _shown_settings(yaml_text: str) -> list[str]:
    """The lines of the shown settings, nested blocks (a mapping of label words) included."""
    shown, keep = [], False
    for line in yaml_text.splitlines():
        if line and not line[0].isspace():
            keep = line.split(":")[0] in _SHOWN_SETTINGS and not line.startswith("#")
        if keep:
            shown.append(line)
    return shown


def task_source(task: str) -> str:
    """What loads the task again from anywhere: a local file or folder as an absolute path, else the name."""
    path = Path(task)
    return str(path.resolve()) if path.exists() else task


def _study_precision(storage: Any, name: str) -> str | None:
    """The precision an existing study recorded in its fingerprint (None: no such study, or none recorded)."""
    import optuna

    if name not in set(optuna.get_all_study_names(storage)):
        return None
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    value = (attrs.get("fingerprint") or {}).get("precision")
    return str(value) if value else None


def _check_out(out: str | Path, flag: str = "--out") -> None:
    """``out`` must be a file we can write (checked now, not after the whole search)."""
    from ..io import writable_target

    path = Path(out)
    writable_target(path, f"{flag} {str(out)!r}", f"give a file name such as {str(path / 'best.json')!r}")
    folder = prompt_folder(path)
    if folder.exists() and not folder.is_dir():
        raise AutoPromptError(
            f"--out {str(out)!r}: the prompt folder {str(folder)!r} would go beside it, but a file has that name"
        )


def _check_trial_root(root: Path, given: bool) -> None:
    """The folder trials save trained prompts in (``trial_dir``/<study>) must not have a file in its
    place (every trial that trains something would fail on it); a given one must be writable."""
    from ..io import writable_target

    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                raise AutoPromptError(
                    f"--trial-dir: trials would save under {str(root)!r}, but {str(part)!r} "
                    "is a file; remove it or give another --trial-dir"
                )
            break
    if given:
        target = root / "trial-0"
        writable_target(
            target, f"--trial-dir {str(target)!r}", f"give a file name such as {str(target / 'best.json')!r}"
        )


def _api_command(
    method: str, study: str, storage: str | None, trials: int, seed: int, budget: Any, selection: str | None, folds: int
) -> str:
    """The call that resumes this search, for the study's note (``task`` is the caller's own)."""
    from ._storage import public_url

    args = [repr(method), "task", f"trials={trials}", f"study={study!r}", f"seed={seed}"]
    args += [f"storage={public_url(storage)!r}"] if storage else []
    args += [f"budget={budget!r}"] if budget is not None else []
    args += [f"selection={selection!r}", *([f"folds={folds}"] if folds != 4 else [])] if selection else []
    return f"autoprompt_kit.find_prompt({', '.join(args)})"


def load_best(study: str, storage: str | None = None) -> Prompt:
    """The best prompt of a stored study, with what its trial trained (no test pass, nothing written)."""
    found = open_study(study, open_storage(storage), seed=0, create=False)
    return best_candidate(found)[1]
