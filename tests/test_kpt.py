"""KPT on tiny random models: expansion, duplicate removal, prior/relevance filtering, calibration
math, weight learning, the study and its errors. WordNet comes from nltk's data, an installed
``wordnet-base``, or the kit's own ``apt-get download`` route (no root needed), which
``test_wordnet_fetched_from_debian_packages`` always exercises; these tests fail, never skip,
without WordNet."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import pytest
import numpy as np
import torch
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Example, Harness, Split, Verbalizer, load_task
from autoprompt_kit.data import Task
from autoprompt_kit.methods.kpt import (ExpansionSettings, KPTConfig, RefineSettings, SupportScores, expand,
                                        install_wordnet_from, learn_weights, read_kb, refine, support_scores,
                                        wordnet_related)
from autoprompt_kit.methods.kpt import knowledge
from autoprompt_kit.search import SearchContext, SearchJob, get_searcher, run_search
from autoprompt_kit.search.runner import build_best_json

TEMPLATE = "{text_a} It was {mask}."
SEEDS = {"negative": ["bad"], "positive": ["good"]}
TRAIN = Split([Example(t, y) for t, y in [
    ("the movie was great and the acting was wonderful", 1), ("a bad film with awful dialogue", 0),
    ("brilliant , moving and funny", 1), ("what a waste of time , truly awful", 0),
    ("it was a good movie with a fine cast", 1), ("the story is dull", 0),
    ("i loved the ending", 1), ("the film was terrible and the plot was boring", 0),
]], name="train", label_names=["negative", "positive"])


@pytest.fixture(scope="module")
def wn():
    """WordNet, found or set up by the kit itself (on a fresh machine: fetched with apt-get download)."""
    try:
        return knowledge.wordnet()
    except AutoPromptError as exc:
        pytest.fail(str(exc))


def test_lexnames_and_wordnet_copy(tmp_path):
    lines = knowledge.lexnames_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    src = tmp_path / "dict"
    src.mkdir()
    (src / "data.noun").write_text("x")
    (tmp_path / "real").write_text("y")
    (src / "index.noun").symlink_to(tmp_path / "real")
    target = install_wordnet_from(src, tmp_path / "nltk")
    assert not (target / "index.noun").is_symlink() and (target / "index.noun").read_text() == "y"
    assert (target / "lexnames").read_text() == knowledge.lexnames_text() and (target / "index.sense").exists()


@pytest.fixture
def no_wordnet_yet(monkeypatch, tmp_path):
    """A machine where nltk has no WordNet, none is installed and the kit's cache is empty."""
    import nltk

    # nltk searches only these folders (its default paths, $NLTK_DATA); wordnet() appends the kit's.
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(knowledge, "_system_wordnet_dirs", lambda: [tmp_path / "none"])
    knowledge.wordnet.cache_clear()
    yield tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet"
    knowledge.wordnet.cache_clear()


def test_missing_wordnet_lists_every_route(no_wordnet_yet, monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no apt-get
    with pytest.raises(AutoPromptError) as info:
        knowledge.wordnet()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("WordNet for nltk was not found (tried nltk's data paths")
    for part in (f"none in {no_wordnet_yet}", f"no data.noun in {tmp_path / 'none'}", "apt-get is not on PATH",
                 "`apt-get download wordnet-base wordnet-sense-index`", "apt-get install wordnet-base",
                 "nltk.download", "$NLTK_DATA"):
        assert part in msg, part
    assert not no_wordnet_yet.exists()


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="the Debian route needs apt-get")
def test_wordnet_fetched_from_debian_packages(no_wordnet_yet, monkeypatch):
    wn = knowledge.wordnet()
    assert len(wn.synsets("good")) == 27
    assert {h.name() for h in wn.synset("dog.n.01").hypernyms()} == {"canine.n.02", "domestic_animal.n.01"}
    assert wn.morphy("geese", "n") == "goose"  # noun.exc came along
    assert wn.lemma_from_key("dog%1:05:00::").synset().name() == "dog.n.01"  # index.sense too
    assert (no_wordnet_yet / "lexnames").read_text() == knowledge.lexnames_text()
    assert not [p.name for p in no_wordnet_yet.parent.parent.iterdir() if p.name.startswith(".tmp-")]

    def no_network(*args, **kwargs):
        raise AssertionError("the kit's copy should be used")

    monkeypatch.setattr(knowledge, "apt_download", no_network)
    knowledge.wordnet.cache_clear()
    assert len(knowledge.wordnet().synsets("good")) == 27  # from the kit's copy, offline


def test_wordnet_relations(wn):
    good = wordnet_related("good", relations=("synonyms", "similar"), senses=5)
    assert good["goodness"] == "synonym" and good["good enough"] == "similar"
    assert all(w == w.lower() and "_" not in w for w in good)
    deep = wordnet_related("movie", relations=("hypernyms",), depth=2)
    shallow = wordnet_related("movie", relations=("hypernyms",), depth=1)
    assert set(shallow) < set(deep) and any(r.endswith("@2") for r in deep.values())
    assert wordnet_related("zzxqvt") is None
    with pytest.raises(AutoPromptError, match="unknown WordNet relation"):
        wordnet_related("good", relations=("antonyms",))


def test_seed_missing_from_wordnet(wn, caplog):
    seeds = {"negative": ["bad"], "positive": ["zzxqvt"]}
    with pytest.raises(AutoPromptError, match="'zzxqvt'.*not in WordNet"):
        expand(seeds, ExpansionSettings(sources=("wordnet",), on_missing_seed="error"))
    exp = expand(seeds, ExpansionSettings(sources=("wordnet",)))  # documented fallback: warn, keep the seed
    assert exp.words[1] == ["zzxqvt"] and len(exp.words[0]) > 1
    assert "not in WordNet" in caplog.text


def test_words_in_two_classes_are_dropped_except_seeds(tmp_path):
    kb = tmp_path / "kb.tsv"
    kb.write_text("# comment\nbad\tawful, boring,fine\ngood\tfine,nice, bad\n\npositive\tsuperb\n")
    exp = expand(SEEDS, ExpansionSettings(sources=("kb",), kb_file=str(kb)))
    assert exp.words == [["bad", "awful", "boring"], ["good", "superb", "nice"]]
    reasons = {(r["word"], r["class"]): r["reason"] for r in exp.removed}
    assert set(reasons) == {("fine", "negative"), ("fine", "positive"), ("bad", "positive")}
    assert reasons[("bad", "positive")] == "also found for negative"
    js = tmp_path / "kb.json"
    js.write_text(json.dumps({"negative": ["awful"], "good": "nice"}))
    assert read_kb(js) == {"negative": ["awful"], "good": ["nice"]}


def test_kb_file_errors(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(AutoPromptError, match="has no entries"):
        read_kb(empty)
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(AutoPromptError, match="has no entries"):
        read_kb(tmp_path / "e.json")
    (tmp_path / "bad.tsv").write_text("good nice\n")
    with pytest.raises(AutoPromptError, match=r"bad.tsv' line 1: expected 'key<TAB>") as caught:
        read_kb(tmp_path / "bad.tsv")
    assert "good nice" not in str(caught.value)  # kb_file may name any file: its content is never echoed
    with pytest.raises(AutoPromptError, match="does not exist"):
        read_kb(tmp_path / "missing.tsv")
    with pytest.raises(AutoPromptError, match="needs kb_file"):
        ExpansionSettings(sources=("kb",))


def _scores(words, lp, prior, vocab):
    return SupportScores(list(words), torch.tensor(lp, dtype=torch.float), torch.tensor(prior, dtype=torch.float),
                         torch.tensor(vocab, dtype=torch.float), [1] * len(words))


def test_prior_filter_drops_low_prior_words_and_keeps_seeds(tmp_path):
    kb = tmp_path / "kb.tsv"
    kb.write_text("bad\tawful,rare\ngood\tnice,obscure\n")
    exp = expand(SEEDS, ExpansionSettings(sources=("kb",), kb_file=str(kb)))
    words = ["bad", "awful", "rare", "good", "nice", "obscure"]
    logp = [math.log(p) for p in (1e-3, 1e-3, 1e-8, 1e-9, 1e-3, 1e-7)]  # the seed "good" has a tiny prior too
    vocab = [math.log(p) for p in (1e-9, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3)]  # the 50% quantile is between 1e-6 and 1e-5
    scores = _scores(words, torch.zeros(4, 6).tolist(), logp, vocab)
    result = refine(exp, scores, RefineSettings(prior_cut=0.5, min_relevance=-1.0))  # the prior filter alone
    assert result.verbalizer.label_words == (("bad", "awful"), ("good", "nice"))
    assert {r["word"] for r in result.removed} == {"rare", "obscure"}
    assert all("prior" in r["reason"] and "vocabulary quantile" in r["reason"] for r in result.removed)
    assert refine(exp, scores, RefineSettings(prior_cut=0.0, min_relevance=-1.0)).verbalizer.flat_words == words
    # multi-token words are dropped by the tokenization filter before the prior is looked at
    scores.num_tokens = [1, 2, 1, 1, 1, 1]
    result = refine(exp, scores, RefineSettings(prior_cut=0.0, max_tokens=1, min_relevance=-1.0))
    assert [r["reason"] for r in result.removed] == ["2 tokens > max_tokens 1"]


def test_relevance_filter_drops_words_that_follow_the_other_class(tmp_path):
    kb = tmp_path / "kb.tsv"
    kb.write_text("bad\tawful,traitor\ngood\tnice\n")
    exp = expand(SEEDS, ExpansionSettings(sources=("kb",), kb_file=str(kb)))
    # support examples 0-1 look negative, 2-3 positive; "traitor" rises with "good", not with "bad"
    lp = torch.log(torch.tensor([[.5, .4, .02, .04, .04], [.5, .4, .02, .04, .04],
                                 [.02, .02, .3, .36, .3], [.02, .02, .3, .36, .3]]))
    scores = SupportScores(["bad", "awful", "traitor", "good", "nice"], lp, torch.full((5,), -3.0),
                           torch.zeros(4), [1] * 5)
    result = refine(exp, scores, RefineSettings(prior_cut=0.0, relevance_cut=0.5))
    assert result.verbalizer.label_words == (("bad", "awful"), ("good", "nice"))
    assert result.removed[0]["word"] == "traitor" and "relevance" in result.removed[0]["reason"]
    kept = {e["word"]: e["relevance"] for e in result.kept["negative"]}
    assert kept["awful"] > 0.9


LEXICON = {"terrible": -2.1, "bad": -2.5, "awful": -2.0, "horrid": -3.0, "poor": -2.3, "meh": -1.0, "okay": 0.9,
           "good": 1.9, "great": 3.1, "superb": 3.0, "fine": 2.2}


def test_vader_needs_sentiment_classes_and_splits_words_by_valence():
    with pytest.raises(AutoPromptError, match=r"needs sentiment classes .*class\(es\) \('art', 'law'\) have no VADER"):
        knowledge.seed_valences({"art": ["art"], "law": ["law"], "good": ["good"]}, LEXICON)
    with pytest.raises(AutoPromptError, match="no class is negative or none is positive"):
        knowledge.seed_valences({"a": ["good"], "b": ["great"]}, LEXICON)
    two = knowledge.vader_class_words({"negative": ["terrible"], "positive": ["great"]}, threshold=2.0, max_words=10,
                                      lexicon=LEXICON)
    assert two["negative"] == knowledge.vader_words(["terrible"], threshold=2.0, max_words=10, lexicon=LEXICON)[0]
    assert list(two["positive"]) == ["great", "superb", "fine"]          # strongest first, as the sign rule
    five = knowledge.vader_class_words(
        {"very negative": ["horrid"], "negative": ["bad"], "neutral": ["okay"], "positive": ["good"],
         "very positive": ["superb"]}, threshold=2.0, max_words=10, lexicon=LEXICON)
    # Same-sign classes split the words by the nearest seed valence, instead of all sharing (and,
    # as duplicates, losing) them; the neutral class's small valence attracts no strong word.
    assert {k: sorted(v) for k, v in five.items()} == {
        "very negative": ["horrid"], "negative": ["awful", "bad", "poor", "terrible"], "neutral": [],
        "positive": ["fine"], "very positive": ["great", "superb"]}


def test_vader_source_is_refused_for_topic_classes(tmp_path):
    topics = {"art": ["art"], "computers": ["computers"], "law": ["law"]}
    with pytest.raises(AutoPromptError, match="the 'vader' knowledge source needs sentiment classes"):
        expand(topics, ExpansionSettings(sources=("vader",)))
    split = Split([Example("a", i % 3) for i in range(6)], name="train")
    task = Task("topics", list(topics), {"train": split, "dev": split, "test": split})
    with pytest.raises(AutoPromptError, match="drop 'vader' from sources"):
        KPTConfig(seed_words=topics, sources=["wordnet+vader", "wordnet"]).check_task(task)
    kb = tmp_path / "kb.tsv"
    kb.write_text("art\tpainting\n")
    KPTConfig(seed_words=topics, sources=["wordnet", "kb"], kb_file=str(kb)).check_task(task)  # no VADER: fine


def test_relevance_with_five_classes_drops_a_word_that_follows_another_class():
    """Five classes, two support texts each; a class's seed is likely on its own texts only."""
    n, num = 10, 5
    own = torch.full((n, num), -4.0)
    for c in range(num):
        own[2 * c: 2 * c + 2, c] = 0.0
    follower = torch.full((n,), -4.0)
    follower[0:2], follower[2:4] = -1.5, 0.0     # proposed for c0, but rises most on c1's texts
    loyal = own[:, 0] + 0.2 * torch.arange(n) % 2  # follows c0
    noise = torch.tensor([-4.0, -1.0, -3.0, 0.0, -2.0, -4.0, -1.0, -3.0, -0.5, -2.5])
    words = [f"s{c}" for c in range(num)] + ["follower", "loyal", "noise"]
    lp = torch.cat([own, follower[:, None], loyal[:, None], noise[:, None]], dim=1)
    scores = SupportScores(words, lp, torch.zeros(len(words)), torch.zeros(4), [1] * len(words))
    from autoprompt_kit.methods.kpt.refine import Expansion

    exp = Expansion([f"c{c}" for c in range(num)], [["s0", "follower", "loyal"], ["s1"], ["s2", "noise"], ["s3"], ["s4"]],
                    [[f"s{c}"] for c in range(num)], [{} for _ in range(num)])
    result = refine(exp, scores, RefineSettings(prior_cut=0.0))
    assert result.verbalizer.label_words == (("s0", "loyal"), ("s1",), ("s2",), ("s3",), ("s4",))
    reasons = {r["word"]: r["reason"] for r in result.removed}
    assert reasons["follower"].startswith("follows class 'c1'")
    assert reasons["noise"].startswith("relevance") and "below min_relevance 0.3" in reasons["noise"]
    assert result.kept["c0"][1]["relevance"] > 0.9
    assert refine(exp, scores, RefineSettings(prior_cut=0.0, min_relevance=-1.0)).verbalizer.num_classes == 5


def test_presence_filter_removes_a_word_the_support_texts_never_bring_up(make_harness, tmp_path):
    """A planted word that no support text puts among the model's top words goes; one that many do stays."""
    from autoprompt_kit.models.vocab import token_strings, word_of

    h = make_harness("bert", batch_size=8)                                 # 24 word tokens (the tiny BPE has 4)
    full = h.mask_logprobs(TRAIN, TEMPLATE, reduce=None)                   # (N, V)
    vocab = knowledge.vocabulary_words(h)[: full.shape[1]]
    strings = token_strings(h.tokenizer)
    ids = [i for i in vocab.nonzero().squeeze(1).tolist()
           if list(h.encoder.word_ids(word_of(strings[i])[0], True)) == [i] and word_of(strings[i])[0] not in ("bad", "good")]
    ranks = (-full[:, vocab]).argsort(dim=1).argsort(dim=1)                 # rank among the word tokens, per text
    column = {int(t): j for j, t in enumerate(vocab.nonzero().squeeze(1).tolist())}
    best = {i: int(ranks[:, column[i]].min()) for i in ids}
    hits = {i: int((ranks[:, column[i]] < 3).sum()) for i in ids}
    planted = word_of(strings[max(ids, key=lambda i: best[i])])[0]          # never near the top
    present = word_of(strings[max(ids, key=lambda i: hits[i])])[0]          # in the top 3 of most texts
    assert best[h.encoder.word_ids(planted, True)[0]] >= 3 and hits[h.encoder.word_ids(present, True)[0]] >= 2
    kb = tmp_path / "kb.tsv"
    kb.write_text(f"bad\t{planted}\ngood\t{present}\n")
    exp = expand(SEEDS, ExpansionSettings(sources=("kb",), kb_file=str(kb)))
    scores = support_scores(h, TRAIN, TEMPLATE, exp.all_words(), presence_rank=3)
    assert torch.allclose(scores.top_logprobs[:, 0], full[:, vocab].max(dim=1).values.float(), atol=1e-4)
    settings = dict(prior_cut=0.0, min_relevance=-1.0, presence_rank=3, presence_min=0.25)
    result = refine(exp, scores, RefineSettings(**settings))
    assert result.verbalizer.label_words == (("bad",), ("good", present))
    assert result.removed[0]["word"] == planted
    assert result.removed[0]["reason"] == "among the model's top 3 words for 0 of 8 support texts (needs 2)"
    assert result.kept["positive"][1]["presence"] >= 0.25
    assert planted in refine(exp, scores, RefineSettings(**{**settings, "presence_rank": 0})).verbalizer.flat_words
    with pytest.raises(AutoPromptError, match="presence_rank 5 is above the 3 top words"):
        refine(exp, scores, RefineSettings(**{**settings, "presence_rank": 5}))


def test_kpt_study_with_five_classes(make_harness, tmp_path):
    h = make_harness("gpt2", batch_size=8)
    names = ["c0", "c1", "c2", "c3", "c4"]
    seeds = {"c0": ["bad"], "c1": ["good"], "c2": ["fun"], "c3": ["dull"], "c4": ["nice"]}
    texts = [e.text_a for e in TRAIN]
    split = Split([Example(f"{a} {b}", i % 5) for i, (a, b) in enumerate((a, b) for a in texts for b in texts if a != b)][:30],
                  name="train", label_names=names)
    task = Task("five", names, {"train": split[:15], "dev": split[15:], "test": split[15:]})
    kb = tmp_path / "kb.tsv"
    kb.write_text("c0\tawful,boring\nc1\tgreat,fine\nc2\tfunny,moving\nc3\tdull,waste\nc4\tloved,wonderful\n")
    config = KPTConfig(seed_words=seeds, sources=["kb"], kb_file=str(kb), prior_cut=[0.0], min_relevance=[-1.0, 0.3],
                       learn_weights=[True], epochs=1, support_size=15)
    job = SearchJob(get_searcher("kpt")(config), "kpt5", f"sqlite:///{tmp_path / 'k.db'}", n_trials=2,
                    progress=False, task_info={"name": "five", "label_names": names, "splits": {}},
                    model_info={"name": "tiny", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    doc = build_best_json(study, job, None, 1.0, "test")
    kept = doc["trial_artifacts"]["kept_words"]
    assert list(kept) == names and all(kept[n][0]["word"] == seeds[n][0] for n in names)
    verb = Verbalizer.from_dict(doc["verbalizer"])
    assert verb.num_classes == 5 and verb.aggregation == "weighted"
    assert h.evaluate(task.dev, TEMPLATE, verb).predictions.max() < 5


def test_contextual_calibration_equals_hand_computation():
    prior = ((math.log(0.2), math.log(0.05)), (math.log(0.5),))
    verb = Verbalizer((("bad", "awful"), ("good",)), calibration="contextual", word_prior=prior)
    p = torch.tensor([[0.1, 0.01, 0.3], [0.02, 0.02, 0.6]])
    got = verb.class_logprobs(p.log())
    neg = ((p[:, 0] / 0.2) + (p[:, 1] / 0.05)) / 2  # mean of calibrated word probabilities
    pos = p[:, 2] / 0.5
    expected = torch.stack([neg, pos], dim=1)
    expected = (expected / expected.sum(dim=1, keepdim=True)).log()
    assert torch.allclose(got, expected, atol=1e-6)
    # the per-example normalisation of word scores does not change calibrated class scores
    assert torch.allclose(verb.class_logprobs(p.log() + torch.tensor([[3.0], [-2.0]])), expected, atol=1e-6)
    back = Verbalizer.from_dict(json.loads(json.dumps(verb.to_dict())))
    assert back == verb
    with pytest.raises(AutoPromptError, match="needs word_prior"):
        Verbalizer((("bad",), ("good",)), calibration="contextual")


def test_support_scores_match_the_harness(make_harness):
    h = make_harness("bert", batch_size=8)
    words = ["bad", "good", "the movie"]
    scores = support_scores(h, TRAIN, TEMPLATE, words)
    direct = h.score(TRAIN, TEMPLATE, Verbalizer((("bad",), ("good",), ("the movie",))), exact=True).word_logprobs
    direct = direct.to(scores.word_logprobs.device)
    assert torch.allclose(scores.word_logprobs, direct.float(), atol=1e-5)
    assert torch.allclose(scores.word_prior, torch.logsumexp(direct.float(), 0) - math.log(len(TRAIN)), atol=1e-5)
    assert scores.num_tokens[2] == 2
    vocab = h.mask_logprobs(TRAIN, TEMPLATE)
    assert scores.word_prior[0] == pytest.approx(float(vocab[h.encoder.word_ids("bad", True)[0]]), abs=1e-4)
    more = support_scores(h, TRAIN, TEMPLATE, ["bad", "fun"], previous=scores)  # only "fun" is scored anew
    assert more.words == words + ["fun"] and more.word_logprobs.shape == (len(TRAIN), 4)


def test_scores_from_cached_hidden_states_keep_the_output_layer_bias(tiny_models):
    """A masked LM's decoder has a bias: scoring words from cached mask states must add it, as the
    model's own forward does (a random bias, so a missing one cannot go unnoticed)."""
    import copy

    from autoprompt_kit.methods.kpt import single_token_logprobs

    model, tok, kind = tiny_models["bert"]
    model = copy.deepcopy(model)
    head = model.get_output_embeddings()
    assert head.bias is not None
    with torch.no_grad():
        head.bias.copy_(torch.randn_like(head.bias) * 3)
    h = Harness(model, tok, kind=kind, progress=False, batch_size=8, precision="fp32")
    words = ["bad", "good", "fun"]
    assert all(len(h.encoder.word_ids(w, True)) == 1 for w in words)
    direct = h.score(TRAIN, TEMPLATE, Verbalizer(tuple((w,) for w in words)), exact=True).word_logprobs.float().cpu()
    cached = single_token_logprobs(h, h.mask_hidden(TRAIN, TEMPLATE), words)
    torch.testing.assert_close(cached, torch.log_softmax(direct, dim=-1), atol=1e-5, rtol=1e-5)
    absolute = single_token_logprobs(h, h.mask_hidden(TRAIN, TEMPLATE), words, normalise=False)
    ids = [h.encoder.word_ids(w, True)[0] for w in words]
    with torch.no_grad():
        logits = model(**tok([TRAIN[0].text_a + " It was " + tok.mask_token + "."], return_tensors="pt")).logits
    mask_at = (tok([TRAIN[0].text_a + " It was " + tok.mask_token + "."])["input_ids"][0]).index(tok.mask_token_id)
    torch.testing.assert_close(absolute[0], logits[0, mask_at].log_softmax(-1)[ids], atol=1e-4, rtol=1e-4)


def test_learned_weights_lower_the_loss(make_harness, tmp_path):
    h = make_harness("gpt2", batch_size=8)
    verb = Verbalizer.from_words({"negative": ["bad", "awful", "boring"], "positive": ["good", "great", "fun"]})
    before = [p.detach().clone() for p in h.model.parameters()]
    learned, losses = learn_weights(h, TRAIN, TEMPLATE, verb, epochs=6, lr=0.3, batch_size=8)
    assert len(losses) == 6
    assert learned.aggregation == "weighted" and learned.weights is not None
    # Judged without dropout (train() runs the frozen LM in train mode, whose dropout draws differ
    # between CPU and CUDA): the learned weights fit TRAIN better than uniform ones.
    uniform = learned.replace(weights=[[1 / len(ws)] * len(ws) for ws in learned.weights])

    def nll(v: Verbalizer) -> float:
        res = h.evaluate(TRAIN, TEMPLATE, v)
        return float(-res.class_logprobs[np.arange(res.n), TRAIN.labels].mean())

    assert nll(learned) < nll(uniform)
    assert all(abs(sum(ws) - 1) < 1e-5 for ws in learned.weights)
    assert any(abs(w - 1 / 3) > 1e-3 for ws in learned.weights for w in ws)
    assert all(torch.equal(a, b) for a, b in zip(before, h.model.parameters()))  # the LM stays frozen
    assert all(p.requires_grad for p in h.model.parameters())
    h.evaluate(TRAIN, TEMPLATE, learned)


def test_kpt_study_writes_kept_and_removed_words(make_harness, tmp_path, wn):
    h = make_harness("gpt2", batch_size=8)
    kb = tmp_path / "kb.tsv"
    kb.write_text("bad\tawful,boring,fine\ngood\tgreat,fun,fine\n")
    task = load_task("mr", shots=4, max_examples=80)
    config = KPTConfig(seed_words=SEEDS, sources=["wordnet+kb", "kb"], kb_file=str(kb), max_tokens=[2],
                       prior_cut=[0.3], relevance_cut=[0.0, 0.3], learn_weights=[True], epochs=2, support_size=16)
    job = SearchJob(get_searcher("kpt")(config), "kpt", f"sqlite:///{tmp_path / 'k.db'}", n_trials=3,
                    progress=False, task_info={"name": "mr", "label_names": task.label_names, "splits": {}},
                    model_info={"name": "tiny", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    doc = json.loads(json.dumps(build_best_json(study, job, None, 1.0, "test")))
    schema = Path(__file__).resolve().parents[1] / "autoprompt_kit" / "schemas" / "best.schema.json"
    jsonschema.validate(doc, json.loads(schema.read_text()))
    art = doc["trial_artifacts"]
    kept = art["kept_words"]
    assert kept["negative"][0]["word"] == "bad" and kept["positive"][0]["word"] == "good"
    assert all("weight" in e and "prior" in e for e in kept["negative"])
    assert any(r["word"] == "fine" and r["reason"].startswith("also found for") for r in art["removed_words"])
    verb = Verbalizer.from_dict(doc["verbalizer"])
    assert verb.calibration == "contextual" and verb.aggregation == "weighted"
    assert list(verb.label_words[0]) == [e["word"] for e in kept["negative"]]
    h.evaluate(task.dev, TEMPLATE, verb)  # the saved verbalizer scores again as is


def test_config_errors(tmp_path):
    with pytest.raises(AutoPromptError, match="seed_words"):
        KPTConfig()
    with pytest.raises(AutoPromptError, match="'\\+'-joined"):
        KPTConfig(seed_words=SEEDS, sources=["wordnet+thesaurus"])
    with pytest.raises(AutoPromptError, match="kb_file"):
        KPTConfig(seed_words=SEEDS, sources=["kb"])
    with pytest.raises(AutoPromptError, match="fractions"):
        KPTConfig(seed_words=SEEDS, prior_cut=[1.5])
    with pytest.raises(AutoPromptError, match="on_missing_seed"):
        KPTConfig(seed_words=SEEDS, on_missing_seed="ignore")


@pytest.mark.slow
def test_kpt_beats_the_seed_words_on_gemma(real_harness, tmp_path, wn):
    """Zero-shot on 200 MR test examples: the KPT verbalizer (default refinement) vs terrible/great."""
    h = real_harness
    task = load_task("mr", shots=8, seed=13, max_examples=400)
    test = load_task("mr", max_examples=200).test
    config = KPTConfig(seed_words={"negative": ["terrible"], "positive": ["great"]}, sources=["wordnet+vader"],
                       prior_cut=[0.5], relevance_cut=[0.0], support_size=64)
    job = SearchJob(get_searcher("kpt")(config), "kpt-real", f"sqlite:///{tmp_path / 'k.db'}", n_trials=1,
                    progress=False, task_info={"name": "mr", "label_names": task.label_names, "splits": {}},
                    model_info={"name": "gemma-3-270m", "kind": "causal"})
    study = run_search(job, SearchContext(task, h, 13))
    doc = build_best_json(study, job, None, 1.0, "test")
    verb = Verbalizer.from_dict(doc["verbalizer"])
    assert all(len(ws) >= 10 for ws in verb.label_words) and doc["trial_artifacts"]["removed_words"]
    kpt = h.evaluate(test, TEMPLATE, verb).accuracy
    seeds = h.evaluate(test, TEMPLATE, {"negative": ["terrible"], "positive": ["great"]}).accuracy
    assert kpt > seeds + 0.05, (kpt, seeds)


@pytest.mark.slow
def test_off_domain_lexicon_words_are_removed_on_mr(real_harness, wn):
    """MR, terrible / great through WordNet + VADER: the lexicon's general-purpose negative words
    ("raping", "slavery", "fu", "kill", "murder") are proposed, and the refinement on 200
    unlabelled MR reviews removes them while keeping the reviews' own sentiment words."""
    h = real_harness
    seeds = {"negative": ["terrible"], "positive": ["great"]}
    exp = expand(seeds, ExpansionSettings(sources=("wordnet", "vader")), h)
    off_domain = {"raping", "slavery", "fu", "kill", "murder"}
    assert off_domain <= set(exp.words[0])
    support = load_task("mr", max_examples=200).train
    scores = support_scores(h, support, "{text_a} It was {mask}.", exp.all_words(), max_tokens=1,
                            always=["terrible", "great"])
    result = refine(exp, scores, RefineSettings())
    negative, positive = (set(ws) for ws in result.verbalizer.label_words)
    assert not off_domain & negative
    reasons = {r["word"]: r["reason"] for r in result.removed if r["word"] in off_domain}
    assert all(r.startswith(("among the model's top", "relevance", "follows")) for r in reasons.values()), reasons
    assert {"awful", "dreadful", "atrocious", "worst"} <= negative and {"amazing", "superb", "lovely"} <= positive
    assert min(len(negative), len(positive)) >= 10


def test_cli_evaluate_keeps_contextual_calibration(tiny_model_dir, tmp_path, capsys):
    from autoprompt_kit.cli import main

    h = Harness(tiny_model_dir, progress=False)
    prior = ((-3.0, -1.0), (-0.5,))
    verb = Verbalizer.from_words({"negative": ["bad", "awful"], "positive": ["good"]}, calibration="contextual",
                                 word_prior=prior)
    prompt = tmp_path / "best.json"
    prompt.write_text(json.dumps({"template": {"text": TEMPLATE}, "verbalizer": verb.to_dict(),
                                  "model": {"name": tiny_model_dir, "kind": "causal"}, "task": {"name": "mr"}}))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--prompt", str(prompt), "--max-examples", "40", "--split", "dev", "--out", str(out),
                 "--quiet"]) == 0
    got = json.loads(out.read_text())["results"]["contextual"]["accuracy"]
    split = load_task("mr", max_examples=40).dev
    assert got == pytest.approx(h.evaluate(split, TEMPLATE, verb).accuracy)
    assert "calibration=contextual" in capsys.readouterr().out
