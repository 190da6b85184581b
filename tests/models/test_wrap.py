"""FSDP2 (`--strategy fsdp2`) under `torchrun --standalone --nproc_per_node 2` (gloo, CPU):
- sft and rm: 2 sharded processes x batch b step like 1 process x batch 2b;
- ppo: with every role sharded (policy, value, reference, reward model), 2 processes step
  like 2 DDP processes, evaluation runs, and uneven response lengths do not hang; the same
  for a critic-free estimator (grpo: no value model, groups of responses per process);
- a sharded run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one,
  and its DCP checkpoint also resumes in one process (2 -> 1);
- what users read stays a plain Hugging Face folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import (
    CHAIN_ARCH,
    NO_SEQ_CLS_ARCH,
    assert_same_training,
    make_base_model,
    sft_rows,
    write_jsonl,
)
from tests.loops.ppo.test_loop import _args, files  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def _env() -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT / "src"),
    )


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])


def _cli(*args: str, procs: int = 1) -> list[str]:
    head = [*TORCHRUN, "-m", "rlhfkit.cli"] if procs == 2 else [sys.executable, "-m", "rlhfkit.cli"]
    return [*head, *args, "--device", "cpu"]


def _kill_when(cmd: list[str], checkpoint: Path) -> None:
    """Start `cmd` and SIGKILL it (torchrun and both workers) once `checkpoint` is complete."""
    proc = subprocess.Popen(
        cmd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # kill torchrun and both workers at once
    )
    deadline = time.time() + 240
    while not (checkpoint / "COMPLETE").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


SLOW = pytest.mark.slow


def _assert_fsdp2_sft_steps_like_one_process(one: Path, two: Path, base: Path) -> None:
    w1 = load_file(str(one / "epoch-1" / "model.safetensors"))
    w2 = load_file(str(two / "epoch-1" / "model.safetensors"))
    assert set(w1) == set(w2)  # a plain HF folder, gathered: every tensor whole
    assert_same_training(w1, w2, load_file(str(base / "model.safetensors")))
    assert (two / "epoch-1" / "dcp").is_dir()  # the sharded training state


@pytest.mark.timeout(300)
def test_fsdp2_sft_steps_like_one_process_llama(tmp_path, sft_one_process):
    """Llama, full fine-tuning, against one process at batch 8 (run in the test process:
    tests/conftest.py, shared with the DDP test; the same options as below)."""
    ref = sft_one_process
    _run([*TORCHRUN, "-m", "rlhfkit.cli", *ref["argv"], "--batch-size", "4",
          "--out", str(tmp_path / "two"), "--strategy", "fsdp2"])  # fmt: skip
    _assert_fsdp2_sft_steps_like_one_process(ref["one"], tmp_path / "two", ref["base"])


@pytest.mark.slow  # Llama full fine-tuning: test_fsdp2_sft_steps_like_one_process_llama
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("arch", "lora"),
    [("qwen2", False), ("gpt2", False), ("llama", True), ("qwen2", True), ("gpt2", True)],
)
def test_fsdp2_sft_steps_like_one_process(arch, lora, tmp_path, tiny_tokenizer):
    """Full and LoRA (adapters injected before sharding), on Llama, Qwen2 and GPT-2 (its
    dropout off: 2 processes draw other dropout masks than 1)."""
    preset = "test" if arch == "llama" else CHAIN_ARCH[arch]()
    for key, value in ({} if arch == "llama" else preset.to_dict()).items():
        if key.endswith(("dropout", "pdrop")) and isinstance(value, float):
            setattr(preset, key, 0.0)
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset=preset)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    opts = ["--data", str(data), "--model", str(base), "--epochs", "1", "--lr", "1e-2",
            "--schedule", "constant", "--warmup-steps", "0",
            *(["--lora-r", "4", "--lora-alpha", "8"] if lora else [])]  # fmt: skip
    _run(_cli("sft", *opts, "--batch-size", "8", "--out", str(tmp_path / "one")))
    _run(_cli("sft", *opts, "--batch-size", "4", "--out", str(tmp_path / "two"),
              "--strategy", "fsdp2", procs=2))  # fmt: skip
    _assert_fsdp2_sft_steps_like_one_process(tmp_path / "one", tmp_path / "two", base)


@pytest.mark.slow  # as the DDP one (tests/loops/reward/test_train.py)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["llama", "granite"])
def test_fsdp2_rm_steps_like_one_process(arch, tmp_path, tiny_tokenizer):
    """Llama's sequence classifier, and Granite's backbone + score head (no such class in
    transformers: models/scalar_head.py), sharded by the same decoder layers."""
    from tests.loops.reward.test_train import keyword_rankings

    from rlhfkit.models.reward import init_reward_model

    preset = "test" if arch == "llama" else NO_SEQ_CLS_ARCH[arch]()
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset=preset)
    rows = [keyword_rankings(1, 2 + i % 4, seed=i)[0] for i in range(16)]  # uneven K
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    opts = ["--data", str(data), "--model", str(base), "--lr", "1e-2", "--schedule",
            "constant", "--warmup-steps", "0", "--head-init", "normal"]  # fmt: skip
    _run(_cli("rm", *opts, "--batch-size", "8", "--out", str(tmp_path / "one")))
    _run(_cli("rm", *opts, "--batch-size", "4", "--out", str(tmp_path / "two"),
              "--strategy", "fsdp2", procs=2))  # fmt: skip
    w0 = init_reward_model(base, head_init="normal", seed=0)[0].state_dict()
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert set(w1) == set(w2)
    # rel 1e-2 as the DDP test: Adam's first steps amplify rounding where |g| ~ eps
    assert_same_training(w1, w2, {k: w0[k] for k in w1}, rel=1e-2)
    if arch == "llama":
        return
    # The DCP checkpoint of a sharded backbone + score head resumes (2 steps of 8 prompts):
    # stopped after step 1, resumed, it ends as the uninterrupted sharded run, bit for bit.
    part = tmp_path / "part"
    two = [*opts, "--batch-size", "4", "--out", str(part), "--strategy", "fsdp2"]
    _run(_cli("rm", *two, "--max-steps", "1", "--save-every", "1", procs=2))
    assert (part / "checkpoints" / "step-000001" / "dcp").is_dir()
    _run(_cli("rm", *two, "--resume", procs=2))
    w3 = load_file(str(part / "model.safetensors"))
    assert all(torch.equal(w3[k], w2[k]) for k in w2)


@pytest.mark.slow  # ~100 s on 2 cores: `make test-slow`
@pytest.mark.timeout(420)
def test_fsdp2_killed_and_resumed_equals_uninterrupted_and_resumes_in_one_process(
    tmp_path, tiny_tokenizer
):
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset="tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(48))
    opts = ["--data", str(data), "--model", str(base), "--epochs", "2", "--batch-size", "4",
            "--save-every", "2", "--lr", "1e-3", "--strategy", "fsdp2"]  # fmt: skip
    full = tmp_path / "full"
    _run(_cli("sft", *opts, "--out", str(full), procs=2))

    out = tmp_path / "killed"
    _kill_when(_cli("sft", *opts, "--out", str(out), procs=2), out / "checkpoints" / "step-000004")
    assert not (out / "epoch-2").exists(), "killed too late to test anything"
    # Kept for the one-process resume below: the resumed run prunes it (--keep-checkpoints).
    one = tmp_path / "one"
    (one / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "run.json", one / "run.json")
    shutil.copytree(out / "checkpoints" / "step-000004", one / "checkpoints" / "step-000004")

    _run(_cli("sft", *opts, "--out", str(out), "--resume", procs=2))
    for epoch in (1, 2):
        a = load_file(str(full / f"epoch-{epoch}" / "model.safetensors"))
        b = load_file(str(out / f"epoch-{epoch}" / "model.safetensors"))
        for k in a:  # same processes, same seed: bit-identical on CPU
            assert torch.equal(a[k], b[k]), (epoch, k)

    # The sharded checkpoint of step 4 continues in ONE process (DCP re-shards on load).
    opts1 = [o for o in opts if o not in ("--strategy", "fsdp2")]
    r = subprocess.run(
        _cli("sft", *opts1, "--out", str(one), "--resume", "--batch-size", "8"),
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout and "step-000004" in r.stdout
    a = load_file(str(full / "epoch-2" / "model.safetensors"))
    b = load_file(str(one / "epoch-2" / "model.safetensors"))
    assert_same_training(a, b, load_file(str(base / "model.safetensors")), rel=1e-2)


@pytest.mark.slow  # ~80 s on 2 cores: `make test-slow`
@pytest.mark.timeout(420)
def test_fsdp2_ppo_steps_like_ddp(tmp_path, files):  # noqa: F811 (the fixture)
    made = files  # the PPO tests' base policy, reward model and world prompts
    extra = ["--steps", "2", "--num-mini-batches", "2", "--eval-prompts", str(made["eval"]),
             "--eval-max-prompts", "4", "--schedule", "constant", "--warmup-steps", "0"]  # fmt: skip
    for name, strategy in (("ddp", "ddp"), ("fsdp2", "fsdp2")):
        args = _args(made, tmp_path / name, *extra, "--strategy", strategy)
        _run([*TORCHRUN, "-m", "rlhfkit.cli", *args])
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp2" / "model.safetensors"))
    assert set(a) == set(b)
    assert_same_training(a, b, load_file(str(made["base"] / "model.safetensors")), rel=2e-2)
    assert (tmp_path / "fsdp2" / "checkpoints" / "step-000002" / "dcp").is_dir()


@pytest.mark.slow  # ~80 s on 2 cores: `make test-slow`
@pytest.mark.timeout(420)
def test_fsdp2_critic_free_grpo_steps_like_ddp(tmp_path, files):  # noqa: F811 (the fixture)
    """--estimator grpo, 2 prompts x 2 responses per process: FSDP2 steps like DDP, and the
    sharded checkpoint holds the policy alone (no value model anywhere)."""
    made = files
    extra = ["--steps", "2", "--estimator", "grpo", "--samples-per-prompt", "2",
             "--num-mini-batches", "2", "--save-every", "1", "--schedule", "constant",
             "--warmup-steps", "0"]  # fmt: skip
    for name, strategy in (("ddp", "ddp"), ("fsdp2", "fsdp2")):
        _run([*TORCHRUN, "-m", "rlhfkit.cli", *_args(made, tmp_path / name, *extra,
                                                     "--strategy", strategy)])  # fmt: skip
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp2" / "model.safetensors"))
    assert set(a) == set(b)
    assert_same_training(a, b, load_file(str(made["base"] / "model.safetensors")), rel=2e-2)
    ckpt = tmp_path / "fsdp2" / "checkpoints" / "step-000002"
    assert (ckpt / "dcp").is_dir() and (ckpt / "policy").is_dir() and not (ckpt / "value").exists()
    summary = json.loads((tmp_path / "fsdp2" / "summary.json").read_text())
    assert summary["estimator"] == "grpo" and summary["world_size"] == 2


@pytest.mark.slow  # ~150 s on 2 cores: `make test-slow`
@pytest.mark.timeout(600)
def test_fsdp2_ppo_killed_and_resumed_equals_uninterrupted_and_resumes_in_one_process(
    tmp_path,
    files,  # noqa: F811 (the fixture)
):
    """SIGKILL during a sharded PPO run (all four roles sharded), then --resume: the final
    policy equals the uninterrupted sharded run's bit for bit; the DCP checkpoint also loads
    in one process (2 -> 1: the same weights) and trains on there. (One process samples
    other responses than two, so its later steps are not the sharded run's.)"""
    made = files
    extra = ["--steps", "6", "--save-every", "1", "--keep-checkpoints", "0", "--strategy",
             "fsdp2", "--schedule", "constant", "--warmup-steps", "0"]  # fmt: skip
    full, out = tmp_path / "full", tmp_path / "killed"
    _run([*TORCHRUN, "-m", "rlhfkit.cli", *_args(made, full, *extra)])
    _kill_when(
        [*TORCHRUN, "-m", "rlhfkit.cli", *_args(made, out, *extra)],
        out / "checkpoints" / "step-000002",
    )
    assert not (out / "model.safetensors").exists(), "killed too late to test anything"
    _run([*TORCHRUN, "-m", "rlhfkit.cli", *_args(made, out, *extra, "--resume")])
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    # Step 2's DCP checkpoint read back at --steps 2 (nothing left to train: the export is
    # the checkpoint's policy) by 2 processes and by 1: the same weights, so 2 -> 1 loads
    # exactly; and one process then trains on from it (optimizer states re-sharded).
    exports = {}
    for name, procs, steps in (("two", 2, "2"), ("one", 1, "2"), ("on", 1, "3")):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(out / "run.json", run / "run.json")
        shutil.copytree(out / "checkpoints" / "step-000002", run / "checkpoints" / "step-000002")
        args = _args(made, run, *extra, "--resume", "--steps", steps)
        if procs == 1:
            args = [x for x in args if x not in ("--strategy", "fsdp2")]
        launcher = TORCHRUN if procs == 2 else [sys.executable]
        r = subprocess.run([*launcher, "-m", "rlhfkit.cli", *args], env=_env(),
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert "step-000002" in r.stdout + r.stderr
        exports[name] = load_file(str(run / "model.safetensors"))
    w0 = load_file(str(made["base"] / "model.safetensors"))
    assert all(torch.equal(exports["two"][k], exports["one"][k]) for k in w0)
    assert any(not torch.equal(exports["one"][k], w0[k]) for k in w0)
    assert any(not torch.equal(exports["on"][k], exports["one"][k]) for k in w0)
