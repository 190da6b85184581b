"""loops/trainer.py: `start_training` builds the optimizer, schedule and logs every training
command uses."""

from __future__ import annotations

import pytest

from rlhfkit import cli
from rlhfkit.config import SFTConfig
from rlhfkit.distributed import Dist
from rlhfkit.loops.trainer import count_steps

TRAINERS = {  # the required options of each command that trains through `start_training`
    "pretrain": ["--data", "d"],
    "sft": ["--model", "m", "--data", "d"],
    "rm": ["--model", "m", "--data", "d"],
    "rs": ["--policy", "m", "--prompts", "p", "--rm", "r"],
}


@pytest.mark.parametrize("command", sorted(TRAINERS))
def test_adam_eps_reaches_the_optimizer_of_every_trainer_command(command, tiny_model, tmp_path):
    from rlhfkit.loops.trainer import TrainRun, start_training

    required = [*TRAINERS[command], "--out", str(tmp_path)]
    cfg = cli.parse(command, [*required, "--adam-eps", "3e-7"])
    assert cfg.adam_eps == 3e-7
    assert cli.parse(command, required).adam_eps == 1e-8  # PyTorch's default off PPO
    t = start_training(TrainRun(tiny_model, None, range(8), out=tmp_path), cfg)
    t.finish()
    assert {g["eps"] for g in t.optimizer.param_groups} == {3e-7}


def test_count_steps_per_epoch_and_in_all():
    opts = SFTConfig(epochs=3, batch_size=4)
    assert count_steps(10, 4, Dist(), opts) == (3, 9)  # 4 + 4 + 2
    assert count_steps(10, 4, Dist(0, 2), opts) == (2, 6)  # torchrun: the short batch dropped
    assert count_steps(10, 4, Dist(), SFTConfig(epochs=3, max_steps=5)) == (3, 5)
