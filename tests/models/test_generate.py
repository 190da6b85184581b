"""Batched KV-cache sampling: agreement with HF generate and with a fresh forward pass."""

import pytest
import torch
from transformers import GPT2Config

from rlhfkit.models import generate as gen_mod
from rlhfkit.models.generate import (
    Generation,
    decode_responses,
    filter_logits,
    left_pad,
    position_ids_from_mask,
    sample,
)
from rlhfkit.models.presets import build_model

PROMPTS = ["The cat sat", "Add two and three please, then sort the list", "Hi", "A big red dog ran"]


def _lively(spec, tokenizer):
    """A model with large random weights, so greedy outputs vary from token to token
    (the default 0.02 init makes a random model repeat one token)."""
    model = build_model(spec, tokenizer, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


@pytest.fixture
def lively_model(tiny_tokenizer):
    return _lively("test", tiny_tokenizer)


@pytest.fixture
def prompts(tiny_tokenizer):
    ids = [tiny_tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in ids}) > 2  # differing lengths: real left padding
    return ids


def _sample(model, tok, prompts, **kw):
    kw.setdefault("max_new_tokens", 12)
    return sample(
        model, prompts, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw
    )


def _full_forward_logprobs(model, gen: Generation, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of one fresh forward over prompt + response, at the response."""
    with torch.no_grad():
        logits = model(
            input_ids=gen.sequences,
            attention_mask=gen.attention_mask.long(),
            position_ids=gen.position_ids,
        ).logits
    P = gen.prompt_ids.shape[1]
    logits = logits[:, P - 1 : -1].float() / temperature  # (B, R): position t predicts t+1
    logp = torch.log_softmax(logits, -1).gather(-1, gen.response_ids[..., None]).squeeze(-1)
    return logp.masked_fill(~gen.response_mask, 0.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_equals_hf_generate(arch, tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    spec = "test" if arch == "llama" else GPT2Config(n_embd=32, n_layer=2, n_head=2)
    model = _lively(spec, tok)  # GPT-2 has dropout: sample() must switch to eval mode
    gen = _sample(model, tok, prompts, temperature=0.0)
    assert model.training
    model.eval()
    hf = model.generate(
        input_ids=gen.prompt_ids,
        attention_mask=gen.prompt_mask.long(),
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    hf_resp = hf[:, gen.prompt_ids.shape[1] :]
    assert gen.response_ids.shape == hf_resp.shape
    assert torch.equal(gen.response_ids, hf_resp)
    assert len(set(gen.response_ids[0].tolist())) > 3  # not a degenerate repeat


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9), (0.0, 0, 1.0)]
)
def test_logprobs_equal_fresh_forward(
    lively_model, tiny_tokenizer, prompts, temperature, top_k, top_p
):
    g = torch.Generator().manual_seed(0)
    gen = _sample(
        lively_model, tiny_tokenizer, prompts, temperature=temperature, top_k=top_k, top_p=top_p,
        generator=g,
    )  # fmt: skip
    expected = _full_forward_logprobs(lively_model, gen, temperature or 1.0)
    torch.testing.assert_close(gen.logprobs, expected, atol=1e-4, rtol=0)
    assert gen.logprobs.dtype == torch.float32
    assert (gen.logprobs[gen.response_mask] <= 0).all()


def test_response_mask_cut_at_eos(lively_model, tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    free = _sample(lively_model, tok, prompts, temperature=0.0)
    # Declare a token that row 0 greedily produces at step 3 to be EOS: the greedy path is
    # unchanged, so row 0 must stop right there, EOS included in its mask.
    eos = int(free.response_ids[0, 3])
    first = free.response_ids[0].tolist().index(eos)
    gen = sample(
        lively_model, prompts, max_new_tokens=12, temperature=0.0, eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    assert gen.ended[0]
    assert gen.response_mask[0].tolist() == [True] * (first + 1) + [False] * (12 - first - 1)
    assert gen.response_ids[0, first] == eos
    assert (gen.response_ids[0, first + 1 :] == tok.pad_token_id).all()
    assert (gen.logprobs[0, first + 1 :] == 0).all()
    for row in range(len(prompts)):  # tokens up to each row's EOS are the free-running ones
        n = int(gen.response_mask[row].sum())
        assert torch.equal(gen.response_ids[row, :n], free.response_ids[row, :n])
        assert gen.ended[row] == (eos in free.response_ids[row].tolist())
    torch.testing.assert_close(
        gen.logprobs, _full_forward_logprobs(lively_model, gen, 1.0), atol=1e-4, rtol=0
    )


def test_stops_early_when_all_rows_end(lively_model, tiny_tokenizer, prompts):
    free = _sample(lively_model, tiny_tokenizer, prompts[:1], temperature=0.0)
    eos = int(free.response_ids[0, 2])
    first = free.response_ids[0].tolist().index(eos)
    gen = sample(
        lively_model, prompts[:1], max_new_tokens=12, temperature=0.0, eos_token_id=eos,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    assert gen.response_ids.shape == (1, first + 1) and gen.ended.all()
    assert gen.response_mask.all()


def test_left_padding_does_not_change_a_row(lively_model, tiny_tokenizer, prompts):
    batch = _sample(lively_model, tiny_tokenizer, prompts, temperature=0.0)
    for row, p in enumerate(prompts):
        alone = _sample(lively_model, tiny_tokenizer, [p], temperature=0.0)
        n = alone.response_ids.shape[1]
        assert torch.equal(alone.response_ids[0], batch.response_ids[row, :n])
        torch.testing.assert_close(alone.logprobs[0], batch.logprobs[row, :n], atol=1e-4, rtol=0)


def test_seeded_generator_is_deterministic(lively_model, tiny_tokenizer, prompts):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return _sample(lively_model, tiny_tokenizer, prompts, temperature=1.0, generator=g)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_shapes_masks_and_training_flag(tiny_model, tiny_tokenizer, prompts):
    tiny_model.train()
    gen = _sample(tiny_model, tiny_tokenizer, prompts, max_new_tokens=5)
    assert tiny_model.training  # restored
    B, P = len(prompts), max(len(p) for p in prompts)
    assert gen.prompt_ids.shape == gen.prompt_mask.shape == (B, P)
    assert gen.response_ids.shape == gen.response_mask.shape == gen.logprobs.shape == (B, 5)
    assert gen.prompt_mask.dtype == gen.response_mask.dtype == gen.ended.dtype == torch.bool
    for row, p in enumerate(prompts):
        assert gen.prompt_ids[row, P - len(p) :].tolist() == p
        assert gen.prompt_mask[row].sum() == len(p) and not gen.prompt_mask[row, : P - len(p)].any()
    assert gen.sequences.shape == (B, P + 5)
    assert all(p.grad is None for p in tiny_model.parameters())
    empty = _sample(tiny_model, tiny_tokenizer, prompts, max_new_tokens=0)
    assert empty.response_ids.shape == (B, 0) and not empty.ended.any()
    with pytest.raises(ValueError):
        _sample(tiny_model, tiny_tokenizer, [[]])


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.equal(filter_logits(logits), logits)
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2).tolist() == [[True, False, False, True]]
    # probs ~ [0.087, 0.644, 0.237, 0.032]: top_p 0.7 keeps the two best (0.644 < 0.7 <= 0.881)
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=1e-9)).sum() == 3  # the best always stays


def test_top_k_one_is_greedy(lively_model, tiny_tokenizer, prompts):
    greedy = _sample(lively_model, tiny_tokenizer, prompts, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    k1 = _sample(lively_model, tiny_tokenizer, prompts, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(greedy.response_ids, k1.response_ids)


def test_helpers_and_decode(tiny_tokenizer):
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    tok = tiny_tokenizer
    a, b = tok.encode("The cat"), tok.encode(" sat!")
    eos, pad = tok.eos_token_id, tok.pad_token_id
    width = max(len(a) + 1, len(b))
    rows = [a + [eos] + [pad] * (width - len(a) - 1), b + [pad] * (width - len(b))]
    gen = Generation(
        prompt_ids=ids,
        prompt_mask=mask,
        response_ids=torch.tensor(rows),
        response_mask=torch.tensor([[t != pad for t in r] for r in rows]),
        logprobs=torch.zeros(2, width),
        ended=torch.tensor([True, False]),
    )
    assert decode_responses(tok, gen) == ["The cat", " sat!"]


# --- stop_at_eos=False, and the sparse end check (the Llama fast path: test_llama_decoder.py) ---


def test_stop_at_eos_false_gives_exactly_n_tokens(lively_model, tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    free = _sample(lively_model, tok, prompts, temperature=0.0)
    eos = int(free.response_ids[0, 3])  # row 0 greedily produces this token at step 3
    kw = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    stop = sample(lively_model, prompts, temperature=0.0, **kw)
    full = sample(lively_model, prompts, temperature=0.0, stop_at_eos=False, **kw)
    assert full.response_ids.shape == (len(prompts), 12) and full.response_mask.all()
    assert full.ended[0] and torch.equal(full.ended, stop.ended)
    assert torch.equal(full.response_ids, free.response_ids)  # EOS is an ordinary token
    n = stop.response_mask.sum(-1)
    for row in range(len(prompts)):
        assert torch.equal(full.response_ids[row, : n[row]], stop.response_ids[row, : n[row]])
    torch.testing.assert_close(
        full.logprobs, _full_forward_logprobs(lively_model, full, 1.0), atol=1e-4, rtol=0
    )
    # Sampling: the same draws as with stopping, up to each row's EOS.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = sample(lively_model, prompts, generator=g1, **kw)
    b = sample(lively_model, prompts, generator=g2, stop_at_eos=False, **kw)
    mask = a.response_mask
    assert torch.equal(a.response_ids[mask], b.response_ids[:, : mask.shape[1]][mask])


def test_sparse_end_check_gives_the_same_result(monkeypatch, lively_model, tiny_tokenizer, prompts):
    """On accelerators sample() checks for all-ended rows every few tokens and cuts the
    surplus: the result must equal checking every token."""
    free = _sample(lively_model, tiny_tokenizer, prompts, temperature=0.0)
    eos = int(free.response_ids[0, 2])
    rows = [p for r, p in enumerate(prompts) if eos in free.response_ids[r].tolist()]
    kw = dict(max_new_tokens=12, temperature=0.0, eos_token_id=eos, pad_token_id=0)
    every = sample(lively_model, rows, **kw)
    assert every.ended.all() and every.response_ids.shape[1] < 12
    monkeypatch.setattr(gen_mod, "_end_check_interval", lambda device: 5)
    sparse = sample(lively_model, rows, **kw)
    assert torch.equal(every.response_ids, sparse.response_ids)
    assert torch.equal(every.response_mask, sparse.response_mask)
    assert torch.equal(every.logprobs, sparse.logprobs)


def test_outputs_are_ordinary_tensors(tiny_model, tiny_tokenizer, prompts):
    """sample() runs under inference_mode; what it returns must still work with autograd."""
    gen = _sample(tiny_model, tiny_tokenizer, prompts, max_new_tokens=4)
    for t in (gen.response_ids, gen.logprobs, gen.response_mask, gen.ended, gen.prompt_ids):
        assert not t.is_inference()
    w = torch.ones((), requires_grad=True)
    (gen.logprobs * w).sum().backward()  # would raise for an inference tensor saved for backward
    gen.logprobs.add_(0.0)  # in-place outside inference mode
