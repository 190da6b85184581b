"""Tokenizer training, presets and model building."""

import json

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhfkit.errors import UserError
from rlhfkit.models.presets import PRESETS, build_model, count_parameters, train_tokenizer

SAMPLES = [
    "The cat sat on the mat.",
    "  leading and  double  spaces , before punctuation .",
    "tabs\tand\nnewlines\n\n",
    "unicode: héllo wörld — naïve café, 日本語, emoji 🙂🚀, Ωμέγα",
    "<|eos|> special tokens in text <|user|>",
    "",
]


def test_tokenizer_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES:
        ids = tiny_tokenizer.encode(text)
        assert loaded.encode(text) == ids
        assert tiny_tokenizer.decode(ids) == text  # byte-level: exact round trip
        assert loaded.decode(ids) == text
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "model_max_length"):
        assert getattr(loaded, name) == getattr(tiny_tokenizer, name)
    assert loaded.chat_template == tiny_tokenizer.chat_template


def test_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    for special in ("<|user|>", "<|assistant|>", "<|system|>", "<|eos|>"):
        assert len(tok.encode(special)) == 1  # never split into bytes
    assert tok.encode("hello")[0] != tok.bos_token_id  # encode adds no BOS


def test_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == "<|bos|><|system|>\nBe brief.\n<|user|>\nAdd 2 and 3.\n<|assistant|>\n5<|eos|>"
    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>\n")
    full_ids = tok.apply_chat_template(chat)["input_ids"]  # transformers 5: a dict by default
    prompt_ids = tok.apply_chat_template(chat[:2], add_generation_prompt=True)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[0] == tok.bos_token_id and full_ids[-1] == tok.eos_token_id
    with pytest.raises(Exception, match="roles"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_vocab_size_is_respected(tiny_texts):
    tok = train_tokenizer(tiny_texts * 3, vocab_size=300)
    assert len(tok) == 300
    with pytest.raises(UserError):
        train_tokenizer(tiny_texts, vocab_size=100)


@pytest.mark.parametrize(
    "name, low, high",
    [("tiny", 0.8e6, 1.3e6), ("small", 4.5e6, 7e6), ("base", 20e6, 30e6), ("test", 5e4, 1.5e5)],
)
def test_preset_sizes_at_vocab_2048(name, low, high):
    config = LlamaConfig(**PRESETS[name], vocab_size=2048)
    with torch.device("meta"):  # no memory, no init time
        model = LlamaForCausalLM(config)
    assert low <= count_parameters(model) <= high
    assert config.max_position_embeddings >= 512
    assert config._attn_implementation == "sdpa"


def test_build_model_from_preset(tiny_tokenizer):
    state = torch.get_rng_state()
    model = build_model("test", tiny_tokenizer, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert model.config.vocab_size == len(tiny_tokenizer)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(model.config, key) == getattr(tiny_tokenizer, key)
        assert getattr(model.generation_config, key) == getattr(tiny_tokenizer, key)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    same = build_model("test", tiny_tokenizer, seed=3)
    other = build_model("test", tiny_tokenizer, seed=4)
    w = model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, same.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(w, other.model.layers[0].mlp.up_proj.weight)
    out = model(torch.tensor([tiny_tokenizer.encode("The cat sat.")])).logits
    assert out.shape[-1] == len(tiny_tokenizer) and torch.isfinite(out).all()


def test_build_model_from_config_json(tiny_tokenizer, tmp_path):
    cfg = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    model = build_model(str(path), tiny_tokenizer, seed=0)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert model.config.eos_token_id == tiny_tokenizer.eos_token_id
    assert build_model(tmp_path, tiny_tokenizer).config.n_embd == 32  # a folder works too


def test_build_model_errors(tiny_tokenizer, tmp_path):
    with pytest.raises(UserError, match="preset"):
        build_model("huge", tiny_tokenizer)
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="config.json"):
        build_model(bad, tiny_tokenizer)
    bad.write_text('{"model_type": "no-such-model"}')
    with pytest.raises(UserError):
        build_model(bad, tiny_tokenizer)


def test_count_parameters_counts_tied_once(tiny_model):
    unique = {id(p): p.numel() for p in tiny_model.parameters()}
    assert count_parameters(tiny_model) == sum(unique.values())
    tiny_model.model.embed_tokens.weight.requires_grad_(False)
    emb = tiny_model.model.embed_tokens.weight.numel()
    assert count_parameters(tiny_model, trainable_only=True) == count_parameters(tiny_model) - emb
