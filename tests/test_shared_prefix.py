"""Shared-prefix scoring (causal LMs): the prefix runs once, the scores stay those of whole rows.

Every check compares against the same harness with ``shared_prefix = False`` (whole rows) and,
for the tiny models, against one unpadded forward per row with full logits. The tiny Gemma 3 has
a 16-token sliding window on its first layer, so prefixes shorter and longer than the window and
suffixes that cross it are all exercised (asserted below, not assumed).
"""

from __future__ import annotations

import pytest
import torch

from autoprompt_kit import Example, Harness, Split, Template, Verbalizer
from autoprompt_kit.harness import Row
from autoprompt_kit.harness.prefix import common_prefix_length, group_by_prefix, read_limit
from autoprompt_kit.methods.autoprompt import TriggerSearch

EXAMPLES = Split([
    Example("the movie was great and the acting was wonderful", 1),
    Example("a bad film with awful dialogue", 0),
    Example("brilliant , moving and funny", 1),
    Example("what a waste of time , truly awful", 0),
    Example("the story is dull but the music is nice and the cast is fine", 0),
    Example("i loved the ending", 1),
], name="tiny")
VERB = Verbalizer.from_words({"negative": ["bad", "awful"], "positive": ["great", "lovely"]})  # "lovely": several tokens
DEMOS = ("the movie was great . it was great . the film was terrible . it was awful . "
         "a good movie with a fine cast . it was great .")
TEMPLATES = {
    # every template starts with the review: rows of one example share it across templates
    "text_a first": ["{text_a} It was {mask}.", "{text_a} all in all , the movie was {mask} .",
                     "{text_a} the story is {mask}", "{text_a} {mask} !"],
    # a fixed demonstration block (longer than the tiny Gemma's window) before every example
    "demonstrations": [DEMOS + " {text_a} it was {mask} .", DEMOS + " {text_a} overall , {mask} fun to watch ."],
}


def count_tokens(h: Harness) -> dict[str, int]:
    """Counts the tokens the model embeds (every forward pass goes through the input embeddings)."""
    seen = {"tokens": 0}

    def hook(module, args):
        seen["tokens"] += args[0].numel()

    h.model.get_input_embeddings().register_forward_pre_hook(hook)
    return seen


def rows_of(h: Harness, templates: list[Template], examples, verbalizer: Verbalizer) -> list[Row]:
    rows: list[Row] = []
    for t in templates:
        for e in examples:
            enc = h.encoder.encode(t, e)
            rows.extend(h.encoder.rows(len(rows), enc, [h.encoder.word_ids(w, enc.space_before_mask)
                                                         for w in verbalizer.flat_words]))
    return rows


def whole_row_reference(h: Harness, template: Template, example: Example, verbalizer: Verbalizer) -> torch.Tensor:
    """One unpadded forward per word with full logits: no batching, no cache, no head swap."""
    enc = h.encoder.encode(template, example)
    prompt = h.encoder.special_prefix + list(enc.prefix)
    out = []
    for word in verbalizer.flat_words:
        cont = list(h.encoder.word_ids(word, enc.space_before_mask)) + ([] if enc.mask_at_end else list(enc.suffix))
        with torch.no_grad():
            lp = h.model(input_ids=torch.tensor([prompt + cont[:-1]], device=h.device)).logits.log_softmax(-1)[0]
        out.append(sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont)))
    return torch.tensor(out)


# -- grouping ------------------------------------------------------------------------------------

def _row(ids: list[int], read_at: int | None = None) -> Row:
    read = len(ids) - 1 if read_at is None else read_at
    return Row(0, ids, None, [(read, 1, 0)], read)


def test_common_prefix_length_compares_token_ids():
    assert common_prefix_length([1, 2, 3, 4], [1, 2, 9, 4], 10) == 2
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4], 10) == 3
    assert common_prefix_length([1, 2, 3], [1, 2, 3], 2) == 2
    assert common_prefix_length(list(range(300)), list(range(299)) + [-1], 1000) == 299
    assert common_prefix_length([5], [6], 10) == 0


def test_grouping_skips_the_most_tokens_and_respects_the_minimum_and_read_positions():
    long = list(range(100, 200))
    a, b = _row(long + [1, 2]), _row(long + [3, 4])            # share 100 tokens
    c = _row(long[:20] + [7, 8, 9])                            # shares 20 with a and b
    d = _row([900, 901, 902])                                  # shares nothing
    groups, rest = group_by_prefix([c, a, d, b], min_length=8)
    # one group of a, b at 100 skips 100 tokens; one of a, b, c at 20 only 40
    assert [(g.length, {id(r) for r in g.rows}) for g in groups] == [(100, {id(a), id(b)})]
    assert {id(r) for r in rest} == {id(c), id(d)}

    # five rows sharing 20 tokens, pairs of them 25: one group of five skips 80 > 2 × 25
    base = list(range(500, 520))
    many = [_row(base + [p] * 5 + [1000 + i, 0]) for i, p in enumerate((1, 1, 2, 2, 3))]
    groups, rest = group_by_prefix(many, min_length=8)
    assert len(groups) == 1 and groups[0].length == 20 and not rest

    # shorter than the minimum: nothing grouped; a read position caps the prefix
    assert group_by_prefix([_row([1, 2, 3, 4, 5]), _row([1, 2, 3, 4, 6])], min_length=8)[0] == []
    capped = [_row(long + [1], read_at=30), _row(long + [2], read_at=40)]
    groups, _ = group_by_prefix(capped, min_length=8)
    assert groups[0].length == 30 == min(read_limit(r) for r in capped)


def test_every_group_shares_its_prefix_token_ids_and_reads_after_it(make_harness):
    h = make_harness("gemma3")
    rows = rows_of(h, [Template(t) for ts in TEMPLATES.values() for t in ts], EXAMPLES, VERB)
    groups, rest = group_by_prefix(rows, h.shared_prefix_min)
    assert groups and len(rest) < len(rows) // 4
    for g in groups:
        assert len(g.rows) >= 2 and g.length >= h.shared_prefix_min
        assert all(r.input_ids[:g.length] == g.prefix for r in g.rows)
        assert all(g.length <= read_limit(r) for r in g.rows)


# -- exactness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
@pytest.mark.parametrize("case", list(TEMPLATES))
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_prefix_scores_equal_whole_rows(make_harness, arch, case, batch_size):
    h = make_harness(arch, batch_size=batch_size)
    seen = count_tokens(h)
    templates = [Template(t) for t in TEMPLATES[case]]
    blocks = [EXAMPLES] * len(templates)
    h.shared_prefix = False
    whole = h.score_blocks(templates, blocks, VERB, exact=True, hidden=True)
    whole_tokens, seen["tokens"] = seen["tokens"], 0
    h.shared_prefix = True
    shared = h.score_blocks(templates, blocks, VERB, exact=True, hidden=True)
    assert seen["tokens"] < 0.6 * whole_tokens, "the prefix cache was not used"
    for t, a, b in zip(templates, whole, shared):
        assert (a.word_logprobs - b.word_logprobs).abs().max() <= 1e-4
        assert (a.hidden - b.hidden).abs().max() <= 1e-4
        reference = torch.stack([whole_row_reference(h, t, e, VERB) for e in EXAMPLES])
        torch.testing.assert_close(b.word_logprobs.cpu(), reference, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_long_prefixes_and_long_suffixes_in_one_pass_stay_inside_the_position_table(make_harness, arch):
    # Every row fits the model's 128 positions, but a batch mixes rows with a ~60-token cached
    # prefix and rows whose suffix is ~60 tokens: padding each row's suffix to the batch's widest
    # must not number its pads past the position table (GPT-2's absolute embeddings index it).
    h = make_harness(arch, batch_size=16)
    limit = h.model.config.max_position_embeddings if arch == "gemma3" else h.model.config.n_positions
    tail = " ".join(["and the cast was fine"] * 8)
    templates = [Template(tail + " {text_a} it was {mask} ."), Template(tail + " {text_a} overall {mask} !"),
                 Template("{text_a} it was {mask} . " + tail), Template("{text_a} {mask} ! " + tail)]
    rows = rows_of(h, templates, EXAMPLES, VERB)
    groups, _ = group_by_prefix(rows, h.shared_prefix_min)
    longest = max(len(r.input_ids) for r in rows)
    assert longest <= limit < max(g.length for g in groups) + max(len(r.input_ids) - g.length for g in groups
                                                                    for r in g.rows)
    h.shared_prefix = False
    whole = h.score_blocks(templates, [EXAMPLES] * len(templates), VERB, exact=True)
    h.shared_prefix = True
    seen = count_tokens(h)
    shared = h.score_blocks(templates, [EXAMPLES] * len(templates), VERB, exact=True)
    assert seen["tokens"] < sum(len(r.input_ids) for r in rows), "the prefix cache was not used"
    for a, b in zip(whole, shared):
        assert (a.word_logprobs - b.word_logprobs).abs().max() <= 1e-4


def test_the_tiny_gemma_cases_cross_its_sliding_window(make_harness):
    h = make_harness("gemma3")
    window = h.model.config.sliding_window
    rows = rows_of(h, [Template(t) for ts in TEMPLATES.values() for t in ts], EXAMPLES, VERB)
    groups, _ = group_by_prefix(rows, h.shared_prefix_min)
    assert any(g.length < window < max(len(r.input_ids) for r in g.rows) for g in groups)  # suffix crosses it
    assert any(g.length > window for g in groups)                                           # prefix longer than it


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_evaluate_many_and_a_demonstration_block_give_the_same_results(make_harness, arch):
    h = make_harness(arch, batch_size=4)
    templates = TEMPLATES["text_a first"] + TEMPLATES["demonstrations"]
    verb = Verbalizer.from_words({"negative": ["bad"], "positive": ["great"]}, calibration="content_free")
    h.shared_prefix = False
    whole = h.evaluate_many(EXAMPLES, templates, verb)
    h.shared_prefix = True
    shared = h.evaluate_many(EXAMPLES, templates, verb)
    for a, b in zip(whole, shared):
        assert (a.predictions == b.predictions).all()
        assert abs(a.class_logprobs - b.class_logprobs).max() <= 1e-4
        assert abs(a.prior - b.prior).max() <= 1e-4


def test_streamed_chunks_keep_each_examples_templates_together(make_harness):
    h = make_harness("gpt2", batch_size=4)
    seen = count_tokens(h)
    templates = [Template(t) for t in TEMPLATES["text_a first"]]
    h.shared_prefix = False
    whole = h.score_blocks(templates, [EXAMPLES] * len(templates), VERB, exact=True)
    whole_tokens, seen["tokens"] = seen["tokens"], 0
    h.shared_prefix = True
    h.stream_items = 8  # 24 items: chunks of 2 examples × 4 templates
    streamed = h.score_blocks(templates, [EXAMPLES] * len(templates), VERB, exact=True)
    assert seen["tokens"] < 0.6 * whole_tokens
    for a, b in zip(whole, streamed):
        assert (a.word_logprobs - b.word_logprobs).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_autoprompt_candidate_losses_are_unchanged(make_harness, arch):
    h = make_harness(arch, batch_size=4)
    ids = list(range(20, 32))
    base = Template("{text_a} {trigger*3} {mask}.").with_triggers(ids[:3])
    # candidates for the last slot: every candidate shares review + two triggers with the others
    trials = [base] + [base.with_triggers(ids[:2] + [c]) for c in ids[3:]]
    search = TriggerSearch(h, VERB, num_candidates=len(trials) - 1, batch_size=len(EXAMPLES))
    h.shared_prefix = False
    whole = search.losses(trials, EXAMPLES)
    h.shared_prefix = True
    shared = search.losses(trials, EXAMPLES)
    assert max(abs(a - b) for a, b in zip(whole, shared)) <= 1e-4
    assert len(set(round(x, 4) for x in shared)) > 1  # the candidates really differ


def test_gradients_keep_the_whole_row_path(make_harness):
    h = make_harness("gpt2")
    seen = count_tokens(h)
    template = TEMPLATES["demonstrations"][0]
    h.shared_prefix = False
    h.score(EXAMPLES, template, VERB, grad=True)
    whole, seen["tokens"] = seen["tokens"], 0
    h.shared_prefix = True
    h.score(EXAMPLES, template, VERB, grad=True)
    assert seen["tokens"] == whole
    seen["tokens"] = 0
    h.score(EXAMPLES, template, VERB)
    assert seen["tokens"] < 0.6 * whole  # the same rows without gradients do share the prefix


@pytest.mark.slow
def test_real_gemma_shared_prefix_scores_equal_whole_rows(real_harness):
    from autoprompt_kit import load_task

    h = real_harness
    task = load_task("mr", shots=4, seed=13)
    demos = " ".join(f"{e.text_a} It was {['terrible', 'great'][e.label]}." for e in task.train
                     if "{" not in e.text_a and "}" not in e.text_a)
    templates = ["{text_a} It was {mask}.", "{text_a} And it's {mask}.", "{text_a} All in all, the film was {mask} to watch.",
                 demos + " {text_a} It was {mask}."]
    verb = Verbalizer.from_words({"negative": ["terrible", "a waste of time"], "positive": ["great", "worth it"]})
    split = load_task("mr").test[:12]
    previous = h.shared_prefix
    try:
        h.shared_prefix = False
        whole = h.score_blocks([Template(t) for t in templates], [split] * len(templates), verb, exact=True, hidden=True)
        h.shared_prefix = True
        shared = h.score_blocks([Template(t) for t in templates], [split] * len(templates), verb, exact=True, hidden=True)
    finally:
        h.shared_prefix = previous
    for a, b in zip(whole, shared):
        assert (a.word_logprobs - b.word_logprobs).abs().max() <= 1e-4
        assert (a.hidden.float() - b.hidden.float()).abs().max() <= 2e-4  # measured 3.8e-5 (24 reviews)
