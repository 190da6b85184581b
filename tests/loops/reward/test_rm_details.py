"""Issue 14 (N+ implementation details, Llama 2's Table 8) on the reward-model side: no
dropout in RM training, --adam-eps in every training command, reward normalisation
(--normalize-with), and per-strength accuracy on adjacent pairs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tests.helpers import make_base_model, write_jsonl
from tests.loops.reward.test_train import keyword_rankings
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

from rlhfkit import cli
from rlhfkit.cli import main
from rlhfkit.data.ranking import STRENGTHS, adjacent_flags, ranking_to_comparisons
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import collate_rankings, encode_rankings, resolve_margin_table
from rlhfkit.loops.common import disable_dropout
from rlhfkit.loops.reward.metrics import EvalTotals, flat_eval, format_eval
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.reward import init_reward_model, load_reward_model
from rlhfkit.scoring.rm import encode_responses, score_texts

PDROP = ("attn_pdrop", "embd_pdrop", "resid_pdrop")


def gpt2_lm(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    """A tiny GPT-2 LM on the test tokenizer, dropout 0.1 as GPT-2's config has it."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert all(getattr(config, k) == 0.1 for k in PDROP)
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("gpt2") / "lm"
    save_hf(gpt2_lm(tiny_tokenizer), tiny_tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_base_model(tmp_path_factory.mktemp("llama") / "lm", tiny_tokenizer)


IDS = torch.tensor([[1, 20, 30, 40, 50, 2]])


def _two_train_forwards(model) -> tuple[float, float]:
    model.train()
    with torch.no_grad():
        return tuple(float(model(input_ids=IDS).logits[0, -1].flatten()[0]) for _ in range(2))


def _rm_args(base, data, out, *extra):
    return ["rm", "--model", str(base), "--data", *map(str, data), "--out", str(out),
            "--device", "cpu", "--max-steps", "2", "--batch-size", "4", *extra]  # fmt: skip


# ---------------------------------------------------------------- 1. no dropout


def test_disable_dropout_makes_train_mode_forwards_agree(tiny_tokenizer):
    rm, _ = init_reward_model(gpt2_lm(tiny_tokenizer), copy.deepcopy(tiny_tokenizer),
                              head_init="normal", seed=0)  # fmt: skip
    a, b = _two_train_forwards(rm)
    assert abs(a - b) > 1e-3  # dropout 0.1 (today's `rm`): one response, two scores
    changed = disable_dropout(rm)
    assert {c.split("=")[0] for c in changed} >= set(PDROP)
    a, b = _two_train_forwards(rm)
    assert a == b
    assert all(getattr(rm.config, k) == 0.0 for k in PDROP)
    assert disable_dropout(rm) == []  # nothing left to change


def test_rm_trains_without_dropout_and_saves_config_with_0(gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    out = tmp_path / "rm"
    assert main(_rm_args(gpt2_dir, [data], out)) == 0
    saved = json.loads((out / "config.json").read_text())
    assert all(saved[k] == 0.0 for k in PDROP), {k: saved[k] for k in PDROP}
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    a, b = _two_train_forwards(hf)
    assert a == b
    # the LM folder it started from keeps its dropout (SFT trains with it)
    assert json.loads((gpt2_dir / "config.json").read_text())["resid_pdrop"] == 0.1


# ---------------------------------------------------------------- 2. --adam-eps


TRAINERS = {  # the required options of each command that trains through `start_training`
    "pretrain": ["--data", "d"],
    "sft": ["--model", "m", "--data", "d"],
    "rm": ["--model", "m", "--data", "d"],
    "rs": ["--policy", "m", "--prompts", "p", "--rm", "r"],
}


@pytest.mark.parametrize("command", sorted(TRAINERS))
def test_adam_eps_reaches_the_optimizer_of_every_trainer_command(command, tiny_model, tmp_path):
    from rlhfkit.distributed import Dist
    from rlhfkit.loops.trainer import start_training

    required = [*TRAINERS[command], "--out", str(tmp_path)]
    cfg = cli.parse(command, [*required, "--adam-eps", "3e-7"])
    assert cfg.adam_eps == 3e-7
    assert cli.parse(command, required).adam_eps == 1e-8  # PyTorch's default off PPO
    t = start_training(tiny_model, None, 8, out=tmp_path, dist=Dist(),
                       device=torch.device("cpu"), opts=cfg)  # fmt: skip
    t.finish()
    assert {g["eps"] for g in t.optimizer.param_groups} == {3e-7}


# ---------------------------------------------------------------- 3. normalisation


def _demos(n: int) -> list[dict]:
    rows = keyword_rankings(n, 2, seed=5)
    return [{"prompt": r["prompt"], "completion": r["responses"][0]} for r in rows]


def _hf_scores(folder: Path, prompts, responses) -> torch.Tensor:
    """Plain transformers: from_pretrained, one unpadded sequence at a time."""
    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    _, tok = load_reward_model(folder)
    seqs, _ = encode_responses(tok, prompts, responses, 256)
    with torch.no_grad():
        return torch.stack([hf(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])


def test_normalize_with_scale_gives_mean_0_std_1_and_from_pretrained_agrees(gpt2_dir, tmp_path):
    """GPT-2's final LayerNorm has a bias: the shift lives there, and plain
    AutoModelForSequenceClassification.from_pretrained gives the normalised scores."""
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    demos = _demos(12)
    demo_file = write_jsonl(tmp_path / "sft.jsonl", demos)
    out = tmp_path / "rm"
    args = _rm_args(gpt2_dir, [data], out, "--head-init", "normal",
                    "--normalize-with", str(demo_file), "--normalize-scale")  # fmt: skip
    assert main(args) == 0
    prompts = [r["prompt"] for r in demos]
    responses = [r["completion"] for r in demos]
    rm, tok = load_reward_model(out)
    scores = score_texts(rm, tok, prompts, responses).double()
    assert abs(scores.mean().item()) < 1e-5
    assert abs(scores.std(unbiased=False).item() - 1) < 1e-5
    torch.testing.assert_close(_hf_scores(out, prompts, responses).double(), scores,
                               atol=1e-5, rtol=0)  # fmt: skip
    info = json.loads((out / "rlhfkit_reward.json").read_text())["normalization"]
    assert info["n"] == 12 and info["file"] == str(demo_file) and info["scaled"] is True
    assert info["std"] > 0 and info["shift_in"] == "transformer.ln_f.bias"
    assert abs(info["after"]["mean"]) < 1e-5 and abs(info["after"]["std"] - 1) < 1e-5
    assert rm.score.bias is None  # same architecture: nothing for from_pretrained to drop


def test_normalize_llama_rm_shift_in_head_bias(llama_dir, tmp_path):
    """Llama's RMSNorm adds nothing after normalising: the shift becomes a new score.bias,
    which rlhfkit's loader restores and plain from_pretrained drops (documented)."""
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    demos = [{"prompt": r["prompt"], "response": r["completion"]} for r in _demos(10)]
    demo_file = write_jsonl(tmp_path / "samples.jsonl", demos)
    out = tmp_path / "rm"
    args = _rm_args(llama_dir, [data], out, "--head-init", "normal",
                    "--normalize-with", str(demo_file))  # fmt: skip
    assert main(args) == 0
    prompts = [r["prompt"] for r in demos]
    responses = [r["response"] for r in demos]
    rm, tok = load_reward_model(out)
    scores = score_texts(rm, tok, prompts, responses).double()
    info = json.loads((out / "rlhfkit_reward.json").read_text())["normalization"]
    assert abs(scores.mean().item()) < 1e-5
    assert scores.std(unbiased=False).item() == pytest.approx(info["std"], rel=1e-4)  # no scale
    assert info["shift_in"].startswith("score.bias") and rm.score.bias is not None
    raw = _hf_scores(out, prompts, responses).double()  # without the bias
    torch.testing.assert_close(raw - info["mean"], scores, atol=1e-5, rtol=0)


def test_normalize_file_errors_name_file_and_line(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(4, 2, seed=0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"},
                                               {"prompt": "c"}])  # fmt: skip
    out = tmp_path / "rm"
    assert main(_rm_args(llama_dir, [data], out, "--normalize-with", str(bad))) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists()  # nothing written before the error
    assert main(_rm_args(llama_dir, [data], out, "--normalize-scale")) == 2


# ---------------------------------------------------------------- 4. adjacent pairs


def test_accuracy_per_strength_on_adjacent_and_on_all_pairs(tiny_tokenizer):
    # Ranking best..worst = responses [2, 0, 3, 1]; adjacent strengths significantly,
    # slightly, slightly. By rank position (i, j) the six pairs and their strengths
    # (strongest on the path) are (0,1) sig ADJ, (0,2) sig, (0,3) sig, (1,2) sl ADJ,
    # (1,3) sl, (2,3) sl ADJ. Scores by rank position [1, 0, 3, 2] (response 2 -> 1,
    # 0 -> 0, 3 -> 3, 1 -> 2), so the RM gets right: (0,1) 1>0 yes, (0,2) 1>3 no,
    # (0,3) 1>2 no, (1,2) 0>3 no, (1,3) 0>2 no, (2,3) 3>2 yes.
    #   adjacent: significantly 1/1 = 1.0, slightly 1/2 = 0.5, overall 2/3
    #   all:      significantly 1/3,       slightly 1/3,       overall 2/6 = 1/3
    rec = RankingRecord("p", ["a", "b", "c", "d"], [2, 0, 3, 1],
                        ["significantly_better", "slightly_better", "slightly_better"], 1, "f")  # fmt: skip
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("none"))
    assert ex.adjacent == [True, False, False, True, False, True]
    batch = collate_rankings([ex], tiny_tokenizer.pad_token_id)
    scores = torch.tensor([0.0, 2.0, 1.0, 3.0])  # by response index
    totals = EvalTotals()
    totals.add(torch.tensor(0.5), scores, batch)
    m = totals.metrics()
    adj, every = m["adjacent_buckets"], m["buckets"]
    assert adj["significantly_better"] == {"accuracy": 1.0, "n_pairs": 1, "n_ties": 0}
    assert adj["slightly_better"] == {"accuracy": 0.5, "n_pairs": 2, "n_ties": 0}
    assert every["significantly_better"]["accuracy"] == pytest.approx(1 / 3)
    assert every["slightly_better"]["accuracy"] == pytest.approx(1 / 3)
    assert every["significantly_better"]["n_pairs"] == every["slightly_better"]["n_pairs"] == 3
    assert m["adjacent_accuracy"] == pytest.approx(2 / 3) and m["n_adjacent_pairs"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3) and m["n_pairs"] == 6
    flat = flat_eval("eval", m)
    assert flat["eval/adjacent_accuracy_slightly_better"] == 0.5
    assert flat["eval/accuracy_slightly_better"] == pytest.approx(1 / 3)
    table = format_eval(m)
    assert "slightly_better" in table and "adjacent" in table


def test_one_significant_step_labels_20_of_36_pairs_but_1_adjacent():
    # K = 9, "significantly better" between rank positions 3 and 4, negligibly elsewhere:
    # every pair (i <= 3 < j) crosses it, 4 * 5 = 20 of the 36; one of them is adjacent.
    strengths = ["negligibly_better"] * 8
    strengths[3] = "significantly_better"
    comps = ranking_to_comparisons(list(range(9)), strengths)
    adjacent = adjacent_flags(list(range(9)), comps)
    sig = [a for (_, _, s), a in zip(comps, adjacent, strict=True) if s == STRENGTHS[0]]
    assert len(comps) == 36 and len(sig) == 20 and sum(sig) == 1 and sum(adjacent) == 8
