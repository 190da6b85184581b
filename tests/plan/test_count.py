"""plan/count.py: a model counted on the meta device holds exactly the parameters of the same
model built for real (tied weights once; LoRA's adapters as PEFT adds them), and the bytes
per process of weights, gradients and AdamW states follow from those counts."""

from __future__ import annotations

import copy
import math

import pytest
from peft import LoraConfig, get_peft_model

from rlhfkit.config import SFTConfig
from rlhfkit.errors import UserError
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.plan.count import FP32, Role, count_model, read_config, role_bytes


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return build_model("test", tiny_tokenizer, seed=0)


def test_counts_equal_the_real_models(lm, tiny_tokenizer):
    shape = count_model(lm.config, seq_cls=False)
    assert shape.n_params == sum(p.numel() for p in lm.parameters()) == shape.n_trained
    layer = lm.model.layers[0]
    assert shape.layer_params == sum(p.numel() for p in layer.parameters())
    assert (shape.layers, shape.hidden, shape.vocab) == (
        lm.config.num_hidden_layers, lm.config.hidden_size, lm.config.vocab_size)  # fmt: skip
    tok = copy.deepcopy(tiny_tokenizer)
    rm, _ = init_reward_model(lm, tok)
    assert count_model(lm.config, seq_cls=True).n_params == sum(p.numel() for p in rm.parameters())


def test_lora_adapters_are_counted_as_peft_adds_them(lm):
    opts = SFTConfig(lora_r=4, lora_targets=("q_proj", "v_proj"))
    shape = count_model(lm.config, seq_cls=False, lora=opts)
    peft = get_peft_model(copy.deepcopy(lm), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapters = sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    assert shape.n_trained == adapters
    assert shape.n_params == sum(p.numel() for p in lm.parameters()) + adapters
    with pytest.raises(UserError, match="no linear layer of the model matches"):
        count_model(lm.config, seq_cls=False, lora=SFTConfig(lora_r=4, lora_targets=("nope",)))


def test_bytes_of_a_trained_and_a_frozen_role(lm):
    shape = count_model(lm.config, seq_cls=False)
    n, tensors = shape.n_params, len(shape.params)
    trained = role_bytes(Role("policy", "x", shape, trained=True), 1)
    # fp32 weights and gradients; AdamW: two moments per element and a step per tensor
    assert trained == {
        "weights": FP32 * n,
        "grads": FP32 * n,
        "optimizer": 2 * FP32 * n + FP32 * tensors,
    }
    assert role_bytes(Role("reference", "x", shape, trained=False), 1) == {
        "weights": FP32 * n, "grads": 0, "optimizer": 0}  # fmt: skip
    # FSDP2 over 2 processes: each dim-0 padded to a multiple of 2, then halved
    half = sum(math.ceil(s[0] / 2) * math.prod(s[1:]) for s in shape.params)
    assert role_bytes(Role("policy", "x", shape, trained=True), 2)["weights"] == FP32 * half
    assert role_bytes(Role("reference", "x", None, trained=False), 1)["weights"] == 0


def test_read_config_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="--policy .*: no such folder or config.json"):
        read_config(str(tmp_path / "nope"), "--policy")
