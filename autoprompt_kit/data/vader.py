"""Built-in offline sentiment tasks from the VADER ICWSM-2014 ground-truth corpora.

The corpora ship inside the source distribution of the PyPI package ``vaderSentiment==3.3.2``
(``additional_resources/hutto_ICWSM_2014.tar.gz``), so an ordinary package-registry download is
all the network they ever need. On first use the sdist is fetched with ``pip download`` (or read
from ``$AUTOPROMPT_KIT_VADER_SDIST``, a path to an already-downloaded ``.tar.gz``) and the needed
files are extracted to ``cache_dir("data", "vader")/hutto_ICWSM_2014``.

Each ground-truth file has lines ``id<TAB>mean rating<TAB>text`` (UTF-8, CRLF). Labels are
``0 = negative``, ``1 = positive``:

* ``mr`` - movie-review snippets (Pang & Lee's sentence polarity data): the gold label comes from
  the snippet id (1-5152 positive, 5153-10605 negative), not from the crowd rating.
* ``tweets``, ``amazon``, ``nyt`` - labelled by the sign of the crowd's mean rating (-4..4);
  items with ``|rating| < NEUTRAL_MARGIN`` (0.5) are dropped as near-neutral, because the
  corpora were rated for intensity rather than polarity and those items have no clear class.

Splits are fixed (seed 0, independent of any few-shot seed): the examples are shuffled, then the
first 20% (rounded down) are ``test``, the next 10% (rounded down) ``dev`` and the rest ``train``.
Split order is the shuffled order, so a prefix is not all one class.

========  =====  =====  ====  =====  ============================
task      total  train  dev   test   negative / positive (total)
========  =====  =====  ====  =====  ============================
mr        10605  7424   1060  2121   5453 / 5152
tweets     3432  2403    343   686   1087 / 2345
amazon     2985  2090    298   597   1235 / 1750
nyt        2970  2079    297   594   1783 / 1187
========  =====  =====  ====  =====  ============================
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..errors import AutoPromptError
from .task import Example, Split, Task

VADER_VERSION = "3.3.2"
SDIST_ENV = "AUTOPROMPT_KIT_VADER_SDIST"
SDIST_NAME = f"vaderSentiment-{VADER_VERSION}.tar.gz"
# sha256 of the PyPI sdist; checked after a download so a tampered mirror fails loudly.
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = f"vaderSentiment-{VADER_VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
# Bump the folder name when the cached content changes, so old caches are not reused.
CORPUS_FOLDER = "hutto_ICWSM_2014"

NEUTRAL_MARGIN = 0.5
"""Tweets/amazon/nyt items with ``|mean rating| < NEUTRAL_MARGIN`` are dropped as near-neutral."""

MR_LAST_POSITIVE_ID = 5152
"""MR snippet ids 1..5152 are positive (Pang & Lee's rt-polarity.pos), the rest negative."""

SPLIT_SEED = 0
TEST_FRACTION = 0.2
DEV_FRACTION = 0.1
LABEL_NAMES = ["negative", "positive"]

LEXICON_FILE = "vader_sentiment_lexicon.txt"
CORPUS_FILES = {
    "mr": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
# Raw line counts, checked on parse so a wrong or truncated archive is caught.
EXPECTED_ROWS = {"mr": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
DESCRIPTIONS = {
    "mr": "Movie-review snippets (Pang & Lee 2005 sentence polarity), VADER ICWSM-2014 ground truth; "
    "label from the snippet id.",
    "tweets": "Tweets, VADER ICWSM-2014 ground truth; label = sign of the mean crowd rating, "
    f"|rating| < {NEUTRAL_MARGIN} dropped.",
    "amazon": "Amazon product-review snippets, VADER ICWSM-2014 ground truth; label = sign of the mean "
    f"crowd rating, |rating| < {NEUTRAL_MARGIN} dropped.",
    "nyt": "New York Times editorial snippets, VADER ICWSM-2014 ground truth; label = sign of the mean "
    f"crowd rating, |rating| < {NEUTRAL_MARGIN} dropped.",
}


def _download_command(dest: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"vaderSentiment=={VADER_VERSION}",
        "-d",
        dest,
    ]


def _manual_hint() -> str:
    cmd = " ".join(_download_command("<folder>")).replace(sys.executable, "python")
    return f"download it by hand with `{cmd}` and set {SDIST_ENV}=<folder>/{SDIST_NAME}"


def _download_sdist(dest: Path) -> Path:
    cmd = _download_command(str(dest))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AutoPromptError(
            f"could not download the built-in sentiment corpora (vaderSentiment {VADER_VERSION} sdist): "
            f"{exc}; {_manual_hint()}"
        ) from exc
    found = sorted(dest.glob("vaderSentiment-*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AutoPromptError(
            f"could not download the built-in sentiment corpora (vaderSentiment {VADER_VERSION} sdist): "
            f"pip said {tail[0]!r}; {_manual_hint()}"
        )
    sdist = found[0]
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise AutoPromptError(f"downloaded {sdist.name} has sha256 {digest}, expected {SDIST_SHA256}; {_manual_hint()}")
    return sdist


def _read_corpus_members(archive: Path) -> dict[str, bytes]:
    """Read the needed files from the sdist (or from the inner ``hutto_ICWSM_2014.tar.gz``)."""
    wanted = {f"{CORPUS_FOLDER}/{name}" for name in [*CORPUS_FILES.values(), LEXICON_FILE]}
    try:
        with tarfile.open(archive, "r:*") as outer:
            names = outer.getnames()
            if INNER_ARCHIVE in names:
                inner_bytes = outer.extractfile(INNER_ARCHIVE).read()  # type: ignore[union-attr]
                inner = tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:*")
            elif wanted <= set(names):
                inner = outer
            else:
                raise AutoPromptError(
                    f"{archive} is not the vaderSentiment {VADER_VERSION} sdist: it has no {INNER_ARCHIVE}; "
                    f"{_manual_hint()}"
                )
            out: dict[str, bytes] = {}
            with inner:
                # Read members into memory rather than tar-extracting, so archive paths never
                # decide where anything is written.
                for member in inner.getmembers():
                    if member.name in wanted and member.isfile():
                        out[member.name.split("/", 1)[1]] = inner.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AutoPromptError(f"could not read {archive}: {exc}; {_manual_hint()}") from exc
    missing = sorted(w.split("/", 1)[1] for w in wanted if w.split("/", 1)[1] not in out)
    if missing:
        raise AutoPromptError(f"{archive} lacks {missing}; {_manual_hint()}")
    return out


def corpus_dir() -> Path:
    """Return the cached folder holding the VADER corpora, downloading them on first use.

    Raises:
        AutoPromptError: if the sdist cannot be found, downloaded or read.
    """
    root = cache_dir("data", "vader")
    final = root / CORPUS_FOLDER
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        env_path = os.environ.get(SDIST_ENV)
        if env_path:
            sdist = Path(env_path).expanduser()
            if not sdist.is_file():
                raise AutoPromptError(f"${SDIST_ENV} points to {sdist}, which is not a file")
        else:
            sdist = _download_sdist(tmp / "download")
        files = _read_corpus_members(sdist)
        staged = tmp / CORPUS_FOLDER
        staged.mkdir()
        for name, data in files.items():
            if name == LEXICON_FILE:
                # The original lexicon is Latin-1 (two emoticons contain 'Þ'); the cache is UTF-8 throughout.
                data = data.decode("latin-1").encode("utf-8")
            (staged / name).write_bytes(data)
        # The folder appears complete or not at all: a crash mid-way leaves only the temp folder.
        try:
            os.rename(staged, final)
        except OSError:
            if not final.is_dir():  # not a concurrent process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def vader_lexicon_path() -> Path:
    """Path to ``vader_sentiment_lexicon.txt``, downloading on first use.

    Lines are ``token<TAB>mean<TAB>std<TAB>[ten ratings]`` (7,517 tokens, CRLF). The cached copy is
    UTF-8, transcoded from the original Latin-1.
    """
    return corpus_dir() / LEXICON_FILE


def _parse_rows(path: Path, expected: int) -> list[tuple[str, float, str]]:
    # Plain tab splitting: the text column holds stray quotes that would derail a csv reader.
    text = path.read_bytes().decode("utf-8")
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rows.append((parts[0].strip(), float(parts[1]), parts[2].strip()))
        except (IndexError, ValueError):
            raise AutoPromptError(f"{path} line {lineno} is not 'id<TAB>rating<TAB>text': {line[:80]!r}") from None
    if len(rows) != expected:
        raise AutoPromptError(
            f"{path} has {len(rows)} rows, expected {expected}; delete {path.parent} to re-extract it"
        )
    return rows


@cache
def _builtin_splits(name: str) -> tuple[Split, Split, Split]:
    path = corpus_dir() / CORPUS_FILES[name]
    examples = []
    for sid, rating, text in _parse_rows(path, EXPECTED_ROWS[name]):
        if name == "mr":
            label = 1 if int(sid) <= MR_LAST_POSITIVE_ID else 0
        elif abs(rating) < NEUTRAL_MARGIN:
            continue
        else:
            label = 1 if rating > 0 else 0
        examples.append(Example(text_a=text, label=label, guid=f"{name}-{sid}"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(examples))
    n_test = int(len(examples) * TEST_FRACTION)
    n_dev = int(len(examples) * DEV_FRACTION)

    def pick(idx: np.ndarray, split: str) -> Split:
        return Split((examples[int(i)] for i in idx), name=split)

    test, dev, train = order[:n_test], order[n_test : n_test + n_dev], order[n_test + n_dev :]
    return pick(train, "train"), pick(dev, "dev"), pick(test, "test")


def load_builtin(name: str) -> Task:
    """Load a built-in task (``mr``, ``tweets``, ``amazon``, ``nyt``) with its fixed splits.

    Raises:
        AutoPromptError: if ``name`` is not built in or the corpora cannot be obtained.
    """
    key = name.lower()
    if key not in CORPUS_FILES:
        raise AutoPromptError(f"{name!r} is not a built-in task; built-in tasks: {', '.join(CORPUS_FILES)}")
    train, dev, test = _builtin_splits(key)
    return Task(
        name=key,
        label_names=list(LABEL_NAMES),
        splits={"train": train, "dev": dev, "test": test},
        metric="accuracy",
        description=DESCRIPTIONS[key],
    )
