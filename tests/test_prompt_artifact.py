"""The found prompt as an artifact: save → load in a fresh process → the same dev predictions, for every method.

Contract: for each method, a search on a tiny model ends in best.json + best.prompt/; a new Python
process loads it (``Prompt.load``), scores the dev split and gets exactly the predictions the best
trial reported, example by example; ``autoprompt-kit predict`` on the dev texts gives the same labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jsonschema
import numpy as np
import pytest
import torch
from conftest import run_cli

from autoprompt_kit import AutoPromptError, Example, Harness, Prompt, Split, Template, Verbalizer, load_task
from autoprompt_kit.artifact import STATES, read_tensors, save_tensors
from autoprompt_kit.search import SearchContext, SearchJob, best_trial, finish_search, get_searcher, run_search

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "autoprompt_kit" / "schemas" / "best.schema.json").read_text())
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
WORDS = {"negative": ["bad"], "positive": ["good"]}
TEMPLATE = "{text_a} It was {mask}."
SHOTS, MAX = 4, 60

FRESH = """
import json, sys
from autoprompt_kit import Prompt, load_task
prompt = Prompt.load(sys.argv[1])
info = prompt.provenance["task"]
task = load_task(info["name"], shots=info["shots"], seed=info["seed"], max_examples=info["max_examples"])
result = prompt.evaluate(task.dev)
print(json.dumps({"predictions": result.predictions.tolist(), "fingerprint": task.dev.fingerprint,
                  "accuracy": result.accuracy}))
"""


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, tiny_models):
    """The tiny Gemma 3 (q_proj/v_proj/norms like the real default) as a folder a fresh process can load."""
    path = tmp_path_factory.mktemp("tiny-gemma3")
    model, tok, _ = tiny_models["gemma3"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gemma_long_dir(gemma_dir, tmp_path_factory):
    """The same tiny Gemma with room for 512 tokens (rotary positions: only the config changes), so
    MR reviews in its tiny tokenizer fit with demonstrations in front of them."""
    import shutil

    path = tmp_path_factory.mktemp("tiny-gemma3-long") / "model"
    shutil.copytree(gemma_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return str(path)


def _configs(tmp_path: Path) -> dict[str, dict]:
    kb = tmp_path / "kb.tsv"
    kb.write_text("bad\tawful,boring\ngood\tgreat,fun\n")
    return {
        "select": dict(templates=[TEMPLATE, "{text_a} All in all, it was {mask}."], label_words=[WORDS],
                       calibration=["none", "content_free"], ensembles=["uniform"]),
        "autoprompt": dict(template="{text_a} {trigger*2} {mask}.", label_words=WORDS, num_triggers=[2],
                           num_candidates=[3], iterations=2, batch_size=4, init_token=["the"]),
        "lmbff": dict(template=TEMPLATE, label_words=WORDS, beam=3, max_span_tokens=2, keep_generated=3, top_n=2,
                      calibration=["none"], finetune_epochs=1, finetune_batch_size=4),
        "lmbff-full": dict(template=TEMPLATE, label_words=WORDS, generate_templates=False, search_label_words=True,
                           label_k=2, label_assignments=2, label_pool=50, finetune_epochs=1, finetune_parameters="full",
                           finetune_lr=1e-3, finetune_batch_size=4),
        "kpt": dict(template=TEMPLATE, seed_words=WORDS, sources=["kb"], kb_file=str(kb), max_tokens=[2],
                    prior_cut=[0.0], relevance_cut=[0.0], learn_weights=[True], epochs=2, support_size=8),
        "protoverb": dict(template=TEMPLATE, label_words=WORDS, proj_dim=[8], prototypes_per_class=[1],
                          inference=["combined", "proto"], steps=10),
        "s3delta": dict(template=TEMPLATE, label_words=WORDS, budget_percent=2.0, warmup_epochs=1, search_epochs=1,
                        epochs=1, batch_size=4),
        # Demonstrations: per input at random, per input by similarity (the real all-MiniLM-L6-v2,
        # embeddings recomputed in the fresh process), and one fixed set; calibrated, so the
        # content-free inputs carry them too.
        "demos-random": dict(template=TEMPLATE, label_words=WORDS, per_class=[1], selection=["random"],
                             order=["balanced", "shuffled"], separator=["\n"], calibration=["content_free"]),
        "demos-similar": dict(template=TEMPLATE, label_words=WORDS, per_class=[1], selection=["similar"],
                              order=["similar_last"], separator=[" "], calibration=["none", "content_free"]),
        "demos-fixed": dict(template=TEMPLATE, label_words=WORDS, per_class=[1], selection=["dev_selected"],
                            order=["balanced"], separator=[" ", "\n"], calibration=["content_free"],
                            fixed_candidates=3),
    }


def _search(method: str, gemma_dir: str, tmp_path: Path, trials: int = 2):
    name = method.split("-")[0]
    searcher = get_searcher(name)
    config = searcher.config_class(**_configs(tmp_path)[method])
    task = load_task("mr", shots=SHOTS, seed=13, max_examples=MAX)
    harness = Harness(gemma_dir, progress=False)
    job = SearchJob(searcher(config), f"contract-{method}", f"sqlite:///{tmp_path / 's.db'}", n_trials=trials, seed=13,
                    progress=False,
                    task_info={"name": "mr", "label_names": task.label_names, "shots": SHOTS, "seed": 13,
                               "max_examples": MAX, "splits": {k: len(v) for k, v in task.splits.items()}},
                    model_info={"name": gemma_dir, "kind": harness.kind})
    ctx = SearchContext(task, harness, 13)
    study = run_search(job, ctx)
    out = tmp_path / "best.json"
    return finish_search(study, job, ctx, test_split="test", out=out), task, harness, out


@pytest.mark.parametrize("method", ["select", "autoprompt", "lmbff", "lmbff-full", "kpt", "protoverb", "s3delta",
                                    "demos-random", "demos-similar", "demos-fixed"])
def test_reloaded_prompt_reproduces_the_best_trial_in_a_fresh_process(method, request, tmp_path):
    model_dir = request.getfixturevalue("gemma_long_dir" if method.startswith("demos") else "gemma_dir")
    result, task, harness, out = _search(method, model_dir, tmp_path)
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    best = best_trial(result.study)  # the kit's best: ties go to the simpler prompt, not trial order
    reported = best.user_attrs["~dev_predictions"]
    assert len(reported) == len(task.dev)
    folder = out.parent / doc["prompt"]["path"]
    assert (folder / "prompt.json").is_file()
    trained = {"lmbff": "delta", "lmbff-full": "model_weights", "protoverb": "head", "s3delta": "delta"}.get(method)
    if trained:
        assert trained in doc["prompt"]
        assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    if method == "kpt":
        assert doc["prompt"]["verbalizer"]["weights"] and doc["prompt"]["verbalizer"]["word_prior"]
    if method == "autoprompt":
        assert all(i is not None for i in doc["prompt"]["templates"][0]["trigger_ids"])
    if method.startswith("demos"):
        saved = doc["prompt"]["demonstrations"]
        assert doc["prompt"]["format_version"] == 2 and len(saved["pool"]) == len(task.train)
        assert saved["selection"] == {"random": "random", "similar": "similar", "fixed": "fixed"}[method.split("-")[1]]
        assert ("fixed" in saved) == (method == "demos-fixed") and ("encoder" in saved) == (method == "demos-similar")
        shown, _ = result.prompt.demonstrations.apply(task.dev, result.prompt.template, result.prompt.verbalizer,
                                                      harness.kind, harness.encoder)
        assert all(ex.meta["demos"] for ex in shown)  # every dev review really gets demonstrations

    fresh = subprocess.run([sys.executable, "-c", FRESH, str(out)], capture_output=True, text=True, env=ENV,
                           timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert got["fingerprint"] == task.dev.fingerprint
    assert got["predictions"] == reported  # example by example
    assert got["accuracy"] == pytest.approx(doc["metrics"]["dev"]["accuracy"])
    # The test score in best.json is the artifact's own (same evaluation path as a reloaded prompt).
    again = Prompt.load(folder).evaluate(task.test, harness)
    assert again.accuracy == pytest.approx(doc["metrics"]["test"]["accuracy"])

    texts = tmp_path / "dev.jsonl"
    texts.write_text("".join(json.dumps({"id": f"d{i}", "text": e.text_a}) + "\n" for i, e in enumerate(task.dev)))
    pred_out = tmp_path / "pred.jsonl"
    proc = run_cli("predict", "--prompt", str(out), "--input", str(texts), "--out", str(pred_out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in pred_out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(len(task.dev))]
    assert [task.label_names.index(r["label"]) for r in rows] == reported
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in rows)


def test_trained_state_of_losing_trials_is_dropped_and_the_backbone_is_restored(gemma_dir, tmp_path):
    before = [p.detach().clone() for p in Harness(gemma_dir, progress=False).model.parameters()]
    result, task, harness, out = _search("lmbff-full", gemma_dir, tmp_path)
    after = list(harness.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # every trial and the test pass restored it
    trial_dirs = sorted((tmp_path / "trials" / "contract-lmbff-full").iterdir())
    assert [d.name for d in trial_dirs] == [f"trial-{best_trial(result.study).number}"]
    # The fine-tuned weights really are what scores test: zero-shot gives another score.
    zero = harness.evaluate(task.test, result.prompt.template, result.prompt.verbalizer)
    tuned = result.prompt.evaluate(task.test, harness)
    assert not np.allclose(zero.class_logprobs, tuned.class_logprobs)


def test_predict_api_inputs_and_probabilities(tiny_models):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    prompt = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS, calibration="content_free"),
                    label_names=["negative", "positive"])
    out = prompt.predict(["a good film", "a bad film"], h)
    assert out.labels[0] in ("negative", "positive") and out.probabilities.shape == (2, 2)
    assert np.allclose(out.probabilities.sum(1), 1)
    assert np.allclose(prompt.predict_proba(["a good film", "a bad film"], h), out.probabilities)
    assert len(prompt.predict([], h)) == 0
    with pytest.raises(AutoPromptError, match="not a single string"):
        prompt.predict("a good film", h)
    pair = Prompt([Template("{text_a} ? {mask} , {text_b}")], Verbalizer.from_words(WORDS))
    assert len(pair.predict([("a", "b"), {"text_a": "c", "text_b": "d"}], h)) == 2
    with pytest.raises(AutoPromptError, match="text_b"):
        pair.predict(["no second text"], h)


def test_save_is_atomic_and_load_reports_bad_folders(tmp_path, tiny_models):
    prompt = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), label_names=["negative", "positive"],
                    model={"name": "tiny", "kind": "causal"})
    folder = prompt.save(tmp_path / "p")
    assert sorted(x.name for x in folder.iterdir()) == ["README.md", "prompt.json"]  # + the model card
    again = Prompt.load(folder)
    assert again.to_dict() == prompt.to_dict()
    prompt.save(folder)  # overwrite in place: the old folder or the new one, no temp left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p"]
    (tmp_path / "empty").mkdir()
    for path, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "without prompt.json")]:
        with pytest.raises(AutoPromptError, match=message):
            Prompt.load(path)
    future = json.loads((folder / "prompt.json").read_text()) | {"format_version": 99}
    (tmp_path / "future.json").write_text(json.dumps(future))
    with pytest.raises(AutoPromptError, match="format_version 99"):
        Prompt.load(tmp_path / "future.json")
    head = json.loads((folder / "prompt.json").read_text()) | {"head": {"kind": "protoverb", "config": {},
                                                                        "file": "head.safetensors"}}
    (folder / "prompt.json").write_text(json.dumps(head))
    with pytest.raises(AutoPromptError, match="head weights file .* is missing"):
        Prompt.load(folder)


@dataclass
class _Offset:
    """A kind of trained state registered from outside artifact.py, as a new method would."""

    key: ClassVar[str] = "test_offset"
    offset: torch.Tensor
    entered: ClassVar[list[str]] = []

    def manifest(self) -> dict:
        return {"file": "offset.safetensors"}

    def save(self, folder: Path, prompt: Prompt) -> None:
        save_tensors({"offset": self.offset}, folder / "offset.safetensors")

    @classmethod
    def read(cls, entry, folder):
        return cls(read_tensors(folder, entry["file"], "offset")["offset"])

    @contextlib.contextmanager
    def applied(self, harness):
        _Offset.entered.append("on")
        yield
        _Offset.entered.append("off")

    def describe(self) -> str:
        return "an offset"

    def summary(self) -> str:
        return "offset"

    def card_line(self) -> str:
        return "- an offset (`offset.safetensors`)"


def test_a_kind_of_trained_state_registers_without_editing_the_artifact(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setitem(STATES, _Offset.key, _Offset)  # what @register_state does, undone after the test
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    plain = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), label_names=["negative", "positive"],
                   model={"name": "tiny", "kind": "causal"})
    prompt = plain.with_state(_Offset(torch.tensor([1.5, -2.0])))
    assert prompt.trained and not plain.trained and prompt.describe().endswith(" + an offset")
    folder = prompt.save(tmp_path / "p")
    assert sorted(x.name for x in folder.iterdir()) == ["README.md", "offset.safetensors", "prompt.json"]
    assert "an offset" in (folder / "README.md").read_text()
    again = Prompt.load(folder)
    assert isinstance(again.states["test_offset"], _Offset)
    assert torch.equal(again.states["test_offset"].offset, torch.tensor([1.5, -2.0]))
    _Offset.entered.clear()
    again.evaluate(Split([Example("a good film", 1), Example("a bad film", 0)]), h)
    assert _Offset.entered == ["on", "off"]
    with pytest.raises(AutoPromptError, match="kind"):
        Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), states={"delta": _Offset(torch.zeros(1))})


def test_predict_cli_formats_and_bad_input(gemma_dir, tmp_path):
    prompt = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), label_names=["negative", "positive"],
                    model={"name": gemma_dir, "kind": "causal"})
    saved = prompt.save(tmp_path / "p")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return run_cli("predict", "--prompt", str(saved), *args, input=stdin)

    (tmp_path / "in.csv").write_text('idx,sentence\n7,"a good, fine film"\n9,awful\n')
    proc = run("--input", str(tmp_path / "in.csv"), "--format", "csv", "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert lines[0] == "id,text,label,p_negative,p_positive" and lines[1].startswith('7,"a good, fine film",')
    proc = run("--input", "-", stdin="first text\n\nsecond text\n")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["text"] for x in proc.stdout.splitlines()] == ["first text", "second text"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "notext.csv").write_text("title,body\nx,y\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for args, message in [
        (["--input", str(tmp_path / "nope.txt")], "does not exist"),
        (["--input", str(tmp_path)], "is a folder"),
        (["--input", str(tmp_path / "bad.jsonl")], "line 2 is not valid JSON"),
        (["--input", str(tmp_path / "notext.csv")], "no text column"),
        (["--input", str(tmp_path / "latin1.txt")], "not UTF-8"),
        (["--input", str(tmp_path / "in.csv"), "--chunk-size", "0"], "--chunk-size"),
    ]:
        out = tmp_path / "out.jsonl"
        proc = run(*args, "--out", str(out))
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))  # no partial file
    pair = Prompt([Template("{text_a} ? {mask} , {text_b}")], Verbalizer.from_words(WORDS),
                  model={"name": gemma_dir, "kind": "causal"}).save(tmp_path / "pair")
    proc = run_cli("predict", "--prompt", str(pair), "--input", str(tmp_path / "in.csv"))
    assert proc.returncode == 2 and "reads text_b" in proc.stderr
