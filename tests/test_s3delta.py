"""S3Delta: budget solver, selection, bi-level search and the study on tiny models; one real-model run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from autoprompt_kit import AutoPromptError, Example
from autoprompt_kit.delta import Delta
from autoprompt_kit.methods.s3delta import (
    GateController,
    S3DeltaConfig,
    budget_params,
    s3delta_search,
    search_space,
    select_within_budget,
    solve_shift,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "autoprompt_kit" / "schemas" / "best.schema.json").read_text())
WORDS = {"negative": ["bad"], "positive": ["great"]}
EXAMPLES = [Example("the movie was great", 1), Example("a bad film", 0), Example("brilliant , moving", 1),
            Example("what a waste of time", 0)]


@pytest.fixture(scope="module")
def harness(make_harness):
    return make_harness("gemma3", precision=None)


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
def test_shift_solver_hits_the_budget(beta):
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(300, generator=gen) * 2
    sizes = torch.randint(16, 5000, (300,), generator=gen).double()
    for budget in (100.0, 0.01 * float(sizes.sum()), 0.5 * float(sizes.sum())):
        b = solve_shift(alpha, sizes, budget, beta)
        expected = float((torch.sigmoid((alpha.double() - b) / beta) * sizes).sum())
        assert expected == pytest.approx(budget, rel=1e-6)
    with pytest.raises(AutoPromptError, match="strictly between"):
        solve_shift(alpha, sizes, float(sizes.sum()) + 1)


def test_gate_controller_keeps_expected_parameters_at_budget():
    ctl = GateController([100, 200, 300, 400], budget=350, beta=0.5)
    with torch.no_grad():
        ctl.alpha.copy_(torch.tensor([2.0, -1.0, 0.5, 0.0]))
    assert ctl.expected_parameters() == pytest.approx(350, rel=1e-6)
    ctl.sampling = True
    with torch.enable_grad():
        ctl.resample()
    assert ctl.current is not None and ctl.current.requires_grad and ((0 < ctl.current) & (ctl.current < 1)).all()


def test_selection_respects_budget():
    probs = [0.9, 0.8, 0.7, 0.6, 0.1]
    sizes = [50, 60, 10, 30, 5]
    chosen = select_within_budget(probs, sizes, 75)
    assert chosen == [0, 2, 4]  # 50 + 10 + 5: the 60 and the 30 no longer fit after the first
    assert sum(sizes[i] for i in chosen) <= 75


def test_search_returns_a_structure_within_budget(harness):
    config = S3DeltaConfig(budget_percent=2.0, search_epochs=2, epochs=1, batch_size=4)
    before = torch.as_tensor(harness.evaluate(EXAMPLES, config.template, WORDS).word_logprobs)
    found = s3delta_search(harness, EXAMPLES, EXAMPLES, config.template, WORDS, config, seed=0)
    budget = budget_params(harness, 2.0)
    assert found.budget == budget and 0 < found.parameters <= budget
    assert found.candidates == len(search_space(harness, config)) and len(found.probabilities) == found.candidates
    # The shifted sigmoid kept the expected size at the budget through every gate step.
    assert found.history and all(h["expected_params"] == pytest.approx(budget, rel=1e-4) for h in found.history)
    assert Delta.from_structure(harness, found.structure).num_parameters() == found.parameters
    assert "L LoRA" in found.table
    # The search leaves the backbone as it was (hooks removed).
    assert not harness.input_hooks
    assert torch.equal(torch.as_tensor(harness.evaluate(EXAMPLES, config.template, WORDS).word_logprobs), before)


def test_warmup_gives_the_gates_a_gradient(harness):
    # Every delta starts at zero, so a gate sees no gradient until its module has learnt something:
    # with frozen (lr 0) modules the gate gradient is exactly zero; after a warm-up it is not.
    def first_gate_grad(warmup: int, lr: float) -> float:
        config = S3DeltaConfig(budget_percent=2.0, warmup_epochs=warmup, search_epochs=1, epochs=1, batch_size=4,
                               lr=lr)
        return s3delta_search(harness, EXAMPLES, EXAMPLES, config.template, WORDS, config, seed=0).history[0][
            "gate_grad_norm"]

    assert first_gate_grad(0, lr=0.0) == 0.0
    assert first_gate_grad(2, lr=0.05) > 1e-3
    with pytest.raises(AutoPromptError, match="warmup_epochs"):
        S3DeltaConfig(warmup_epochs=-1)
    with pytest.raises(AutoPromptError, match="gate_optimizer"):
        S3DeltaConfig(gate_optimizer="rmsprop")
    with pytest.raises(AutoPromptError, match="gate_cost"):
        S3DeltaConfig(gate_cost=["none", "per_flop"])


def test_per_parameter_cost_divides_each_gate_gradient_by_its_relative_size(harness):
    # The same search twice, one gate step from all-zero logits: with per_parameter, each gate's
    # step is the size-blind one divided by its relative size (then rescaled to the same RMS).
    def first_logits(cost: str) -> torch.Tensor:
        config = S3DeltaConfig(budget_percent=2.0, warmup_epochs=1, search_epochs=1, epochs=1, batch_size=4,
                               lr=0.05, gate_lr=[0.1], gate_cost=[cost], temperature=[0.5])
        found = s3delta_search(harness, EXAMPLES, EXAMPLES, config.template, WORDS, config, seed=0)
        return torch.tensor(found.logits, dtype=torch.float64)  # the gate logits α after one step from 0

    entries = search_space(harness, S3DeltaConfig())
    sizes = torch.tensor(Delta.from_structure(harness, entries).module_parameters(), dtype=torch.float64)
    blind, costed = first_logits("none"), first_logits("per_parameter")
    assert blind.pow(2).mean().sqrt() == pytest.approx(0.1, rel=1e-3)  # normalised SGD: lr in RMS
    expected = blind / (sizes / sizes.mean())
    expected = expected * (0.1 / expected.pow(2).mean().sqrt())
    torch.testing.assert_close(costed, expected, atol=1e-5, rtol=1e-3)
    assert not torch.allclose(costed, blind)


@pytest.mark.parametrize("optimizer, cost", [("normalized_sgd", "none"), ("normalized_sgd", "per_parameter"),
                                             ("adam", "none")])
def test_gate_step_moves_the_gates(harness, optimizer, cost):
    config = S3DeltaConfig(budget_percent=2.0, warmup_epochs=1, search_epochs=1, epochs=1, batch_size=4, lr=0.05,
                           gate_lr=[0.1], gate_optimizer=optimizer, gate_cost=[cost])
    found = s3delta_search(harness, EXAMPLES, EXAMPLES, config.template, WORDS, config, seed=0)
    probs = torch.tensor(found.probabilities)
    # One gate step from all-zero logits leaves the gates unequal, by at most lr in logit space
    # (normalised SGD: exactly lr in RMS; Adam's first step: about lr per gate).
    logits = torch.logit(probs.double())
    assert 0 < float(logits.std()) <= 0.1 * 1.05
    assert found.history[0]["gate_grad_norm"] > 0


def test_clear_errors_for_budget_and_patterns(harness):
    with pytest.raises(AutoPromptError, match="fits no candidate"):
        s3delta_search(harness, EXAMPLES, EXAMPLES, "{text_a} It was {mask}.", WORDS,
                       S3DeltaConfig(budget_percent=0.01, search_epochs=0), seed=0)
    with pytest.raises(AutoPromptError, match="covers the whole search space"):
        s3delta_search(harness, EXAMPLES, EXAMPLES, "{text_a} It was {mask}.", WORDS,
                       S3DeltaConfig(budget_percent=50, search_epochs=0), seed=0)
    with pytest.raises(AutoPromptError, match="matches no module"):
        search_space(harness, S3DeltaConfig(lora_targets=["query_key_value"]))
    with pytest.raises(AutoPromptError, match="strategy"):
        S3DeltaConfig(strategy="random")
    with pytest.raises(AutoPromptError, match="budget_percent"):
        S3DeltaConfig(budget_percent=0)


def test_cli_search_writes_delta_into_best_json(tiny_model_dir, tmp_path, capsys):
    """Through the study (tiny GPT-2: its own module names), best.json carries the delta; evaluate re-attaches it."""
    from autoprompt_kit.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(
        "method: s3delta\ntemplate: '{text_a} It was {mask}.'\nlabel_words: {negative: [terrible], positive: [great]}\n"
        "strategy: blackbox\nbudget_percent: 1.0\nlora_targets: []\nbitfit_targets: [c_attn, c_fc]\n"
        "ln_targets: [ln_1, ln_2]\nadapter_targets: [attn.c_proj, mlp.c_proj]\nsearch_epochs: 1\nepochs: 1\n"
        "batch_size: 8\n")
    out = tmp_path / "best.json"
    assert main(["search", "s3delta", "--space", str(space), "--model", tiny_model_dir, "--storage",
                 f"sqlite:///{tmp_path / 's.db'}", "--trials", "2", "--shots", "4", "--max-examples", "24", "--quiet",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    delta = doc["trial_artifacts"]["delta"]
    assert delta["strategy"] == "blackbox" and delta["parameters"] <= budget_params_of(delta)
    folder = tmp_path / doc["prompt"]["path"]
    assert (folder / "delta.safetensors").exists() and doc["prompt"]["delta"]["structure"] == delta["structure"]
    capsys.readouterr()
    assert main(["delta", str(folder)]) == 0
    assert "trainable parameters" in capsys.readouterr().out
    assert main(["evaluate", "--prompt", str(out), "--max-examples", "24", "--quiet", "--calibration", "none"]) == 0
    shown = capsys.readouterr().out
    assert "delta" in shown
    assert f"-> now {doc['metrics']['test']['accuracy']:.4f}" in shown  # same prompt + delta, same test accuracy


def test_study_runs_each_space_and_gate_cost_once(harness, tmp_path):
    """``spaces`` and ``gate_cost`` lists form a grid: one trial each, defaults first; each trial's
    structure uses only its space's module kinds; the study keeps the best on dev."""
    import optuna

    from autoprompt_kit import load_task
    from autoprompt_kit.search import SearchContext, SearchJob, get_searcher, run_search

    config = S3DeltaConfig(budget_percent=2.0, warmup_epochs=1, search_epochs=1, epochs=1, batch_size=8,
                           label_words=WORDS, spaces=["lora+ln+adapter", "lora+ln"], gate_cost=["none", "per_parameter"],
                           )
    searcher = get_searcher("s3delta")(config)
    fixed = {"gate_lr": 0.1, "temperature": 0.5}  # single-valued choices: one value in every trial
    assert searcher.grid() == [{"space": "lora+ln+adapter", "gate_cost": "none", **fixed},
                               {"space": "lora+ln+adapter", "gate_cost": "per_parameter", **fixed},
                               {"space": "lora+ln", "gate_cost": "none", **fixed},
                               {"space": "lora+ln", "gate_cost": "per_parameter", **fixed}]
    job = SearchJob(searcher, "s3", f"sqlite:///{tmp_path / 's3.db'}", n_trials=4, progress=False,
                    task_info={"name": "mr"}, model_info={"name": "tiny", "kind": harness.kind})
    study = run_search(job, SearchContext(load_task("mr", shots=4, max_examples=40), harness, 13))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.params for t in done] == searcher.grid()
    for t in done:
        kinds = {entry["kind"] for entry in t.user_attrs["delta"]["structure"]}
        assert kinds and kinds <= set(t.params["space"].split("+"))
    assert study.best_trial.value == max(t.value for t in done)
    assert {e["kind"] for e in search_space(harness, config)} == {"lora", "ln", "adapter"}
    assert {e["kind"] for e in search_space(harness, config.restricted("lora+ln"))} == {"lora", "ln"}
    with pytest.raises(AutoPromptError, match="'\\+'-joined module kinds"):
        S3DeltaConfig(spaces=["lora+prefix"])
    with pytest.raises(AutoPromptError, match="is empty"):
        S3DeltaConfig(spaces=["bitfit"])  # BitFit has no targets by default


def budget_params_of(delta: dict) -> float:
    return delta["budget_percent"] / 100 * delta["parameters"] / delta["fraction"]


@pytest.mark.slow
def test_s3delta_on_the_real_model(real_harness, tmp_path):
    """Gemma 3 270M: a short bi-level search at 0.01% finds a structure within budget; it trains and round-trips."""
    from autoprompt_kit import load_task

    task = load_task("mr", shots=4, seed=13)
    config = S3DeltaConfig(budget_percent=0.01, search_epochs=1, epochs=2, batch_size=4)
    found = s3delta_search(real_harness, task.train, task.dev, config.template, config.label_words, config, seed=0)
    assert 0 < found.parameters <= found.budget == budget_params(real_harness, 0.01)
    torch.manual_seed(0)
    delta = Delta.from_structure(real_harness, found.structure).attach(real_harness)
    try:
        real_harness.train(task.train, config.template, config.label_words, delta.parameters(), epochs=2, lr=5e-3,
                           batch_size=4)
        trained = real_harness.evaluate(task.dev, config.template, config.label_words)
        delta.save(tmp_path / "d")
    finally:
        delta.detach()
    with Delta.load(tmp_path / "d", real_harness).attach(real_harness):
        again = real_harness.evaluate(task.dev, config.template, config.label_words)
    assert (again.predictions == trained.predictions).all()
