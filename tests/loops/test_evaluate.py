"""`rlhfkit eval` on any prompts: win rate and its standard error, KL to a reference,
response length and EOS rate, each against an independent computation; end to end through
the CLI with a tiny model, a tiny reward model and a baseline."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from rlhfkit import cli
from rlhfkit.loops.evaluate import length_summary, mean_and_se, win_outcomes, win_rate

PROMPTS = [
    "Tell me about the red house.",
    "What is a cat?",
    "Sort the list: 3 1 2",
    "Say something nice.",
    "Why is the sky blue?",
    "Reverse: one two three",
]


# --- the arithmetic, against hand computations -------------------------------------------


def test_win_rate_and_its_standard_error_by_hand():
    model = [1.0, 2.0, 3.0, 0.5]
    baseline = [0.0, 2.0, 4.0, 0.1]
    # outcomes: win, tie, loss, win -> 1, 1/2, 0, 1; mean 2.5 / 4
    assert win_outcomes(model, baseline) == [1.0, 0.5, 0.0, 1.0]
    r = win_rate(model, baseline)
    assert r["win_rate"] == pytest.approx(0.625)
    # deviations .375, -.125, -.625, .375: squares sum to .6875; sample var .6875 / 3
    assert r["win_rate_se"] == pytest.approx(math.sqrt(0.6875 / 3) / 2)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)


def test_win_rate_without_ties_is_the_binomial_se_with_n_minus_1():
    model, baseline = [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]  # 3 wins of 5
    r = win_rate(model, baseline)
    assert r["win_rate"] == pytest.approx(0.6)
    assert r["win_rate_se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 4))
    assert win_rate([1.0], [0.0])["win_rate_se"] is None  # one prompt: no spread to speak of
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [0.0])


def test_length_and_eos_rate_and_mean_se():
    s = length_summary([3, 5, 0, 4], [True, False, True, True])
    assert s["mean_response_tokens"] == pytest.approx(3.0)
    assert s["eos_rate"] == pytest.approx(0.75)
    assert length_summary([], []) == {"mean_response_tokens": None, "eos_rate": None}
    mean, se = mean_and_se([1.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(math.sqrt(2.0) / math.sqrt(2))


# --- end to end, tiny models ---------------------------------------------------------------


def _save_lm(folder, tokenizer, seed, eos_boost=0.0):
    """A tiny Llama; `eos_boost` scales EOS's output row so that some greedy responses end."""
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model

    model = build_model("test", tokenizer, seed=seed)
    if eos_boost:
        with torch.no_grad():
            model.lm_head.weight[tokenizer.eos_token_id] *= eos_boost
    save_hf(model, tokenizer, folder)
    return folder


def _save_rm(folder, tokenizer, seed):
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@torch.no_grad()
def _naive_greedy(model, reference, tokenizer, prompt, max_new_tokens):
    """Greedy decoding one token at a time, a full forward per token, no batching, no
    cache: (tokens without EOS, ended, sum over tokens of log p_model - log p_ref)."""
    from rlhfkit.data.tokenize import encode_prompt

    ids = encode_prompt(prompt, tokenizer, 128)
    kl, n = 0.0, 0
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(x).logits[0, -1].double(), -1)
        logq = torch.log_softmax(reference(x).logits[0, -1].double(), -1)
        t = int(logp.argmax())
        kl += float(logp[t] - logq[t])
        if t == tokenizer.eos_token_id:
            return n, True, kl
        ids.append(t)
        n += 1
    return n, False, kl


def test_eval_kl_length_and_eos_match_a_naive_token_loop(tmp_path, tiny_tokenizer, prompts_file):
    from rlhfkit.models.load import load_reference

    model_dir = _save_lm(tmp_path / "model", tiny_tokenizer, seed=0, eos_boost=4.0)
    ref_dir = _save_lm(tmp_path / "ref", tiny_tokenizer, seed=1)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(model_dir), "--prompts", str(prompts_file), "--reference",
            str(ref_dir), "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    result = json.loads(out.read_text())

    model, ref = load_reference(model_dir), load_reference(ref_dir)
    naive = [_naive_greedy(model, ref, tiny_tokenizer, p, 8) for p in PROMPTS]
    rows = result["per_prompt"]
    assert [r["tokens"] for r in rows] == [n for n, _, _ in naive]
    assert [r["eos"] for r in rows] == [e for _, e, _ in naive]
    for row, (_, _, kl) in zip(rows, naive, strict=True):
        assert row["kl"] == pytest.approx(kl, abs=1e-4)
    ended = [e for _, e, _ in naive]
    assert 0 < sum(ended) < len(ended), "the EOS boost should end some responses, not all"
    assert result["eos_rate"] == pytest.approx(sum(ended) / len(ended))
    assert result["mean_response_tokens"] == pytest.approx(sum(n for n, _, _ in naive) / 6)
    kls = [kl for _, _, kl in naive]
    assert result["kl_to_reference"] == pytest.approx(sum(kls) / len(kls), abs=1e-4)
    mean = sum(kls) / 6
    se = math.sqrt(sum((k - mean) ** 2 for k in kls) / 5 / 6)
    assert result["kl_to_reference_se"] == pytest.approx(se, abs=1e-4)
    assert "gold_score" not in result and result["n"] == 6

    # a model against itself: exactly no KL
    same = tmp_path / "same.json"
    assert cli.main([*args[:5], "--reference", str(model_dir), *args[7:-1], str(same)]) == 0
    assert json.loads(same.read_text())["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)


def test_eval_any_prompts_with_rm_and_baseline_end_to_end(
    tmp_path, tiny_tokenizer, prompts_file, capsys
):
    model_dir = _save_lm(tmp_path / "model", tiny_tokenizer, seed=0)
    base_dir = _save_lm(tmp_path / "base", tiny_tokenizer, seed=5)
    rm_dir = _save_rm(tmp_path / "rm", tiny_tokenizer, seed=1)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(model_dir), "--prompts", str(prompts_file), "--rm",
            f"helpfulness={rm_dir}", "--baseline", str(base_dir), "--max-new-tokens", "6",
            "--temperature", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    # sampled: greedy responses of two random tiny models are both copies of the prompt's end
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "win rate over the baseline" in printed and "RM score (single, mean)" in printed
    assert "gold" not in printed  # not the world's prompts
    result = json.loads(out.read_text())
    rows = result["per_prompt"]
    assert result["responses"] == [r["response"] for r in rows]

    # the win rate, by a loop of our own over the per-prompt scores
    wins = 0.0
    for r in rows:
        if r["rm_score"] > r["baseline_rm_score"]:
            wins += 1.0
        elif r["rm_score"] == r["baseline_rm_score"]:
            wins += 0.5
    assert result["win_rate"] == pytest.approx(wins / len(rows))
    assert result["wins"] + result["ties"] + result["losses"] == len(PROMPTS)
    assert 0 < result["win_rate"] < 1 and result["win_rate_se"] > 0

    # the means are over the per-prompt scores (the scorer itself is tested in test_scoring)
    mine, theirs = [r["rm_score"] for r in rows], [r["baseline_rm_score"] for r in rows]
    assert result["rm_score"] == pytest.approx(sum(mine) / 6)
    assert result["baseline"]["rm_score"] == pytest.approx(sum(theirs) / 6)
    assert result["rm_scores"]["helpfulness"] == pytest.approx(result["rm_score"])
    assert result["reward_models"] == [f"helpfulness={rm_dir}"] and result["combine"] == "single"

    assert cli.main(args) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


def test_eval_baseline_without_rm_is_a_one_line_error(
    tmp_path, tiny_tokenizer, prompts_file, capsys
):
    model_dir = _save_lm(tmp_path / "model", tiny_tokenizer, seed=0)
    args = ["eval", "--model", str(model_dir), "--prompts", str(prompts_file),
            "--baseline", str(model_dir)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--baseline needs --rm" in err and "Traceback" not in err


def test_eval_world_prompts_still_get_gold_metrics_beside_the_rm(tmp_path, tiny_tokenizer, capsys):
    from rlhfkit.world import make_world

    make_world(tmp_path / "w", 0, corpus_docs=50, sft=40, train_prompts=30, eval_prompts=12)
    prompts = tmp_path / "w" / "prompts_eval.jsonl"
    model_dir = _save_lm(tmp_path / "model", tiny_tokenizer, seed=0)
    rm_dir = _save_rm(tmp_path / "rm", tiny_tokenizer, seed=1)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(model_dir), "--prompts", str(prompts), "--rm",
            f"helpfulness={rm_dir}", "--max-new-tokens", "5", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "gold metrics on 12 prompts" in printed and "RM score" in printed
    result = json.loads(out.read_text())
    assert 0 <= result["gold_score"] <= 1 and "per_task" in result and "rm_score" in result
