"""loops/rejection/loop.py, `rlhfkit rs` on a tiny model: one round raising a rule reward,
the command's files, llama2-combined RMs unwhitened, resume after kills while sampling and
while fine-tuning, and errors. The selection itself: test_keep.py."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import make_base_model, write_jsonl

from rlhfkit import cli
from rlhfkit.data.records import read_prompts
from rlhfkit.loops.rejection import samples as rejection_samples
from rlhfkit.loops.rejection.samples import SamplingSettings, sample_batch
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.models.reward import init_reward_model
from rlhfkit.sampling.generator import make_generator
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.scoring.rules import rule_scorer

ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------------------
# On a tiny model
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    """A base policy, two RMs from it, world prompts (train / eval)."""
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record

    root = tmp_path_factory.mktemp("rs")
    base = make_base_model(root / "base", tiny_tokenizer, preset="test")
    model = load_causal_lm(base)
    for name, seed in (("help", 1), ("safe", 2)):
        rm, rm_tok = init_reward_model(
            model, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=seed
        )
        save_hf(rm, rm_tok, root / f"rm_{name}")
    made = make_prompts(48, WorldSettings(), random.Random(0), set(), unique=True)
    recs = [prompt_record(name, q) for name, q, _ in made]
    return {
        "root": root,
        "base": base,
        "rm_help": root / "rm_help",
        "rm_safe": root / "rm_safe",
        "prompts": write_jsonl(root / "prompts.jsonl", recs[:32]),
        "eval": write_jsonl(root / "eval.jsonl", recs[32:40]),
    }


def _args(files, out, *extra) -> list[str]:
    # --keep-truncated: the random base policy almost never samples EOS within 8 tokens
    # (p ~ 1/512 a token), so by default every prompt would be dropped; the default is
    # tested on a policy that ends half its samples (test_truncated_best_samples_...)
    return [
        "rs", "--policy", str(files["base"]), "--prompts", str(files["prompts"]),
        "--out", str(out), "--device", "cpu", "--max-new-tokens", "8", "--k", "4",
        "--keep-truncated", *extra,
    ]  # fmt: skip


def _mean_fresh_reward(path, prompts, scorer, seed: int = 123) -> float:
    """Mean reward of 16 fresh samples per prompt from the model at `path`, fixed seed."""
    tok = load_tokenizer(path)
    s = SamplingSettings(k=16, temperature=1.0, max_new_tokens=8)
    recs = sample_batch(
        make_generator(load_causal_lm(path), tok), tok, prompts, encode_prompts(prompts, tok, 128),
        scorer, s, torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return fmean(x for r in recs for x in r.scores)


def test_one_round_raises_the_mean_reward_of_the_policys_samples(files, tmp_path, capsys):
    """Reward: the count of the letter "e" in the response. Best of 8, then 8 epochs of SFT
    on the kept responses: fresh samples (same seed) have more e's than before (measured
    here: 1.44 -> 2.03; the spread over sampling seeds is about 0.05)."""
    out = tmp_path / "rs"
    argv = _args(files, out, "--rule-reward", "count:e", "--k", "8", "--rounds", "1",
                 "--lr", "5e-3", "--epochs", "8")  # fmt: skip
    assert cli.main(argv) == 0
    stats = json.loads((out / "round-1" / "stats.json").read_text())
    assert stats["mean_reward_kept"] > stats["mean_reward_all"]
    prompts, scorer = read_prompts(files["prompts"]), rule_scorer("count:e")
    before = _mean_fresh_reward(files["base"], prompts, scorer)
    after = _mean_fresh_reward(out, prompts, scorer)
    print(f"mean reward of fresh samples: {before:.3f} -> {after:.3f}")
    assert after > before + 0.2, (before, after)


def test_command_writes_rounds_stats_plot_and_an_evaluable_policy(files, tmp_path, capsys):
    out = tmp_path / "rs"
    argv = _args(files, out, "--rule-reward", "count:e", "--rounds", "2", "--temperature", "0.7",
                 "1.0", "--keep", "best-of-all-rounds", "--eval-prompts", str(files["eval"]),
                 "--sample-batch-size", "40", "--batch-size", "4")  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "eval (initial policy)" in printed and "eval (after round 2)" in printed
    n = len(read_prompts(files["prompts"]))
    for r, temp in ((1, 0.7), (2, 1.0)):
        rdir = out / f"round-{r}"
        samples = [json.loads(x) for x in (rdir / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == n
        for row in samples:
            assert len(row["responses"]) == len(row["scores"]) == 4
            assert row["best"] == max(range(4), key=lambda i: (row["scores"][i], -i))
            assert row["scores"] == [float(x.count("e")) for x in row["responses"]]
        kept = [json.loads(x) for x in (rdir / "kept.jsonl").read_text().splitlines()]
        assert [k["prompt"] for k in kept] == [s["prompt"] for s in samples]
        stats = json.loads((rdir / "stats.json").read_text())
        assert stats["temperature"] == temp and stats["k"] == 4
        assert [row["k"] for row in stats["max_median_at_k"]] == [1, 2, 3, 4]
        assert stats["mean_reward_kept"] >= stats["mean_reward_best_of_round"] - 1e-9
        assert "gold_all" in stats and "gold_kept" in stats and "eval" in stats
        assert stats["train"]["steps"] == 8  # 32 kept examples / batch 4, one epoch
        assert (rdir / "model.safetensors").is_file()
        assert not (rdir / "train" / "epoch-1").exists()  # pruned once the round finished
    # best-of-all-rounds: round 2 keeps, per prompt, the max over both rounds
    r1 = [json.loads(x) for x in (out / "round-1" / "samples.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (out / "round-2" / "samples.jsonl").read_text().splitlines()]
    kept2 = [json.loads(x) for x in (out / "round-2" / "kept.jsonl").read_text().splitlines()]
    for a, b, k in zip(r1, r2, kept2, strict=True):
        assert k["score"] == max(a["scores"] + b["scores"])
        src = a if k["round"] == 1 else b
        assert src["responses"][k["index"]] == k["completion"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["eval_initial"]["n"] == 8 and summary["policy"] == str(out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "rs/mean_reward_kept" in rows[0]
    assert (out / "rs_max_median.png").read_bytes()[:4] == b"\x89PNG"
    # the final policy is round 2's, a plain HF folder at the top of --out
    final = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / "round-2" / "model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)
    eval_argv = ["eval", "--model", str(out), "--prompts", str(files["eval"]), "--device", "cpu",
                 "--max-new-tokens", "4"]  # fmt: skip
    assert cli.main(eval_argv) == 0


def test_llama2_combined_rms_score_unwhitened_per_the_rule(files, tmp_path):
    out = tmp_path / "rs"
    argv = _args(files, out, "--rm", f"helpfulness={files['rm_help']}", "--rm",
                 f"safety={files['rm_safe']}", "--combine", "llama2", "--rounds", "1",
                 "--max-prompts", "12", "--max-steps", "1")  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (out / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and any(r["safety"] for r in rows)
    for row in rows:
        for i, score in enumerate(row["scores"]):
            s_help, s_safe = row["per_rm"]["helpfulness"][i], row["per_rm"]["safety"][i]
            p_safe = torch.sigmoid(torch.tensor(s_safe, dtype=torch.float32))
            use_safety = row["safety"] or bool(p_safe < 0.15)
            assert score == (s_safe if use_safety else s_help)  # the raw score: no whitening
    stats = json.loads((out / "round-1" / "stats.json").read_text())
    assert set(stats["per_rm_all"]) == {"helpfulness", "safety"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_resume_after_kills_while_sampling_and_while_training(files, tmp_path, monkeypatch):
    """Kill 1: in round 2's sampling, after its first batch. Kill 2: in round 2's
    fine-tuning, right after the checkpoint of step 2. The resumed run redraws nothing
    and ends with the weights of an uninterrupted run."""
    import rlhfkit.models.checkpoint as checkpoint_mod

    extra = ["--rule-reward", "count:e", "--rounds", "2", "--keep", "best-of-all-rounds",
             "--sample-batch-size", "32", "--save-every", "2", "--batch-size", "4",
             "--max-prompts", "24", "--lr", "3e-3"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(_args(files, full, *extra)) == 0

    real_sample = rejection_samples.sample_batch
    calls = []

    def counted(*a, **kw):
        calls.append(1)
        if kill_at_call is not None and len(calls) == kill_at_call:
            raise KeyboardInterrupt
        return real_sample(*a, **kw)

    monkeypatch.setattr(rejection_samples, "sample_batch", counted)
    kill_at_call = 3 + 2  # 24 prompts / 8 per batch: 3 batches a round; die in round 2's 2nd
    assert cli.main(_args(files, cut, *extra)) == 130
    partial = cut / "round-2" / ".samples.jsonl.partial"
    assert (
        len(partial.read_text().splitlines()) == 8
        and not (cut / "round-2" / "samples.jsonl").exists()
    )
    round1 = (cut / "round-1" / "samples.jsonl").stat().st_mtime_ns

    save = checkpoint_mod.save_checkpoint

    def save_then_die(path, **kw):
        save(path, **kw)
        if "round-2" in str(path) and Path(path).name == "step-000002":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_die)
    calls.clear()
    kill_at_call = None
    assert cli.main(_args(files, cut, *extra, "--resume")) == 130
    assert len(calls) == 2  # only round 2's two missing batches were sampled
    assert (cut / "round-2" / "samples.jsonl").is_file() and not partial.exists()
    assert not (cut / "round-2" / "stats.json").exists()

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save)
    calls.clear()
    assert cli.main(_args(files, cut, *extra, "--resume")) == 0
    assert calls == []  # nothing redrawn
    assert (cut / "round-1" / "samples.jsonl").stat().st_mtime_ns == round1
    for name in ("samples.jsonl", "kept.jsonl"):
        a = (full / "round-2" / name).read_text()
        assert a == (cut / "round-2" / name).read_text(), name
    for folder in ("round-1", "round-2", "."):
        a, b = _weights(full / folder), _weights(cut / folder)
        for k in a:
            assert torch.equal(a[k], b[k]), (folder, k)
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # each round logged once
    s_full = json.loads((full / "summary.json").read_text())["rounds"]
    s_cut = json.loads((cut / "summary.json").read_text())["rounds"]
    assert [r["mean_reward_kept"] for r in s_full] == [r["mean_reward_kept"] for r in s_cut]


# ---------------------------------------------------------------------------------------
# Errors and help
# ---------------------------------------------------------------------------------------


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["rs", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--policy", "--rm", "--combine", "--rule-reward", "--prompts", "--k",
                 "--rounds", "--temperature", "--keep", "--max-new-tokens", "--epochs", "--lr",
                 "--resume", "--eval-prompts"):  # fmt: skip
        assert flag in text, flag
    cli.main(["--help"])
    assert "rs " in capsys.readouterr().out


def test_malformed_prompt_file_is_a_file_line_error_before_any_output(files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q: fine\\nA:"}\n{"prompt": "Q: x\\nA:", "safety": "yes"}\n')
    out = tmp_path / "never"
    assert cli.main(_args(files, out, "--rule-reward", "length", "--prompts", str(bad))) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "safety" in err and "Traceback" not in err
    assert not out.exists()
    bad.write_text('{"prompt": "Q: fine\\nA:"}\nnot json\n')
    assert cli.main(_args(files, out, "--rule-reward", "length", "--prompts", str(bad))) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not out.exists()


def test_bad_options_are_user_errors_before_any_output(files, tmp_path, capsys):
    out = tmp_path / "never"
    both = ["--rule-reward", "length", "--rm", f"helpfulness={files['rm_help']}"]
    assert cli.main(_args(files, out, *both)) == 2
    assert "one of them" in capsys.readouterr().err
    temps = ["--rule-reward", "length", "--rounds", "3", "--temperature", "0.5", "1.0"]
    assert cli.main(_args(files, out, *temps)) == 2
    assert "one per round" in capsys.readouterr().err
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "not a world prompt"}])
    assert cli.main(_args(files, out, "--rule-reward", "gold", "--prompts", str(plain))) == 2
    assert "p.jsonl:1" in capsys.readouterr().err
    assert cli.main(_args(files, out, "--rule-reward", "length", "--min-gap", "-1")) == 2
    assert "--min-gap must be >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_min_gap_fine_tunes_only_on_confident_prompts(files, tmp_path, capsys):
    """count:e rewards are small integers: with --min-gap 1 only prompts whose best sample
    has at least one more "e" than the median sample are kept; the gaps are recomputed
    here from samples.jsonl."""
    out = tmp_path / "rs"
    argv = _args(files, out, "--rule-reward", "count:e", "--rounds", "1", "--min-gap", "1")
    assert cli.main(argv) == 0
    rdir = out / "round-1"
    samples = [json.loads(x) for x in (rdir / "samples.jsonl").read_text().splitlines()]
    kept = [json.loads(x) for x in (rdir / "kept.jsonl").read_text().splitlines()]
    want = []
    for s in samples:
        ordered = sorted(s["scores"])
        med = (ordered[1] + ordered[2]) / 2  # K = 4
        if max(s["scores"]) - med >= 1:
            want.append((s["prompt"], max(s["scores"]) - med))
    assert 0 < len(want) < len(samples)
    assert [(k["prompt"], k["gap"]) for k in kept] == want
    assert json.loads((rdir / "stats.json").read_text())["kept_prompts"] == len(want)
    assert f"fine-tuning on {len(want)} of {len(samples)} prompts" in capsys.readouterr().out
    # nothing passes: a clear error, not an empty fine-tune
    argv = _args(files, tmp_path / "none", "--rule-reward", "count:e", "--min-gap", "1000")
    assert cli.main(argv) == 2
    assert "--min-gap 1000" in capsys.readouterr().err


def test_kl_coef_and_add_greedy_keep_the_likeliest_top_candidate(files, tmp_path, capsys):
    """--kl-coef with --add-greedy: round-N/greedy.jsonl holds the policy's greedy response
    (temperature 0: the same as a fresh greedy call); every sample and the greedy one carry
    log pi(y|x); kept.jsonl is the naive argmax of reward + beta log pi over the K + 1
    candidates, recomputed from the files; samples drawn without log-probs are refused
    on resume."""
    out = tmp_path / "rs"
    argv = _args(files, out, "--rule-reward", "count:e", "--rounds", "1", "--kl-coef", "0.5",
                 "--add-greedy", "--max-prompts", "16", "--eval-prompts", str(files["eval"]))  # fmt: skip
    assert cli.main(argv) == 0
    rdir = out / "round-1"
    samples = _rows(rdir / "samples.jsonl")
    greedy = _rows(rdir / "greedy.jsonl")
    kept = _rows(rdir / "kept.jsonl")
    assert len(samples) == len(greedy) == len(kept) == 16
    prompts = read_prompts(files["prompts"])[:16]
    tok = load_tokenizer(files["base"])
    fresh = sample_batch(
        make_generator(load_causal_lm(files["base"]), tok), tok, prompts,
        encode_prompts(prompts, tok, 128), rule_scorer("count:e"),
        SamplingSettings(k=1, temperature=0.0, max_new_tokens=8), None,
    )  # fmt: skip
    assert [g["responses"] for g in greedy] == [f.responses for f in fresh]
    n_greedy = 0
    for s, g, k in zip(samples, greedy, kept, strict=True):
        assert len(s["logprobs"]) == 4 and len(g["logprobs"]) == 1
        assert all(lp < 0 for lp in s["logprobs"] + g["logprobs"])
        cands = list(zip(s["responses"] + g["responses"], s["scores"] + g["scores"],
                         s["logprobs"] + g["logprobs"], strict=True))  # fmt: skip
        values = [r + 0.5 * lp for _, r, lp in cands]
        i = values.index(max(values))
        assert (k["index"], k["completion"], k["score"]) == (i, cands[i][0], cands[i][1])
        n_greedy += i == 4
    stats = json.loads((rdir / "stats.json").read_text())
    assert stats["kept_greedy"] == n_greedy and "mean_reward_greedy" in stats
    assert f"({n_greedy} of them the greedy response)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kl_coef"], summary["add_greedy"]) == (0.5, True)
    # resume with --kl-coef over samples drawn without log-probs: exit 2, no traceback
    plain = tmp_path / "plain"
    base_args = _args(files, plain, "--rule-reward", "count:e", "--rounds", "2",
                      "--max-prompts", "8")  # fmt: skip
    assert cli.main([*base_args, "--max-steps", "1"]) == 0
    (plain / "round-2" / "stats.json").unlink()
    for f in (plain / "round-2").glob("*.jsonl"):
        f.unlink()
    (plain / "round-2" / "samples.jsonl").write_text(
        (plain / "round-1" / "samples.jsonl").read_text()
    )
    capsys.readouterr()
    assert cli.main([*base_args, "--resume", "--kl-coef", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "without log-probs" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------
# Samples cut at --max-new-tokens (no EOS)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ending_policy(files, tiny_tokenizer):
    """The test model made to sample EOS about half the time within 8 tokens: hidden
    dimension 0 of every embedding is a constant 10, so after the final norm it is about
    sqrt(hidden); the (tied) EOS row gets 0.7 more there, +4 on EOS's logit."""
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[tiny_tokenizer.eos_token_id, 0] = 10.7
    save_hf(model, tiny_tokenizer, files["root"] / "ending")
    return files["root"] / "ending"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_truncated_best_samples_are_dropped_by_default(files, ending_policy, tmp_path, capsys):
    """A kept sample that hit --max-new-tokens without EOS would be trained with an EOS it
    never produced: by default its prompt sits the round out (`truncated_dropped`);
    --keep-truncated keeps it, trained without EOS (`kept_truncated`)."""
    base = ["--policy", str(ending_policy), "--rule-reward", "count:e", "--rounds", "1",
            "--max-steps", "1"]  # fmt: skip
    default = [a for a in _args(files, tmp_path / "drop", *base) if a != "--keep-truncated"]
    assert cli.main(default) == 0
    rdir = tmp_path / "drop" / "round-1"
    samples, kept = _rows(rdir / "samples.jsonl"), _rows(rdir / "kept.jsonl")
    for row in samples:  # "ended" is saved, and agrees with the token counts
        assert row["ended"] == [t < 8 for t in row["response_tokens"]]
    best_cut = [not row["ended"][row["best"]] for row in samples]
    assert 0 < sum(best_cut) < len(samples), "the fixture should end some best samples"
    assert [k["prompt"] for k in kept] == [
        row["prompt"] for row, cut in zip(samples, best_cut, strict=True) if not cut
    ]
    assert all(k["ended"] for k in kept)
    stats = json.loads((rdir / "stats.json").read_text())
    assert stats["truncated_dropped"] == sum(best_cut) and stats["kept_truncated"] == 0
    assert stats["kept_prompts"] == len(samples) - sum(best_cut)
    assert 0 < stats["truncated_rate_all"] < 1
    summary = json.loads((tmp_path / "drop" / "summary.json").read_text())
    assert summary["rounds"][0]["truncated_dropped"] == sum(best_cut)

    keep = _args(files, tmp_path / "keep", *base)  # --keep-truncated
    assert cli.main(keep) == 0
    rdir = tmp_path / "keep" / "round-1"
    kept = _rows(rdir / "kept.jsonl")
    assert len(kept) == len(samples) and sum(not k["ended"] for k in kept) == sum(best_cut)
    stats = json.loads((rdir / "stats.json").read_text())
    assert stats["truncated_dropped"] == 0 and stats["kept_truncated"] == sum(best_cut)

    # a policy that never ends within --max-new-tokens: nothing to train on, said clearly
    never = [a for a in _args(files, tmp_path / "never", "--rule-reward", "count:e")
             if a != "--keep-truncated"]  # fmt: skip
    assert cli.main(never) == 2
    err = capsys.readouterr().err
    assert "hit --max-new-tokens 8 before EOS" in err and "--keep-truncated" in err


# ---------------------------------------------------------------------------------------
# A real kill
# ---------------------------------------------------------------------------------------


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_run_resumed_equals_uninterrupted(files, tmp_path):
    """`rlhfkit rs` killed with SIGKILL during round 2's fine-tuning, then --resume."""
    import signal
    import time

    extra = ["--rule-reward", "count:e", "--rounds", "2", "--save-every", "1", "--epochs", "3",
             "--batch-size", "2", "--lr", "3e-3"]  # fmt: skip
    cmd = [sys.executable, "-m", "rlhfkit.cli"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*cmd, *_args(files, full, *extra)], env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, *_args(files, cut, *extra)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    marker = cut / "round-2" / "train" / "checkpoints" / "step-000003" / "COMPLETE"
    while not marker.exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "round-2" / "stats.json").exists(), "killed too late"
    round1 = (cut / "round-1" / "samples.jsonl").stat().st_mtime_ns
    subprocess.run(
        [*cmd, *_args(files, cut, *extra, "--resume")], env=_env(), check=True, capture_output=True
    )
    assert (cut / "round-1" / "samples.jsonl").stat().st_mtime_ns == round1
    a, b = _weights(full), _weights(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k
