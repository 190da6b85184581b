"""loops/ppo/update.py: the update steps of a PPO iteration. PPO-ptx adds gamma times the
LM gradient before one step; the rollout's value forward is the update's when one epoch
of one minibatch allows it, else the value model runs per minibatch; values sit at the
position that predicts each token."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from tests.helpers import assert_same_training
from tests.loops.ppo.test_loop import TokenSetReward, _params, _prompts, _roles
from tests.loops.ppo.test_rollout import PROMPTS, _rollout
from tests.loops.ppo.test_rollout import roles as roles  # noqa: F401 (a fixture)

from rlhfkit.config import PPOConfig
from rlhfkit.loops.ppo.loop import build_run, ppo_step
from rlhfkit.loops.ppo.rollout import RolloutSettings, collect_rollout
from rlhfkit.loops.ppo.update import (
    PtxBatches,
    Trainables,
    UpdateSettings,
    add_advantages,
    ppo_update,
)
from rlhfkit.losses import sft_nll
from rlhfkit.models.reward import values_for_tokens
from rlhfkit.sampling.generator import make_generator


def test_ptx_adds_gamma_times_the_lm_gradient_before_one_step(tiny_tokenizer, tiny_texts):
    """With SGD (lr 1, no clipping): step_plain - step_ptx = gamma * grad of the LM loss."""
    from rlhfkit.data.tokenize import pack_corpus

    policy, reference, value = _roles(tiny_tokenizer)
    rollout = collect_rollout(
        make_generator(policy, tiny_tokenizer), reference, TokenSetReward(), _prompts(8),
        tokenizer=tiny_tokenizer, settings=RolloutSettings(max_new_tokens=8), kl_coef=0.05,
        rng=torch.Generator().manual_seed(0),
    )  # fmt: skip
    ptx = PtxBatches(pack_corpus(tiny_texts, tiny_tokenizer, 16), batch_size=4, seed=0)
    gamma = 0.7
    s = UpdateSettings(ppo_epochs=1, max_grad_norm=0.0, ptx_coef=gamma)
    rollout = add_advantages(value, rollout, replace(s, ppo_epochs=2))  # no kept graph
    p0 = _params(policy)

    def update(with_ptx: bool) -> dict[str, torch.Tensor]:
        p, v = copy.deepcopy(policy), copy.deepcopy(value)
        t = Trainables(p, v, torch.optim.SGD(p.parameters(), lr=1.0),
                       torch.optim.SGD(v.parameters(), lr=1.0))  # fmt: skip
        ppo_update(t, rollout, s, step=0, ptx=ptx if with_ptx else None)
        return _params(p)

    plain, mixed = update(False), update(True)
    lm = copy.deepcopy(policy)
    loss, _ = sft_nll(lm(input_ids=ptx.batch(0), use_cache=False).logits, ptx.batch(0))
    loss.backward()
    for name, param in lm.named_parameters():
        expected = gamma * param.grad
        got = plain[name] - mixed[name]
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4, msg=name)
    assert any(not torch.equal(plain[k], p0[k]) for k in p0)


def _count_calls(model: torch.nn.Module) -> list[int]:
    box = [0]
    model.register_forward_pre_hook(lambda *a: box.__setitem__(0, box[0] + 1))
    return box


@pytest.mark.parametrize("micro_batch_size", [0, 8])
def test_one_epoch_one_minibatch_runs_the_value_model_once(
    tiny_tokenizer, monkeypatch, micro_batch_size
):
    """The rollout's value forward, kept with its graph, is the update's: the same step as
    with two forwards, up to float rounding."""
    import rlhfkit.loops.ppo.update as update_mod

    cfg = PPOConfig(
        batch_size=8, max_new_tokens=8, ppo_epochs=1, lr=1e-3, weight_decay=0.0,
        micro_batch_size=micro_batch_size,
    )  # fmt: skip
    results = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(update_mod, "reuses_value_forward", lambda s, rows: False)
        policy, reference, value = _roles(tiny_tokenizer, head_init="normal")
        w0 = {**_params(policy), **{f"v.{k}": v for k, v in _params(value).items()}}
        run = build_run(cfg, policy, reference, value, TokenSetReward(), tiny_tokenizer, _prompts())
        calls = _count_calls(value)  # after build_run: its packing probe runs forwards
        rollout, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
        assert calls[0] == (1 if shared else 2)
        weights = {**_params(policy), **{f"v.{k}": v for k, v in _params(value).items()}}
        results.append((rollout, metrics, weights))
    (ra, ma, wa), (rb, mb, wb) = results
    assert torch.equal(ra.values, rb.values) and not ra.values.requires_grad
    for k in ("value_loss", "value_clipfrac", "value_grad_norm", "policy_loss", "grad_norm"):
        assert ma[k] == pytest.approx(mb[k], rel=1e-5, abs=1e-7), k
    assert ma["time/value"] > 0
    assert_same_training(wa, wb, w0, rel=2e-2)  # AdamW's first step: lr * g / |g|


def test_several_epochs_or_minibatches_run_the_value_model_per_minibatch(tiny_tokenizer):
    from rlhfkit.loops.ppo.update import reuses_value_forward

    assert reuses_value_forward(UpdateSettings(ppo_epochs=1), 8)
    assert reuses_value_forward(UpdateSettings(ppo_epochs=1, micro_batch_size=8), 8)
    assert not reuses_value_forward(UpdateSettings(ppo_epochs=1, micro_batch_size=4), 8)
    assert not reuses_value_forward(UpdateSettings(ppo_epochs=2), 8)
    assert not reuses_value_forward(UpdateSettings(ppo_epochs=1, num_mini_batches=2), 8)
    policy, reference, value = _roles(tiny_tokenizer)
    cfg = PPOConfig(batch_size=8, max_new_tokens=8, ppo_epochs=2, num_mini_batches=2)
    run = build_run(cfg, policy, reference, value, TokenSetReward(), tiny_tokenizer, _prompts())
    calls = _count_calls(value)  # after build_run: its packing probe runs forwards
    rollout, _ = ppo_step(run, 0, cfg.batch_size, cfg.seed)
    assert calls[0] == 1 + 2 * 2
    assert rollout.value_graph is None
    kept = replace(rollout, value_graph=rollout.values.requires_grad_(True))
    with pytest.raises(ValueError, match="one epoch"):
        ppo_update(run.trainables, kept, UpdateSettings(ppo_epochs=2), step=0)


def test_values_are_read_where_each_token_is_predicted(roles, tiny_tokenizer):
    """values[b, t] = V(prompt + response[:t]): the head at the last token of that prefix."""
    _, _, value, _ = roles
    r = _rollout(roles, tiny_tokenizer, PROMPTS[:2])
    for b in range(2):
        prompt = r.prompt_ids[b][r.prompt_mask[b]]
        for t in (0, int(r.response_mask[b].sum()) - 1):
            prefix = torch.cat([prompt, r.response_ids[b, :t]])[None]
            with torch.no_grad():
                v = values_for_tokens(value, prefix, torch.ones_like(prefix, dtype=torch.bool))
            torch.testing.assert_close(r.values[b, t], v[0, -1], atol=1e-5, rtol=0)
