"""Tests for autoprompt_kit.data: data model, few-shot sampling, loaders and built-in corpora."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from autoprompt_kit.data import Example, Split, Task, few_shot, list_builtin_tasks, load_task, vader
from autoprompt_kit.errors import AutoPromptError


def make_split(n_per_class: dict[int, int], name: str = "train") -> Split:
    examples = [
        Example(text_a=f"text {label} {i}", label=label, guid=f"{label}-{i}")
        for label, n in n_per_class.items()
        for i in range(n)
    ]
    return Split(examples, name=name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sentiment_rows(n: int) -> list[tuple[str, str]]:
    return [(f"review number {i} was {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(n)]


# -- Example -----------------------------------------------------------------------------------------
def test_example_fields_and_hashing():
    ex = Example("a movie", 1, text_b="second", guid="g1", meta={"premise": "p", "extra": "x"})
    assert ex.get_field("text_a") == "a movie"
    assert ex.get_field("text_b") == "second"
    assert ex.get_field("premise") == "p"
    assert ex.meta == {"extra": "x", "premise": "p"}
    assert hash(ex) == hash(Example("a movie", 1, text_b="second", guid="g1", meta={"extra": "x", "premise": "p"}))
    assert pickle.loads(pickle.dumps(ex)) == ex
    assert Example("t", np.int64(0)).label == 0
    with pytest.raises(AutoPromptError, match="no field 'missing'"):
        ex.get_field("missing")
    with pytest.raises(AutoPromptError, match="no text_b"):
        Example("single", 0).get_field("text_b")
    with pytest.raises(AutoPromptError, match="label"):
        Example("t", -2)
    with pytest.raises(AutoPromptError, match="strings"):
        Example("t", 0, meta={"n": 3})  # type: ignore[dict-item]


# -- Split -------------------------------------------------------------------------------------------
def test_split_fingerprint_stable_and_content_sensitive():
    a = make_split({0: 3, 1: 3})
    b = make_split({0: 3, 1: 3}, name="other name")
    assert a.fingerprint == b.fingerprint  # name is not content
    assert len(a.fingerprint) == 40
    changed = Split([*a[:-1], Example(a[-1].text_a, 0, guid=a[-1].guid)])
    assert changed.fingerprint != a.fingerprint
    with_meta = Split([Example(e.text_a, e.label, meta={"k": "v"}) for e in a])
    assert with_meta.fingerprint != a.fingerprint
    assert a[::-1].fingerprint != a.fingerprint


def test_split_indexing_labels_and_fields():
    s = make_split({0: 2, 1: 3}, name="dev")
    assert len(s) == 5
    assert isinstance(s[0], Example) and s[-1].label == 1
    sub = s[1:3]
    assert isinstance(sub, Split) and sub.name == "dev" and len(sub) == 2
    assert [e.guid for e in s[[4, 0]]] == ["1-2", "0-0"]
    assert len(s[s.labels == 1]) == 3
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 0, 1, 1, 1]
    assert not s.labels.flags.writeable
    assert list(iter(s)) == list(s)
    assert s.fields() == {"text_a"}

    pair = Split([
        Example("a", 0, text_b="b", meta={"x": "1", "y": "2"}),
        Example("c", 1, text_b="d", meta={"x": "3"}),
    ])
    assert pair.fields() == {"text_a", "text_b", "x"}
    mixed = Split([Example("a", 0, text_b="b"), Example("c", 1)])
    assert mixed.fields() == {"text_a"}


def test_task_access_and_errors():
    task = Task("t", ["neg", "pos"], {"train": make_split({0: 2, 1: 2}), "test": [Example("x", 1)]})
    assert task.num_labels == 2
    assert isinstance(task.test, Split) and task["train"] is task.train
    assert "train=4" in task.summary() and "test=1" in task.summary()
    with pytest.raises(AutoPromptError, match="no split 'dev'; available splits: train, test"):
        _ = task.dev
    with pytest.raises(AutoPromptError, match="'dev' is empty"):
        Task("t", ["a", "b"], {"train": make_split({0: 1}), "dev": Split([])})
    with pytest.raises(AutoPromptError, match="label 2"):
        Task("t", ["a", "b"], {"train": make_split({2: 1})})
    with pytest.raises(AutoPromptError, match="metric"):
        Task("t", ["a", "b"], {"train": make_split({0: 1})}, metric="f2")


# -- few-shot ----------------------------------------------------------------------------------------
def test_few_shot_deterministic_balanced_and_seeded():
    s = make_split({0: 40, 1: 30, 2: 25})
    fs = few_shot(s, 8, seed=13)
    assert len(fs) == 24 and fs.name == "train"
    assert np.bincount(fs.labels).tolist() == [8, 8, 8]
    assert few_shot(s, 8, seed=13).fingerprint == fs.fingerprint
    assert few_shot(s, 8, seed=21).fingerprint != fs.fingerprint
    assert len({e.guid for e in fs}) == 24  # without replacement
    assert fs.labels.tolist() != sorted(fs.labels.tolist())  # shuffled across classes
    assert few_shot(s, 2, seed=1, name="fs").name == "fs"


def test_few_shot_errors():
    s = make_split({0: 10, 1: 3})
    with pytest.raises(AutoPromptError, match=r"class 1 .*only 3.*\{0: 10, 1: 3\}"):
        few_shot(s, 4, seed=0)
    with pytest.raises(AutoPromptError, match="positive integer"):
        few_shot(s, 0, seed=0)
    with pytest.raises(AutoPromptError, match="no labelled"):
        few_shot(Split([Example("x", -1)]), 1, seed=0)


def test_few_shot_with_a_small_class():
    s = make_split({0: 10, 1: 3, 2: 8})
    with pytest.raises(AutoPromptError, match=r"class 1 has only 3 .*on_small_class='all'"):
        few_shot(s, 4, seed=0)
    fs = few_shot(s, 4, seed=0, on_small_class="all")      # documented fallback: all 3, with a warning
    assert np.bincount(fs.labels).tolist() == [4, 3, 4]
    named = Split(list(s), name="train", label_names=["a", "b", "c", "d"])
    with pytest.raises(AutoPromptError, match=r"class 3 \('d'\) has only 0"):   # a class the split lacks
        few_shot(named, 2, seed=0, on_small_class="all")
    with pytest.raises(AutoPromptError, match="on_small_class must be one of"):
        few_shot(s, 2, seed=0, on_small_class="skip")


def test_load_task_few_shot_with_a_small_class(tmp_path, caplog):
    rows = "".join(f"t{i},{'abcd'[i % 4]}\n" for i in range(48)) + "x1,e\nx2,e\n"   # class e: 2 examples
    write(tmp_path / "train.csv", "text,label\n" + rows)
    write(tmp_path / "dev.csv", "text,label\n" + "".join(f"d{i},{'abcde'[i % 5]}\n" for i in range(40)))
    write(tmp_path / "test.csv", "text,label\n" + "".join(f"s{i},{'abcde'[i % 5]}\n" for i in range(10)))
    with pytest.raises(AutoPromptError, match=r"class 4 \('e'\) has only 2"):
        load_task(str(tmp_path), shots=4)
    task = load_task(str(tmp_path), shots=4, on_small_class="all")
    assert np.bincount(task.train.labels).tolist() == [4, 4, 4, 4, 2]
    assert np.bincount(task.dev.labels).tolist() == [4, 4, 4, 4, 4]
    assert "all of those taken" in caplog.text


# -- local files -------------------------------------------------------------------------------------
def test_csv_single_file_string_labels(tmp_path):
    rows = sentiment_rows(50)
    lines = ["sentence,label,source"] + [f'"{t}, really",{lab},web' for t, lab in rows]
    path = write(tmp_path / "reviews.csv", "\n".join(lines) + "\n")
    task = load_task(str(path))
    assert task.name == "reviews"
    assert task.label_names == ["neg", "pos"]
    assert [len(task.train), len(task.dev), len(task.test)] == [40, 5, 5]
    every = [e for split in task.splits.values() for e in split]
    assert len({e.text_a for e in every}) == 50  # a partition
    ex = every[0]
    assert ex.text_a.endswith(", really") and ex.get_field("source") == "web"
    assert ex.get_field("sentence") == ex.text_a  # source column name kept as an alias
    assert "source" in task.train.fields()
    for e in every:
        assert task.label_names[e.label] == ("pos" if "good" in e.text_a else "neg")
    # Fixed split seed: the same regardless of the few-shot seed.
    assert load_task(str(path), seed=99).test.fingerprint == task.test.fingerprint
    # label_names fixes the order.
    flipped = load_task(str(path), label_names=["pos", "neg"])
    assert flipped.test.labels.tolist() == (1 - task.test.labels).tolist()


def test_single_file_cut_is_stratified(tmp_path):
    # 90 "ham" and 10 "spam": an unstratified seeded cut leaves dev/test with 0-3 spam at random.
    lines = ["text,label"] + [f"message {i},{'spam' if i % 10 == 0 else 'ham'}" for i in range(100)]
    path = write(tmp_path / "mails.csv", "\n".join(lines) + "\n")
    task = load_task(str(path))
    assert [len(task.train), len(task.dev), len(task.test)] == [80, 10, 10]
    assert np.bincount(task.train.labels).tolist() == [72, 8]
    assert np.bincount(task.dev.labels).tolist() == [9, 1]
    assert np.bincount(task.test.labels).tolist() == [9, 1]
    every = [e.text_a for split in task.splits.values() for e in split]
    assert len(set(every)) == 100  # still a partition
    # The cut does not depend on the classes' order.
    flipped = load_task(str(path), label_names=["spam", "ham"])
    assert [e.text_a for e in flipped.test] == [e.text_a for e in task.test]


def test_single_file_few_shot_dev_draws_beyond_the_dev_cut(tmp_path):
    # 10 classes x 20 rows: the 10% dev cut holds 2 per class, too few for 8-shot dev on its own.
    lines = ["text,label"] + [f"topic {c} text {i},c{c}" for c in range(10) for i in range(20)]
    path = write(tmp_path / "topics.csv", "\n".join(lines) + "\n")
    full = load_task(str(path))
    assert np.bincount(full.dev.labels).tolist() == [2] * 10
    task = load_task(str(path), shots=8, seed=13)
    assert np.bincount(task.train.labels).tolist() == [8] * 10
    assert np.bincount(task.dev.labels).tolist() == [8] * 10
    train, dev, test = ({e.text_a for e in s} for s in (task.train, task.dev, task.test))
    assert not train & dev and not dev & test and not train & test
    assert test == {e.text_a for e in full.test}  # the test split stays fixed
    assert dev & {e.text_a for e in full.dev}  # the dev cut is part of the pool


def test_tsv_pair_file_with_int_labels(tmp_path):
    lines = ["premise\thypothesis\tlabel"] + [f'p "{i}"\th {i}\t{i % 3}' for i in range(30)]
    task = load_task(str(write(tmp_path / "nli.tsv", "\n".join(lines))))
    assert task.label_names == ["0", "1", "2"]
    ex = task.train[0]
    assert ex.text_a.startswith('p "')  # TSV is unquoted: quotes are text
    assert ex.text_b is not None and ex.text_b.startswith("h ")
    assert task.train.fields() >= {"text_a", "text_b", "premise", "hypothesis"}
    assert ex.get_field("hypothesis") == ex.text_b
    named = load_task(str(tmp_path / "nli.tsv"), label_names=["entailment", "neutral", "contradiction"])
    assert named.label_names[named.train[0].label] in {"entailment", "neutral", "contradiction"}


def test_json_and_jsonl_with_explicit_columns(tmp_path):
    records = [{"body": f"doc {i}", "claim": f"claim {i}", "y": i % 2, "idx": i, "topic": "t"} for i in range(20)]
    jpath = tmp_path / "data.json"
    jpath.write_text(json.dumps(records))
    lpath = tmp_path / "data.jsonl"
    lpath.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for path in (jpath, lpath):
        task = load_task(str(path), text_a="body", text_b="claim", label="y")
        assert len(task.train) + len(task.dev) + len(task.test) == 20
        ex = task.test[0]
        assert ex.text_a == f"doc {ex.guid}" and ex.text_b == f"claim {ex.guid}"
        assert ex.label == int(ex.guid) % 2 and ex.get_field("topic") == "t"
        assert "idx" not in ex.meta  # the guid column
    assert load_task(str(jpath), text_a="body", label="y").test.fingerprint != task.test.fingerprint
    with pytest.raises(AutoPromptError, match="no text_a column 'nope'"):
        load_task(str(jpath), text_a="nope")
    with pytest.raises(AutoPromptError, match="no text column found"):
        load_task(str(jpath))


def test_directory_with_train_dev_test(tmp_path):
    def jsonl(name: str, n: int, offset: int) -> None:
        rows = [{"text": f"{name} {i}", "label": ["bad", "good"][i % 2]} for i in range(offset, offset + n)]
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows))

    jsonl("train.jsonl", 40, 0)
    val_rows = "".join(f"val {i},{['bad', 'good'][i % 2]}\n" for i in range(10))
    write(tmp_path / "validation.csv", "text,label\n" + val_rows)
    jsonl("test.jsonl", 12, 100)
    task = load_task(str(tmp_path))
    assert task.name == tmp_path.name
    assert task.label_names == ["bad", "good"]
    assert [len(task.train), len(task.dev), len(task.test)] == [40, 10, 12]
    assert task.dev[0].text_a.startswith("val")

    fs = load_task(str(tmp_path), shots=4, seed=3)
    assert [len(fs.train), len(fs.dev), len(fs.test)] == [8, 8, 12]
    assert fs.train.fingerprint == few_shot(task.train, 4, 3).fingerprint
    assert load_task(str(tmp_path), shots=4, dev_shots=2).dev.labels.tolist().count(0) == 2
    capped = load_task(str(tmp_path), max_examples=5)
    assert [len(capped.train), len(capped.dev), len(capped.test)] == [5, 5, 5]
    assert capped.test.fingerprint == load_task(str(tmp_path), max_examples=5, seed=7).test.fingerprint


def test_dev_carved_from_train_disjoint_when_missing(tmp_path):
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(60)))
    write(tmp_path / "test.csv", "text,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(10)))
    full = load_task(str(tmp_path))
    assert [len(full.train), len(full.dev), len(full.test)] == [54, 6, 10]
    assert not {e.text_a for e in full.train} & {e.text_a for e in full.dev}
    fs = load_task(str(tmp_path), shots=8)
    assert len(fs.train) == len(fs.dev) == 16
    assert not {e.text_a for e in fs.train} & {e.text_a for e in fs.dev}


def test_unlabelled_test_file_uses_validation_as_test(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"t{i}\t{i % 2}\n" for i in range(30)))
    write(tmp_path / "dev.tsv", "sentence\tlabel\n" + "".join(f"d{i}\t{i % 2}\n" for i in range(8)))
    write(tmp_path / "test.tsv", "sentence\n" + "".join(f"x{i}\n" for i in range(8)))
    task = load_task(str(tmp_path))
    assert all(e.text_a.startswith("d") for e in task.test)
    assert all(e.text_a.startswith("t") for split in (task.train, task.dev) for e in split)


def test_local_file_errors(tmp_path):
    with pytest.raises(AutoPromptError, match="does not exist"):
        load_task(str(tmp_path / "missing.csv"))
    write(tmp_path / "empty_text.csv", "text,label\nfine,1\n   ,0\n")
    with pytest.raises(AutoPromptError, match=r"empty_text.csv row 2: text_a \(column 'text'\) is empty"):
        load_task(str(tmp_path / "empty_text.csv"))
    write(tmp_path / "nolabel.csv", "text\nhello\n")
    with pytest.raises(AutoPromptError, match="no label column"):
        load_task(str(tmp_path / "nolabel.csv"))
    write(tmp_path / "few.csv", "text,label\n" + "".join(f"t{i},{int(i < 3)}\n" for i in range(30)))
    with pytest.raises(AutoPromptError, match=r"class 1 \('1'\) has only"):
        load_task(str(tmp_path / "few.csv"), shots=4)
    with pytest.raises(AutoPromptError, match="not among label_names"):
        load_task(str(write(tmp_path / "s.csv", "text,label\na,x\nb,y\n")), label_names=["x", "z"])
    with pytest.raises(AutoPromptError, match="shots must be a positive integer"):
        load_task(str(tmp_path / "few.csv"), shots=0)

    folder = tmp_path / "d"
    folder.mkdir()
    write(folder / "train.csv", "text,label\na,0\nb,1\n")
    write(folder / "dev.csv", "text,label\n")
    write(folder / "test.csv", "text,label\nc,0\n")
    with pytest.raises(AutoPromptError, match="dev split is empty"):
        load_task(str(folder))
    (folder / "dev.csv").unlink()
    (folder / "train.csv").unlink()
    with pytest.raises(AutoPromptError, match="no train file"):
        load_task(str(folder))


# -- HuggingFace datasets ----------------------------------------------------------------------------
def test_unknown_task_name(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AutoPromptError) as info:
        load_task("xyz")
    msg = str(info.value)
    assert msg.startswith("unknown task 'xyz': not a built-in task (mr, tweets, amazon, nyt, fortunes, spam), "
                          "not a local file")
    assert "HF datasets hub could not load it: ConnectionError: Couldn't reach the Hub" in msg
    assert "more detail" not in msg


def test_hf_glue_style_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["negative", "positive"]),
        "idx": datasets.Value("int32"),
    })

    def part(prefix: str, n: int, hidden: bool = False) -> object:
        return datasets.Dataset.from_dict(
            {"sentence": [f"{prefix} {i}" for i in range(n)],
             "label": [-1 if hidden else i % 2 for i in range(n)], "idx": list(range(n))},
            features=features,
        )

    fake = datasets.DatasetDict(train=part("tr", 50), validation=part("va", 10), test=part("te", 10, hidden=True))
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or fake)
    task = load_task("glue", hf_config="sst2")
    assert calls == [("glue", "sst2")]
    assert task.name == "glue/sst2" and task.label_names == ["negative", "positive"]
    assert all(e.text_a.startswith("va") for e in task.test) and len(task.test) == 10
    assert [len(task.train), len(task.dev)] == [45, 5]
    assert all(e.text_a.startswith("tr") for e in task.dev)
    assert task.train.fields() == {"text_a", "sentence"}


# -- built-in corpora --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vader_corpora() -> Path:
    """The extracted VADER corpora: from the cache, $AUTOPROMPT_KIT_VADER_SDIST, or a real pip download."""
    return vader.corpus_dir()


def test_builtin_mr(vader_corpora):
    assert list_builtin_tasks()[:4] == ["mr", "tweets", "amazon", "nyt"]  # + fortunes, spam (test_corpora)
    task = load_task("MR")
    assert task.name == "mr" and task.label_names == ["negative", "positive"]
    assert [len(task.train), len(task.dev), len(task.test)] == [7424, 1060, 2121]
    labels = np.concatenate([s.labels for s in task.splits.values()])
    assert np.bincount(labels).tolist() == [5453, 5152]
    guids = [e.guid for s in task.splits.values() for e in s]
    assert len(set(guids)) == 10605
    assert all((int(e.guid[3:]) <= 5152) == (e.label == 1) for e in task.test)
    assert load_task("mr").test.fingerprint == task.test.fingerprint

    fs = load_task("mr", shots=16, seed=13)
    assert len(fs.train) == 32 and len(fs.dev) == 32
    assert np.bincount(fs.train.labels).tolist() == [16, 16] and np.bincount(fs.dev.labels).tolist() == [16, 16]
    assert not {e.guid for e in fs.train} & {e.guid for e in fs.dev}
    assert fs.test.fingerprint == task.test.fingerprint
    assert load_task("mr", shots=16, seed=42).train.fingerprint != fs.train.fingerprint
    assert len(load_task("mr", shots=16, max_examples=100).test) == 100


@pytest.mark.parametrize(
    "name,sizes", [("tweets", (2403, 343, 686)), ("amazon", (2090, 298, 597)), ("nyt", (2079, 297, 594))]
)
def test_builtin_rated_corpora(vader_corpora, name, sizes):
    task = load_task(name)
    assert task.num_labels == 2 and task.label_names == ["negative", "positive"]
    assert (len(task.train), len(task.dev), len(task.test)) == sizes
    for split in task.splits.values():
        assert set(split.labels.tolist()) == {0, 1}
        assert all(e.text_a and e.text_a == e.text_a.strip() for e in split)


def test_vader_lexicon_path(vader_corpora):
    path = vader.vader_lexicon_path()
    assert path.name == "vader_sentiment_lexicon.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7517 and all(len(line.split("\t")) == 4 for line in lines)
    assert any(line.startswith(":-\u00de\t") for line in lines)


def test_builtin_rejects_column_arguments(vader_corpora):
    with pytest.raises(AutoPromptError, match="built-in"):
        load_task("mr", text_a="x")


# -- corpus download / extraction (no network) -------------------------------------------------------
def _fake_sdist(path: Path, files: dict[str, bytes]) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(vader.INNER_ARCHIVE)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return path


def test_corpus_extraction_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    files = {name: b"1\t1.0\tgood\r\n2\t-1.0\tbad\r\n" for name in [*vader.CORPUS_FILES.values(), vader.LEXICON_FILE]}
    bad = _fake_sdist(tmp_path / "bad.tar.gz", {k: v for k, v in files.items() if k != vader.LEXICON_FILE})
    monkeypatch.setenv(vader.SDIST_ENV, str(bad))
    with pytest.raises(AutoPromptError, match="lacks"):
        vader.corpus_dir()
    root = tmp_path / "cache" / "data" / "vader"
    assert os.listdir(root) == []  # nothing half-written

    monkeypatch.setenv(vader.SDIST_ENV, str(_fake_sdist(tmp_path / "good.tar.gz", files)))
    folder = vader.corpus_dir()
    assert folder == root / "hutto_ICWSM_2014" and os.listdir(root) == ["hutto_ICWSM_2014"]
    assert sorted(os.listdir(folder)) == sorted(files)
    with pytest.raises(AutoPromptError, match="rows, expected"):
        vader._parse_rows(folder / vader.CORPUS_FILES["tweets"], vader.EXPECTED_ROWS["tweets"])

    monkeypatch.setenv(vader.SDIST_ENV, str(tmp_path / "absent.tar.gz"))
    assert vader.corpus_dir() == folder  # cached: the source is not consulted again


def test_download_failure_explains_manual_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(vader.SDIST_ENV, raising=False)
    seen = []

    def failing_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: network is unreachable\n")

    monkeypatch.setattr(vader.subprocess, "run", failing_run)
    with pytest.raises(AutoPromptError, match="pip download --no-deps --no-binary :all: vaderSentiment==3.3.2") as info:
        vader.corpus_dir()
    assert "network is unreachable" in str(info.value) and vader.SDIST_ENV in str(info.value)
    assert seen[0][1:4] == ["-m", "pip", "download"]
    assert os.listdir(tmp_path / "cache" / "data" / "vader") == []
