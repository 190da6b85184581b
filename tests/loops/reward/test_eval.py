"""loops/reward/eval.py: `rlhfkit rm eval` scores a saved reward model with training's
held-out evaluation, prints its table and writes the same numbers to --out."""

from __future__ import annotations

import copy
import json

import pytest
from tests.helpers import write_jsonl
from tests.loops.reward.test_train import keyword_rankings, records_of

from rlhfkit.config import RMEvalConfig
from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table
from rlhfkit.errors import UserError
from rlhfkit.loops.reward.eval import eval_rm
from rlhfkit.loops.reward.metrics import format_eval
from rlhfkit.loops.reward.train import evaluate_rm
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model, load_reward_model


def test_rm_eval_is_the_held_out_evaluation_of_the_saved_rm(tiny_tokenizer, tmp_path, capsys):
    tok = copy.deepcopy(tiny_tokenizer)
    rm, rm_tok = init_reward_model(
        build_model("test", tok, seed=0), tok, head_init="normal", seed=1
    )
    save_hf(rm, rm_tok, tmp_path / "rm")
    rows = keyword_rankings(6, 3, seed=4)
    data = write_jsonl(tmp_path / "held.jsonl", rows)
    out = tmp_path / "report" / "eval.json"
    cfg = RMEvalConfig(model=str(tmp_path / "rm"), data=(str(data),), margin="llama2-small",
                       out=str(out), device="cpu", max_len=64)  # fmt: skip
    result = eval_rm(cfg)
    # independently: the saved folder loaded, encoded and evaluated by hand
    model, loaded_tok = load_reward_model(tmp_path / "rm")
    examples, _ = encode_rankings(
        records_of(rows), loaded_tok, 64, resolve_margin_table("llama2-small")
    )
    want = evaluate_rm(model, examples, loaded_tok.pad_token_id)
    assert result["n_pairs"] == want["n_pairs"] == 18
    assert result["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert result["accuracy"] == pytest.approx(want["accuracy"])
    assert result["model"] == str(tmp_path / "rm") and result["margin"] == "llama2-small"
    assert json.loads(out.read_text()) == result
    assert capsys.readouterr().out.strip() == format_eval(result)
    with pytest.raises(UserError, match="--data is required"):
        eval_rm(RMEvalConfig(model=str(tmp_path / "rm")))
