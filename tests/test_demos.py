"""Demonstrations as a part of a prompt: selection and order rules, position-independent choices,
calibration whose content-free inputs carry the demonstrations, the manifest, the demos search
and its input checks (tiny random models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoprompt_kit import AutoPromptError, Example, Prompt, Split, Template, Verbalizer
from autoprompt_kit.data import Task
from autoprompt_kit.demonstrations import DEMO_FIELD, Demonstrations, demonstration_template, sentence_encoder
from autoprompt_kit.methods.demos import DemosConfig, select_fixed_demonstrations
from autoprompt_kit.search import SearchContext, SearchJob, combine_results, finish_search, get_searcher, run_search
from autoprompt_kit.search import best_trial

LABELS = ["negative", "positive"]
TRAIN = Split([Example(t, y) for t, y in [
    ("the movie was great and the acting was wonderful", 1), ("a bad film with awful dialogue", 0),
    ("brilliant , moving and funny", 1), ("what a waste of time , truly awful", 0),
    ("it was a good movie with a fine cast", 1), ("the story is dull", 0),
    ("overall it was great fun", 1), ("not good , not bad", 0),
]], name="train", label_names=LABELS)
DEV = Split([Example(t, y) for t, y in [("i loved the ending", 1), ("the film was terrible and the plot was boring", 0),
                                        ("great fun to watch", 1), ("not good", 0)]], name="dev", label_names=LABELS)
WORDS = {"negative": ["bad"], "positive": ["good"]}
TEMPLATE = "{text_a} It was {mask}."


@pytest.fixture(scope="module")
def encoder_dir(tiny_models, tmp_path_factory):
    """The tiny BERT body as a sentence encoder folder (any HF encoder works for ``similar``)."""
    path = tmp_path_factory.mktemp("tiny-encoder")
    model, tok, _ = tiny_models["bert"]
    model.bert.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def demos(per_class: int = 2, selection: str = "random", order: str = "balanced", **kw) -> Demonstrations:
    return Demonstrations(TRAIN, LABELS, per_class, selection, order, **kw)


def test_random_choices_depend_only_on_the_input_and_never_show_it(encoder_dir):
    for d in (demos(2, "random", "balanced", seed=3), demos(2, "similar", "similar_last", encoder=encoder_dir)):
        together = d.choose(TRAIN)
        alone = [d.choose([ex])[0] for ex in TRAIN]
        backwards = d.choose(TRAIN[::-1])[::-1]
        assert together == alone == backwards  # a batch, a single text and another order: the same demonstrations
        for ex, chosen in zip(TRAIN, together):
            assert ex not in [TRAIN[j] for j in chosen]
            assert sorted(TRAIN[j].label for j in chosen) == [0, 0, 1, 1]
    seeds = {tuple(demos(2, "random", seed=s).choose(DEV)[0]) for s in range(8)}
    assert len(seeds) > 1  # the seed matters


def test_orders(encoder_dir):
    for chosen in demos(2, "random", "balanced", seed=1).choose(DEV):
        labels = [TRAIN[j].label for j in chosen]
        assert sorted(labels[:2]) == sorted(labels[2:]) == [0, 1]  # every round has one of each class
    similar = demos(2, "similar", "similar_last", encoder=encoder_dir)
    enc = sentence_encoder(encoder_dir)
    sims = enc.embed([e.text_a for e in DEV]) @ enc.embed([e.text_a for e in TRAIN]).T
    for i, chosen in enumerate(similar.choose(DEV)):
        assert list(sims[i, chosen]) == sorted(sims[i, chosen])  # the most similar right before the input
        for c in (0, 1):  # and they are the nearest of their class
            members = [j for j in range(len(TRAIN)) if TRAIN[j].label == c]
            nearest = sorted(members, key=lambda j: -sims[i, j])[:2]
            assert sorted(j for j in chosen if TRAIN[j].label == c) == sorted(nearest)
    fixed = demos(1, "fixed", fixed=[4, 1])
    assert fixed.choose(DEV) == [[4, 1]] * len(DEV)


def test_rendered_field_and_placement(tiny_models, make_harness):
    d = demos(1, "fixed", fixed=[1, 0], separator="\n")
    verbalizer = Verbalizer.from_words(WORDS)
    shown, template = d.apply(DEV, TEMPLATE, verbalizer, "causal")
    assert shown[0].meta[DEMO_FIELD] == ("a bad film with awful dialogue It was bad.\n"
                                         "the movie was great and the acting was wonderful It was good.")
    assert template.text == "{demos} {text_a} It was {mask}." and shown[0].text_a == DEV[0].text_a
    assert d.apply(DEV, TEMPLATE, verbalizer, "mlm")[1].text == "{text_a} It was {mask}. {demos}"
    # Filled trigger slots survive (demonstrations combine with an AutoPrompt template).
    triggered = Template("{text_a} {trigger*2} {mask}.").with_triggers([5, 6], ["a", "b"])
    assert demonstration_template(triggered, "causal").trigger_ids == [5, 6]
    tok = tiny_models["gpt2"][1]
    a, b = (tok.decode([i]).strip() for i in (5, 6))
    assert d.render(triggered, verbalizer, tok)[1] == f"a bad film with awful dialogue {a} {b} bad."
    with pytest.raises(AutoPromptError, match="already reads"):
        d.apply(DEV, "{demos} {text_a} It was {mask}.", verbalizer, "causal")
    for arch in ("bert", "t5", "gpt2"):
        h = make_harness(arch, batch_size=4)
        assert Prompt([Template(TEMPLATE)], verbalizer).with_demonstrations(d).evaluate(DEV, h).n == len(DEV)
    # An ensemble: each member renders its own demonstrations, then the members are averaged.
    members = [Template(TEMPLATE), Template("{text_a} All in all, it was {mask}.")]
    both = Prompt(members, verbalizer, "uniform", [1.0, 1.0]).with_demonstrations(d).evaluate(DEV, h)
    singles = [Prompt([t], verbalizer).with_demonstrations(d).evaluate(DEV, h) for t in members]
    assert np.allclose(both.class_logprobs, combine_results(singles, [1.0, 1.0]).class_logprobs)
    assert "All in all, it was bad." in d.apply(DEV, members[1], verbalizer, "causal")[0][0].meta[DEMO_FIELD]


def test_demonstrations_that_do_not_fit_are_dropped_farthest_first(make_harness):
    h = make_harness(batch_size=4)  # 128 positions
    long_pool = Split([Example(" ".join([TRAIN[i].text_a] * 3), TRAIN[i].label) for i in range(len(TRAIN))])
    d = Demonstrations(long_pool, LABELS, 3, "random", "shuffled", seed=0)
    verbalizer = Verbalizer.from_words(WORDS)
    rendered = d.render(Template(TEMPLATE), verbalizer)
    shown, template = d.apply(DEV, TEMPLATE, verbalizer, "causal", h.encoder)
    for ex, chosen in zip(shown, d.choose(DEV)):
        kept = [rendered[j] for j in chosen if rendered[j] in ex.meta[DEMO_FIELD]]
        assert 0 < len(kept) < len(chosen)
        assert kept == [rendered[j] for j in chosen[len(chosen) - len(kept):]]  # the ones nearest the input stay
        assert h.encoder.encode(template, ex, h.encoder.reserve(verbalizer.flat_words)).truncated == 0


def test_content_free_inputs_carry_the_demonstrations(make_harness):
    h = make_harness(batch_size=4)
    verbalizer = Verbalizer.from_words(WORDS, calibration="content_free")
    template = demonstration_template(TEMPLATE, "causal")

    def prior(text: str) -> torch.Tensor:
        cf = [Example(x, -1, meta={DEMO_FIELD: text}) for x in verbalizer.content_free_inputs]
        lp = h.score(cf, template, verbalizer).word_logprobs.float()
        return verbalizer.class_logprobs(lp).exp().mean(0).clamp_min(1e-12).log()

    per_input = demos(1, "random", seed=0)
    shown, _ = per_input.apply(DEV, TEMPLATE, verbalizer, "causal")
    result = h.evaluate(shown, template, verbalizer)
    assert result.prior.shape == (len(DEV), 2)
    for i, ex in enumerate(shown):
        torch.testing.assert_close(torch.tensor(result.prior[i]), prior(ex.meta[DEMO_FIELD]))
    raw = h.score(shown, template, verbalizer).word_logprobs.float()
    for i, ex in enumerate(shown):  # each input is calibrated by the prior of its own prompt
        expected = verbalizer.class_logprobs(raw[i:i + 1], prior=prior(ex.meta[DEMO_FIELD]))
        torch.testing.assert_close(torch.tensor(result.class_logprobs[i:i + 1]), expected)
    fixed, _ = demos(1, "fixed", fixed=[1, 0]).apply(DEV, TEMPLATE, verbalizer, "causal")
    one = h.evaluate(fixed, template, verbalizer)
    assert one.prior.shape == (2,)
    torch.testing.assert_close(torch.tensor(one.prior), prior(fixed[0].meta[DEMO_FIELD]))
    assert not torch.allclose(prior(fixed[0].meta[DEMO_FIELD]), prior("N/A"))  # what the demonstrations change


def test_manifest_round_trip_and_bad_manifests(make_harness, tmp_path, encoder_dir):
    h = make_harness(batch_size=4)
    base = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS), label_names=LABELS)
    assert base.to_dict()["format_version"] == 1  # prompts without demonstrations stay readable by version 1
    for d in (demos(2, "random", "shuffled", seed=5, separator="\n"), demos(1, "fixed", fixed=[3, 2]),
              demos(1, "similar", "similar_last", encoder=encoder_dir)):
        prompt = base.with_demonstrations(d)
        saved = prompt.to_dict()
        assert saved["format_version"] == 2
        assert saved["demonstrations"]["pool"][1] == {"text_a": "a bad film with awful dialogue", "label": "negative"}
        again = Prompt.load(prompt.save(tmp_path / d.selection))
        assert again.demonstrations == d and again.to_dict() == saved
        assert np.array_equal(again.predict(DEV, h).indices, prompt.predict(DEV, h).indices)
    assert base.with_demonstrations(demos()).with_demonstrations(None).to_dict() == base.to_dict()
    good = base.with_demonstrations(demos()).to_dict()
    for change, message in [
        ({"pool": []}, "need 'pool'"),
        ({"pool": [{"text_a": "x", "label": "neutral"}]}, "pool item 0"),
        ({"selection": "nearest"}, "selection must be one of"),
        ({"order": "similar_last"}, "needs selection 'similar'"),
        ({"per_class": 9}, "only 4 example"),
        ({"selection": "fixed", "fixed": [99]}, "pool indices"),
        ({"fixed": [0]}, "only it has them"),
    ]:
        with pytest.raises(AutoPromptError, match=message):
            Prompt.from_dict({**good, "demonstrations": {**good["demonstrations"], **change}})


def test_fixed_set_selection_scores_each_set_outside_itself(make_harness):
    h = make_harness(batch_size=4)
    prompt = Prompt([Template(TEMPLATE)], Verbalizer.from_words(WORDS))
    chosen, ranked = select_fixed_demonstrations(h, prompt, TRAIN, LABELS, 1, seed=0, candidates=4)
    assert len(ranked) == 4 and len({tuple(r["fixed"]) for r in ranked}) == 4
    best = max(ranked, key=lambda r: r["accuracy"])["accuracy"]
    first_best = next(r for r in ranked if r["accuracy"] == best)
    assert chosen.fixed == first_best["fixed"] and chosen.selection == "fixed"
    r = ranked[0]
    held = TRAIN[[i for i in range(len(TRAIN)) if i not in r["fixed"]]]
    d = Demonstrations(TRAIN, LABELS, 1, "fixed", fixed=r["fixed"])
    assert prompt.with_demonstrations(d).evaluate(held, h).accuracy == r["accuracy"]


def task() -> Task:
    return Task("toy", LABELS, {"train": TRAIN, "dev": DEV, "test": DEV})


def test_config_checks_before_the_study_opens(tmp_path):
    ok = dict(template=TEMPLATE, label_words=WORDS)
    for settings, message in [
        (dict(ok, per_class=[]), "per_class must be"),
        (dict(ok, selection=["nearest"]), "selection must be a non-empty list"),
        (dict(ok, selection=["random", "similar"], order=["similar_last"]), "'random' has no valid order"),
        (dict(ok, calibration=["contextual"]), "calibration must be"),
        (dict(ok, fixed_candidates=0), "fixed_candidates"),
        (dict(ok, fixed_select_on="test"), "fixed_select_on"),
        (dict(template="{demos} {text_a} It was {mask}.", label_words=WORDS), "must not read"),
        (dict(template=TEMPLATE), "needs label_words"),
        (dict(prompt=str(tmp_path / "nope.json")), "does not exist"),
    ]:
        with pytest.raises(AutoPromptError, match=message):
            DemosConfig(**settings)
    with pytest.raises(AutoPromptError, match="'per_class' must be a list of integers"):
        DemosConfig.from_dict({"method": "demos", **ok, "per_class": 2})
    for settings, message in [
        (dict(ok, per_class=[5]), "per_class 5 is more than the train split's 4"),
        (dict(ok, per_class=[4], selection=["dev_selected"]), "to leave examples"),
        (dict(ok, label_words={"bad": ["bad"], "good": ["good"]}), "setting 'label_words'"),
        (dict(ok, template="{text_a} {text_b} {mask}"), "setting 'template'"),
    ]:
        with pytest.raises(AutoPromptError, match=message):
            DemosConfig(**settings).check_task(task())
    DemosConfig(**ok, per_class=[4], selection=["dev_selected"], fixed_select_on="dev").check_task(task())


def _run(h, config: DemosConfig, tmp_path, trials: int):
    searcher = get_searcher("demos")(config)
    job = SearchJob(searcher, "demos-test", f"sqlite:///{tmp_path / 's.db'}", n_trials=trials, seed=13, progress=False,
                    task_info={"name": "toy", "label_names": LABELS}, model_info={"name": "tiny", "kind": h.kind})
    ctx = SearchContext(task(), h, 13)
    return finish_search(run_search(job, ctx), job, ctx, test_split="test", out=tmp_path / "best.json")


def test_search_space_grid_and_a_search_from_a_saved_prompt(make_harness, tmp_path):
    config = DemosConfig(template=TEMPLATE, label_words=WORDS, per_class=[0, 1], selection=["random", "similar"],
                         order=["balanced", "similar_last"], separator=[" "], calibration=["none", "content_free"])
    grid = config.grid()
    assert len(grid) == 2 + 3 * 2  # per_class 0 once per calibration; similar_last only with similar
    assert {"per_class": "0", "selection": "none", "order": "none", "separator": "none", "calibration": "none"} in grid
    h = make_harness(batch_size=4)
    found = Prompt([Template("{text_a} All in all, it was {mask}.")],
                   Verbalizer.from_words({"negative": ["awful"], "positive": ["fun"]}), label_names=LABELS)
    saved = found.save(tmp_path / "found.prompt")
    config = DemosConfig(prompt=str(saved), per_class=[1], selection=["random", "dev_selected"], order=["shuffled"],
                         separator=["\n"], calibration=["content_free"], fixed_candidates=2)
    result = _run(h, config, tmp_path, trials=2)
    prompt = result.prompt
    assert prompt.template.text == "{text_a} All in all, it was {mask}."  # the saved prompt's template and words
    assert prompt.verbalizer.label_words == (("awful",), ("fun",)) and prompt.verbalizer.calibration == "content_free"
    assert prompt.demonstrations is not None and prompt.demonstrations.separator == "\n"
    doc = json.loads((tmp_path / "best.json").read_text())
    assert doc["prompt"]["demonstrations"]["pool"][0]["text_a"] == TRAIN[0].text_a
    again = Prompt.load(tmp_path / "best.json").evaluate(DEV, h)
    assert again.predictions.tolist() == best_trial(result.study).user_attrs["~dev_predictions"]
    trials = {t.params["selection"]: t for t in result.study.trials}
    assert len(trials["dev_selected"].user_attrs["fixed_set_candidates"]) == 2
    from autoprompt_kit.search._runner import summary

    printed = summary(result.study, result.document, str(tmp_path / "best.json"))
    assert "demonstrations: " in printed and "separator '\\n' (from 8 train examples)" in printed
