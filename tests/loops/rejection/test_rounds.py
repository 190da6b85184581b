"""loops/rejection/rounds.py: what one round fine-tunes on (`encode_kept`)."""

from __future__ import annotations

import copy
import json

from tests.helpers import SYSTEM, assistant, template_ids, user, write_jsonl

from rlhfkit.data.records import (
    read_sft,
)
from rlhfkit.data.tokenize import trained_on_chat


def test_encode_kept_trains_a_truncated_sample_without_eos(tiny_tokenizer):
    from rlhfkit.config import RSConfig
    from rlhfkit.loops.rejection.keep import Kept
    from rlhfkit.loops.rejection.rounds import encode_kept

    cfg = RSConfig(max_len=64)
    done = Kept("Q: what is the cat\nA:", " the cat sat", 1.0, 1, 0, ended=True)
    cut = Kept("Q: what is the cat\nA:", " the cat sat", 1.0, 1, 0, ended=False)
    whole, partial = encode_kept([done, cut], tiny_tokenizer, cfg, "kept.jsonl")
    eos = tiny_tokenizer.eos_token_id
    assert whole.input_ids[-1] == eos and whole.labels[-1] == eos
    assert partial.input_ids == whole.input_ids[:-1] and partial.labels == whole.labels[:-1]
    assert eos not in partial.input_ids


def test_rs_keeps_conversational_samples_as_sft_messages(tmp_path, tiny_tokenizer):
    """A kept sample of a conversational prompt is written as SFT `messages` (readable by
    `rlhfkit sft`) and fine-tuned on through the chat template; a cut one without EOS."""
    from rlhfkit.config import RSConfig
    from rlhfkit.loops.rejection.keep import keep_best
    from rlhfkit.loops.rejection.rounds import encode_kept
    from rlhfkit.loops.rejection.samples import SampleRecord

    tok = copy.deepcopy(tiny_tokenizer)
    prompt = [SYSTEM, user("count to three")]
    rec = SampleRecord("count to three", ["one two", "one two three"], [0.1, 0.9], 1,
                       ended=[True, False], messages=prompt)  # fmt: skip
    assert SampleRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    whole = SampleRecord("count to three", ["one two three"], [0.5], 0, messages=prompt)
    (done,) = keep_best([[whole]])
    (cut,) = keep_best([[rec]])
    assert done.to_json()["messages"] == [*prompt, assistant("one two three")]
    assert "prompt" not in done.to_json() and not cut.ended
    f = write_jsonl(tmp_path / "kept.jsonl", [done.to_json()])
    assert read_sft(f)[0].messages == [*prompt, assistant("one two three")]
    a, b = encode_kept([done, cut], tok, RSConfig(max_len=128), "kept.jsonl")
    reply = tok("one two three", add_special_tokens=False)["input_ids"]
    assert a.input_ids == template_ids(tok, prompt) + reply + [tok.eos_token_id]
    assert a.labels == [-100] * len(template_ids(tok, prompt)) + reply + [tok.eos_token_id]
    assert b.input_ids == a.input_ids[:-1] and b.labels == a.labels[:-1]
    assert not trained_on_chat(tok)  # encoding never changes the policy's format


def test_an_eval_is_one_seeded_response_per_prompt_the_same_every_call(tmp_path, tiny_tokenizer):
    """`RSRun.evaluate`: one response per --eval-prompts prompt, drawn in batches of
    --sample-batch-size sequences from a CPU rng seeded by --seed + 12_345 (PPO's held-out
    draw, `sample_held_out`); the mean reward and length, and the world's gold metrics."""
    from pathlib import Path

    import torch

    from rlhfkit.config import RSConfig
    from rlhfkit.data.records import read_prompts
    from rlhfkit.loops.rejection.rounds import RSRun
    from rlhfkit.models.presets import build_model
    from rlhfkit.sampling.generator import GenerationSettings, make_generator
    from rlhfkit.sampling.sample_score import GOLD_KEYS, encode_prompts, sample_and_score
    from rlhfkit.scoring.rules import rule_scorer
    from rlhfkit.world import make_world

    make_world(tmp_path, seed=0, corpus_docs=5, sft=5, train_prompts=5, eval_prompts=7)
    prompts = read_prompts(tmp_path / "prompts_eval.jsonl")
    tok, scorer = tiny_tokenizer, rule_scorer("length")
    model = build_model("test", tok, seed=1)
    cfg = RSConfig(eval_temperature=0.7, sample_batch_size=3, max_new_tokens=9, seed=3)
    ids = encode_prompts(prompts, tok, cfg.max_prompt_len)
    run = RSRun(cfg=cfg, out=tmp_path, device=torch.device("cpu"), tokenizer=tok, scorer=scorer,
                prompts=[], prompt_ids=[], eval_prompts=prompts, eval_ids=ids,
                policy_path=Path("unused"), model=model)  # fmt: skip
    got = run.evaluate()
    rng = torch.Generator().manual_seed(3 + 12_345)
    settings = GenerationSettings(max_new_tokens=9, temperature=0.7)
    r = sample_and_score(make_generator(model, tok), prompts, ids, settings, rng, batch_size=3,
                         scorer=scorer)  # fmt: skip
    assert got["n"] == len(prompts) == 7
    assert got["score"] == sum(r.scores.tolist()) / 7  # the length of each response
    assert got["response_tokens"] == sum(r.tokens) / 7
    assert set(GOLD_KEYS) <= set(got) and run.evaluate() == got
