"""The SFT speed paths of issue 16: balanced packed rows, the output head on label
positions only, and oneDNN linears only where the CPU has AVX-512. Each must leave the
loss and its gradients as they were (checked in float64 against independent sums)."""

from __future__ import annotations

import math
import random
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import rlhfkit.loops.lm as lm
from rlhfkit.config import SFTConfig
from rlhfkit.data.collate import ROW_PLANS, collate_packed
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.losses import sft_nll
from rlhfkit.models import fast_linear as fl

balanced = ROW_PLANS["balanced"]


def random_examples(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[EncodedExample]:
    """n examples of lo..hi tokens; the first third of each is a masked "prompt"."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]
        cut = max(1, len(ids) // 3)
        out.append(EncodedExample(ids, [-100] * cut + ids[cut:]))
    return out


# --- balanced rows --------------------------------------------------------------------------


def _check_plan(plan: list[list[int]], lengths: list[int], cap: int | None) -> list[int]:
    assert sorted(i for row in plan for i in row) == list(range(len(lengths)))
    assert all(row == sorted(row) for row in plan)  # examples keep their order in a row
    used = [sum(lengths[i] for i in row) for row in plan]
    if cap is not None:
        assert all(u <= cap or len(row) == 1 for u, row in zip(used, plan, strict=True))
    return used


def test_balanced_rows_are_nearly_equally_full():
    # The regression case: 16 examples of 11-36 tokens (the world's SFT data) under the
    # 256-token cap. In order, rows hold ~256 and ~64 tokens and the second is padded to
    # 256: ~60% more cells than tokens. Balanced: ceil(total / 256) rows whose fills
    # differ by less than the longest example, so the padding is below one example.
    rng = random.Random(1)
    lengths = [rng.randint(11, 36) for _ in range(16)]
    total = sum(lengths)
    assert 256 < total <= 512
    used = _check_plan(balanced(lengths, 256), lengths, 256)
    assert len(used) == math.ceil(total / 256)
    assert max(used) - min(used) < max(lengths)
    cells_in_order = len(ROW_PLANS["in_order"](lengths, 256)) * 256
    assert len(used) * max(used) < total + max(lengths) < cells_in_order


@pytest.mark.parametrize(
    ("lengths", "cap", "expected"),
    [
        ([5, 7, 3], None, [[0, 1, 2]]),  # no cap: one row
        ([5, 7, 3], 15, [[0, 1, 2]]),  # everything fits one row
        ([5, 7, 3], 8, [[1], [0, 2]]),  # 7 alone, 5 + 3 = 8
        ([6, 6, 6], 10, [[0], [1], [2]]),  # two rows cannot hold 18: a third is added
        ([300, 10, 10], 256, [[0], [1, 2]]),  # an over-long example gets a row of its own
    ],
)
def test_balanced_rows_small_cases(lengths, cap, expected):
    plan = balanced(lengths, cap)
    _check_plan(plan, lengths, cap)
    assert sorted(plan) == sorted(expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_balanced_packing_sums_the_nll_of_each_example_alone(attn, tiny_tokenizer):
    # Independent reference: each example forwarded alone (no packing, no padding).
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=0).double().eval()
    model.set_attn_implementation(attn)
    exs = random_examples(9, 4, 21, model.config.vocab_size)
    batch = collate_packed(exs, max_row_tokens=40, pad_id=0, rows="balanced")
    assert batch.input_ids.shape[0] > 1
    with torch.no_grad():
        packed, _ = sft_nll(model(**batch.model_inputs()).logits, batch.labels, reduction="sum")
        alone = 0.0
        for ex in exs:
            logits = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
            for t in range(len(ex.input_ids) - 1):
                if ex.labels[t + 1] != -100:
                    alone -= torch.log_softmax(logits[t], -1)[ex.labels[t + 1]].item()
    assert packed.item() == pytest.approx(alone, rel=1e-10)


def test_the_lm_loop_packs_balanced_rows_of_twice_the_longest_example(tiny_tokenizer):
    exs = random_examples(16, 11, 36, 400, seed=2)
    longest = max(len(ex.input_ids) for ex in exs)
    assert lm.row_cap(exs, 256) == lm.ROW_EXAMPLES * longest
    assert lm.row_cap(exs, 50) == 50  # --max-len caps it
    assert lm.row_cap(exs, None) == lm.ROW_EXAMPLES * longest
    run = lm.LMRun(model=None, tokenizer=tiny_tokenizer, train=exs, row_tokens=256)
    batch = lm._collate(exs, run)
    tokens = sum(len(ex.input_ids) for ex in exs)
    lengths = [len(ex.input_ids) for ex in exs]
    assert batch.input_ids.shape[0] == len(balanced(lengths, lm.row_cap(exs, 256)))
    assert batch.input_ids.shape[1] <= lm.row_cap(exs, 256)
    assert batch.input_ids.numel() < tokens + batch.input_ids.shape[0] * longest


# --- the output head on label positions ------------------------------------------------------


def test_sft_nll_on_label_rows_equals_full_logits_and_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :4] = labels[1, 0] = labels[2, 1:] = -100
    full, stats = sft_nll(logits, labels, reduction="sum")
    keep = lm._label_positions(labels)  # (B, T): position t predicts labels[:, t + 1]
    rows, rows_stats = sft_nll(logits[keep], labels, reduction="sum")
    loop = -sum(
        torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]].item()
        for b in range(3)
        for t in range(6)
        if labels[b, t + 1] != -100
    )
    assert full.item() == pytest.approx(loop, rel=1e-12)
    assert rows.item() == pytest.approx(loop, rel=1e-12)
    assert int(stats["n_tokens"]) == int(rows_stats["n_tokens"]) == int(keep.sum()) == 9
    mean, _ = sft_nll(logits[keep], labels)
    assert mean.item() == pytest.approx(loop / 9, rel=1e-12)
    with pytest.raises(ValueError, match="label tokens"):
        sft_nll(logits[keep][:-1], labels)


def _grads(model, batch, rows: bool, monkeypatch) -> tuple[float, dict[str, torch.Tensor]]:
    monkeypatch.setattr(lm, "head_rows_work", lambda m: rows)
    model.zero_grad(set_to_none=True)
    run = lm.LMRun(model=model, tokenizer=None, train=[])
    loss, n = lm._forward_nll_sum(model, batch, run, SFTConfig())
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_head_on_label_rows_gives_the_same_loss_and_gradients(tiny_tokenizer, monkeypatch):
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=0).double()
    assert lm.head_rows_work(model)
    exs = random_examples(6, 5, 17, model.config.vocab_size, seed=3)
    batch = collate_packed(exs, max_row_tokens=32, pad_id=0, rows="balanced")
    keep = lm._label_positions(batch.labels)
    with torch.no_grad(), lm._head_on_rows(model, keep):
        assert model(**batch.model_inputs()).logits.shape == (
            int(keep.sum()),
            model.config.vocab_size,
        )
    loss_rows, g_rows = _grads(model, batch, True, monkeypatch)
    loss_full, g_full = _grads(model, batch, False, monkeypatch)
    assert loss_rows == pytest.approx(loss_full, rel=1e-12)
    for k in g_full:
        torch.testing.assert_close(g_rows[k], g_full[k], rtol=1e-10, atol=1e-12)
    # the hook is gone afterwards: full logits again
    assert model(**batch.model_inputs()).logits.shape[:2] == batch.input_ids.shape


class _ReshapingLM(torch.nn.Module):
    """A causal LM whose code reshapes the head's output by (B, T): rows cannot work."""

    def __init__(self, head: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16) if head else None

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, use_cache=False):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.head(self.embed(input_ids)).view(b, t, 16))


def test_models_whose_head_cannot_take_rows_keep_full_logits():
    assert not lm.head_rows_work(_ReshapingLM())
    assert not lm.head_rows_work(_ReshapingLM(head=False))


# --- oneDNN only where it pays ----------------------------------------------------------------


def test_onednn_takes_training_calls_only_with_avx512_or_when_forced():
    # On AVX2-only CPUs oneDNN was slower than MKL for every training shape measured
    # (fast_linear's docstring), so no layer is large enough there unless forced.
    assert fl.min_weight(forced=False, has_avx512=False) == sys.maxsize
    assert fl.min_weight(forced=True, has_avx512=False) == 16_384
    assert fl.min_weight(forced=False, has_avx512=True) == 16_384  # AMD: MKL stays on AVX2
    # Intel: MKL runs AVX-512 itself, and oneDNN measured no faster there
    assert fl.min_weight(forced=False, has_avx512=True, mkl_has_avx512=True) == sys.maxsize
    assert fl.min_weight(forced=True, has_avx512=True, mkl_has_avx512=True) == 16_384
    assert fl.MIN_WEIGHT == fl.min_weight(fl.FORCED, fl.avx512(), fl.mkl_avx512())
    assert fl.avx512() == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_a_layer_below_min_weight_runs_f_linear(monkeypatch):
    calls = []
    monkeypatch.setattr(fl, "_onednn_linear", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(fl, "MIN_WEIGHT", sys.maxsize)
    layer = torch.nn.Linear(256, 256)
    layer.__class__ = fl.OneDNNLinear
    x = torch.randn(320, 256, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert calls == []
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias))
