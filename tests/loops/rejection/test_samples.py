"""loops/rejection/samples.py, without a model (sampling itself: test_loop.py): a round's
records round-trip through samples.jsonl, a finished round is read back only for this run's
prompts, K and log-prob needs, and each batch's generator depends on (seed, round, batch)."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import UserError
from rlhfkit.loops.rejection.samples import (
    SampleRecord,
    batch_generator,
    check_rewards,
    read_samples,
)


def _record(prompt: str, k: int = 2, logprobs: bool = False) -> SampleRecord:
    return SampleRecord(
        prompt, [f"r{i}" for i in range(k)], [float(i) for i in range(k)], k - 1, safety=True,
        response_tokens=[3] * k, per_rm={"help": [0.5] * k}, ended=[True] * k,
        logprobs=[-1.0] * k if logprobs else [],
    )  # fmt: skip


def test_a_record_round_trips_through_its_json_row():
    rec = _record("p", logprobs=True)
    row = json.loads(json.dumps(rec.to_json()))
    assert SampleRecord.from_json(row) == rec
    plain = _record("p")
    plain.per_rm, plain.ended = {}, []
    assert set(plain.to_json()) == {"prompt", "safety", "responses", "scores", "best",
                                    "response_tokens"}  # fmt: skip


def test_a_finished_round_is_read_back_for_this_runs_prompts_and_k_only(tmp_path):
    prompts = [PromptRecord("a", False, 1), PromptRecord("b", False, 2)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(_record(p.prompt).to_json()) + "\n" for p in prompts))
    assert [r.prompt for r in read_samples(path, prompts, 2)] == ["a", "b"]
    with pytest.raises(UserError, match="2 records for 1 prompts"):
        read_samples(path, prompts[:1], 2)
    with pytest.raises(
        UserError, match=r"samples\.jsonl:1: drawn for other prompts or another --k"
    ):
        read_samples(path, prompts, 3)
    with pytest.raises(UserError, match=r"samples\.jsonl:2: drawn for other prompts"):
        read_samples(path, [prompts[0], PromptRecord("c", False, 2)], 2)
    with pytest.raises(UserError, match="drawn without log-probs, which --kl-coef needs"):
        read_samples(path, prompts, 2, logprobs=True)


def test_each_batch_draws_from_its_own_seeded_generator():
    def draw(*key):
        return torch.rand(4, generator=batch_generator(*key))

    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    keys = [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3)]
    draws = [draw(*k) for k in keys]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1 :])


def test_a_nan_reward_is_a_user_error_naming_its_prompt():
    prompts = [PromptRecord("a", False, 1), PromptRecord("b", False, 2)]
    check_rewards(prompts, [0.0, 1.0, 2.0, 3.0], k=2)  # no NaN: nothing to say
    with pytest.raises(UserError, match="the reward is NaN for a response to 'b'"):
        check_rewards(prompts, [0.0, 1.0, 2.0, float("nan")], k=2)
