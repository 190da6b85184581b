"""`rlhfkit rm eval`: the ranking metrics of a saved reward model on ranking / pairwise
files: training's loss and held-out evaluation (`loops.reward.train.evaluate_rm`), the
table of `loops.reward.metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhfkit.config import RMEvalConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table
from rlhfkit.distributed import pick_device
from rlhfkit.errors import UserError
from rlhfkit.files import write_json
from rlhfkit.loops.reward.metrics import format_eval
from rlhfkit.loops.reward.train import evaluate_rm
from rlhfkit.models.reward import load_reward_model
from rlhfkit.scoring.rm import packs_exactly, saved_max_len


def eval_rm(cfg: RMEvalConfig) -> dict[str, Any]:
    """`rlhfkit rm eval`: the ranking metrics of a saved RM on ranking / pairwise files."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    if not cfg.data:
        raise UserError("--data is required: ranking / pairwise JSONL file(s)")
    margin_table = resolve_margin_table(cfg.margin)
    records = read_preferences(list(cfg.data))
    device = pick_device(cfg.device)
    model, tokenizer = load_reward_model(cfg.model, device, trust_remote_code=cfg.trust_remote_code)
    resolve_chat(tokenizer, cfg.chat, what=cfg.model)  # as it trained, unless told
    max_len = cfg.max_len or saved_max_len(Path(cfg.model), model)
    examples, _ = encode_rankings(records, tokenizer, max_len, margin_table)
    metrics = evaluate_rm(
        model,
        examples,
        tokenizer.pad_token_id,
        batch_size=cfg.batch_size,
        device=device,
        packing=packs_exactly(model),  # padding-free where the RM keeps sequences apart
    )
    result = {"model": cfg.model, "data": list(cfg.data), "margin": cfg.margin, **metrics}
    print(format_eval(metrics))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(cfg.out, result)
    return result
