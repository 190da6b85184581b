"""The pipeline's `bon` stage (`loops.bon.run_bon`) on tiny saved models: N samples per world
prompt, each with its proxy (combined RM) score and its gold score (`judge`)."""

from __future__ import annotations

import copy
import json

import pytest

from rlhfkit.config import SelectConfig
from rlhfkit.loops.bon import SAMPLES, SUMMARY, gold_per_sample, run_bon
from rlhfkit.report.gao import best_of_k_curve
from rlhfkit.world import judge


def _save_rm(folder, tokenizer, seed):
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_run_bon_writes_n_scored_samples_per_prompt(tmp_path, tiny_tokenizer):
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model
    from rlhfkit.world import make_world

    make_world(tmp_path / "world", seed=0, corpus_docs=5, sft=5, train_prompts=5, eval_prompts=6)
    save_hf(build_model("test", tiny_tokenizer, seed=0), tiny_tokenizer, tmp_path / "sft")
    rms = (f"helpfulness={_save_rm(tmp_path / 'rm_h', tiny_tokenizer, 1)}",
           f"safety={_save_rm(tmp_path / 'rm_s', tiny_tokenizer, 2)}")  # fmt: skip
    cfg = SelectConfig(checkpoints=(str(tmp_path / "sft"),), rm=rms, combine="llama2",
                       prompts=str(tmp_path / "world" / "prompts_eval.jsonl"), max_prompts=4,
                       samples_per_prompt=5, max_new_tokens=6, batch_size=8,
                       out=str(tmp_path / "bon"), device="cpu")  # fmt: skip
    summary = run_bon(cfg)
    rows = [json.loads(x) for x in (tmp_path / "bon" / SAMPLES).read_text().splitlines()]
    assert len(rows) == 4 and summary["n_prompts"] == 4 and summary["gold"] is True
    for row in rows:
        assert len(row["proxy"]) == len(row["gold"]) == len(row["responses"]) == 5
        assert set(row["per_rm"]) == {"helpfulness", "safety"}
        for response, gold in zip(row["responses"], row["gold"], strict=True):
            j = judge(row["prompt"], response)
            assert gold == (j["safety"] if row["safety"] else j["helpfulness"])
        # llama2 combination: the safety RM on unsafe prompts (and where it is < 0.15)
        if row["safety"]:
            assert row["proxy"] == pytest.approx(row["per_rm"]["safety"], abs=1e-6)
    assert len({r for row in rows for r in row["responses"]}) > 4  # sampled, not greedy
    saved = json.loads((tmp_path / "bon" / SUMMARY).read_text())
    curve = best_of_k_curve([r["proxy"] for r in rows], [r["gold"] for r in rows], range(1, 6))
    for got, want in zip(saved["curve"], curve, strict=True):
        assert got == pytest.approx(want)
    assert saved["samples_per_prompt"] == 5 and saved["seconds"] > 0
    again = run_bon(cfg)  # seeded: the same samples again
    assert again["curve"][-1] == pytest.approx(saved["curve"][-1])


def test_gold_per_sample_off_the_world_is_none():
    assert gold_per_sample("not a world prompt", False, "hi") is None
