import json

import pytest
import torch

from autoprompt_kit import AutoPromptError, Template, Verbalizer
from autoprompt_kit.prompts.template import Field, Mask, Soft, Text


def test_shorthand_and_openprompt_syntax_parse_to_the_same_parts():
    a = Template("{text_a} It was {mask}.")
    b = Template('{"placeholder":"text_a"} It was {"mask"}.')
    assert a.parts == b.parts == (Field("text_a"), Text(" It was "), Mask(), Text("."))


def test_soft_meta_trigger_and_text_parts():
    t = Template('{"meta": "premise"} {"soft": "It was"} {"soft"} {trigger*3} {mask} {"text": "ok", "shortenable": False}')
    kinds = [type(p).__name__ for p in t.parts if not (isinstance(p, Text) and not p.text.strip())]
    assert kinds == ["Field", "Soft", "Soft", "Trigger", "Trigger", "Trigger", "Mask", "Text"]
    assert t.fields == ["premise"] and t.num_triggers == 3 and t.num_soft == 2
    assert Template("{text_a} {soft:It was} {mask}").parts[2] == Soft("It was")


def test_with_triggers_fills_slots_and_round_trips_json():
    t = Template("{text_a} {trigger} {trigger} {mask}.").with_triggers([5, 7], ["foo", "bar"])
    assert t.trigger_ids == [5, 7]
    assert t.display() == "{text_a} [foo] [bar] {mask}."
    back = Template.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back != Template("{text_a} {trigger} {trigger} {mask}.")
    with pytest.raises(AutoPromptError, match="2 trigger slot"):
        Template("{text_a} {trigger*2} {mask}").with_triggers([1])


@pytest.mark.parametrize("text, message", [
    ("{text_a} It was great.", "no mask"),
    ("{text_a} {mask} and {mask}", "2 masks"),
    ("It was {mask}.", "uses no input field"),
    ("{text_a} {mask", "unbalanced"),
    ('{text_a} {"bogus": 1} {mask}', "unknown part"),
    ("{text_a} {trigger*0} {mask}", "at least one trigger"),
    ("", "empty"),
])
def test_bad_templates_get_clear_errors(text, message):
    with pytest.raises(AutoPromptError, match=message):
        Template(text)


def test_unknown_field_is_reported_against_available_fields():
    with pytest.raises(AutoPromptError, match=r"unknown field\(s\) \['text_b'\]"):
        Template("{text_a} {text_b} {mask}").check_fields({"text_a"})


def test_verbalizer_json_round_trip_and_views():
    v = Verbalizer.from_words({"negative": ["terrible", "bad"], "positive": "great"}, calibration="content_free")
    assert v.flat_words == ["terrible", "bad", "great"] and v.word_class == [0, 0, 1]
    back = Verbalizer.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v
    assert Verbalizer.from_words([["a"], ["b", "c"]]).labels == ()


def test_aggregations():
    lp = torch.log(torch.tensor([[0.1, 0.3, 0.2]]))
    v = Verbalizer.from_words([["a", "b"], ["c"]])
    assert torch.allclose(v.aggregate(lp)[0, 0].exp(), torch.tensor(0.2))                           # mean
    assert torch.allclose(v.replace(aggregation="sum").aggregate(lp)[0, 0].exp(), torch.tensor(0.4))
    assert torch.allclose(v.replace(aggregation="max").aggregate(lp)[0, 0].exp(), torch.tensor(0.3))
    w = v.replace(aggregation="weighted", weights=[[3.0, 1.0], [1.0]])
    assert torch.allclose(w.aggregate(lp)[0, 0].exp(), torch.tensor(0.75 * 0.1 + 0.25 * 0.3))
    probs = v.class_logprobs(lp).exp()
    assert torch.allclose(probs.sum(), torch.tensor(1.0))
    prior = torch.log(torch.tensor([0.8, 0.2]))
    cal = v.class_logprobs(lp, prior=prior).exp()
    expected = probs / prior.exp()
    assert torch.allclose(cal, expected / expected.sum())


@pytest.mark.parametrize("kwargs, message", [
    ({"label_words": (("a",),)}, "at least two classes"),
    ({"label_words": (("a",), ())}, "no label words"),
    ({"label_words": (("a",), (" ",))}, "empty label word"),
    ({"label_words": (("a",), ("b",)), "labels": ("x",)}, "2 classes of label words but 1"),
    ({"label_words": (("a",), ("b",)), "aggregation": "median"}, "unknown aggregation"),
    ({"label_words": (("a",), ("b",)), "calibration": "magic"}, "unknown calibration"),
    ({"label_words": (("a",), ("b",)), "aggregation": "weighted"}, "needs weights"),
])
def test_bad_verbalizers_get_clear_errors(kwargs, message):
    with pytest.raises(AutoPromptError, match=message):
        Verbalizer(**kwargs)


def test_verbalizer_labels_must_match_task():
    v = Verbalizer.from_words({"neg": "bad", "pos": "good"})
    with pytest.raises(AutoPromptError, match="do not match"):
        v.check_labels(["negative", "positive"])
    with pytest.raises(AutoPromptError, match="2 classes but the task has 3"):
        v.check_labels(["a", "b", "c"])
