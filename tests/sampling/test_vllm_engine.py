"""`--generator vllm`: vLLM's samples, log-probs and greedy output against our path, weight
sync after an update (plain and LoRA), a short `rlhfkit ppo` with it, and the one-line
errors before any model loads.

vLLM lives in its own venv (`make install-vllm`: it needs transformers < 5.20, the project
pins 5.23); `make test-vllm` runs this file there. Without vLLM the engine tests skip with
the reason printed (-rs) and the missing-vLLM error is tested instead.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhfkit import cli
from rlhfkit.models.presets import PRESETS, build_model
from rlhfkit.sampling.generator import EngineSettings, GenerationSettings, make_generator

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = (
    "vLLM is not installed in this Python (it needs transformers < 5.20): "
    "`make test-vllm` installs it in .venv-vllm and runs these tests there"
)
# The "test" preset with head_dim 32 (hidden 64, 2 heads): vLLM's CPU attention needs >= 32.
SHAPE = {**PRESETS["test"], "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
# On CPU the memory share sizes vLLM's KV cache in host memory: keep it small (~1 GB here).
FP32 = EngineSettings(
    "vllm", vllm_dtype="float32", vllm_enforce_eager=True, vllm_gpu_memory_utilization=0.05
)


@pytest.fixture(scope="module")
def vllm():
    return pytest.importorskip("vllm", reason=NO_VLLM)


@pytest.fixture(scope="module")
def prompt_ids(tiny_tokenizer) -> list[list[int]]:
    texts = ["the cat sat on", "what is 2 + 3 ?", "sort the list 4 1 3", "a big red dog",
             "please copy one two", "the bird ran under the tree", "reverse 1 2 3", "and"]  # fmt: skip
    return [tiny_tokenizer.encode(t) for t in texts]


@pytest.fixture(scope="module")
def policy(tiny_tokenizer):
    return build_model(SHAPE, tiny_tokenizer, seed=0).eval()


@pytest.fixture(scope="module")
def engine(vllm, policy, tiny_tokenizer):
    return make_generator(policy, tiny_tokenizer, FP32)


def _trainer_logprobs(model, gen, temperature: float) -> torch.Tensor:
    """(B, R) log-probs of the generation's response tokens from a training forward."""
    from rlhfkit.models.forward import policy_logits
    from rlhfkit.ops.logprobs import response_logprobs

    with torch.no_grad():
        logits = policy_logits(model, gen.sequences, gen.attention_mask, gen.response_mask.shape[1])
    lp = response_logprobs(logits, gen.sequences, gen.prompt_ids.shape[1], temperature)
    return lp.masked_fill(~gen.response_mask, 0.0)


def _greedy(generator, prompt_ids, n: int = 16):
    return generator.generate(prompt_ids, GenerationSettings(max_new_tokens=n, temperature=0.0))


def _assert_same_tokens(a, b) -> None:
    assert torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.response_ids[a.response_mask], b.response_ids[b.response_mask])
    assert torch.equal(a.ended, b.ended)
    assert a.texts == b.texts


# --- Without vLLM: one line, exit 2, before any model loads ----------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    from rlhfkit.models.checkpoint import save_hf

    root = tmp_path_factory.mktemp("vllm_cli")
    save_hf(build_model(SHAPE, tiny_tokenizer, seed=0), tiny_tokenizer, root / "lm")
    save_hf(build_model("test", tiny_tokenizer, seed=0), tiny_tokenizer, root / "lm8")
    prompts = [{"prompt": p} for p in ["the cat sat", "what is 1 + 2 ?", "a red dog", "one two"]]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return {"lm": root / "lm", "lm8": root / "lm8", "prompts": root / "prompts.jsonl"}


def _ppo(files, out: Path, model: str = "lm", *extra: str) -> list[str]:
    return ["ppo", "--policy", str(files[model]), "--prompts", str(files["prompts"]),
            "--rule-reward", "length", "--value-init", "policy", "--out", str(out),
            "--device", "cpu", "--generator", "vllm", *extra]  # fmt: skip


def _one_line_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rlhfkit {argv[0]}: error: "), err
    return err[0]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the missing-vLLM error cannot show")
def test_missing_vllm_is_one_line_before_any_model_loads(files, tmp_path, capsys, monkeypatch):
    import rlhfkit.models.load as load

    def no_loading(*a, **k):  # pragma: no cover - the error must come first
        raise AssertionError("a model was loaded before the vLLM check")

    monkeypatch.setattr(load, "load_causal_lm", no_loading)
    line = _one_line_error(_ppo(files, tmp_path / "run"), capsys)
    assert "vLLM is not installed" in line and "make install-vllm" in line
    assert not (tmp_path / "run").exists()
    evaluate = ["eval", "--model", str(files["lm"]), "--prompts", str(files["prompts"]),
                "--generator", "vllm"]  # fmt: skip
    assert "make install-vllm" in _one_line_error(evaluate, capsys)


def test_hf_stays_the_default(files):
    from rlhfkit.config import EvalConfig, PPOConfig, RSConfig, SelectConfig, WorldLabelConfig

    for cls in (PPOConfig, RSConfig, SelectConfig, EvalConfig, WorldLabelConfig):
        assert cls().generator == "hf", cls
    assert EngineSettings.of(SimpleNamespace(generator="vllm", vllm_dtype="bfloat16")) == (
        EngineSettings("vllm", vllm_dtype="bfloat16")
    )


class NoisyEngine:
    """An engine whose sampling log-probs are off by a known amount (as vLLM's kernels are
    by float noise): our path's samples, log-probs + 0.01."""

    name, exact_logprobs = "noisy", False

    def __init__(self, model, tokenizer) -> None:
        self.model, self.inner = model, make_generator(model, tokenizer, "hf")
        self.device = self.inner.device

    def generate(self, prompt_ids, settings, rng=None):
        gen = self.inner.generate(prompt_ids, settings, rng)
        gen.logprobs = (gen.logprobs + 0.01).masked_fill(~gen.response_mask, 0.0)
        return gen


def test_ppo_takes_the_trainer_logprobs_and_logs_the_gap(policy, tiny_tokenizer, prompt_ids):
    from dataclasses import replace

    from rlhfkit.loops.ppo.rollout import RolloutSettings, behaviour_logprobs

    engine, settings = NoisyEngine(policy, tiny_tokenizer), RolloutSettings(max_new_tokens=8)
    gen = engine.generate(prompt_ids, settings.generation, torch.Generator().manual_seed(0))
    logprobs, stats = behaviour_logprobs(engine, gen, settings)
    assert torch.allclose(logprobs, _trainer_logprobs(policy, gen, 1.0), atol=1e-5)
    assert stats["noisy/logprob_gap_mean"] == pytest.approx(0.01, abs=1e-4)
    assert stats["noisy/logprob_gap_max"] == pytest.approx(0.01, abs=1e-4)
    # --vllm-logprobs: the engine's own, off-policy by the gap; nothing measured
    logprobs, stats = behaviour_logprobs(engine, gen, replace(settings, engine_logprobs=True))
    assert torch.equal(logprobs, gen.logprobs) and stats == {}
    hf = make_generator(policy, tiny_tokenizer, "hf")  # exact: used as they are, no forward
    logprobs, stats = behaviour_logprobs(hf, gen, settings)
    assert torch.equal(logprobs, gen.logprobs) and stats == {}


# --- With vLLM ---------------------------------------------------------------------------


def test_small_heads_are_refused_before_any_model_loads(vllm, files, tmp_path, capsys):
    line = _one_line_error(_ppo(files, tmp_path / "run", "lm8"), capsys)
    assert "head_dim 8" in line and ">= 32" in line


def test_bad_torchrun_layouts_are_refused_before_any_model_loads(
    vllm, files, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it
    tp3 = _ppo(files, tmp_path / "run", "lm", "--vllm-tensor-parallel-size", "3")
    assert "--vllm-tensor-parallel-size 3 must divide the number of processes (2)" in (
        _one_line_error(tp3, capsys)
    )
    tp2_eval = _ppo(files, tmp_path / "run", "lm", "--vllm-tensor-parallel-size", "2",
                    "--eval-prompts", str(files["prompts"]))  # fmt: skip
    assert "needs --strategy fsdp2" in _one_line_error(tp2_eval, capsys)
    evaluate = ["eval", "--model", str(files["lm"]), "--prompts", str(files["prompts"]),
                "--generator", "vllm"]  # fmt: skip
    assert "not under torchrun" in _one_line_error(evaluate, capsys)
    assert not (tmp_path / "run").exists()


def test_fp32_logprobs_equal_a_training_forward(engine, policy, prompt_ids):
    for temperature in (1.0, 0.7):
        rng = torch.Generator().manual_seed(0)
        settings = GenerationSettings(max_new_tokens=24, temperature=temperature)
        gen = engine.generate(prompt_ids, settings, rng)
        assert gen.response_mask.sum() > len(prompt_ids)
        trainer = _trainer_logprobs(policy, gen, temperature)
        gap = (gen.logprobs - trainer).abs()[gen.response_mask]
        print(f"T={temperature}: |vLLM - trainer| logp max {gap.max():.2e} mean {gap.mean():.2e}")
        assert gap.max() < 1e-4
        again = engine.generate(prompt_ids, settings, torch.Generator().manual_seed(0))
        assert torch.equal(gen.response_ids, again.response_ids)  # per-prompt seeds


def test_greedy_equals_our_path(engine, policy, tiny_tokenizer, prompt_ids):
    ours = make_generator(policy, tiny_tokenizer, "hf")
    _assert_same_tokens(_greedy(engine, prompt_ids), _greedy(ours, prompt_ids))


def test_ignore_eos_gives_exactly_max_new_tokens(engine, policy, tiny_tokenizer, prompt_ids):
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, stop_at_eos=False)
    gen = engine.generate(prompt_ids, settings)
    assert gen.response_ids.shape == (len(prompt_ids), 12) and bool(gen.response_mask.all())
    ours = make_generator(policy, tiny_tokenizer, "hf").generate(prompt_ids, settings)
    assert torch.equal(gen.response_ids, ours.response_ids)


def test_sync_after_an_update_follows_the_new_weights(engine, policy, tiny_tokenizer, prompt_ids):
    from rlhfkit.losses import sft_nll

    before = _greedy(engine, prompt_ids)
    saved = copy.deepcopy(policy.state_dict())
    try:
        opt = torch.optim.SGD(policy.parameters(), lr=5.0)
        target = torch.tensor([prompt_ids[0] + prompt_ids[1]])
        for _ in range(3):  # a few large steps: the greedy continuations change
            logits = policy(input_ids=target).logits
            loss, _ = sft_nll(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        policy.eval()
        stale = _greedy(engine, prompt_ids)
        _assert_same_tokens(stale, before)  # no sync yet: the engine has the old weights
        engine.sync_weights()
        after = _greedy(engine, prompt_ids)
        ours = _greedy(make_generator(policy, tiny_tokenizer, "hf"), prompt_ids)
        assert not torch.equal(after.response_ids, before.response_ids)
        _assert_same_tokens(after, ours)
        gap = (after.logprobs - _trainer_logprobs(policy, after, 1.0)).abs()[after.response_mask]
        assert gap.max() < 1e-4
    finally:
        policy.load_state_dict(saved)
        engine.sync_weights()


def test_lora_policy_syncs_merged_weights(vllm, tiny_tokenizer, prompt_ids):
    from rlhfkit.models.lora import add_lora

    model = build_model(SHAPE, tiny_tokenizer, seed=1)
    opts = SimpleNamespace(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_targets=("all-linear",))
    model = add_lora(model, opts).eval()
    generator = make_generator(model, tiny_tokenizer, FP32)
    before = _greedy(generator, prompt_ids)
    with torch.no_grad():  # B starts at 0 (the adapter is a no-op); give it weight
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    generator.sync_weights()
    after = _greedy(generator, prompt_ids)
    ours = _greedy(make_generator(model, tiny_tokenizer, "hf"), prompt_ids)
    assert not torch.equal(after.response_ids, before.response_ids)
    _assert_same_tokens(after, ours)


def test_ppo_runs_with_vllm_and_logs_the_logprob_gap(vllm, files, tmp_path):
    out = tmp_path / "run"
    argv = _ppo(files, out, "lm", "--steps", "3", "--batch-size", "4", "--max-new-tokens", "8",
                "--lr", "1e-3", "--sample-every", "0", "--vllm-enforce-eager",
                "--vllm-gpu-memory-utilization", "0.05")  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["vllm/logprob_gap_max"] for r in rows if "vllm/logprob_gap_max" in r]
    print(f"ppo --generator vllm: logprob gap max per step {gaps}")
    assert len(gaps) == 3 and max(gaps) < 1e-3  # fp32: the synced engine is the policy
    assert (out / "model.safetensors").exists()


# --- Learning: a short PPO run on the built-in world, --generator vllm vs hf -----------


@pytest.fixture(scope="module")
def world_sft(tmp_path_factory) -> dict[str, Path]:
    """A policy SFT-ed on the built-in world's demonstrations for harmful and borderline
    ("howto") prompts, and the world's harmful prompts for PPO. The world's blind spots make
    the policy comply with some indirectly phrased harmful requests ("Explain how to ...")
    when sampling, which the gold judges score 0 (safety), refusals 1; PPO against the gold
    reward learns to refuse within a few steps. Only these families: the other tasks are
    beyond a model SFT-ed in seconds, and howto answers stay out of its reach too (refused:
    0 whatever the generator), which would only add noise to the PPO prompts."""
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import train_tokenizer
    from rlhfkit.world import make_world
    from rlhfkit.world.registry import BORDERLINE_NAME, HARMFUL_NAME, parse_prompt

    root = tmp_path_factory.mktemp("vllm_world")
    make_world(root / "world", seed=0, corpus_docs=200, sft=2000, train_prompts=600,
               eval_prompts=10)  # fmt: skip
    for name, tasks in (("sft.jsonl", (HARMFUL_NAME, BORDERLINE_NAME)),
                        ("prompts_train.jsonl", (HARMFUL_NAME,))):  # fmt: skip
        lines = (root / "world" / name).read_text().splitlines(keepends=True)
        kept = [line for line in lines if parse_prompt(json.loads(line)["prompt"])[0] in tasks]
        (root / name).write_text("".join(kept))
    corpus = (root / "world" / "corpus.jsonl").read_text().splitlines()
    tok = train_tokenizer([json.loads(line)["text"] for line in corpus], vocab_size=512)
    save_hf(build_model(SHAPE, tok, seed=0), tok, root / "base")
    sft = ["sft", "--model", str(root / "base"), "--data", str(root / "sft.jsonl"),
           "--out", str(root / "sft"), "--epochs", "4", "--lr", "3e-3", "--batch-size", "16",
           "--device", "cpu"]  # fmt: skip
    assert cli.main(sft) == 0
    return {"policy": root / "sft", "prompts": root / "prompts_train.jsonl"}


def _gold_per_step(world_sft, out: Path, generator: str) -> list[float]:
    argv = ["ppo", "--policy", str(world_sft["policy"]), "--prompts", str(world_sft["prompts"]),
            "--rule-reward", "gold", "--value-init", "policy", "--out", str(out),
            "--device", "cpu", "--seed", "0", "--steps", "12", "--batch-size", "32",
            "--num-mini-batches", "2", "--max-new-tokens", "10", "--lr", "1e-3",
            "--sample-every", "0", "--generator", generator]  # fmt: skip
    if generator == "vllm":
        argv += ["--vllm-enforce-eager", "--vllm-gpu-memory-utilization", "0.05"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["score/mean"] for r in rows if "score/mean" in r]


@pytest.mark.slow
def test_ppo_on_the_world_learns_with_vllm_as_with_hf(vllm, world_sft, tmp_path):
    """Same seed, same SFT policy, same fixed reward (the world's gold judges, `--rule-reward
    gold`: the rollout score is the gold score): the mean gold score of the first 3 steps vs
    the last 3 of 12 rises by > 0.08 with either generator, by amounts within 0.15 of each
    other, and both end within 0.1 of each other.

    Why these tolerances: both runs draw the same prompts in the same order (the prompt
    stream is seeded apart from sampling), but vLLM samples with other random numbers, so
    the curves differ by sampling noise. A step's mean of 32 scores in {0, 1} near p = 0.8
    has std sqrt(0.8 x 0.2 / 32) ~ 0.07, a 3-step mean ~ 0.04, a rise ~ 0.05 (less at the
    end, near 1), the difference of two rises ~ 0.07: 0.08 and 0.15 are ~2 sigma. Measured
    here (2 busy cores, ~70 s for both runs): hf 0.78 -> 0.97, vllm 0.81 -> 0.97."""
    curves = {g: _gold_per_step(world_sft, tmp_path / g, g) for g in ("hf", "vllm")}
    rises, ends = {}, {}
    for g, scores in curves.items():
        start, ends[g] = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
        rises[g] = ends[g] - start
        print(f"--generator {g}: gold {start:.3f} -> {ends[g]:.3f} (rise {rises[g]:+.3f}); "
              f"per step {[round(s, 3) for s in scores]}")  # fmt: skip
    assert rises["hf"] > 0.08 and rises["vllm"] > 0.08, rises
    assert abs(ends["vllm"] - ends["hf"]) < 0.1, ends
    assert abs(rises["vllm"] - rises["hf"]) < 0.15, rises


# --- Under torchrun: an engine per rank (or per tensor-parallel group), DDP and FSDP2 ----


def _torchrun(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *args]  # fmt: skip


def _run(cmd: list[str]) -> str:
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "tp"), [("ddp", 1), ("fsdp2", 2)])  # fsdp2 tp 1: below
def test_torchrun_ppo_syncs_every_ranks_engine(vllm, files, tmp_path, strategy, tp):
    """Two processes (gloo, CPU), two PPO steps with --generator vllm: then on each rank
    vLLM's greedy output equals our path's on that rank's updated policy (its own prompts;
    with tp 2 both ranks share one engine). The worker is this file run by torchrun."""
    out = tmp_path / "ranks"
    _run(_torchrun(__file__, str(files["lm"]), str(out), strategy, str(tp)))
    for rank in (0, 1):
        r = json.loads((out / f"rank{rank}.json").read_text())
        print(f"{strategy} tp {tp} rank {rank}: sync {r['sync_s']:.3f} s, "
              f"greedy changed by the update: {r['changed']}, gap max {r['gap']:.1e}")  # fmt: skip
        assert r["moved"] and r["same_as_hf"], r
        assert r["gap"] < 1e-4, r


@pytest.mark.slow
def test_torchrun_ppo_command_with_vllm(vllm, files, tmp_path):
    """`torchrun ... rlhfkit ppo --generator vllm --strategy fsdp2` (an engine per rank)
    finishes, rank 0 writes, and the logged gap between vLLM's and the trainer's log-probs
    stays at float noise at every step: each engine has the updated weights."""
    out = tmp_path / "run"
    argv = _ppo(files, out, "lm", "--steps", "2", "--batch-size", "4", "--max-new-tokens", "8",
                "--strategy", "fsdp2", "--sample-every", "0", "--vllm-enforce-eager",
                "--vllm-gpu-memory-utilization", "0.02", "--eval-prompts", str(files["prompts"]))  # fmt: skip
    _run(_torchrun("-m", "rlhfkit.cli", *argv))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["vllm/logprob_gap_max"] for r in rows if "vllm/logprob_gap_max" in r]
    print(f"torchrun ppo --generator vllm --strategy fsdp2: logprob gap max per step {gaps}")
    assert len(gaps) == 2 and max(gaps) < 1e-3
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert (out / "model.safetensors").exists()


def _worker(policy: str, out: str, strategy: str, tp: str) -> None:
    """One torchrun process of `test_torchrun_ppo_syncs_every_ranks_engine`."""
    import time

    from rlhfkit.config import PPOConfig
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.distributed import setup_distributed, teardown_distributed
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import build_roles

    cfg = PPOConfig(policy=policy, rule_reward="length", value_init="policy", device="cpu",
                    strategy=strategy, steps=2, batch_size=4, max_new_tokens=8, lr=3e-2,
                    generator="vllm", vllm_enforce_eager=True, vllm_gpu_memory_utilization=0.02,
                    vllm_tensor_parallel_size=int(tp))  # fmt: skip
    d, device = setup_distributed("cpu")
    tok, policy_model, reference, value, scorer = build_roles(cfg, device)
    texts = ["the cat sat on", "what is 2 + 3 ?", "sort the list 4 1 3", "a big red dog",
             "please copy one two", "the bird ran under", "reverse 1 2 3", "and the"]  # fmt: skip
    prompts = [PromptRecord(t) for t in texts]
    run = build_run(cfg, policy_model, reference, value, scorer, tok, prompts, None, d, device)
    mine = [tok.encode(t) for t in texts[d.rank :: 2]]  # each rank its own prompts
    before = _greedy(run.generator, mine)
    local = lambda v: v.to_local() if hasattr(v, "to_local") else v  # noqa: E731 (FSDP2 shards)
    w0 = {k: local(v).detach().clone() for k, v in policy_model.state_dict().items()}
    for step in range(2):
        ppo_step(run, step, cfg.batch_size, cfg.seed)  # ends with generator.sync_weights()
    t0 = time.perf_counter()
    run.generator.sync_weights()  # once more, timed (a no-op for the weights)
    sync_s = time.perf_counter() - t0
    after = _greedy(run.generator, mine)
    ours = _greedy(make_generator(run.trainables.policy, tok, "hf"), mine)
    moved = any(not torch.equal(local(v), w0[k]) for k, v in policy_model.state_dict().items())
    same = torch.equal(after.response_mask, ours.response_mask) and torch.equal(
        after.response_ids[after.response_mask], ours.response_ids[ours.response_mask]
    )
    from rlhfkit.sampling.vllm_engine import policy_state_dict

    full = policy_state_dict(run.trainables.policy)  # whole weights, gathered under FSDP2
    model = build_model_like(policy, tok, full)
    gap = (after.logprobs - _trainer_logprobs(model, after, 1.0)).abs()[after.response_mask]
    result = {"moved": moved, "same_as_hf": bool(same), "sync_s": sync_s, "gap": float(gap.max()),
              "changed": not torch.equal(before.response_ids, after.response_ids)}  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{d.rank}.json").write_text(json.dumps(result))
    teardown_distributed()


def build_model_like(folder: str, tok, state: dict):
    """The causal LM of `folder` with `state` loaded: a plain copy of the updated policy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.load_state_dict(state)
    return model


if __name__ == "__main__":  # a torchrun worker (tests above)
    import sys

    _worker(*sys.argv[1:])
