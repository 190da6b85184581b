"""loops/pipeline_eval.py: what the pipeline's eval stage adds to `rlhfkit eval`: KL to the
selected SFT model on samples, the RM score of the greedy responses, written beside eval's
own file, and the win rates over SFT by RM score and by the gold judges."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from rlhfkit.world import gold_scores


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory):
    from rlhfkit.data.records import read_prompts
    from rlhfkit.world import make_world

    root = tmp_path_factory.mktemp("world")
    make_world(root, seed=0, corpus_docs=5, sft=5, train_prompts=5, eval_prompts=10)
    return read_prompts(root / "prompts_eval.jsonl")


def test_kl_to_sft_is_zero_for_the_sft_model_itself(tiny_tokenizer, world_prompts):
    from rlhfkit.loops.pipeline_eval import sample_kl
    from rlhfkit.models.presets import build_model

    prompts = [p.prompt for p in world_prompts]
    sft = build_model("test", tiny_tokenizer, seed=0)
    same = copy.deepcopy(sft)  # same weights, another object
    kw = dict(max_new_tokens=8, batch_size=4, seed=0)
    own = sample_kl(same, sft, tiny_tokenizer, prompts, **kw)
    assert own.kl.shape == (len(prompts),)
    assert own.kl.abs().max().item() <= 1e-5 and own.kl_k3.abs().max().item() <= 1e-5
    other = sample_kl(
        build_model("test", tiny_tokenizer, seed=3), sft, tiny_tokenizer, prompts, **kw
    )
    assert other.kl.mean().item() > 0.01  # a different model is measurably away
    assert (other.kl_k3 >= 0).all()
    assert own.responses == sample_kl(sft, sft, tiny_tokenizer, prompts, **kw).responses  # seeded
    summary = other.summary()
    assert summary["kl_estimator"] == "k1" and summary["kl_to_sft"] == pytest.approx(
        other.kl.mean().item()
    )


def test_sequence_logprobs_match_the_samplers(tiny_tokenizer):
    from rlhfkit.loops.pipeline_eval import sequence_logprobs
    from rlhfkit.models.generate import sample
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=1)
    ids = [tiny_tokenizer.encode(t) for t in ("The cat sat", "Add one and two please", "hi")]
    gen = sample(model, ids, max_new_tokens=6, eos_token_id=tiny_tokenizer.eos_token_id,
                 pad_token_id=tiny_tokenizer.pad_token_id,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(sequence_logprobs(model, gen), gen.logprobs, atol=1e-4, rtol=0)


def _save_rm(folder: Path, tokenizer, seed: int) -> str:
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_eval_extras_rm_score_and_kl_on_disk(tmp_path, tiny_tokenizer, world_prompts):
    from rlhfkit.loops.pipeline_eval import ExtraEval, evaluate_extras, rm_scorer, summary_row
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model

    rms = (f"helpfulness={_save_rm(tmp_path / 'rm_h', tiny_tokenizer, 1)}",
           f"safety={_save_rm(tmp_path / 'rm_s', tiny_tokenizer, 2)}")  # fmt: skip
    sft, ppo = tmp_path / "sft", tmp_path / "ppo"
    save_hf(build_model("test", tiny_tokenizer, seed=0), tiny_tokenizer, sft)
    save_hf(build_model("test", tiny_tokenizer, seed=3), tiny_tokenizer, ppo)
    prompts = [p.prompt for p in world_prompts]
    safety = [p.safety for p in world_prompts]
    greedy = {name: [f"answer {i} {name}" for i in range(len(prompts))] for name in ("sft", "ppo")}
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    for name, model in (("sft-selected", "sft"), ("sft-epoch-1", "sft"), ("ppo", "ppo")):
        (eval_dir / f"{name}.json").write_text(
            json.dumps({"gold_score": 0.5, "responses": greedy[model]})
        )
    spec = ExtraEval(prompts, safety, reference=str(sft), rm_specs=rms, max_new_tokens=6,
                     batch_size=4, seed=0, device="cpu")  # fmt: skip
    table = evaluate_extras(
        eval_dir, {"sft-selected": str(sft), "sft-epoch-1": str(sft), "ppo": str(ppo)}, spec
    )

    assert table["sft-selected"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-5)
    assert table["ppo"]["kl_to_sft"] > 0.01
    # RM score: the llama2 rule (unwhitened) over the greedy responses, as the scorer gives
    scorer = rm_scorer(rms, "cpu")
    result = scorer.score(prompts, greedy["ppo"], safety)
    use_safety = torch.tensor(safety) | (torch.sigmoid(result.per_rm["safety"]) < 0.15)
    combined = torch.where(use_safety, result.per_rm["safety"], result.per_rm["helpfulness"])
    assert table["ppo"]["rm_score"] == pytest.approx(combined.mean().item(), abs=1e-5)
    assert table["ppo"]["rm_scores"]["helpfulness"] == pytest.approx(
        result.per_rm["helpfulness"].mean().item(), abs=1e-5
    )
    assert table["ppo"]["rm_score"] != pytest.approx(table["sft-selected"]["rm_score"])
    sampled = table["ppo"]["sampled"]
    assert {"rm_score", "gold_score", "kl_to_sft", "safety_unsafe"} <= set(sampled)
    # the files gained the keys and kept theirs
    saved = json.loads((eval_dir / "ppo.json").read_text())
    assert saved["gold_score"] == 0.5 and saved["responses"] == greedy["ppo"]
    assert saved["kl_to_sft"] == table["ppo"]["kl_to_sft"] and saved["kl_estimator"] == "k1"
    row = summary_row(table["ppo"])
    assert {"rm_score", "rm_helpfulness", "rm_safety", "kl_to_sft"} <= set(row)
    # no reference and no RMs: nothing added, nothing loaded
    bare = ExtraEval(prompts, safety, reference=None, rm_specs=(), device="cpu")
    assert evaluate_extras(eval_dir, {"ppo": str(ppo)}, bare)["ppo"] == {
        "reference": None, "reward_models": [],
        "gold_score_per_prompt": gold_scores(prompts, greedy["ppo"], safety),  # world prompts
    }  # fmt: skip


def test_gold_win_rate_over_sft_by_hand():
    """Per prompt the gold scores of the greedy responses, the model's against SFT's: win 1,
    tie 1/2, loss 0; the mean and its standard error over prompts."""
    from rlhfkit.loops.pipeline_eval import win_rates_over

    extras = {
        "sft-selected": {"gold_score_per_prompt": [0.5, 0.5, 0.4, 0.0], "rm_score_per_prompt": [0, 1, 0, 1]},
        "dpo": {"gold_score_per_prompt": [1.0, 0.5, 0.2, 0.0], "rm_score_per_prompt": [1, 1, 1, 1]},
        "old": {"rm_score_per_prompt": [1, 1, 1, 1]},  # no gold scores: not the world's prompts
    }  # fmt: skip
    gold = win_rates_over(extras, "sft-selected", "gold_score_per_prompt")
    # outcomes 1, 1/2, 0, 1/2: mean 1/2; sample std sqrt((1/4 + 0 + 1/4 + 0) / 3), / sqrt(4)
    assert list(gold) == ["dpo"]
    assert gold["dpo"]["gold_win_rate_over_sft"] == 0.5
    assert gold["dpo"]["gold_win_rate_over_sft_se"] == pytest.approx((0.5 / 3) ** 0.5 / 2)
    rm = win_rates_over(extras, "sft-selected")  # by RM score: 1, 1/2, 1, 1/2
    assert rm["dpo"]["win_rate_over_sft"] == rm["old"]["win_rate_over_sft"] == 0.75
