"""Child processes of a search (its ``workers``) and of the dashboard: they get the storage URL
through the environment, die with their parent, and get its signals."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import AutoPromptError

#: The environment variable through which a child process gets the storage URL: a password in a
#: command line is visible to every user of the machine (``ps``), the environment is not.
STORAGE_ENV = "AUTOPROMPT_KIT_STORAGE"


def child_env(url: str | None) -> dict[str, str]:
    """This process's environment plus the storage URL for a child (see :data:`STORAGE_ENV`)."""
    env = dict(os.environ)
    if url:
        env[STORAGE_ENV] = url
    return env


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies (Linux), so no child outlives a killed parent."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def forward_signals(procs: list[Any]) -> None:
    """On SIGTERM/SIGINT/SIGHUP: pass the signal on to the children, wait for them, then exit."""
    import signal
    import time

    def handler(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
        deadline = time.monotonic() + 30
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:  # a child that ignores the signal is killed
                p.kill()
                p.wait()
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def quiet_logging() -> None:
    """A command's logging: warnings and up, message only; the hub client's retries and
    transformers' progress bars silenced (the command's own error line says what failed)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def run_command(command: Callable[[], int | None]) -> int:
    """A command's exit code: its own, 2 with one ``error: …`` line for bad input, 130 on Ctrl-C
    (never a traceback)."""
    try:
        return int(command() or 0)
    except AutoPromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
