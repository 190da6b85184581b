"""Nothing is lost, and processes change nothing:
- a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run;
- 2 processes x batch b (torchrun, gloo) step like 1 process x batch 2b.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import assert_same_training, make_base_model, sft_rows, write_jsonl

from rlhfkit import cli

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT / "src"),
    )
    return env


def _sft_cmd(base, data, out, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlhfkit.cli",
        "sft",
        "--model",
        str(base),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_tokenizer):
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset="tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
    opts = ["--epochs", "3", "--batch-size", "4", "--save-every", "3", "--lr", "1e-3"]

    full = tmp_path / "full"  # uninterrupted, in this process (the same code, one thread)
    assert cli.main(_sft_cmd(base, data, full, *opts)[3:]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _sft_cmd(base, data, out, *opts),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-000006" / "COMPLETE").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "epoch-3").exists(), "killed too late to test anything"

    subprocess.run(
        _sft_cmd(base, data, out, *opts, "--resume"), env=_env(), check=True, capture_output=True
    )
    for epoch in (1, 2, 3):
        a = load_file(str(full / f"epoch-{epoch}" / "model.safetensors"))
        b = load_file(str(out / f"epoch-{epoch}" / "model.safetensors"))
        for k in a:  # same seed, one thread each: bit-identical on CPU
            assert torch.equal(a[k], b[k]), (epoch, k)


@pytest.mark.timeout(300)
def test_two_processes_step_like_one_with_twice_the_batch(tmp_path, sft_one_process):
    """DDP, batch 4 per process, against one process at batch 8 (run in the test process:
    tests/conftest.py, shared with the FSDP2 test)."""
    ref = sft_one_process
    # --standalone: a free port for each launch
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "rlhfkit.cli"]  # fmt: skip
    r = subprocess.run(
        [*ddp, *ref["argv"], "--batch-size", "4", "--out", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    w1 = load_file(str(ref["one"] / "epoch-1" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "epoch-1" / "model.safetensors"))
    assert_same_training(w1, w2, load_file(str(ref["base"] / "model.safetensors")))
    summary = (tmp_path / "two" / "summary.json").read_text()
    assert '"world_size": 2' in summary
