"""models/sharded.py in one process (FSDP2 under torchrun: tests/models/test_wrap.py and the
loops' two-process tests): a checkpoint every process writes restores the weights, the
optimizer and the loop state in place; the export is a plain Hugging Face folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.distributed import Dist
from rlhfkit.errors import UserError
from rlhfkit.loops.common import build_optimizer
from rlhfkit.models.presets import build_model
from rlhfkit.models.sharded import export_model, read_checkpoint, write_checkpoint


def _step(model, opt):
    model(
        input_ids=torch.tensor([[1, 5, 9, 2]]), labels=torch.tensor([[1, 5, 9, 2]])
    ).loss.backward()
    opt.step()
    opt.zero_grad()


def test_a_plain_checkpoint_round_trips_in_place(tiny_tokenizer, tmp_path):
    model = build_model("test", tiny_tokenizer, seed=0)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99))
    _step(model, opt)
    write_checkpoint(tmp_path / "step-1", models={"policy": model}, tokenizer=tiny_tokenizer,
                     optimizers={"policy": opt}, schedulers={}, state={"step": 1}, dist=Dist())  # fmt: skip
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    _step(model, opt)  # move away from the checkpoint
    state = read_checkpoint(tmp_path / "step-1", models={"policy": model},
                            optimizers={"policy": opt}, schedulers={}, dist=Dist())  # fmt: skip
    assert state["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    for p, m in zip(model.parameters(), saved_moments, strict=True):
        assert torch.equal(opt.state[p]["exp_avg"], m)


def test_a_checkpoint_of_other_roles_is_refused(tiny_tokenizer, tmp_path):
    model = build_model("test", tiny_tokenizer, seed=0)
    write_checkpoint(tmp_path / "c", models={"policy": model}, tokenizer=tiny_tokenizer,
                     optimizers={}, schedulers={}, state={}, dist=Dist())  # fmt: skip
    with pytest.raises(UserError, match=r"holds roles \['policy'\]"):
        read_checkpoint(tmp_path / "c", models={"value": model}, optimizers={}, schedulers={},
                        dist=Dist())  # fmt: skip


def test_the_export_is_a_plain_hugging_face_folder(tiny_tokenizer, tmp_path):
    model = build_model("test", tiny_tokenizer, seed=0)
    export_model(
        model, tiny_tokenizer, tmp_path / "out", dist=Dist(), extra_json={"x.json": {"a": 1}}
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert (tmp_path / "out" / "x.json").is_file()
