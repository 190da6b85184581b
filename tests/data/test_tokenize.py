"""Tokenization: label masks against naive per-token constructions, BOS/EOS placement,
overlong policies, chat templates, prompts for generation and the packed corpus."""

import copy

import pytest
import torch
from tests.helpers import assistant, user
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhfkit.data.records import (
    SFTRecord,
)
from rlhfkit.data.tokenize import (
    EncodedExample,
    EncodeStats,
    encode_prompt,
    encode_sft,
    encode_sft_many,
    mark_trained_on_chat,
    pack_corpus,
    resolve_bos,
    trained_on_chat,
)
from rlhfkit.errors import RecordError, UserError
from rlhfkit.models.load import load_tokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus two? two plus two is four.",
    "reverse the word cat: tac. sort 3 1 2: 1 2 3.",
    "I am sorry, I cannot help with that request.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(bos: str = "<s>", chat: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="</s>", pad_token="<pad>"
    )
    if chat:
        out.chat_template = CHAT_TEMPLATE
    return out


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    return make_tokenizer(chat=True)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


PAIRS = [("what is two plus two?", " four."), ("", "the fox"), ("sort 3 1 2:", " 1 2 3.")]


# ---------------------------------------------------------------- prompt + completion


@pytest.mark.parametrize("loss_on_prompt", [False, True])
@pytest.mark.parametrize("prompt,completion", PAIRS)
def test_labels_match_naive_construction(tok, prompt, completion, loss_on_prompt):
    ex = encode_sft(SFTRecord(prompt, completion), tok, 512, loss_on_prompt=loss_on_prompt)
    # naive: list the tokens with a per-token "is prompt" flag, then label one by one
    tokens = [(tok.bos_token_id, True)]
    tokens += [(t, True) for t in ids_of(tok, prompt)]
    tokens += [(t, False) for t in ids_of(tok, completion)]
    tokens += [(tok.eos_token_id, False)]
    labels = []
    for pos, (t, is_prompt) in enumerate(tokens):
        masked = pos == 0 or (is_prompt and not loss_on_prompt)
        labels.append(-100 if masked else t)
    assert ex.input_ids == [t for t, _ in tokens]
    assert ex.labels == labels and not ex.truncated
    if not loss_on_prompt:  # the trained tokens decode to exactly the completion + EOS
        trained = [t for t in ex.labels if t != -100]
        assert tok.decode(trained) == completion + "</s>"


def test_eos_appended_exactly_once(tok):
    eos = tok.eos_token_id
    for completion in [" four.", " four.</s>"]:
        ex = encode_sft(SFTRecord("two plus two is", completion), tok, 512)
        assert ex.input_ids.count(eos) == 1 and ex.input_ids[-1] == eos == ex.labels[-1]


def test_bos_policy(tok):
    rec = SFTRecord("the fox", " jumps")
    assert encode_sft(rec, tok, 64).input_ids[0] == tok.bos_token_id
    no_bos = encode_sft(rec, tok, 64, add_bos=False).input_ids
    assert tok.bos_token_id not in no_bos and no_bos == ids_of(tok, "the fox jumps") + [2]
    # GPT-2 style: BOS is the EOS token -> not prepended by default
    gpt2_like = make_tokenizer(bos="</s>")
    assert resolve_bos(gpt2_like) is None
    assert encode_sft(rec, gpt2_like, 64).input_ids == no_bos
    assert resolve_bos(gpt2_like, add_bos=True) == gpt2_like.eos_token_id


def test_overlong_policies(tok):
    rec = SFTRecord("the quick brown fox", " jumps over the lazy dog", line=7, source="d.jsonl")
    full = encode_sft(rec, tok, 512)
    n_head = 1 + len(ids_of(tok, "the quick brown fox"))
    cut = encode_sft(rec, tok, n_head + 2)
    assert cut.truncated and cut.input_ids == full.input_ids[: n_head + 2]
    assert cut.labels == full.labels[: n_head + 2]
    # exactly one completion token still fits; zero does not
    assert encode_sft(rec, tok, n_head + 1).labels[-1] != -100
    assert encode_sft(rec, tok, n_head) is None
    assert encode_sft(rec, tok, n_head + 2, overlong="drop") is None
    with pytest.raises(RecordError, match=r"^d\.jsonl:7: example is \d+ tokens"):
        encode_sft(rec, tok, n_head + 2, overlong="error")
    assert encode_sft(rec, tok, len(full.input_ids), overlong="error") == full
    with pytest.raises(ValueError):
        encode_sft(rec, tok, 4, overlong="wrap")


def test_encode_many_matches_one_by_one_and_counts(tok, chat_tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the fox"}]
    recs = [SFTRecord(p, c) for p, c in PAIRS] + [SFTRecord("x" * 40, " y")]
    out, stats = encode_sft_many(recs, tok, 12)
    expected = [encode_sft(r, tok, 12) for r in recs]
    assert out == [e for e in expected if e is not None]
    assert (stats.kept, stats.dropped) == (len(out), 4 - len(out))
    assert stats.truncated == sum(e.truncated for e in out) and "kept" in str(stats)
    chat_out, chat_stats = encode_sft_many([SFTRecord("hi", "the fox", msgs)], chat_tok, 64)
    assert chat_out == [encode_sft(SFTRecord("hi", "the fox", msgs), chat_tok, 64)]
    counted = EncodeStats()
    for r in recs:
        encode_sft(r, tok, 12, stats=counted)
    assert counted == stats
    s = EncodeStats()
    s.add(None)
    s.add(EncodedExample([1], [-100], truncated=True))
    assert (s.kept, s.truncated, s.dropped) == (1, 1, 1)


# ---------------------------------------------------------------- chat template


CONVERSATIONS = [
    [
        {"role": "user", "content": "what is two plus two?"},
        {"role": "assistant", "content": "four."},
    ],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "reverse cat"},
        {"role": "assistant", "content": "tac"},
        {"role": "user", "content": "sort 3 1 2"},
        {"role": "assistant", "content": "1 2 3"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_labels_cover_assistant_turns_only(chat_tok, messages):
    t = chat_tok
    ex = encode_sft(SFTRecord("", "", messages), t, 512)
    # naive: walk the template by hand, flag each token as trained or not
    tokens = [(t.bos_token_id, False)]
    for m in messages:
        trained = m["role"] == "assistant"
        tokens += [(x, False) for x in ids_of(t, f"<|{m['role']}|>")]
        tokens += [(x, trained) for x in ids_of(t, m["content"])]
        tokens += [(t.eos_token_id, trained)]
    assert ex.input_ids == [x for x, _ in tokens]
    assert ex.labels == [x if trained else -100 for x, trained in tokens]
    # the same ids as the tokenizer's own rendering; EOS not doubled
    assert ex.input_ids == t.apply_chat_template(messages, tokenize=True)["input_ids"]
    assistant = "".join(m["content"] + "</s>" for m in messages if m["role"] == "assistant")
    assert t.decode([x for x in ex.labels if x != -100]) == assistant


def test_chat_truncation_and_no_template(tok, chat_tok):
    msgs = CONVERSATIONS[1]
    full = encode_sft(SFTRecord("", "", msgs), chat_tok, 512)
    first_trained = next(i for i, x in enumerate(full.labels) if x != -100)
    assert encode_sft(SFTRecord("", "", msgs), chat_tok, first_trained) is None
    cut = encode_sft(SFTRecord("", "", msgs), chat_tok, first_trained + 1)
    assert cut.truncated and cut.labels == full.labels[: first_trained + 1]
    with pytest.raises(UserError, match="chat template"):
        encode_sft(SFTRecord("", "", msgs), tok, 512)


def test_chat_template_not_prefix_stable_is_refused():
    t = make_tokenizer(chat=True)
    # renders the message count first: a prefix renders differently from the whole
    t.chat_template = "{{ messages|length }}" + CHAT_TEMPLATE
    with pytest.raises(UserError, match="prefix-stable"):
        encode_sft(SFTRecord("", "", CONVERSATIONS[0]), t, 512)


# ---------------------------------------------------------------- prompts


def test_encode_prompt_left_truncation(tok):
    body = ids_of(tok, "the quick brown fox jumps over the lazy dog")
    assert encode_prompt("the quick brown fox jumps over the lazy dog", tok, 100) == [1, *body]
    short = encode_prompt("the quick brown fox jumps over the lazy dog", tok, 4)
    assert short == [tok.bos_token_id, *body[-3:]]  # BOS kept, oldest tokens dropped
    assert encode_prompt("the fox", tok, 10, add_bos=False) == ids_of(tok, "the fox")
    with pytest.raises(ValueError):
        encode_prompt("the fox", tok, 0)


def test_encode_prompt_chat(chat_tok):
    ids = encode_prompt("sort 3 1 2", chat_tok, 100, chat=True)
    expected = chat_tok.apply_chat_template(
        [{"role": "user", "content": "sort 3 1 2"}], add_generation_prompt=True
    )["input_ids"]
    assert ids == expected and ids[0] == chat_tok.bos_token_id
    assert ids[-len(ids_of(chat_tok, "<|assistant|>")) :] == ids_of(chat_tok, "<|assistant|>")
    assert encode_prompt([{"role": "user", "content": "sort 3 1 2"}], chat_tok, 100) == expected
    short = encode_prompt("sort 3 1 2", chat_tok, 5, chat=True)
    assert short == [chat_tok.bos_token_id, *expected[-4:]]


# ---------------------------------------------------------------- corpus


def test_pack_corpus_matches_naive_stream(tok):
    docs = SENTENCES * 3
    blocks = pack_corpus(docs, tok, seq_len=16, chunk_size=5)
    stream = []
    for d in docs:
        stream += [tok.bos_token_id, *ids_of(tok, d), tok.eos_token_id]
    n = len(stream) // 16
    assert blocks.dtype == torch.long and blocks.shape == (n, 16)
    assert blocks.flatten().tolist() == stream[: n * 16]
    no_bos = pack_corpus(docs, tok, seq_len=16, add_bos=False).flatten().tolist()
    assert tok.bos_token_id not in no_bos and no_bos.count(tok.eos_token_id) >= len(docs) - 1
    with pytest.raises(UserError, match="fewer than one block"):
        pack_corpus(["the fox"], tok, seq_len=1000)


def test_chat_template_without_eos_gets_one_appended():
    t = make_tokenizer(chat=True)
    t.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    ex = encode_sft(SFTRecord("", "", CONVERSATIONS[0]), t, 512)
    assert ex.input_ids.count(t.eos_token_id) == 1 and ex.labels[-1] == t.eos_token_id
    trained = t.decode([x for x in ex.labels if x != -100])
    assert trained == "four.\n</s>"  # the turn's own newline, then EOS
    assert t.bos_token_id not in ex.input_ids  # the template, not us, places BOS


def test_the_chat_mark_is_saved_with_the_tokenizer(tmp_path, chat_tokenizer, tiny_tokenizer):
    """The mark survives save and load (the SFT checkpoint, then PPO's); encoding chat
    records never sets it (the stage that trains on them does)."""
    assert trained_on_chat(chat_tokenizer)
    chat_tokenizer.save_pretrained(tmp_path / "chat")
    assert trained_on_chat(load_tokenizer(tmp_path / "chat"))
    plain = copy.deepcopy(tiny_tokenizer)
    encode_sft(SFTRecord("hi", "hello", [user("hi"), assistant("hello")]), plain, 64)
    plain.save_pretrained(tmp_path / "plain")
    assert not trained_on_chat(load_tokenizer(tmp_path / "plain"))
    no_template = copy.deepcopy(chat_tokenizer)
    no_template.chat_template = None  # the mark alone is not enough
    assert not trained_on_chat(no_template)


def test_marking_is_a_no_op_for_tokenizer_like_objects_without_init_kwargs():
    class Bare:
        chat_template = "x"

    mark_trained_on_chat(Bare())
    assert not trained_on_chat(Bare())
