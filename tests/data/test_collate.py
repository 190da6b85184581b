"""Collators: padding invariants, packed boundaries, and packed == unpacked on a tiny Llama."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.data.collate import collate_left, collate_packed, collate_right, token_budget_batches
from rlhfkit.data.tokenize import EncodedExample

PAD = 0


def examples() -> list[EncodedExample]:
    # labels: -100 at position 0 and on "prompt" tokens, as encode_sft makes them
    return [
        EncodedExample([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]),
        EncodedExample([11, 12, 13, 14, 15, 16, 17], [-100, 12, 13, 14, 15, 16, 17]),
        EncodedExample([21, 22, 23], [-100, -100, 23]),
    ]


def test_collate_right_padding_invariants():
    exs = examples()
    b = collate_right(exs, PAD, pad_to_multiple_of=4)
    assert b.input_ids.shape == b.labels.shape == b.attention_mask.shape == (3, 8)
    assert b.attention_mask.dtype == torch.bool and b.input_ids.dtype == torch.long
    assert b.position_ids is None and not b.is_packed
    for i, ex in enumerate(exs):
        n = len(ex.input_ids)
        assert b.input_ids[i, :n].tolist() == ex.input_ids
        assert b.labels[i, :n].tolist() == ex.labels
        assert b.attention_mask[i].tolist() == [True] * n + [False] * (8 - n)
        assert (b.input_ids[i, n:] == PAD).all() and (b.labels[i, n:] == -100).all()
    assert b.num_tokens == sum(sum(x != -100 for x in ex.labels) for ex in exs)
    with pytest.raises(ValueError):
        collate_right([EncodedExample([1, 2], [1])], PAD)


def test_collate_packed_positions_and_boundary_labels():
    exs = examples()
    # a label at position 0 (e.g. a pretraining block) must still not cross a boundary
    exs[1].labels[0] = 11
    b = collate_packed(exs)
    assert b.attention_mask is None and b.is_packed
    assert b.input_ids.shape == b.labels.shape == b.position_ids.shape == (1, 15)
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert b.input_ids[0].tolist() == [t for ex in exs for t in ex.input_ids]
    # the shifted loss predicts labels[t + 1] from t: wherever the next token starts an
    # example, that target must be ignored
    labels, pos = b.labels[0], b.position_ids[0]
    for t in range(14):
        if pos[t + 1] == 0:
            assert labels[t + 1] == -100
    unpacked = collate_right(examples(), PAD)
    assert b.num_tokens == unpacked.num_tokens


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).eval()


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(labels[t + 1] | ..t) over targets != -100."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(attn):
    model = tiny_llama(attn)
    assert model.config._attn_implementation == attn
    exs = examples()
    packed = collate_packed(exs)
    with torch.no_grad():
        logits = model(**packed.model_inputs()).logits  # (1, 15, V)
        start = 0
        for ex in exs:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits  # (1, n, V)
            n = len(ex.input_ids)
            torch.testing.assert_close(logits[:, start : start + n], alone, atol=1e-5, rtol=0)
            start += n
        padded = collate_right(exs, PAD)
        padded_logits = model(**padded.model_inputs()).logits
    # the same loss, summed over the same targets, in either layout
    torch.testing.assert_close(
        summed_nll(logits, packed.labels),
        summed_nll(padded_logits, padded.labels),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_rows_capped_packing_equals_unpacked(attn):
    # Rows of at most 8 tokens: [5 tokens] [7 tokens] [3 tokens]: the 7 would overflow the
    # first row, the 3 would overflow the second. Shorter rows end in a padding segment.
    model = tiny_llama(attn)
    exs = examples()
    packed = collate_packed(exs, max_row_tokens=8, pad_id=PAD)
    assert packed.input_ids.shape == (3, 7)
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1]  # pad segment restarts
    assert packed.labels[0, 5:].tolist() == [-100, -100]
    assert packed.num_tokens == collate_packed(exs).num_tokens
    two = collate_packed(exs, max_row_tokens=12, pad_id=PAD)  # [5 + 7] [3]
    assert two.input_ids.shape == (2, 12)
    for batch in (packed, two):
        with torch.no_grad():
            logits = model(**batch.model_inputs()).logits
        flat = collate_packed(exs)
        with torch.no_grad():
            flat_logits = model(**flat.model_inputs()).logits
        torch.testing.assert_close(
            summed_nll(logits, batch.labels),
            summed_nll(flat_logits, flat.labels),
            atol=1e-4,
            rtol=0,
        )


def test_packing_is_ignored_when_a_kv_cache_exists():
    """transformers 5.23: with config.use_cache=True (the default) a forward without
    `use_cache=False` makes a DynamicCache, and packed-sequence detection is skipped, so
    examples attend across boundaries. This is why LMBatch.model_inputs() sets
    use_cache=False. If this test fails, transformers changed; the rule is still safe."""
    model = tiny_llama("sdpa")
    exs = examples()
    b = collate_packed(exs[:2])
    with torch.no_grad():
        leaky = model(input_ids=b.input_ids, position_ids=b.position_ids).logits
        alone = model(input_ids=torch.tensor([exs[1].input_ids])).logits
    assert not torch.allclose(leaky[:, 5:], alone, atol=1e-3)


def test_token_budget_batches():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    batches = token_budget_batches(lengths, max_tokens=12, shuffle=True, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(sum(lengths[i] for i in b) <= 12 for b in batches)
    assert batches == token_budget_batches(lengths, 12, shuffle=True, seed=3)
    others = [token_budget_batches(lengths, 12, shuffle=True, seed=s) for s in range(5)]
    assert any(o != batches for o in others)
    in_order = token_budget_batches(lengths, 12, shuffle=False)
    assert in_order[:3] == [[0], [1, 2], [3, 4]]
    with pytest.raises(ValueError, match="more than max_tokens"):
        token_budget_batches([3, 20], 12)


def test_collate_left():
    b = collate_left([[5, 6, 7], [8], [9, 10]], PAD)
    assert b.input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert b.attention_mask.dtype == torch.bool
    assert b.attention_mask.tolist() == [[True] * 3, [False, False, True], [False, True, True]]
    assert b.lengths.tolist() == [3, 1, 2]
    with pytest.raises(ValueError):
        collate_left([[1], []], PAD)
