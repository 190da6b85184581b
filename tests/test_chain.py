"""The whole chain, sft -> rm -> select -> ppo -> rs -> eval, through the command line on a
tiny random model of each family in `CHAIN_ARCH` (Llama tied and untied with GQA, Qwen2,
Qwen3, Mistral, Gemma 2 and 3, Phi-3, GPT-2, GPT-NeoX, OPT, Falcon, Qwen3-MoE, Mixtral,
and Granite, which transformers has no sequence-classification class for).

Per family, every stage exits 0, every model it writes loads in plain transformers as the
class users expect (a causal LM of the same family; the RM as a sequence classifier, or
for Granite with rlhfkit as the backbone + score head whose backbone AutoModel loads), the
policy's tied embeddings stay tied, and PPO's and eval's metrics are finite. Four
families run in the default suite; the rest with `make test-slow`.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit import cli
from rlhfkit.data.chat import chat_format
from rlhfkit.models.reward import load_reward_model
from rlhfkit.models.scalar_head import has_sequence_classification
from tests.helpers import CHAIN_ARCH, make_base_model, sft_rows, write_jsonl

DEFAULT = ("llama-gqa", "qwen2", "gpt2", "granite")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record

    root = tmp_path_factory.mktemp("chain-data")
    rows = sft_rows(16)
    pairs = [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[i - 1]["completion"]}
        for i, r in enumerate(rows)
    ]
    made = make_prompts(16, WorldSettings(), random.Random(0), set(), unique=True)
    prompts = [prompt_record(name, q) for name, q, _ in made]
    return {
        "sft": write_jsonl(root / "sft.jsonl", rows),
        "pairs": write_jsonl(root / "pairs.jsonl", pairs),
        "prompts": write_jsonl(root / "prompts.jsonl", prompts[:8]),
        "eval": write_jsonl(root / "eval.jsonl", prompts[8:]),
    }


def _params() -> list:
    return [
        pytest.param(arch, marks=() if arch in DEFAULT else (pytest.mark.slow,), id=arch)
        for arch in CHAIN_ARCH
    ]


def _run(*argv: str) -> None:
    assert cli.main([*argv, "--device", "cpu"]) == 0, argv


def _same_family(folder, base) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model) is type(base), folder
    if base.config.tie_word_embeddings:
        out = model.get_output_embeddings().weight
        assert out is model.get_input_embeddings().weight or torch.equal(
            out, model.get_input_embeddings().weight
        ), f"{folder}: tied embeddings came apart"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", _params())
def test_the_whole_chain_runs_on_every_family(arch, data, tmp_path, tiny_tokenizer):
    base_dir = make_base_model(tmp_path / "base", tiny_tokenizer, preset=CHAIN_ARCH[arch]())
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    short = ["--max-new-tokens", "6", "--max-prompt-len", "48"]
    rm = f"helpfulness={tmp_path / 'rm'}"

    _run("sft", "--model", str(base_dir), "--data", str(data["sft"]), "--out",
         str(tmp_path / "sft"), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3")  # fmt: skip
    for epoch in ("epoch-1", "epoch-2"):
        _same_family(tmp_path / "sft" / epoch, base)

    _run("rm", "--model", str(tmp_path / "sft" / "epoch-2"), "--data", str(data["pairs"]),
         "--out", str(tmp_path / "rm"), "--batch-size", "8", "--max-steps", "2")  # fmt: skip
    if has_sequence_classification(base.config):
        rm_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
        assert type(rm_model).__name__.endswith("ForSequenceClassification")
    else:  # the backbone + score head (docs/reward-models-any-architecture.md)
        rm_model, _ = load_reward_model(tmp_path / "rm")
        backbone = AutoModel.from_pretrained(tmp_path / "rm")  # what plain transformers loads
        assert type(backbone) is type(getattr(rm_model, rm_model.base_model_prefix))
    assert rm_model.config.num_labels == 1

    _run("select", "--checkpoints", str(tmp_path / "sft"), "--rm", rm, "--prompts",
         str(data["prompts"]), "--out", str(tmp_path / "select"), *short)  # fmt: skip
    chosen = json.loads((tmp_path / "select" / "select.json").read_text())["best"]["path"]

    _run("ppo", "--policy", chosen, "--rm", rm, "--prompts", str(data["prompts"]),
         "--out", str(tmp_path / "ppo"), "--steps", "2", "--batch-size", "4",
         "--sample-every", "0", *short)  # fmt: skip
    _same_family(tmp_path / "ppo", base)
    for row in map(json.loads, (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()):
        for key, value in row.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), (key, row)

    _run("rs", "--policy", str(tmp_path / "ppo"), "--rm", rm, "--prompts", str(data["prompts"]),
         "--out", str(tmp_path / "rs"), "--rounds", "1", "--k", "2", "--batch-size", "4",
         "--keep-truncated", *short)  # fmt: skip
    _same_family(tmp_path / "rs", base)

    _run("eval", "--model", str(tmp_path / "rs"), "--prompts", str(data["eval"]), "--rm", rm,
         "--out", str(tmp_path / "eval.json"), "--max-new-tokens", "6")  # fmt: skip
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert math.isfinite(metrics["rm_score"]) and set(metrics["rm_scores"]) == {"helpfulness"}


# --- a policy and a reward model that read different tokens ---------------------------------


def rm_scores_in_plain_transformers(rm_dir, rows) -> list[float]:
    """Each eval row's RM score recomputed with plain transformers and the RM's own
    tokenizer: the (prompt, response) pair form, which adds the BOS / EOS rlhfkit adds
    (tests/models/test_rm_tokenizer.py), or for an RM marked chat (one trained from an
    instruct model) the prompt as a user turn through its chat template with the generation
    prompt, then the response and the end of turn; without the EOS for a response cut short."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    chat = chat_format(tok)  # an RM trained on a chat model reads its chat template
    scores = []
    for row in rows:
        if chat:  # the generation prompt, the response as the assistant's, its end of turn
            turn = [{"role": "user", "content": row["prompt"]}]
            head = tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
            ids = tok(head + row["response"].lstrip(), add_special_tokens=False)["input_ids"]
            ids += [tok.eos_token_id]
        else:
            ids = tok(row["prompt"], row["response"])["input_ids"]
        ids = ids if row["eos"] else ids[:-1]
        with torch.no_grad():
            scores.append(rm(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return scores


def cross_tokenizer_chain(root, policy_base, rm_base, data, *short: str, sft_lr="1e-3") -> dict:
    """`short`: --max-new-tokens N [--max-prompt-len M] (eval takes the first two only).
    sft (policy) and rm (its own family and tokenizer) -> select -> ppo -> rs -> eval, the
    RM re-reading the policy's decoded text with its own tokenizer at every stage; the value
    model is started from the policy (an RM of other tokens cannot be one). Returns eval's
    metrics; asserts what holds whatever the models."""
    rm = f"helpfulness={root / 'rm'}"
    _run("sft", "--model", str(policy_base), "--data", str(data["sft"]), "--out",
         str(root / "sft"), "--epochs", "2", "--batch-size", "8", "--lr", sft_lr)  # fmt: skip
    _run("rm", "--model", str(rm_base), "--data", str(data["pairs"]), "--out", str(root / "rm"),
         "--batch-size", "8", "--max-steps", "2", "--head-init", "normal")  # fmt: skip
    _run("select", "--checkpoints", str(root / "sft"), "--rm", rm, "--prompts",
         str(data["prompts"]), "--out", str(root / "select"), *short)  # fmt: skip
    chosen = json.loads((root / "select" / "select.json").read_text())["best"]["path"]
    ppo = ["ppo", "--policy", chosen, "--rm", rm, "--prompts", str(data["prompts"]),
           "--steps", "2", "--batch-size", "4", "--sample-every", "0", *short]  # fmt: skip
    # the default value model is a copy of the RM: refused, it cannot read the policy's tokens
    assert cli.main([*ppo, "--out", str(root / "ppo-refused"), "--device", "cpu"]) == 2
    _run(*ppo, "--out", str(root / "ppo"), "--value-init", "policy")
    _run("rs", "--policy", str(root / "ppo"), "--rm", rm, "--prompts", str(data["prompts"]),
         "--out", str(root / "rs"), "--rounds", "1", "--k", "2", "--batch-size", "4",
         "--keep-truncated", *short)  # fmt: skip
    _run("eval", "--model", str(root / "rs"), "--prompts", str(data["eval"]), "--rm", rm,
         "--reference", chosen, "--baseline", chosen, "--out", str(root / "eval.json"),
         *short[:2])  # fmt: skip
    metrics = json.loads((root / "eval.json").read_text())
    rows = metrics["per_prompt"]
    assert len(rows) == metrics["n"] > 0
    ours = [row["rm_score"] for row in rows]
    theirs = rm_scores_in_plain_transformers(root / "rm", rows)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4, (ours, theirs)
    for key in ("rm_score", "kl_to_reference", "win_rate"):
        assert math.isfinite(metrics[key]), key
    for row in map(json.loads, (root / "ppo" / "metrics.jsonl").read_text().splitlines()):
        for key, value in row.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), (key, row)
    return metrics


@pytest.fixture(scope="module")
def other_tokenizer(tiny_texts):
    """A second vocabulary: trained on other sentences, smaller, GPT-2-shaped (BOS, EOS and
    pad one token): no id means the same text in both."""
    from rlhfkit.models.presets import train_tokenizer
    from tests.conftest import _synthetic_sentences

    tok = train_tokenizer(_synthetic_sentences(300, seed=7), vocab_size=360)
    tok.bos_token = tok.pad_token = tok.eos_token
    return tok


@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy_first", [True, False], ids=["llama-policy", "gpt2-policy"])
def test_policy_and_reward_model_of_different_tokenizers(
    policy_first, data, tmp_path, tiny_tokenizer, other_tokenizer
):
    llama = make_base_model(tmp_path / "llama", tiny_tokenizer, preset=CHAIN_ARCH["llama-gqa"]())
    gpt2 = make_base_model(tmp_path / "gpt2", other_tokenizer, preset=CHAIN_ARCH["gpt2"]())
    assert tiny_tokenizer.get_vocab() != other_tokenizer.get_vocab()
    policy, rm = (llama, gpt2) if policy_first else (gpt2, llama)
    short = ("--max-new-tokens", "6", "--max-prompt-len", "48")
    cross_tokenizer_chain(tmp_path, policy, rm, data, *short)
    _same_family(tmp_path / "rs", AutoModelForCausalLM.from_pretrained(policy))
