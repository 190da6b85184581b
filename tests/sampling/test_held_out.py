"""sampling/held_out.py: PPO's held-out evaluation (reward, KL to the reference, lengths,
gold metrics) and the draw it shares with rejection sampling, the same at every call."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.sampling.test_sample_score import PROMPTS
from tests.sampling.test_sample_score import ids as ids  # noqa: F401 (a fixture)
from tests.sampling.test_sample_score import model as model  # noqa: F401 (a fixture)

from rlhfkit.sampling.generator import GenerationSettings, make_generator
from rlhfkit.sampling.held_out import evaluate_policy, sample_held_out
from rlhfkit.sampling.sample_score import GOLD_KEYS, encode_prompts, gold_metrics, sample_and_score
from rlhfkit.scoring.rules import rule_scorer


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory):
    from rlhfkit.data.records import read_prompts
    from rlhfkit.world import make_world

    root = tmp_path_factory.mktemp("world")
    make_world(root, seed=0, corpus_docs=5, sft=5, train_prompts=5, eval_prompts=6)
    return read_prompts(root / "prompts_eval.jsonl")


def test_evaluate_policy_reports_reward_kl_lengths_and_gold(model, tiny_tokenizer, world_prompts):
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0)
    scorer, tok = rule_scorer("length"), tiny_tokenizer
    gen = make_generator(model, tok)
    out = evaluate_policy(
        gen, copy.deepcopy(model), scorer, world_prompts, tokenizer=tok, settings=settings,
        max_prompt_len=128, batch_size=4, seed=0, device=torch.device("cpu"),
    )  # fmt: skip
    assert set(GOLD_KEYS) <= set(out) and out["n"] == len(world_prompts)
    assert abs(out["kl"]) < 1e-4 and abs(out["kl_k3"]) < 1e-4  # against a copy of itself
    ids = encode_prompts(world_prompts, tok, 128)
    rng = torch.Generator().manual_seed(0 + 12_345)
    r = sample_and_score(gen, world_prompts, ids, settings, rng, batch_size=4, scorer=scorer)
    assert out["score"] == pytest.approx(float(r.scores.mean()))
    assert out["response_length"] == pytest.approx(sum(r.tokens) / len(r.tokens))
    assert [s["response"] for s in out["samples"]] == r.texts[:4]
    assert gold_metrics(["not a world prompt"], ["x"], [False], [1]) == {}


def test_the_draw_is_the_same_at_every_call_and_seeded_by_the_seed(model, tiny_tokenizer, ids):
    """One response per prompt from an rng seeded by seed + 12_345 alone, in batches of
    `batch_size` sequences: two evaluations of one policy see the same responses."""
    gen, settings = make_generator(model, tiny_tokenizer), GenerationSettings(max_new_tokens=8)
    cpu, scorer = torch.device("cpu"), rule_scorer("length")

    def draw(seed: int):
        return sample_held_out(gen, PROMPTS, ids, settings, batch_size=2, seed=seed, device=cpu,
                               scorer=scorer, tokenizer=tiny_tokenizer)  # fmt: skip

    first, again = draw(5), draw(5)
    assert len(first.texts) == len(PROMPTS) and first.kl is None  # no reference: no KL
    assert first.texts == again.texts and torch.equal(first.scores, again.scores)
    rng = torch.Generator().manual_seed(5 + 12_345)
    direct = sample_and_score(gen, PROMPTS, ids, settings, rng, batch_size=2, scorer=scorer)
    assert direct.texts == first.texts
    assert any(draw(s).texts != first.texts for s in (6, 7, 8))  # the seed decides
