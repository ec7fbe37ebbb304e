"""End-to-end on the real default model (Gemma 3 270M) and real data (MR). Slow: run with -m slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprompt_kit import Template, Verbalizer, load_task
from autoprompt_kit.harness import classification_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mr_test_sample():
    return load_task("mr").test[:400]


def test_calibration_lifts_the_biased_manual_prompt(real_harness, mr_test_sample):
    verb = Verbalizer.from_words({"negative": "terrible", "positive": "great"}, calibration="content_free")
    cal = real_harness.evaluate(mr_test_sample, "{text_a} It was {mask}.", verb)
    raw_pred = verb.class_logprobs(torch.tensor(cal.word_logprobs)).argmax(1).numpy()
    raw_acc, raw_f1 = classification_metrics(cal.labels, raw_pred, 2)
    # Gemma 270M says "great" for almost every review; calibration must undo that bias clearly.
    # (Full MR test split, 2,121 reviews: accuracy 0.525 -> 0.632, macro-F1 0.417 -> 0.585.)
    assert raw_pred.mean() > 0.85
    assert raw_acc < 0.6
    assert cal.accuracy > raw_acc
    assert cal.macro_f1 > raw_f1 + 0.08
    assert 0.1 < cal.predictions.mean() < 0.9


def test_real_model_scores_match_a_plain_forward(real_harness, mr_test_sample):
    h = real_harness
    template = Template("{text_a} All in all, the film was {mask} to watch.")  # mask mid-template
    verb = Verbalizer.from_words({"negative": ["terrible", "a waste of time"], "positive": ["great", "worth it"]})
    got = h.score(mr_test_sample[:3], template, verb, exact=True).word_logprobs
    for i, example in enumerate(mr_test_sample[:3]):
        enc = h.encoder.encode(template, example)
        prompt = h.encoder.special_prefix + list(enc.prefix)
        for w, word in enumerate(verb.flat_words):
            cont = list(h.encoder.word_ids(word, enc.space_before_mask)) + list(enc.suffix)
            with torch.no_grad():
                lp = h.model(input_ids=torch.tensor([prompt + cont[:-1]])).logits.log_softmax(-1)[0]
            ref = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))
            assert got[i, w].item() == pytest.approx(ref, abs=2e-3)


def test_demo_command_prints_both_calibrations(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprompt_kit.cli", "evaluate", "--task", "mr", "--max-examples", "120",
         "--words", "negative=terrible", "--words", "positive=great", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "calibration=none" in proc.stdout and "calibration=content_free" in proc.stdout
    report = json.loads(out.read_text())
    assert report["n"] == 120 and set(report["results"]) == {"none", "content_free"}
    assert all(0 <= r["accuracy"] <= 1 for r in report["results"].values())


def test_select_search_on_the_real_model(tmp_path):
    """The issue's acceptance run, smaller: a real study on Gemma + MR writes a valid best.json."""
    from pathlib import Path

    import jsonschema

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "best.json"
    args = [sys.executable, "-m", "autoprompt_kit.cli", "search", "select", "--task", "mr",
            "--space", str(root / "search_spaces" / "select_sentiment.yaml"), "--trials", "6",
            "--max-examples", "300", "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--study", "real",
            "--out", str(out), "--quiet"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads((root / "autoprompt_kit" / "schemas" / "best.schema.json").read_text()))
    values = [c["value"] for c in doc["candidates"]]
    assert doc["metrics"]["dev"]["accuracy"] == max(values) > min(values)
    assert doc["model"] == {"name": "gemma-3-270m", "kind": "causal"} and doc["metrics"]["test"]["n"] == 300
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=1200)  # same study: nothing to redo
    assert resumed.returncode == 0 and json.loads(out.read_text())["study"]["trials"]["complete"] == 6


def test_autoprompt_trial_on_the_real_model(real_harness):
    """Two AutoPrompt iterations on Gemma: real gradients, whole-word triggers, a readable template."""
    from autoprompt_kit.methods.autoprompt import TriggerSearch, init_triggers, trigger_token_mask

    task = load_task("mr", shots=8, seed=13)
    verb = Verbalizer.from_words({"negative": "terrible", "positive": "great"}, aggregation="sum")
    template = init_triggers(real_harness, Template("{text_a} {trigger*3} {mask}."), "the")
    search = TriggerSearch(real_harness, verb, num_candidates=5, batch_size=8,
                           token_mask=trigger_token_mask(real_harness, verb), seed=13)
    result = search.run(template, task.train, task.dev, iterations=2)
    assert len(result.history) == 2 and all(e["best_loss"] <= e["loss"] for e in result.history)
    tokens = real_harness.tokenizer.convert_ids_to_tokens(result.template.trigger_ids)
    assert all(t.startswith("▁") and t[1:].isalpha() for t in tokens)


SPACES = {
    "protoverb": "method: protoverb\nlabel_words: {negative: [terrible], positive: [great]}\nproj_dim: [64]\n"
                 "prototypes_per_class: [1]\ninference: [combined, proto]\n",
    "lmbff": "method: lmbff\nlabel_words: {negative: [terrible], positive: [great]}\nbeam: 4\nmax_span_tokens: 2\n"
             "keep_generated: 4\ntop_n: 2\ncalibration: [none]\nfinetune_epochs: 2\nfinetune_batch_size: 8\n",
}


@pytest.mark.parametrize("method", sorted(SPACES))
def test_search_then_predict_on_the_real_model(method, tmp_path):
    """Gemma + MR from the CLI: a method that trains something (ProtoVerb's head, LM-BFF's LoRA
    fine-tuning) → best.json + best.prompt/ → ``predict`` on the dev texts gives the best trial's labels."""
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text(SPACES[method])
    out, storage = tmp_path / "best.json", f"sqlite:///{tmp_path / 'r.db'}"
    search = [sys.executable, "-m", "autoprompt_kit.cli", "search", method, "--task", "mr", "--space", str(space),
              "--shots", "8", "--max-examples", "200", "--trials", "2", "--storage", storage, "--study", "real",
              "--out", str(out), "--quiet", "--precision", "fp32"]  # an exactness test: fp32 (bf16 batchings differ)
    proc = subprocess.run(search, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {"protoverb": "head", "lmbff": "delta"}[method] in doc["prompt"]
    # The kit's best trial (ties go to the simpler, then the more confident prompt), not Optuna's first maximum.
    best = optuna.load_study(study_name="real", storage=storage).trials[doc["study"]["best_trial"]]
    dev = load_task("mr", shots=8, seed=13, max_examples=200).dev
    texts = tmp_path / "dev.txt"
    texts.write_text("".join(e.text_a.replace("\n", " ") + "\n" for e in dev))
    pred = tmp_path / "pred.jsonl"
    proc = subprocess.run([sys.executable, "-m", "autoprompt_kit.cli", "predict", "--prompt", str(out), "--input",
                           str(texts), "--out", str(pred), "--quiet"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    labels = [json.loads(line)["label"] for line in pred.read_text().splitlines()]
    assert [dev.label_names.index(x) for x in labels] == best.user_attrs["~dev_predictions"]
    again = subprocess.run([sys.executable, "-m", "autoprompt_kit.cli", "evaluate", "--prompt", str(out), "--split",
                            "dev", "--quiet"], capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0 and f"{len(dev)}/{len(dev)} dev predictions identical" in again.stdout, again.stdout


def test_auto_search_then_predict_on_the_real_model(real_harness, tmp_path):
    """``auto`` on Gemma and the hand-written support-intent task, with a small budget: the
    cross-validated estimate is reported with its n, the refit prompt beats chance on test, and it
    labels new messages after a reload."""
    from autoprompt_kit import Prompt, find_prompt
    from autoprompt_kit.methods import AutoConfig

    task = load_task(str(ROOT / "benchmarks" / "tasks" / "support_intent"), shots=8, seed=13)
    space = AutoConfig.for_task(task)
    space.stages, space.label_search = ["words", "trained"], False
    out = tmp_path / "best.json"
    result = find_prompt("auto", task, space, harness=real_harness, storage=f"sqlite:///{tmp_path / 'a.db'}",
                         budget=240, out=out)
    cv, test = result.document["metrics"]["cv"], result.document["metrics"]["test"]
    assert cv["n"] == 64 and cv["folds"] == 4 and 0 < cv["se"] < 0.2
    assert test["n"] == 80 and test["accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert set(result.document["stages"]) <= {"words", "trained"}
    again = Prompt.load(tmp_path / "best.prompt")
    labels = again.predict(["I was charged twice this month", "my parcel never arrived"], real_harness).labels
    assert list(labels) == list(result.prompt.predict(["I was charged twice this month", "my parcel never arrived"],
                                                      real_harness).labels)
