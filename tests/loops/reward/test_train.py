"""The reward-model loop: K-wise loss vs an explicit pair loop, K forward passes per prompt,
margins and the strength rule, learning a separable ranking, resume, file:line errors, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.helpers import (
    PDROP,
    assert_same_training,
    make_base_model,
    two_train_forwards,
    write_jsonl,
)
from transformers import AutoModelForSequenceClassification

from rlhfkit.cli import main
from rlhfkit.config import RMConfig
from rlhfkit.data.ranking import STRENGTHS
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import collate_rankings, encode_rankings, resolve_margin_table
from rlhfkit.loops.reward.train import (
    RMRun,
    accumulate_gradients,
    evaluate_rm,
    fit_rm,
    ranking_batch_loss,
)
from rlhfkit.models.reward import init_reward_model, reward_scores
from rlhfkit.scoring.rm import encode_responses, score_texts

FILL = "the a cat dog bird sat ran on under mat house tree red blue big small".split()


def keyword_rankings(n: int, k: int, seed: int, strengths: bool = True) -> list[dict]:
    """Separable rankings: response c holds the word "please" c times; more is better."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        responses = []
        for c in range(k):
            words = [rng.choice(FILL) for _ in range(rng.randint(3, 6))]
            for _ in range(c):
                words.insert(rng.randint(0, len(words)), "please")
            responses.append(" ".join(words))
        perm = list(range(k))
        rng.shuffle(perm)  # record order != rank order
        row = {
            "prompt": f"Say {rng.choice(FILL)} {i}",
            "responses": [responses[p] for p in perm],
            "ranking": sorted(range(k), key=lambda j: -perm[j]),
        }
        if strengths:
            row["strengths"] = [rng.choice(STRENGTHS) for _ in range(k - 1)]
        rows.append(row)
    return rows


def records_of(rows: list[dict]) -> list[RankingRecord]:
    return [
        RankingRecord(r["prompt"], r["responses"], r["ranking"], r.get("strengths"), i + 1, "mem")
        for i, r in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_base_model(tmp_path_factory.mktemp("rm") / "base", tiny_tokenizer)


def _naive_strength(strengths, i, j):
    """Strongest label among adjacent strengths i..j-1 (STRENGTHS is strongest first)."""
    return None if strengths is None else min(strengths[i:j], key=STRENGTHS.index)


def _explicit_pair_loop_loss(model, tokenizer, records, table):
    """Every pair of every prompt with its own two forward passes (the naive K*(K-1) way):
    loss = mean_prompts mean_pairs -log sigmoid(r_w - r_l - m)."""
    per_prompt = []
    for rec in records:
        seqs, _ = encode_responses(tokenizer, [rec.prompt] * len(rec.responses), rec.responses, 256)

        def r(idx, seqs=seqs):
            ids = torch.tensor([seqs[idx]])
            return reward_scores(model, ids, torch.ones_like(ids, dtype=torch.bool))[0]

        terms = []
        k = len(rec.ranking)
        for i in range(k):
            for j in range(i + 1, k):
                strength = _naive_strength(rec.strengths, i, j)
                m = 0.0 if strength is None else table[strength]
                w, lo = rec.ranking[i], rec.ranking[j]
                terms.append(-F.logsigmoid(r(w) - r(lo) - m))
        assert len(terms) == math.comb(k, 2)
        per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


def test_loop_loss_and_gradients_match_explicit_pair_loop(base, tiny_tokenizer):
    rows = (
        keyword_rankings(2, 4, seed=0) + keyword_rankings(2, 2, seed=1) + keyword_rankings(1, 3, 2)
    )
    records = records_of(rows)
    table = resolve_margin_table("llama2-large")
    model, tok = init_reward_model(base, head_init="normal", seed=0)
    model.eval()  # no dropout in Llama anyway; makes the comparison explicit

    examples, _ = encode_rankings(records, tok, 256, table)
    loss, stats, _ = ranking_batch_loss(model, collate_rankings(examples, tok.pad_token_id))
    loss.backward()
    loop_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    ref = _explicit_pair_loop_loss(model, tok, records, table)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    assert int(stats["n_prompts"]) == 5 and int(stats["n_pairs"]) == 2 * 6 + 2 * 1 + 3
    for name, p in model.named_parameters():
        torch.testing.assert_close(loop_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for n, g in loop_grads.items() if "score" not in n)


# ---------------------------------------------------------------- K forward passes per prompt


def _count_rows(model):
    seen = {"calls": 0, "rows": 0}
    forward = model.forward

    def counting(*args, **kwargs):
        seen["calls"] += 1
        seen["rows"] += kwargs["input_ids"].shape[0]
        return forward(*args, **kwargs)

    model.forward = counting
    return seen


@pytest.mark.parametrize("ks", [(4, 4, 4), (9, 9), (4, 9, 2)])
def test_each_response_gets_exactly_one_forward_pass(base, tiny_tokenizer, tmp_path, ks):
    rows = [keyword_rankings(1, k, seed=i)[0] for i, k in enumerate(ks)]
    model, tok = init_reward_model(base)
    examples, _ = encode_rankings(records_of(rows), tok, 256, resolve_margin_table("none"))
    seen = _count_rows(model)
    cfg = RMConfig(out=str(tmp_path), batch_size=len(ks), epochs=1, log_every=1)
    summary = fit_rm(RMRun(model, tok, examples, out=tmp_path), cfg)
    assert summary["steps"] == 1
    assert seen == {"calls": 1, "rows": sum(ks)}  # sum of K, not sum of K*(K-1)

    seen.update(calls=0, rows=0)
    metrics = evaluate_rm(model, examples, tok.pad_token_id, batch_size=2)
    assert seen["rows"] == sum(ks)
    assert metrics["n_pairs"] == sum(math.comb(k, 2) for k in ks)
    assert metrics["n_prompts"] == len(ks)


def test_eval_counts_ties_as_half_and_reports_buckets(base):
    # zero head: every score is 0, every pair a tie -> accuracy 0.5 (chance), loss log 2
    model, tok = init_reward_model(base)
    rows = keyword_rankings(3, 4, seed=5)
    examples, _ = encode_rankings(records_of(rows), tok, 256, resolve_margin_table("none"))
    m = evaluate_rm(model, examples, tok.pad_token_id)
    assert m["accuracy"] == 0.5 and m["n_ties"] == m["n_pairs"] == 18
    assert m["loss"] == pytest.approx(math.log(2)) and m["score_gap"] == 0
    assert sum(b["n_pairs"] for b in m["buckets"].values()) == 18
    assert all(b["accuracy"] == 0.5 for b in m["buckets"].values())


# ---------------------------------------------------------------- one step, accumulation, learning


def _rm_args(base, data, out, *extra):
    return ["rm", "--model", str(base), "--data", *map(str, data), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip


def test_first_step_loss_matches_explicit_and_accumulation_changes_nothing(
    base, tiny_tokenizer, tmp_path
):
    # K = 2, 3, 4, 2: uneven prompts, so micro-batches hold different numbers of pairs
    rows = [keyword_rankings(1, k, seed=10 + k + i)[0] for i, k in enumerate((2, 3, 4, 2))]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    common = ["--max-steps", "1", "--log-every", "1", "--lr", "1e-3", "--head-init", "normal",
              "--margin", "llama2-small", "--warmup-steps", "0"]  # fmt: skip
    assert main(_rm_args(base, [data], tmp_path / "a", *common, "--batch-size", "4")) == 0
    assert main(_rm_args(base, [data], tmp_path / "b", *common, "--batch-size", "1",
                         "--grad-accum", "4")) == 0  # fmt: skip

    model, tok = init_reward_model(base, head_init="normal", seed=0)
    expected = _explicit_pair_loop_loss(
        model, tok, records_of(rows), resolve_margin_table("llama2-small")
    ).item()
    for run in ("a", "b"):
        first = json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])
        assert first["train/loss"] == pytest.approx(expected, abs=1e-5)
    w0 = model.state_dict()
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    # one Adam step moves every weight by about lr * sign(grad): near-zero gradients make
    # it sensitive to rounding, hence the looser tolerance; the gradients are compared
    # tightly below.
    assert_same_training(wa, wb, {k: w0[k] for k in wa}, rel=1e-2)

    examples, _ = encode_rankings(records_of(rows), tok, 256, resolve_margin_table("llama2-small"))
    run = RMRun(model, tok, examples)
    grads = []
    for micro in ([examples], [[ex] for ex in examples], [examples[:1], examples[1:]]):
        sums = accumulate_gradients(model, micro, len(examples), run)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
        assert sums["loss"] == pytest.approx(expected, abs=1e-5)
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_separable_rankings_reach_accuracy_1_and_hf_round_trip(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(64, 3, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", keyword_rankings(16, 3, seed=1))
    out = tmp_path / "rm"
    args = _rm_args(base, [train], out, "--eval-data", str(held), "--epochs", "4", "--lr", "1e-3")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["accuracy"] == 1.0
    assert summary["eval"]["loss"] < 0.69  # below chance (log 2)

    hf = AutoModelForSequenceClassification.from_pretrained(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    rows = keyword_rankings(4, 3, seed=2)
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [x for r in rows for x in r["responses"]]
    seqs, _ = encode_responses(tok, prompts, responses, 256)
    with torch.no_grad():
        theirs = hf(**tok.pad({"input_ids": seqs}, return_tensors="pt")).logits.squeeze(-1)
    torch.testing.assert_close(score_texts(hf, tok, prompts, responses), theirs, atol=1e-5, rtol=0)


def test_resume_ends_like_an_uninterrupted_run(base, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(16, 3, seed=3))
    opts = ["--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--schedule", "constant",
            "--warmup-steps", "0"]  # fmt: skip
    assert main(_rm_args(base, [data], tmp_path / "full", *opts)) == 0
    part = tmp_path / "part"
    assert main(_rm_args(base, [data], part, *opts, "--max-steps", "3")) == 0  # mid-epoch 1
    assert (part / "checkpoints" / "step-000003" / "COMPLETE").is_file()
    assert main(_rm_args(base, [data], part, *opts, "--resume")) == 0
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(part / "model.safetensors"))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0, msg=k)
    assert json.loads((part / "summary.json").read_text())["steps"] == 8
    assert (part / "epoch-1").is_dir() and (part / "epoch-2").is_dir()


def test_without_eval_data_each_epoch_prints_its_training_accuracy(base, tmp_path, capsys):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(16, 3, seed=3))  # 4 steps/epoch
    out = tmp_path / "rm"
    opts = ["--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--log-every", "1"]
    assert main(_rm_args(base, [data], out, *opts)) == 0
    printed = capsys.readouterr().out
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step_accuracy = [row["train/accuracy"] for row in logged if "train/accuracy" in row]
    history = json.loads((out / "summary.json").read_text())["epochs"]
    for epoch, row in enumerate(history):
        # Every step holds 4 prompts x 3 pairs: the epoch's accuracy is its steps' mean.
        expected = sum(step_accuracy[4 * epoch : 4 * epoch + 4]) / 4
        assert row["train_accuracy"] == pytest.approx(expected) and row["eval"] is None
        line = (
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, "
            f"train accuracy {expected:.4f} (48 pairs, ties half)"
        )
        assert line in printed
    assert " eval:" not in printed


# ---------------------------------------------------------------- bad input


BAD_RECORDS = {
    "k<2": ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "at least 2"),
    "duplicate": ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "repeats"),
    "out of range": ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "out of range"),
    "strength": (
        {"prompt": "p", "chosen": "a", "rejected": "b", "strength": "much_better"},
        "much_better",
    ),
    "empty": ({"prompt": "p", "responses": ["a", "  "], "ranking": [1, 0]}, "empty"),
}


@pytest.mark.parametrize("where", ["data", "eval"])
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_records_fail_with_file_line_before_anything_is_written(
    base, tmp_path, capsys, case, where
):
    bad, message = BAD_RECORDS[case]
    good = write_jsonl(tmp_path / "good.jsonl", keyword_rankings(3, 2, seed=0))
    broken = write_jsonl(tmp_path / "bad.jsonl", [keyword_rankings(1, 3, seed=1)[0], bad])
    out = tmp_path / "out"
    if where == "data":
        args = _rm_args(base, [good, broken], out)
    else:
        args = _rm_args(base, [good], out, "--eval-data", str(broken))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2:" in err and message in err
    assert not out.exists()


def test_bad_margin_and_overlong_error(base, tmp_path, capsys):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(3, 2, seed=0))
    assert main(_rm_args(base, [data], tmp_path / "o", "--margin", "huge")) == 2
    assert "--margin" in capsys.readouterr().err
    args = _rm_args(base, [data], tmp_path / "o", "--max-len", "4", "--overlong", "error")
    assert main(args) == 2
    assert f"{data}:1:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- CLI end to end


def test_cli_rm_then_rm_eval_then_score(base, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["rm", "--help"])
    assert e.value.code == 0 and "--margin" in capsys.readouterr().out

    train = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(12, 4, seed=0))
    pairs = [
        {"prompt": "Say cat", "chosen": "please the cat", "rejected": "the cat", "strength": s}
        for s in STRENGTHS
    ]
    held = write_jsonl(tmp_path / "eval.jsonl", keyword_rankings(4, 3, seed=1) + pairs)
    out = tmp_path / "rm"
    args = _rm_args(base, [train], out, "--eval-data", str(held), "--margin", "llama2-small",
                    "--batch-size", "4", "--log-every", "1")  # fmt: skip
    assert main(args) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml",
                 "metrics.jsonl", "summary.json", "rlhfkit_reward.json", "run.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert (out / "epoch-1" / "COMPLETE").is_file()
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy_significantly_better" in row for row in logged)
    summary = json.loads((out / "summary.json").read_text())

    report = tmp_path / "eval.json"
    assert main(["rm", "eval", "--model", str(out), "--data", str(held), "--margin",
                 "llama2-small", "--out", str(report), "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "significantly_better" in printed
    metrics = json.loads(report.read_text())
    assert metrics["n_prompts"] == 8 and metrics["n_pairs"] == 4 * 3 + 4
    assert set(metrics["buckets"]) <= {*STRENGTHS, "unlabeled"}
    assert metrics["buckets"]["better"]["n_pairs"] >= 1
    assert metrics["loss"] == pytest.approx(summary["eval"]["loss"], abs=1e-5)  # same formula
    assert metrics["accuracy"] == summary["eval"]["accuracy"]

    records = [
        {"prompt": "Say cat", "response": "please the cat", "safety": True, "id": 1},
        {"prompt": "Say dog", "response": "the dog ran", "id": 2},
        {"prompt": "Say mat", "response": "please please mat", "safety": False, "id": 3},
    ]
    data = write_jsonl(tmp_path / "gen.jsonl", records)
    scored = tmp_path / "scored.jsonl"
    assert main(["score", "--data", str(data), "--rm", f"helpfulness={out}", "--rm",
                 f"safety={out / 'epoch-1'}", "--combine", "llama2", "--out", str(scored),
                 "--device", "cpu"]) == 0  # fmt: skip
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert all(set(r["scores"]) == {"helpfulness", "safety"} for r in rows)
    assert abs(sum(r["score"] for r in rows)) < 1e-4  # whitened over the file
    # both RMs are the same final weights (epoch-1 = end of the single epoch)
    assert all(r["scores"]["helpfulness"] == pytest.approx(r["scores"]["safety"]) for r in rows)
    assert main(["score", "--data", str(data), "--rm", str(out), "--out", str(scored),
                 "--device", "cpu"]) == 2  # exists, no --overwrite  # fmt: skip
    assert main(["score", "--data", str(data), "--rm", str(out), "--out", str(scored),
                 "--device", "cpu", "--overwrite"]) == 0  # fmt: skip
    single = [json.loads(x) for x in scored.read_text().splitlines()]
    assert [r["score"] for r in single] == [r["scores"]["reward"] for r in single]


# ---------------------------------------------------------------- DDP


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_step_like_one_with_twice_the_prompts(base, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(root / "src"))  # fmt: skip
    # uneven K (2..5) per prompt: ranks see different numbers of responses and pairs
    rows = [keyword_rankings(1, 2 + i % 4, seed=i)[0] for i in range(16)]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    opts = ["--lr", "1e-2", "--schedule", "constant", "--warmup-steps", "0", "--head-init",
            "normal", "--eval-data", str(data)]  # fmt: skip
    cli = [sys.executable, "-m", "rlhfkit.cli"]
    one = _rm_args(base, [data], tmp_path / "one", *opts, "--batch-size", "8")
    subprocess.run([*cli, *one], env=env, check=True, capture_output=True)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "rlhfkit.cli"]  # fmt: skip
    two = _rm_args(base, [data], tmp_path / "two", *opts, "--batch-size", "4")
    r = subprocess.run([*ddp, *two], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    model, _ = init_reward_model(base, head_init="normal", seed=0)
    w0 = model.state_dict()
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert_same_training(w1, w2, {k: w0[k] for k in w1}, rel=1e-2)  # Adam: see above
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"] == 2
    assert s2["eval"]["n_prompts"] == 16 and s2["eval"]["n_pairs"] == s1["eval"]["n_pairs"]
    assert s2["eval"]["loss"] == pytest.approx(s1["eval"]["loss"], abs=1e-3)


# ---------------------------------------------------------------- formats people already have


def _preference_rows(fmt: str, n: int) -> list[dict]:
    """Pairwise rows in one of TRL's / Anthropic's shapes: chosen says "please"."""
    rng = random.Random(7)
    rows = []
    for i in range(n):
        q = f"say {rng.choice(FILL)} {i}"
        good = " ".join(["please", *rng.sample(FILL, 3)])
        bad = " ".join(rng.sample(FILL, 3))
        if fmt == "trl_explicit":
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})  # fmt: skip
        elif fmt == "trl_implicit":
            conv = [{"role": "system", "content": "be kind"}, {"role": "user", "content": q}]
            rows.append({"chosen": conv + [{"role": "assistant", "content": good}],
                         "rejected": conv + [{"role": "assistant", "content": bad}]})  # fmt: skip
        elif fmt == "strings_implicit":
            rows.append({"chosen": f"Q: {q}\nA: {good}", "rejected": f"Q: {q}\nA: {bad}"})
        else:  # hh_rlhf
            head = f"\n\nHuman: {q}\n\nAssistant:"
            rows.append({"chosen": f"{head} {good}", "rejected": f"{head} {bad}"})
    return rows


@pytest.mark.parametrize("fmt", ["trl_explicit", "trl_implicit", "strings_implicit", "hh_rlhf"])
def test_cli_rm_trains_on_trl_and_anthropic_formats(base, tmp_path, capsys, fmt):
    data = write_jsonl(tmp_path / f"{fmt}.jsonl", _preference_rows(fmt, 8))
    out = tmp_path / "rm"
    args = _rm_args(base, [data], out, "--eval-data", str(data), "--epochs", "1",
                    "--batch-size", "4", "--lr", "1e-3")  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "rlhfkit_reward.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["eval"]["n_prompts"] == 8 and summary["eval"]["n_pairs"] == 8
    report = tmp_path / "eval.json"
    assert main(["rm", "eval", "--model", str(out), "--data", str(data), "--out", str(report),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads(report.read_text())["n_pairs"] == 8


def test_rm_trains_without_dropout_and_saves_config_with_0(gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    out = tmp_path / "rm"
    assert main(_rm_args(gpt2_dir, [data], out, "--max-steps", "2", "--batch-size", "4")) == 0
    saved = json.loads((out / "config.json").read_text())
    assert all(saved[k] == 0.0 for k in PDROP), {k: saved[k] for k in PDROP}
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    a, b = two_train_forwards(hf)
    assert a == b
    # the LM folder it started from keeps its dropout (SFT trains with it)
    assert json.loads((gpt2_dir / "config.json").read_text())["resid_pdrop"] == 0.1
