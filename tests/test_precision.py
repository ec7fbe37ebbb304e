"""``precision``: fp32 / bf16 / int8 / auto on the tiny models — the probe's choice and why, int8's
limits, and the resolved precision in the study fingerprint and the saved prompt (reload
reproduces dev exactly)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from autoprompt_kit import Harness
from autoprompt_kit.cli import main
from autoprompt_kit.data import Example
from autoprompt_kit.errors import AutoPromptError
from autoprompt_kit.harness import precision as precisions
from autoprompt_kit.search.runner import model_fingerprint

EXAMPLES = [Example("the movie was great", 1), Example("a bad film with awful dialogue", 0),
            Example("brilliant , moving and funny", 1), Example("what a waste of time", 0)]
VERB = {"negative": ["bad"], "positive": ["great"]}


def test_auto_keeps_small_models_in_fp32_and_says_why(make_harness):
    h = make_harness("gemma3", precision="auto", batch_size=4, device="cpu")
    assert h.precision == "fp32"
    assert h.precision_probe is not None and "small model" in h.precision_probe.line()
    assert make_harness("gemma3", batch_size=4, device="cpu", precision=None).precision_probe is None  # only auto probes


@pytest.fixture
def fake_clock(monkeypatch):
    """The probe with fixed timings (fp32 1 s, bf16 0.5 s, int8 0.25 s) and no size floor: what it
    picks then depends only on the measured agreement."""
    times = {0: 1.0, 1: 0.5, 2: 0.25}
    calls = []

    def timed(run, repeats=2):
        out = run()
        calls.append(1)
        return times[len(calls) - 1], out

    monkeypatch.setattr(precisions, "_timed", timed)
    monkeypatch.setattr(precisions, "MIN_PARAMS", 0)
    return calls


def test_probe_takes_the_fastest_that_agrees(tiny_models, fake_clock):
    model, tok, kind = tiny_models["gemma3"]
    before = {n: p.clone() for n, p in model.state_dict().items()}
    result = precisions.probe(model, tok, kind, torch.device("cpu"), allow_int8=True)
    assert set(result.agreement) >= {"fp32", "bf16"} and result.predictions > 50
    agreeing = [p for p in ("int8", "bf16") if p in result.agreement and result.agreement[p] >= precisions.AGREEMENT]
    assert result.choice == (agreeing[0] if agreeing else "fp32")
    assert "same predictions" in result.reason
    # The probe quantises a copy: the model it was given is unchanged.
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert all(type(m) is not torch.ao.nn.quantized.dynamic.Linear for m in model.modules())


def test_probe_rejects_what_disagrees(tiny_models, fake_clock, monkeypatch):
    monkeypatch.setattr(precisions, "AGREEMENT", 1.01)  # nothing can agree that well
    model, tok, kind = tiny_models["gemma3"]
    result = precisions.probe(model, tok, kind, torch.device("cpu"), allow_int8=False)
    assert result.choice == "fp32" and "bf16 rejected" in result.reason and "int8" not in result.agreement


def test_auto_is_remembered_per_machine(tiny_models, fake_clock, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path))
    model, tok, kind = tiny_models["gemma3"]
    first = precisions.resolve_auto(model, tok, kind, torch.device("cpu"))
    n_probes = len(fake_clock)
    again = precisions.resolve_auto(model, tok, kind, torch.device("cpu"))
    assert again.choice == first.choice and "remembered" in again.reason and len(fake_clock) == n_probes


def test_int8_scores_only_and_leaves_the_callers_model_alone(tiny_models, make_harness):
    h = make_harness("gemma3", precision="int8", batch_size=4, device="cpu")
    assert h.precision == "int8"
    assert any(type(m) is torch.ao.nn.quantized.dynamic.Linear for m in h.model.modules())
    assert type(h.head) is nn.Linear  # the output layer is read row by row: never quantised
    assert all(type(m) is not torch.ao.nn.quantized.dynamic.Linear for m in tiny_models["gemma3"][0].modules())
    result = h.evaluate(EXAMPLES, "{text_a} It was {mask}.", VERB)
    assert result.n == 4
    with pytest.raises(AutoPromptError, match="int8 harness scores only"):
        h.score(EXAMPLES, "{text_a} It was {mask}.", VERB, grad=True)


def test_resolved_precision_is_in_the_fingerprint(tiny_models, make_harness):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(copy.deepcopy(model), tok, kind=kind, progress=False, device="cpu", precision="bf16")
    assert model_fingerprint("m", h)["precision"] == "bf16"
    auto = make_harness("gemma3", precision="auto", batch_size=4, device="cpu")
    assert model_fingerprint("m", auto)["precision"] == "fp32"  # never "auto"


def test_prompt_found_in_bf16_reloads_in_bf16_with_the_same_dev(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "best.json"
    code = main(["search", "select", "--task", "mr", "--model", tiny_model_dir, "--shots", "4", "--max-examples", "40",
                 "--trials", "2", "--precision", "bf16", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 "--out", str(out), "--quiet", "--test-split", ""])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["prompt"]["model"]["precision"] == "bf16"  # the saved prompt records it
    capsys.readouterr()
    # The default --precision auto re-scores it in bf16: every dev prediction as the search made it.
    assert main(["evaluate", "--prompt", str(out), "--split", "dev", "--quiet"]) == 0
    shown = capsys.readouterr().out
    n = doc["metrics"]["dev"]["n"]
    assert f"{n}/{n} dev predictions identical" in shown, shown
    from autoprompt_kit import Prompt

    prompt = Prompt.load(out)
    assert prompt.harness().precision == "bf16"
    assert prompt.harness(precision="fp32").precision == "fp32"  # asked otherwise: as asked


def test_auto_resumes_a_named_study_in_its_precision(tiny_model_dir, tmp_path, capsys):
    """A study scored in bf16, resumed with the default --precision auto: it keeps bf16 (auto would
    resolve the tiny model to fp32, and the study would refuse another precision)."""
    args = ["search", "select", "--task", "mr", "--model", tiny_model_dir, "--shots", "4", "--max-examples", "40",
            "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study", "named", "--out", "", "--quiet",
            "--test-split", ""]
    assert main(args + ["--trials", "1", "--precision", "bf16"]) == 0
    assert main(args + ["--trials", "2"]) == 0, capsys.readouterr().err
    assert main(args + ["--trials", "3", "--precision", "fp32"]) == 2  # asked for another: refused, as before
    assert "another precision" in capsys.readouterr().err


def test_a_cpu_without_bf16_stays_in_fp32_and_says_so(tiny_models, fake_clock, monkeypatch):
    monkeypatch.setattr(precisions, "bf16_supported", lambda device: False)
    model, tok, kind = tiny_models["gemma3"]
    result = precisions.probe(model, tok, kind, torch.device("cpu"), allow_int8=False)
    assert result.choice == "fp32" and "no native bf16" in result.line() and not fake_clock  # nothing timed
