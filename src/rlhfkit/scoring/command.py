"""`rlhfkit score`: score {"prompt", "response", "safety"?, "ended"?} records with one or
several reward models and write each record back with its combined and per-RM scores.
`"ended": false` marks a sampled response cut before EOS: it is scored without EOS, as
PPO and rejection sampling score it (`scoring.rm`). A conversational prompt (messages,
`data.records.read_scoring_records`) is scored on the sequence the RM trained on: the
conversation + the response as an assistant turn, through the RM's chat template; so
is a plain prompt for an RM in chat format (`data.chat`: --chat, or the RM's own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.config.checks import check_options
from rlhfkit.data.records import ScoredRecord, read_scoring_records
from rlhfkit.distributed import pick_device
from rlhfkit.errors import RecordError, UserError
from rlhfkit.scoring.build import combine_options
from rlhfkit.scoring.remote import RemoteSettings
from rlhfkit.scoring.rm import RewardScorer


def run_score(cfg: Any) -> dict:
    """`rlhfkit score`: write each record with "score" (combined) and "scores" (per RM)."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    if not cfg.rm:
        raise UserError("give at least one reward model: --rm NAME=DIR or NAME=URL (repeatable)")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it")
    records = read_scoring_records(cfg.data)
    scorer = RewardScorer.from_specs(
        list(cfg.rm),
        cfg.combine,
        combine_options(cfg, cfg.whiten),
        device=pick_device(cfg.device),
        batch_size=cfg.batch_size,
        max_len=cfg.max_len,
        chat=cfg.chat,
        remote=RemoteSettings.from_config(cfg),
    )
    _check_chat(records, scorer)
    result = scorer.score(
        [r.content for r in records],
        [r.response for r in records],
        [r.safety for r in records],
        [r.ended for r in records],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, rec in enumerate(records):
            per = {name: float(s[i]) for name, s in result.per_rm.items()}
            f.write(json.dumps({**rec.row, "score": float(result.scores[i]), "scores": per}) + "\n")
    tmp.replace(out)
    summary = {
        "records": len(records),
        "combine": cfg.combine,
        "mean_score": float(result.scores.mean()),
        "mean_per_rm": {n: float(s.mean()) for n, s in result.per_rm.items()},
        "out": str(out),
    }
    print(
        f"scored {len(records)} records with {', '.join(scorer.names)} ({cfg.combine}): "
        f"mean {summary['mean_score']:.4f} -> {out}"
    )
    return summary


def _check_chat(records: list[ScoredRecord], scorer: RewardScorer) -> None:
    """Conversational records need each RM's tokenizer to have a chat template."""
    chat = next((r for r in records if r.messages is not None), None)
    if chat is None:
        return
    for name, rm in scorer.models.items():
        if getattr(rm.tokenizer, "chat_template", None) is None:
            raise RecordError(
                chat.source,
                chat.line,
                f"a conversational prompt (a list of messages) needs a chat template, and "
                f"reward model '{name}' has none: give plain 'prompt' strings",
            )
