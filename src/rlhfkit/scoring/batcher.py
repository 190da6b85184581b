"""Dynamic batching for a served model: requests that arrive together share forwards.

A request becomes a `Job`: how many items it holds, a function that turns them into token
sequences, and a future for its answer. `Batcher.run` (one asyncio task) takes the first
queued job, then lets others join for up to `max_wait` seconds or until the batch holds
`max_batch` items (a job that would overflow a non-empty batch waits for the next one).
The batch goes to ONE worker thread: each job is encoded (a job whose items fail to encode
gets its own error, the others go on), every sequence is scored in one call, and each
job's future gets its own slice back, in its own order. One worker thread means the model
and tokenizer are never used from two threads at once, and the event loop keeps accepting
requests while a batch runs; those queue up and form the next batch.

A job whose future is already done when its batch forms (its request timed out, or the
client went away) is dropped before any work. With `batching` off each job is scored
alone, in arrival order. No torch here: the score function is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

Sequences = list[list[int]]
ScoreFn = Callable[[Sequences], Sequence[float]]


@dataclass
class Job:
    """One request: `size` items, `encode()` -> their sequences, the future of its scores."""

    size: int
    encode: Callable[[], Sequences]
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher has done so far (reported by GET /health)."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 2)}


@dataclass
class Batcher:
    """Queue of jobs -> batches of at most `max_batch` items, scored by `score` (module doc)."""

    score: ScoreFn
    max_batch: int = 32
    max_wait: float = 0.005
    batching: bool = True
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[Job] | None = None
        self._held: Job | None = None  # taken from the queue, too big for the last batch
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rm-forward")

    async def submit(self, size: int, encode: Callable[[], Sequences]) -> list[float]:
        """Queue a request of `size` items and wait for its scores (in item order)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running (start `run()` first)")
        job = Job(size, encode, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def run(self) -> None:
        """Form batches and score them, until cancelled."""
        self._queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = [job for job in await self._next_batch() if not job.future.done()]
                if not batch:
                    continue
                outcomes = await loop.run_in_executor(self._worker, self._score, batch)
                for job, outcome in zip(batch, outcomes, strict=True):
                    if job.future.done():  # timed out meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)
        finally:
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self) -> list[Job]:
        assert self._queue is not None
        first = self._held or await self._queue.get()
        self._held = None
        batch, items = [first], first.size
        if not self.batching:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while items < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if items + job.size > self.max_batch:
                self._held = job  # first of the next batch
                break
            batch.append(job)
            items += job.size
        return batch

    def _score(self, batch: list[Job]) -> list[list[float] | BaseException]:
        """In the worker thread: encode each job, score all sequences in one call, split."""
        outcomes: list[list[float] | BaseException | None] = []
        spans: list[tuple[int, int] | None] = []
        sequences: Sequences = []
        for job in batch:
            try:
                encoded = job.encode()
            except Exception as e:  # this request's items: its own error, the batch goes on
                outcomes.append(e)
                spans.append(None)
                continue
            spans.append((len(sequences), len(sequences) + len(encoded)))
            sequences.extend(encoded)
            outcomes.append(None)
        try:
            scores = [float(s) for s in self.score(sequences)] if sequences else []
        except Exception as e:  # the forward failed: every request of the batch hears it
            return [e if o is None else o for o in outcomes]  # type: ignore[misc]
        self.stats.requests += len(batch)
        self.stats.items += len(sequences)
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(sequences))
        return [
            scores[span[0] : span[1]] if span is not None else o  # type: ignore[misc]
            for o, span in zip(outcomes, spans, strict=True)
        ]
