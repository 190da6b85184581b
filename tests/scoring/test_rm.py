"""RewardScorer: texts and policy token ids, several named RMs through a combiner."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.data.reward_data import encode_responses, truncate_left
from rlhfkit.errors import UserError
from rlhfkit.models.generate import left_pad
from rlhfkit.models.presets import build_model, train_tokenizer
from rlhfkit.models.reward import init_reward_model
from rlhfkit.scoring.build import parse_weights
from rlhfkit.scoring.combine import combine_llama2
from rlhfkit.scoring.rm import RewardScorer, parse_rm_spec, score_texts

PROMPTS = ["What is the cat", "Sort 3 2 1 please", "hi", "Add one and two", "big red house"]
RESPONSES = ["The cat sat on the mat.", "1 2 3", "dog", "Three. Three!", "a tree"]
SAFETY = [False, True, False, False, True]


def _save_rm(folder, tokenizer, seed):
    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return rm, tok


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("rms")
    _save_rm(root / "help", tiny_tokenizer, seed=1)
    _save_rm(root / "safe", tiny_tokenizer, seed=2)
    return {"helpfulness": root / "help", "safety": root / "safe"}


def test_scorer_scores_each_rm_and_combines(rm_dirs):
    specs = [f"{name}={path}" for name, path in rm_dirs.items()]
    scorer = RewardScorer.from_specs(specs, combine="llama2")
    assert scorer.names == ["helpfulness", "safety"]
    result = scorer.score(PROMPTS, RESPONSES, SAFETY)
    for name, rm in scorer.models.items():
        expected = score_texts(rm.model, rm.tokenizer, PROMPTS, RESPONSES)
        torch.testing.assert_close(result.per_rm[name], expected)
    expected = combine_llama2(result.per_rm, torch.tensor(SAFETY))
    torch.testing.assert_close(result.scores, expected)
    assert abs(result.scores.mean().item()) < 1e-5
    assert not result.scores.requires_grad

    no_whiten = RewardScorer.from_specs(rm_dirs, "llama2", {"whiten": False, "threshold": 0.0})
    out = no_whiten.score(PROMPTS, RESPONSES, SAFETY)
    expected = torch.where(torch.tensor(SAFETY), out.per_rm["safety"], out.per_rm["helpfulness"])
    torch.testing.assert_close(out.scores, expected)


def test_scorer_errors(rm_dirs):
    with pytest.raises(UserError, match="distinct"):
        RewardScorer.from_specs([f"a={rm_dirs['safety']}", f"a={rm_dirs['safety']}"])
    with pytest.raises(UserError, match="unknown combiner"):
        RewardScorer.from_specs([str(rm_dirs["safety"])], combine="mean")
    scorer = RewardScorer.from_specs([str(rm_dirs["safety"])], combine="llama2")
    with pytest.raises(UserError, match="helpfulness"):
        scorer.score(PROMPTS, RESPONSES)
    single = RewardScorer.from_specs([str(rm_dirs["safety"])])
    assert single.names == ["reward"]
    with pytest.raises(ValueError, match="one flag per sample"):
        single.score(PROMPTS, RESPONSES, [True])


def _policy_tokens(tokenizer, prompts, responses):
    """What sampling gives: left-padded prompts, right-padded responses ending in EOS."""
    seqs, _ = encode_responses(tokenizer, prompts, responses, max_len=256)
    prompt_lens = [len(encode_responses(tokenizer, [p], ["x"], 256)[0][0]) - 2 for p in prompts]
    # encode_responses(p, "x") = [bos] + p + x + [eos] where "x" is one token here
    p_ids = [s[:n] for s, n in zip(seqs, prompt_lens, strict=True)]
    r_ids = [s[n:] for s, n in zip(seqs, prompt_lens, strict=True)]
    prompt_ids, prompt_mask = left_pad(p_ids, tokenizer.pad_token_id)
    width = max(len(r) for r in r_ids) + 2
    response_ids = torch.full((len(r_ids), width), tokenizer.eos_token_id)  # junk padding
    response_mask = torch.zeros((len(r_ids), width), dtype=torch.bool)
    for i, r in enumerate(r_ids):
        response_ids[i, : len(r)] = torch.tensor(r)
        response_mask[i, : len(r)] = True
    return prompt_ids, prompt_mask, response_ids, response_mask


def test_score_tokens_shared_tokenizer_matches_text_path(rm_dirs, tiny_tokenizer):
    assert len(tiny_tokenizer(["x"], add_special_tokens=False)["input_ids"][0]) == 1
    scorer = RewardScorer.from_specs(rm_dirs, combine="llama2")
    assert scorer.shares_tokenizer("safety", tiny_tokenizer)
    tokens = _policy_tokens(tiny_tokenizer, PROMPTS, RESPONSES)
    by_ids = scorer.score_tokens(*tokens, tiny_tokenizer, SAFETY)
    by_text = scorer.score(PROMPTS, RESPONSES, SAFETY)
    for name in scorer.names:
        torch.testing.assert_close(by_ids.per_rm[name], by_text.per_rm[name], atol=1e-5, rtol=0)
    torch.testing.assert_close(by_ids.scores, by_text.scores, atol=1e-4, rtol=0)


def test_score_tokens_other_tokenizer_decodes(rm_dirs, tiny_tokenizer, tiny_texts):
    other = train_tokenizer(tiny_texts[:100], vocab_size=300)
    scorer = RewardScorer.from_specs({"r": rm_dirs["safety"]})
    assert not scorer.shares_tokenizer("r", other)
    p_ids = [other(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    r_ids = [
        other(" " + r, add_special_tokens=False)["input_ids"] + [other.eos_token_id]
        for r in RESPONSES
    ]
    prompt_ids, prompt_mask = left_pad(p_ids, other.pad_token_id)
    response_ids, response_mask = left_pad(r_ids, other.pad_token_id)  # any layout works
    got = scorer.score_tokens(prompt_ids, prompt_mask, response_ids, response_mask, other)
    texts = scorer.score(PROMPTS, [" " + r for r in RESPONSES])
    torch.testing.assert_close(got.scores, texts.scores, atol=1e-5, rtol=0)


def _cut_batch(tokenizer):
    """Sampled-looking ids for PROMPTS: even rows whole responses ending in EOS, odd rows cut
    to their first 2 tokens (max_new_tokens hit: no EOS). Returns the four tensors, the
    response texts and the ended flags; the texts re-encode to the same ids."""
    p_ids, r_ids, texts, ended = [], [], [], []
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        seq = encode_responses(tokenizer, [p], [r], 256)[0][0]  # [bos] + p + r + [eos]
        n_prompt = len(encode_responses(tokenizer, [p], [""], 256)[0][0]) - 1
        resp = seq[n_prompt:-1][: 2 if i % 2 else None]
        texts.append(tokenizer.decode(resp))
        assert tokenizer(texts[-1], add_special_tokens=False)["input_ids"] == resp
        p_ids.append(seq[:n_prompt])
        r_ids.append(resp + ([tokenizer.eos_token_id] if i % 2 == 0 else []))
        ended.append(i % 2 == 0)
    prompt_ids, prompt_mask = left_pad(p_ids, tokenizer.pad_token_id)
    width = max(len(r) for r in r_ids) + 1
    response_ids = torch.full((len(r_ids), width), tokenizer.pad_token_id)
    response_mask = torch.zeros((len(r_ids), width), dtype=torch.bool)
    for i, r in enumerate(r_ids):
        response_ids[i, : len(r)] = torch.tensor(r)
        response_mask[i, : len(r)] = True
    return (prompt_ids, prompt_mask, response_ids, response_mask), texts, ended


def test_a_truncated_response_scores_alike_on_both_paths(rm_dirs, tiny_tokenizer, monkeypatch):
    """One rule on every path: a response cut before EOS is scored without one. The ids
    path scores the sampled ids; the text path told `ended`; and score_tokens' decode
    path (an RM with another tokenizer), which reads `ended` off the ids."""
    scorer = RewardScorer.from_specs(rm_dirs, combine="llama2")
    tokens, texts, ended = _cut_batch(tiny_tokenizer)
    by_ids = scorer.score_tokens(*tokens, tiny_tokenizer, SAFETY)
    by_text = scorer.score(PROMPTS, texts, SAFETY, ended=ended)
    monkeypatch.setattr(scorer, "shares_tokenizer", lambda name, tok: False)
    by_decode = scorer.score_tokens(*tokens, tiny_tokenizer, SAFETY)
    for other in (by_text, by_decode):
        for name in scorer.names:
            torch.testing.assert_close(other.per_rm[name], by_ids.per_rm[name], atol=1e-5, rtol=0)
        torch.testing.assert_close(other.scores, by_ids.scores, atol=1e-4, rtol=0)
    # the rule matters: EOS appended to the cut rows (the old text path) scores them apart
    all_eos = scorer.score(PROMPTS, texts, SAFETY)
    gap = (all_eos.per_rm["safety"] - by_ids.per_rm["safety"]).abs()
    assert gap[0::2].max() < 1e-5 and gap[1::2].min() > 1e-3, gap
    seqs, _ = encode_responses(tiny_tokenizer, PROMPTS, texts, 256, ended=ended)
    eos = tiny_tokenizer.eos_token_id
    assert [s[-1] == eos for s in seqs] == ended


def test_score_result_keeps_the_combined_score_before_whitening(rm_dirs):
    whitened = RewardScorer.from_specs(rm_dirs, combine="llama2").score(PROMPTS, RESPONSES, SAFETY)
    plain = RewardScorer.from_specs(rm_dirs, "llama2", {"whiten": False}).score(
        PROMPTS, RESPONSES, SAFETY
    )
    torch.testing.assert_close(whitened.unwhitened, plain.scores)
    torch.testing.assert_close(plain.unwhitened, plain.scores)
    expected = combine_llama2(whitened.per_rm, torch.tensor(SAFETY))  # whitened by the combiner
    torch.testing.assert_close(whitened.scores, expected)


def test_truncation_keeps_the_end(tiny_tokenizer):
    assert truncate_left([1, 5, 6, 7, 8, 2], 4, bos=1) == [1, 7, 8, 2]
    assert truncate_left([5, 6, 7], 2, bos=1) == [6, 7]
    seqs, n_cut = encode_responses(tiny_tokenizer, ["a " * 50], ["the cat"], max_len=10)
    assert n_cut == 1 and len(seqs[0]) == 10
    assert seqs[0][0] == tiny_tokenizer.bos_token_id and seqs[0][-1] == tiny_tokenizer.eos_token_id


def test_spec_and_weight_parsing():
    assert parse_rm_spec("helpfulness=runs/rm") == ("helpfulness", "runs/rm")
    assert parse_rm_spec("runs/rm") == ("reward", "runs/rm")
    with pytest.raises(UserError):
        parse_rm_spec("=runs/rm")
    assert parse_weights("a=0.5, b=2") == {"a": 0.5, "b": 2.0}
    with pytest.raises(UserError, match="NAME=NUMBER"):
        parse_weights("a=lots")
