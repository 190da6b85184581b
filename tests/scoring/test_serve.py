"""`rlhfkit serve-rm` and `--rm NAME=URL`, end to end on loopback: a served RM scores what
the same RM loaded here scores (same tokenizer as the policy, and another one), through
our API, OpenRLHF's and the RewardScorer; many concurrent clients get their own answers;
malformed, oversized and slow requests fail with a clear message. Servers run in-process
(uvicorn in a thread, ephemeral ports). (The client against servers that time out, fail
or are vLLM's: test_remote.py.)"""

from __future__ import annotations

import copy
import threading
import time

import httpx
import pytest
import torch
from tests.helpers import make_base_model

from rlhfkit import cli
from rlhfkit.data.reward_data import encode_responses
from rlhfkit.errors import RemoteUnavailable, UserError
from rlhfkit.models.generate import left_pad
from rlhfkit.models.presets import build_model, train_tokenizer
from rlhfkit.models.reward import init_reward_model
from rlhfkit.scoring.remote import RemoteRM, RemoteSettings
from rlhfkit.scoring.rm import RewardScorer, score_texts
from rlhfkit.scoring.serve import BackgroundServer, ServedRM, ServeSettings, create_app

PROMPTS = ["What is the cat", "Sort 3 2 1 please", "hi", "Add one and two", "big red house"]
RESPONSES = ["The cat sat on the mat.", "1 2 3", "dog", "Three. Three!", "a tree"]
SAFETY = [False, True, False, False, True]
FAST = RemoteSettings(timeout=5.0, retries=0)


def _save_rm(folder, tokenizer, seed):
    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tiny_tokenizer, tiny_texts):
    """'same': the policy's tokenizer; 'other': a tokenizer of its own, without a chat
    template (the policy tokenizer != the RM tokenizer case)."""
    root = tmp_path_factory.mktemp("served")
    other_tok = train_tokenizer(tiny_texts[:100], vocab_size=300)
    other_tok.chat_template = None
    return {
        "same": _save_rm(root / "same", tiny_tokenizer, seed=1),
        "other": _save_rm(root / "other", other_tok, seed=2),
    }


@pytest.fixture(scope="module")
def servers(rm_dirs):
    """One running server per RM; yields {name: url}."""
    running = {
        n: BackgroundServer(create_app(ServedRM.load(d))).start() for n, d in rm_dirs.items()
    }
    yield {n: s.url for n, s in running.items()}
    for s in running.values():
        s.stop()


@pytest.fixture(scope="module")
def local(rm_dirs):
    return RewardScorer.from_specs(rm_dirs)


def _policy_tokens(tokenizer, prompts, responses, cut=()):
    """What sampling gives: left-padded prompt ids, right-padded response ids ending in EOS
    (rows in `cut`: no EOS, stopped at max_new_tokens)."""
    p_ids, r_ids = [], []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq = encode_responses(tokenizer, [p], [r], 256)[0][0]
        n = len(encode_responses(tokenizer, [p], [""], 256)[0][0]) - 1
        p_ids.append(seq[:n])
        r_ids.append(seq[n:-1] if i in cut else seq[n:])
    prompt_ids, prompt_mask = left_pad(p_ids, tokenizer.pad_token_id)
    width = max(len(r) for r in r_ids) + 1
    response_ids = torch.full((len(r_ids), width), tokenizer.pad_token_id)
    response_mask = torch.zeros((len(r_ids), width), dtype=torch.bool)
    for i, r in enumerate(r_ids):
        response_ids[i, : len(r)] = torch.tensor(r)
        response_mask[i, : len(r)] = True
    return prompt_ids, prompt_mask, response_ids, response_mask


# --- scores equal --------------------------------------------------------------------------


@pytest.mark.parametrize("rm", ["same", "other"])
def test_a_served_rm_scores_what_the_local_one_scores(rm, servers, local, tiny_tokenizer):
    served = RewardScorer.from_specs({rm: servers[rm]}, remote=FAST)
    here = RewardScorer({rm: local.models[rm]})  # the same folder, loaded in this process
    # texts, some responses cut before EOS
    ended = [True, False, True, True, False]
    a = served.score(PROMPTS, RESPONSES, ended=ended).per_rm[rm]
    b = here.score(PROMPTS, RESPONSES, ended=ended).per_rm[rm]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the policy's sampled ids: the same-tokenizer RM reads them as they are, the other one
    # the decoded text, on both sides alike
    tokens = _policy_tokens(tiny_tokenizer, PROMPTS, RESPONSES, cut={1, 3})
    assert served.shares_tokenizer(rm, tiny_tokenizer) == here.shares_tokenizer(rm, tiny_tokenizer)
    assert served.shares_tokenizer(rm, tiny_tokenizer) == (rm == "same")
    a = served.score_tokens(*tokens, tiny_tokenizer).per_rm[rm]
    b = here.score_tokens(*tokens, tiny_tokenizer).per_rm[rm]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a.std() > 0.1  # not a constant


def test_llama2_combination_is_the_same_with_served_rms(servers, rm_dirs, tiny_tokenizer):
    """Whitening, the safety threshold and ScoreResult.unwhitened come out the same when
    one RM is served and the other local, or both served."""
    names = {"helpfulness": "same", "safety": "other"}
    both_local = RewardScorer.from_specs({h: rm_dirs[r] for h, r in names.items()}, "llama2")
    mixed = RewardScorer.from_specs(
        {"helpfulness": rm_dirs["same"], "safety": servers["other"]}, "llama2", remote=FAST
    )
    assert mixed.names == ["helpfulness", "safety"] and list(mixed.remote) == ["safety"]
    served = RewardScorer.from_specs({h: servers[r] for h, r in names.items()}, "llama2",
                                     remote=FAST)  # fmt: skip
    tokens = _policy_tokens(tiny_tokenizer, PROMPTS, RESPONSES)
    want = both_local.score_tokens(*tokens, tiny_tokenizer, SAFETY)
    for scorer in (mixed, served):
        got = scorer.score_tokens(*tokens, tiny_tokenizer, SAFETY)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.unwhitened, want.unwhitened, atol=1e-5, rtol=0)


def test_conversations_go_through_the_rms_chat_template(servers, local, tiny_tokenizer):
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    served = RemoteRM(servers["same"], FAST)
    rm = local.models["same"]
    want = score_texts(rm.model, rm.tokenizer, chats, RESPONSES)
    torch.testing.assert_close(served.score(chats, RESPONSES), want, atol=1e-5, rtol=0)
    # an RM without a chat template refuses them, naming the item: the request's fault
    with pytest.raises(UserError, match=r"422.*items\[0\].*chat template.*'prompt' strings"):
        RemoteRM(servers["other"], FAST).score(chats, RESPONSES)


def test_openrlhf_get_reward_scores_full_texts(servers, local, tiny_tokenizer):
    """OpenRLHF sends prompt + response as its trainer decoded them, special tokens kept."""
    seqs, _ = encode_responses(tiny_tokenizer, PROMPTS, RESPONSES, 256)
    queries = tiny_tokenizer.batch_decode(seqs, skip_special_tokens=False)
    answer = httpx.post(servers["same"] + "/get_reward", json={"query": queries,
                        "prompts": PROMPTS, "labels": [None] * 5}).json()  # fmt: skip
    rm = local.models["same"]
    want = score_texts(rm.model, rm.tokenizer, PROMPTS, RESPONSES)
    torch.testing.assert_close(torch.tensor(answer["rewards"]), want, atol=1e-5, rtol=0)
    assert answer["scores"] == answer["rewards"] and answer["extra_logs"] == {}


# --- held under load -----------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_answers(servers, local):
    """8 clients x 6 requests at once, every item distinguishable: each answer is checked
    against a local scoring of its own request's items (nothing lost, nothing mixed)."""
    n_clients, n_requests = 8, 6
    sent = {(c, r): [(f"{PROMPTS[(c + r) % 5]} {c}", f"{RESPONSES[r % 5]} {r} {k}")
                     for k in range(1 + (c + r) % 4)]
            for c in range(n_clients) for r in range(n_requests)}  # fmt: skip
    got: dict[tuple[int, int], list[float]] = {}
    errors: list[BaseException] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=servers["same"]) as http:
            for r in range(n_requests):
                items = [{"prompt": p, "response": x} for p, x in sent[c, r]]
                try:
                    got[c, r] = http.post("/score", json={"items": items}).json()["scores"]
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and set(got) == set(sent)
    rm = local.models["same"]
    pairs = [pair for key in sorted(sent) for pair in sent[key]]
    want = score_texts(rm.model, rm.tokenizer, [p for p, _ in pairs], [x for _, x in pairs])
    answers = torch.tensor([s for key in sorted(sent) for s in got[key]])
    torch.testing.assert_close(answers, want, atol=1e-5, rtol=0)
    assert len(set(want.tolist())) == len(pairs)  # the items were all distinguishable
    stats = httpx.get(servers["same"] + "/health").json()["stats"]
    assert stats["requests"] >= n_clients * n_requests


# --- malformed, oversized, slow --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(rm_dirs):
    """A server with tight limits: 4 items, 2 kB per request."""
    app = create_app(ServedRM.load(rm_dirs["same"]), ServeSettings(max_items=4, max_bytes=2048))
    server = BackgroundServer(app).start()
    yield server.url
    server.stop()


def test_malformed_requests_get_400_or_422_with_a_clear_message(small_server):
    def post(body, **kw):
        r = httpx.post(
            small_server + "/score", **kw, **({"json": body} if body is not None else {})
        )
        return r.status_code, r.json()["detail"]

    status, detail = post(
        None, content=b'{"items": [', headers={"content-type": "application/json"}
    )
    assert status == 400 and "not valid JSON" in detail
    assert post({"prompts": ["a"]}) == (422, "items: Field required (expected {'items': [...]})")
    status, detail = post({"items": [{"prompt": "a", "response": "b"}, {"prompt": "a"}]})
    assert status == 422 and detail == "items[1]: field 'response' is missing"
    status, detail = post({"items": [{"input_ids": [3, -1]}]})
    assert status == 422 and "items[0].input_ids holds -1" in detail
    r = httpx.post(small_server + "/get_reward", json={"query": "one text, not a list"})
    assert r.status_code == 422 and "query" in r.json()["detail"]


def test_oversized_requests_get_413_and_the_client_splits_by_the_servers_limit(small_server):
    items = [{"prompt": "a", "response": "b"}] * 5
    r = httpx.post(small_server + "/score", json={"items": items})
    assert (
        r.status_code == 413
        and "5 items" in r.json()["detail"]
        and "--max-items 4" in r.json()["detail"]
    )
    r = httpx.post(
        small_server + "/score", json={"items": [{"prompt": "a" * 3000, "response": "b"}]}
    )
    assert r.status_code == 413 and "--max-bytes 2048" in r.json()["detail"]
    r = httpx.post(small_server + "/score", content=iter([b'{"items": []}']))  # chunked
    assert r.status_code == 411
    # the client reads max_items from GET /health and sends 10 items as 4 + 4 + 2
    scores = RemoteRM(small_server, FAST).score(["a"] * 10, [f"b {i}" for i in range(10)])
    assert scores.shape == (10,)


def test_the_servers_own_timeout_answers_503(rm_dirs):
    class Slow(ServedRM):
        def score(self, sequences):
            time.sleep(0.3)
            return super().score(sequences)

    rm = ServedRM.load(rm_dirs["same"])
    slow = Slow(rm.model, rm.tokenizer, rm.max_len, rm.name)
    server = BackgroundServer(create_app(slow, ServeSettings(request_timeout=0.05))).start()
    try:
        r = httpx.post(server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]})
        assert r.status_code == 503 and "--request-timeout" in r.json()["detail"]
        with pytest.raises(RemoteUnavailable, match="answered 503"):
            RemoteRM(server.url, RemoteSettings(retries=1, backoff=0.01)).score(["a"], ["b"])
    finally:
        server.stop()


def test_a_url_is_checked_before_torch_loads(tiny_tokenizer, tmp_path, capsys, servers):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n')
    base = ["score", "--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    for url, message in [
        ("http://127.0.0.1:1", "no reward model server answers there"),
        ("http://:8000", "no host"),
        ("http://127.0.0.1:99999", "not a valid URL"),
        (servers["same"] + "/get_reward", f"give the server's base URL ({servers['same']})"),
    ]:
        assert cli.main([*base, "--rm", f"r={url}"]) == 2
        err = capsys.readouterr().err
        assert f"--rm r={url}" in err and message in err, err
    assert cli.main([*base, "--rm", f"r={servers['same']}"]) == 0
    assert "scored 1 records with r" in capsys.readouterr().out
    policy = make_base_model(tmp_path / "policy", tiny_tokenizer)
    ppo = ["ppo", "--policy", str(policy), "--prompts", str(data), "--out", str(tmp_path / "p")]
    assert cli.main([*ppo, "--rm", f"h={servers['same']}"]) == 2
    assert (
        "--value-init rm: the value model starts as a copy of reward model 'h'"
        in capsys.readouterr().err
    )


# --- chat formats ----------------------------------------------------------------------------


def test_a_chat_rm_gets_text_from_a_plain_policy_as_it_would_locally(tmp_path, tiny_tokenizer):
    """Same vocabulary, other prompt format: an RM trained in chat format (an instruct
    tokenizer) must not read a plain policy's ids as they are; served or local, it gets the
    text and renders it with its own chat template (`RewardScorer.scores_ids`)."""
    from tests.helpers import as_instruct

    from rlhfkit.data.chat import set_chat_format

    chat_tok = as_instruct(tiny_tokenizer)
    set_chat_format(chat_tok, True)
    folder = _save_rm(tmp_path / "chat_rm", chat_tok, seed=3)
    server = BackgroundServer(create_app(ServedRM.load(folder))).start()
    try:
        served = RewardScorer.from_specs({"rm": server.url}, remote=FAST)
        here = RewardScorer.from_specs({"rm": folder})
        assert served.shares_tokenizer("rm", tiny_tokenizer)  # the vocabulary is the same...
        assert not served.scores_ids("rm", tiny_tokenizer)  # ...the format is not
        assert not here.scores_ids("rm", tiny_tokenizer)
        tokens = _policy_tokens(tiny_tokenizer, PROMPTS, RESPONSES)
        a = served.score_tokens(*tokens, tiny_tokenizer).per_rm["rm"]
        b = here.score_tokens(*tokens, tiny_tokenizer).per_rm["rm"]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        want = here.score(PROMPTS, RESPONSES).per_rm["rm"]  # rendered by the RM's template
        torch.testing.assert_close(b, want, atol=1e-5, rtol=0)
    finally:
        server.stop()
