"""`rlhfkit dpo`: the first step's loss against an explicit loop over pairs with a forward
per response per pair; K forwards per prompt per model and the reference's log-probs
computed once; learning on separable pairs (held-out preference accuracy 0 -> ~1, loss
below log 2 and falling); Llama-, Qwen2- and GPT-2-shaped models; LoRA; a run killed and
resumed ends bit-identical; every preference format; bad input; 2 processes (DDP, FSDP2)
step like one."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.cli import main
from rlhfkit.config import DPOConfig
from rlhfkit.data.dpo_data import encode_preferences
from rlhfkit.distributed import Dist
from rlhfkit.loops.dpo import DPORun, accumulate_gradients, evaluate_dpo, fit_dpo
from rlhfkit.loops.dpo_reference import CACHE, collate, compute_reference, response_logprobs
from rlhfkit.loops.lm import head_rows_work
from rlhfkit.models.presets import build_model
from rlhfkit.ops.logprobs import shifted_token_logprobs
from rlhfkit.types import IGNORE_INDEX
from tests.helpers import CHAIN_ARCH, assert_same_training, make_base_model, write_jsonl
from tests.loops.reward.test_train import FILL, _preference_rows, keyword_rankings, records_of

ROOT = Path(__file__).resolve().parents[2]


def please_pairs(n: int, seed: int) -> list[dict]:
    """Separable pairs: the chosen response says "please", the rejected one does not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILL) for _ in range(3)]
        chosen = words[:]
        chosen.insert(rng.randint(0, 3), "please")
        rows.append({"prompt": f"Say {rng.choice(FILL)} {i}", "chosen": " ".join(chosen),
                     "rejected": " ".join(words)})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_base_model(tmp_path_factory.mktemp("dpo") / "base", tiny_tokenizer)


def _args(base, data, out, *extra) -> list[str]:
    return ["dpo", "--model", str(base), "--data", *map(str, data), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip


def _logged(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the math of a step


def _seq_logprob(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    """log pi(y | x) of one sequence alone: its own forward, full logits, a plain sum."""
    x = torch.tensor([ids])
    logprobs = shifted_token_logprobs(model(input_ids=x).logits, x)[0]  # (T - 1,)
    return sum(lp for lp, lab in zip(logprobs, labels[1:], strict=True) if lab != IGNORE_INDEX)


def _explicit_pair_loop_loss(policy, reference, examples, beta):
    """Every pair of every prompt with its own forwards of both responses under both models
    (the naive 4 forwards per pair): mean over prompts of the mean over its pairs of
    -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))."""
    per_prompt = []
    for ex in examples:
        terms = []
        for w, lo in ex.pairs:
            sw, sl = ex.sequences[w], ex.sequences[lo]
            h = (_seq_logprob(policy, sw.input_ids, sw.labels)
                 - _seq_logprob(reference, sw.input_ids, sw.labels)
                 - _seq_logprob(policy, sl.input_ids, sl.labels)
                 + _seq_logprob(reference, sl.input_ids, sl.labels))  # fmt: skip
            terms.append(-F.logsigmoid(beta * h))
        assert len(terms) == math.comb(len(ex.sequences), 2)
        per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


def _count_rows(model) -> dict[str, int]:
    """Count forward calls of `model` and the sequences (rows) they carry."""
    seen = {"calls": 0, "rows": 0}
    forward = model.forward

    def counting(*args, **kwargs):
        seen["calls"] += 1
        seen["rows"] += kwargs["input_ids"].shape[0]
        return forward(*args, **kwargs)

    model.forward = counting
    return seen


@pytest.mark.parametrize("ks", [(4, 4, 4), (4, 9, 2)])
def test_k_forwards_per_prompt_reference_once_and_first_loss_is_the_pair_loop(
    base, tiny_tokenizer, tmp_path, ks
):
    tok = tiny_tokenizer
    rows = [keyword_rankings(1, k, seed=i)[0] for i, k in enumerate(ks)]
    held = keyword_rankings(2, 3, seed=9)
    train, _ = encode_preferences(records_of(rows), tok, 256)
    evals, _ = encode_preferences(records_of(held), tok, 256, first=sum(ks))
    policy = AutoModelForCausalLM.from_pretrained(base)
    reference = build_model("test", tok, seed=1).eval()  # another model: the loss is not log 2
    expected = _explicit_pair_loop_loss(policy, reference, train, 0.5).item()
    head_rows_work(policy), head_rows_work(reference)  # probe once, before counting
    seen_policy, seen_ref = _count_rows(policy), _count_rows(reference)

    cfg = DPOConfig(out=str(tmp_path), batch_size=len(ks), epochs=2, log_every=1, beta=0.5,
                    lr=1e-3, warmup_steps=0, packing=False)  # fmt: skip
    run = DPORun(policy, tok, train, evals, tmp_path, reference=reference, packing=False)
    summary = fit_dpo(run, cfg)
    # the reference: one pass over every train and eval response, never again
    assert seen_ref == {"calls": 2, "rows": sum(ks) + 6}
    assert (tmp_path / CACHE).is_file()
    # the policy: one forward per response per step (2 epochs x 1 step), and per evaluation
    assert seen_policy == {"calls": 2 + 2, "rows": 2 * sum(ks) + 2 * 6}
    assert summary["pairs"] == sum(math.comb(k, 2) for k in ks) and summary["steps"] == 2
    assert summary["eval"]["n_pairs"] == 2 * 3 and summary["eval"]["n_prompts"] == 2
    assert _logged(tmp_path)[0]["train/loss"] == pytest.approx(expected, abs=1e-5)


def test_packed_and_padded_forwards_agree_and_accumulation_changes_nothing(
    base, tiny_tokenizer, tmp_path
):
    tok = tiny_tokenizer
    examples, _ = encode_preferences(records_of(keyword_rankings(4, 3, seed=2)), tok, 256)
    policy = AutoModelForCausalLM.from_pretrained(base)
    reference = build_model("test", tok, seed=1).eval()
    ref = compute_reference(reference, examples, pad_id=tok.pad_token_id, packing=True,
                            max_len=256, batch_size=3, bf16=False, dist=Dist(),
                            device=torch.device("cpu"))  # fmt: skip
    padded = collate(examples, tok.pad_token_id, False, 256, torch.device("cpu"))
    packed = collate(examples, tok.pad_token_id, True, 256, torch.device("cpu"))
    with torch.no_grad():
        a, b = response_logprobs(policy, padded, False), response_logprobs(policy, packed, False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    cfg = DPOConfig(out=str(tmp_path), beta=0.3)
    grads = []
    for packing, micro in ((True, [examples]), (False, [[ex] for ex in examples]),
                           (True, [examples[:1], examples[1:]])):  # fmt: skip
        run = DPORun(policy, tok, examples, packing=packing)
        sums = accumulate_gradients(policy, micro, len(examples), run, ref, cfg)
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters()})
        policy.zero_grad()
        assert sums[0] / sums[1] > 0  # loss of 4 prompts
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, atol=1e-6, rtol=1e-4, msg=name)


# ---------------------------------------------------------------- learning


def test_cli_learns_separable_pairs_accuracy_rises_and_loss_falls(base, tiny_tokenizer, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", please_pairs(48, seed=0))
    held = write_jsonl(tmp_path / "held.jsonl", please_pairs(16, seed=1))
    out = tmp_path / "dpo"
    args = _args(base, [train], out, "--eval-data", str(held), "--epochs", "3", "--lr", "2e-3", "--beta", "0.5",
                 "--log-every", "1")  # fmt: skip
    assert main(args) == 0

    # before training: the policy is the reference, every implicit reward 0
    from rlhfkit.data.preferences import read_preferences

    ref = load_file(str(out / CACHE))["logprobs"]  # train then held-out responses
    examples, _ = encode_preferences(read_preferences(held), tiny_tokenizer, 256, first=48 * 2)
    start = AutoModelForCausalLM.from_pretrained(base)
    cfg = DPOConfig(out=str(out))
    before = evaluate_dpo(start, examples, DPORun(start, tiny_tokenizer, []), ref, cfg)
    # every margin 0 up to float rounding (the cache and this pass batch differently), so
    # not `accuracy == 0`: a margin of +1e-7 counts as a win (1 of 16 with AVX2 kernels)
    assert before["margin"] == pytest.approx(0, abs=1e-4)
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    evals = [row["eval"] for row in summary["epochs"]]
    losses = [e["loss"] for e in evals]
    assert losses == sorted(losses, reverse=True) and losses[-1] < math.log(2) - 0.1
    assert evals[-1]["accuracy"] >= 0.9  # from 0
    assert evals[-1]["margin"] > evals[0]["margin"] > 0
    assert evals[-1]["chosen_reward"] > evals[-1]["rejected_reward"]
    assert summary["cpu_seconds"] > 0 and summary["reference"] == str(base)
    logged = _logged(out)
    assert logged[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference
    assert any("eval/chosen_logprob" in row for row in logged)
    assert any((out / "tensorboard").iterdir())
    for folder in (out, out / "epoch-1", out / "epoch-3"):  # plain HF causal LM folders
        assert AutoModelForCausalLM.from_pretrained(folder) is not None
    final = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / "epoch-3" / "model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)


# ---------------------------------------------------------------- families, LoRA


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2", "gpt2", "opt"])
def test_families_train_packed_with_the_first_loss_log_2(arch, tiny_tokenizer, tmp_path):
    """Packed where the probe finds packed sequences kept apart; OPT mixes them: padded."""
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset=CHAIN_ARCH[arch]())
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(8, 3, seed=4))
    out = tmp_path / "out"
    assert main(_args(base, [data], out, "--max-steps", "2", "--log-every", "1", "--lr",
                      "1e-3", "--batch-size", "4")) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["packing"] is (arch != "opt") and summary["steps"] == 2
    # dropout off (GPT-2's and OPT's 0.1 included): at step 1 the policy IS the reference
    assert _logged(out)[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    w0, w1 = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(not torch.equal(w0[k], w1[k]) for k in w1 if w1[k].dtype.is_floating_point)


def test_gradient_checkpointing_changes_nothing_and_bf16_runs(base, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(8, 3, seed=7))
    opts = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--log-every", "1"]
    for name, extra in (("plain", []), ("gc", ["--gradient-checkpointing"]), ("bf16", ["--bf16"])):
        assert main(_args(base, [data], tmp_path / name, *opts, *extra)) == 0
    w0 = load_file(str(base / "model.safetensors"))
    plain, gc = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("plain", "gc"))
    assert_same_training(plain, gc, {k: w0[k] for k in plain}, rel=1e-3)
    logged = _logged(tmp_path / "bf16")
    assert logged[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-2)
    assert math.isfinite(logged[-1]["train/loss"])


def test_lora_reference_is_the_adapter_off_policy_and_exports_merged(base, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", please_pairs(8, seed=5))
    out = tmp_path / "lora"
    assert main(_args(base, [data], out, "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2",
                      "--batch-size", "4", "--epochs", "2", "--log-every", "1")) == 0  # fmt: skip
    logged = _logged(out)
    assert logged[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logged[-1]["train/loss"] < math.log(2)
    w0, w1 = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(w0) == set(w1)  # merged: a plain model, no adapter keys
    assert any(not torch.equal(w0[k], w1[k]) for k in w1)
    # the reference cache was computed before any update: equal to the base model's
    ref = load_file(str(out / CACHE))["logprobs"]
    plain = tmp_path / "plain"
    assert main(_args(base, [data], plain, "--max-steps", "1")) == 0
    torch.testing.assert_close(ref, load_file(str(plain / CACHE))["logprobs"])


# ---------------------------------------------------------------- nothing is lost


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))  # fmt: skip


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlhfkit.cli", *args]


RESUME_OPTS = ["--epochs", "2", "--batch-size", "4", "--save-every", "3", "--lr", "1e-3",
               "--eval-fraction", "0.25"]  # fmt: skip


def _assert_same_run(full: Path, other: Path) -> None:
    for epoch in (1, 2):  # one thread, same seed: bit-identical on CPU
        a = load_file(str(full / f"epoch-{epoch}" / "model.safetensors"))
        b = load_file(str(other / f"epoch-{epoch}" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), (other.name, epoch)
    s_full = json.loads((full / "summary.json").read_text())
    s_other = json.loads((other / "summary.json").read_text())
    assert s_other["steps"] == s_full["steps"] == 12 and s_other["eval"] == s_full["eval"]


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    data = write_jsonl(root / "r.jsonl", keyword_rankings(32, 2, seed=6))
    assert main(_args(base, [data], root / "full", *RESUME_OPTS)) == 0
    return data, root / "full"


def test_resume_is_bit_identical_with_or_without_the_reference_cache(
    base, uninterrupted, tmp_path, capsys
):
    data, full = uninterrupted
    part = tmp_path / "part"
    assert main(_args(base, [data], part, *RESUME_OPTS, "--max-steps", "5")) == 0  # mid-epoch 1
    assert (part / "checkpoints" / "step-000005" / "COMPLETE").is_file()
    # a copy without the cache: the reference (--model) is loaded again for one pass
    bare = tmp_path / "bare"
    shutil.copytree(part, bare)
    shutil.rmtree(bare / Path(CACHE).parent)
    capsys.readouterr()
    for folder, cached in ((part, True), (bare, False)):
        assert main(_args(base, [data], folder, *RESUME_OPTS, "--resume")) == 0
        printed = capsys.readouterr().out
        assert "resuming from" in printed and ("read from" in printed) == cached
        _assert_same_run(full, folder)


@pytest.mark.slow  # ~2 min on 2 busy cores (3 interpreters); the resume itself: above
@pytest.mark.timeout(400)
def test_killed_and_resumed_is_bit_identical(base, uninterrupted, tmp_path):
    data, full = uninterrupted
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(_args(base, [data], out, *RESUME_OPTS)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 200
    while not (out / "checkpoints" / "step-000003" / "COMPLETE").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "epoch-2").exists(), "killed too late to test anything"
    r = subprocess.run(_cmd(_args(base, [data], out, *RESUME_OPTS, "--resume")), env=_env(),
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout and "reference log-probs read from" in r.stdout
    _assert_same_run(full, out)


# ---------------------------------------------------------------- formats, bad input, help


@pytest.mark.parametrize("fmt", ["trl_explicit", "trl_implicit", "strings_implicit", "hh_rlhf"])
def test_cli_reads_trl_and_anthropic_formats(base, tmp_path, fmt):
    data = write_jsonl(tmp_path / f"{fmt}.jsonl", _preference_rows(fmt, 8))
    out = tmp_path / "dpo"
    assert main(_args(base, [data], out, "--eval-data", str(data), "--batch-size", "4")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["pairs"] == 8
    assert summary["eval"]["n_pairs"] == 8


def test_bad_record_and_overlong_fail_with_file_line_before_anything_is_written(
    base, tmp_path, capsys
):
    good = write_jsonl(tmp_path / "good.jsonl", please_pairs(3, seed=0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [please_pairs(1, 1)[0], {"prompt": "p"}])
    assert main(_args(base, [good, bad], tmp_path / "o")) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert main(_args(base, [good], tmp_path / "o", "--max-len", "4", "--overlong", "error")) == 2
    assert f"{good}:1:" in capsys.readouterr().err
    assert main(_args(base, [good], tmp_path / "o", "--beta", "0")) == 2
    assert "--beta" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["dpo", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--model", "--reference", "--data", "--eval-data", "--eval-fraction", "--loss",
                 "--beta", "--max-len", "--packing", "--lora-r", "--strategy", "--resume",
                 "--save-every", "--gradient-checkpointing", "--bf16"):  # fmt: skip
        assert flag in text, flag


# ---------------------------------------------------------------- two processes


@pytest.mark.slow  # ~2 min on 2 cores: `make test-slow`
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("strategy", "lora"), [("ddp", False), ("fsdp2", False), ("fsdp2", True)])
def test_two_processes_step_like_one_with_twice_the_prompts(base, tmp_path, strategy, lora):
    # uneven K (2..5): ranks see different numbers of responses and pairs
    rows = [keyword_rankings(1, 2 + i % 4, seed=i)[0] for i in range(16)]
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    # 9 held out: the ranks' shares of the reference pass (25 prompts) and of evaluation
    # take 3 and 4, 1 and 2 micro-batches (FSDP2's collective forwards must still match)
    held = write_jsonl(tmp_path / "h.jsonl", keyword_rankings(9, 3, seed=99))
    opts = ["--lr", "1e-2", "--schedule", "constant", "--warmup-steps", "0", "--eval-data",
            str(held), "--strategy", strategy, *(["--lora-r", "4"] if lora else [])]  # fmt: skip
    r = subprocess.run(_cmd(_args(base, [data], tmp_path / "one", *opts, "--batch-size", "8")),
                       env=_env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", "-m", "rlhfkit.cli"]  # fmt: skip
    two = _args(base, [data], tmp_path / "two", *opts, "--batch-size", "4")
    r = subprocess.run([*torchrun, *two], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = load_file(str(base / "model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert set(w1) == set(w2)
    assert_same_training(w1, w2, {k: w0[k] for k in w1}, rel=1e-2)  # Adam: see the RM's test
    torch.testing.assert_close(load_file(str(tmp_path / "one" / CACHE))["logprobs"],
                               load_file(str(tmp_path / "two" / CACHE))["logprobs"])  # fmt: skip
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"] == 2
    assert s2["eval"]["n_prompts"] == 9 and s2["eval"]["n_pairs"] == s1["eval"]["n_pairs"]
    assert s2["eval"]["loss"] == pytest.approx(s1["eval"]["loss"], abs=1e-4)
