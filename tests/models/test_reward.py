"""Reward / value models: init from an LM, last-token scores, HF round trip, padding."""

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.errors import UserError
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import (
    RM_PAD,
    init_reward_model,
    last_token_index,
    load_reward_model,
    reward_scores,
    values_for_tokens,
)
from rlhfkit.scoring.rm import encode_responses, pad_right, score_texts

PROMPTS = ["What is the cat", "Sort 3 2 1 please", "hi", "Add one and two"]
RESPONSES = ["The cat sat on the mat.", "1 2 3", "dog", "Three. Three. Three!"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("lm")
    build_model("test", tiny_tokenizer, seed=1).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_init_copies_backbone_and_zero_head_scores_zero(lm_dir, tiny_tokenizer):
    lm = build_model("test", tiny_tokenizer, seed=1)
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer))
    assert type(rm).__name__ == "LlamaForSequenceClassification"
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    assert tok.pad_token_id != tok.eos_token_id  # the preset tokenizer has its own pad
    for key, value in lm.model.state_dict().items():
        assert torch.equal(rm.model.state_dict()[key], value), key
    assert torch.count_nonzero(rm.score.weight) == 0
    assert torch.equal(score_texts(rm, tok, PROMPTS, RESPONSES), torch.zeros(4))


def test_normal_head_init_std(lm_dir):
    rm, _ = init_reward_model(lm_dir, head_init="normal", seed=3)
    w = rm.score.weight
    assert w.shape == (1, 32)
    assert 0.05 < w.std().item() < 0.4  # 1/sqrt(33) = 0.174, 32 draws


def test_hf_round_trip_gives_equal_scores(lm_dir, tmp_path):
    rm, tok = init_reward_model(lm_dir, head_init="normal", seed=0)
    ours = score_texts(rm, tok, PROMPTS, RESPONSES)
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    assert all(s[-1] == tok.eos_token_id for s in seqs)  # EOS included, scored there
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt")  # the saved tokenizer pads right
    with torch.no_grad():
        theirs = hf(**batch).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    loaded, loaded_tok = load_reward_model(tmp_path)
    torch.testing.assert_close(
        score_texts(loaded, loaded_tok, PROMPTS, RESPONSES), ours, atol=1e-6, rtol=0
    )


def test_pad_equal_to_eos_gets_a_distinct_pad_and_hf_agrees(lm_dir, tiny_tokenizer, tmp_path):
    # A GPT-2 style tokenizer pads with EOS; HF would then pool the token BEFORE the final
    # EOS. The RM gets its own pad token (and one embedding row) so both agree.
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    lm = build_model("test", tiny_tokenizer, seed=1)
    rm, tok = init_reward_model(lm, tok, head_init="normal")
    assert tok.pad_token == RM_PAD and tok.pad_token_id != tok.eos_token_id
    assert rm.get_input_embeddings().num_embeddings == len(tok)
    ours = score_texts(rm, tok, PROMPTS, RESPONSES)
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    with torch.no_grad():
        theirs = hf(**tok.pad({"input_ids": seqs}, return_tensors="pt")).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_scores_do_not_depend_on_padding_side(lm_dir):
    rm, tok = init_reward_model(lm_dir, head_init="normal")
    rm.eval()
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    alone = torch.stack(
        [
            reward_scores(rm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool))[0]
            for s in seqs
        ]
    )
    ids, mask = pad_right(seqs, tok.pad_token_id)
    right = reward_scores(rm, ids, mask)
    # left padding, and "prompt left-padded + response right-padded" (PPO rollouts), with
    # EOS as the junk padding id (a policy padding with EOS)
    width = ids.shape[1] + 3
    left_ids = torch.full((4, width), tok.eos_token_id)
    left_mask = torch.zeros((4, width), dtype=torch.bool)
    mixed_ids, mixed_mask = left_ids.clone(), left_mask.clone()
    for i, s in enumerate(seqs):
        left_ids[i, width - len(s) :] = torch.tensor(s)
        left_mask[i, width - len(s) :] = True
        start = 2 if i % 2 else 1
        mixed_ids[i, start : start + len(s)] = torch.tensor(s)
        mixed_mask[i, start : start + len(s)] = True
    with torch.no_grad():
        for got in (
            right,
            reward_scores(rm, left_ids, left_mask),
            reward_scores(rm, mixed_ids, mixed_mask),
        ):
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_values_for_tokens_is_the_head_at_every_position(lm_dir):
    rm, tok = init_reward_model(lm_dir, head_init="normal")
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    ids, mask = pad_right(seqs, tok.pad_token_id)
    values = values_for_tokens(rm, ids, mask)  # (B, T)
    assert values.shape == ids.shape and values.requires_grad
    last = mask.sum(1) - 1
    torch.testing.assert_close(values[torch.arange(4), last], reward_scores(rm, ids, mask))
    # a prefix's value = the score of that prefix as a sequence (causal model)
    prefix = torch.tensor([seqs[0][:3]])
    torch.testing.assert_close(
        values[0, 2],
        reward_scores(rm, prefix, torch.ones_like(prefix, dtype=torch.bool))[0],
        atol=1e-5,
        rtol=0,
    )
    values.sum().backward()
    assert rm.score.weight.grad is not None and rm.model.embed_tokens.weight.grad is not None


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match="at least one"):
        last_token_index(torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        last_token_index(mask.long())


def test_load_reward_model_refuses_a_causal_lm_folder(lm_dir, tmp_path):
    with pytest.raises(UserError):
        load_reward_model(tmp_path / "missing")
    # an LM folder loads as a seq-cls model with 2 labels by default: not an RM
    with pytest.raises(UserError, match="labels|reward"):
        load_reward_model(lm_dir)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_shift_and_scale_scores_is_exact_for_every_token(family, tiny_tokenizer, tmp_path):
    """scale * r + shift at every position: Llama (RMSNorm, no bias after it) gets a new
    score.bias that load_reward_model restores; GPT-2 gets it in ln_f.bias (from_pretrained
    loads the same architecture)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhfkit.models.reward import shift_and_scale_scores

    if family == "llama":
        lm = build_model("test", tiny_tokenizer, seed=1)
    else:
        torch.manual_seed(1)
        lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                        vocab_size=len(tiny_tokenizer)))  # fmt: skip
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=2)
    rm.eval()
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    ids, mask = pad_right(seqs, tok.pad_token_id)
    with torch.no_grad():
        before = values_for_tokens(rm, ids, mask)
        where = shift_and_scale_scores(rm, shift=-0.75, scale=2.5)
        after = values_for_tokens(rm, ids, mask)
    torch.testing.assert_close(after[mask], 2.5 * before[mask] - 0.75, atol=1e-5, rtol=1e-5)
    assert where == "transformer.ln_f.bias" if family == "gpt2" else where.startswith("score.bias")
    assert (rm.score.bias is None) == (family == "gpt2")
    save_folder = tmp_path / "rm"
    rm.save_pretrained(save_folder)
    tok.save_pretrained(save_folder)
    loaded, _ = load_reward_model(save_folder)
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(loaded, ids, mask), reward_scores(rm, ids, mask),
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_scoring_template_adds_bos_and_eos_and_survives_a_save(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from rlhfkit.models.rm_tokenizer import set_scoring_template

    tok = copy.deepcopy(tiny_tokenizer)
    assert set_scoring_template(tok)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    seqs, _ = encode_responses(loaded, PROMPTS, RESPONSES, 256)
    assert loaded([p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)])["input_ids"] == seqs
    assert seqs[0][0] == loaded.bos_token_id and seqs[0][-1] == loaded.eos_token_id


def test_scoring_template_warns_where_it_cannot_be_set(tiny_tokenizer, caplog):
    from rlhfkit.models.rm_tokenizer import set_scoring_template

    class NoBackend:  # a tokenizer without a `tokenizers` backend (a slow one)
        bos_token_id, eos_token_id = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id

        def __call__(self, *args, **kwargs):
            return tiny_tokenizer(*args, **kwargs)

    with caplog.at_level("WARNING", logger="rlhfkit"):
        assert not set_scoring_template(NoBackend())
    assert "plain transformers" in caplog.text and "will differ" in caplog.text
