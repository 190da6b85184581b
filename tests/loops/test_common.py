"""loops/common.py: dropout off (found by name, checked by a probe), and the plumbing every
training loop shares."""

from __future__ import annotations

import copy

import pytest

from rlhfkit.config import SFTConfig, load_yaml_defaults
from rlhfkit.distributed import Dist
from rlhfkit.errors import UserError
from rlhfkit.loops.common import (
    build_optimizer,
    disable_dropout,
    epoch_order,
    global_batches,
    lr_factor,
    print_saved_lm,
    rank_micro_batches,
    split_held_out,
    start_output,
)
from rlhfkit.models.reward import init_reward_model
from rlhfkit.models.run_folder import forget_prepared
from tests.helpers import PDROP, gpt2_lm, two_train_forwards


def test_disable_dropout_makes_train_mode_forwards_agree(tiny_tokenizer):
    rm, _ = init_reward_model(gpt2_lm(tiny_tokenizer), copy.deepcopy(tiny_tokenizer),
                              head_init="normal", seed=0)  # fmt: skip
    a, b = two_train_forwards(rm)
    assert abs(a - b) > 1e-3  # dropout 0.1 (today's `rm`): one response, two scores
    changed = disable_dropout(rm)
    assert {c.split("=")[0] for c in changed} >= set(PDROP)
    a, b = two_train_forwards(rm)
    assert a == b
    assert all(getattr(rm.config, k) == 0.0 for k in PDROP)
    assert disable_dropout(rm) == []  # nothing left to change


def test_lr_factor_warmup_then_decay_by_hand():
    kw = dict(warmup=2, total=6, min_ratio=0.1)
    assert [lr_factor(s, schedule="constant", **kw) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    # linear: 1 - 0.9 * (s - 2) / 4 after warmup
    linear = [lr_factor(s, schedule="linear", **kw) for s in range(2, 7)]
    assert linear == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    # cosine: 0.1 + 0.9 * (1 + cos(pi * (s - 2) / 4)) / 2; past the end it stays at the floor
    cosine = [lr_factor(s, schedule="cosine", **kw) for s in (2, 4, 6, 9)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_the_data_order_depends_on_seed_and_epoch_only():
    a = epoch_order(10, seed=1, epoch=0)
    assert sorted(a) == list(range(10)) and epoch_order(10, seed=1, epoch=0) == a
    assert epoch_order(10, seed=1, epoch=1) != a and epoch_order(10, seed=2, epoch=0) != a
    assert epoch_order(4, seed=1, epoch=0, shuffle=False) == [0, 1, 2, 3]
    assert global_batches(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert global_batches(range(7), 3, drop_last=True) == [[0, 1, 2], [3, 4, 5]]


def test_each_rank_takes_a_contiguous_slice_cut_into_micro_batches():
    step = list(range(10, 17))  # 7 examples over 2 ranks: 3 and 4
    assert list(rank_micro_batches(step, Dist(0, 2), 2)) == [[10, 11], [12]]
    assert list(rank_micro_batches(step, Dist(1, 2), 2)) == [[13, 14], [15, 16]]
    assert list(rank_micro_batches(step, Dist(), 8)) == [step]


def test_held_out_share_is_seeded_and_leaves_training_records():
    records = list(range(20))
    train, held = split_held_out(records, 0.25, seed=0)
    assert len(held) == 5 and sorted(train + held) == records
    assert split_held_out(records, 0.25, seed=0) == (train, held)
    assert split_held_out(records, 0.01, seed=0)[1] != []  # at least one
    with pytest.raises(UserError, match="--eval-fraction 0.5 leaves no training records"):
        split_held_out([1], 0.5, seed=0)


def test_build_optimizer_decays_matrices_only(tiny_model):
    opt = build_optimizer(tiny_model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-5)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_model.parameters()))
    assert decay["eps"] == 1e-5


def test_start_output_makes_the_run_folder_with_its_config(tmp_path, capsys):
    cfg = SFTConfig(model="m", data="d", out=str(tmp_path / "run"))
    out = start_output(cfg, Dist(), "sft")
    assert out == tmp_path / "run" and (out / "run.json").is_file()
    assert load_yaml_defaults(SFTConfig, str(out / "config.yaml")) == cfg
    (out / "epoch-2").mkdir()
    (out / "epoch-10").mkdir()
    print_saved_lm(out, Dist(), "; done")
    assert capsys.readouterr().out.strip() == (
        f"model: {out} (AutoModelForCausalLM); epoch checkpoints: epoch-2, epoch-10; done"
    )
    forget_prepared()  # as the CLI does after a command: nothing kept for the next test
