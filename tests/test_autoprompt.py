"""AutoPrompt on tiny random models of every kind: mechanics, batched = sequential, errors, study."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Example, Harness, Split, Template, Verbalizer, load_task
from autoprompt_kit.data import Task
from autoprompt_kit.methods.autoprompt import (AutoPromptConfig, TriggerSearch, init_triggers, label_token_search,
                                               resize_triggers, trigger_token_mask)
from autoprompt_kit.models.vocab import word_of
from autoprompt_kit.search import SearchContext, SearchJob, get_searcher, run_search

TRAIN = Split([Example(t, y) for t, y in [
    ("the movie was great and the acting was wonderful", 1), ("a bad film with awful dialogue", 0),
    ("brilliant , moving and funny", 1), ("what a waste of time , truly awful", 0),
    ("it was a good movie with a fine cast", 1), ("the story is dull", 0),
    ("i loved the ending", 1), ("the film was terrible and the plot was boring", 0),
]], name="train", label_names=["negative", "positive"])
VERB = Verbalizer.from_words({"negative": ["bad"], "positive": ["good"]}, aggregation="sum")


def test_resize_triggers():
    t = resize_triggers(Template("{text_a} {trigger} {trigger} {mask}."), 4)
    assert t.num_triggers == 4 and t.text == "{text_a} {trigger*4} {mask}."
    with pytest.raises(AutoPromptError, match="no {trigger} slot"):
        resize_triggers(Template("{text_a} {mask}."), 3)


@pytest.mark.parametrize("arch, loss", [("bert", "likelihood"), ("gpt2", "likelihood"), ("t5", "likelihood"),
                                        ("gpt2", "cross_entropy")])
def test_batched_candidate_losses_equal_one_forward_per_candidate(make_harness, arch, loss):
    h = make_harness(arch, batch_size=8)
    template = init_triggers(h, Template("{text_a} {trigger*2} {mask}."), "mask")
    mask = trigger_token_mask(h, VERB, word_initial=False)  # tiny vocabularies have few whole words
    search = TriggerSearch(h, VERB, num_candidates=5, token_mask=mask, seed=0, loss=loss)
    cands = search.candidates(template, TRAIN, 1)
    assert len(cands) == 5 and all(bool(mask[c]) for c in cands)
    templates = [template] + [template.with_triggers([template.trigger_ids[0], c]) for c in cands]
    batched = search.losses(templates, TRAIN)
    labels = torch.tensor(TRAIN.labels)
    one_by_one = [float(-VERB.gold_logprob(h.score(TRAIN, t, VERB, exact=True).word_logprobs, labels, loss).mean())
                  for t in templates]
    assert batched == pytest.approx(one_by_one, abs=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "gemma3", "t5"])
def test_trigger_search_runs_on_every_model_kind(make_harness, arch):
    h = make_harness(arch, batch_size=8)
    template = init_triggers(h, Template("{text_a} {trigger*2} {mask}."), "mask")
    search = TriggerSearch(h, VERB, num_candidates=4, batch_size=4, token_mask=trigger_token_mask(h, VERB, word_initial=False), seed=1)
    seen = []
    result = search.run(template, TRAIN, TRAIN, iterations=3, on_iteration=lambda i, acc, t: seen.append(i))
    assert seen == [0, 1, 2] and len(result.history) == 3
    assert result.template.num_triggers == 2 and all(i is not None for i in result.template.trigger_ids)
    assert any(e["best_loss"] <= e["loss"] for e in result.history)
    # the swapped-in tokens are never label words
    label_ids = {i for w in VERB.flat_words for i in h.encoder.word_ids(w, True)}
    assert not label_ids & set(result.template.trigger_ids)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_label_token_search(make_harness, arch):
    h = make_harness(arch, batch_size=8)
    k = 3 if arch == "bert" else 1  # the tiny BPE vocabulary has only a handful of whole words
    verb = label_token_search(h, TRAIN, Template("{text_a} It was {mask}."), ["negative", "positive"], k)
    assert verb.labels == ("negative", "positive") and all(1 <= len(ws) <= k for ws in verb.label_words)
    assert len(set(verb.flat_words)) == len(verb.flat_words)  # no word in two classes
    h.evaluate(TRAIN, "{text_a} It was {mask}.", verb)  # usable as a verbalizer


FIVE = [f"c{i}" for i in range(5)]


def five_class_split(name: str, offset: int, n: int) -> Split:
    texts = [f"{a.text_a} {b.text_a}" for a in TRAIN for b in TRAIN if a is not b]
    return Split([Example(texts[offset + i], i % 5) for i in range(n)], name=name, label_names=FIVE)


def test_label_token_search_with_five_classes(make_harness):
    h = make_harness("bert", batch_size=8)
    train = five_class_split("train", 0, 20)
    verb = label_token_search(h, train, Template("{text_a} It was {mask}."), FIVE, 2)
    assert verb.labels == tuple(FIVE) and all(len(ws) == 2 for ws in verb.label_words)
    assert len(set(verb.flat_words)) == 10  # no token in two classes
    assert h.evaluate(train, "{text_a} It was {mask}.", verb).predictions.max() < 5
    with pytest.raises(AutoPromptError, match=r"no train example of class\(es\) \['c4'\]"):
        label_token_search(h, train[train.labels < 4], Template("{text_a} It was {mask}."), FIVE, 2)


def test_autoprompt_study_searches_label_tokens_for_five_classes(make_harness, tmp_path):
    h = make_harness("bert", batch_size=8)
    task = Task("five", FIVE, {"train": five_class_split("train", 0, 20), "dev": five_class_split("dev", 20, 10),
                               "test": five_class_split("test", 30, 10)})
    config = AutoPromptConfig(template="{text_a} {trigger*2} {mask} .", label_search=True, label_tokens_per_class=2,
                              num_triggers=[2], num_candidates=[3], iterations=2, batch_size=8, word_initial_only=False)
    job = SearchJob(get_searcher("autoprompt")(config), "ap5", f"sqlite:///{tmp_path / 'ap.db'}", n_trials=1,
                    progress=False, task_info={"name": "five"}, model_info={"name": "tiny", "kind": "mlm"})
    study = run_search(job, SearchContext(task, h, 13))
    trial = study.get_trials(states=(TrialState.COMPLETE,))[0]
    verb = Verbalizer.from_dict(trial.user_attrs["~candidate"]["verbalizer"])
    assert verb.labels == tuple(FIVE) and verb.aggregation == "sum" and len(set(verb.flat_words)) == 10
    assert not set(trial.user_attrs["trigger_ids"]) & {i for w in verb.flat_words for i in h.encoder.word_ids(w, True)}


def test_bad_settings(make_harness):
    h = make_harness("gpt2", batch_size=8)
    with pytest.raises(AutoPromptError, match="at least 1"):
        TriggerSearch(h, VERB, num_candidates=0)
    with pytest.raises(AutoPromptError, match="removes every token"):
        TriggerSearch(h, VERB, token_mask=torch.zeros(len(h.tokenizer), dtype=torch.bool))
    with pytest.raises(AutoPromptError, match="removes every token"):
        trigger_token_mask(h, VERB, exclude_words=[word_of(w)[0] for w in h.tokenizer.get_vocab()])
    with pytest.raises(AutoPromptError, match="no {trigger} slot"):
        AutoPromptConfig(template="{text_a} It was {mask}.", label_words={"a": "x", "b": "y"})
    with pytest.raises(AutoPromptError, match="num_candidates"):
        AutoPromptConfig(label_words={"a": "x", "b": "y"}, num_candidates=[0])
    with pytest.raises(AutoPromptError, match="label_search"):
        AutoPromptConfig()


def test_autoprompt_study_reports_each_iteration(tiny_models, tmp_path):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    task = load_task("mr", shots=4, max_examples=80)
    config = AutoPromptConfig(label_words={"negative": ["bad"], "positive": ["good"]}, num_triggers=[2],
                              num_candidates=[3], iterations=3, batch_size=4, init_token=["mask", "the"])
    job = SearchJob(get_searcher("autoprompt")(config), "ap", f"sqlite:///{tmp_path / 'ap.db'}", n_trials=2,
                    progress=False, task_info={"name": "mr"}, model_info={"name": "tiny", "kind": kind})
    study = run_search(job, SearchContext(task, h, 13))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        assert sorted(t.intermediate_values) == [0, 1, 2]
        assert len(t.user_attrs["trigger_ids"]) == 2 and len(t.user_attrs["history"]) == 3
        saved = Template.from_dict(t.user_attrs["~candidate"]["templates"][0])
        assert saved.trigger_ids == t.user_attrs["trigger_ids"]
