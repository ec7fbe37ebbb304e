"""Hub conventions for a found prompt: save_pretrained → from_pretrained → push_to_hub, offline.

No network here: the upload is caught at ``HfApi.upload_folder`` and the download returns a folder
laid out as the Hub cache lays out a snapshot (``models--user--name/snapshots/<commit>/`` with
links into ``blobs/``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoprompt_kit import AutoPromptError, Harness, Prompt, Template, Verbalizer
from autoprompt_kit.artifact import model_reference
from autoprompt_kit.methods.lmbff import FineTunedWeights
from autoprompt_kit.cli import main

WORDS = {"negative": ["bad", "awful"], "positive": ["good"]}
TEXTS = ["the film was terrible and the plot was boring", "brilliant , moving and funny", "a bad film", "great fun"]
REPO = "someone/mr-prompt"


@pytest.fixture(scope="module")
def harness(tiny_model_dir):
    return Harness(tiny_model_dir, progress=False)


@pytest.fixture(scope="module")
def prompt(harness, tiny_model_dir):
    """A two-template ensemble with fine-tuned weights (so tensors travel too) and recorded scores."""
    found = Prompt([Template("{text_a} It was {mask}."), Template("{text_a} All in all, {mask}.")],
                   Verbalizer.from_words(WORDS, calibration="content_free"), ensemble="dev", weights=[0.6, 0.4],
                   label_names=["negative", "positive"], model=model_reference(tiny_model_dir, harness),
                   provenance={"method": "select", "task": {"name": "mr", "label_names": ["negative", "positive"]},
                               "metrics": {"dev": {"accuracy": 0.75, "macro_f1": 0.7333, "n": 32},
                                           "test": {"accuracy": 0.7119, "macro_f1": 0.6991, "n": 2121}}})
    return found.with_state(FineTunedWeights.of(harness.model))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_pretrained_writes_the_prompt_folder_and_a_model_card(prompt, tmp_path):
    folder = prompt.save_pretrained(tmp_path / "p")
    assert sorted(_files(folder)) == ["README.md", "model.safetensors", "prompt.json"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("\n---\n")[0][len("---\n"):])
    assert front["model-index"][0]["results"][0]["metrics"][-1]["config"] == "macro"  # the block ends cleanly
    assert front["library_name"] == "autoprompt-kit"
    assert {"autoprompt-kit", "prompt", "select"} <= set(front["tags"])
    assert "base_model" not in front  # a local folder is no Hub id
    assert front["metrics"] == ["accuracy", "f1"]
    results = front["model-index"][0]["results"]
    scores = {(r["dataset"]["split"], m["type"], m["value"]) for r in results for m in r["metrics"]}
    assert scores == {("dev", "accuracy", 0.75), ("dev", "f1", 0.7333), ("test", "accuracy", 0.7119),
                      ("test", "f1", 0.6991)}
    for text in ("`{text_a} It was {mask}.` (weight 0.600)", "| negative | bad, awful |", "content_free",
                 "Demonstrations: none.", "fine-tuned backbone weights", "| test | 0.7119 | 0.6991 | 2121 |",
                 'Prompt.from_pretrained("path/to/this/folder")', f"sha256 `{prompt.model['sha256']}`"):
        assert text in card, text
    # The same prompt writes the same card (no clock in it): uploads and diffs stay quiet.
    assert prompt.save_pretrained(tmp_path / "q").joinpath("README.md").read_text() == card


def test_card_names_the_hub_base_model_for_hub_and_default_models(prompt):
    from autoprompt_kit.hub import model_card

    for name, base in (("roberta-large", "roberta-large"), ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
                       ("gemma-3-270m", "google/gemma-3-270m"), ("/abs/model.gguf", None)):
        prompt_on = Prompt.from_dict({**prompt.to_dict(), "model": {"name": name, "kind": "mlm"}, "model_weights": None})
        front = yaml.safe_load(model_card(prompt_on).split("\n---\n")[0][len("---\n"):])
        assert front.get("base_model") == base, name


def test_push_to_hub_uploads_exactly_what_save_pretrained_writes(prompt, tmp_path, monkeypatch):
    import huggingface_hub

    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
        calls["upload"] = (repo_id, commit_message, kwargs, _files(Path(folder_path)))
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert prompt.push_to_hub(REPO, private=True) == "commit-info"
    assert calls["create"] == (REPO, {"private": True, "exist_ok": True})
    repo_id, message, kwargs, uploaded = calls["upload"]
    assert repo_id == REPO and message == "Upload prompt with autoprompt-kit"
    assert kwargs == {"revision": None, "create_pr": False}
    assert uploaded == _files(prompt.save_pretrained(tmp_path / "local", repo_id=REPO))
    assert f'Prompt.from_pretrained("{REPO}")' in uploaded["README.md"].decode()


def test_push_to_hub_failure_is_one_error_line(prompt, monkeypatch):
    import huggingface_hub

    def create_repo(self, repo_id, **kwargs):
        raise OSError("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    with pytest.raises(AutoPromptError, match=r"^cannot push the prompt to someone/mr-prompt \(OSError: no network\)$"):
        prompt.push_to_hub(REPO)


def _hub_cache_snapshot(source: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """``source``'s files laid out as huggingface_hub caches a snapshot: links from snapshots/ into blobs/."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in _files(source).items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_from_pretrained_a_local_folder_and_a_hub_snapshot_predicts_identically(prompt, harness, tmp_path, monkeypatch):
    import huggingface_hub

    want = prompt.predict(TEXTS, harness)
    folder = prompt.save_pretrained(tmp_path / "saved")
    local = Prompt.from_pretrained(folder)
    assert local.to_dict() == prompt.to_dict()
    got = local.predict(TEXTS)  # its own model, loaded from the pinned folder
    assert got.labels == want.labels
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _hub_cache_snapshot(folder, tmp_path / "hub", REPO, commit)
    asked = {}

    def snapshot_download(repo_id, **kwargs):
        asked.update(repo_id=repo_id, **kwargs)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub = Prompt.from_pretrained(REPO, revision="v1", harness=harness)
    assert asked["repo_id"] == REPO and asked["revision"] == "v1" and asked["library_name"] == "autoprompt-kit"
    assert hub.to_dict() == prompt.to_dict()
    assert hub.predict(TEXTS).labels == want.labels
    # The CLI takes a repo id wherever it takes a prompt.
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    assert main(["predict", "--prompt", REPO, "--input", str(texts), "--out", str(tmp_path / "o.jsonl"), "--quiet"]) == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == len(TEXTS)


def test_from_pretrained_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def snapshot_download(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not cached\ndetails")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(AutoPromptError, match=r"^cannot download the prompt someone/mr-prompt@v2 from the Hub "
                                              r"\(LocalEntryNotFoundError: offline and not cached\); no local folder "
                                              r"or file 'someone/mr-prompt' exists either$"):
        Prompt.from_pretrained(REPO, revision="v2")
    with pytest.raises(AutoPromptError, match="applies to a Hub repo"):
        Prompt.from_pretrained(tmp_path, revision="v2")
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert main(["predict", "--prompt", REPO, "--input", str(texts)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download the prompt someone/mr-prompt") and err.count("\n") == 1
    # A missing local file is still "does not exist", not a Hub lookup.
    assert main(["predict", "--prompt", str(tmp_path / "best.json"), "--input", str(texts)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_card_shortens_long_word_lists(prompt):
    from autoprompt_kit.hub import model_card

    words = {"negative": [f"w{i}" for i in range(30)], "positive": ["good"]}
    many = Prompt([Template("{text_a} It was {mask}.")], Verbalizer.from_words(words),
                  label_names=["negative", "positive"], model=prompt.model)
    card = model_card(many)
    assert "| negative | w0, w1," in card and "w19, … (30 words) |" in card and "w20" not in card


def test_confinement_allows_a_hub_snapshot_s_blobs_and_nothing_else(tmp_path):
    from autoprompt_kit.artifact import confined

    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    folder = tmp_path / "prompt"
    folder.mkdir()
    (folder / "head.safetensors").symlink_to(outside)
    with pytest.raises(AutoPromptError, match="leads outside"):
        confined(folder, "head.safetensors", "head file")
    repo = tmp_path / "models--me--p"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("tensors")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "head.safetensors").symlink_to("../../blobs/abc")
    assert confined(snap, "head.safetensors", "head file") == (repo / "blobs" / "abc").resolve()
    (snap / "other.safetensors").symlink_to(outside)
    with pytest.raises(AutoPromptError, match="leads outside"):
        confined(snap, "other.safetensors", "head file")
