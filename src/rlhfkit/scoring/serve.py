"""`rlhfkit serve-rm DIR`: one reward model over HTTP (FastAPI on uvicorn), for
`--rm NAME=URL` of the sampling commands and for OpenRLHF's remote RM client.

Endpoints (JSON in, JSON out):
- POST /score: {"items": [ITEM, ...]} -> {"scores": [float, ...], "model": NAME}, one raw
  score per item, in order. An ITEM is an `rlhfkit score` record: {"prompt": str,
  "response": str, "ended"?: bool} or {"messages": [{"role", "content"}, ...], "response":
  str} (a conversation, rendered with the RM's chat template); "ended": false scores a
  response cut before EOS without one; "safety" is accepted and ignored (the client
  combines scores). Or {"input_ids": [int, ...]}: tokens of the RM's own vocabulary, scored
  as they are (what a client whose tokenizer matches sends, GET /tokenizer).
- POST /get_reward: OpenRLHF's remote RM protocol, {"query": [full text, ...]} (prompt +
  response as the trainer decoded them, special tokens included; "prompts" and "labels"
  are accepted and ignored) -> {"rewards": [...], "scores": [...], "extra_logs": {}}.
  Each text is tokenized as it is (no special tokens added), as OpenRLHF's serve_rm does.
- GET /health: {"status": "ok", "server": "rlhfkit serve-rm", the model, the limits and
  the batching counts}. GET /tokenizer: the RM's vocabulary and BOS / EOS ids.

Every sequence keeps its end when over `max_len` (the RM's training --max-len by default).
Requests that arrive together are scored in shared forwards (`scoring.batcher`); the
model runs in one worker thread, the event loop keeps answering meanwhile.

Limits, each answered with a one-line {"detail": ...}: a body over `max_bytes` (or one
without a Content-Length) 413 (411), more than `max_items` items 413, a body that is not
JSON 400, a request of the wrong shape or an item that does not validate 422 (naming the
item), a request not scored within `request_timeout` s 503 (clients retry 5xx).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from rlhfkit import __version__
from rlhfkit.data.chat import chat_format
from rlhfkit.data.records import ScoredRecord, parse_scoring_record
from rlhfkit.data.reward_data import encode_responses
from rlhfkit.data.tokenize import resolve_bos, truncate_left
from rlhfkit.distributed import pick_device
from rlhfkit.errors import UserError
from rlhfkit.models.reward import load_reward_model
from rlhfkit.scoring.batcher import Batcher
from rlhfkit.scoring.remote import SERVER_NAME
from rlhfkit.scoring.rm import packs_exactly, saved_max_len, score_sequences

# ---------------------------------------------------------------------------------------
# The model: items -> token sequences -> scores
# ---------------------------------------------------------------------------------------


@dataclass
class ServedRM:
    """A reward model with its tokenizer and length limit, as the server uses it. Its
    methods run in the batcher's worker thread only."""

    model: torch.nn.Module
    tokenizer: Any
    max_len: int
    name: str
    batch_size: int = 32
    packing: bool = False

    def __post_init__(self) -> None:
        # read once here: the tokenizer is used by the worker thread only from now on
        self.vocab = self.tokenizer.get_vocab()
        self.vocab_size = len(self.tokenizer)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        max_len: int | None = None,
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> ServedRM:
        model, tok = load_reward_model(folder, device, trust_remote_code=trust_remote_code)
        return cls(model, tok, max_len or saved_max_len(Path(folder), model), Path(folder).name,
                   batch_size, packs_exactly(model))  # fmt: skip

    def encode_items(self, items: list[ScoredRecord | list[int]]) -> list[list[int]]:
        """Records through the RM's encoding (`encode_responses`); id lists as they are."""
        records = [(i, r) for i, r in enumerate(items) if isinstance(r, ScoredRecord)]
        out: list[list[int]] = [[] if isinstance(r, ScoredRecord) else self._cut(r) for r in items]
        if records:
            if self.tokenizer.chat_template is None and any(r.messages for _, r in records):
                raise UserError(
                    f"items[{next(i for i, r in records if r.messages)}]: a conversation needs a "
                    f"chat template, and reward model {self.name} has none: send 'prompt' strings"
                )
            ids, _ = encode_responses(
                self.tokenizer,
                [r.content for _, r in records],
                [r.response for _, r in records],
                self.max_len,
                [r.ended for _, r in records],
            )
            for (i, _), seq in zip(records, ids, strict=True):
                out[i] = seq
        return out

    def encode_queries(self, texts: list[str]) -> list[list[int]]:
        """OpenRLHF's full texts, tokenized as they are (no special tokens added)."""
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self._cut(seq) for seq in ids]

    def _cut(self, ids: list[int]) -> list[int]:
        return truncate_left(list(ids), self.max_len, resolve_bos(self.tokenizer))

    def score(self, sequences: list[list[int]]) -> list[float]:
        """Raw scores of token sequences (`scoring.rm.score_sequences`)."""
        pad = self.tokenizer.pad_token_id
        return score_sequences(self.model, sequences, pad, self.batch_size, self.packing).tolist()

    def check_ids(self, ids: Any, where: str) -> list[int]:
        """A list of token ids of this vocabulary, or UserError naming `where`."""
        size = self.vocab_size
        if not isinstance(ids, list) or not ids:
            raise UserError(f"{where}.input_ids must be a non-empty list of token ids")
        for t in ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < size:
                raise UserError(f"{where}.input_ids holds {t!r}: not a token id of {self.name}")
        return ids

    def description(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"model": self.name, "max_len": self.max_len, "packing": self.packing,
                "chat_template": tok.chat_template is not None,
                "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}  # fmt: skip


# ---------------------------------------------------------------------------------------
# The HTTP app
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """Batching and limits of a server (`rlhfkit serve-rm --help`)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    batching: bool = True
    max_items: int = 1024
    max_bytes: int = 16 * 1024 * 1024
    request_timeout: float = 300.0

    @classmethod
    def from_config(cls, cfg: Any) -> ServeSettings:
        return cls(cfg.max_batch, cfg.max_wait_ms, cfg.batching, cfg.max_items, cfg.max_bytes,
                   cfg.request_timeout)  # fmt: skip


class ScoreRequest(BaseModel):
    items: list[Any]


class RewardRequest(BaseModel):
    """OpenRLHF's request: the full texts; other fields (prompts, labels) are ignored."""

    model_config = ConfigDict(extra="allow")
    query: list[str]


def create_app(rm: ServedRM, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `rm` (module docstring)."""
    s = settings or ServeSettings()
    batcher = Batcher(rm.score, s.max_batch, s.max_wait_ms / 1000.0, s.batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)  # the batcher's queue exists before the first request
        yield
        task.cancel()

    app = FastAPI(title=f"rlhfkit serve-rm: {rm.name}", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=s.max_bytes)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    def check_size(size: int) -> None:
        if size > s.max_items:
            raise HTTPException(
                413, f"{size} items in one request, more than this server takes (--max-items "
                f"{s.max_items}): send them in several requests",
            )  # fmt: skip

    async def scored(size: int, encode) -> list[float]:
        if size == 0:
            return []
        try:
            return await asyncio.wait_for(batcher.submit(size, encode), s.request_timeout)
        except TimeoutError:
            raise HTTPException(
                503, f"not scored within {s.request_timeout:g} s (--request-timeout): the "
                "server is overloaded, try again",
            ) from None  # fmt: skip
        except (UserError, ValueError) as e:  # an item the tokenizer or template refuses
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # the forward itself failed
            raise HTTPException(500, f"scoring failed: {type(e).__name__}: {e}") from None

    @app.post("/score")
    async def score(request: ScoreRequest) -> dict[str, Any]:
        check_size(len(request.items))
        items = [_item(rm, it, f"items[{i}]") for i, it in enumerate(request.items)]
        scores = await scored(len(items), lambda: rm.encode_items(items))
        return {"scores": scores, "model": rm.name}

    @app.post("/get_reward")
    async def get_reward(request: RewardRequest) -> dict[str, Any]:
        check_size(len(request.query))
        rewards = await scored(len(request.query), lambda: rm.encode_queries(request.query))
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "server": SERVER_NAME, "version": __version__,
                **rm.description(), "max_items": s.max_items, "max_bytes": s.max_bytes,
                "max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms,
                "batching": s.batching, "stats": batcher.stats.as_dict()}  # fmt: skip

    @app.get("/tokenizer")
    async def tokenizer() -> dict[str, Any]:
        tok = rm.tokenizer
        return {"vocab": rm.vocab, "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id, "chat": chat_format(tok)}  # fmt: skip

    return app


def _item(rm: ServedRM, item: Any, where: str) -> ScoredRecord | list[int]:
    """One /score item, validated (422 naming it if bad)."""
    try:
        if isinstance(item, dict) and "input_ids" in item:
            return rm.check_ids(item["input_ids"], where)
        return parse_scoring_record(item, where)
    except UserError as e:
        raise HTTPException(422, str(e)) from None


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors as one line: 400 for a body that is not JSON, else 422."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {"msg": str(exc), "loc": ()}
    if first.get("type") == "json_invalid":
        return JSONResponse({"detail": f"the request body is not valid JSON ({first['msg']})"}, 400)
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request"
    expected = "{'items': [...]}" if request.url.path == "/score" else "{'query': [...]}"
    return JSONResponse({"detail": f"{where}: {first['msg']} (expected {expected})"}, 422)


class BodyLimit:
    """ASGI middleware: a POST body must say its length (411) and be at most `max_bytes` (413),
    refused before it is read."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            problem = None
            if length is None:
                problem = 411, "send a Content-Length header (chunked bodies are not read)"
            elif not length.isdigit() or int(length) > self.max_bytes:
                problem = (
                    413,
                    (
                        f"request body of {length.decode()} bytes, more than this server takes "
                        f"(--max-bytes {self.max_bytes}): send fewer items per request"
                    ),
                )
            if problem is not None:
                response = JSONResponse({"detail": problem[1]}, status_code=problem[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------


class BackgroundServer:
    """uvicorn serving `app` in a daemon thread (tests, benchmarks): `start()` returns once
    it listens; `url` is where; `stop()` shuts it down (open requests finish first)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def check_port(host: str, port: int) -> None:
    """UserError if `host:port` cannot be listened on (before the model loads)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise UserError(
                f"--host {host} --port {port}: cannot listen there ({e.strerror})"
            ) from None


def serve_rm(cfg: Any) -> int:
    """`rlhfkit serve-rm`: load the RM, serve it until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    from rlhfkit.config.checks import check_options

    check_options(cfg)  # the declared ranges, also when called from Python
    check_port(cfg.host, cfg.port)
    rm = ServedRM.load(
        cfg.model, pick_device(cfg.device), cfg.max_len, cfg.max_batch, cfg.trust_remote_code
    )
    settings = ServeSettings.from_config(cfg)
    app = create_app(rm, settings)
    batching = (
        f"batches of <= {cfg.max_batch}, wait {cfg.max_wait_ms:g} ms"
        if cfg.batching
        else "no batching"
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                print(f"serve-rm: {cfg.model} on http://{host}:{port} ({batching}, max len "
                      f"{rm.max_len}, {'packed rows' if rm.packing else 'padded batches'}); "
                      "POST /score, POST /get_reward, GET /health", flush=True)  # fmt: skip

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                            access_log=False)  # fmt: skip
    Server(config).run()
    print("serve-rm: stopped", flush=True)
    return 0
