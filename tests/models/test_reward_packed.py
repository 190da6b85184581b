"""Padding-free reward-model scoring and training: packed rows give every sequence the score
it gets in a padded batch on the families that keep packed sequences apart, a family that
mixes them (OPT) falls back to padded batches, and RM training packed equals padded."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import CHAIN_ARCH, TINY_ARCH, assert_same_training, make_base_model
from tests.helpers import write_jsonl as _write
from tests.loops.reward.test_train import keyword_rankings, records_of

from rlhfkit.config import RMConfig
from rlhfkit.data.reward_data import (
    collate_rankings,
    encode_rankings,
    pack_sequences,
    pad_right,
    resolve_margin_table,
)
from rlhfkit.errors import UserError
from rlhfkit.loops.common import disable_dropout
from rlhfkit.loops.reward.train import evaluate_rm, ranking_batch_loss, resolve_packing, train_rm
from rlhfkit.models.presets import build_model
from rlhfkit.models.probe import TOL_EPS
from rlhfkit.models.reward import init_reward_model, reward_scores
from rlhfkit.models.reward_packed import HeadInputView, attention_cost, packed_reward_scores


def test_attention_cost_is_2_hidden_over_weights_per_layer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    model, _ = init_reward_model(build_model("test", tok, seed=0), tok)
    cfg = model.config
    embedding = model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in model.parameters()) - embedding
    expected = 2 * cfg.hidden_size / (weights / cfg.num_hidden_layers)
    assert attention_cost(model) == pytest.approx(expected)
    assert 0 < attention_cost(model) < 1


# ---------------------------------------------------------------- packed scores = padded scores

EXACT = ["llama-gqa", "qwen2", "gpt2"]


def _rm(arch: str, tokenizer, head_init: str = "normal"):
    lm = build_model(CHAIN_ARCH[arch](), tokenizer, seed=0)
    model, _ = init_reward_model(lm, tokenizer, head_init=head_init, seed=1)
    return model


def _random_sequences(vocab: int, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))] for _ in range(n)]


@pytest.mark.parametrize("arch", EXACT)
def test_packed_scores_equal_padded_scores(arch, tiny_tokenizer):
    """Packed and padded forwards do the same arithmetic on the same values; only summation
    order differs (matmul blocking depends on the row count; masked attention adds exact
    zeros over more keys), so a score moves by a few float32 ulps of the score scale:
    the probe's bound (`models.probe.TOL_EPS` eps x max(1, |score|), its derivation there)
    applies as is. Measured: 0 on Llama and Qwen2, <= 2 eps on GPT-2 (2 layers, hidden 32)."""
    tok = copy.deepcopy(tiny_tokenizer)
    model = _rm(arch, tok).eval()
    assert resolve_packing(model, None)
    seqs = _random_sequences(len(tok) - 1, 23, seed=0)
    ids, mask = pad_right(seqs, tok.pad_token_id)
    rows = pack_sequences(seqs, tok.pad_token_id)
    assert rows.input_ids.numel() < ids.numel()  # the point: fewer cells
    with torch.no_grad():
        padded = reward_scores(model, ids, mask)  # (N,)
        packed = packed_reward_scores(model, rows.input_ids, rows.position_ids, rows.last)
    tol = TOL_EPS * torch.finfo(torch.float32).eps * max(1.0, float(padded.abs().max()))
    assert float((packed - padded).abs().max()) <= tol
    assert float(padded.std()) > 1e-3  # a normal head: scores differ, the check has teeth


@pytest.mark.parametrize("arch", EXACT)
def test_packed_and_padded_batches_give_the_same_gradients(arch, tiny_tokenizer):
    # The K-wise loss of one batch, packed and padded: same loss, same gradient (float32,
    # same summation-order argument as above, relative to each gradient's scale).
    tok = copy.deepcopy(tiny_tokenizer)
    model = _rm(arch, tok)
    model.requires_grad_(True)
    disable_dropout(model)
    examples, _ = encode_rankings(
        records_of(keyword_rankings(5, 3, seed=2)), tok, 64, resolve_margin_table("none")
    )
    grads, losses = [], []
    for packing in (False, True):
        model.zero_grad()
        batch = collate_rankings(examples, tok.pad_token_id, packing)
        assert batch.packed is packing
        loss, _, _ = ranking_batch_loss(model, batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for name, g in grads[0].items():
        scale = max(1.0, float(g.abs().max()))
        assert float((grads[1][name] - g).abs().max()) <= 1e-4 * scale, name


# ---------------------------------------------------------------- the probe and the fallback


def test_a_model_that_mixes_packed_sequences_is_found_even_with_a_zero_head(tiny_tokenizer, capsys):
    # A fresh RM's zero head scores 0 everywhere, packed or not: the probe reads what the
    # head reads (HeadInputView), so OPT's leak shows.
    tok = copy.deepcopy(tiny_tokenizer)
    lm = build_model(TINY_ARCH["opt"](), tok, seed=0)
    model, _ = init_reward_model(lm, tok, head_init="zeros")
    assert type(HeadInputView(model)).__name__ == "OPTForSequenceClassification"
    assert model.training and HeadInputView(model).training  # the probe keeps the RM's mode
    assert resolve_packing(model, None) is False
    note = "rm: OPTForSequenceClassification mixes packed examples: padded batches instead"
    assert note in capsys.readouterr().out
    assert model.training  # restored
    with pytest.raises(UserError, match="rm: --packing: OPTForSequenceClassification"):
        resolve_packing(model, True)
    assert resolve_packing(model, False) is False
    llama = _rm("llama-gqa", tok, head_init="zeros")
    assert resolve_packing(llama, None) is True


def _rm_kw(base, data, **kw):
    defaults = dict(model=str(base), data=(str(data),), epochs=1, lr=1e-2, batch_size=4,
                    head_init="normal", warmup_steps=0, log_every=1)  # fmt: skip
    return {**defaults, **kw}


def test_opt_rm_falls_back_to_padded_batches(tmp_path, tiny_tokenizer, capsys):
    base = make_base_model(tmp_path / "opt", tiny_tokenizer, preset=TINY_ARCH["opt"]())
    data = _write(tmp_path / "r.jsonl", keyword_rankings(8, 3, seed=0))
    auto = train_rm(RMConfig(**_rm_kw(base, data), out=str(tmp_path / "auto")))
    assert "rm: OPTForSequenceClassification mixes packed examples" in capsys.readouterr().out
    off = train_rm(RMConfig(**_rm_kw(base, data), out=str(tmp_path / "off"), packing=False))
    assert auto["packing"] is False and off["packing"] is False
    wa = load_file(str(tmp_path / "auto" / "model.safetensors"))
    wo = load_file(str(tmp_path / "off" / "model.safetensors"))
    assert all(torch.equal(wa[k], wo[k]) for k in wo)  # the fallback IS --no-packing
    with pytest.raises(UserError, match="--packing: OPTForSequenceClassification"):
        train_rm(RMConfig(**_rm_kw(base, data), out=str(tmp_path / "on"), packing=True))
    assert not (tmp_path / "on" / "metrics.jsonl").exists()  # refused before training


# ---------------------------------------------------------------- training: packed = padded


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    return make_base_model(tmp_path_factory.mktemp("rmpk") / "base", tiny_tokenizer)


def test_packed_and_padded_rm_training_alike(base, tmp_path, monkeypatch):
    """Packed and padded steps compute each score with the same arithmetic up to summation
    order, then the same loss. In float64 (unit roundoff u = 1.1e-16) the scores, losses
    and gradients then differ by at most ~n u relative with n <= 1e4 terms per entry,
    ~1e-12; AdamW's first steps amplify a gradient error by at most lr / eps = 1e6
    (entries with |g| ~ eps), so the weights differ by <= ~1e-6 x the update: far inside
    the 1e-3 below on any CPU, and the logged losses agree to ~1e-12 (1e-9 asserted). In
    float32 (u = 6e-8) the same bound is ~1e2 x the update: no fixed tolerance."""
    import rlhfkit.loops.reward.train as rm_train

    def init_double(*a, **k):
        model, tok = init_reward_model(*a, **k)
        return model.double(), tok

    monkeypatch.setattr(rm_train, "init_reward_model", init_double)
    # uneven K and lengths: several packed rows per micro-batch, held-out data too
    rows = [keyword_rankings(1, 2 + i % 3, seed=i)[0] for i in range(12)]
    data = _write(tmp_path / "r.jsonl", rows)
    kw = _rm_kw(base, data, eval_data=(str(data),), grad_accum=2, epochs=2)
    sp = train_rm(RMConfig(**kw, out=str(tmp_path / "p"), packing=True))
    sr = train_rm(RMConfig(**kw, out=str(tmp_path / "r"), packing=False))
    assert sp["packing"] is True and sr["packing"] is False and sp["steps"] == 4

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["train/loss"] for x in lines if "train/loss" in json.loads(x)]

    lp, lr_ = losses("p"), losses("r")
    assert len(lp) == len(lr_) == 4
    assert lp == pytest.approx(lr_, abs=1e-9, rel=0)
    assert sp["eval"]["loss"] == pytest.approx(sr["eval"]["loss"], abs=1e-9, rel=0)
    wp = load_file(str(tmp_path / "p" / "model.safetensors"))
    wr = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(v.dtype == torch.float64 for v in wp.values())
    m0, _ = init_reward_model(base, head_init="normal", seed=0)
    w0 = {k: v.double() for k, v in m0.state_dict().items() if k in wp}
    assert_same_training(wp, wr, w0)


def test_evaluate_rm_packed_equals_padded(base):
    model, tok = init_reward_model(base, head_init="normal", seed=0)
    examples, _ = encode_rankings(
        records_of(keyword_rankings(6, 4, seed=3)), tok, 64, resolve_margin_table("none")
    )
    a = evaluate_rm(model, examples, tok.pad_token_id, batch_size=4)
    b = evaluate_rm(model, examples, tok.pad_token_id, batch_size=4, packing=True)
    assert a["accuracy"] == b["accuracy"] and a["n_pairs"] == b["n_pairs"]
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


# ---------------------------------------------------------------- scoring (PPO, RS, eval)


def _scorer_pair(arch: str, tokenizer):
    from rlhfkit.scoring.rm import LoadedRM, RewardScorer

    cfg = CHAIN_ARCH[arch]() if arch in CHAIN_ARCH else TINY_ARCH[arch]()
    lm = build_model(cfg, tokenizer, seed=0)
    model, tok = init_reward_model(lm, tokenizer, head_init="normal", seed=1)
    model.eval().requires_grad_(False)
    rms = {"r": LoadedRM(model, tok, 256)}
    return RewardScorer(rms, batch_size=8), RewardScorer(rms, batch_size=8, packing=False)


@pytest.mark.parametrize("arch", ["llama-gqa", "opt"])
def test_scorer_packs_where_exact_and_scores_alike(arch, tiny_tokenizer):
    from rlhfkit.models.generate import left_pad

    tok = copy.deepcopy(tiny_tokenizer)
    auto, padded = _scorer_pair(arch, tok)
    assert auto.packs("r") is (arch != "opt") and padded.packs("r") is False
    rng = random.Random(4)
    words = "the cat sat on a mat and ran to the red house by the big tree".split()
    prompts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(19)]
    responses = [" ".join(rng.choices(words, k=rng.randint(1, 20))) for _ in range(19)]
    a, b = auto.score(prompts, responses), padded.score(prompts, responses)
    tol = TOL_EPS * torch.finfo(torch.float32).eps * max(1.0, float(b.scores.abs().max()))
    assert float((a.scores - b.scores).abs().max()) <= tol
    # policy token ids: left-padded prompts, right-padded responses (PPO's layout)
    seqs, _ = encode_responses_for(tok, prompts, responses)
    cut = [rng.randint(1, len(s) - 1) for s in seqs]
    p_ids, p_mask = left_pad([s[:c] for s, c in zip(seqs, cut, strict=True)], tok.pad_token_id)
    r_ids, r_mask = pad_right([s[c:] for s, c in zip(seqs, cut, strict=True)], tok.pad_token_id)
    ta = auto.score_tokens(p_ids, p_mask, r_ids, r_mask, tok)
    tb = padded.score_tokens(p_ids, p_mask, r_ids, r_mask, tok)
    assert float((ta.scores - tb.scores).abs().max()) <= tol
    assert float((ta.scores - b.scores).abs().max()) <= tol


def encode_responses_for(tok, prompts, responses):
    from rlhfkit.data.reward_data import encode_responses

    return encode_responses(tok, prompts, responses, 256)


def test_packed_training_gives_each_response_one_forward_pass(base, tmp_path):
    # As tests/loops/reward/test_train.py counts rows of padded batches: here the sequences
    # in packed rows (segments starting at position 0 on a real token), one forward call.
    from rlhfkit.loops.reward.train import RMRun, fit_rm

    ks = (4, 9, 2)
    rows = [keyword_rankings(1, k, seed=i)[0] for i, k in enumerate(ks)]
    model, tok = init_reward_model(base)
    examples, _ = encode_rankings(records_of(rows), tok, 256, resolve_margin_table("none"))
    seen = {"calls": 0, "sequences": 0, "rows": 0}
    forward = model.forward

    def counting(*args, **kwargs):
        ids, pos = kwargs["input_ids"], kwargs["position_ids"]
        seen["calls"] += 1
        seen["rows"] += ids.shape[0]
        seen["sequences"] += int(((pos == 0) & (ids != tok.pad_token_id)).sum())
        return forward(*args, **kwargs)

    model.forward = counting
    cfg = RMConfig(out=str(tmp_path), batch_size=len(ks), epochs=1, log_every=1)
    summary = fit_rm(RMRun(model, tok, examples, out=tmp_path, packing=True), cfg)
    assert summary["steps"] == 1 and summary["packing"] is True
    assert seen["calls"] == 1 and seen["sequences"] == sum(ks)
    assert seen["rows"] < sum(ks)  # packed: fewer rows than sequences
