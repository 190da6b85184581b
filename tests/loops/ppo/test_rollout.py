"""Rollouts: KL is 0 before any update, padding changes nothing, scores are shaped as
asked, scorers plug in (where the values sit: test_update.py).

`_collect` is PPO's steps 2-4 (`collect_rollout`, then `add_advantages` for the values)."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.config import PPOConfig
from rlhfkit.errors import UserError
from rlhfkit.loops.ppo.rollout import RolloutSettings, collect_rollout, shape_scores
from rlhfkit.loops.ppo.update import UpdateSettings, add_advantages
from rlhfkit.models.load import freeze
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.ops.masking import global_whiten, masked_whiten
from rlhfkit.sampling.generator import make_generator
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.scoring.rm import LoadedRM, RewardScorer
from rlhfkit.scoring.rules import RuleScorer, rule_scorer

PROMPTS = [
    "The cat sat on the mat.",
    "What is two and three? Please answer with a number, the big red answer",
    "Dog",
    "Sort five one three nine and seven please",
]


@pytest.fixture(scope="module")
def roles(tiny_tokenizer):
    """Policy, an identical frozen reference, a value model and an RM scorer (random heads)."""
    policy = build_model("test", tiny_tokenizer, seed=0).eval()
    reference = freeze(copy.deepcopy(policy))
    value, _ = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=1)
    rm, rm_tok = init_reward_model(
        build_model("test", tiny_tokenizer, seed=2), copy.deepcopy(tiny_tokenizer),
        head_init="normal", seed=3,
    )  # fmt: skip
    scorer = RewardScorer({"reward": LoadedRM(freeze(rm), rm_tok, 512)})
    return policy, reference, value.eval(), scorer


def _collect(policy, reference, value, scorer, prompts, *, tokenizer, generator=None, **kw):
    """The rollout with its values (steps 2-4 of a PPO iteration)."""
    rollout = collect_rollout(
        make_generator(policy, tokenizer), reference, scorer, prompts,
        tokenizer=tokenizer, rng=generator, **kw,
    )  # fmt: skip
    return add_advantages(value, rollout, UpdateSettings())


def _rollout(roles, tok, prompts, temperature=1.0, seed=0, kl_coef=0.05, **kw):
    policy, reference, value, scorer = roles
    settings = RolloutSettings(max_new_tokens=12, temperature=temperature, **kw)
    gen = torch.Generator().manual_seed(seed)
    return _collect(
        policy, reference, value, scorer, prompts,
        tokenizer=tok, settings=settings, kl_coef=kl_coef, generator=gen,
    )  # fmt: skip


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_kl_is_zero_before_the_first_update(roles, tiny_tokenizer, temperature):
    r = _rollout(roles, tiny_tokenizer, PROMPTS, temperature=temperature)
    # Policy == reference: the sampling log-probs (KV cache) equal a fresh reference pass.
    torch.testing.assert_close(r.ref_logprobs, r.logprobs, atol=1e-5, rtol=0)
    assert r.kl.abs().max() < 1e-5
    # So the reward is the score at each row's last token and ~0 elsewhere.
    last = r.response_mask.sum(1) - 1
    at_last = r.rewards.gather(1, last[:, None]).squeeze(1)
    torch.testing.assert_close(at_last, r.scores, atol=1e-5, rtol=0)
    others = r.rewards.scatter(1, last[:, None], 0.0)
    assert others.abs().max() < 1e-5 * 0.05 + 1e-7


@pytest.mark.parametrize(("temperature", "expected"), [(0.0, 1.0), (0.7, 0.7)])
def test_rollout_and_update_take_log_probs_at_one_temperature(temperature, expected):
    """Sampling, the reference and the update score responses at the same temperature:
    the sampling one, 1 for greedy (`ops.logprobs.logprob_temperature`)."""
    cfg = PPOConfig(temperature=temperature)
    assert RolloutSettings.from_config(cfg).logprob_temperature == expected
    assert UpdateSettings.from_config(cfg).temperature == expected


def test_rollout_shapes_masks_and_padding_zeros(roles, tiny_tokenizer):
    r = _rollout(roles, tiny_tokenizer, PROMPTS)
    B, P = r.prompt_ids.shape
    R = r.response_ids.shape[1]
    assert B == len(PROMPTS) and len(r) == B and r.sequences.shape == (B, P + R)
    for name in ("response_mask", "logprobs", "ref_logprobs", "values", "kl", "rewards"):
        assert getattr(r, name).shape == (B, R), name
    for name in ("raw_scores", "scores", "ended", "safety"):
        assert getattr(r, name).shape == (B,), name
    pad = ~r.response_mask
    for name in ("logprobs", "ref_logprobs", "values", "kl", "rewards"):
        assert (getattr(r, name)[pad] == 0).all(), name
    assert r.response_mask[:, 0].all()  # every response has a first token
    assert set(r.timings) == {"generate", "score", "reference", "value"}
    assert len(r.responses) == B and r.prompts == PROMPTS
    assert set(r.per_rm) == {"reward"}


def test_padding_never_changes_a_rollout(roles, tiny_tokenizer):
    """A prompt alone and the same prompt among longer ones: same quantities (greedy)."""
    short = PROMPTS[2]
    alone = _rollout(roles, tiny_tokenizer, [short], temperature=0.0)
    batch = _rollout(roles, tiny_tokenizer, [PROMPTS[1], short, PROMPTS[3]], temperature=0.0)
    assert batch.prompt_ids.shape[1] > alone.prompt_ids.shape[1]  # it really was padded
    n = int(alone.response_mask[0].sum())
    assert torch.equal(batch.response_ids[1, :n], alone.response_ids[0, :n])
    assert int(batch.response_mask[1].sum()) == n
    for name in ("logprobs", "ref_logprobs", "values", "kl", "rewards"):
        torch.testing.assert_close(
            getattr(batch, name)[1, :n], getattr(alone, name)[0, :n], atol=1e-5, rtol=0
        )
    for name in ("raw_scores", "scores"):
        torch.testing.assert_close(
            getattr(batch, name)[1], getattr(alone, name)[0], atol=1e-5, rtol=0
        )


def test_text_scorer_sees_the_decoded_responses(roles, tiny_tokenizer):
    seen = {}

    def fn(prompt: str, response: str, safety: bool) -> float:
        seen[prompt] = response
        return float(len(response))

    policy, reference, value, _ = roles
    r = _collect(
        policy, reference, value, RuleScorer(fn), PROMPTS,
        tokenizer=tiny_tokenizer, settings=RolloutSettings(max_new_tokens=8), kl_coef=0.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert [seen[p] for p in PROMPTS] == r.responses
    assert r.raw_scores.tolist() == [float(len(x)) for x in r.responses]
    assert r.per_rm == {}


def test_prompt_ids_given_equal_prompt_ids_encoded(roles, tiny_tokenizer):
    ids = encode_prompts(PROMPTS, tiny_tokenizer, 128)
    a = _rollout(roles, tiny_tokenizer, PROMPTS)
    policy, reference, value, scorer = roles
    b = _collect(
        policy, reference, value, scorer, PROMPTS, tokenizer=tiny_tokenizer,
        settings=RolloutSettings(max_new_tokens=12), kl_coef=0.05,
        generator=torch.Generator().manual_seed(0), prompt_ids=ids,
    )  # fmt: skip
    assert torch.equal(a.response_ids, b.response_ids)


def test_missing_eos_penalty_adds_or_replaces():
    raw = torch.tensor([1.0, 2.0, -3.0])
    ended = torch.tensor([True, False, False])
    add = shape_scores(raw, ended, RolloutSettings(missing_eos_penalty=1.5))
    assert add.tolist() == [1.0, 0.5, -4.5]
    rep = shape_scores(
        raw, ended, RolloutSettings(missing_eos_penalty=1.5, missing_eos_mode="replace")
    )
    assert rep.tolist() == [1.0, -1.5, -1.5]
    assert shape_scores(raw, ended, RolloutSettings()).tolist() == raw.tolist()


def test_score_normalisation_then_clipping():
    raw = torch.tensor([0.0, 1.0, 2.0, 10.0])
    ended = torch.ones(4, dtype=torch.bool)
    w = shape_scores(raw, ended, RolloutSettings(score_norm="whiten"))
    torch.testing.assert_close(w, masked_whiten(raw, torch.ones(4, dtype=torch.bool)))
    c = shape_scores(raw, ended, RolloutSettings(score_norm="whiten", score_clip=1.0))
    assert c.max() == 1.0 and c.min() >= -1.0
    assert shape_scores(raw, ended, RolloutSettings(score_clip=1.5)).tolist() == [0, 1, 1.5, 1.5]


def test_global_whiten_is_masked_whiten_in_one_process():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(4, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    x_pad = torch.where(mask, x, torch.full_like(x, float("nan")))  # padding junk is ignored
    torch.testing.assert_close(global_whiten(x_pad, mask), masked_whiten(x, mask))
    torch.testing.assert_close(
        global_whiten(x, mask, shift_mean=False), masked_whiten(x, mask, shift_mean=False)
    )


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError):
        RolloutSettings(kl_estimator="k9")
    with pytest.raises(UserError):
        RolloutSettings(missing_eos_mode="sometimes")
    with pytest.raises(UserError):
        RolloutSettings(score_norm="zscore")


def test_stop_at_eos_false_gives_every_row_max_new_tokens(roles, tiny_tokenizer):
    """`--ignore-eos`: EOS is an ordinary token, every response gets exactly max_new_tokens
    (here "EOS" is the token that row 0 greedily produces first)."""
    policy, reference, value, _ = roles
    free = _rollout(roles, tiny_tokenizer, PROMPTS, temperature=0.0)
    tok = copy.deepcopy(tiny_tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(int(free.response_ids[0, 0]))
    scorer = rule_scorer("length")
    stop, full = (
        _collect(
            policy,
            reference,
            value,
            scorer,
            PROMPTS,
            tokenizer=tok,
            kl_coef=0.05,
            settings=RolloutSettings(max_new_tokens=12, temperature=0.0, stop_at_eos=s),
        )  # fmt: skip
        for s in (True, False)
    )
    assert stop.response_mask[0].sum() == 1 and stop.ended[0]
    assert full.response_ids.shape == (len(PROMPTS), 12) and full.response_mask.all()
    assert torch.equal(full.response_ids, free.response_ids) and torch.equal(full.ended, stop.ended)
    for row, n in enumerate(stop.response_mask.sum(-1).tolist()):
        assert torch.equal(full.response_ids[row, :n], stop.response_ids[row, :n])
        torch.testing.assert_close(full.values[row, :n], stop.values[row, :n])


def test_top_k_and_top_p_are_refused_in_ppo_rollouts():
    """The behaviour log-probs are the full distribution's (`models.generate`), so a
    filtered sampler would make the first PPO ratio differ from 1: refused."""
    for kw in ({"top_k": 5}, {"top_p": 0.9}):
        with pytest.raises(UserError, match="--top-k 0 --top-p 1"):
            RolloutSettings(**kw)
    RolloutSettings(top_k=0, top_p=1.0)  # the full distribution is fine
