"""ProtoVerb on tiny random models and synthetic states: losses, k-means initialisation, unequal
shots, small classes, combined inference, interpretation, saving, the study, clustering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Example, Harness, Split, Template, Verbalizer, load_task
from autoprompt_kit.data import Task
from autoprompt_kit.methods.protoverb import (PrototypeHead, ProtoSettings, ProtoVerbConfig, cluster_mask_embeddings,
                                              prototype_words, train_prototypes)
from autoprompt_kit import Prompt
from autoprompt_kit.search import SearchContext, SearchJob, get_searcher, run_search
from autoprompt_kit.search.runner import best_candidate, build_best_json

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["bad"], "positive": ["good"]}


def states(counts=(12, 12), d=16, seed=0, spread=1.0):
    """Synthetic mask states: one Gaussian blob per class (two sub-blobs for class 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=g) * 3
    xs, ys = [], []
    for c, n in enumerate(counts):
        for i in range(n):
            centre = centres[0] if c == 0 else centres[1 + i % 2]
            xs.append(centre + spread * torch.randn(d, generator=g))
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def test_losses_decrease_and_prototypes_separate_classes():
    x, y = states()
    head, history = train_prototypes(x, y, 2, ProtoSettings(proj_dim=8, steps=60, lr=0.05, inference="proto"))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["proto"] < history[0]["proto"] and history[-1]["instance"] < history[0]["instance"]
    pred = head.class_logprobs(x).argmax(1)
    assert (pred == y).float().mean() == 1.0


def test_kmeans_initialises_several_prototypes_per_class_and_unequal_shots_work():
    x, y = states(counts=(5, 20))
    head, _ = train_prototypes(x, y, 2, ProtoSettings(proj_dim=8, prototypes_per_class=2, steps=1, lr=1e-6,
                                                      inference="proto"))
    assert head.prototype_labels.tolist() == [0, 0, 1, 1]
    # class 1 has two sub-blobs: k-means puts one prototype on each (each nearest to half the class)
    with torch.no_grad():
        sims = head.similarities(x[y == 1])[:, 2:]
    nearest = sims.argmax(1)
    assert sorted(torch.bincount(nearest, minlength=2).tolist()) == [10, 10]


def test_class_with_fewer_examples_than_prototypes():
    x, y = states(counts=(2, 10))
    with pytest.raises(AutoPromptError, match="class 0 has 2 training examples, fewer than prototypes_per_class=3"):
        train_prototypes(x, y, 2, ProtoSettings(proj_dim=4, prototypes_per_class=3, steps=2, on_small_class="error"))
    head, _ = train_prototypes(x, y, 2, ProtoSettings(proj_dim=4, prototypes_per_class=3, steps=2))
    assert head.prototype_labels.tolist() == [0, 0, 1, 1, 1]  # documented fallback: one per example
    with pytest.raises(AutoPromptError, match="have no training example"):
        train_prototypes(x[y == 1], y[y == 1], 2, ProtoSettings(proj_dim=4, steps=2))


def test_combined_inference_z_scores_each_class_column():
    x, y = states()
    manual = torch.log_softmax(torch.randn(len(y), 2), 1)
    head, _ = train_prototypes(x, y, 2, ProtoSettings(proj_dim=8, steps=20, manual_weight=0.5), manual=manual)
    proto = head.proto_logits(x)
    zp = (proto - proto.mean(0)) / proto.std(0)
    zm = (manual - manual.mean(0)) / manual.std(0)
    expected = torch.log_softmax((zp + 0.5 * zm) / 1.5, 1)
    assert torch.allclose(head.class_logprobs(x, manual), expected, atol=1e-5)
    with pytest.raises(AutoPromptError, match="needs the manual verbalizer"):
        head.class_logprobs(x)


def test_head_round_trips_through_json_and_files(tmp_path):
    x, y = states()
    head, _ = train_prototypes(x, y, 2, ProtoSettings(proj_dim=8, prototypes_per_class=2, steps=5))
    data = json.loads(json.dumps(head.to_dict()))
    for again in (PrototypeHead.from_dict(data), PrototypeHead.load(head.save(tmp_path / "pv"))):
        assert again.inference == head.inference and again.prototype_labels.tolist() == [0, 0, 1, 1]
        assert torch.allclose(again.class_logprobs(x, torch.zeros(len(x), 2)), head.class_logprobs(x, torch.zeros(len(x), 2)))
    with pytest.raises(AutoPromptError, match="not a saved ProtoVerb head"):
        PrototypeHead.from_dict({"kind": "protoverb"})


def test_prototype_words_are_the_nearest_vocabulary_words(make_harness):
    h = make_harness("bert", batch_size=8, precision=None)
    emb = h.head.weight.detach().float()
    ids = [h.encoder.word_ids(w, True)[0] for w in ("bad", "good")]
    head = PrototypeHead(emb.shape[1], 32, [0, 1], 2, inference="proto")
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(32))  # identity projection: a prototype equal to a word's embedding
        head.prototypes.copy_(emb[ids])
    # instances = the two words' embeddings themselves, so the member centroids predict those words too
    words = prototype_words(h, head, emb[ids], [0, 1], k=3)
    assert [w["nearest_words"][0] for w in words] == ["bad", "good"]
    assert [w["distinctive_words"][0] for w in words] == ["bad", "good"]
    assert [w["members"] for w in words] == [1, 1]


def test_unsupervised_clusters_report_top_words(make_harness):
    h = make_harness("gpt2", batch_size=8, precision=None)
    split = load_task("mr", max_examples=60).test
    out = cluster_mask_embeddings(h, split, TEMPLATE, 3, top_words=4)
    assert sum(out.sizes) == len(split) and len(out.top_words) == 3 and all(len(w) == 4 for w in out.top_words)
    assert out.label_counts is not None and np.array(out.label_counts).sum() == len(split)
    with pytest.raises(AutoPromptError, match="cannot make 200 clusters"):
        cluster_mask_embeddings(h, split, TEMPLATE, 200)


def test_protoverb_study_best_json_reloads_the_head(make_harness, tmp_path):
    h = make_harness("gpt2", batch_size=8, precision=None)
    task = load_task("mr", shots=4, max_examples=80)
    # unequal shots: drop one negative training example
    neg = [i for i, e in enumerate(task.train) if e.label == 0][0]
    task.splits["train"] = Split([e for i, e in enumerate(task.train) if i != neg], name="train",
                                 label_names=task.label_names)
    config = ProtoVerbConfig(label_words=WORDS, prototypes_per_class=[1, 2], proj_dim=[8], steps=20,
                             inference=["combined", "proto"])
    job = SearchJob(get_searcher("protoverb")(config), "pv", f"sqlite:///{tmp_path / 'p.db'}", n_trials=3,
                    progress=False, task_info={"name": "mr", "label_names": task.label_names, "splits": {}},
                    model_info={"name": "tiny", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    doc = json.loads(json.dumps(build_best_json(study, job, None, 1.0, "test")))
    assert doc["prompt"]["head"]["kind"] == "protoverb" and "head" not in doc
    words = doc["trial_artifacts"]["prototype_words"]
    assert {w["class"] for w in words} == {"negative", "positive"} and all(w["nearest_words"] for w in words)
    best, cand = best_candidate(study)
    again = cand.evaluate(task.dev, h)
    assert again.accuracy == pytest.approx(doc["metrics"]["dev"]["accuracy"])
    assert again.predictions.tolist() == best.user_attrs["~dev_predictions"]


def test_ten_classes_prototypes_and_combined_inference():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(10, 16, generator=g) * 3
    y = torch.arange(10).repeat_interleave(6)
    y = y[torch.arange(len(y)) % 6 < torch.where(y == 9, 2, 6)]      # unequal shots: class 9 has 2
    x = centres[y] + torch.randn(len(y), 16, generator=g)
    manual = torch.log_softmax(torch.randn(len(y), 10, generator=g), dim=1)
    head, _ = train_prototypes(x, y, 10, ProtoSettings(proj_dim=8, prototypes_per_class=3, steps=80, lr=0.05),
                               manual=manual)
    assert torch.bincount(head.prototype_labels).tolist() == [3] * 9 + [2]   # class 9: one prototype per example
    assert (head.proto_logits(x).argmax(1) == y).float().mean() >= 0.9      # the prototypes separate 10 blobs
    assert head.class_logprobs(x, manual).shape == (len(y), 10)
    z_manual = (manual - head.manual_mean) / head.manual_std                  # every class column standardised
    assert torch.allclose(z_manual.mean(0), torch.zeros(10), atol=1e-5)


def test_protoverb_study_with_ten_classes(make_harness, tmp_path):
    h = make_harness("gpt2", batch_size=8, precision=None)
    names = [f"c{i}" for i in range(10)]
    texts = [f"{a} {b}" for a in ("the movie", "a film", "the plot", "what a story", "the cast")
             for b in ("was great", "was bad", "is dull", "is fun", "was awful", "is nice", "was boring", "is fine",
                       "was wonderful", "was a waste")]
    split = Split([Example(t, i % 10) for i, t in enumerate(texts)], name="train", label_names=names)
    task = Task("ten", names, {"train": split[:30], "dev": split[30:], "test": split[30:]})
    words = dict(zip(names, ["bad", "good", "fun", "dull", "nice", "awful", "great", "boring", "fine", "waste"]))
    config = ProtoVerbConfig(label_words=words, prototypes_per_class=[1, 2], proj_dim=[8], steps=20,
                             inference=["combined", "proto"])
    job = SearchJob(get_searcher("protoverb")(config), "pv10", f"sqlite:///{tmp_path / 'p.db'}", n_trials=2,
                    progress=False, task_info={"name": "ten", "label_names": names, "splits": {}},
                    model_info={"name": "tiny", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    doc = build_best_json(study, job, None, 1.0, "test")
    assert {w["class"] for w in doc["trial_artifacts"]["prototype_words"]} == set(names)
    best, cand = best_candidate(study)
    again = cand.evaluate(task.dev, h)
    assert again.class_logprobs.shape == (20, 10)
    assert again.accuracy == pytest.approx(best.user_attrs["dev_accuracy"])


def test_config_errors():
    with pytest.raises(AutoPromptError, match="needs label_words"):
        ProtoVerbConfig()
    with pytest.raises(AutoPromptError, match="inference must be one of"):
        ProtoVerbConfig(label_words=WORDS, inference=["vote"])
    with pytest.raises(AutoPromptError, match="on_small_class"):
        ProtoVerbConfig(label_words=WORDS, on_small_class="skip")
    with pytest.raises(AutoPromptError, match="temperature"):
        ProtoSettings(temperature=0)


def test_verbalizer_only_manual_is_accepted(make_harness):
    h = make_harness("gpt2", batch_size=8, precision=None)
    train = Split([Example("good fun", 1), Example("bad film", 0), Example("great", 1), Example("awful", 0)],
                  label_names=["negative", "positive"])
    out = h.score(train, TEMPLATE, Verbalizer.from_words(WORDS), hidden=True)
    head, _ = train_prototypes(out.hidden, train.labels, 2, ProtoSettings(proj_dim=4, steps=5, inference="proto"))
    res = head.evaluate(h, train, TEMPLATE, Verbalizer.from_words(WORDS), ["negative", "positive"])
    assert res.n == 4 and res.class_logprobs.shape == (4, 2)


@pytest.mark.slow
def test_protoverb_beats_the_manual_verbalizer_on_gemma(real_harness, tmp_path):
    """16 shots (seed 13) on MR; 200 test examples: ProtoVerb (combined) vs terrible/great."""
    h = real_harness
    task = load_task("mr", shots=16, seed=13)
    test = load_task("mr", max_examples=200).test
    config = ProtoVerbConfig(label_words={"negative": ["terrible"], "positive": ["great"]}, inference=["combined"])
    job = SearchJob(get_searcher("protoverb")(config), "pv-real", f"sqlite:///{tmp_path / 'p.db'}", n_trials=1,
                    progress=False, task_info={"name": "mr", "label_names": task.label_names, "splits": {}},
                    model_info={"name": "gemma-3-270m", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    doc = json.loads(json.dumps(build_best_json(study, job, None, 1.0, "test")))
    assert all(w["nearest_words"] and w["distinctive_words"] for w in doc["trial_artifacts"]["prototype_words"])
    result = best_candidate(study)[1].evaluate(test, h)
    manual = (result.extra["manual_class_logprobs"].argmax(1) == test.labels).mean()  # same pass, no prototypes
    assert result.accuracy > manual + 0.05, (result.accuracy, manual)


def test_cli_evaluate_applies_the_saved_head(tiny_model_dir, tmp_path, capsys):
    from autoprompt_kit.cli import main

    h = Harness(tiny_model_dir, progress=False)
    split = load_task("mr", max_examples=40).dev
    verb = Verbalizer.from_words(WORDS)
    out = h.score(split, TEMPLATE, verb, hidden=True)
    head, _ = train_prototypes(out.hidden, split.labels, 2, ProtoSettings(proj_dim=4, steps=5, inference="proto"))
    cand = Prompt([Template(TEMPLATE)], verb, head=head)
    prompt = tmp_path / "best.json"  # a best.json from before the prompt folder: the head inline, base64
    prompt.write_text(json.dumps({"template": {"text": TEMPLATE}, "verbalizer": verb.to_dict(), "head": head.to_dict(),
                                  "model": {"name": tiny_model_dir, "kind": "causal"}, "task": {"name": "mr"}}))
    assert main(["evaluate", "--prompt", str(prompt), "--max-examples", "40", "--split", "dev", "--quiet"]) == 0
    expected = head.evaluate(h, split, TEMPLATE, verb).accuracy
    assert "+ protoverb head" in capsys.readouterr().out
    assert cand.evaluate(split, h).accuracy == pytest.approx(expected)


def test_cli_search_writes_a_valid_best_json_and_scores_test_with_the_head(tiny_model_dir, tmp_path):
    from pathlib import Path

    import jsonschema

    from autoprompt_kit.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("method: protoverb\nlabel_words: {negative: [bad], positive: [good]}\nproj_dim: [8]\n"
                     "prototypes_per_class: [1, 2]\ninference: [combined]\nsteps: 10\n")
    out = tmp_path / "best.json"
    assert main(["search", "protoverb", "--space", str(space), "--model", tiny_model_dir, "--storage",
                 f"sqlite:///{tmp_path}/s.db", "--trials", "2", "--max-examples", "120", "--shots", "8", "--quiet",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    root = Path(__file__).resolve().parents[1]
    jsonschema.validate(doc, json.loads((root / "autoprompt_kit" / "schemas" / "best.schema.json").read_text()))
    assert doc["prompt"]["head"]["kind"] == "protoverb" and doc["trial_artifacts"]["prototype_words"]
    assert (tmp_path / "best.prompt" / "head.safetensors").is_file()
    h = Harness(tiny_model_dir, progress=False)
    test = load_task("mr", max_examples=120).test
    assert doc["metrics"]["test"]["accuracy"] == pytest.approx(Prompt.load(out).evaluate(test, h).accuracy)
