"""LoRA (`--lora-r`, models/lora.py) on sft, rm and ppo, for Llama-, Qwen2- and GPT-2-shaped models:
- only the adapters train (base weights bit-unchanged) and the SFT loss falls;
- the output is a merged plain Hugging Face folder giving the adapter model's logits;
- an RM keeps its score head trained in full and exports as a sequence classifier;
- a LoRA checkpoint resumes into the same run;
- the PPO reference is the policy with its adapter off: the base model's log-probs exactly,
  before and after an update, with one copy of the base weights.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import TINY_ARCH, make_base_model, sft_rows, write_jsonl
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from rlhfkit import cli
from rlhfkit.config import PPOConfig, SFTConfig
from rlhfkit.loops.sft import train_sft
from rlhfkit.models.checkpoint import LORA_STATE, export_hf, save_hf
from rlhfkit.models.lora import (
    AdapterOff,
    add_lora,
    count_parameters,
    has_lora,
    load_adapter_state,
)
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model, reward_head


@dataclass
class Lora:
    lora_r: int = 4
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("all-linear",)


def _gpt2(tok, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


KINDS = ["llama", "qwen2", "gpt2"]  # tied Llama; untied Qwen2 with GQA and biases; Conv1D


def _model(kind: str, tok):
    if kind == "gpt2":
        return _gpt2(tok)
    return build_model("test" if kind == "llama" else TINY_ARCH[kind](), tok, seed=0).eval()


def _base_folder(kind: str, tmp_path, tok):
    """A base model whose frozen output layer can express a peaked distribution: at the
    usual 0.02 init, logits stay near 0 whatever the (normalised) hidden state, and a LoRA
    of the decoder cannot lower the loss much below log(vocab)."""
    model = _model(kind, tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25)  # tied to the output layer, or:
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            model.get_output_embeddings().weight.mul_(25)
    return save_hf(model, tok, tmp_path / "base")


def _randomise_adapters(model, seed: int = 1) -> None:
    """lora_B starts at zero (adapter = identity): give it weights, so merging matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _ids(tok, n: int = 3):
    batch = tok(
        [f"the cat {i} sat on the mat" for i in range(n)], return_tensors="pt", padding=True
    )
    return batch["input_ids"], batch["attention_mask"]


# ---------------------------------------------------------------------------------------
# Library level
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_merged_export_loads_plain_and_gives_the_adapter_logits(kind, tmp_path, tiny_tokenizer):
    model = add_lora(_model(kind, tiny_tokenizer), Lora())
    assert has_lora(model)
    trained, total = count_parameters(model)
    print(f"{kind}: lora trains {trained} of {total} parameters")
    assert 0 < trained < total / 4
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    _randomise_adapters(model)
    ids, mask = _ids(tiny_tokenizer)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    export_hf(model, tiny_tokenizer, tmp_path / "out", adapter=True)
    keys = set(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        got = merged(input_ids=ids, attention_mask=mask).logits
    diff = (got - want).abs().max().item()
    print(f"{kind}: merged vs adapter logits, max |diff| {diff:.2e}")
    assert diff < 1e-5
    # The adapter folder beside it reproduces the same model on the base weights.
    from peft import PeftModel

    base = _model(kind, tiny_tokenizer)
    with torch.no_grad():
        again = PeftModel.from_pretrained(base, str(tmp_path / "out" / "adapter"))(
            input_ids=ids, attention_mask=mask
        ).logits
    assert (again - want).abs().max().item() < 1e-5
    # The training model is untouched by the export: still adapted, same logits.
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, want)


def test_lora_reward_model_trains_its_head_and_exports_a_classifier(tmp_path, tiny_tokenizer):
    rm, tok = init_reward_model(
        build_model("test", tiny_tokenizer, seed=0), copy.deepcopy(tiny_tokenizer),
        head_init="normal", seed=0,
    )  # fmt: skip
    rm = add_lora(rm.eval(), Lora())
    head = reward_head(rm)
    assert head.weight.requires_grad  # PEFT's trained copy of the head (SEQ_CLS)
    _randomise_adapters(rm)
    with torch.no_grad():
        head.weight.add_(0.5)
    ids, mask = _ids(tok)
    with torch.no_grad():
        want = rm(input_ids=ids, attention_mask=mask).logits
    export_hf(rm, tok, tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------
# sft / rm commands
# ---------------------------------------------------------------------------------------


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.parametrize("kind", KINDS)
def test_lora_sft_trains_only_the_adapters_and_the_loss_falls(kind, tmp_path, tiny_tokenizer):
    base = _base_folder(kind, tmp_path, tiny_tokenizer)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "sft"
    cfg = SFTConfig(
        model=str(base), data=str(data), out=str(out), epochs=30, batch_size=8, lr=3e-2,
        warmup_steps=0, schedule="constant", log_every=1, lora_r=8, lora_alpha=32,
        save_adapter=True,
    )  # fmt: skip
    train_sft(cfg)
    losses = _losses(out)
    print(f"{kind}: lora sft loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.6 * losses[0]
    # The epoch folder: the merged model, loadable as a plain one, plus the trained tensors
    # (adapters only). The frozen base + those tensors is the merged model: the base
    # weights did not move.
    epoch = out / "epoch-30"
    merged = AutoModelForCausalLM.from_pretrained(epoch).eval()
    state = load_file(str(epoch / LORA_STATE))
    assert state and all("lora_" in k for k in state)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)
    rebuilt = add_lora(AutoModelForCausalLM.from_pretrained(base).eval(), cfg)
    load_adapter_state(rebuilt, state)
    ids, mask = _ids(tiny_tokenizer)
    with torch.no_grad():
        want = rebuilt(input_ids=ids, attention_mask=mask).logits
        diff = (merged(input_ids=ids, attention_mask=mask).logits - want).abs().max().item()
    scale = want.abs().max().item()  # logits up to ~100 here (the scaled embeddings)
    print(f"{kind}: merged epoch folder vs base + adapter logits, max |diff| {diff:.2e} "
          f"(max |logit| {scale:.1f})")  # fmt: skip
    assert diff < 1e-5 * max(1.0, scale)  # fp32 rounding of W + BA vs Wx + B(Ax)
    assert (epoch / "adapter" / "adapter_config.json").is_file()  # --save-adapter


def test_lora_sft_resumes_from_its_checkpoint(tmp_path, tiny_tokenizer):
    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    opts = ["sft", "--model", str(base), "--data", str(data), "--batch-size", "4",
            "--lr", "1e-2", "--schedule", "constant", "--lora-r", "4", "--lora-dropout", "0.1",
            "--device", "cpu", "--save-every", "1"]  # fmt: skip
    assert cli.main([*opts, "--out", str(tmp_path / "full"), "--max-steps", "4"]) == 0
    cut = tmp_path / "cut"
    assert cli.main([*opts, "--out", str(cut), "--max-steps", "2"]) == 0
    assert cli.main([*opts, "--out", str(cut), "--max-steps", "4", "--resume"]) == 0
    for name in ("model.safetensors", LORA_STATE):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000004" / name))
        b = load_file(str(cut / "checkpoints" / "step-000004" / name))
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # Resuming without LoRA is refused, not silently wrong.
    i = opts.index("--lora-r")
    plain = [*opts[:i], *opts[i + 2 :], "--out", str(cut), "--max-steps", "5", "--resume"]
    assert cli.main(plain) == 2


def test_lora_rm_command_keeps_the_head_trainable_and_exports_a_classifier(
    tmp_path, tiny_tokenizer
):
    from tests.loops.reward.test_train import keyword_rankings

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(16, 3, seed=0))
    out = tmp_path / "rm"
    argv = ["rm", "--model", str(base), "--data", str(data), "--out", str(out), "--device",
            "cpu", "--batch-size", "8", "--lr", "1e-2", "--head-init", "normal",
            "--lora-r", "4", "--epochs", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    w0 = init_reward_model(base, head_init="normal", seed=0)[0].state_dict()
    rm = AutoModelForSequenceClassification.from_pretrained(out)
    assert not torch.equal(rm.score.weight, w0["score.weight"])  # the head trained in full
    state = load_file(str(out / "epoch-2" / LORA_STATE))  # what trained: adapters + head
    assert any("lora_A" in k for k in state)
    assert {k for k in state if "lora_" not in k} == {"score.modules_to_save.default.weight"}


# ---------------------------------------------------------------------------------------
# ppo
# ---------------------------------------------------------------------------------------


class _TokenReward:
    def score(self, prompts, responses, safety):  # pragma: no cover - ids path is used
        raise AssertionError

    def score_tokens(self, prompt_ids, prompt_mask, response_ids, response_mask, tok, safety):
        hit = (response_ids % 4 == 0) & response_mask
        return hit.sum(1).float() / response_mask.sum(1).clamp_min(1)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_ppo_reference_is_the_base_model_with_one_copy(kind, tiny_tokenizer):
    from tests.conftest import _synthetic_sentences

    from rlhfkit.data.records import PromptRecord
    from rlhfkit.loops.ppo.loop import build_run, ppo_step

    policy = _model(kind, tiny_tokenizer)
    base = copy.deepcopy(policy)
    value, _ = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), seed=0)
    reference = AdapterOff(policy)
    cfg = PPOConfig(batch_size=8, max_new_tokens=8, ppo_epochs=2, lr=1e-2, lora_r=4)
    prompts = [PromptRecord(t) for t in _synthetic_sentences(16, seed=1)]
    run = build_run(cfg, policy, reference, value.eval(), _TokenReward(), tiny_tokenizer, prompts)
    assert has_lora(policy) and run.reference is reference
    # One copy of the base weights: the reference's tensors are the policy's.
    ref_ptrs = {p.data_ptr() for p in reference.parameters()}
    assert ref_ptrs == {p.data_ptr() for p in policy.parameters()}
    ids, mask = _ids(tiny_tokenizer)

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask).logits

    assert torch.equal(logits(reference), logits(base))
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    ppo_step(run, 0, cfg.batch_size, cfg.seed)
    ppo_step(run, 1, cfg.batch_size, cfg.seed)
    assert torch.equal(logits(reference), logits(base))  # still the base model, exactly
    assert not torch.allclose(logits(policy), logits(base))  # the adapter trained
    for n, p in policy.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, frozen[n]), n


def test_lora_ppo_command_exports_a_merged_policy_and_its_adapter(tmp_path, tiny_tokenizer):
    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {i} words"} for i in range(8)])
    out = tmp_path / "ppo"
    argv = ["ppo", "--policy", str(base), "--rule-reward", "length", "--prompts", str(prompts),
            "--out", str(out), "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "6",
            "--steps", "2", "--sample-every", "0", "--lora-r", "4", "--save-adapter"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    keys = set(load_file(str(out / "model.safetensors")))
    assert not any("lora_" in k for k in keys)
    AutoModelForCausalLM.from_pretrained(out)
    ckpt = load_file(str(out / "checkpoints" / "step-000002" / "policy" / LORA_STATE))
    assert any("lora_A" in k for k in ckpt)  # the checkpoint keeps the adapter apart


def test_lora_rs_rounds_merge_each_adapter_and_export_plain_models(tmp_path, tiny_tokenizer):
    """`rs` through the shared trainer: each round trains a fresh adapter on the model of
    the round before (its adapter merged in), and every round folder is a plain model."""
    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"tell me {i}"} for i in range(8)])
    out = tmp_path / "rs"
    argv = ["rs", "--policy", str(base), "--prompts", str(prompts), "--out", str(out),
            "--device", "cpu", "--max-new-tokens", "6", "--k", "2", "--keep-truncated",
            "--rule-reward", "count:e", "--rounds", "2", "--batch-size", "4",
            "--lr", "1e-2", "--lora-r", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    w0 = load_file(str(base / "model.safetensors"))
    for folder in (out / "round-1", out / "round-2", out):
        w = load_file(str(folder / "model.safetensors"))
        assert set(w) == set(w0), folder  # merged: the base model's keys, no adapter
        AutoModelForCausalLM.from_pretrained(folder)
    r1 = load_file(str(out / "round-1" / "model.safetensors"))
    r2 = load_file(str(out / "round-2" / "model.safetensors"))
    assert any(not torch.equal(r1[k], w0[k]) for k in w0)
    assert any(not torch.equal(r2[k], r1[k]) for k in w0)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_ppo_value_model_is_the_reward_model_with_an_adapter(kind, tmp_path, tiny_tokenizer):
    """With --lora-r and --value-init rm, the value model is the RM itself with a LoRA
    adapter: one copy of the RM's weights serves both roles, the reward read with the
    adapter off stays the saved RM's score exactly after PPO steps, and only the adapter
    and the value head copy train."""
    from tests.conftest import _synthetic_sentences

    from rlhfkit.data.records import PromptRecord
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import build_value_model
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.scoring.build import build_scorer

    policy = _model(kind, tiny_tokenizer)
    rm, rm_tok = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), head_init="normal")
    save_hf(rm, rm_tok, tmp_path / "rm")
    cfg = PPOConfig(batch_size=8, max_new_tokens=8, ppo_epochs=2, lr=1e-2, lora_r=4,
                    rm=(f"helpfulness={tmp_path / 'rm'}",))  # fmt: skip
    cpu = torch.device("cpu")
    scorer = build_scorer(cfg, cpu, None)
    value = build_value_model(cfg, policy, tiny_tokenizer, scorer, cpu)
    shared = scorer.models["helpfulness"].model
    assert isinstance(shared, AdapterOff) and shared.policy is value  # one copy, not two
    prompts = [PromptRecord(t) for t in _synthetic_sentences(16, seed=1)]
    run = build_run(cfg, policy, AdapterOff(policy), value, scorer, tiny_tokenizer, prompts)
    assert has_lora(value)
    trained = {n for n, p in value.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "modules_to_save" in n for n in trained)
    saved, _ = load_reward_model(tmp_path / "rm", cpu)
    ids, mask = _ids(tiny_tokenizer)

    def score(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask).logits

    assert torch.equal(score(shared), score(saved))
    ppo_step(run, 0, cfg.batch_size, cfg.seed)
    ppo_step(run, 1, cfg.batch_size, cfg.seed)
    assert torch.equal(score(shared), score(saved))  # the reward is still the saved RM's
    assert not torch.allclose(score(value), score(saved))  # the value model trained


def test_lora_ppo_with_an_rm_value_resumes_like_an_uninterrupted_run(tmp_path, tiny_tokenizer):
    """The LoRA value model (the RM with an adapter) checkpoints its adapter and head copy,
    and a run stopped after 2 steps and resumed to 3 ends with the uninterrupted run's
    policy and value weights; the exported value-free outputs are plain models."""
    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    rm, rm_tok = init_reward_model(
        AutoModelForCausalLM.from_pretrained(base), copy.deepcopy(tiny_tokenizer),
        head_init="normal", seed=1,
    )  # fmt: skip
    save_hf(rm, rm_tok, tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {i} words"} for i in range(8)])

    def run(out, steps, *extra):
        argv = ["ppo", "--policy", str(base), "--rm", f"helpfulness={tmp_path / 'rm'}",
                "--prompts", str(prompts), "--out", str(out), "--device", "cpu",
                "--batch-size", "4", "--max-new-tokens", "6", "--steps", str(steps),
                "--save-every", "1", "--sample-every", "0", "--lr", "1e-2", "--lora-r", "4",
                *extra]  # fmt: skip
        assert cli.main(argv) == 0

    run(tmp_path / "full", 3)
    run(tmp_path / "cut", 2)
    run(tmp_path / "cut", 3, "--resume")
    for role in ("policy", "value"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000003" / role / LORA_STATE))
        b = load_file(str(tmp_path / "cut" / "checkpoints" / "step-000003" / role / LORA_STATE))
        assert any("lora_A" in k for k in a), role
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), role
    AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
