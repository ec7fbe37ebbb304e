"""Delta modules on tiny random models: attach/detach exactness, sizes, training, files, PEFT export."""

from __future__ import annotations

import pytest
import torch

from autoprompt_kit import AutoPromptError, Example, Harness
from autoprompt_kit.delta import (
    Delta,
    DeltaLibrary,
    DeltaSpec,
    count_parameters,
    structure_view,
)

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": ["bad"], "positive": ["great"]}
EXAMPLES = [Example("the movie was great", 1), Example("a bad film", 0), Example("brilliant , moving", 1),
            Example("what a waste of time", 0)]

SPECS = {
    "lora": DeltaSpec("lora", ["q_proj", "v_proj"], r=2),
    "adapter": DeltaSpec("adapter", ["self_attn.o_proj", "mlp.down_proj"], bottleneck=3),
    "bitfit": DeltaSpec("bitfit", ["o_proj"]),
    "ln": DeltaSpec("ln", [r".*norm"]),
    "prefix": DeltaSpec("prefix", num_tokens=3),
}


@pytest.fixture(scope="module")
def harness(make_harness):
    return make_harness("gemma3", precision=None)


def scores(harness: Harness, template: str = TEMPLATE) -> torch.Tensor:
    return torch.as_tensor(harness.evaluate(EXAMPLES, template, WORDS).word_logprobs)


@pytest.mark.parametrize("kind", list(SPECS))
def test_attach_train_detach(harness, kind):
    """Zero-initialised deltas change nothing until trained; detach restores the backbone exactly."""
    before = scores(harness)
    frozen_flags = [p.requires_grad for p in harness.model.parameters()]
    torch.manual_seed(0)
    delta = Delta.from_specs(harness, [SPECS[kind]]).attach(harness)
    attached = scores(harness)
    if kind != "prefix":  # extra key/value positions take attention mass even before training
        assert torch.equal(attached, before)
    assert all(not p.requires_grad for p in harness.model.parameters())
    losses = harness.train(EXAMPLES, TEMPLATE, WORDS, delta.parameters(), epochs=4, lr=2e-2, batch_size=4)
    if kind in ("lora", "ln", "prefix"):
        # (BitFit and adapters here sit before Gemma's post-norms, where a step this large overshoots
        # on a random model's tiny activations; their change is still checked below.)
        assert losses[-1] < losses[0]
    assert not torch.allclose(scores(harness), attached)
    delta.detach()
    assert torch.equal(scores(harness), before)
    assert [p.requires_grad for p in harness.model.parameters()] == frozen_flags


def test_parameter_counts_exact(harness):
    cfg = harness.model.config
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    q = cfg.num_attention_heads * cfg.head_dim
    layers = cfg.num_hidden_layers
    expect = {
        "lora": layers * 2 * ((d + q) + (d + kv)),                       # r=2: r·(in + out) for q and v
        "adapter": layers * 2 * (d * 3 + 3 + 3 * d + d),                 # down W+b, up W+b
        "bitfit": layers * d,                                            # o_proj output bias
        "ln": layers * (4 * d + 2 * cfg.head_dim) + d,                   # 4 norms + q/k norms per layer + final
        "prefix": layers * 2 * cfg.num_key_value_heads * 3 * cfg.head_dim,
    }
    for kind, spec in SPECS.items():
        delta = Delta.from_specs(harness, [spec])
        assert delta.num_parameters() == expect[kind], kind
        assert delta.fraction(harness) == pytest.approx(expect[kind] / count_parameters(harness.model))


def test_mixed_structure_save_load_round_trip(harness, tmp_path):
    torch.manual_seed(1)
    delta = Delta.from_specs(harness, [SPECS["lora"], SPECS["ln"], SPECS["bitfit"]]).attach(harness)
    harness.train(EXAMPLES, TEMPLATE, WORDS, delta.parameters(), epochs=2, lr=3e-2, batch_size=2)
    trained = scores(harness)
    delta.save(tmp_path / "d")
    delta.detach()
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert files == ["delta.json", "delta.safetensors"]
    loaded = Delta.load(tmp_path / "d", harness)
    assert loaded.structure() == delta.structure()
    with loaded.attach(harness):
        assert torch.allclose(scores(harness), trained, atol=1e-6)
    view = structure_view(harness, loaded)
    assert "+lora" in view and "+ln" in view and "delta: " in view


def test_library_switches_deltas_on_one_backbone(harness, tmp_path):
    before = scores(harness)
    lib = DeltaLibrary(harness)
    outs = {}
    for name, spec in (("a", SPECS["bitfit"]), ("b", SPECS["lora"])):
        torch.manual_seed(2)
        delta = Delta.from_specs(harness, [spec]).attach(harness)
        harness.train(EXAMPLES, TEMPLATE, WORDS, delta.parameters(), epochs=2, lr=5e-2, batch_size=2)
        outs[name] = scores(harness)
        delta.detach()
        lib.add(name, delta)
    lib.use("a")
    assert torch.allclose(scores(harness), outs["a"], atol=1e-6)
    lib.use("b")
    assert torch.allclose(scores(harness), outs["b"], atol=1e-6)
    lib.use(None)
    assert torch.equal(scores(harness), before)
    with pytest.raises(AutoPromptError, match="no delta named"):
        lib.use("c")


def test_soft_prompt_delta(harness):
    template = "{soft:It was} {text_a} {mask}."
    spec = DeltaSpec("soft", template=template)
    delta = Delta.from_specs(harness, [spec]).attach(harness)
    start = scores(harness, template)
    soft = delta.soft_embeddings()
    assert soft is not None and delta.num_parameters() == soft.numel()
    harness.train(EXAMPLES, template, WORDS, delta.parameters(), epochs=2, lr=5e-2, batch_size=2,
                  soft_embeddings=soft)
    assert not torch.allclose(scores(harness, template), start)
    delta.detach()
    assert torch.allclose(scores(harness, template), start)


def test_peft_export_same_predictions(harness, tiny_models, tmp_path):
    import copy

    from peft import PeftModel

    torch.manual_seed(3)
    delta = Delta.from_specs(harness, [DeltaSpec("lora", ["q_proj", "v_proj", "down_proj"], r=2, alpha=4)])
    delta.attach(harness)
    harness.train(EXAMPLES, TEMPLATE, WORDS, delta.parameters(), epochs=2, lr=5e-2, batch_size=2)
    ours = harness.evaluate(EXAMPLES, TEMPLATE, WORDS)
    delta.export_peft(tmp_path / "peft", harness)
    delta.detach()
    model, tok, kind = tiny_models["gemma3"]
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "peft"))
    theirs = Harness(peft_model.base_model.model, tok, kind=kind, progress=False).evaluate(EXAMPLES, TEMPLATE, WORDS)
    assert (ours.predictions == theirs.predictions).all()
    assert torch.allclose(torch.as_tensor(ours.word_logprobs), torch.as_tensor(theirs.word_logprobs), atol=1e-5)
    mixed = Delta.from_specs(harness, [SPECS["lora"], SPECS["bitfit"]])
    with pytest.raises(AutoPromptError, match="only LoRA-only"):
        mixed.export_peft(tmp_path / "mixed", harness)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
def test_other_architectures(tiny_models, arch):
    model, tok, kind = tiny_models[arch]
    harness = Harness(model, tok, kind=kind, progress=False)
    template = "{text_a} It was {mask}." if kind != "mlm" else "{text_a} It was {mask} ."
    before = torch.as_tensor(harness.evaluate(EXAMPLES, template, WORDS).word_logprobs)
    target = {"bert": "attention.self.query", "gpt2": "c_fc", "t5": "SelfAttention.q"}[arch]
    kind_ = "lora" if arch != "gpt2" else "bitfit"  # GPT-2's Conv1D is not a Linear: BitFit works on any output
    delta = Delta.from_specs(harness, [DeltaSpec(kind_, [target])]).attach(harness)
    harness.train(EXAMPLES, template, WORDS, delta.parameters(), epochs=2, lr=5e-2, batch_size=2)
    delta.detach()
    assert torch.equal(torch.as_tensor(harness.evaluate(EXAMPLES, template, WORDS).word_logprobs), before)


def test_clear_errors(harness):
    with pytest.raises(AutoPromptError, match="matches no module"):
        Delta.from_specs(harness, [DeltaSpec("lora", ["query_key_value"])])
    with pytest.raises(AutoPromptError, match="cannot take it"):
        Delta.from_specs(harness, [DeltaSpec("lora", [r".*norm"])])
    with pytest.raises(AutoPromptError, match="unknown delta kind"):
        DeltaSpec("ia3", ["q_proj"])
    with pytest.raises(AutoPromptError, match="needs target module patterns"):
        DeltaSpec("lora", [])
    with pytest.raises(AutoPromptError, match="attach it to a Harness"):
        Delta.from_specs(harness, [SPECS["prefix"]]).attach(harness.model)
    with pytest.raises(AutoPromptError, match="no delta structure"):
        Delta.load("/nonexistent/delta", harness)


def test_ln_tuning_on_a_biased_layernorm(tiny_models):
    """BERT's LayerNorm has a bias: LN tuning gets gain + bias deltas; the backbone's own bias stays frozen."""
    model, tok, kind = tiny_models["bert"]
    harness = Harness(model, tok, kind=kind, progress=False)
    delta = Delta.from_specs(harness, [DeltaSpec("ln", ["output.LayerNorm"])])
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    assert delta.num_parameters() == layers * 2 * 2 * hidden  # attention + FFN output norms, gain + bias
    with delta.attach(harness):
        assert count_parameters(harness.model, trainable_only=True) == 0
        assert sorted(k.split(".")[-1] for k in delta.state_dict())[:2] == ["scale", "scale"]
