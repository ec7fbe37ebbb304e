"""Harness mechanics on tiny random models of all three kinds: equality with a plain forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprompt_kit import AutoPromptError, Example, Harness, Split, Template, Verbalizer

ARCHS = ["bert", "gpt2", "gemma3", "t5"]
EXAMPLES = Split([
    Example("the movie was great and the acting was wonderful", 1),
    Example("a bad film with awful dialogue", 0),
    Example("brilliant , moving and funny", 1),
    Example("what a waste of time , truly awful", 0),
    Example("the story is dull", 0),
], name="tiny")
# "lovely" is not in the tiny vocabularies: it splits into several pieces.
VERB = Verbalizer.from_words({"negative": ["bad", "awful"], "positive": ["great", "lovely"]})


def plain_word_logprobs(h: Harness, template: Template, example: Example, words) -> torch.Tensor:
    """Reference: one unpadded forward per (example, word), full logits, no harness tricks."""
    enc = h.encoder.encode(template, example)
    model, out, dev = h.model, [], h.device
    for word in words:
        wids = list(h.encoder.word_ids(word, enc.space_before_mask))
        with torch.no_grad():
            if h.kind == "causal":
                prompt = h.encoder.special_prefix + list(enc.prefix)
                cont = wids + ([] if enc.mask_at_end else list(enc.suffix))
                ids = torch.tensor([prompt + cont[:-1]], device=dev)
                lp = model(input_ids=ids).logits.log_softmax(-1)[0]
                out.append(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(cont)))
            elif h.kind == "mlm":
                pre = h.encoder.special_prefix + list(enc.prefix)
                ids = torch.tensor([pre + [h.encoder.mask_id] * len(wids) + list(enc.suffix) + h.encoder.special_suffix],
                                   device=dev)
                lp = model(input_ids=ids).logits.log_softmax(-1)[0]
                out.append(sum(lp[len(pre) + j, t] for j, t in enumerate(wids)))
            else:
                ids = torch.tensor([list(enc.prefix) + [h.encoder.mask_id] + list(enc.suffix) + h.encoder.special_suffix],
                                   device=dev)
                dec = torch.tensor([[model.config.decoder_start_token_id, h.encoder.mask_id] + wids[:-1]], device=dev)
                lp = model(input_ids=ids, decoder_input_ids=dec).logits.log_softmax(-1)[0]
                out.append(sum(lp[1 + j, t] for j, t in enumerate(wids)))
    return torch.stack([torch.as_tensor(x).cpu() for x in out])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("text", ["{text_a} It was {mask}.", "{text_a} All in all, a {mask} movie overall!"])
def test_scores_equal_a_plain_forward(make_harness, arch, text):
    h = make_harness(arch, batch_size=3)
    template = Template(text)
    assert any(len(h.encoder.word_ids(w, True)) > 1 for w in VERB.flat_words), "need a multi-token word"
    got = h.score(EXAMPLES, template, VERB, exact=True).word_logprobs.cpu()
    expected = torch.stack([plain_word_logprobs(h, template, e, VERB.flat_words) for e in EXAMPLES])
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_label_rows_only_path_gives_the_same_class_scores(make_harness, arch):
    h = make_harness(arch)
    candidates = ["bad", "good", "great", "awful", "the", "was", "film", "movie", "and", "it", "of", "is", "a", "with"]
    single = [w for w in candidates if len(h.encoder.word_ids(w, True)) == 1][:4]
    assert len(single) == 4
    verb = Verbalizer.from_words({"negative": single[:2], "positive": single[2:]})
    template = Template("{text_a} It was {mask}.")
    fast = h.score(EXAMPLES, template, verb).word_logprobs
    exact = h.score(EXAMPLES, template, verb, exact=True).word_logprobs
    assert not torch.allclose(fast, exact)  # fast path is normalised over label words only…
    torch.testing.assert_close(verb.class_logprobs(fast), verb.class_logprobs(exact), atol=1e-5, rtol=1e-5)  # …same classes


@pytest.mark.parametrize("arch", ARCHS)
def test_batching_and_padding_do_not_change_scores(make_harness, arch):
    one = make_harness(arch, batch_size=1).score(EXAMPLES, "{text_a} It was {mask}.", VERB, exact=True)
    many = make_harness(arch, batch_size=16).score(EXAMPLES, "{text_a} It was {mask}.", VERB, exact=True)
    torch.testing.assert_close(one.word_logprobs, many.word_logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_streamed_chunks_give_the_same_scores_and_hidden_states(make_harness, arch):
    whole = make_harness(arch, batch_size=2)
    streamed = make_harness(arch, batch_size=2)
    streamed.stream_items = 2  # 5 examples → chunks of 2, 2, 1
    templates = ["{text_a} It was {mask}.", "{text_a} Overall {mask}"]
    # CUDA picks kernels by batch shape (fp32 too): the same rows in other batches agree to ~1e-2 there.
    tol = {"atol": 1e-5, "rtol": 1e-5} if whole.device.type == "cpu" else {"atol": 2e-2, "rtol": 1e-2}
    for exact in (False, True):
        for a, b in zip(whole.score_blocks([Template(t) for t in templates], [EXAMPLES, EXAMPLES[:3]], VERB,
                                           exact=exact, hidden=True),
                        streamed.score_blocks([Template(t) for t in templates], [EXAMPLES, EXAMPLES[:3]], VERB,
                                              exact=exact, hidden=True)):
            torch.testing.assert_close(a.word_logprobs, b.word_logprobs, **tol)
            torch.testing.assert_close(a.hidden, b.hidden, **tol)
    torch.testing.assert_close(whole.mask_hidden(EXAMPLES, templates[0]), streamed.mask_hidden(EXAMPLES, templates[0]),
                               **tol)
    assert whole.evaluate(EXAMPLES, templates[0], VERB).accuracy == streamed.evaluate(EXAMPLES, templates[0], VERB).accuracy


def test_tokenisation_cache_is_bounded_by_examples(make_harness):
    h = make_harness("gpt2")
    h.cache_items = 6
    for t in ["{text_a} It was {mask}.", "{text_a} Overall {mask}", "Review: {text_a} Verdict: {mask}."]:
        h.evaluate(EXAMPLES, t, VERB)
    # 5 examples per entry: only the newest entry fits in 6.
    assert sum(map(len, h.prompt_cache.entries.values())) <= 6 and len(h.prompt_cache.entries) == 1


def test_evaluate_many_equals_separate_evaluations(make_harness):
    h = make_harness("gpt2", batch_size=4)
    templates = ["{text_a} It was {mask}.", "{text_a} Overall {mask}", "Review: {text_a} Verdict: {mask}."]
    together = h.evaluate_many(EXAMPLES, templates, VERB)
    for t, res in zip(templates, together):
        alone = h.evaluate(EXAMPLES, t, VERB)
        assert (alone.predictions == res.predictions).all()
        assert abs(alone.accuracy - res.accuracy) < 1e-9
        torch.testing.assert_close(torch.tensor(alone.class_logprobs), torch.tensor(res.class_logprobs))


@pytest.mark.parametrize("arch", ARCHS)
def test_calibration_divides_by_the_content_free_prior(make_harness, arch):
    h = make_harness(arch)
    plain = h.evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB)
    cal = h.evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB.replace(calibration="content_free"))
    prior = h.class_prior("{text_a} It was {mask}.", VERB).cpu()
    assert cal.prior is not None
    torch.testing.assert_close(torch.tensor(cal.prior), prior)
    expected = torch.log_softmax(torch.tensor(plain.class_logprobs) - prior, dim=1)
    torch.testing.assert_close(torch.tensor(cal.class_logprobs), expected, atol=1e-5, rtol=1e-5)
    assert cal.n == len(EXAMPLES) and 0 <= cal.accuracy <= 1 and 0 <= cal.macro_f1 <= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_content_free_prior_of_a_template_with_only_spaces_after_the_field(make_harness, arch):
    # The empty content-free input leaves the prompt starting with the space before the triggers.
    h = make_harness(arch)
    template = Template("{text_a} {trigger*2} {mask}.").with_triggers([5, 6])
    prior = h.class_prior(template, VERB)
    assert prior.shape == (2,) and torch.isfinite(prior).all()
    cal = h.evaluate(EXAMPLES, template, VERB.replace(calibration="content_free"))
    assert cal.n == len(EXAMPLES)


FIVE = Verbalizer.from_words({"a": ["bad"], "b": ["great"], "c": ["fun"], "d": ["awful", "boring"], "e": ["lovely"]})
FIVE_SPLIT = Split([Example(e.text_a + suffix, (i + j) % 5) for j, suffix in enumerate(["", " !", " ."])
                    for i, e in enumerate(EXAMPLES)], name="five")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_content_free_calibration_with_five_classes(make_harness, arch):
    h = make_harness(arch)
    plain = h.evaluate(FIVE_SPLIT, "{text_a} It was {mask}.", FIVE)
    cal = h.evaluate(FIVE_SPLIT, "{text_a} It was {mask}.", FIVE.replace(calibration="content_free"))
    prior = h.class_prior("{text_a} It was {mask}.", FIVE).cpu()
    assert prior.shape == (5,) and cal.prior is not None
    torch.testing.assert_close(torch.tensor(cal.prior), prior)
    expected = torch.log_softmax(torch.tensor(plain.class_logprobs) - prior, dim=1)
    torch.testing.assert_close(torch.tensor(cal.class_logprobs), expected, atol=1e-5, rtol=1e-5)
    assert cal.predictions.tolist() == expected.argmax(1).tolist()
    assert cal.prediction_rate().shape == (5,)


def test_macro_f1_counts_classes_never_predicted():
    from autoprompt_kit.harness import classification_metrics

    y = np.array([0, 0, 1, 1, 2, 3, 4, 4])
    p = np.array([0, 0, 1, 1, 1, 3, 3, 4])   # class 2 is never predicted
    acc, f1 = classification_metrics(y, p, 5)
    # per class: 1.0; P 2/3 R 1 → 0.8; 0 (never predicted); P 1/2 R 1 → 2/3; P 1 R 1/2 → 2/3
    assert acc == 6 / 8 and f1 == pytest.approx((1 + 0.8 + 0 + 2 / 3 + 2 / 3) / 5)
    # Always the majority class: the four other classes count with F1 0.
    assert classification_metrics(y, np.zeros_like(y), 5)[1] == pytest.approx(0.4 / 5)
    # A predicted class the labels lack counts too (precision 0) ...
    assert classification_metrics(np.array([0, 1]), np.array([0, 2]), 5)[1] == pytest.approx(1 / 3)
    # ... but a class in neither (a subsample without it) has no F1 and is left out, not counted as 0.
    assert classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 2]), 5) == (1.0, 1.0)
    with pytest.raises(AutoPromptError, match="predictions must be class indices 0..4"):
        classification_metrics(y, p + 1, 5)


def test_metrics_are_accuracy_and_macro_f1(make_harness):
    res = make_harness("bert").evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB)
    from sklearn.metrics import f1_score

    assert res.accuracy == pytest.approx((res.predictions == EXAMPLES.labels).mean())
    assert res.macro_f1 == pytest.approx(f1_score(EXAMPLES.labels, res.predictions, average="macro"))
    assert res.class_logprobs.shape == (5, 2) and res.word_logprobs.shape == (5, 4)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
def test_mask_hidden_state_is_the_output_layer_input(make_harness, arch):
    h = make_harness(arch)
    template = Template("{text_a} It was {mask}.")
    hidden = h.mask_hidden(EXAMPLES, template)
    captured = []
    handle = h.head.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
    try:
        for i, example in enumerate(EXAMPLES):
            row = h.encoder.rows(0, h.encoder.encode(template, example), None)[0]
            kwargs = {"input_ids": torch.tensor([row.input_ids], device=h.device)}
            if row.decoder_input_ids:
                kwargs["decoder_input_ids"] = torch.tensor([row.decoder_input_ids], device=h.device)
            with torch.no_grad():
                h.model(**kwargs)
            torch.testing.assert_close(hidden[i], captured[-1][0, row.hidden_position], atol=1e-5, rtol=1e-5)
    finally:
        handle.remove()


def test_mask_logprobs_full_vocabulary(make_harness):
    h = make_harness("gpt2")
    full = h.mask_logprobs(EXAMPLES, "{text_a} It was {mask}.", reduce=None)
    assert full.shape == (5, len(h.tokenizer))
    torch.testing.assert_close(full.exp().sum(1), torch.ones(5))
    mean = h.mask_logprobs(EXAMPLES, "{text_a} It was {mask}.").cpu()
    torch.testing.assert_close(mean.exp(), full.exp().mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch, loss", [(a, "likelihood") for a in ARCHS] + [("gpt2", "cross_entropy")])
def test_embedding_gradient_matches_autograd_through_a_plain_forward(tiny_models, make_harness, arch, loss):
    h = make_harness(arch, batch_size=2)
    model, tok, _ = tiny_models[arch]
    trig = tok.convert_tokens_to_ids(tok.tokenize(" movie" if arch == "gpt2" else "movie"))[0]
    template = Template("{text_a} {trigger} {trigger} {mask}.").with_triggers([trig, trig])
    grads, mean_loss = h.embedding_gradient(EXAMPLES, template, VERB, loss=loss)
    assert grads.shape == (2, model.get_input_embeddings().weight.shape[1]) and grads.abs().sum() > 0

    emb = model.get_input_embeddings()
    expected = torch.zeros_like(grads)
    total = 0.0
    for example in EXAMPLES:
        enc = h.encoder.encode(template, example)
        words = [h.encoder.word_ids(w, enc.space_before_mask) for w in VERB.flat_words]
        rows = h.encoder.rows(0, enc, words)
        word_lp = torch.zeros(len(words), device=h.device)
        leaves = []
        for row in rows:
            e = emb(torch.tensor([row.input_ids], device=h.device)).detach().requires_grad_(True)
            kwargs = {"inputs_embeds": e}
            if row.decoder_input_ids:
                kwargs["decoder_input_ids"] = torch.tensor([row.decoder_input_ids], device=h.device)
            lp = model(**kwargs).logits.log_softmax(-1)[0]
            for pos, t, w in row.targets:
                word_lp = word_lp.index_add(0, torch.tensor([w], device=h.device), lp[pos, t].reshape(1))
            leaves.append((e, row))
        loss_i = -VERB.gold_logprob(word_lp[None], torch.tensor([example.label], device=h.device), loss)[0]
        total += float(loss_i.detach())
        gs = torch.autograd.grad(loss_i, [e for e, _ in leaves])
        for g, (_, row) in zip(gs, leaves):
            expected += g[0, row.trigger_positions]
    torch.testing.assert_close(grads, expected, atol=1e-4, rtol=1e-3)
    assert mean_loss == pytest.approx(total / len(EXAMPLES), rel=1e-4)


def test_train_lowers_the_loss_and_changes_predictions_scores(tiny_models):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok, _ = tiny_models["gpt2"]
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128))
    h = Harness(model, tok, kind="causal", progress=False)
    before = h.evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB)
    losses = h.train(EXAMPLES, "{text_a} It was {mask}.", VERB, model.parameters(), epochs=15, lr=3e-3, batch_size=2)
    after = h.evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB)
    assert losses[-1] < losses[0] * 0.5
    assert after.accuracy == 1.0 and after.accuracy >= before.accuracy
    assert not model.training


def test_train_with_a_custom_head_and_learned_word_weights(make_harness):
    h = make_harness("bert")
    weights = torch.nn.Parameter(torch.zeros(len(VERB.flat_words), device=h.device))
    losses = h.train(EXAMPLES, "{text_a} It was {mask}.", VERB, [weights], epochs=20, lr=0.1, batch_size=5,
                     head=lambda out: VERB.class_logprobs(out.word_logprobs, weights=weights))
    assert losses[-1] < losses[0]
    assert weights.grad is not None and weights.abs().sum() > 0


def test_soft_embeddings_replace_the_soft_token_inputs(make_harness):
    h = make_harness("gpt2")
    template = Template("{text_a} {soft} {soft} {mask}")
    base = h.score(EXAMPLES, template, VERB, exact=True).word_logprobs
    d = h.model.get_input_embeddings().weight.shape[1]
    soft = torch.nn.Parameter(torch.randn(2, d))
    moved = h.score(EXAMPLES, template, VERB, exact=True, soft_embeddings=soft).word_logprobs
    assert not torch.allclose(base, moved)
    with pytest.raises(AutoPromptError, match="2 soft tokens"):
        h.score(EXAMPLES, template, VERB, soft_embeddings=torch.zeros(3, d))


def test_long_inputs_are_truncated_to_the_model_length(make_harness):
    h = make_harness("gpt2", max_length=32)
    long = Split([Example("the movie was great " * 40, 1), Example("bad", 0)])
    res = h.evaluate(long, "{text_a} It was {mask}.", VERB)
    assert res.n == 2
    enc = h.encoder.encode(Template("{text_a} It was {mask}."), long[0])
    assert len(enc.prefix) + len(enc.suffix) <= 32


# -- bad input ---------------------------------------------------------------------------------

def test_precision_default_and_bad_value(tiny_models):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    assert h.precision == ("bf16" if h.device.type == "cuda" else "fp32")
    assert Harness(model, tok, kind=kind, progress=False, precision="bf16", device="cpu").evaluate(
        EXAMPLES, "{text_a} It was {mask}.", VERB).n == len(EXAMPLES)  # bf16 autocast runs on the CPU too
    with pytest.raises(AutoPromptError, match="precision must be 'bf16' or 'fp32'"):
        Harness(model, tok, kind=kind, progress=False, precision="fp16")


def test_label_word_that_tokenizes_to_nothing(make_harness):
    h = make_harness("bert")
    with pytest.raises(AutoPromptError, match="tokenizes to nothing"):
        h.evaluate(EXAMPLES, "{text_a} It was {mask}.", {"negative": "bad", "positive": "\u0301"})


def test_verbalizer_labels_must_match_the_task(make_harness):
    h = make_harness("bert")
    with pytest.raises(AutoPromptError, match="do not match"):
        h.evaluate(EXAMPLES, "{text_a} {mask}", {"neg": "bad", "pos": "great"}, label_names=["negative", "positive"])
    three = Split([Example("x", 2), Example("y", 0)])
    with pytest.raises(AutoPromptError, match="label 2 but the verbalizer has only 2"):
        h.evaluate(three, "{text_a} {mask}", VERB)


def test_empty_split_and_unknown_field(make_harness):
    h = make_harness("gpt2")
    with pytest.raises(AutoPromptError, match="empty"):
        h.evaluate(Split([], name="dev"), "{text_a} {mask}", VERB)
    with pytest.raises(AutoPromptError, match="unknown field"):
        h.evaluate(EXAMPLES, "{text_a} {text_b} {mask}", VERB)


def test_unknown_model_name():
    with pytest.raises(AutoPromptError, match="unknown model 'no/such-model-anywhere'"):
        Harness("no/such-model-anywhere")


def test_embedding_gradient_needs_a_trigger(make_harness):
    with pytest.raises(AutoPromptError, match="no {trigger} slot"):
        make_harness("gpt2").embedding_gradient(EXAMPLES, "{text_a} {mask}", VERB)
