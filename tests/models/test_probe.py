"""The packing probe: decided per loaded model by what its forward does, not by its name."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import TINY_ARCH

from rlhfkit.models.presets import build_model
from rlhfkit.models.probe import packing_error, packing_is_exact

# transformers 5 builds a block-diagonal mask from restarting position ids for Llama and
# Qwen2; OPT (learned absolute positions), Falcon and Bloom (ALiBi) let a packed row's
# later examples attend to its earlier ones.
EXACT = {"opt": False, "falcon": False, "bloom": False, "llama": True, "qwen2": True}


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_probe_tells_leaking_architectures_from_exact_ones(arch, tiny_tokenizer):
    model = build_model(TINY_ARCH[arch](), tiny_tokenizer, seed=0)
    assert packing_is_exact(model) is EXACT[arch]
    # Far from the line either way: float32 rounding (~1e-7) vs a leak (>= ~5e-3), around
    # a tolerance of ~1.2e-4, so no machine's rounding can flip the answer.
    diff, tol = packing_error(model)
    if EXACT[arch]:
        assert diff <= tol / 10
    else:
        assert diff >= 10 * tol


def test_probe_leaves_the_model_and_the_global_rng_as_it_found_them(tiny_tokenizer):
    model = build_model(TINY_ARCH["opt"](), tiny_tokenizer, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.train()
    packing_is_exact(model)
    assert model.training
    model.eval()
    packing_is_exact(model)
    assert not model.training
    # The run's seeded RNG (dropout, data order) must not depend on whether it probed.
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
