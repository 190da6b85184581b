"""scoring/remote.py, the client of `--rm NAME=URL`, against servers that misbehave or are
not ours: it times out and retries with backoff, naming the URL when it gives up; it tells
vLLM's server apart and sends it the RM's token ids; a server of another kind is named.
(The client against `rlhfkit serve-rm` itself: test_serve.py.)"""

from __future__ import annotations

import asyncio

import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from tests.scoring.test_serve import FAST, PROMPTS, RESPONSES, _policy_tokens
from tests.scoring.test_serve import local as local  # noqa: F401 (a fixture)
from tests.scoring.test_serve import rm_dirs as rm_dirs  # noqa: F401 (a fixture)

from rlhfkit.errors import RemoteUnavailable, UserError
from rlhfkit.scoring import remote as remote_mod
from rlhfkit.scoring.remote import RemoteRM, RemoteSettings
from rlhfkit.scoring.rm import RewardScorer
from rlhfkit.scoring.serve import BackgroundServer, ServedRM


def _fake_server(routes) -> BackgroundServer:
    """A server speaking rlhfkit's protocol badly, from {path: async handler}."""
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"server": remote_mod.SERVER_NAME, "max_items": 64}

    for path, handler in routes.items():
        app.post(path)(handler)
    return BackgroundServer(app).start()


def test_a_slow_server_times_out_with_an_error_naming_the_url():
    async def slow():
        await asyncio.sleep(1.0)
        return {"scores": [0.0]}

    server = _fake_server({"/score": slow})
    try:
        rm = RemoteRM(server.url, RemoteSettings(timeout=0.2, retries=1, backoff=0.05))
        with pytest.raises(
            RemoteUnavailable, match=rf"{server.url} gave no answer within 0\.2 s.*2 tries"
        ):
            rm.score(["p"], ["r"])
    finally:
        server.stop()


def test_retries_back_off_exponentially_then_succeed_or_name_the_url(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(remote_mod, "_backoff", waits.append)
    failures = {"left": 3}

    async def flaky():
        if failures["left"]:
            failures["left"] -= 1
            return JSONResponse({"detail": "warming up"}, status_code=503)
        return {"scores": [1.5]}

    server = _fake_server({"/score": flaky})
    try:
        assert RemoteRM(server.url, RemoteSettings(retries=5)).score(["p"], ["r"]).tolist() == [1.5]
        assert waits == [0.5, 1.0, 2.0]
    finally:
        server.stop()
    waits.clear()
    url = server.url  # nothing listens there any more
    with pytest.raises(
        RemoteUnavailable, match=rf"{url} cannot be reached \(connection refused\); 6 tries"
    ):
        RemoteRM(url, RemoteSettings(retries=5)).score(["p"], ["r"])
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_server_of_another_kind_is_named():
    app = FastAPI()
    server = BackgroundServer(app).start()  # answers 404 everywhere
    try:
        with pytest.raises(UserError, match=rf"--rm x={server.url}: neither `rlhfkit serve-rm`"):
            RemoteRM(server.url, FAST, name="x").score(["p"], ["r"])
    finally:
        server.stop()


# --- vLLM's OpenAI-compatible server ----------------------------------------------------------


def _fake_vllm(rm_dir, seen: list) -> BackgroundServer:
    """vLLM's endpoints as `vllm serve DIR --runner pooling` answers them for a one-label
    classification model (the protocol of vllm/entrypoints/pooling/classify), scoring with
    the RM loaded here; the real server is tested in test_serve_vllm.py where vLLM runs."""
    rm = ServedRM.load(rm_dir)
    app = FastAPI()

    @app.get("/health")
    async def health():  # vLLM answers 200 with an empty body
        return JSONResponse(None)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": str(rm_dir), "object": "model",
                "owned_by": "vllm", "root": str(rm_dir), "max_model_len": 256}]}  # fmt: skip

    @app.post("/classify")
    async def classify(body: dict):
        seen.append(body)
        logits = rm.score(body["input"])
        probs = (
            logits
            if body.get("use_activation") is False
            else torch.sigmoid(torch.tensor(logits)).tolist()
        )
        data = [{"index": i, "label": "LABEL_0", "probs": [p], "num_classes": 1}
                for i, p in reversed(list(enumerate(probs)))]  # fmt: skip
        return {"id": "classify-1", "object": "list", "model": body["model"], "data": data,
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}  # fmt: skip

    return BackgroundServer(app).start()


@pytest.mark.parametrize("rm", ["same", "other"])
def test_a_vllm_server_is_told_apart_and_sent_the_rms_token_ids(rm, rm_dirs, local, tiny_tokenizer):
    seen: list = []
    server = _fake_vllm(rm_dirs[rm], seen)
    try:
        served = RewardScorer.from_specs({rm: server.url}, remote=FAST)
        here = RewardScorer({rm: local.models[rm]})
        ended = [True, False, True, True, False]
        a = served.score(PROMPTS, RESPONSES, ended=ended).per_rm[rm]
        torch.testing.assert_close(a, here.score(PROMPTS, RESPONSES, ended=ended).per_rm[rm],
                                   atol=1e-5, rtol=0)  # fmt: skip
        assert served.remote[rm].kind() == "vllm"
        assert seen[0]["use_activation"] is False and seen[0]["model"] == str(rm_dirs[rm])
        assert all(isinstance(t, int) for t in seen[0]["input"][0])  # ids, encoded here
        tokens = _policy_tokens(tiny_tokenizer, PROMPTS, RESPONSES, cut={2})
        torch.testing.assert_close(served.score_tokens(*tokens, tiny_tokenizer).per_rm[rm],
                                   here.score_tokens(*tokens, tiny_tokenizer).per_rm[rm],
                                   atol=1e-5, rtol=0)  # fmt: skip
    finally:
        server.stop()
