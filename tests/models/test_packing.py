"""Padding-free forwards of padded batches (models/packing.py, models/forward.py packed=True):
the layout against a naive per-sequence construction, the forwards against the padded ones
per architecture, the probe that picks them, and PPO trained either way."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import CHAIN_ARCH

from rlhfkit.errors import UserError
from rlhfkit.models.forward import policy_logits, response_values
from rlhfkit.models.packing import pack
from rlhfkit.models.presets import build_model
from rlhfkit.models.probe import TOL_EPS, packed_forward_error
from rlhfkit.models.reward import init_reward_model


def _ppo_layout(g: torch.Generator, b: int = 6, p: int = 10, r: int = 7):
    """(B, P + R) ids and mask laid out as PPO pads them: left-padded prompts of 1..P
    tokens, right-padded responses of 1..R tokens."""
    ids = torch.randint(3, 200, (b, p + r), generator=g)
    mask = torch.zeros(b, p + r, dtype=torch.bool)
    for i in range(b):
        n_prompt = int(torch.randint(1, p + 1, (1,), generator=g))
        n_resp = int(torch.randint(1, r + 1, (1,), generator=g))
        mask[i, p - n_prompt : p + n_resp] = True
    return ids, mask


def test_pack_puts_each_sequence_in_one_row_with_its_own_positions():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids, mask = _ppo_layout(g)
        rows = pack(ids, mask, pad_id=0)
        n_rows, width = rows.input_ids.shape
        assert width <= mask.shape[1]  # no row is wider than the padded batch
        flat_ids, flat_pos = rows.input_ids.reshape(-1), rows.position_ids.reshape(-1)
        owner = torch.full((n_rows * width,), -1)
        start = 0
        for i in range(mask.shape[0]):  # naive: sequence i's real tokens, in order
            real = ids[i][mask[i]]
            where = rows.index[start : start + len(real)]
            start += len(real)
            assert torch.equal(flat_ids[where], real)
            assert torch.equal(flat_pos[where], torch.arange(len(real)))
            assert len(set((where // width).tolist())) == 1  # one row
            assert torch.equal(where, where[0] + torch.arange(len(real)))  # contiguous
            assert bool((owner[where] == -1).all())
            owner[where] = i
        # the rest of each row is padding whose positions restart at 0 (its own segment)
        for row in range(n_rows):
            pad = owner.view(n_rows, width)[row] == -1
            if pad.any():
                assert torch.equal(rows.position_ids[row][pad], torch.arange(int(pad.sum())))
                assert bool((rows.input_ids[row][pad] == 0).all())


def test_unpack_restores_the_padded_layout_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    ids, mask = _ppo_layout(g)
    rows = pack(ids, mask, pad_id=0)
    out = torch.randn(*rows.input_ids.shape, 3, generator=g, requires_grad=True)
    back = rows.unpack(out, fill=-5.0)  # (B, T, 3)
    flat = out.reshape(-1, 3)
    assert torch.equal(back[mask], flat[rows.index])
    assert bool((back[~mask] == -5.0).all())
    back[mask].sum().backward()
    expected = torch.zeros(flat.shape[0])
    expected[rows.index] = 1.0
    assert torch.equal(out.grad.reshape(-1, 3)[:, 0], expected)


EXACT = ["llama-tied", "llama-gqa", "qwen2", "gpt2", "gemma2", "mixtral"]
LEAKING = ["opt", "falcon"]


@pytest.mark.parametrize("arch", EXACT + LEAKING)
def test_probe_of_the_ppo_forwards_per_architecture(arch, tiny_tokenizer):
    """Exact architectures: packed == padded to float rounding, far under the tolerance;
    OPT / Falcon (no block-diagonal mask from position ids) far over it."""
    policy = build_model(CHAIN_ARCH[arch](), tiny_tokenizer, seed=0)
    value, _ = init_reward_model(policy, tiny_tokenizer, head_init="normal", seed=1)
    for model, kind in ((policy, "logits"), (value, "values")):
        diff, tol = packed_forward_error(model, kind)
        assert tol >= TOL_EPS * torch.finfo(torch.float32).eps
        if arch in EXACT:
            assert diff <= tol / 10, (kind, diff, tol)
        else:
            assert diff >= 10 * tol, (kind, diff, tol)


@pytest.mark.parametrize("arch", ["llama-tied", "qwen2", "gpt2"])
def test_packed_forwards_and_their_gradients_equal_the_padded_ones(arch, tiny_tokenizer):
    """On a PPO-shaped batch: the response logits and values, and the gradients of a loss
    on them, packed vs padded (fp32: the same sums in another order, ~1e-7 relative)."""
    g = torch.Generator().manual_seed(2)
    ids, mask = _ppo_layout(g, b=5, p=9, r=6)
    r = 6
    real = mask[:, -(r + 1) :]
    policy = build_model(CHAIN_ARCH[arch](), tiny_tokenizer, seed=0)
    value, _ = init_reward_model(policy, tiny_tokenizer, head_init="normal", seed=1)
    policy.eval(), value.eval()  # no dropout (GPT-2 has some), as every PPO role
    results = []
    for packed in (False, True):
        policy.zero_grad(set_to_none=True)
        value.zero_grad(set_to_none=True)
        logits = policy_logits(policy, ids, mask, r, packed)[:, -(r + 1) :]
        values = response_values(value, ids, mask, ids.shape[1] - r, packed)
        (logits[real].logsumexp(-1).sum() + values[real[:, :-1]].pow(2).sum()).backward()
        grads = [p.grad.clone() for p in (*policy.parameters(), *value.parameters())]
        results.append((logits[real].detach(), values[real[:, :-1]].detach(), grads))
    (la, va, ga), (lb, vb, gb) = results
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-5)
    scale = max(float(a.abs().max()) for a in ga)
    for a, b in zip(ga, gb, strict=True):  # rounding relative to the largest gradient
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_packed_roles_refuses_forced_packing_on_a_leaking_model(tiny_tokenizer, capsys):
    from rlhfkit.loops.ppo.roles import packed_roles

    opt = build_model(CHAIN_ARCH["opt"](), tiny_tokenizer, seed=0)
    llama = build_model(CHAIN_ARCH["llama-tied"](), tiny_tokenizer, seed=0)
    roles = {"policy": (llama, "logits"), "reference": (opt, "logits")}
    assert packed_roles(None, roles) == {"policy"}
    assert "the reference model (OPTForCausalLM) mixes packed sequences" in capsys.readouterr().out
    assert packed_roles(False, roles) == frozenset()
    with pytest.raises(UserError, match="--packing: the reference model"):
        packed_roles(True, roles)
