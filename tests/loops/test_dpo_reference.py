"""loops/dpo_reference.py: DPO's reference pass gives each response's summed log-prob as a
plain per-sequence forward does (packed or padded, in any micro-batches), and its cache is
read back only for the same data and reference."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.dpo_data import encode_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.distributed import Dist
from rlhfkit.loops.dpo_reference import compute_reference, fingerprint, read_cache, write_cache
from rlhfkit.models.presets import build_model
from rlhfkit.types import IGNORE_INDEX

RECORDS = [
    RankingRecord("Say the cat", ["the cat sat", "a dog", "red"], [0, 2, 1], None, 1, "f"),
    RankingRecord("Name a colour please", ["blue", "big red house"], [1, 0], None, 2, "f"),
]


def _naive(model, seq) -> float:
    """log pi(y | x) of one sequence: its own forward, summed over its response tokens."""
    ids = torch.tensor([seq.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
    return sum(float(logp[t - 1, tok]) for t, tok in enumerate(seq.labels) if tok != IGNORE_INDEX)


@pytest.mark.parametrize("packing", [False, True])
def test_the_reference_pass_is_a_per_sequence_forward(tiny_tokenizer, packing):
    model = build_model("test", tiny_tokenizer, seed=0)
    examples, _ = encode_preferences(RECORDS, tiny_tokenizer, 64)
    got = compute_reference(
        model, examples, pad_id=tiny_tokenizer.pad_token_id, packing=packing, max_len=64,
        batch_size=1, bf16=False, dist=Dist(), device=torch.device("cpu"),
    )  # fmt: skip
    want = [_naive(model, s) for ex in examples for s in ex.sequences]
    assert got.shape == (5,) and got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_the_cache_is_read_back_for_the_same_data_and_reference_only(tiny_tokenizer, tmp_path):
    examples, _ = encode_preferences(RECORDS, tiny_tokenizer, 64)
    key = fingerprint(examples, "runs/sft")
    assert fingerprint(examples, "runs/sft") == key
    assert fingerprint(examples, "runs/other") != key
    assert fingerprint(examples[:1], "runs/sft") != key
    assert read_cache(tmp_path, key) is None
    logprobs = torch.tensor([-1.5, -2.0, -3.25, -0.5, -7.0])
    write_cache(tmp_path, logprobs, key, "runs/sft")
    assert torch.equal(read_cache(tmp_path, key), logprobs)
    assert read_cache(tmp_path, fingerprint(examples, "runs/other")) is None
