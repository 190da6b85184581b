"""`rlhfkit plan`: the planned bytes of weights, gradients and optimizer states equal those
of the live models after one step; fsdp2 divides them; a Qwen2-0.5B-shaped config plans."""

import time

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
)

from rlhfkit import cli
from rlhfkit.loops.common import build_optimizer
from rlhfkit.models.lora import add_lora
from rlhfkit.plan import make_plan, parse_bytes

CONFIGS = {
    "llama": lambda: LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64, pad_token_id=0
    ),
}  # fmt: skip


def _folder(tmp_path, arch):
    folder = tmp_path / arch
    CONFIGS[arch]().save_pretrained(folder)  # config.json only: the plan reads nothing else
    return folder


def _live_bytes(arch, stage, lora_r):
    """Weights, grads and optimizer-state bytes of the live model after one AdamW step."""
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    if stage == "rm":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    if lora_r:
        opts = cli.parse(
            "sft", ["--model", "m", "--data", "d", "--out", "o", "--lora-r", str(lora_r)]
        )
        model = add_lora(model, opts)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    ids = torch.randint(1, 256, (2, 16))
    out = model(ids, labels=ids if stage == "sft" else torch.zeros(2))
    out.loss.backward()
    opt.step()
    params = list(model.parameters())
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    return {
        "weights": sum(size(p) for p in params),
        "grads": sum(size(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(
            size(v) for st in opt.state.values() for v in st.values() if torch.is_tensor(v)
        ),
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("stage", ["sft", "rm"])
@pytest.mark.parametrize("lora_r", [0, 4])
def test_planned_states_match_live_models(tmp_path, arch, stage, lora_r):
    folder = _folder(tmp_path, arch)
    cfg = cli.parse(f"plan {stage}", ["--model", str(folder), "--lora-r", str(lora_r)])
    (role,) = make_plan(cfg)["roles"]
    live = _live_bytes(arch, stage, lora_r)
    for key in ("weights", "grads", "optimizer"):
        assert role[key] == pytest.approx(live[key], rel=0.02), key
    if lora_r:  # the base is frozen: a small share trains
        assert role["grads"] < 0.2 * role["weights"]


def test_fsdp2_divides_states_per_process_ddp_copies_them(tmp_path):
    folder = _folder(tmp_path, "llama")
    base = ["--model", str(folder)]
    one = make_plan(cli.parse("plan sft", base))
    ddp = make_plan(cli.parse("plan sft", [*base, "--nproc", "4"]))
    fsdp = make_plan(cli.parse("plan sft", [*base, "--nproc", "4", "--strategy", "fsdp2"]))
    r1, rd, rf = one["roles"][0], ddp["roles"][0], fsdp["roles"][0]
    for key in ("weights", "grads"):
        assert rd[key] == r1[key]  # every process holds everything
        assert rf[key] == pytest.approx(r1[key] / 4, rel=0.02)  # a quarter, FSDP2's padding aside
    assert rf["optimizer"] == pytest.approx(r1["optimizer"] / 4, rel=0.02)
    assert ddp["ddp_buckets"] == rd["grads"]  # DDP's gradient buckets: a second copy
    assert "fsdp2_gathered" in fsdp and fsdp["total_per_device"] < one["total_per_device"]


def test_ppo_with_lora_reference_shares_the_policy(tmp_path):
    folder = _folder(tmp_path, "llama")
    args = ["--policy", str(folder), "--rm", f"helpfulness={folder}", "--lora-r", "4"]
    plan = make_plan(cli.parse("plan ppo", args))
    roles = {r["role"]: r for r in plan["roles"]}
    assert set(roles) == {"policy", "reference", "value", "rm:helpfulness"}
    assert roles["reference"]["total"] == 0
    # The value model is the RM with an adapter: the RM costs nothing more, and what
    # trains is what trains in the live LoRA value model (roles.share_reward_base).
    assert roles["rm:helpfulness"]["total"] == 0
    from transformers import AutoConfig, AutoModelForSequenceClassification

    rm_config = AutoConfig.from_pretrained(folder, num_labels=1)
    cfg = cli.parse("ppo", [*args, "--prompts", "p", "--out", "o"])
    value = add_lora(AutoModelForSequenceClassification.from_config(rm_config), cfg)
    trained = sum(p.numel() for p in value.parameters() if p.requires_grad)
    assert roles["value"]["trained_params"] == trained < roles["value"]["params"]
    assert roles["value"]["params"] == sum(p.numel() for p in value.parameters())
    full = {r["role"]: r for r in make_plan(cli.parse("plan ppo", args[:-2]))["roles"]}
    assert full["reference"]["weights"] > 0 and full["rm:helpfulness"]["weights"] > 0
    assert full["value"]["trained_params"] == full["value"]["params"]  # a full copy


def test_qwen2_half_billion_plans_fast(tmp_path):
    import json

    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
    }))  # fmt: skip
    cfg = cli.parse("plan sft", ["--model", str(folder)])
    t0 = time.perf_counter()
    plan = make_plan(cfg)
    assert time.perf_counter() - t0 < 2.0
    assert plan["roles"][0]["params"] == 494_032_768  # Qwen2-0.5B's count
    assert plan["roles"][0]["weights"] == 4 * 494_032_768


def test_device_memory_units():
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("1024") == 1024


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["plan", "sft", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and len(err.splitlines()) == 1
    assert cli.main(["plan", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown stage 'bogus'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["plan", "--help"], ["plan", "ppo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--nproc" in out and "--device-memory" in out
    if "ppo" in argv:
        assert "--lora-r" in out and "--policy" in out


def test_json_output(tmp_path, capsys):
    import json

    folder = _folder(tmp_path, "gpt2")
    assert cli.main(["plan", "sft", "--model", str(folder), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["roles"][0]["role"] == "model"


def test_dpo_plans_the_policy_as_sft_and_a_reference_only_when_separate(tmp_path):
    folder, other = _folder(tmp_path, "llama"), _folder(tmp_path, "gpt2")
    sft = make_plan(cli.parse("plan sft", ["--model", str(folder)]))["roles"][0]
    for lora in ([], ["--lora-r", "4"]):
        plan = make_plan(cli.parse("plan dpo", ["--model", str(folder), *lora]))
        roles = {r["role"]: r for r in plan["roles"]}
        assert set(roles) == {"policy", "reference"} and roles["reference"]["total"] == 0
    full = make_plan(cli.parse("plan dpo", ["--model", str(folder)]))["roles"][0]
    assert all(full[k] == sft[k] for k in ("weights", "grads", "optimizer", "params"))
    separate = make_plan(cli.parse("plan dpo", ["--model", str(folder), "--reference", str(other)]))
    ref = {r["role"]: r for r in separate["roles"]}["reference"]
    gpt2 = make_plan(cli.parse("plan sft", ["--model", str(other)]))["roles"][0]
    assert ref["weights"] == gpt2["weights"] and ref["grads"] == ref["optimizer"] == 0


def test_critic_free_ppo_plans_no_value_model(tmp_path):
    """--estimator grpo (or any critic-free one): no value role and no value step; the
    rollout phase holds --batch-size x --samples-per-prompt rows."""
    folder = _folder(tmp_path, "llama")
    base = ["--policy", str(folder), "--rm", f"helpfulness={folder}", "--batch-size", "8"]
    gae = make_plan(cli.parse("plan ppo", base))
    grpo = make_plan(cli.parse("plan ppo", [*base, "--estimator", "grpo"]))
    assert {r["role"] for r in gae["roles"]} == {"policy", "reference", "value", "rm:helpfulness"}
    assert {r["role"] for r in grpo["roles"]} == {"policy", "reference", "rm:helpfulness"}
    assert "value step" in gae["activations"] and "value step" not in grpo["activations"]
    value = next(r for r in gae["roles"] if r["role"] == "value")
    assert grpo["states"] == gae["states"] - value["total"]
    # 8 prompts x 4 samples (grpo's default) sample 4x the rows of gae's 8 x 1
    one = make_plan(
        cli.parse("plan ppo", [*base, "--estimator", "grpo", "--samples-per-prompt", "1"])
    )
    assert grpo["activations"]["rollout"] == 4 * one["activations"]["rollout"]
