"""models/fast_linear.py: OneDNNLinear equals F.linear forward and backward (3-D,
non-contiguous, no bias, double backward), falls back where it must (small, float64,
autocast, switched off), leaves state dicts and saved folders unchanged, and a PPO step
with it equals one without."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from rlhfkit.models import fast_linear as fl
from rlhfkit.models.fast_linear import (
    OneDNNLinear,
    onednn_works,
    plain_linears,
    use_onednn_linears,
)

pytestmark = pytest.mark.skipif(not onednn_works(), reason="no oneDNN linear in this torch")


@pytest.fixture
def calls(monkeypatch):
    """Counts oneDNN matmuls; every size goes to oneDNN (MIN_WEIGHT and MIN_ROWS 0)."""
    box = {"n": 0}
    real = fl._onednn_linear

    def counted(*a, **k):
        box["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fl, "_onednn_linear", counted)
    monkeypatch.setattr(fl, "MIN_WEIGHT", 0)
    monkeypatch.setattr(fl, "MIN_ROWS", 0)
    return box


def _pair(in_f: int, out_f: int, bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    plain = torch.nn.Linear(in_f, out_f, bias=bias)
    fast = copy.deepcopy(plain)
    fast.__class__ = OneDNNLinear
    return plain, fast


def _inputs(shape, layout: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return torch.randn(shape, generator=g)
    if layout == "transposed":  # the same shape as a view of a (.., in, rows) tensor
        return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g).transpose(-1, -2)
    return torch.randn(*shape[:-1], 2 * shape[-1], generator=g)[..., ::2]  # strided


@pytest.mark.parametrize(
    "shape, out_f, bias, layout",
    [
        ((7, 24), 40, True, "contiguous"),
        ((3, 5, 24), 40, True, "contiguous"),
        ((3, 5, 24), 16, False, "transposed"),
        ((2, 3, 4, 24), 33, True, "strided"),
        ((6, 24), 40, False, "strided"),
    ],
)
def test_forward_and_backward_equal_f_linear(calls, shape, out_f, bias, layout):
    plain, fast = _pair(shape[-1], out_f, bias)
    x = _inputs(shape, layout)
    assert (layout == "contiguous") == x.is_contiguous()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), fast(xb)
    assert yb.shape == ya.shape
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(2))
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-5)
    assert calls["n"] == 3  # forward, grad-input, grad-weight


def test_frozen_weights_and_no_grad_take_one_call(calls):
    plain, fast = _pair(24, 40, True)
    fast.requires_grad_(False)
    x = torch.randn(4, 9, 24, requires_grad=True)
    fast(x).sum().backward()  # grad of the input only
    assert calls["n"] == 2 and fast.weight.grad is None
    torch.testing.assert_close(x.grad, plain.weight.sum(0).expand(4, 9, 24), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        y = fast(x)
    assert calls["n"] == 3 and not y.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_double_backward_through_plain_matmuls(calls):
    plain, fast = _pair(12, 10, True)
    x = torch.randn(5, 12, dtype=torch.float32)
    out = []
    for layer in (plain, fast):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(layer(xi).pow(2).sum(), xi, create_graph=True)
        gx.pow(2).sum().backward()
        out.append((xi.grad, layer.weight.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_falls_back_to_f_linear_where_it_must(monkeypatch, calls):
    plain, fast = _pair(24, 40, True)
    x = torch.randn(3, 24)
    monkeypatch.setattr(fl, "MIN_WEIGHT", 40 * 24 + 1)  # a small layer
    torch.testing.assert_close(fast(x), plain(x))
    monkeypatch.setattr(fl, "MIN_WEIGHT", 0)
    monkeypatch.setattr(fl, "MIN_ROWS", 4)  # few rows (3)
    fast(x)
    monkeypatch.setattr(fl, "MIN_ROWS", 0)
    fast(torch.randn(24))  # 1-D input
    f64 = copy.deepcopy(fast).double()
    assert f64(x.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16  # F.linear under autocast: bf16
    monkeypatch.setattr(fl, "ENABLED", False)
    fast(x)
    assert calls["n"] == 0
    monkeypatch.setattr(fl, "ENABLED", True)
    fast(x)
    assert calls["n"] == 1


def test_swap_keeps_state_dict_and_saved_folder(tmp_path, tiny_tokenizer, monkeypatch):
    from safetensors.torch import load_file

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.llama_decoder import is_stock_llama
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=0)
    keys = list(model.state_dict())
    save_hf(model, tiny_tokenizer, tmp_path / "plain")
    n = use_onednn_linears(model)
    assert n == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert type(model.lm_head) is OneDNNLinear and is_stock_llama(model)
    assert list(model.state_dict()) == keys
    save_hf(model, tiny_tokenizer, tmp_path / "fast")
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "fast"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain_bytes = (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == plain_bytes
    assert type(pickle.loads(pickle.dumps(model)).lm_head) is OneDNNLinear
    assert type(copy.deepcopy(model).lm_head) is OneDNNLinear
    assert plain_linears(model) == n and type(model.lm_head) is torch.nn.Linear
    monkeypatch.setattr(fl, "ENABLED", False)
    assert use_onednn_linears(model) == 0


def test_a_ppo_step_is_the_same_with_onednn(calls, tiny_tokenizer):
    from tests.helpers import assert_same_training
    from tests.loops.ppo.test_loop import TokenSetReward, _params, _prompts, _roles

    from rlhfkit.config import PPOConfig
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import fast_linears

    cfg = PPOConfig(batch_size=8, max_new_tokens=8, ppo_epochs=1, lr=1e-3, weight_decay=0.0)
    results = []
    for fast in (False, True):
        policy, reference, value = _roles(tiny_tokenizer, head_init="normal")
        w0 = {**_params(policy), **{f"v.{k}": v for k, v in _params(value).items()}}
        if fast:
            fast_linears(policy, reference, value, TokenSetReward())
        run = build_run(cfg, policy, reference, value, TokenSetReward(), tiny_tokenizer, _prompts())
        rollout, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
        weights = {**_params(policy), **{f"v.{k}": v for k, v in _params(value).items()}}
        results.append((rollout, metrics, weights))
    (ra, ma, wa), (rb, mb, wb) = results
    assert calls["n"] > 0
    assert torch.equal(ra.response_ids, rb.response_ids)
    for f in ("logprobs", "ref_logprobs", "values", "rewards"):
        torch.testing.assert_close(getattr(rb, f), getattr(ra, f), rtol=1e-4, atol=1e-5)
    for k in ("policy_loss", "value_loss", "grad_norm", "value_grad_norm", "entropy"):
        assert mb[k] == pytest.approx(ma[k], rel=1e-4, abs=1e-6), k
    # AdamW's first step is about lr * g / |g| per element: rounding in a gradient near 0
    # moves that element by a visible share of lr (here 2e-3 of it).
    assert_same_training(wa, wb, w0, rel=2e-2)


def test_fast_linears_covers_every_ppo_role(tiny_tokenizer):
    from rlhfkit.loops.ppo.roles import fast_linears
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.scoring.rm import LoadedRM, RewardScorer
    from rlhfkit.scoring.rules import rule_scorer

    policy = build_model("test", tiny_tokenizer, seed=0)
    value, tok = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), seed=0)
    rm, _ = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), seed=1)
    fast_linears(policy, value, RewardScorer({"r": LoadedRM(rm, tok, 64)}), rule_scorer("length"))
    for model in (policy, value, rm):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is OneDNNLinear for m in linears)
