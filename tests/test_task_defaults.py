"""Default search spaces read off the task: label words from class names, templates by input shape,
for every method, from the CLI (`space`, and `search` without `--space`) on a 5-class topic task."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_cli as cli

from autoprompt_kit import AutoPromptError, load_task
from autoprompt_kit.prompts.defaults import PAIR_TEMPLATES, SINGLE_TEMPLATES, label_words, task_label_words
from autoprompt_kit.search import REGISTRY, get_searcher

TOPICS = {"sci_tech": "the new chip and the telescope data", "World": "the election and the summit abroad",
          "Business": "stocks fell and the company merged", "Sports": "the team won the final match",
          "not_spam": "see you at lunch tomorrow"}


def _write_splits(folder, rows_for) -> str:
    folder.mkdir()
    for split, n in (("train", 8), ("dev", 4), ("test", 3)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for(split, n)))
    return str(folder)


@pytest.fixture()
def topic_file(tmp_path):
    return _write_splits(tmp_path / "topics", lambda split, n: [
        {"text": f"{text} {split} {i}", "label": label} for label, text in TOPICS.items() for i in range(n)])


@pytest.fixture()
def pair_file(tmp_path):
    return _write_splits(tmp_path / "pairs", lambda split, n: [
        {"premise": f"a man is cooking {split} {i}", "hypothesis": f"a person makes food {i}", "label": lab}
        for i in range(n) for lab in ("entailment", "not_entailment")])


def test_label_words_from_class_names():
    assert label_words("sci_tech") == ["science", "technology"]
    assert label_words("World") == ["world"] and label_words("SciTech") == ["science", "technology"]
    assert label_words("not_spam") == ["not spam"] and label_words("men-women") == ["men", "women"]
    assert label_words("comp.sys.mac.hardware") == ["computers", "systems", "mac", "hardware"]
    assert task_label_words(["comp.graphics", "comp.windows.x"]) == {"comp.graphics": ["graphics"],
                                                                       "comp.windows.x": ["windows", "x"]}
    with pytest.raises(AutoPromptError, match="no word a model can read"):
        label_words("0")
    with pytest.raises(AutoPromptError, match="read as the same words"):
        task_label_words(["comp", "computers"])


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_builds_a_valid_space_from_a_multiclass_task(method, topic_file, pair_file):
    for path, templates in ((topic_file, SINGLE_TEMPLATES), (pair_file, PAIR_TEMPLATES)):
        task = load_task(path, shots=2, seed=13)
        config = get_searcher(method).config_class.for_task(task)
        config.check_task(task)  # templates read the task's fields, words cover its classes in order
        values = config.to_dict()
        words = next(v for k, v in values.items() if k in ("label_words", "seed_words"))
        words = words[0] if isinstance(words, list) else words
        assert list(words) == task.label_names
        texts = [v for k, v in values.items() if k in ("template", "templates")]
        flat = [t for v in texts for t in (v if isinstance(v, list) else [v])]
        assert flat and all(("{text_b}" in t) == (templates is PAIR_TEMPLATES) for t in flat), flat
        reloaded = get_searcher(method).config_class.from_dict(yaml.safe_load(config.to_yaml()))
        assert reloaded.to_dict() == values  # the YAML `space` writes is the same space


def test_space_command_then_search_without_a_space(topic_file, tiny_model_dir, tmp_path):
    out = tmp_path / "space.yaml"
    proc = cli("space", "select", "--task", str(topic_file), "--shots", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("# select search space for task topics (5 classes") and "science" in text
    storage = f"sqlite:///{tmp_path / 's.db'}"
    best = tmp_path / "best.json"
    proc = cli("search", "select", "--task", str(topic_file), "--model", tiny_model_dir, "--storage", storage,
               "--shots", "2", "--trials", "3", "--out", str(best))
    assert proc.returncode == 0, proc.stderr
    assert "space    built from the task" in proc.stdout and "Category: {mask}" in proc.stdout
    doc = json.loads(best.read_text())
    assert doc["config"]["templates"] == list(SINGLE_TEMPLATES) and len(doc["task"]["label_names"]) == 5
    assert doc["config"] == yaml.safe_load(text)  # what ran is what `space` wrote
    texts = tmp_path / "new.txt"
    texts.write_text("the striker scored twice\nshares rose sharply\n")
    proc = cli("predict", "--prompt", str(best), "--input", str(texts))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(set(r["probabilities"]) == set(TOPICS) for r in rows)


def test_numeric_class_names_need_words(tmp_path, tiny_model_dir):
    path = tmp_path / "num.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 3}) + "\n" for i in range(600)))
    proc = cli("search", "protoverb", "--task", str(path), "--model", tiny_model_dir, "--shots", "4",
               "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert proc.returncode == 2 and "has no word a model can read" in proc.stderr and "Traceback" not in proc.stderr
