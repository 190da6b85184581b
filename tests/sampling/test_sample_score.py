"""Sample, then score (`rlhfkit.sampling.sample_score`): N responses per prompt in prompt-major order
and fixed batch cuts, the same samples as a direct `models.generate.sample` loop, scores
equal to scoring the texts directly, KL exactly 0 for a model against itself (held-out
evaluation, built on them: test_held_out.py). Prompts encoded as SFT saw them:
conversational records exactly as the chat template renders them with the generation
prompt, plain prompts for a chat-trained model as one user turn, conversational ones
without a template refused, overlong ones counted in one note."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from tests.helpers import SYSTEM, assistant, template_ids, user, write_jsonl

from rlhfkit.data.records import PromptRecord, read_prompts
from rlhfkit.data.tokenize import trained_on_chat
from rlhfkit.errors import RecordError
from rlhfkit.models.generate import decode_responses, sample
from rlhfkit.models.presets import build_model
from rlhfkit.sampling.generator import GenerationSettings, make_generator
from rlhfkit.sampling.sample_score import (
    encode_prompts,
    sample_and_score,
    sequence_logprobs,
)
from rlhfkit.scoring.rm import score_texts
from rlhfkit.scoring.rules import rule_scorer

PROMPTS = [
    PromptRecord("The cat sat", safety=False),
    PromptRecord("Add one and two please", safety=True),
    PromptRecord("hi", safety=False),
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return build_model("test", tiny_tokenizer, seed=1)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    return encode_prompts(PROMPTS, tiny_tokenizer, 128)


class Recording:
    """A generator that records the prompt ids of each `generate` call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompt_ids, settings, rng=None):
        self.calls.append([list(p) for p in prompt_ids])
        return self.inner.generate(prompt_ids, settings, rng)

    def sync_weights(self):
        self.inner.sync_weights()


def test_n_per_prompt_is_prompt_major_in_batches_of_sequences(model, tiny_tokenizer, ids):
    rec = Recording(make_generator(model, tiny_tokenizer))
    greedy = GenerationSettings(max_new_tokens=6, temperature=0.0)
    r = sample_and_score(rec, PROMPTS, ids, greedy, None, n=2, batch_size=4)
    flat = [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]]
    assert rec.calls == [flat[:4], flat[4:]]  # batch cuts over the N x prompts sequences
    assert len(r.texts) == len(r.tokens) == len(r.ended) == 6
    assert r.scores is None and r.kl is None and r.per_rm == {}
    # greedy: each prompt's two responses are its one greedy response, in prompt order
    one = sample_and_score(rec, PROMPTS, ids, greedy, None)
    assert r.texts == [t for t in one.texts for _ in range(2)]
    assert r.tokens == [t for t in one.tokens for _ in range(2)]


def test_same_samples_as_a_direct_sample_call(model, tiny_tokenizer, ids):
    """Same seed, same batch cuts: the same tokens as the loop every caller had before."""
    tok = tiny_tokenizer
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9)
    r = sample_and_score(
        make_generator(model, tok), PROMPTS, ids, settings, torch.Generator().manual_seed(7),
        n=3, batch_size=4,
    )  # fmt: skip
    flat = [p for p in ids for _ in range(3)]
    rng, texts, tokens, ended = torch.Generator().manual_seed(7), [], [], []
    for lo in range(0, len(flat), 4):
        gen = sample(
            model, flat[lo : lo + 4], max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, generator=rng,
        )  # fmt: skip
        texts += decode_responses(tok, gen)
        tokens += (gen.response_mask.sum(-1) - gen.ended.long()).tolist()
        ended += gen.ended.tolist()
    assert (r.texts, r.tokens, r.ended) == (texts, tokens, ended)
    assert len(set(r.texts)) > 1  # really sampled


class PerRM:
    """A scorer with per-RM scores; its `helpfulness` is the safety flag, to check the
    flags travel with their prompts."""

    def score(self, prompts, responses, safety):
        lengths = torch.tensor([float(len(r)) for r in responses])
        flags = torch.tensor([float(s) for s in safety])
        return SimpleNamespace(scores=lengths, per_rm={"helpfulness": flags})


def test_scores_equal_scoring_the_texts_directly(model, tiny_tokenizer, ids):
    settings = GenerationSettings(max_new_tokens=8)
    gen = make_generator(model, tiny_tokenizer)
    flat = [p for p in PROMPTS for _ in range(2)]
    for scorer in (rule_scorer("length"), PerRM()):
        r = sample_and_score(
            gen, PROMPTS, ids, settings, torch.Generator().manual_seed(0), n=2, batch_size=4,
            scorer=scorer, tokenizer=tiny_tokenizer,
        )  # fmt: skip
        direct = scorer.score([p.prompt for p in flat], r.texts, [p.safety for p in flat])
        want = direct if isinstance(direct, torch.Tensor) else direct.scores
        assert torch.equal(r.scores, want.float())
    assert r.per_rm["helpfulness"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_score_generation_reports_the_score_before_whitening(model, tiny_tokenizer, ids):
    """`score_generation` passes on the combined score before batch whitening (PPO logs it)
    and, for scorers that do not report one, the score itself."""
    from rlhfkit.models.load import freeze
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.sampling.sample_score import score_generation
    from rlhfkit.scoring.rm import LoadedRM, RewardScorer

    gen = make_generator(model, tiny_tokenizer).generate(
        ids, GenerationSettings(max_new_tokens=6), torch.Generator().manual_seed(0)
    )
    texts, safety = [p.prompt for p in PROMPTS], torch.tensor([p.safety for p in PROMPTS])
    rule = score_generation(rule_scorer("length"), gen, texts, safety, tiny_tokenizer)
    assert torch.equal(rule.unwhitened, rule.scores)
    rm, rm_tok = init_reward_model(model, copy.deepcopy(tiny_tokenizer), head_init="normal")
    rms = {"reward": LoadedRM(freeze(rm), rm_tok, 256)}
    whitened = score_generation(
        RewardScorer(rms, "single", {"whiten": True}), gen, texts, safety, tiny_tokenizer
    )
    plain = score_generation(RewardScorer(rms), gen, texts, safety, tiny_tokenizer)
    torch.testing.assert_close(whitened.unwhitened, plain.scores)
    assert abs(float(whitened.scores.mean())) < 1e-5 < abs(float(plain.scores.mean()))


def test_kl_is_zero_for_a_model_against_itself(model, tiny_tokenizer, ids):
    settings = GenerationSettings(max_new_tokens=8)
    gen = make_generator(model, tiny_tokenizer)

    def kl(reference, policy=None):
        return sample_and_score(
            gen, PROMPTS, ids, settings, torch.Generator().manual_seed(3), n=2, batch_size=4,
            reference=reference, policy=policy,
        )  # fmt: skip

    same = copy.deepcopy(model)
    exact = kl(same, policy=model)  # both log-probs from full forwards: exactly 0
    assert torch.equal(exact.kl, torch.zeros(6)) and torch.equal(exact.kl_k3, torch.zeros(6))
    sampler = kl(same)  # the sampler's cached log-probs: 0 up to kernel rounding
    assert sampler.kl.abs().max() < 1e-4 and sampler.texts == exact.texts
    other = kl(build_model("test", tiny_tokenizer, seed=3))
    assert other.kl.abs().mean() > 0.01 and (other.kl_k3 >= 0).all()


def test_sequence_logprobs_match_the_samplers(model, tiny_tokenizer, ids):
    gen = sample(
        model, ids, max_new_tokens=6, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(sequence_logprobs(model, gen), gen.logprobs, atol=1e-4, rtol=0)


def test_logprob_is_the_untempered_sum_over_each_response(model, tiny_tokenizer, ids):
    """`logprob_model`: log pi(y|x) summed over the response, EOS included, at temperature
    1 whatever the sampling temperature (at 1 and greedy, the sampler's own log-probs; at
    0.7, a forward). Checked against the sampler's per-token log-probs at temperature 1,
    and at every temperature against a naive per-sequence forward."""
    gen = make_generator(model, tiny_tokenizer)
    at_1 = GenerationSettings(max_new_tokens=6)
    r = sample_and_score(gen, PROMPTS, ids, at_1, torch.Generator().manual_seed(5), n=2,
                         logprob_model=model)  # fmt: skip
    direct = gen.generate(
        [i for i in ids for _ in range(2)], at_1, torch.Generator().manual_seed(5)
    )
    assert r.texts == direct.texts
    torch.testing.assert_close(r.logprob, direct.logprobs.sum(-1), atol=1e-4, rtol=0)
    _naive_logprobs_match(model, direct, r.logprob)

    for temperature, seed in ((0.7, 6), (0.0, 7)):
        s = GenerationSettings(max_new_tokens=6, temperature=temperature)
        r = sample_and_score(gen, PROMPTS, ids, s, torch.Generator().manual_seed(seed), n=2,
                             logprob_model=model)  # fmt: skip
        g = gen.generate([i for i in ids for _ in range(2)], s, torch.Generator().manual_seed(seed))
        assert r.texts == g.texts
        _naive_logprobs_match(model, g, r.logprob)
    assert sample_and_score(gen, PROMPTS, ids, s, None).logprob is None


def _naive_logprobs_match(model, g, got) -> None:
    """`got` (B,) against one sequence at a time, no padding, log softmax at temperature 1."""
    for row in range(g.response_ids.shape[0]):  # naive: one sequence at a time, no padding
        prompt = g.prompt_ids[row][g.prompt_mask[row]].tolist()
        response = g.response_ids[row][g.response_mask[row]].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response])).logits[0].float()
        want = sum(
            torch.log_softmax(logits[len(prompt) - 1 + t], -1)[tok].item()
            for t, tok in enumerate(response)
        )
        assert abs(got[row].item() - want) < 1e-4, (row, got[row], want)


@pytest.fixture
def no_template(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


def test_conversational_prompts_encode_as_the_chat_template_renders_them(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    convo = [SYSTEM, user("what is two and two?")]
    multi = [user("hi"), assistant("hello"), user("sort 3 1 2")]
    f = write_jsonl(
        tmp_path / "p.jsonl", [{"messages": convo}, {"prompt": multi}, {"prompt": "The cat"}]
    )
    ids = encode_prompts(read_prompts(f), tok, 256)
    assert ids[0] == template_ids(tok, convo)
    assert ids[1] == template_ids(tok, multi)
    assert ids[2] == [tok.bos_token_id] + tok("The cat", add_special_tokens=False)["input_ids"]
    # spelled out for the tiny template: <|bos|><|system|>\n...\n<|user|>\n...\n<|assistant|>\n
    assert tok.decode(ids[0]) == (
        "<|bos|><|system|>\nbe brief\n<|user|>\nwhat is two and two?\n<|assistant|>\n"
    )


def test_a_chat_trained_model_reads_plain_prompts_as_one_user_turn(
    tmp_path, chat_tokenizer, capsys
):
    """A model marked chat (an SFT on `messages`) gets a plain prompt as the user turn of
    its template, the same ids as the conversational record; nothing to warn about."""
    f = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "The cat"}, {"prompt": "hi"}])
    g = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("The cat")]}])
    plain = encode_prompts(read_prompts(f), chat_tokenizer, 64)
    assert plain == [template_ids(chat_tokenizer, [user("The cat")]),
                     template_ids(chat_tokenizer, [user("hi")])]  # fmt: skip
    assert encode_prompts(read_prompts(g), chat_tokenizer, 64)[0] == plain[0]
    assert capsys.readouterr().out == ""


def test_the_built_in_pipeline_prints_no_warning(tmp_path, tiny_tokenizer, capsys):
    """The built-in tokenizer ships a chat template, but a model not trained on chat
    messages is not warned about plain prompts."""
    assert tiny_tokenizer.chat_template is not None and not trained_on_chat(tiny_tokenizer)
    f = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "The cat"}])
    encode_prompts(read_prompts(f), tiny_tokenizer, 64)
    assert capsys.readouterr().out == ""


def test_conversational_prompts_without_a_chat_template_are_refused(tmp_path, no_template):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "plain"}, {"messages": [user("hi")]}])
    with pytest.raises(RecordError) as e:
        encode_prompts(read_prompts(f), no_template, 64)
    assert str(e.value) == (
        f"{f}:2: a conversational prompt (a list of messages) needs a tokenizer with a chat "
        "template, and the model's has none: give plain 'prompt' strings"
    )


def test_overlong_prompts_are_counted_in_one_note(tmp_path, tiny_tokenizer, capsys):
    tok = tiny_tokenizer
    long = "the cat sat on the mat " * 10
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": long}, {"prompt": "hi"}, {"messages": [user(long)]}, {"prompt": "a"}],
    )
    prompts = read_prompts(f)
    ids = encode_prompts(prompts, tok, 12)
    encode_prompts(prompts, tok, 12)  # once per file and length, however often encoded
    assert capsys.readouterr().out == (
        f"note: {f}: 2 of 4 prompts are longer than --max-prompt-len=12 tokens; each keeps "
        "its last 12 tokens (the oldest are dropped, a leading BOS kept)\n"
    )
    whole = template_ids(tok, [user(long)])
    assert ids[2] == [tok.bos_token_id] + whole[-11:]  # the generation prompt is kept
    assert all(len(i) <= 12 for i in ids)
    encode_prompts(prompts, tok, 256)
    assert capsys.readouterr().out == ""  # nothing cut: no note


def test_plain_string_prompts_still_encode(tiny_tokenizer):
    ids = encode_prompts(["The cat", PromptRecord("hi")], tiny_tokenizer, 64)
    tok = tiny_tokenizer
    assert ids[0] == [tok.bos_token_id] + tok("The cat", add_special_tokens=False)["input_ids"]


def test_an_rm_with_another_tokenizer_gets_the_messages_not_decoded_template_text(
    tiny_tokenizer, tiny_texts, rm_dir, tmp_path
):
    """PPO / RS / select sampling from conversational prompts: an RM that cannot read the
    policy's ids renders the conversation with its own chat template, as it trained."""
    from rlhfkit.models.presets import train_tokenizer
    from rlhfkit.sampling.generator import GenerationSettings, make_generator
    from rlhfkit.sampling.sample_score import sample_and_score
    from rlhfkit.scoring.rm import RewardScorer

    other = train_tokenizer(tiny_texts[:100], vocab_size=300)
    policy = build_model("test", other, seed=4)
    scorer = RewardScorer.from_specs({"r": rm_dir})
    assert not scorer.shares_tokenizer("r", other)
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"messages": [SYSTEM, user("count to three")]}, {"prompt": [user("the cat sat")]}],
    )
    prompts = read_prompts(f)
    settings = GenerationSettings(max_new_tokens=6, temperature=1.0)
    got = sample_and_score(
        make_generator(policy, other), prompts, encode_prompts(prompts, other, 64), settings,
        torch.Generator().manual_seed(0), scorer=scorer, tokenizer=other,
    )  # fmt: skip
    rm = scorer.models["r"]
    expected = score_texts(
        rm.model, rm.tokenizer, [p.messages for p in prompts], got.texts, ended=got.ended
    )
    torch.testing.assert_close(got.per_rm["r"], expected, atol=1e-5, rtol=0)
