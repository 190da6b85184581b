"""Reward models behind a URL (`--rm NAME=URL`): `RemoteRM` scores prompt + response pairs
on a server and gets one raw score per pair, the number the same RM loaded here gives.

Two kinds of server, told apart at first contact: `rlhfkit serve-rm` names itself in its
GET /health answer; vLLM's OpenAI-compatible server (`vllm serve DIR --runner pooling`,
the RM as a one-label classification model) lists its model under GET /v1/models.

- rlhfkit: POST /score with the prompt (a string or a conversation's messages), the
  response and `ended` per item; the server encodes them with the RM's own tokenizer and
  chat template (`data.reward_data.encode_responses`), as a local RM would. Where the
  policy's tokenizer maps every token to the RM's ids (GET /tokenizer, checked once per
  policy tokenizer, as `RewardScorer.shares_tokenizer` does locally), `submit_ids` sends
  the policy's token ids and the RM scores exactly the sampled tokens.
- vLLM: POST /classify with token ids encoded HERE with the RM's tokenizer, read from the
  folder vLLM serves (`root` in /v1/models: this machine or a shared filesystem), and
  `use_activation: false` (the raw logit, not its sigmoid).

Requests go out in chunks of `chunk` items, `concurrency` at a time, from a thread pool:
`submit` returns at once with a `Pending`, so the caller works on (local reward models,
the PPO reference forward) while the server answers. A refused connection, a timeout or a
5xx answer is tried again `retries` times, waiting `backoff` s, then twice that ... (at
most `max_backoff`); then `RemoteUnavailable` names the URL and what went wrong. A 4xx
answer is the request's own fault (a malformed item, a conversation for an RM without a
chat template): UserError with the server's message, never retried.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from rlhfkit.data.chat import chat_format
from rlhfkit.data.reward_data import Prompt, encode_responses
from rlhfkit.errors import RemoteUnavailable, UserError

SERVER_NAME = "rlhfkit serve-rm"
"""What GET /health of `rlhfkit serve-rm` answers in its "server" field."""

RM_INFO_FILE = "rlhfkit_reward.json"  # scoring.rm.RM_INFO: an RM's tokenization settings


@dataclass(frozen=True)
class RemoteSettings:
    """How a client talks to a reward model server (module docstring)."""

    timeout: float = 60.0
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    concurrency: int = 4
    chunk: int = 64

    @classmethod
    def from_config(cls, cfg: Any) -> RemoteSettings:
        """--rm-timeout and --rm-retries of a command's config (defaults where it has none)."""
        return cls(
            timeout=getattr(cfg, "rm_timeout", cls.timeout),
            retries=getattr(cfg, "rm_retries", cls.retries),
        )


class Pending:
    """Scores on their way back: `result()` waits for every chunk and returns (N,) float32
    (CPU) in item order; it raises the first chunk's error."""

    def __init__(self, chunks: Sequence[Future] = ()):
        self.chunks = list(chunks)

    def result(self) -> torch.Tensor:
        scores = [s for chunk in self.chunks for s in chunk.result()]
        return torch.tensor(scores, dtype=torch.float32)


def tokens_alike(vocab: dict[str, int], bos: int | None, eos: int | None, policy_tok: Any) -> bool:
    """True if every token of `policy_tok` has the same id in the RM's `vocab` and BOS / EOS
    agree: the RM can read the policy's token ids as they are."""
    if eos != policy_tok.eos_token_id or bos != policy_tok.bos_token_id:
        return False
    return all(vocab.get(t) == i for t, i in policy_tok.get_vocab().items())


class RemoteRM:
    """A reward model served at `url` (module docstring); thread-safe."""

    def __init__(self, url: str, settings: RemoteSettings | None = None, name: str = "reward"):
        self.url = url.strip().rstrip("/")
        self.name = name
        self.settings = settings or RemoteSettings()
        s = self.settings
        self._http = httpx.Client(timeout=httpx.Timeout(s.timeout), trust_env=False)
        self._pool = ThreadPoolExecutor(s.concurrency, thread_name_prefix=f"rm-{name}")
        self._lock = threading.Lock()
        self._kind: str | None = None
        self.info: dict[str, Any] = {}
        self.tokenizer: Any = None  # vLLM: the RM's tokenizer, loaded here
        self._alike: dict[int, bool] = {}
        self._chat = (
            False  # whether the RM renders prompts with its chat template (read with _alike)
        )

    def __repr__(self) -> str:
        return f"RemoteRM({self.name}={self.url})"

    # --- what the scorer calls -----------------------------------------------------------

    def submit(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        ended: Sequence[bool] | None = None,
    ) -> Pending:
        """Start scoring `prompts[i]` + `responses[i]` (`ended[i]` False: the response was
        cut before EOS and is scored without one; None: all ended)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        flags = [True] * len(prompts) if ended is None else [bool(e) for e in ended]
        if self.kind() == "vllm":
            ids, _ = encode_responses(self.tokenizer, prompts, responses, self._max_len(), flags)
            return self.submit_ids(ids)
        items = [
            {"messages" if isinstance(p, list) else "prompt": p, "response": r, "ended": e}
            for p, r, e in zip(prompts, responses, flags, strict=True)
        ]
        return self._send(items, self._post_score)

    def submit_ids(self, sequences: Sequence[Sequence[int]]) -> Pending:
        """Start scoring token sequences already in the RM's vocabulary, as they are."""
        if self.kind() == "vllm":
            return self._send([list(s) for s in sequences], self._post_classify)
        return self._send([{"input_ids": list(s)} for s in sequences], self._post_score)

    def score(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        ended: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """(N,) raw scores, waiting for them (`submit(...).result()`)."""
        return self.submit(prompts, responses, ended).result()

    def reads_tokens_of(self, policy_tok: Any) -> bool:
        """Whether the RM reads `policy_tok`'s ids as they are (cached per tokenizer)."""
        key = id(policy_tok)
        if key not in self._alike:
            if self.kind() == "vllm":
                tok = self.tokenizer
                vocab, bos, eos = tok.get_vocab(), tok.bos_token_id, tok.eos_token_id
                self._chat = chat_format(tok)
            else:
                t = self._request("GET", "/tokenizer")
                vocab, bos, eos = t["vocab"], t["bos_token_id"], t["eos_token_id"]
                self._chat = bool(t.get("chat", False))
            self._alike[key] = tokens_alike(vocab, bos, eos, policy_tok)
        return self._alike[key]

    def scores_ids_of(self, policy_tok: Any) -> bool:
        """Whether the policy's sampled ids can go to the RM as they are: the same tokens, and
        prompts rendered in the same format (chat or plain, `data.chat`); else text is sent
        and the server encodes it in its own format."""
        return self.reads_tokens_of(policy_tok) and self._chat == chat_format(policy_tok)

    # --- the server ----------------------------------------------------------------------

    def kind(self) -> str:
        """'rlhfkit' or 'vllm', asked of the server once (retried like any request)."""
        with self._lock:
            if self._kind is None:
                self._kind = self._detect()
        return self._kind

    def _detect(self) -> str:
        try:
            health = self._request("GET", "/health")
        except RemoteUnavailable:  # no answer at all, after the retries
            raise
        except UserError:  # a 4xx: not ours; maybe vLLM
            health = None
        if isinstance(health, dict) and health.get("server") == SERVER_NAME:
            self.info = health
            return "rlhfkit"
        try:
            models = self._request("GET", "/v1/models")["data"]
            model = models[0]
        except RemoteUnavailable:
            raise
        except (UserError, KeyError, IndexError, TypeError):
            raise UserError(
                f"--rm {self.name}={self.url}: neither `rlhfkit serve-rm` (GET /health names "
                "it) nor vLLM's OpenAI-compatible server (GET /v1/models) answers there"
            ) from None
        self.info = {"model": model.get("id"), "root": model.get("root"),
                     "max_model_len": model.get("max_model_len")}  # fmt: skip
        self.tokenizer = self._vllm_tokenizer(model.get("root") or model.get("id") or "")
        return "vllm"

    def _vllm_tokenizer(self, root: str) -> Any:
        from rlhfkit.models.load import load_tokenizer

        if not Path(root).is_dir():
            raise UserError(
                f"--rm {self.name}={self.url}: vLLM serves {root!r}, which is not a folder on "
                "this machine; the client encodes with the reward model's own tokenizer, so "
                "it needs that folder (a shared filesystem), or serve the RM with "
                "`rlhfkit serve-rm`, which encodes on the server"
            )
        return load_tokenizer(root)

    def _max_len(self) -> int:
        """vLLM: the RM's training --max-len (its rlhfkit_reward.json), within vLLM's own."""
        limit = int(self.info.get("max_model_len") or 1 << 30)
        info = Path(str(self.info.get("root"))) / RM_INFO_FILE
        if info.is_file():
            return min(int(json.loads(info.read_text())["max_len"]), limit)
        return limit

    # --- requests ------------------------------------------------------------------------

    def _send(self, items: list[Any], post) -> Pending:
        if not items:
            return Pending()
        size = max(1, min(self.settings.chunk, int(self.info.get("max_items") or 1 << 30)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        return Pending([self._pool.submit(post, chunk) for chunk in chunks])

    def _post_score(self, items: list[dict[str, Any]]) -> list[float]:
        return self._answer(self._request("POST", "/score", {"items": items}), "scores", items)

    def _post_classify(self, ids: list[list[int]]) -> list[float]:
        payload = {"model": self.info.get("model"), "input": ids, "use_activation": False}
        data = self._answer(self._request("POST", "/classify", payload), "data", ids)
        return [float(d["probs"][0]) for d in sorted(data, key=lambda d: d["index"])]

    def _answer(self, answer: Any, key: str, sent: list[Any]) -> Any:
        value = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(value, list) or len(value) != len(sent):
            raise UserError(
                f"reward model server {self.url}: expected {len(sent)} scores in '{key}', "
                f"got {str(answer)[:200]}"
            )
        return value

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        """One request, retried on a refused connection, a timeout or a 5xx (module doc)."""
        s, url = self.settings, self.url + path
        wait, start, problem = s.backoff, time.monotonic(), ""
        for attempt in range(s.retries + 1):
            if attempt:
                _backoff(min(wait, s.max_backoff))
                wait *= 2
            try:
                r = self._http.request(method, url, json=payload)
            except httpx.TimeoutException:
                problem = f"gave no answer within {s.timeout:g} s (--rm-timeout)"
                continue
            except httpx.TransportError as e:
                problem = f"cannot be reached ({_reason(e)})"
                continue
            if r.status_code >= 500:
                problem = f"answered {r.status_code}: {_detail(r)}"
                continue
            if r.status_code >= 400:
                raise UserError(
                    f"reward model server {url} refused the request ({r.status_code}): {_detail(r)}"
                )
            try:
                return r.json() if r.content else None
            except ValueError:
                raise UserError(
                    f"{url} did not answer JSON: is it a reward model server?"
                ) from None
        took = time.monotonic() - start
        raise RemoteUnavailable(
            f"reward model server {self.url} {problem}; {s.retries + 1} tries over {took:.0f} s"
        )


_backoff = time.sleep  # the wait between tries (a test records it instead)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return "connection refused" if "refused" in text.lower() else text


def _detail(r: httpx.Response) -> str:
    """The server's one-line reason: FastAPI's {"detail": ...} or the start of the body."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail if detail is not None else r.text[:200] or r.reason_phrase)
