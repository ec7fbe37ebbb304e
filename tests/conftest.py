"""Shared fixtures: tiny random models of every kind with small real (trained) tokenizers.

No real masked LM or T5 weights exist offline, so the mechanics of those paths are tested on
random models built from configs; accuracy is tested on the real default model (slow tests).
"""

from __future__ import annotations

import os

import pytest
import torch

# Tests never reach the hub: unknown names must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the film was terrible and the plot was boring",
    "it was a good movie with a fine cast",
    "a bad film with awful dialogue",
    "overall it was great fun to watch",
    "the story is dull but the music is nice",
    "i loved the ending and hated the start",
    "what a waste of time , truly awful",
    "brilliant , moving and funny",
    "not good , not bad , just okay",
    "n / a it was . ! ? ' \" : ;",
]


def _train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "causal":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<pad>", "<s>", "</s>"]
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(CORPUS, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # As bert-base-uncased: accents are stripped, so a lone combining accent tokenizes to nothing.
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if kind == "mlm":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<pad>", "</s>", "[UNK]"] + [f"<extra_id_{i}>" for i in range(3)]
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials)
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "mlm":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="</s>",
                                   additional_special_tokens=[f"<extra_id_{i}>" for i in range(3)])


def _build(kind: str, arch: str):
    from transformers import (BertConfig, BertForMaskedLM, Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config,
                              GPT2LMHeadModel, T5Config, T5ForConditionalGeneration)

    torch.manual_seed(0)
    tok = _train_tokenizer(kind)
    vocab = len(tok)
    if arch == "bert":
        model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=128,
                                           pad_token_id=tok.pad_token_id))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    elif arch == "gemma3":
        # Same architecture as the real default (scaled embeddings, tied head) plus a logit soft-cap
        # so the harness's head swap is checked against the model's own post-processing.
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=128, final_logit_softcapping=5.0,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            sliding_window=16, layer_types=["sliding_attention", "full_attention"]))
    else:
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
            decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_models():
    """``{arch: (model, tokenizer, kind)}`` for bert (mlm), gpt2 and gemma3 (causal), t5 (seq2seq)."""
    return {
        "bert": (*_build("mlm", "bert"), "mlm"),
        "gpt2": (*_build("causal", "gpt2"), "causal"),
        "gemma3": (*_build("causal", "gemma3"), "causal"),
        "t5": (*_build("seq2seq", "t5"), "seq2seq"),
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_models):
    """The tiny GPT-2 saved as a local model folder, so CLI subprocesses can load it."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model, tok, _ = tiny_models["gpt2"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def real_harness():
    """The embedded default model (Gemma 3 270M); converted once into the cache."""
    from autoprompt_kit import Harness

    return Harness(batch_size=16, progress=False, precision="fp32")  # exactness tests stay fp32


def pytest_collection_modifyitems(config, items):
    """Slow tests run only with ``-m slow`` (CI runs them in a second step)."""
    if "slow" in (config.getoption("-m") or "") or os.environ.get("AUTOPROMPT_KIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow end-to-end test; run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
