"""Chat from SFT through RL: conversational prompt records ({"messages"} / {"prompt": [...]})
are encoded through the chat template with the generation prompt, exactly as
`apply_chat_template` renders them; plain prompts for a chat-trained model go through the
template as one user turn (tests/test_chat_format.py has the format rule itself),
conversational ones without a template are an error; overlong prompts are counted
in one note; `rlhfkit score`, `select`, `ppo`, `world label` and `eval` run on
conversational prompts. (Reading such records: tests/data/test_records.py; the chat mark:
tests/data/test_tokenize.py; RS keeping them: tests/loops/rejection/test_rounds.py. The
sampling and scoring parts move to tests/sampling/ and tests/scoring/ after those files'
branch is merged.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rlhfkit import cli
from rlhfkit.data.records import (
    PromptRecord,
    RankingRecord,
    read_prompts,
    read_scoring_records,
)
from rlhfkit.data.reward_data import encode_rankings, encode_responses, resolve_margin_table
from rlhfkit.data.tokenize import trained_on_chat
from rlhfkit.errors import RecordError
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.load import load_tokenizer
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model, load_reward_model
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.scoring.rm import score_sequences, score_texts
from tests.helpers import SYSTEM, assistant, template_ids, user, write_jsonl


@pytest.fixture
def no_template(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


# ---------------------------------------------------------------- encoding


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


def test_sft_on_messages_saves_a_chat_model_and_on_pairs_does_not(tmp_path, tiny_tokenizer):
    """`rlhfkit sft` marks the tokenizer it saves when it trained on `messages` records, so
    the RL stages can warn about plain prompts; prompt/completion data leaves no mark."""
    from tests.helpers import make_base_model

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    chat = [{"messages": [user(f"say {i}"), assistant(f"{i} said")]} for i in range(4)]
    pairs = [{"prompt": f"say {i}", "completion": f" {i} said"} for i in range(4)]
    for name, rows, marked in (("chat", chat, True), ("pairs", pairs, False)):
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        out = tmp_path / f"sft-{name}"
        argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out),
                "--epochs", "1", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
        assert cli.main(argv) == 0
        assert trained_on_chat(load_tokenizer(out / "epoch-1")) is marked, name


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


# ---------------------------------------------------------------- scoring


def test_scoring_a_conversation_reads_what_the_rm_trained_on(tiny_tokenizer):
    """`encode_responses` on a conversational prompt = the sequence `rm` trains on for the
    same conversation (a TRL conversational preference record); cut before EOS, the
    policy's own sequence: prompt with the generation prompt, then the response."""
    tok = tiny_tokenizer
    prompt = [SYSTEM, user("what is two and two?")]
    (seqs, _), rm_seq = (
        encode_responses(tok, [prompt, prompt], ["four", "five"], 256, ended=[True, False]),
        _rm_training_sequences(prompt, ["four", "five"], tok),
    )
    assert seqs[0] == rm_seq[0]
    assert seqs[0] == template_ids(tok, prompt) + tok("four", add_special_tokens=False)[
        "input_ids"
    ] + [tok.eos_token_id]
    assert seqs[1] == template_ids(tok, prompt) + tok("five", add_special_tokens=False)["input_ids"]


def test_a_template_writing_past_eos_still_ends_the_rm_sequence_at_eos(tiny_tokenizer):
    """A template that closes a turn with EOS + newline (as Qwen's `<|im_end|>\\n`): the RM
    trains on and scores the sequence up to EOS, the sequence the policy samples (the
    chat-rendered prompt, the response, EOS), not one ending in the newline."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    prompt = [user("what is two and two?")]
    four = tok("four", add_special_tokens=False)["input_ids"]
    sampled = template_ids(tok, prompt) + four + [tok.eos_token_id]
    assert _rm_training_sequences(prompt, ["four", "five"], tok)[0] == sampled
    assert encode_responses(tok, [prompt], ["four"], 256)[0][0] == sampled


def _rm_training_sequences(prompt, responses, tok):
    rec = RankingRecord(
        "", responses, [0, 1], prompt_messages=prompt,
        response_messages=[[assistant(r)] for r in responses],
    )  # fmt: skip
    (ex,), _ = encode_rankings([rec], tok, 256, resolve_margin_table("none"))
    return ex.sequences


def test_scoring_records_take_conversational_prompts(tmp_path):
    f = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": [user("hi")], "response": "hello", "id": 7},
            {"messages": [SYSTEM, user("hi")], "response": assistant("yo")},
            {"prompt": [user("hi")], "response": [assistant("hey")], "ended": False},
            {"prompt": "plain", "response": "text"},
        ],
    )
    a, b, c, d = read_scoring_records(f)
    assert (a.messages, a.response, a.content, a.row["id"]) == (
        [user("hi")], "hello", [user("hi")], 7
    )  # fmt: skip
    assert (b.messages, b.response) == ([SYSTEM, user("hi")], "yo")
    assert (c.response, c.ended) == ("hey", False)
    assert (d.messages, d.content) == (None, "plain")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "plain", "response": assistant("x")}])
    with pytest.raises(RecordError, match=r"b\.jsonl:1: 'response' is a message but 'prompt'"):
        read_scoring_records(bad)
    bad = write_jsonl(
        tmp_path / "b2.jsonl", [{"prompt": [user("q")], "response": [assistant("x"), user("y")]}]
    )
    with pytest.raises(RecordError, match="one assistant message"):
        read_scoring_records(bad)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("chat_rm") / "rm"
    lm = build_model("test", tiny_tokenizer, seed=3)
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=3)
    save_hf(rm, tok, folder)
    return folder


def test_rlhfkit_score_on_conversational_records(tmp_path, rm_dir, tiny_tokenizer):
    prompt = [SYSTEM, user("what is two and two?")]
    rows = [{"prompt": prompt, "response": "four"}, {"messages": prompt, "response": "five"}]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--rm", f"help={rm_dir}", "--data", str(data), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    # the RM's score of the sequence it trains on for this conversation
    model, tok = load_reward_model(rm_dir, "cpu")
    expected = score_sequences(
        model, _rm_training_sequences(prompt, ["four", "five"], tiny_tokenizer), tok.pad_token_id
    )
    got = torch.tensor([r["score"] for r in scored])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got, score_texts(model, tok, [prompt, prompt], ["four", "five"]))
    assert scored[0]["prompt"] == prompt  # the record is written back as it was


def test_rlhfkit_score_refuses_conversations_for_an_rm_without_template(tmp_path, rm_dir, capsys):
    rm = tmp_path / "rm"
    model, tok = load_reward_model(rm_dir, "cpu")
    tok.chat_template = None
    save_hf(model, tok, rm)
    (rm / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "s.jsonl", [{"prompt": [user("hi")], "response": "yo"}])
    argv = ["score", "--rm", f"help={rm}", "--data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--device", "cpu"]) == 2
    assert (
        f"{data}:1: a conversational prompt (a list of messages) needs a chat template, "
        "and reward model 'help' has none" in capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()


def test_rlhfkit_select_samples_conversational_prompts_through_the_template(
    tmp_path, tiny_tokenizer, chat_tokenizer, rm_dir, monkeypatch, capsys
):
    """A real command on conversational prompts: `select` samples from the chat-rendered
    prompt ids; the same chat-trained checkpoint renders plain prompts as user turns."""
    import rlhfkit.loops.select as select

    seen = []
    real = select.encode_prompts

    def recording(prompts, tok, max_prompt_len):
        ids = real(prompts, tok, max_prompt_len)
        seen.append(ids)
        return ids

    monkeypatch.setattr(select, "encode_prompts", recording)
    save_hf(
        build_model("test", tiny_tokenizer, seed=0), chat_tokenizer, tmp_path / "sft" / "epoch-1"
    )
    convo = [[SYSTEM, user(f"count to {i}")] for i in range(3)]
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in convo])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"count to {i}"} for i in range(3)])

    def run(prompts, out):
        argv = [
            "select", "--checkpoints", str(tmp_path / "sft"), "--prompts", str(prompts),
            "--out", str(tmp_path / out), "--device", "cpu", "--max-new-tokens", "4",
            "--rm", f"help={rm_dir}",
        ]  # fmt: skip
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    printed = run(chat, "a")
    assert seen[-1] == [template_ids(tiny_tokenizer, m) for m in convo]
    assert "warning" not in printed
    printed = run(plain, "b")
    assert "warning" not in printed
    assert seen[-1] == [template_ids(tiny_tokenizer, [user(f"count to {i}")]) for i in range(3)]
    result = json.loads((tmp_path / "a" / "select.json").read_text())
    assert result["checkpoints"][0]["n"] == 3


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


# ---------------------------------------------------------------- PPO


def test_ppo_runs_on_conversational_prompts_and_counts_overlong_ones(
    tmp_path, tiny_tokenizer, chat_tokenizer, rm_dir, capsys
):
    policy = tmp_path / "sft"
    save_hf(build_model("test", tiny_tokenizer, seed=0), chat_tokenizer, policy)
    long = "the cat sat on the mat " * 8
    rows = [{"messages": [SYSTEM, user(f"count to {i}")]} for i in range(3)]
    prompts = write_jsonl(tmp_path / "chat.jsonl", [*rows, {"prompt": [user(long)]}])
    out = tmp_path / "ppo"
    argv = [
        "ppo", "--policy", str(policy), "--rm", f"help={rm_dir}", "--prompts", str(prompts),
        "--eval-prompts", str(prompts), "--out", str(out), "--device", "cpu", "--steps", "1",
        "--batch-size", "2", "--max-new-tokens", "4", "--max-prompt-len", "24",
        "--sample-every", "0",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    note = (
        f"note: {prompts}: 1 of 4 prompts are longer than --max-prompt-len=24 tokens; each "
        "keeps its last 24 tokens (the oldest are dropped, a leading BOS kept)"
    )
    assert printed.count(note) == 1  # train and eval prompts are one file: said once
    assert "warning" not in printed
    assert trained_on_chat(load_tokenizer(out))  # the next stage still knows


def test_world_label_and_eval_take_conversational_prompts(tmp_path, tiny_tokenizer, monkeypatch):
    """`world label` and `eval` encode a conversational prompt through the chat template (the
    ids the sampler gets are the template's), and the world's judges still read its text."""
    import rlhfkit.sampling.sample_score as sample_score
    from tests.helpers import make_base_model

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    world = ["Q: What is 1 plus 2?\nA:", "Q: What is 2 plus 2?\nA:"]
    rows = [{"messages": [user(q)], "safety": False} for q in world]
    prompts = write_jsonl(tmp_path / "chat.jsonl", rows)
    seen: list[list[int]] = []
    encode = sample_score.encode_prompts

    def spy(records, tokenizer, max_len):
        ids = encode(records, tokenizer, max_len)
        seen.extend(ids)
        return ids

    for module in ("rlhfkit.sampling.sample_score", "rlhfkit.loops.evaluate"):
        monkeypatch.setattr(f"{module}.encode_prompts", spy, raising=False)
    argv = ["world", "label", "--policy", str(base), "--prompts", str(prompts), "--out",
            str(tmp_path / "labels"), "--k", "2", "--max-new-tokens", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    expected = [template_ids(tiny_tokenizer, [user(q)]) for q in world]
    assert [list(x) for x in seen[:2]] == expected
    ranked = [json.loads(x) for x in (tmp_path / "labels" / "rankings_helpfulness.jsonl").open()]
    assert {r["prompt"] for r in ranked} <= set(world)  # the judges read the text
    seen.clear()
    argv = ["eval", "--model", str(base), "--prompts", str(prompts), "--max-new-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert cli.main(argv) == 0
    assert [list(x) for x in seen[:2]] == expected
