"""`rlhfkit score`: score {"prompt", "response", "safety"?, "ended"?} records with one or
several reward models and write each record back with its combined and per-RM scores.
`"ended": false` marks a sampled response cut before EOS: it is scored without EOS, as
PPO and rejection sampling score it (`scoring.rm`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.records import iter_json_records
from rlhfkit.distributed import pick_device
from rlhfkit.errors import RecordError, UserError
from rlhfkit.scoring.build import combine_options
from rlhfkit.scoring.rm import RewardScorer


@dataclass
class ScoredRecord:
    """A {"prompt", "response", "safety"?} record; other fields are kept."""

    prompt: str
    response: str
    safety: bool
    row: dict
    line: int
    ended: bool = True  # False: the response was cut before EOS (scored without one)


def read_scoring_records(path: str | Path) -> list[ScoredRecord]:
    """{"prompt", "response", "safety"?} records, validated (file:line errors)."""
    out = []
    for line, row in iter_json_records(path):
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                problem = "missing" if row.get(key) is None else "not a string"
                raise RecordError(str(path), line, f"field '{key}' is {problem}")
        if not row["response"].strip():
            raise RecordError(str(path), line, "field 'response' is empty")
        for key in ("safety", "ended"):
            if row.get(key) is not None and not isinstance(row[key], bool):
                raise RecordError(
                    str(path), line, f"field '{key}' must be true or false, got {row[key]!r}"
                )
        rec = ScoredRecord(row["prompt"], row["response"], bool(row.get("safety")), row, line)
        rec.ended = row.get("ended") is not False
        out.append(rec)
    if not out:
        raise RecordError(str(path), None, "empty file: no records")
    return out


def run_score(cfg: Any) -> dict:
    """`rlhfkit score`: write each record with "score" (combined) and "scores" (per RM)."""
    if not cfg.rm:
        raise UserError("give at least one reward model: --rm NAME=DIR (repeatable)")
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
    )
    result = scorer.score(
        [r.prompt for r in records],
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
