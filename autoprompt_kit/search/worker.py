"""A worker: an extra process that runs trials of a study another search process leads.

``find_prompt(..., workers=N)`` (and ``autoprompt-kit search --workers N``) writes a
:class:`WorkerJob` as JSON and starts N - 1 of::

    python -m autoprompt_kit.search.worker JOB.json

Each loads the task and the model again, joins the study (whose queue the leader filled) and
runs trials until none is left; it writes nothing else. The storage URL (perhaps with a password)
is not in the file: it comes through the environment (:data:`.processes.STORAGE_ENV`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AutoPromptError

if TYPE_CHECKING:
    from ._runner import SearchJob
    from .base import Searcher

#: The version of the job file's layout (a worker refuses a file of another version).
JOB_VERSION = 1


@dataclass
class WorkerJob:
    """What a worker needs to join a study, all of it JSON: the method and its resolved space, the
    task as a loadable source, the model and harness options (the precision the leader resolved:
    one study, one precision), and the study's settings."""

    method: str
    space: dict[str, Any]  # the space's settings (``SearchConfig.to_dict``)
    study: str
    task: dict[str, Any]  # load_task arguments: source, shots (0: full splits), seed, max_examples
    model: str | None = None  # name or folder (None: the embedded default)
    kind: str | None = None
    harness: dict[str, Any] = field(default_factory=dict)  # Harness keyword arguments (batch_size, precision, …)
    trials: int = 20
    seed: int = 13
    heartbeat: int = 30
    trial_dir: str | None = None
    budget: float | None = None  # seconds
    selection: str = "dev"
    folds: int = 4
    task_info: dict[str, Any] = field(default_factory=dict)  # what the study records (as the leader's)
    model_info: dict[str, Any] = field(default_factory=dict)
    version: int = JOB_VERSION

    @classmethod
    def of(
        cls,
        job: SearchJob,
        *,
        method: str,
        task: dict[str, Any],
        model: str | None,
        kind: str | None,
        harness: dict[str, Any],
    ) -> WorkerJob:
        """The job of a worker that joins the leader's ``job``: its study's settings, with how to
        load the task and the model again."""
        return cls(
            method=method,
            space=job.searcher.config.to_dict(),
            study=job.study_name,
            task=task,
            model=model,
            kind=kind,
            harness=harness,
            trials=job.n_trials,
            seed=job.seed,
            heartbeat=job.heartbeat,
            trial_dir=job.trial_dir,
            budget=job.budget,
            selection=job.selection,
            folds=job.folds,
            task_info=job.task_info,
            model_info=job.model_info,
        )

    def search_job(self, searcher: Searcher, storage: str | None) -> SearchJob:
        """The leader's :class:`SearchJob` as a worker runs it: trials only, nothing printed or written."""
        from ._runner import SearchJob

        return SearchJob(
            searcher=searcher,
            study_name=self.study,
            storage_url=storage,
            n_trials=self.trials,
            seed=self.seed,
            heartbeat=self.heartbeat,
            worker=True,
            progress=False,
            trial_dir=self.trial_dir,
            task_info=self.task_info,
            model_info=self.model_info,
            budget=self.budget,
            selection=self.selection,
            folds=self.folds,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        from ..io import loads_json

        try:
            data = loads_json(text, "worker job")
        except json.JSONDecodeError as exc:
            raise AutoPromptError(f"worker job: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("version") != JOB_VERSION:
            raise AutoPromptError(f"not a worker job of version {JOB_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AutoPromptError(f"worker job: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the job to a new file only this user can read; returns its path."""
        fd, path = tempfile.mkstemp(prefix="autoprompt-worker-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> WorkerJob:
        from ..io import read_text

        return cls.from_json(read_text(path, "worker job file"))


def worker_command(path: str | Path) -> list[str]:
    """The command line of a worker process for the job file ``path`` (no secrets: see the module)."""
    return [sys.executable, "-m", "autoprompt_kit.search.worker", str(path)]


def run_worker(job: WorkerJob, storage: str | None) -> None:
    """Run trials of ``job``'s study until none is left. The leader checked the space against the
    task and the model before it started this process: nothing is checked twice."""
    from ..data import load_task
    from ..harness import Harness
    from ._runner import run_study
    from .base import SearchContext, get_searcher

    searcher_cls = get_searcher(job.method)
    task = load_task(
        job.task["source"],
        shots=job.task.get("shots") or None,
        seed=job.task.get("seed", job.seed),
        max_examples=job.task.get("max_examples"),
        shots_flag="--shots",
    )
    searcher = searcher_cls(searcher_cls.config_class.from_dict(job.space))
    harness = Harness(job.model, kind=job.kind, **{**job.harness, "progress": False})
    ctx = SearchContext(task=task, harness=harness, seed=job.seed)
    run_study(job.search_job(searcher, storage), ctx)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autoprompt_kit.search.worker JOB.json``: errors as one ``error: …`` line, code 2."""
    from .processes import STORAGE_ENV, quiet_logging, run_command

    quiet_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m autoprompt_kit.search.worker JOB.json", file=sys.stderr)
        return 2
    return run_command(lambda: run_worker(WorkerJob.load(args[0]), os.environ.get(STORAGE_ENV)))


if __name__ == "__main__":
    sys.exit(main())
