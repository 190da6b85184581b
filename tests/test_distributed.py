"""distributed.py in one process (two processes: the loops' torchrun tests): rank 0 of 1,
the device asked for, and every collective the identity."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.distributed import (
    Dist,
    all_reduce,
    all_reduce_sum,
    barrier,
    pick_device,
    rank,
    setup_distributed,
    teardown_distributed,
    world_size,
)
from rlhfkit.errors import UserError


def test_one_process_is_rank_0_of_1_and_collectives_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d, device = setup_distributed("cpu")
    assert d == Dist() and d.is_main and not d.enabled and device == torch.device("cpu")
    assert (world_size(), rank()) == (1, 0)
    assert all_reduce_sum(3, d, device) == 3.0
    x = torch.tensor([1.0, 2.0])
    assert all_reduce(x) is x
    barrier(d)
    teardown_distributed()  # nothing to tear down: no error


def test_dist_of_a_rank_under_torchrun():
    d = Dist(rank=2, world_size=4, local_rank=0)
    assert d.enabled and not d.is_main


def test_devices(monkeypatch):
    assert pick_device("CPU ") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        pick_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="CUDA is not available here"):
        pick_device("cuda:0")
