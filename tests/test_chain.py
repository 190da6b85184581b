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
