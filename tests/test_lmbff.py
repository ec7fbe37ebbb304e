"""LM-BFF on tiny random models: generation scores equal plain forwards, span → template mapping,
label-word search agrees with the harness, demonstrations, fine-tuning restore, the study."""

from __future__ import annotations

import json

import pytest
import torch

from autoprompt_kit import AutoPromptError, Example, Split, Template, Verbalizer
from autoprompt_kit.data import Task
from autoprompt_kit.demonstrations import SentenceEncoder, add_demonstrations, demonstration_template
from autoprompt_kit.methods.lmbff import (CausalTemplateGenerator, LMBFFConfig, Seq2SeqTemplateGenerator,
                                          label_word_search, prompt_finetune, restored_weights, search_assignments)
from autoprompt_kit.search import SearchContext, SearchJob, build_best_json, get_searcher, run_search

LABELS = ["negative", "positive"]
TRAIN = Split([Example(t, y) for t, y in [
    ("the movie was great and the acting was wonderful", 1), ("a bad film with awful dialogue", 0),
    ("brilliant , moving and funny", 1), ("what a waste of time , truly awful", 0),
    ("it was a good movie with a fine cast", 1), ("the story is dull", 0),
]], name="train", label_names=LABELS)
DEV = Split([Example(t, y) for t, y in [("i loved the ending", 1), ("the film was terrible and the plot was boring", 0),
                                        ("overall it was great fun to watch", 1), ("not good", 0)]],
            name="dev", label_names=LABELS)
WORDS = {"negative": ["bad"], "positive": ["good"]}


def plain_causal_score(h, example, span_ids, word):
    """log p(span | s) + log p(first token of word | s, span) with one unpadded, uncached forward."""
    prefix = list(h.encoder.special_prefix) + list(h.encoder.tokenize(example.text_a))
    target = list(span_ids) + [h.encoder.word_ids(word, True)[0]]
    ids = torch.tensor([prefix + target], device=h.device)
    with torch.no_grad():
        logp = torch.log_softmax(h.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(target))


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_causal_generation_scores_equal_plain_forwards(make_harness, arch):
    h = make_harness(arch, batch_size=4)
    verbalizer = Verbalizer.from_words(WORDS)
    gen = CausalTemplateGenerator(h, beam=6, max_span_tokens=3, ascii_only=False)
    out = gen.generate(TRAIN, verbalizer, keep=10)
    assert out and all(g.template.startswith("{text_a}") and g.template.endswith("{mask}.") for g in out)
    assert [g.score for g in out] == sorted((g.score for g in out), reverse=True)
    for g in out[:4]:
        span = h.tokenizer.convert_tokens_to_ids(g.span_tokens)
        expected = sum(plain_causal_score(h, ex, span, verbalizer.label_words[ex.label][0]) for ex in TRAIN)
        assert g.score == pytest.approx(expected, abs=1e-3)
        Template(g.template)  # every generated template parses


def test_causal_generation_with_full_beam_finds_the_best_one_token_span(make_harness):
    h = make_harness("gpt2", batch_size=4)
    verbalizer = Verbalizer.from_words(WORDS)
    gen = CausalTemplateGenerator(h, beam=1000, max_span_tokens=1, ascii_only=False)
    best = gen.generate(TRAIN, verbalizer, keep=1)[0]
    allowed = [i for i in range(len(h.tokenizer)) if gen.template_text([i]) == best.template or True]
    scores = {}
    from autoprompt_kit.methods.lmbff import span_token_mask

    mask = span_token_mask(h, ascii_only=False)
    for i in allowed:
        if mask[i]:
            scores[gen.template_text([i])] = max(scores.get(gen.template_text([i]), -1e9), sum(
                plain_causal_score(h, ex, [i], verbalizer.label_words[ex.label][0]) for ex in TRAIN))
    top = max(scores, key=scores.get)
    assert best.template == top and best.score == pytest.approx(scores[top], abs=1e-3)


def test_seq2seq_sources_and_span_mapping(make_harness):
    h = make_harness("t5", batch_size=4)
    gen = Seq2SeqTemplateGenerator(h, beam=4, max_tokens=5)
    ex = Example("a fine film", 1, text_b="i agree")
    assert gen.source(ex, "good", "after") == "a fine film <extra_id_0> good <extra_id_1>"
    assert gen.source(ex, "good", "before") == "<extra_id_0> good <extra_id_1> a fine film"
    assert gen.source(ex, "good", "pair") == "a fine film <extra_id_0> good <extra_id_1> i agree"
    tok = h.tokenizer
    x, y = tok.encode("it was", add_special_tokens=False), tok.encode(".", add_special_tokens=False)
    s1 = gen.sentinels[1]
    assert gen.template_text(x + [s1] + y, "after") == "{text_a} it was {mask}."
    assert gen.template_text(x + [s1] + y, "before") == "it was {mask}. {text_a}"
    assert gen.template_text(x + [s1], "pair") == "{text_a} it was {mask} {text_b}"
    assert gen.template_text([s1] + x, "after") == "{text_a} {mask} it was"
    with pytest.raises(AutoPromptError, match="unknown template format"):
        gen.source(ex, "good", "middle")


def test_seq2seq_beam_scores_equal_summed_decoder_likelihoods(make_harness):
    h = make_harness("t5", batch_size=4)
    gen = Seq2SeqTemplateGenerator(h, beam=5, max_tokens=4, ascii_only=False)
    verbalizer = Verbalizer.from_words(WORDS)
    out = gen.generate(TRAIN, verbalizer, ["after"], keep=5)
    assert out
    tok = h.tokenizer
    for g in out[:3]:
        target = tok.convert_tokens_to_ids(g.span_tokens)           # <extra_id_0> is forced, not scored
        total = 0.0
        for ex in TRAIN:
            src = tok(gen.source(ex, verbalizer.label_words[ex.label][0], "after"), return_tensors="pt").to(h.device)
            dec = torch.tensor([[h.encoder.decoder_start_id, gen.sentinels[0]] + target[:-1]], device=h.device)
            with torch.no_grad():
                logp = torch.log_softmax(h.model(**src, decoder_input_ids=dec).logits[0].float(), -1)
            total += sum(float(logp[1 + j, t]) for j, t in enumerate(target))
        assert g.score == pytest.approx(total, abs=1e-3)
        Template(g.template)


def test_label_word_search_agrees_with_the_harness(make_harness):
    h = make_harness("bert", batch_size=4)
    result = label_word_search(h, TRAIN, DEV, "{text_a} it was {mask} .", LABELS, k=6, n_assignments=4)
    assert len(result.per_class) == 2 and all(len(c) == 6 for c in result.per_class)
    assert len(result.ranked) == 4
    for r in result.ranked:
        words = r["words"]
        assert words["negative"] != words["positive"]
        verbalizer = Verbalizer.from_words({k: [v] for k, v in words.items()})
        assert h.evaluate(TRAIN, "{text_a} it was {mask} .", verbalizer).accuracy == pytest.approx(r["train_accuracy"])
        assert h.evaluate(DEV, "{text_a} it was {mask} .", verbalizer).accuracy == pytest.approx(r["dev_accuracy"])
    best = result.ranked[0]
    assert result.verbalizer.label_words == ((best["words"]["negative"],), (best["words"]["positive"],))
    assert best["dev_accuracy"] == max(r["dev_accuracy"] for r in result.ranked)


def many_class_split(num_classes: int, per_class: int, name: str) -> Split:
    """A synthetic split: distinct two-sentence texts from the tokenizer corpus, classes round-robin."""
    sentences = [e.text_a for e in TRAIN] + [e.text_a for e in DEV]
    texts = [f"{a} {b}" for a in sentences for b in sentences if a != b]
    offset = 0 if name == "train" else num_classes * per_class
    examples = [Example(texts[offset + i], i % num_classes) for i in range(num_classes * per_class)]
    return Split(examples, name=name, label_names=[f"c{i}" for i in range(num_classes)])


def test_beam_search_equals_exhaustive_for_few_classes(make_harness):
    h = make_harness("bert", batch_size=4)
    train, dev = many_class_split(3, 4, "train"), many_class_split(3, 3, "dev")
    names = train.label_names
    exhaustive = label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=6, n_assignments=8,
                                   strategy="exhaustive")
    words = [set(c) for c in exhaustive.per_class]
    distinct = sum(len({a, b, c}) == 3 for a in exhaustive.per_class[0] for b in exhaustive.per_class[1]
                   for c in exhaustive.per_class[2])
    assert exhaustive.strategy == "exhaustive" and exhaustive.scored == distinct and all(len(w) == 6 for w in words)
    # A beam that never prunes before the last class (>= k^(C-1)) sees every assignment: same ranking.
    covering = label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=6, n_assignments=8,
                                 strategy="beam", beam=36)
    assert covering.strategy == "beam" and covering.ranked == exhaustive.ranked
    # The default beam (and auto, which is exhaustive here: 6^3 <= 20,000) find the same best assignment.
    narrow = label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=6, n_assignments=8,
                               strategy="beam", beam=4)
    auto = label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=6, n_assignments=8)
    assert auto.strategy == "exhaustive" and auto.ranked == exhaustive.ranked
    best = max(exhaustive.ranked, key=lambda r: r["train_accuracy"])["train_accuracy"]
    assert max(r["train_accuracy"] for r in narrow.ranked) == best


def test_label_word_search_many_classes_is_fast_with_distinct_words(make_harness):
    h = make_harness("bert", batch_size=4)
    train, dev = many_class_split(8, 3, "train"), many_class_split(8, 2, "dev")
    names = train.label_names
    result = label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=10, n_assignments=5)
    assert result.strategy == "beam"                        # 10^8 assignments: never enumerated
    assert result.scored < 50_000 and result.seconds < 10.0
    assert len(result.ranked) == 5
    for r in result.ranked:
        assert len(set(r["words"].values())) == 8 and list(r["words"]) == names
        verbalizer = Verbalizer.from_words({k: [v] for k, v in r["words"].items()})
        assert h.evaluate(train, "{text_a} it was {mask} .", verbalizer).accuracy == pytest.approx(r["train_accuracy"])
    with pytest.raises(AutoPromptError, match="would score 100,000,000 assignments"):
        label_word_search(h, train, dev, "{text_a} it was {mask} .", names, k=10, strategy="exhaustive")
    with pytest.raises(AutoPromptError, match="label_search_strategy must be one of"):
        label_word_search(h, train, dev, "{text_a} it was {mask} .", names, strategy="greedy")


def test_beam_search_finds_a_planted_assignment():
    """Six classes, eight candidates each: only one assignment separates every example; beam finds it."""
    torch.manual_seed(0)
    num, k, per = 6, 8, 5
    labels = torch.arange(num).repeat_interleave(per).numpy()
    lp = torch.randn(len(labels), num * k) * 0.1
    planted = torch.randint(k, (num,))
    for i, y in enumerate(labels):
        lp[i, y * k + planted[y]] += 3.0                      # the planted word of the gold class wins
    cand = torch.arange(num * k).reshape(num, k)
    found = search_assignments(lp, labels, cand, 3, strategy="beam", beam=10)
    assert found.strategy == "beam" and torch.equal(found.combos[0], planted)
    assert float(found.accuracy[0]) == 1.0 and found.scored < k ** num / 100
    assert search_assignments(lp, labels, cand, 3).strategy == "beam"   # auto: 8^6 > 20,000


def test_label_word_search_needs_every_class(make_harness):
    h = make_harness("bert", batch_size=4)
    with pytest.raises(AutoPromptError, match="no train example of class"):
        label_word_search(h, TRAIN[[0, 2]], DEV, "{text_a} it was {mask} .", LABELS)


def test_demonstrations_one_per_class_never_itself(tiny_models, make_harness, tmp_path):
    verbalizer = Verbalizer.from_words(WORDS)
    out = add_demonstrations(TRAIN, TRAIN, "{text_a} It was {mask}.", verbalizer, seed=0)
    for ex, orig in zip(out, TRAIN):
        demos = ex.get_field("demos")
        assert demos.count("It was bad.") == 1 and demos.count("It was good.") == 1
        assert orig.text_a not in demos
    assert demonstration_template("{text_a} It was {mask}.", "causal").text == "{demos} {text_a} It was {mask}."
    assert demonstration_template("{text_a} It was {mask}.", "mlm").text == "{text_a} It was {mask}. {demos}"
    # Similar selection with any HF encoder: here the tiny BERT, saved as a local folder.
    model, tok, _ = tiny_models["bert"]
    model.bert.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    sim = add_demonstrations(DEV, TRAIN, "{text_a} It was {mask}.", verbalizer, selection="similar",
                             encoder=SentenceEncoder(str(tmp_path)), top_fraction=0.34)
    assert all(ex.get_field("demos").count("It was") == 2 for ex in sim)
    h = make_harness("gpt2", batch_size=4)
    assert h.evaluate(out, demonstration_template("{text_a} It was {mask}.", "causal"), verbalizer).n == len(TRAIN)
    with pytest.raises(AutoPromptError, match="no example of class"):
        add_demonstrations(DEV, TRAIN[[0, 2]], "{text_a} It was {mask}.", verbalizer)


def test_prompt_finetune_learns_and_weights_are_restored(make_harness):
    h = make_harness("gpt2", batch_size=4)
    before = {n: p.detach().clone() for n, p in h.model.named_parameters()}
    verbalizer = Verbalizer.from_words(WORDS)
    with restored_weights(h.model):
        losses = prompt_finetune(h, TRAIN, "{text_a} It was {mask}.", verbalizer, epochs=8, lr=1e-2, batch_size=3)
        assert losses[-1] < losses[0]
        assert any(not torch.equal(p, before[n]) for n, p in h.model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in h.model.named_parameters())


def test_config_errors():
    with pytest.raises(AutoPromptError, match="nothing to search"):
        LMBFFConfig(generate_templates=False, search_label_words=False)
    with pytest.raises(AutoPromptError, match="label_search_strategy must be one of"):
        LMBFFConfig(label_words=WORDS, label_search_strategy="greedy")
    with pytest.raises(AutoPromptError, match="label_beam must be at least 1"):
        LMBFFConfig(label_words=WORDS, label_beam=0)
    with pytest.raises(AutoPromptError, match="needs label_words"):
        LMBFFConfig()
    with pytest.raises(AutoPromptError, match="formats"):
        LMBFFConfig(label_words=WORDS, formats=["middle"])
    with pytest.raises(AutoPromptError, match="beam must be at least 1"):
        LMBFFConfig(label_words=WORDS, beam=0)


def test_masked_lm_needs_a_generator_model(make_harness):
    h = make_harness("bert", batch_size=4)
    task = Task("toy", LABELS, {"train": TRAIN, "dev": DEV, "test": DEV})
    searcher = get_searcher("lmbff")(LMBFFConfig(label_words=WORDS))
    with pytest.raises(AutoPromptError, match="generator_model"):
        searcher.run_generation(SearchContext(task, h, 13))


def test_study_runs_best_first_and_resumes_without_regenerating(make_harness, tmp_path, monkeypatch):
    h = make_harness("gpt2", batch_size=4)
    task = Task("toy", LABELS, {"train": TRAIN, "dev": DEV, "test": DEV})
    config = LMBFFConfig(label_words=WORDS, search_label_words=True, label_k=3, label_assignments=2, beam=4,
                         max_span_tokens=2, keep_generated=6, top_n=2, ascii_only=False)
    storage = f"sqlite:///{tmp_path}/s.db"
    job = SearchJob(get_searcher("lmbff")(config), "lmbff-toy", storage, n_trials=3, seed=13, progress=False,
                    task_info={"name": "toy", "label_names": LABELS, "splits": {"dev": 4}},
                    model_info={"name": "tiny", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    art = study.user_attrs["artifacts"]
    gen = art["generated_templates"]
    assert len(gen) == 6 and art["trial_templates"] == [g["template"] for g in gen[:2]]
    assert [g["dev_accuracy"] for g in gen] == sorted((g["dev_accuracy"] for g in gen), reverse=True)
    assert len(art["trial_words"]) == 2 and art["label_word_assignments"]
    assert art["label_search_strategy"] == "exhaustive" and art["label_assignments_scored"] > 0
    trials = study.get_trials()
    assert len(trials) == 3
    # Best-first: the first trial scores the top-ranked template with the top label words.
    assert trials[0].params["template"] == gen[0]["template"]
    assert json.loads(trials[0].params["label_words"]) == art["trial_words"][0]
    doc = build_best_json(study, job, None, 1.0, "test")
    assert doc["artifacts"]["generated_templates"] == gen

    def fail(*args, **kwargs):
        raise AssertionError("regenerated on resume")

    monkeypatch.setattr(CausalTemplateGenerator, "generate", fail)
    job2 = SearchJob(get_searcher("lmbff")(config), "lmbff-toy", storage, n_trials=4, seed=13, progress=False,
                     model_info=job.model_info)  # the same model: a study refuses another
    study = run_search(job2, SearchContext(task, h, 13))
    assert len(study.get_trials()) == 4


def test_cli_search_lmbff_writes_generated_templates_to_best_json(tiny_model_dir, tmp_path):
    from pathlib import Path

    import jsonschema
    from conftest import run_cli

    root = Path(__file__).resolve().parents[1]
    space = tmp_path / "space.yaml"
    space.write_text("method: lmbff\nlabel_words: {negative: [bad], positive: [good]}\nbeam: 4\nmax_span_tokens: 2\n"
                     "keep_generated: 6\ntop_n: 3\nascii_only: false\n")
    out = tmp_path / "best.json"
    proc = run_cli("search", "lmbff", "--space", str(space), "--model", tiny_model_dir, "--storage",
                   f"sqlite:///{tmp_path}/s.db", "--trials", "3", "--max-examples", "160", "--shots", "8", "--quiet",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads((root / "autoprompt_kit" / "schemas" / "best.schema.json").read_text()))
    generated = doc["artifacts"]["generated_templates"]
    assert len(generated) == 6 and all({"template", "score", "dev_accuracy"} <= set(g) for g in generated)
    assert doc["method"] == "lmbff" and len(doc["candidates"]) == 3
    assert doc["template"]["text"] in [g["template"] for g in generated[:3]]
    assert "best prompt:" in proc.stdout


def test_masked_lm_with_a_t5_generator_model(tiny_models, make_harness, tmp_path):
    """The paper's setting: T5 writes templates, the masked LM scores them."""
    model, tok, _ = tiny_models["t5"]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    h = make_harness("bert", batch_size=4)
    task = Task("toy", LABELS, {"train": TRAIN, "dev": DEV, "test": DEV})
    config = LMBFFConfig(label_words=WORDS, generator_model=str(tmp_path), formats=["after", "before"], beam=3,
                         max_decode_tokens=4, keep_generated=6, top_n=2, ascii_only=False)
    art = get_searcher("lmbff")(config).run_generation(SearchContext(task, h, 13))
    formats = {g["format"] for g in art["generated_templates"]}
    assert formats == {"after", "before"} and len(art["trial_templates"]) == 2
    for g in art["generated_templates"]:
        assert h.evaluate(DEV, g["template"], Verbalizer.from_words(WORDS)).accuracy == pytest.approx(g["dev_accuracy"])


@pytest.mark.slow
def test_lmbff_on_the_real_model(real_harness):
    """Gemma 3 270M + MR: fluent generated templates, sensible label words, fine-tuning restores weights."""
    from autoprompt_kit import load_task

    h = real_harness
    task = load_task("mr", shots=4, seed=13)
    verbalizer = Verbalizer.from_words({"negative": ["terrible"], "positive": ["great"]})
    out = CausalTemplateGenerator(h, beam=8, max_span_tokens=3).generate(task.train, verbalizer, keep=8)
    assert len(out) == 8
    # Fluent: every span is ASCII text of real words, e.g. "{text_a} It's a {mask}."
    spans = [g.template[len("{text_a}"):-len("{mask}.")].strip() for g in out]
    assert all(s.isascii() and any(c.isalpha() for c in s) for s in spans[:5]), spans
    found = label_word_search(h, task.train, task.dev, "{text_a} It was {mask}.", task.label_names, k=10,
                              n_assignments=3)
    assert all(w.isalpha() for c in found.per_class for w in c)
    best = found.ranked[0]["words"]
    assert best["negative"] != best["positive"] and found.ranked[0]["train_accuracy"] >= 0.5
    before = h.model.get_input_embeddings().weight[:5].detach().clone()
    demo = add_demonstrations(task.train, task.train, "{text_a} It was {mask}.", verbalizer, selection="similar")
    with restored_weights(h.model):
        losses = prompt_finetune(h, demo, demonstration_template("{text_a} It was {mask}.", "causal"), verbalizer,
                                 epochs=2, lr=1e-5, batch_size=4)
        assert all(torch.isfinite(torch.tensor(losses)))
    assert torch.equal(h.model.get_input_embeddings().weight[:5], before)
