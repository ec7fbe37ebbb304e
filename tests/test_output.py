"""Progress and output: bars on stderr (off with --quiet / progress=False), the same rounding in
JSONL and CSV, a line index for plain-text input, normal file permissions, the .gitignore, and
scikit-learn's metrics giving the numbers of the kit's former hand-written ones."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from autoprompt_kit import Harness, Prompt, Template, Verbalizer
from autoprompt_kit.artifact import PROBABILITY_DECIMALS, model_reference
from autoprompt_kit.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORDS = {"negative": ["bad"], "positive": ["good"]}


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory) -> Path:
    harness = Harness(tiny_model_dir, progress=False)
    prompt = Prompt([Template("{text_a} It was {mask}.")], Verbalizer.from_words(WORDS),
                    label_names=["negative", "positive"], model=model_reference(tiny_model_dir, harness))
    return prompt.save_pretrained(tmp_path_factory.mktemp("out") / "best.prompt")


def _texts(path: Path, n: int) -> Path:
    path.write_text("".join(f"text number {i} was good\n" + ("\n" if i % 3 == 0 else "") for i in range(n)))
    return path


def test_predict_jsonl_and_csv_round_alike_and_index_lines(saved, tmp_path, capsys):
    texts = _texts(tmp_path / "in.txt", 7)
    assert main(["predict", "--prompt", str(saved), "--input", str(texts), "--quiet"]) == 0  # to stdout
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no bar, no summary
    rows = [json.loads(x) for x in captured.out.splitlines()]
    # Line numbers of the input file (blank lines skipped), so results join back.
    assert [r["line"] for r in rows] == [1, 3, 4, 5, 7, 8, 9]
    assert main(["predict", "--prompt", str(saved), "--input", str(texts), "--format", "csv", "--quiet",
                 "--out", str(tmp_path / "o.csv")]) == 0
    table = list(csv.DictReader((tmp_path / "o.csv").open()))
    assert list(table[0]) == ["line", "text", "label", "p_negative", "p_positive"]
    for row, record in zip(table, rows):
        assert int(row["line"]) == record["line"] and row["label"] == record["label"]
        for name, p in record["probabilities"].items():
            # The same number: 6 decimals in both (JSON drops trailing zeros, CSV keeps them).
            assert p == round(p, PROBABILITY_DECIMALS) and float(row[f"p_{name}"]) == p
            assert len(row[f"p_{name}"].split(".")[1]) == PROBABILITY_DECIMALS
    # A CSV with an id column keeps its id and gets no line field.
    (tmp_path / "ids.csv").write_text("id,text\na7,fine\nb9,bad\n")
    assert main(["predict", "--prompt", str(saved), "--input", str(tmp_path / "ids.csv"), "--quiet"]) == 0
    assert [list(json.loads(x))[:2] for x in capsys.readouterr().out.splitlines()] == [["id", "text"]] * 2


def test_predict_shows_a_bar_and_a_summary_on_stderr_also_to_stdout(saved, tmp_path, capsys):
    texts = _texts(tmp_path / "in.txt", 40)
    assert main(["predict", "--prompt", str(saved), "--input", str(texts), "--chunk-size", "8"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 40  # stdout holds only the rows
    assert "predict" in captured.err and "/40" in captured.err  # the bar knows the total: a time estimate
    assert captured.err.rstrip().splitlines()[-1].startswith("predicted 40 texts in ") and "-> stdout" in captured.err


def test_prompt_evaluate_and_predict_show_a_bar_when_asked(saved, capsys):
    prompt = Prompt.load(saved)
    harness = prompt.harness(batch_size=1)


    def texts(run: int) -> list[str]:  # 40 texts in batches of one (a long operation), new ones each run (no cache)
        return [f"{i + 100 * run} was bad" for i in range(40)]

    prompt.predict(texts(0))
    assert "scoring" not in capsys.readouterr().err  # the prompt's own model: quiet by default
    prompt.predict(texts(1), progress=True)
    assert "scoring" in capsys.readouterr().err
    assert harness.progress is False  # put back
    harness.progress = True
    prompt.predict(texts(2), progress=False)
    assert "scoring" not in capsys.readouterr().err


def test_results_are_written_0644_and_folders_0755(saved, tmp_path):
    from autoprompt_kit.io import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "best.json", {"a": 1})
        folder = Prompt.load(saved).save_pretrained(tmp_path / "best.prompt")
        texts = _texts(tmp_path / "in.txt", 2)
        assert main(["predict", "--prompt", str(folder), "--input", str(texts), "--quiet",
                     "--out", str(tmp_path / "o.jsonl")]) == 0
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "best.json") == 0o644 and mode(tmp_path / "o.jsonl") == 0o644
    assert mode(folder) == 0o755
    assert {p.name: mode(p) for p in folder.iterdir()} == {"prompt.json": 0o644, "README.md": 0o644}


def test_gitignore_lists_every_default_output():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for entry in ("best.json", "best.prompt/", "runs/"):
        assert entry in ignored


def _old_classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[float, float]:
    """The hand-written implementation scikit-learn replaced (kept here as the reference)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan"), float("nan")
    y, p = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    acc = float((y == p).mean())
    tp = np.bincount(y[y == p], minlength=num_classes)[:num_classes]
    true = np.bincount(y, minlength=num_classes)[:num_classes]
    pred = np.bincount(p, minlength=num_classes)[:num_classes]
    denominator = true + pred
    present = denominator > 0
    f1 = 2 * tp[present] / denominator[present]
    return acc, float(f1.mean()) if present.any() else 0.0


def test_sklearn_metrics_give_the_former_numbers():
    from autoprompt_kit.harness import classification_metrics

    rng = np.random.default_rng(0)
    for trial in range(300):
        classes = int(rng.integers(2, 11))
        n = int(rng.integers(1, 60))
        y = rng.integers(-1, classes, n)  # -1: unlabelled, left out
        y[0] = max(y[0], 0)
        if trial % 3 == 0:  # skewed: some classes absent from the labels or the predictions
            p = np.minimum(rng.integers(0, classes, n), int(rng.integers(0, classes)))
        else:
            p = rng.integers(0, classes, n)
        assert classification_metrics(y, p, classes) == pytest.approx(_old_classification_metrics(y, p, classes),
                                                                      abs=1e-12)
    assert all(np.isnan(classification_metrics(np.array([-1, -1]), np.array([0, 1]), 2)))


def test_search_trial_lines_show_elapsed_and_remaining_time(tiny_model_dir, tmp_path, capsys):
    import re

    from autoprompt_kit import find_prompt, task_from_examples

    texts = [f"{w} film number {i}" for i, w in enumerate(["a good", "a bad"] * 10)]
    task = task_from_examples(texts, ["positive", "negative"] * 10, shots=3)
    space = {"templates": ["{text_a} It was {mask}.", "{text_a} All in all, {mask}."], "label_words": [WORDS]}
    find_prompt("select", task, space, harness=Harness(tiny_model_dir, progress=False), trials=2,
                storage=f"sqlite:///{tmp_path / 's.db'}", test_split=None, progress=True)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[trial")]
    assert len(lines) == 2
    assert re.search(r"\[\d+:\d\d, ~\d+:\d\d left\]", lines[0]) and "~0:00 left]" in lines[1]
