"""PPO's value model on a family transformers has no sequence-classification class for
(a Granite-shaped model): started from its reward model (--value-init rm) or from the
policy (--value-init policy), it is the backbone + score head, trains and is checkpointed."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import NO_SEQ_CLS_ARCH, make_base_model

from rlhfkit import cli
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.reward import init_reward_model


@pytest.fixture(scope="module")
def granite(tmp_path_factory, tiny_tokenizer, ppo_files):
    """A Granite-shaped policy and a reward model started from it (normal head)."""
    root = tmp_path_factory.mktemp("granite-ppo")
    base = make_base_model(root / "base", tiny_tokenizer, preset=NO_SEQ_CLS_ARCH["granite"]())
    rm, tok = init_reward_model(base, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=1)
    save_hf(rm, tok, root / "rm")
    return {"base": base, "rm": root / "rm", "prompts": ppo_files["prompts"]}


@pytest.mark.parametrize(("value_init", "lora"), [("rm", False), ("policy", False), ("rm", True)])
def test_ppo_trains_a_score_head_value_model(value_init, lora, granite, tmp_path, capsys):
    """With --lora-r the value model IS the RM with an adapter (roles.share_reward_base),
    its reward read with the adapter off: the saved value model is the merged one."""
    out = tmp_path / "ppo"
    args = ["ppo", "--policy", str(granite["base"]), "--rm", f"helpfulness={granite['rm']}",
            "--prompts", str(granite["prompts"]), "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--max-new-tokens", "6", "--lr", "1e-3", "--sample-every", "0",
            "--steps", "2", "--save-every", "2", "--value-init", value_init,
            *(["--lora-r", "4", "--lora-alpha", "8"] if lora else [])]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    # the note comes where a new score head model is built: the value model from the policy
    assert ("note: transformers has no sequence-classification class for granite" in printed) == (
        value_init == "policy"
    )
    value = out / "checkpoints" / "step-000002" / "value"
    config = json.loads((value / "config.json").read_text())
    assert config["architectures"] == ["GraniteWithScoreHead"] and "rlhfkit_score_head" in config
    trained = load_file(str(value / "model.safetensors"))
    start = load_file(str(granite["rm"] / "model.safetensors"))
    if value_init == "rm":  # the same tensors as the RM, moved by two PPO steps
        assert set(trained) == set(start)
        assert not torch.equal(trained["score.weight"], start["score.weight"])
        if lora:  # the head in full, the backbone through its merged adapter
            assert (value / "lora_state.safetensors").is_file()
    else:  # the policy's backbone with a zero head that trained
        assert torch.count_nonzero(trained["score.weight"]) > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/value_loss" in r] == [1, 2]
