"""models/llama_decoder.py: the fused decoding path of a stock Llama gives the tokens and
log-probs of Hugging Face's forward (every oneDNN mix, bf16 autocast), and is taken for a
stock Llama only."""

import pytest
import torch
from tests.models.test_generate import PROMPTS, _full_forward_logprobs, _lively, _sample
from transformers import GPT2Config

from rlhfkit.models import llama_decoder as dec_mod
from rlhfkit.models.fast_linear import onednn_works
from rlhfkit.models.presets import PRESETS


def _lively_llama(tokenizer, **config):
    """A lively Llama with grouped-query attention and biases (every fused weight path)."""
    spec = {**PRESETS["test"], "num_key_value_heads": 2, "attention_bias": True}
    return _lively({**spec, "mlp_bias": True, **config}, tokenizer)


# Which matmuls go to oneDNN (at these sizes the default threshold sends none there): none;
# a mix (the prefill's, ~80k+ MACs, with plain weights; in decode only the LM head's, 65k,
# packed; the other decode matmuls are 8-16k); every one (packed weights).
ONEDNN_MIN_MACS = {"off": 10**18, "prefill": 50_000, "all": 0}


@pytest.mark.parametrize("onednn", list(ONEDNN_MIN_MACS))
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9), (0.0, 0, 1)])
def test_llama_fast_path_matches_hf_forward(
    monkeypatch, tiny_tokenizer, prompts, temperature, top_k, top_p, onednn
):
    if onednn != "off" and not onednn_works():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(dec_mod, "_ONEDNN_MIN_MACS", ONEDNN_MIN_MACS[onednn])
    model = _lively_llama(tiny_tokenizer)
    assert dec_mod.is_stock_llama(model)
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=16)
    fast = _sample(model, tiny_tokenizer, prompts, generator=torch.Generator().manual_seed(3), **kw)
    _generic(monkeypatch)
    slow = _sample(model, tiny_tokenizer, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)
    expected = _full_forward_logprobs(model, fast, temperature or 1.0)
    torch.testing.assert_close(fast.logprobs, expected, atol=1e-4, rtol=0)


def test_llama_fast_path_under_bf16_autocast(monkeypatch, tiny_tokenizer, prompts):
    model = _lively_llama(tiny_tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _sample(model, tiny_tokenizer, prompts, temperature=0.0)
        _generic(monkeypatch)
        slow = _sample(model, tiny_tokenizer, prompts, temperature=0.0)
    assert torch.equal(fast.response_ids, slow.response_ids)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-2, rtol=0)


def test_fast_path_only_for_a_stock_llama(tiny_tokenizer):
    model = _lively("test", tiny_tokenizer)
    assert dec_mod.is_stock_llama(model)
    handle = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: o)
    assert not dec_mod.is_stock_llama(model)  # a hook would be skipped: take HF's forward
    handle.remove()
    model.model.layers[1].self_attn.q_proj = torch.nn.Sequential(
        model.model.layers[1].self_attn.q_proj
    )
    assert not dec_mod.is_stock_llama(model)  # e.g. an adapter around a projection
    gpt2 = _lively(GPT2Config(n_embd=32, n_layer=2, n_head=2), tiny_tokenizer)
    assert not dec_mod.is_stock_llama(gpt2)


@pytest.fixture
def prompts(tiny_tokenizer):
    return [tiny_tokenizer.encode(p) for p in PROMPTS]  # of differing lengths (test_generate.py)


def _generic(monkeypatch):
    """Force sample() onto its model-agnostic path (HF forward + DynamicCache)."""
    monkeypatch.setattr(dec_mod.LlamaDecoder, "build", classmethod(lambda cls, *a: None))
