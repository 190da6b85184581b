"""sampling/generator.py: the generator seam: an engine picked by name or from a config,
and our engine's interface."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import PPOConfig
from rlhfkit.errors import UserError
from rlhfkit.models.generate import sample
from rlhfkit.models.presets import build_model
from rlhfkit.sampling.generator import HFGenerator, make_generator
from rlhfkit.sampling.settings import GenerationSettings, ResponseGenerator


def test_an_engine_is_picked_by_name_or_from_a_config(tiny_tokenizer):
    model = build_model("test", tiny_tokenizer, seed=0)
    for engine in ("hf", PPOConfig()):
        gen = make_generator(model, tiny_tokenizer, engine)
        assert isinstance(gen, HFGenerator) and gen.model is model
    with pytest.raises(UserError, match="unknown generator 'tgi': choose from hf, vllm"):
        make_generator(model, tiny_tokenizer, "tgi")


def test_our_engine_samples_what_models_generate_samples(tiny_tokenizer):
    """`HFGenerator` is `models.generate.sample` on the live module, with the texts decoded."""
    tok, model = tiny_tokenizer, build_model("test", tiny_tokenizer, seed=0)
    ids = [tok("The cat sat", add_special_tokens=False)["input_ids"], [tok.bos_token_id]]
    settings = GenerationSettings(max_new_tokens=5, temperature=0.8)
    got = make_generator(model, tok).generate(ids, settings, torch.Generator().manual_seed(3))
    want = sample(
        model, ids, max_new_tokens=5, temperature=0.8, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert torch.equal(got.response_ids, want.response_ids)
    assert torch.equal(got.logprobs, want.logprobs) and len(got.texts) == 2


def test_our_engine_has_the_interface():
    for name in ("device", "generate", "sync_weights"):
        assert hasattr(HFGenerator, name) and hasattr(ResponseGenerator, name)
