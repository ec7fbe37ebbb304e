"""Storage URLs, cross-process locks and dead-trial recovery for the study runner.

* :func:`check_url` validates and normalises a storage URL before anything is opened (the driver
  is named when missing; in-memory SQLite is refused: workers and resumes cannot see it).
* :func:`public_url` masks every password form (``user:pw@``, ``:pw@``, ``?password=``).
* :func:`storage_lock` serialises what must not run twice at once across processes: creating a
  fresh storage's tables and filling a study's queue. SQLite uses an ``flock`` on a file beside
  the database (released by the kernel if the process dies); PostgreSQL a session advisory lock;
  MySQL ``GET_LOCK``; anything else a lock file in ``runs/``.
* :func:`take_trials_atomically` makes ``study.ask`` take a queued trial with one conditional
  ``UPDATE … WHERE state = 'WAITING'`` and record its owner in the same transaction: SQLite has no
  row locks, so Optuna's read-then-write take let two processes run one trial (Optuna issue #4002),
  and a kill between the take and :func:`claim` left a running trial nobody could tell was dead.
* :func:`claim` / :func:`fail_dead_trials` record which process runs a trial, so a rerun on the
  same host fails (and re-queues) the trials of a process that is gone at once, instead of waiting
  for the heartbeat's grace period.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import optuna
from optuna.trial import TrialState

from ..errors import AutoPromptError

#: Bookkeeping attributes start with "~": the dashboard lists attributes by name, so they sort after
#: what a reader looks for (template, label words, scores). Studies made before keep the bare names.
BOOKKEEPING = "~"
OWNER = "~autoprompt.owner"  # {host, pid, start, trial} of the process running a trial


def bookkept(t: Any, key: str) -> Any:
    """A bookkeeping attribute of a trial, also under the name an older version gave it (no ``~``)."""
    attrs = t.user_attrs
    return attrs[key] if key in attrs else attrs.get(key.removeprefix(BOOKKEEPING))


LOCK_TIMEOUT = 600.0

_DRIVERS = {  # dialect+driver → importable module that provides it
    "postgresql+psycopg2": "psycopg2",
    "postgresql+psycopg": "psycopg",
    "postgresql+pg8000": "pg8000",
    "mysql+pymysql": "pymysql",
    "mysql+mysqldb": "MySQLdb",
    "mariadb+mysqldb": "MySQLdb",
}


def public_url(url: str) -> str:
    """The storage URL without its password (for best.json, logs and the startup line)."""
    m = re.match(r"^([A-Za-z0-9+.-]+://)([^/?#]*)(.*)$", url, flags=re.S)
    if not m:
        return url
    scheme, netloc, rest = m.groups()
    if "@" in netloc:  # the last '@' ends the user info: a raw '@' in a password stays hidden
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    if "?" in rest:
        path, query = rest.split("?", 1)
        pairs = [
            (k, "***" if k.lower() in ("password", "passwd", "pwd") else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        rest = f"{path}?{urlencode(pairs, safe='*/')}"
    return f"{scheme}{netloc}{rest}"


def _check_sqlite_folder(url: str, path: Path) -> None:
    """The database file's folder must exist or be creatable, and be writable (SQLite writes a journal
    beside the file): one line now, not an OSError from deep inside SQLAlchemy."""
    import os

    from ..io import writable_target

    writable_target(path, f"--storage {url!r}", "give a database file, e.g. sqlite:///runs/autoprompt.db")
    if os.path.isfile(path) and not os.access(path, os.R_OK | os.W_OK):
        raise AutoPromptError(f"--storage {url!r}: the database file is not readable and writable")


def check_url(url: str) -> str:
    """Validate a storage URL (scheme, driver, file location) and return the one to open.

    ``postgresql://`` means psycopg 3 to SQLAlchemy 2; when only psycopg2 is installed (the
    ``test`` extra's ``psycopg2-binary``) it is rewritten to ``postgresql+psycopg2://``.
    """
    import importlib.util

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise AutoPromptError(
            f"--storage {public_url(url)!r} is not a database URL (e.g. sqlite:///runs/autoprompt.db "
            "or postgresql+psycopg2://user@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise AutoPromptError(
                "--storage sqlite:// is an in-memory database that other processes and later runs "
                "cannot see; give a file: sqlite:///runs/autoprompt.db"
            )
        _check_sqlite_folder(url, Path(parsed.database).expanduser())
        return url
    if backend not in ("postgresql", "mysql", "mariadb", "oracle", "mssql"):
        raise AutoPromptError(
            f"--storage {public_url(url)!r}: unknown database {backend!r}; use sqlite:///FILE or "
            "postgresql+psycopg2://user@host/db"
        )
    driver = parsed.drivername.partition("+")[2] or {"mysql": "mysqldb", "mariadb": "mysqldb"}.get(backend, "")
    if backend == "postgresql" and "+" not in parsed.drivername:
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return str(parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False))
        driver = "psycopg"
    module = _DRIVERS.get(f"{backend}+{driver}")
    if module and importlib.util.find_spec(module) is None:
        package = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient"}.get(
            module, module
        )
        raise AutoPromptError(f"--storage {public_url(url)!r} needs the {module} driver: pip install {package}")
    return url


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return Path(parsed.database).expanduser() if parsed.get_backend_name() == "sqlite" and parsed.database else None


@contextlib.contextmanager
def storage_lock(url: str, name: str, engine: Any = None) -> Iterator[None]:
    """Hold a lock named ``name`` on this storage across processes (see the module doc)."""
    path = _sqlite_path(url)
    if path is not None or engine is None:
        import fcntl

        lock = (path.parent / f".{path.name}.lock") if path is not None else Path("runs") / ".autoprompt.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha1(f"autoprompt:{name}".encode()).digest()[:8], "big", signed=True)
    backend = engine.dialect.name
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        elif backend in ("mysql", "mariadb"):
            conn.execute(text("SELECT GET_LOCK(:k, :t)"), {"k": f"autoprompt:{name}"[:64], "t": int(LOCK_TIMEOUT)})
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"autoprompt:{name}"[:64]})
        else:
            yield


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def claim(trial: optuna.Trial) -> None:
    """Record on the trial which process runs it (and the trial's number: a retried copy inherits
    its failed original's attributes, which must not be read as its own)."""
    trial.set_user_attr(OWNER, {**_me(), "trial": trial.number})


def _owner(t: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    # A tag without a number was written when the trial was created (its number was not known yet);
    # a trial only becomes running through :func:`take_trial`, which overwrites an inherited tag.
    tag = bookkept(t, OWNER)
    return tag if isinstance(tag, dict) and tag.get("trial", t.number) == t.number else None


def _engine(study: optuna.Study) -> Any:
    """The SQLAlchemy engine under the study's storage (None for an in-memory storage)."""
    return getattr(getattr(study._storage, "_backend", study._storage), "engine", None)


def _set_state_if(
    engine: Any, trial_id: int, was: TrialState, now: TrialState, owner: dict[str, Any] | None = None
) -> bool:
    """Move a trial from state ``was`` to ``now`` (and record ``owner``) in one transaction, only if
    it is still in state ``was``; True if this call moved it.

    One conditional ``UPDATE`` is atomic on every database (SQLite serialises writers; PostgreSQL and
    MySQL re-check the condition under the row lock), unlike Optuna's read-then-write, which SQLite
    runs without a lock between the two. Writes Optuna's own tables, as its storage does.
    """
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trials, attrs = models.TrialModel, models.TrialUserAttributeModel
    stamp = {"datetime_start" if now == TrialState.RUNNING else "datetime_complete": datetime.now()}
    with engine.begin() as conn:
        moved = conn.execute(
            sa.update(trials).where(trials.trial_id == trial_id, trials.state == was).values(state=now, **stamp)
        ).rowcount
        if moved != 1:
            return False
        if owner is not None:  # the same transaction: no moment when the trial runs without an owner
            conn.execute(sa.delete(attrs).where(attrs.trial_id == trial_id, attrs.key == OWNER))
            conn.execute(sa.insert(attrs).values(trial_id=trial_id, key=OWNER, value_json=json.dumps(owner)))
    return True


def take_trial(study: optuna.Study) -> int:
    """Give this process a trial of ``study`` and return its id: the first queued (WAITING) one
    nobody else took, else a new one. Either way the trial is running and carries this process as
    its owner from the moment it exists (see :func:`_set_state_if`)."""
    engine = _engine(study)
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if _set_state_if(engine, t._trial_id, TrialState.WAITING, TrialState.RUNNING, {**_me(), "trial": t.number}):
            return t._trial_id
    template = optuna.trial.FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={OWNER: _me()},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def take_trials_atomically(study: optuna.Study) -> None:
    """Make ``study.ask`` (and so ``study.optimize``) take its trials with :func:`take_trial`, and
    failing a running trial a conditional move from RUNNING: when several processes fail the same
    stale trial at once (Optuna does before every trial), only one re-queues it.

    Optuna has no public hook for either; ``Study._pop_waiting_trial_id`` (Optuna 3.x to 5.x;
    checked on 5.1) and the ``set_trial_state_values`` of this study's storage object are replaced
    on these objects only. Without an SQL engine, Optuna's own ways stay.
    """
    engine, storage = _engine(study), study._storage
    if engine is None:
        return
    if callable(getattr(study, "_pop_waiting_trial_id", None)):
        study._pop_waiting_trial_id = lambda: take_trial(study)  # type: ignore[method-assign]
    plain = storage.set_trial_state_values

    def set_trial_state_values(trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state == TrialState.FAIL and values is None and _set_state_if(engine, trial_id, TrialState.RUNNING, state):
            return True
        # Anything else, or a trial no longer running: Optuna's own (it raises UpdateFinishedTrialError
        # for a trial another process failed first, which its stale-trial check expects).
        return plain(trial_id, state=state, values=values)

    storage.set_trial_state_values = set_trial_state_values  # type: ignore[method-assign]


def _alive(owner: dict[str, Any]) -> bool | None:
    """Whether the process still runs: None when it ran on another host (unknowable from here)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not owner.get("start") or _start_time(pid) == owner["start"]


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the running trials whose process (on this host) is gone and re-queue them via the
    storage's retry callback, as the heartbeat would after its grace period. Returns their numbers."""
    storage = study._storage  # Optuna keeps no public verb for failing a trial of another process
    engine = _engine(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = _owner(t)
        if owner is None or _alive(owner) is not False:
            continue
        # Conditional, so that of two processes recovering at once only one re-queues the trial.
        if engine is not None:
            if _set_state_if(engine, t._trial_id, TrialState.RUNNING, TrialState.FAIL):
                failed.append(t._trial_id)
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process did it first
    # Optuna 4.9 renamed the hook; the old name is all that releases before it have.
    old_getter = getattr(storage, "get_failed_trial_callback", None)
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None) or old_getter
    assert getter is not None, "every supported Optuna storage has one of the two"
    callback = getter()
    numbers = []
    for trial_id in failed:
        frozen = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(frozen.number)
        if callback is not None:
            callback(study, frozen)
    return numbers


def running_elsewhere(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Running trials of other processes (live, or not known to be dead)."""
    me = _me()
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if (_owner(t) or {}).get("pid") != me["pid"] or (_owner(t) or {}).get("host") != me["host"]
    ]
