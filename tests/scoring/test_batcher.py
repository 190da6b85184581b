"""Dynamic batching: which jobs share a forward, each job's answer is its own slice, one
job's bad items fail that job alone, and batching off scores each job alone."""

from __future__ import annotations

import asyncio

import pytest

from rlhfkit.scoring.batcher import Batcher


def _run(batcher: Batcher, jobs: list[list[list[int]]]) -> list:
    """Submit every job at once (all queued before the batcher wakes up), gather the
    answers or errors in job order."""

    async def main():
        task = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)
        answers = await asyncio.gather(
            *(batcher.submit(len(seqs), lambda seqs=seqs: _encode(seqs)) for seqs in jobs),
            return_exceptions=True,
        )
        task.cancel()
        return answers

    return asyncio.run(main())


def _encode(seqs: list[list[int]]) -> list[list[int]]:
    if any(not s for s in seqs):
        raise ValueError("an empty item")
    return seqs


class Recorder:
    """A score function that records each call's sequences; a sequence scores its sum."""

    def __init__(self):
        self.calls: list[list[list[int]]] = []

    def __call__(self, sequences):
        self.calls.append([list(s) for s in sequences])
        return [float(sum(s)) for s in sequences]


def test_jobs_queued_together_share_one_call_and_get_their_own_answers():
    score = Recorder()
    jobs = [[[i, j] for j in range(i % 3 + 1)] for i in range(6)]  # sizes 1, 2, 3, 1, 2, 3
    answers = _run(Batcher(score, max_batch=100, max_wait=0.05), jobs)
    assert answers == [[float(sum(s)) for s in seqs] for seqs in jobs]
    assert len(score.calls) == 1 and len(score.calls[0]) == 12


def test_a_batch_never_passes_max_batch_unless_one_job_is_larger():
    score = Recorder()
    jobs = [[[1]] * 2, [[2]] * 2, [[3]] * 2, [[4]] * 7]  # max 5: [2, 2], [2], [7]
    answers = _run(Batcher(score, max_batch=5, max_wait=0.05), jobs)
    assert [len(c) for c in score.calls] == [4, 2, 7]
    assert answers == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0] * 7]


def test_one_jobs_bad_items_fail_that_job_alone():
    score = Recorder()
    answers = _run(Batcher(score, max_batch=100, max_wait=0.05), [[[1]], [[]], [[2, 3]]])
    assert answers[0] == [1.0] and answers[2] == [5.0]
    assert isinstance(answers[1], ValueError)
    assert score.calls == [[[1], [2, 3]]]


def test_a_failed_forward_reaches_every_job_of_its_batch():
    def broken(sequences):
        raise RuntimeError("out of memory")

    answers = _run(Batcher(broken, max_batch=100, max_wait=0.05), [[[1]], [[2]]])
    assert all(isinstance(a, RuntimeError) for a in answers)


def test_batching_off_scores_each_job_alone():
    score = Recorder()
    jobs = [[[1], [2]], [[3]], [[4]]]
    answers = _run(Batcher(score, max_batch=100, max_wait=0.05, batching=False), jobs)
    assert score.calls == jobs and answers == [[1.0, 2.0], [3.0], [4.0]]


def test_a_job_that_timed_out_is_dropped_before_any_work():
    import time

    def slow(sequences):
        time.sleep(0.5)  # job A's forward: B queues meanwhile, and times out there
        return [float(sum(s)) for s in sequences]

    calls = []
    batcher = Batcher(lambda seqs: calls.append(seqs) or slow(seqs), max_batch=1, max_wait=0.0)

    async def main():
        task = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)
        a = asyncio.create_task(batcher.submit(1, lambda: [[1]]))
        await asyncio.sleep(0.05)  # A is being scored
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(1, lambda: [[2]]), timeout=0.05)
        answers = [await a, await batcher.submit(1, lambda: [[3]])]
        task.cancel()
        return answers

    assert asyncio.run(main()) == [[1.0], [3.0]]
    assert calls == [[[1]], [[3]]]  # B never reached the model
    assert batcher.stats.as_dict()["requests"] == 2
