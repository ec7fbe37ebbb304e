"""Knowledge sources for KPT's label-word expansion: WordNet, the VADER lexicon, a user KB file, and
the model's own output-embedding neighbours.

WordNet is read through nltk, offline. :func:`wordnet` finds the data in this order:

1. an nltk data folder (``$NLTK_DATA`` or nltk's default paths) holding ``corpora/wordnet`` (what
   ``nltk.download("wordnet")`` installs);
2. the kit's own copy under ``cache_dir("nltk_data")``;
3. Debian/Ubuntu's installed ``wordnet-base`` package (``/usr/share/wordnet``, or ``$WNHOME/dict``);
4. Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages fetched with ``apt-get download``
   (no root; nothing is installed, see :mod:`autoprompt_kit.fetch`) and read from the ``.deb`` files.

Routes 3 and 4 *copy* the WordNet 3.0 files into the kit's copy (nltk 3.10 refuses symlinked
corpus files) and write the ``lexnames`` file nltk needs, which Debian lacks. ``index.sense``
comes from ``wordnet-sense-index``; without it an empty one is written (nltk insists on the file;
only sense-key look-ups, which KPT does not use, need its content). The copy is staged in a temp
folder and renamed into place, so a crash never leaves a half-copied WordNet that looks complete.

When no route works, one :class:`AutoPromptError` line says what each route found and how to
install WordNet by hand.

User knowledge-base files (``kb_file``) map a key to related words; the key is a class label or one
of a class's seed words (case-insensitive) and the words join that class. Two formats:

* JSON: ``{"positive": ["superb", "lovely"], "bad": ["awful"]}``;
* text (any other suffix): one entry a line, ``key<TAB>word1,word2,...``; blank lines and lines
  starting with ``#`` are ignored. Multi-word entries (``"well made"``) are allowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...cache import cache_dir
from ...errors import AutoPromptError
from ...fetch import apt_download, read_deb
from ...models.vocab import vocabulary_words

if TYPE_CHECKING:
    from ...harness import Harness

logger = logging.getLogger(__name__)

WORDNET_INSTALL = (
    "install it with `apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu) or "
    "`python -c 'import nltk; nltk.download(\"wordnet\")'` (needs internet), or point $NLTK_DATA "
    "at a folder holding corpora/wordnet"
)
WORDNET_PACKAGES = ("wordnet-base", "wordnet-sense-index")
_DEB_WORDNET_DIR = "usr/share/wordnet/"
WORDNET_RELATIONS = ("synonyms", "similar", "derived", "hypernyms", "hyponyms")
SOURCES = ("wordnet", "vader", "kb", "embedding")

# WordNet's 45 lexicographer files in their standard order (nltk reads ``lexnames``; Debian's
# wordnet-base omits it). Columns: number, name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
_LEXNAMES = (
    ["adj.all 3", "adj.pert 3", "adv.all 4"]
    + [
        f"noun.{n} 1"
        for n in (
            "Tops act animal artifact attribute body cognition communication event feeling food "
            "group location motive object person phenomenon plant possession process quantity "
            "relation shape state substance time"
        ).split()
    ]
    + [
        f"verb.{n} 2"
        for n in (
            "body change cognition communication competition consumption contact creation "
            "emotion motion perception possession social stative weather"
        ).split()
    ]
    + ["adj.ppl 3"]
)
_WORDNET_FILES = (
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
)
_WORD = re.compile(r"^[A-Za-z][A-Za-z' -]*[A-Za-z]$|^[A-Za-z]$")


def lexnames_text() -> str:
    """The ``lexnames`` file nltk expects: ``NN<TAB>name<TAB>pos`` for the 45 lexicographer files."""
    assert len(_LEXNAMES) == 45
    return "".join(f"{i:02d}\t{entry.split()[0]}\t{entry.split()[1]}\n" for i, entry in enumerate(_LEXNAMES))


def _system_wordnet_dirs() -> list[Path]:
    dirs = [Path("/usr/share/wordnet")]
    if os.environ.get("WNHOME"):
        dirs.insert(0, Path(os.environ["WNHOME"]) / "dict")
    return dirs


def install_wordnet_from(source: Path, target_root: Path) -> Path:
    """Copy a WordNet 3.0 ``dict`` folder into ``<target_root>/corpora/wordnet`` for nltk; return it.

    Files are copied, not linked (nltk 3.10 rejects symlinks that leave its data root), and the
    ``lexnames`` file is written when the source lacks it.
    """
    target = target_root / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item.resolve(), target / item.name)
    if not (target / "lexnames").exists():
        (target / "lexnames").write_text(lexnames_text())
    for name in ("index.sense", "cntlist.rev"):  # nltk's reader requires them to exist
        if not (target / name).exists():
            logger.warning("WordNet at %s has no %s; writing an empty one", source, name)
            (target / name).write_text("")
    return target


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _WORDNET_FILES + ("lexnames", "index.sense"))


def _set_up_own_copy(source: Path, own_root: Path) -> Path:
    """Copy a WordNet ``dict`` folder into ``<own_root>/corpora/wordnet`` through a staged temp folder."""
    target = own_root / "corpora" / "wordnet"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=own_root))
    try:
        staged = install_wordnet_from(source, staging)
        if target.exists():  # an incomplete copy left by an older version
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch_wordnet(own_root: Path) -> Path:
    """Fetch Debian's WordNet 3.0 packages (``apt-get download``, no root) into the kit's copy; return it.

    Raises:
        AutoPromptError: if the packages cannot be downloaded or hold no WordNet ``dict`` files.
    """
    with tempfile.TemporaryDirectory(prefix="wordnet-") as tmp:
        debs = apt_download(WORDNET_PACKAGES, Path(tmp))
        source = Path(tmp) / "dict"
        source.mkdir()
        for deb in debs.values():
            contents = read_deb(deb, lambda p: p.startswith(_DEB_WORDNET_DIR) and "/" not in p[len(_DEB_WORDNET_DIR) :])
            for path, data in contents.files.items():
                (source / path[len(_DEB_WORDNET_DIR) :]).write_bytes(data)
        missing = [f for f in _WORDNET_FILES if not (source / f).is_file()]
        if missing:
            raise AutoPromptError(f"the Debian packages {' '.join(WORDNET_PACKAGES)} lack the WordNet files {missing}")
        return _set_up_own_copy(source, own_root)


def _find_wordnet() -> str:
    """The WordNet folder for nltk, by the module docstring's routes; one error line saying what each found."""
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return str(nltk.data.find(resource))
        except LookupError:
            pass
    tried = ["nltk's data paths ($NLTK_DATA, nltk.data.path): no corpora/wordnet"]
    own_root = cache_dir("nltk_data")
    own = own_root / "corpora" / "wordnet"
    if _complete(own):
        return str(own)
    tried.append(f"the kit's copy: none in {own}")
    for source in _system_wordnet_dirs():
        if (source / "data.noun").is_file():
            logger.info("setting up WordNet for nltk from %s in %s", source, own)
            return str(_set_up_own_copy(source, own_root))
        tried.append(f"an installed WordNet: no data.noun in {source}")
    try:
        logger.warning("fetching WordNet 3.0 from Debian's %s into %s (once)", " and ".join(WORDNET_PACKAGES), own)
        return str(fetch_wordnet(own_root))
    except AutoPromptError as exc:
        tried.append(f"Debian's packages: {exc}")
    raise AutoPromptError(f"WordNet for nltk was not found (tried {'; '.join(tried)}); {WORDNET_INSTALL}")


@lru_cache(maxsize=1)
def wordnet() -> Any:
    """nltk's WordNet reader, found or set up as the module docstring says.

    Raises:
        AutoPromptError: if no route gives WordNet, or the data found is incomplete.
    """
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:  # pragma: no cover - nltk is a dependency
        raise AutoPromptError("KPT's WordNet source needs nltk: pip install nltk") from None
    root = _find_wordnet()
    own_root = str(cache_dir("nltk_data"))
    if root.startswith(own_root) and own_root not in nltk.data.path:
        nltk.data.path.append(own_root)  # nltk 3.10 reads corpora only under its data paths
    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": KPT needs none
            warnings.simplefilter("ignore", UserWarning)
            return WordNetCorpusReader(root, None)
    except (OSError, LookupError) as exc:
        raise AutoPromptError(f"WordNet data at {root} is incomplete ({exc}); {WORDNET_INSTALL}") from None


def _clean(word: str) -> str | None:
    """A WordNet/KB lemma as a label word (``ice_cream`` → ``ice cream``), or None if unusable."""
    word = word.replace("_", " ").strip()
    if not _WORD.match(word) or word != word.lower():  # capitalised lemmas are names, not label words
        return None
    return word


def wordnet_related(
    word: str, *, relations: Sequence[str] = WORDNET_RELATIONS, depth: int = 1, senses: int = 3
) -> dict[str, str] | None:
    """Words related to ``word`` in WordNet: ``{related: relation}``; None if WordNet lacks the word.

    ``senses`` limits the synsets used (WordNet lists a word's senses most frequent first, and rare
    senses bring most of the noise); ``depth`` is how many hypernym/hyponym steps are followed.
    """
    bad = [r for r in relations if r not in WORDNET_RELATIONS]
    if bad:
        raise AutoPromptError(f"unknown WordNet relation(s) {bad}; choose from {WORDNET_RELATIONS}")
    wn = wordnet()
    synsets = wn.synsets(word.replace(" ", "_"))[: max(1, senses)]
    if not synsets:
        return None
    out: dict[str, str] = {}

    def add(lemma_names: Iterable[str], relation: str) -> None:
        for name in lemma_names:
            clean = _clean(name)
            if clean and clean != word and clean not in out:
                out[clean] = relation

    for syn in synsets:
        if "synonyms" in relations:
            add(syn.lemma_names(), "synonym")
        if "similar" in relations:
            for other in syn.similar_tos() + syn.also_sees():
                add(other.lemma_names(), "similar")
        if "derived" in relations:
            for lemma in syn.lemmas():
                if lemma.name().lower() == word.lower().replace(" ", "_"):
                    add([d.name() for d in lemma.derivationally_related_forms() + lemma.pertainyms()], "derived")
        for rel, step in (
            ("hypernyms", lambda s: s.hypernyms() + s.instance_hypernyms()),
            ("hyponyms", lambda s: s.hyponyms()),
        ):
            if rel not in relations:
                continue
            frontier = [syn]
            for d in range(depth):
                frontier = [n for s in frontier for n in step(s)]
                for other in frontier:
                    add(other.lemma_names(), f"{rel[:-1]}@{d + 1}")
    return out


@lru_cache(maxsize=4)
def vader_lexicon(path: str | None = None) -> dict[str, float]:
    """The VADER lexicon ``{word: mean valence in [-4, 4]}`` (alphabetic entries only)."""
    if path is None:
        from ...data.vader import vader_lexicon_path

        path = str(vader_lexicon_path())
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and _clean(parts[0]):
            try:
                out[parts[0].strip()] = float(parts[1])
            except ValueError:
                continue
    if not out:
        raise AutoPromptError(f"the VADER lexicon at {path} has no word entries")
    return out


def vader_words(
    seeds: Sequence[str], *, threshold: float, max_words: int, lexicon: Mapping[str, float] | None = None
) -> tuple[dict[str, str], int]:
    """Lexicon words with one class's seed polarity: ``({word: "vader±v"}, polarity)``.

    The class's polarity is the sign of its seeds' mean valence (0 → no words: a class whose seeds
    the lexicon does not know, or a neutral class); words need ``|valence| >= threshold`` and the
    ``max_words`` strongest are kept. For a whole task use :func:`vader_class_words`, which checks
    that the classes are sentiment polarities and splits words between classes of the same sign.
    """
    lexicon = lexicon if lexicon is not None else vader_lexicon()
    known = [lexicon[s.lower()] for s in seeds if s.lower() in lexicon]
    mean = sum(known) / len(known) if known else 0.0
    polarity = (mean > 0) - (mean < 0)
    if polarity == 0:
        return {}, 0
    ranked = sorted(((w, v) for w, v in lexicon.items() if v * polarity >= threshold), key=lambda x: -abs(x[1]))
    return {w: f"vader{v:+.1f}" for w, v in ranked[:max_words]}, polarity


def seed_valences(seeds: Mapping[str, Sequence[str]], lexicon: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each class's mean VADER valence of its seed words, after checking that the classes are
    sentiment polarities: every class has a seed the lexicon scores, one class is negative and one
    positive. VADER rates sentiment words only, so for topic classes (``art``, ``law``…) its words
    would be sentiment noise; the error says so instead of adding them.

    Raises:
        AutoPromptError: if the classes are not sentiment polarities.
    """
    lexicon = lexicon if lexicon is not None else vader_lexicon()
    valence: dict[str, float] = {}
    unknown = []
    for label, words in seeds.items():
        known = [lexicon[w.lower()] for w in words if w.lower() in lexicon]
        if known:
            valence[label] = sum(known) / len(known)
        else:
            unknown.append(label)
    if unknown or not (any(v < 0 for v in valence.values()) and any(v > 0 for v in valence.values())):
        why = (
            f"the seeds of {len(unknown)} class(es) ({', '.join(repr(u) for u in unknown[:5])}"
            f"{', …' if len(unknown) > 5 else ''}) have no VADER valence"
            if unknown
            else "no class is negative or none is positive"
        )
        raise AutoPromptError(
            f"the 'vader' knowledge source needs sentiment classes (one negative, one positive, "
            f"every class with a seed word VADER rates): {why}; drop 'vader' from sources "
            "(use wordnet, kb or embedding), or give such seed words"
        )
    return valence


def vader_class_words(
    seeds: Mapping[str, Sequence[str]], *, threshold: float, max_words: int, lexicon: Mapping[str, float] | None = None
) -> dict[str, dict[str, str]]:
    """VADER lexicon words for every class of a sentiment task: ``{label: {word: "vader±v"}}``.

    Classes are checked by :func:`seed_valences`. A word with ``|valence| >= threshold`` goes to the
    class of the same sign whose seed valence is nearest (two negative classes, e.g. ``terrible``
    and ``bad``, split the negative words instead of sharing them and losing them all as
    duplicates; a neutral class's small valence attracts no strong word); each class keeps its
    ``max_words`` strongest. With one negative and one positive class this is the sign rule.
    """
    lexicon = lexicon if lexicon is not None else vader_lexicon()
    valence = seed_valences(seeds, lexicon)
    out: dict[str, list[tuple[str, float]]] = {label: [] for label in seeds}
    for word, v in lexicon.items():
        if abs(v) < threshold:
            continue
        same = [(abs(v - cv), label) for label, cv in valence.items() if cv * v > 0]
        if same:
            out[min(same, key=lambda x: x[0])[1]].append((word, v))  # min keeps the first of equal distances
    return {
        label: {w: f"vader{v:+.1f}" for w, v in sorted(ws, key=lambda x: -abs(x[1]))[:max_words]}
        for label, ws in out.items()
    }


def read_kb(path: str | Path) -> dict[str, list[str]]:
    """A user knowledge-base file (format in the module docstring): ``{key: [words]}``."""
    from ...io import loads_json, read_text

    path = Path(path)
    text = read_text(path, "knowledge-base file")  # bounded; a folder, binary or missing file is one line
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = loads_json(text, f"knowledge-base file {str(path)!r}") if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise AutoPromptError(f"knowledge-base file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, (list, str)) for v in data.values()):
            raise AutoPromptError(f"knowledge-base file {str(path)!r} must map keys to lists of words")
        for key, words in data.items():
            out[str(key).strip().lower()] = [words] if isinstance(words, str) else [str(w) for w in words]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" not in line:
                # The line itself is not shown: kb_file may name any file (a space file from someone else).
                raise AutoPromptError(
                    f"knowledge-base file {str(path)!r} line {lineno}: expected "
                    "'key<TAB>word1,word2,...' (no tab found)"
                )
            key, words = line.split("\t", 1)
            out.setdefault(key.strip().lower(), []).extend(w for w in words.split(","))
    out = {k: [w.strip() for w in ws if w.strip()] for k, ws in out.items()}
    out = {k: ws for k, ws in out.items() if ws}
    if not out:
        raise AutoPromptError(
            f"knowledge-base file {str(path)!r} has no entries (expected 'key<TAB>word1,word2' "
            "lines or a JSON object of key → words)"
        )
    return out


def embedding_neighbours(
    harness: Harness, seeds: Sequence[str], k: int, candidates: torch.Tensor | None = None
) -> dict[str, str]:
    """The ``k`` vocabulary words nearest to each single-token seed by output-embedding cosine.

    ``candidates`` is a boolean mask over the vocabulary (default: alphabetic, lower-case, word-initial
    tokens). Multi-token seeds have no single embedding and are skipped.
    """
    from ...models.vocab import token_strings, word_of

    emb = harness.head.weight.detach().float()
    if candidates is None:
        candidates = vocabulary_words(harness)
    strings = token_strings(harness.tokenizer)
    out: dict[str, str] = {}
    for seed in seeds:
        ids = harness.encoder.word_ids(seed, True)
        if len(ids) != 1:
            logger.info("embedding neighbours: seed %r is %d tokens; skipped", seed, len(ids))
            continue
        sims = torch.nn.functional.cosine_similarity(emb, emb[ids[0]][None], dim=1)
        sims[~candidates[: sims.shape[0]].to(sims.device)] = -2.0
        sims[ids[0]] = -2.0
        for i in sims.topk(min(k, int((sims > -2).sum()))).indices.tolist():
            word = word_of(strings[i])[0]
            if word not in out:
                out[word] = f"neighbour:{seed}"
    return out
