"""Throwaway external services for tests: PostgreSQL on loopback, optuna-dashboard, headless Chromium.

Plain helpers and context managers; wire them into fixtures in ``conftest.py``, e.g.::

    @pytest.fixture(scope="session")
    def pg_url():
        with postgres_server() as url:
            yield url

Missing system packages (Debian's ``postgresql`` and ``chromium``) are installed on demand with
``apt-get`` when running as root; otherwise a :class:`RuntimeError` says what to install.
Python packages (``psycopg2-binary``, ``optuna-dashboard``) come from the ``test`` extra.

Everything listens on 127.0.0.1 only, on a free port, and is stopped and deleted on exit, also when
the body of the ``with`` raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

START_TIMEOUT = 30.0  # seconds for a server to start answering
CHROMIUM_TIMEOUT = 90.0  # seconds for one headless Chromium run
APT_TIMEOUT = 900.0  # seconds for ``apt-get update && apt-get install``

_APT_LOCK = os.path.join(tempfile.gettempdir(), "autoprompt-kit-tests-apt.lock")


# ---------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str | os.PathLike, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _text_tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(*packages: str, why: str) -> None:
    """``apt-get update && apt-get install -y PACKAGES`` as root, serialized across test processes.

    Raises :class:`RuntimeError` naming the packages when not root or when there is no apt-get.
    """
    if not _is_root() or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{why} not found, and it can't be installed automatically (needs root and apt-get). "
            f"Install it yourself, e.g. `sudo apt-get install -y {' '.join(packages)}` on Debian/Ubuntu.")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Wait for dpkg's lock instead of failing when another apt-get runs (other tests, other users).
    lock_opt = ["-o", "DPkg::Lock::Timeout=600"]
    with open(_APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time among our own processes
        for cmd in (["apt-get", *lock_opt, "update"], ["apt-get", *lock_opt, "install", "-y", *packages]):
            try:
                proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=APT_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"`{shlex.join(cmd)}` timed out after {APT_TIMEOUT:.0f}s") from exc
            if proc.returncode != 0:
                raise RuntimeError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}) while installing {why}:\n"
                                   f"{_text_tail(proc.stdout, 15)}\n{_text_tail(proc.stderr, 15)}")


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def _version_key(path: str) -> tuple:
    ver = Path(path).parent.name  # /usr/lib/postgresql/<ver>/bin
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", ver))


def _find_postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for d in candidates:
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return Path(d)
    # Non-Debian layouts (Homebrew, Fedora, a source build) put the real binaries on PATH.
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        initdb_dir = Path(initdb).resolve().parent
        if (initdb_dir / "pg_ctl").exists():
            return initdb_dir
    return None


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest /usr/lib/postgresql/<ver>/bin first).

    Installs Debian's ``postgresql`` when missing and running as root.
    """
    found = _find_postgres_bin()
    if found is None:
        apt_install("postgresql", why="PostgreSQL server binaries (initdb, pg_ctl)")
        found = _find_postgres_bin()
        if found is None:
            raise RuntimeError("installed `postgresql`, but still found no initdb/pg_ctl under "
                               "/usr/lib/postgresql/*/bin")
    return found


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the ``postgres`` system user when we are root (initdb refuses to run as root)."""
    if not _is_root():
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    if shutil.which("su"):
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
    raise RuntimeError("running as root, but neither runuser nor su is available to switch to the postgres user")


def _run_pg(cmd: list[str], what: str, log: str | None = None, timeout: float = 60.0) -> None:
    try:
        # pg_ctl start gets -l, so the postmaster never holds our pipes open.
        proc = subprocess.run(_as_postgres_user(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        msg = f"{what} timed out after {timeout:.0f}s: {shlex.join(cmd)}"
        if log:
            msg += f"\n--- server log tail ({log}) ---\n{_tail(log)}"
        raise RuntimeError(msg) from exc
    if proc.returncode != 0:
        msg = (f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
               f"{_text_tail(proc.stdout, 20)}\n{_text_tail(proc.stderr, 20)}")
        if log:
            msg += f"\n--- server log tail ({log}) ---\n{_tail(log)}"
        raise RuntimeError(msg)


def _connect_pg(port: int, dbname: str, timeout: float, log: str):
    import psycopg2

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=3)
        except psycopg2.OperationalError as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL on 127.0.0.1:{port} did not accept connections within {timeout:.0f}s "
                       f"(last error: {last})\n--- server log tail ({log}) ---\n{_tail(log)}")


def _stop_postgres(pg_ctl: Path, data: Path, log: str) -> None:
    if not (data / "postmaster.pid").exists():
        return
    for mode in ("fast", "immediate"):
        try:
            _run_pg([str(pg_ctl), "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"], "pg_ctl stop", log,
                    timeout=40)
            return
        except RuntimeError:
            continue
    # Last resort: SIGKILL the postmaster listed in postmaster.pid.
    with contextlib.suppress(Exception):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server(dbname: str = "optuna", timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Start a throwaway PostgreSQL on 127.0.0.1; yield ``postgresql+psycopg2://postgres@127.0.0.1:<port>/<dbname>``.

    - binaries: newest ``/usr/lib/postgresql/<ver>/bin`` (then PATH); ``apt-get install postgresql`` if none
      and we are root, else RuntimeError;
    - as root, initdb and pg_ctl run as the ``postgres`` system user (``runuser -u postgres --``, or ``su``),
      in a fresh ``/tmp/autoprompt-pg-*`` directory chowned to it;
    - ``initdb -A trust -U postgres -E UTF8 --no-locale``; the server listens on 127.0.0.1 only, on a free
      port, with its unix socket in the temp directory, and fsync off (it's throwaway);
    - database ``dbname`` is created; the server is stopped (``pg_ctl stop -m fast``, then immediate) and the
      directory deleted on exit, also on error.

    Needs ``psycopg2`` (``pip install psycopg2-binary``, in the ``test`` extra).
    """
    try:
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("postgres_server needs psycopg2: pip install psycopg2-binary "
                           "(or `pip install -e .[test]`)") from exc
    bindir = postgres_bin_dir()
    initdb, pg_ctl = bindir / "initdb", bindir / "pg_ctl"

    # /tmp explicitly: $TMPDIR may be somewhere the postgres user can't traverse (e.g. under /root).
    base = Path(tempfile.mkdtemp(prefix="autoprompt-pg-", dir="/tmp" if _is_root() else None))
    data, log = base / "data", str(base / "server.log")
    started = False
    try:
        if _is_root():
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root but there is no `postgres` system user "
                                   "(Debian's postgresql package creates it)") from exc
            os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
        _run_pg([str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale",
                 "--no-sync"], "initdb", timeout=120)

        last_err: RuntimeError | None = None
        for _attempt in range(3):  # the free port may be taken between probing and binding: retry
            port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{base}'",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "100",
            }
            # As root we may append to the postgres-owned file; ownership and mode stay.
            with open(data / "postgresql.conf", "a") as f:
                f.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
            try:
                _run_pg([str(pg_ctl), "-D", str(data), "-l", log, "-w", "-t", str(int(timeout)), "start"],
                        "pg_ctl start", log, timeout=timeout + 10)
                started = True
                break
            except RuntimeError as exc:
                last_err = exc
                _stop_postgres(pg_ctl, data, log)
                if "already in use" not in _tail(log, 20):
                    raise
        if not started:
            raise last_err  # type: ignore[misc]

        conn = _connect_pg(port, "postgres", timeout, log)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if data.exists():
            _stop_postgres(pg_ctl, data, log)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# optuna-dashboard
# ---------------------------------------------------------------------------------------------


def _dashboard_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "optuna-dashboard"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("optuna-dashboard")
    if found:
        return [found]
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("optuna-dashboard is not installed: pip install optuna-dashboard "
                           "(or `pip install -e .[test]`)") from exc
    return [sys.executable, "-c", "from optuna_dashboard._cli import main; main()"]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # follows / -> /dashboard (302)
            return 200 <= resp.status < 400
    except (urllib.error.URLError, OSError):
        return False


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def dashboard_server(storage_url: str, timeout: float = START_TIMEOUT,
                     command: Callable[[int], list[str]] | None = None) -> Iterator[str]:
    """Run ``optuna-dashboard STORAGE --host 127.0.0.1 --port <free>``; yield its base URL ``http://127.0.0.1:<port>``.

    Waits until ``GET /`` answers (it redirects to ``/dashboard``), at most ``timeout`` seconds; the
    process is terminated (then killed) on exit. Its output goes to a temp log, quoted on failure.

    Routes of the single-page app (optuna-dashboard 0.21, React Router): ``/dashboard`` (study list),
    ``/dashboard/studies/<study_id>`` (overview), ``.../trials`` (trial list, with the selected trial's
    params and user attributes; ``?numbers=<n>`` selects trial n), ``.../trialTable`` (renders blank
    in headless Chromium 156 with 0.21, even for a plain Optuna study), ``.../analytics``, ``.../note``.
    JSON API: ``/api/studies``, ``/api/studies/<study_id>``.

    ``command(port)`` gives another command line that serves the storage on that port (e.g.
    ``autoprompt-kit dashboard``); by default optuna-dashboard itself.
    """
    cmd = _dashboard_cmd() if command is None else []
    with tempfile.TemporaryDirectory(prefix="autoprompt-dashboard-") as tmp:
        log_path = os.path.join(tmp, "dashboard.log")
        last_msg = ""
        for _attempt in range(3):  # retry if the free port got taken in between
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            with open(log_path, "w") as log:
                argv = command(port) if command else [*cmd, storage_url, "--host", "127.0.0.1", "--port", str(port)]
                proc = subprocess.Popen(argv,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and proc.poll() is None:
                    if _http_ok(base_url + "/"):
                        break
                    time.sleep(0.2)
                else:
                    code = proc.poll()
                    last_msg = (f"optuna-dashboard {'exited with ' + str(code) if code is not None else 'did not answer'}"
                                f" on {base_url} within {timeout:.0f}s\n--- log tail ---\n{_tail(log_path)}")
                    if code is not None and "already in use" in _tail(log_path):
                        continue
                    raise RuntimeError(last_msg)
                yield base_url
                return
            finally:
                _terminate(proc)
        raise RuntimeError(last_msg)


# ---------------------------------------------------------------------------------------------
# headless Chromium
# ---------------------------------------------------------------------------------------------

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def _find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM_PATH")
    if env and os.access(env, os.X_OK):
        return env
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_path() -> str:
    """Path of a Chromium binary ($CHROMIUM_PATH, /usr/bin/chromium, then PATH); installs Debian's
    ``chromium`` when missing and running as root, else RuntimeError."""
    found = _find_chromium()
    if found is None:
        apt_install("chromium", why="Chromium (/usr/bin/chromium)")
        found = _find_chromium()
        if found is None:
            raise RuntimeError("installed `chromium`, but /usr/bin/chromium is still missing")
    return found


# Flags for a closed-network, root, container machine: no sandbox (root), no GPU, and no background
# traffic to Google's hosts (which otherwise fails many times at each start).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
)


def _run_chromium(url: str, extra: list[str], wait_ms: int, timeout: float) -> subprocess.CompletedProcess:
    """Run headless Chromium once, in its own process group, with a fresh profile; kill the group on timeout."""
    exe = chromium_path()
    if wait_ms <= 0:
        # --virtual-time-budget=0 makes Chromium 156 hang until killed; ask for at least 1 ms of virtual time.
        raise ValueError("wait_ms must be > 0 (--virtual-time-budget=0 hangs headless Chromium)")
    with tempfile.TemporaryDirectory(prefix="autoprompt-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={int(wait_ms)}",
               *extra, url]
        env = dict(os.environ, HOME=os.environ.get("HOME") or profile)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # renderer/GPU/zygote children too, not just the browser
            out, err = proc.communicate()
            raise RuntimeError(f"headless Chromium timed out after {timeout:.0f}s on {url}\n"
                               f"{_chromium_log(err)}") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Children that outlive the browser (rare) would keep the profile dir busy: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _chromium_log(stderr: bytes | None, lines: int = 20) -> str:
    """Chromium's stderr without the D-Bus noise of a machine with no bus (harmless, dozens of lines)."""
    text = (stderr or b"").decode(errors="replace")
    keep = [ln for ln in text.splitlines() if "dbus" not in ln.lower()]
    return "\n".join(keep[-lines:])


def chromium_dump_dom(url: str, wait_ms: int = 5_000, timeout: float = CHROMIUM_TIMEOUT,
                      expect: Iterable[str] = (), attempts: int = 3) -> str:
    """The DOM of ``url`` as serialized by headless Chromium (``--dump-dom``) after ``wait_ms`` ms of virtual time.

    What makes a single-page app such as optuna-dashboard reliable here is ``--virtual-time-budget``:
    Chromium fast-forwards the page's timers through the budget, but does not advance virtual time while
    network requests are pending, so the app has fetched ``/api/meta``, ``/api/studies/<id>`` and rendered
    before the DOM is dumped. Seen with Chromium 156 (Debian) and optuna-dashboard 0.21:

    - without the flag, ``--dump-dom`` returns the bare shell (no study name, no trial data);
    - with 500, 1000, 2000, 5000 or 10000 ms, ``/dashboard/studies/<id>/trials`` always had the study name
      (``"<name> (id=<id>)"`` in the app bar) and the selected trial's user attributes
      (``"template {text_a} It was {mask}."``); one run takes 3-6 s of real time;
    - ``--virtual-time-budget=0`` hangs Chromium until killed, so ``wait_ms`` must be > 0.

    User attributes appear on ``.../trials`` (trial list, first trial selected), not on the overview
    ``/dashboard/studies/<id>``. If ``expect`` is given, the page is loaded again (up to ``attempts`` times,
    doubling ``wait_ms``) until every string in it appears in the DOM; the last DOM is returned either way,
    so the caller's assertion reports what was missing.
    """
    expect = list(expect)
    dom = ""
    for attempt in range(max(1, attempts)):
        proc = _run_chromium(url, ["--dump-dom"], wait_ms * (2 ** attempt), timeout)
        dom = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or "<html" not in dom.lower():
            raise RuntimeError(f"headless Chromium --dump-dom failed on {url} (exit {proc.returncode})\n"
                               f"{_chromium_log(proc.stderr)}")
        if all(e in dom for e in expect):
            break
    return dom


def chromium_screenshot(url: str, png_path: str | os.PathLike, width: int = 1400, height: int = 900,
                        wait_ms: int = 5_000, timeout: float = CHROMIUM_TIMEOUT) -> Path:
    """Save a ``width`` x ``height`` PNG of ``url`` after ``wait_ms`` ms of virtual time; return its path.

    Uses ``--screenshot=<png> --window-size=W,H`` with the same flags and virtual-time budget as
    :func:`chromium_dump_dom` (which see); the viewport only, not the full page.
    """
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        png.unlink()
    proc = _run_chromium(url, [f"--screenshot={png}", f"--window-size={width},{height}"], wait_ms, timeout)
    if proc.returncode != 0 or not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"headless Chromium --screenshot failed on {url} (exit {proc.returncode})\n"
                           f"{_chromium_log(proc.stderr)}")
    return png
