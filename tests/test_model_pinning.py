"""Model pinning: a saved prompt records what its model is, and loading that model checks it.

A local folder whose weights change, and a GGUF file that changes (checked before its conversion,
so a fake file is enough), are one error line — or a warning with ``--allow-model-mismatch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from autoprompt_kit import AutoPromptError, Harness, Prompt, Template, Verbalizer
from autoprompt_kit.artifact import model_mismatch, model_reference
from autoprompt_kit.cli import main

WORDS = {"negative": ["bad"], "positive": ["good"]}
TEXTS = ["a bad film", "great fun", "the plot was boring"]


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    """A private copy of the tiny GPT-2 folder (this test changes its weights)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _prompt(name: str, harness: Harness) -> Prompt:
    return Prompt([Template("{text_a} It was {mask}.")], Verbalizer.from_words(WORDS),
                  label_names=["negative", "positive"], model=model_reference(name, harness))


def _change_weights(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # tied to the input embeddings: every score moves
    model.save_pretrained(folder)


def test_a_prompt_on_a_changed_model_folder_fails_with_one_line(model_dir, tmp_path, capsys, caplog):
    prompt = _prompt(str(model_dir), Harness(str(model_dir), progress=False))
    pin = prompt.model["sha256"]
    assert len(pin) == 64 and prompt.model["name"] == str(model_dir.resolve())
    folder = prompt.save_pretrained(tmp_path / "p")
    assert Prompt.load(folder).model["sha256"] == pin
    before = Prompt.load(folder).predict(TEXTS)  # same weights: loads and predicts

    _change_weights(model_dir)
    with pytest.raises(AutoPromptError, match=r"has sha256 [0-9a-f]{12}…, but the prompt was found with .* at sha256 "
                                              rf"{pin[:12]}… \(a changed or different model\); pass --allow-model-mismatch"):
        Prompt.load(folder).predict(TEXTS)
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    capsys.readouterr()
    for argv in (["predict", "--prompt", str(folder), "--input", str(texts), "--quiet"],
                 ["evaluate", "--prompt", str(folder), "--task", "mr", "--max-examples", "4", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: model ") and "sha256" in err and err.count("\n") == 1, err

    # Allowed: a warning, and the changed model is used.
    with caplog.at_level(logging.WARNING, logger="autoprompt_kit.artifact"):
        after = Prompt.load(folder, allow_model_mismatch=True).predict(TEXTS)
    assert any("using it anyway" in r.getMessage() for r in caplog.records)
    assert not (after.probabilities == before.probabilities).all()
    assert main(["predict", "--prompt", str(folder), "--input", str(texts), "--out", str(tmp_path / "o.jsonl"),
                 "--quiet", "--allow-model-mismatch"]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == len(TEXTS)


def test_a_prompt_on_a_changed_gguf_file_fails_before_converting_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))  # the sha256 memo goes here
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    fake = SimpleNamespace(kind="causal", precision="fp32", model=SimpleNamespace(config=SimpleNamespace()))
    ref = model_reference(str(gguf), fake)
    assert ref == {"name": str(gguf.resolve()), "kind": "causal", "precision": "fp32",
                   "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}
    prompt = Prompt([Template("{text_a} It was {mask}.")], Verbalizer.from_words(WORDS),
                    label_names=["negative", "positive"], model=ref)
    folder = prompt.save_pretrained(tmp_path / "p")

    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 65)  # another file under the same name
    with pytest.raises(AutoPromptError, match=r"^model .*model\.gguf has sha256 .* \(a changed or different model\)"):
        Prompt.load(folder).harness()
    texts = tmp_path / "t.txt"
    texts.write_text("a bad film\n")
    assert main(["predict", "--prompt", str(folder), "--input", str(texts)]) == 2  # no bar before the error
    err = capsys.readouterr().err
    assert err.startswith(f"error: model {gguf.resolve()} has sha256 ") and err.count("\n") == 1, err
    # Allowed, the check passes and the (fake) file itself is what fails to load — no conversion before.
    with pytest.raises(AutoPromptError, match="could not be read as a GGUF model|needs the"):
        Prompt.load(folder, allow_model_mismatch=True).harness()


def test_pins_are_compared_only_where_both_sides_know_them():
    saved = {"name": "org/model", "kind": "mlm", "revision": "a" * 40}
    assert model_mismatch(saved, "org/model", {"revision": "a" * 40}) is None
    assert "has revision bbbbbbbbbbbb…" in model_mismatch(saved, "org/model", {"revision": "b" * 40})
    assert model_mismatch(saved, "org/model", {}) is None  # a hub name before it loads: checked after
    assert model_mismatch({"name": "old", "kind": "mlm"}, "x", {"sha256": "c" * 64}) is None  # saved before pinning
    assert "pinned by sha256" in model_mismatch(saved, "/data/model", {"sha256": "c" * 64})
    assert model_mismatch({"package": "p==1"}, "gemma-3-270m", {"package": "p==2"}).startswith("model gemma-3-270m has package p==2")


def test_a_search_records_a_relative_model_folder_by_absolute_path_and_pin(model_dir, tmp_path, monkeypatch):
    import yaml

    from autoprompt_kit import find_prompt, task_from_examples

    monkeypatch.chdir(tmp_path)
    texts = [f"{w} film number {i}" for i, w in enumerate(["a good", "a bad"] * 10)]
    task = task_from_examples(texts, ["positive", "negative"] * 10, shots=3)
    space = {"templates": ["{text_a} It was {mask}."], "label_words": [WORDS]}
    found = find_prompt("select", task, space, harness=Harness("model", progress=False), trials=1,
                        storage="sqlite:///runs/s.db", test_split=None).prompt
    assert found.model["name"] == str(model_dir.resolve()) and len(found.model["sha256"]) == 64
    card = (found.save_pretrained("p") / "README.md").read_text()
    assert "base_model" not in yaml.safe_load(card.split("\n---\n")[0][len("---\n"):])  # local, not a Hub id
    monkeypatch.chdir(model_dir.parent.parent)  # elsewhere: the absolute path still loads
    assert Prompt.load(tmp_path / "p").predict(TEXTS).labels


def test_a_moved_model_folder_is_found_by_model_and_its_pin(model_dir, tmp_path, capsys):
    prompt = _prompt(str(model_dir), Harness(str(model_dir), progress=False))
    folder = prompt.save_pretrained(tmp_path / "p")
    moved = tmp_path / "elsewhere"
    model_dir.rename(moved)
    texts = tmp_path / "t.txt"
    texts.write_text("a bad film\n")
    assert main(["predict", "--prompt", str(folder), "--input", str(texts), "--quiet"]) == 2  # the old place is gone
    capsys.readouterr()
    assert main(["predict", "--prompt", str(folder), "--input", str(texts), "--quiet", "--model", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["line"] == 1
    shutil.copytree(moved, tmp_path / "changed")
    _change_weights(tmp_path / "changed")
    assert main(["predict", "--prompt", str(folder), "--input", str(texts), "--model", str(tmp_path / "changed")]) == 2
    assert "sha256" in capsys.readouterr().err
