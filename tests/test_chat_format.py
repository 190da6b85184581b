"""Instruct models see their own format in every stage (`rlhfkit.data.chat`): with a tokenizer
whose chat template is its own (not rlhfkit-pretrain-marked), plain {"prompt"} records go
through the template, the prompt as one user turn with the generation prompt and the
completion or response as the assistant turn it closes. Every expected sequence here is
computed independently, with `apply_chat_template` and the tokenizer alone; --no-chat
gives the plain encoding; the marker each stage saves is read by the next."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch

from rlhfkit import cli
from rlhfkit.data.chat import CHAT_FORMAT, chat_format, set_chat_format
from rlhfkit.data.records import PromptRecord, RankingRecord, SFTRecord, read_sft
from rlhfkit.data.reward_data import encode_rankings, encode_responses, resolve_margin_table
from rlhfkit.data.tokenize import encode_sft, encode_sft_many
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.load import load_tokenizer
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.scoring.rm import score_sequences
from tests.helpers import as_instruct, make_base_model, sft_rows, write_jsonl

P, C = "Q: What is 2 plus 3?\nA:", " 5"


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_prompt(tok, prompt: str) -> list[int]:
    """The template's rendering of one user turn with the generation prompt."""
    messages = [{"role": "user", "content": prompt}]
    return ids(tok, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def chat_sequence(tok, prompt: str, response: str) -> list[int]:
    """What a chat policy samples and its RM reads: the chat prompt, the response (no
    leading space: the template's header separates it), the end of turn (EOS)."""
    return chat_prompt(tok, prompt) + ids(tok, response.lstrip()) + [tok.eos_token_id]


def plain_sequence(tok, prompt: str, response: str | None = None) -> list[int]:
    out = [tok.bos_token_id] + ids(tok, prompt)
    return out if response is None else out + ids(tok, response) + [tok.eos_token_id]


def chat_sft(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """SFT's (input ids, labels): the prompt masked, the assistant turn trained up to the end
    of the template's rendering (here EOS + the newline the template writes after it)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "5"}]
    messages[1]["content"] = completion.lstrip()
    full = tok.apply_chat_template(messages, tokenize=False)
    head = chat_prompt(tok, prompt)
    rest = ids(tok, full[len(tok.decode(head)) :])
    return head + rest, [-100] * len(head) + rest


@pytest.fixture
def instruct(tiny_tokenizer):
    return as_instruct(tiny_tokenizer)


# ---------------------------------------------------------------- every encoder


def test_every_encoder_renders_a_plain_record_through_the_template(instruct):
    tok = instruct
    assert chat_format(tok)
    # generation prompts (ppo, rs, select, eval, world label, bon)
    assert encode_prompts([PromptRecord(P), P], tok, 256) == [chat_prompt(tok, P)] * 2
    # SFT (and rs's fine-tune): one at a time and in a batch
    want_ids, want_labels = chat_sft(tok, P, C)
    ex = encode_sft(SFTRecord(P, C), tok, 256)
    assert (ex.input_ids, ex.labels) == (want_ids, want_labels)
    assert ex.input_ids[: len(chat_sequence(tok, P, C))] == chat_sequence(tok, P, C)
    (batched,), _ = encode_sft_many([SFTRecord(P, C)], tok, 256)
    assert batched.input_ids == want_ids
    # RM training: every response of a ranking record, ending at EOS
    rec = RankingRecord(P, [" 5", " 6"], [0, 1])
    (example,), _ = encode_rankings([rec], tok, 256, resolve_margin_table("none"))
    assert example.sequences == [chat_sequence(tok, P, " 5"), chat_sequence(tok, P, " 6")]
    # RM scoring (score, select, eval, --normalize-with): ended, and cut before EOS
    seqs, _ = encode_responses(tok, [P, P], [" 5", "5"], 256, ended=[True, False])
    assert seqs == [chat_sequence(tok, P, " 5"), chat_sequence(tok, P, "5")[:-1]]


def test_no_chat_gives_the_plain_encoding(instruct):
    tok = instruct
    set_chat_format(tok, False)  # what --no-chat records
    assert encode_prompts([PromptRecord(P)], tok, 256) == [plain_sequence(tok, P)]
    ex = encode_sft(SFTRecord(P, C), tok, 256)
    assert ex.input_ids == plain_sequence(tok, P, C)
    rec = RankingRecord(P, [" 5", " 6"], [0, 1])
    (example,), _ = encode_rankings([rec], tok, 256, resolve_margin_table("none"))
    assert example.sequences == [plain_sequence(tok, P, " 5"), plain_sequence(tok, P, " 6")]
    assert encode_responses(tok, [P], [" 5"], 256)[0] == [plain_sequence(tok, P, " 5")]


def test_the_built_in_pretrain_tokenizer_stays_plain(tiny_tokenizer):
    """rlhfkit's own tokenizer ships a chat template its base model never trained on: auto
    keeps its prompts raw text, so the built-in pipeline encodes what it always did."""
    tok = tiny_tokenizer
    assert tok.chat_template is not None and not chat_format(tok)
    assert encode_prompts([PromptRecord(P)], tok, 256) == [plain_sequence(tok, P)]
    assert encode_sft(SFTRecord(P, C), tok, 256).input_ids == plain_sequence(tok, P, C)


# ---------------------------------------------------------------- a policy and RMs that disagree


@pytest.fixture(scope="module")
def two_rms(tmp_path_factory, tiny_tokenizer):
    """A reward model in chat format (an instruct tokenizer) and one in plain format (the
    built-in tokenizer), on the same vocabulary."""
    root = tmp_path_factory.mktemp("two_rms")
    for name, tok in (("chat", as_instruct(tiny_tokenizer)), ("plain", tiny_tokenizer)):
        rm, rm_tok = init_reward_model(
            build_model("test", tiny_tokenizer, seed=3), copy.deepcopy(tok), head_init="normal",
            seed=3,
        )  # fmt: skip
        save_hf(rm, rm_tok, root / name)
    return root


@pytest.mark.parametrize("policy_chat", [True, False], ids=["chat-policy", "plain-policy"])
def test_each_rm_scores_the_policys_samples_in_its_own_format(two_rms, tiny_tokenizer, policy_chat):
    """The RM that shares the policy's format reads its sampled ids; the other gets the
    prompts as read (not the policy's rendering of them) and the decoded responses, and
    encodes them in its own format: each score equals that RM on its own encoding of the
    text, a response cut before EOS without one."""
    from rlhfkit.models.generate import left_pad
    from rlhfkit.sampling.sample_score import score_generation
    from rlhfkit.scoring.rm import RewardScorer
    from rlhfkit.types import Generation

    tok = as_instruct(tiny_tokenizer)
    set_chat_format(tok, policy_chat)
    rms = {"chat": two_rms / "chat", "plain": two_rms / "plain"}
    scorer = RewardScorer.from_specs(rms, combine="weighted-sum")
    same, other = ("chat", "plain") if policy_chat else ("plain", "chat")
    assert scorer.scores_ids(same, tok) and not scorer.scores_ids(other, tok)
    assert scorer.shares_tokenizer(other, tok)  # same vocabulary: a value model may start there
    prompts = [PromptRecord(f"Q: What is {i} plus 3?\nA:") for i in range(3)]
    texts = ["5", "6 7", "8"] if policy_chat else [" 5", " 6 7", " 8"]  # as each samples
    ended = [True, False, True]
    prompt_ids = encode_prompts(prompts, tok, 64)
    assert prompt_ids[0] == (chat_prompt(tok, prompts[0].prompt) if policy_chat else
                             plain_sequence(tok, prompts[0].prompt))  # fmt: skip
    responses = [ids(tok, t) + [tok.eos_token_id] * e for t, e in zip(texts, ended, strict=True)]
    p_ids, p_mask = left_pad(prompt_ids, tok.pad_token_id)
    width = max(map(len, responses))
    r_ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses])
    r_mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in responses])
    gen = Generation(p_ids, p_mask, r_ids, r_mask, torch.zeros(r_ids.shape),
                     torch.tensor(ended), texts)  # fmt: skip
    got = score_generation(scorer, gen, prompts, torch.zeros(3, dtype=torch.bool), tok)
    for name, encode in (("chat", chat_sequence), ("plain", plain_sequence)):
        rm = scorer.models[name]
        want = []
        for p, text, e in zip(prompts, texts, ended, strict=True):
            seq = encode(rm.tokenizer, p.prompt, text)
            want.append(seq if e else seq[:-1])
        expected = score_sequences(rm.model, want, rm.tokenizer.pad_token_id)
        torch.testing.assert_close(got.per_rm[name], expected, atol=1e-5, rtol=0)


def test_rlhfkit_score_in_the_rms_format_and_with_no_chat(tmp_path, two_rms, capsys):
    from rlhfkit.models.reward import load_reward_model

    rows = [{"prompt": P, "response": " 5"}, {"prompt": P, "response": " 6"}]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    model, tok = load_reward_model(two_rms / "chat", "cpu")
    for flag, encode in (([], chat_sequence), (["--no-chat"], plain_sequence)):
        out = tmp_path / f"scored{len(flag)}.jsonl"
        argv = ["score", "--rm", f"r={two_rms / 'chat'}", "--data", str(data), "--out", str(out),
                "--device", "cpu", *flag]  # fmt: skip
        assert cli.main(argv) == 0
        got = torch.tensor([json.loads(x)["score"] for x in out.read_text().splitlines()])
        want = score_sequences(model, [encode(tok, P, r["response"]) for r in rows], 0)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the sampling commands


@pytest.fixture
def rendered(monkeypatch):
    """Every prompt any command encodes for generation: (prompt, tokenizer, ids)."""
    import rlhfkit.sampling.sample_score as sample_score

    calls: list[tuple] = []
    real = sample_score.whole_prompt_ids

    def spy(prompt, tokenizer, *args, **kwargs):
        out = real(prompt, tokenizer, *args, **kwargs)
        calls.append((prompt, tokenizer, out))
        return out

    monkeypatch.setattr(sample_score, "whole_prompt_ids", spy)
    return calls


def assert_rendered(calls: list[tuple], chat: bool) -> None:
    assert calls, "no prompt was encoded"
    for prompt, tok, got in calls:
        want = chat_prompt(tok, prompt) if chat else plain_sequence(tok, prompt)
        assert got == want, prompt


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory):
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record

    made = make_prompts(8, WorldSettings(), random.Random(0), set(), unique=True)
    root = tmp_path_factory.mktemp("chat_world")
    return write_jsonl(root / "p.jsonl", [prompt_record(n, q) for n, q, _ in made])


@pytest.fixture(scope="module")
def instruct_base(tmp_path_factory, tiny_tokenizer):
    """A tiny causal LM saved with an instruct tokenizer (its own template, no mark)."""
    root = tmp_path_factory.mktemp("instruct")
    return make_base_model(root / "base", as_instruct(tiny_tokenizer))


@pytest.mark.parametrize("flag", [[], ["--no-chat"]], ids=["auto", "no-chat"])
def test_select_eval_label_bon_and_the_pipelines_kl_sample_in_the_policys_format(
    tmp_path, instruct_base, world_prompts, rendered, flag
):
    from rlhfkit.config import SelectConfig
    from rlhfkit.loops.bon import run_bon
    from rlhfkit.loops.pipeline_eval import sample_kl

    short = ["--max-new-tokens", "3", "--device", "cpu"]
    base, prompts = str(instruct_base), str(world_prompts)
    assert cli.main(["select", "--checkpoints", base, "--prompts", prompts, "--rule-reward",
                     "length", "--out", str(tmp_path / "sel"), *short, *flag]) == 0  # fmt: skip
    assert cli.main(["eval", "--model", base, "--prompts", prompts, *short, *flag]) == 0
    assert cli.main(["world", "label", "--policy", base, "--prompts", prompts, "--k", "2",
                     "--out", str(tmp_path / "labels"), *short, *flag]) == 0  # fmt: skip
    run_bon(SelectConfig(checkpoints=(base,), prompts=prompts, rule_reward="length",
                         samples_per_prompt=2, max_new_tokens=3, device="cpu",
                         out=str(tmp_path / "bon"), chat=False if flag else None))  # fmt: skip
    n = len(rendered)
    assert n >= 4 * 8
    assert_rendered(rendered, chat=not flag)
    if not flag:  # the pipeline's KL samples: the model's own format, from its folder
        rendered.clear()
        policy = build_model("test", load_tokenizer(base), seed=0)
        sample_kl(policy, policy, load_tokenizer(base), ["Q: What is 1 plus 2?\nA:"],
                  max_new_tokens=2)  # fmt: skip
        assert_rendered(rendered, chat=True)
    labels = [json.loads(x) for x in (tmp_path / "labels" / "samples.jsonl").open()]
    assert all(r["prompt"].startswith("Q: ") for r in labels)  # the plain text, not rendered


# ---------------------------------------------------------------- the saved marker flows


def test_the_next_stage_follows_the_marker_the_last_one_saved(
    tmp_path, tiny_tokenizer, instruct_base, world_prompts, rendered
):
    """`sft --chat` on rlhfkit's own (plain) base model saves a chat model, which `eval`
    then prompts through the template unasked; `sft --no-chat` on an instruct model saves
    a plain one, which `eval` prompts with raw text."""
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    plain_base = make_base_model(tmp_path / "plain_base", tiny_tokenizer)
    opts = ["--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    for base, flag, chat in ((plain_base, "--chat", True), (instruct_base, "--no-chat", False)):
        out = tmp_path / f"sft{flag}"
        argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out), flag]
        assert cli.main([*argv, *opts]) == 0
        for folder in (out, out / "epoch-1"):
            saved = json.loads((folder / "tokenizer_config.json").read_text())
            assert saved[CHAT_FORMAT] is chat, folder
        rendered.clear()
        argv = ["eval", "--model", str(out), "--prompts", str(world_prompts), "--device", "cpu"]
        assert cli.main([*argv, "--max-new-tokens", "2"]) == 0
        assert_rendered(rendered, chat=chat)


# ---------------------------------------------------------------- the whole method


def test_sft_rm_ppo_rs_eval_on_an_instruct_model(tmp_path, instruct_base, world_prompts,
                                                 rendered, monkeypatch):  # fmt: skip
    """The chain through the CLI on a model with its own chat template: SFT trains on the
    template's rendering, the RM on it too, PPO and RS sample after the chat prompt (and RS
    fine-tunes on the same rendering), eval prompts the same way, and every model any stage
    saves (checkpoints included) is marked chat."""
    import rlhfkit.loops.rejection.rounds as rounds
    import rlhfkit.loops.reward.train as rm_train
    import rlhfkit.loops.sft as sft

    seen: dict[str, list] = {"sft": [], "rm": [], "rs": []}

    def spy(module, name, key):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            seen[key].append((args, out))
            return out

        monkeypatch.setattr(module, name, wrapped)

    spy(sft, "encode_sft", "sft")
    spy(rm_train, "encode_rankings", "rm")
    spy(rounds, "encode_sft", "rs")
    rows = sft_rows(8)
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[i - 1]["completion"]}
        for i, r in enumerate(rows)
    ])  # fmt: skip
    short = ["--max-new-tokens", "4", "--device", "cpu"]
    run = lambda *argv: cli.main([*map(str, argv)])  # noqa: E731
    assert run("sft", "--model", instruct_base, "--data", data, "--out", tmp_path / "sft",
               "--epochs", "1", "--batch-size", "8", "--device", "cpu") == 0  # fmt: skip
    assert run("rm", "--model", tmp_path / "sft", "--data", pairs, "--out", tmp_path / "rm",
               "--batch-size", "8", "--max-steps", "1", "--device", "cpu") == 0  # fmt: skip
    rm = f"r={tmp_path / 'rm'}"
    assert run("ppo", "--policy", tmp_path / "sft", "--rm", rm, "--prompts", world_prompts,
               "--eval-prompts", world_prompts, "--eval-max-prompts", "2", "--out",
               tmp_path / "ppo", "--steps", "1", "--batch-size", "2", "--sample-every", "0",
               *short) == 0  # fmt: skip
    assert run("rs", "--policy", tmp_path / "ppo", "--rm", rm, "--prompts", world_prompts,
               "--max-prompts", "4", "--out", tmp_path / "rs", "--rounds", "1", "--k", "2",
               "--batch-size", "4", "--keep-truncated", *short) == 0  # fmt: skip
    assert run("eval", "--model", tmp_path / "rs", "--prompts", world_prompts, "--rm", rm,
               "--out", tmp_path / "eval.json", *short) == 0  # fmt: skip

    tok = load_tokenizer(tmp_path / "sft")
    for (record, *_), ex in ((a, out) for a, out in seen["sft"]):
        assert (ex.input_ids, ex.labels) == chat_sft(tok, record.prompt, record.completion)
    for (records, *_), (examples, _) in seen["rm"]:
        for rec, example in zip(records, examples, strict=True):
            want = [chat_sequence(tok, rec.prompt, r) for r in rec.responses]
            assert example.sequences == want
    for (record, *_), ex in seen["rs"]:
        if ex is not None:
            assert ex.input_ids[: len(chat_prompt(tok, record.prompt))] == chat_prompt(
                tok, record.prompt
            )
    assert seen["sft"] and seen["rm"] and seen["rs"]
    assert_rendered(rendered, chat=True)  # ppo's rollouts and evaluation, rs, eval
    kept = read_sft(tmp_path / "rs" / "round-1" / "kept.jsonl")  # `rlhfkit sft` reads it
    assert encode_sft(kept[0], tok, 256).input_ids[: len(chat_prompt(tok, kept[0].prompt))] == (
        chat_prompt(tok, kept[0].prompt)
    )
    models = ["sft", "sft/epoch-1", "rm", "rm/epoch-1", "ppo", "rs", "rs/round-1",
              "ppo/checkpoints/step-000001/policy", "ppo/checkpoints/step-000001/value"]  # fmt: skip
    saved = sorted(Path(tmp_path).rglob("tokenizer_config.json"))
    assert sorted(str(p.parent.relative_to(tmp_path)) for p in saved) == sorted(models)
    for path in saved:
        assert json.loads(path.read_text())[CHAT_FORMAT] is True, path
    assert json.loads((tmp_path / "rm" / "rlhfkit_reward.json").read_text())["chat"] is True
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 8
