"""``Harness.score_cache``: mask states kept across calls give the same scores as recomputing them
(every kind, both precisions, calibration and ensembles), and ``select`` trials reuse them."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from autoprompt_kit.data import Example, Split

TEXTS = ["the movie was great and the acting was wonderful", "the film was terrible and the plot was boring",
         "it was a good movie with a fine cast", "a bad film with awful dialogue", "brilliant , moving and funny",
         "what a waste of time , truly awful", "not good , not bad , just okay", "i loved the ending"]
SPLIT = Split([Example(t, i % 2) for i, t in enumerate(TEXTS)], name="dev", label_names=["negative", "positive"])
TEMPLATES = {"mlm": ["{text_a} it was [MASK] .".replace("[MASK]", "{mask}"), "{text_a} . the film is {mask} ."],
             "causal": ["{text_a} It was {mask}", "{text_a} Overall the film is {mask}"],
             "seq2seq": ["{text_a} it was {mask} .", "{text_a} the film is {mask} ."]}
WORDS = [{"negative": ["bad"], "positive": ["great"]}, {"negative": ["awful", "boring"], "positive": ["good"]}]


def _runs(h, kind, calibration):
    out = []
    for words in WORDS:
        verb = {"label_words": words, "calibration": calibration}
        for template in TEMPLATES[kind]:
            out.append(h.evaluate(SPLIT, template, verb))
        out += h.evaluate_many(SPLIT, TEMPLATES[kind], verb)
    return out


@pytest.mark.parametrize("arch", ["bert", "gpt2", "gemma3", "t5"])
@pytest.mark.parametrize("calibration", ["none", "content_free"])
def test_kept_states_score_as_a_fresh_pass(tiny_models, make_harness, arch, calibration):
    h = make_harness(arch, batch_size=3, device="cpu")
    kind = tiny_models[arch][2]
    fresh = _runs(h, kind, calibration)
    store: OrderedDict = OrderedDict()
    with h.score_cache(store):
        first = _runs(h, kind, calibration)
        again = _runs(h, kind, calibration)
    for a, b, c in zip(fresh, first, again):
        assert np.array_equal(a.predictions, b.predictions) and np.array_equal(a.predictions, c.predictions)
        np.testing.assert_allclose(a.word_logprobs, b.word_logprobs, atol=2e-5)
        np.testing.assert_allclose(a.word_logprobs, c.word_logprobs, atol=2e-5)
        assert a.accuracy == c.accuracy
    # Words are single tokens here: after the first word set every (template, example) was kept.
    assert h.score_cache_stats["hits"] >= 2 * h.score_cache_stats["misses"] > 0
    assert len(store) > 0 and h._hidden_store is None  # outside the block nothing is kept on the harness


def test_bf16_predictions_equal_with_the_cache(make_harness):
    h = make_harness("gemma3", precision="bf16", batch_size=3, device="cpu")
    fresh = _runs(h, "causal", "content_free")
    with h.score_cache():
        _runs(h, "causal", "content_free")
        again = _runs(h, "causal", "content_free")
    for a, b in zip(fresh, again):
        assert np.array_equal(a.predictions, b.predictions)
        # bf16 sums depend on the batch a row ran in (one ulp of a score ~11 is ~0.03): close, same decisions.
        np.testing.assert_allclose(a.word_logprobs, b.word_logprobs, atol=0.05)


def test_words_read_past_the_mask_are_kept_per_word(make_harness):
    """Multi-token words and text after a causal LM's mask: every word's score is a full-vocabulary
    log-probability of its own, kept per (template, example, word); a new word set runs only its new words."""
    h = make_harness("gpt2", batch_size=3, device="cpu")
    template = "{text_a} It was {mask}."
    first = {"negative": ["terrible acting"], "positive": ["wonderful"]}
    second = {"negative": ["terrible acting"], "positive": ["fine"]}
    fresh = [h.evaluate(SPLIT, template, v) for v in (first, second)]
    with h.score_cache():
        cached = [h.evaluate(SPLIT, template, v) for v in (first, second)]
    assert h.score_cache_stats == {"hits": 8, "misses": 24}  # the second set's "terrible acting" was kept
    for a, b in zip(fresh, cached):
        np.testing.assert_array_equal(a.predictions, b.predictions)
        np.testing.assert_allclose(a.word_logprobs, b.word_logprobs, atol=2e-5)


def test_select_trials_reuse_states_with_the_same_values(make_harness, tmp_path):
    import optuna

    from autoprompt_kit.data import load_task
    from autoprompt_kit.methods.select import SelectConfig, TemplateSelection
    from autoprompt_kit.search import SearchContext

    task = load_task("mr", shots=4, seed=13, max_examples=40)
    config = SelectConfig(templates=["{text_a} It was {mask}.", "{text_a} All in all {mask}."],
                          label_words=[{"negative": ["bad"], "positive": ["good"]},
                                       {"negative": ["terrible"], "positive": ["great"]}],
                          calibration=["none", "content_free"], ensembles=["uniform"])
    values = {}
    for on in (False, True):
        h = make_harness("gpt2", batch_size=3, device="cpu")
        searcher = TemplateSelection(config)
        searcher.score_cache = on
        ctx = SearchContext(task=task, harness=h, seed=13)
        study = optuna.create_study(direction="maximize")
        for point in config.grid():
            study.enqueue_trial(point)
        trials = []
        for _ in config.grid():
            trial = study.ask()
            outcome = searcher.run_trial(trial, ctx)
            trials.append((tuple(sorted(trial.params.items())), outcome.dev.accuracy,
                           outcome.dev.predictions.tolist()))
        values[on] = trials
        if on:
            assert h.score_cache_stats["hits"] > h.score_cache_stats["misses"] > 0
    assert values[True] == values[False]


def test_lmbff_trials_reuse_the_rankings_scores(make_harness):
    """Zero-shot LM-BFF: the dev ranking of the generated templates keeps their scores, the trials
    (which re-score the top templates) run no model pass, and every outcome equals a fresh pass's."""
    from autoprompt_kit.data import Task
    from autoprompt_kit.methods.lmbff import LMBFFConfig
    from autoprompt_kit.search import SearchContext, get_searcher

    labels = ["negative", "positive"]
    task = Task("toy", labels, {"train": SPLIT[:6], "dev": SPLIT, "test": SPLIT})
    config = LMBFFConfig(label_words={"negative": ["bad"], "positive": ["great"]}, beam=4, max_span_tokens=2,
                         keep_generated=6, top_n=2, ascii_only=False, calibration=["content_free", "none"])
    outcomes = {}
    for on in (False, True):
        h = make_harness("gpt2", batch_size=3, device="cpu")
        searcher = get_searcher("lmbff")(config)
        searcher.score_cache = on
        ctx = SearchContext(task, h, 13)
        art = searcher.run_generation(ctx)
        ranked_misses = h.score_cache_stats["misses"]
        searcher.templates, searcher.words = art["trial_templates"], art["trial_words"]
        import optuna

        study = optuna.create_study(direction="maximize")
        rows = []
        for point in searcher.grid():
            study.enqueue_trial(point)
            trial = study.ask()
            out = searcher.run_trial(trial, ctx)
            rows.append((out.dev.accuracy, out.dev.predictions.tolist()))
        outcomes[on] = (art["generated_templates"], rows)
        if on:
            # Every trial's template was ranked on dev already: no trial ran a model pass.
            assert h.score_cache_stats["misses"] == ranked_misses > 0 and h.score_cache_stats["hits"] > 0
    assert outcomes[True] == outcomes[False]
