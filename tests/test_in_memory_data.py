"""In-memory data (texts and labels, a pandas DataFrame, a datasets object) follows the file rules.

Each in-memory form is compared with the same rows written to a CSV file: the same classes, the
same splits example by example (fingerprints), the same few-shot draws and the same errors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from autoprompt_kit import AutoPromptError, Task, load_task, task_from_examples

LABELS = ["neg", "pos", "neutral"]


def _rows(n: int = 60) -> tuple[list[str], list[str]]:
    texts = [f"review number {i} says {'good' if i % 3 else 'bad'} things" for i in range(n)]
    return texts, [LABELS[i % 3] for i in range(n)]


def _csv(path: Path, columns: dict[str, list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))
    return path


def _same(a: Task, b: Task) -> None:
    assert a.label_names == b.label_names
    assert set(a.splits) == set(b.splits)
    for key in a.splits:
        assert a[key].fingerprint == b[key].fingerprint, key


@pytest.mark.parametrize("options", [{}, {"shots": 4, "seed": 7}, {"shots": 3, "dev_shots": 2, "max_examples": 5}])
def test_from_examples_is_the_same_task_as_a_csv_file(tmp_path, options):
    texts, labels = _rows()
    # text_a: a column named "text" would also be a {text} alias field (meta), which from_examples has not
    from_file = load_task(str(_csv(tmp_path / "d.csv", {"text_a": texts, "label": labels})), **options)
    task = task_from_examples(texts, labels, **options)
    _same(task, from_file)
    assert task.name == "examples" and task.label_names == ["neg", "neutral", "pos"]  # sorted, as in a file
    if "shots" in options and "max_examples" not in options:  # max_examples caps the K-shot splits too
        assert np.bincount(task.train.labels).tolist() == [options["shots"]] * 3
    # Ordered class names; int labels index them (numpy arrays, as scikit-learn users hold them).
    ordered = task_from_examples(np.array(texts), np.array([LABELS.index(y) for y in labels]),
                                 label_names=LABELS, name="mine", **options)
    assert ordered.name == "mine" and ordered.label_names == LABELS
    _same(ordered, load_task(str(tmp_path / "d.csv"), label_names=LABELS, **options))


def test_from_examples_with_pairs(tmp_path):
    texts, labels = _rows(40)
    second = [f"hypothesis {i}" for i in range(40)]
    task = task_from_examples(texts, labels, text_b=second, shots=2)
    assert all(ex.text_b is not None for ex in task.train)
    _same(task, load_task(str(_csv(tmp_path / "p.csv", {"text_a": texts, "text_b": second, "label": labels})), shots=2))


@pytest.mark.parametrize(("texts", "labels", "kwargs", "message"), [
    (["a", "b"], ["x"], {}, r"columns have different lengths \{'text_a': 2, 'label': 1\}"),
    (["a", "", "c"], ["x", "y", "x"], {}, r"examples row 2: text_a \(column 'text_a'\) is empty"),
    (["a", 5, "c"], ["x", "y", "x"], {}, r"examples row 2: text_a \(column 'text_a'\) is not a string \(5\)"),
    (["a", "b", "c"], ["x", "z", "x"], {"label_names": ["x", "y"]}, r"labels \['z'\] are not among label_names"),
    ([f"t{i}" for i in range(30)], ["x", "y"] * 15, {"shots": 20},
     r"cannot sample 20 examples per class from the train split: class 0 \('x'\) has only"),
    ("one text", ["x"], {}, "not a single string"),
])
def test_from_examples_errors_are_the_file_errors(texts, labels, kwargs, message):
    with pytest.raises(AutoPromptError, match=message):
        task_from_examples(texts, labels, **kwargs)


def test_a_pandas_dataframe_is_read_like_its_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    texts, labels = _rows()
    frame = pd.DataFrame({"sentence": texts, "target": labels, "source": ["web"] * len(texts)})
    path = _csv(tmp_path / "f.csv", {"sentence": texts, "target": labels, "source": ["web"] * len(texts)})
    for options in ({}, {"shots": 4}):
        task = load_task(frame, **options)
        _same(task, load_task(str(path), **options))
        assert task.name == "dataframe" and task.train[0].meta["source"] == "web"
    # A row whose label is missing (None/NaN in a frame, an empty cell in a CSV) is an error in both.
    labels[5] = None
    holed = pd.DataFrame({"sentence": texts, "target": labels, "source": ["web"] * len(texts)})
    _csv(path, {"sentence": texts, "target": ["" if y is None else y for y in labels], "source": ["web"] * len(texts)})
    for data, where in ((holed, "dataframe"), (str(path), "f.csv")):
        with pytest.raises(AutoPromptError, match=f"{where}.* row 6: the label .* is (empty|NaN)"):
            load_task(data)
    with pytest.raises(AutoPromptError, match=r"dataframe: no label column among \['sentence', 'source'\]"):
        load_task(frame.drop(columns=["target"]))


def test_datasets_objects_keep_their_splits_and_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts, labels = _rows(90)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    ids = [LABELS.index(y) for y in labels]
    whole = datasets.Dataset.from_dict({"text": texts, "label": ids}, features=features)
    task = load_task(whole, shots=4)
    assert task.label_names == LABELS  # ClassLabel order, not sorted
    _same(task, load_task(str(_csv(tmp_path / "d.csv", {"text": texts, "label": ids})), label_names=LABELS, shots=4))
    parts = datasets.DatasetDict({"train": whole.select(range(60)), "validation": whole.select(range(60, 75)),
                                  "test": whole.select(range(75, 90))})
    split_task = load_task(parts, task_name="three-way")
    assert split_task.name == "three-way"
    assert [len(split_task[k]) for k in ("train", "dev", "test")] == [60, 15, 15]
    assert split_task.test[0].text_a == texts[75]
    with pytest.raises(AutoPromptError, match="hf_config applies to a dataset loaded by name"):
        load_task(parts, hf_config="x")
    with pytest.raises(AutoPromptError, match="load_task takes a task name or path, a pandas DataFrame"):
        load_task([("a", 1)])
