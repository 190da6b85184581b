"""Reading and writing the world's files, with `file:line` errors for bad records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.records import PromptRecord, iter_json_records, read_prompts
from rlhfkit.errors import RecordError, UserError
from rlhfkit.world.registry import UnknownPromptError, parse_prompt

NOT_WORLD = (
    "not a prompt of the built-in world, so the gold judges cannot score it "
    "(world prompts come from `rlhfkit world make`)"
)


@dataclass
class ResponseRecord:
    """A response to score: {"prompt", "response"} (other fields are kept in `extra`)."""

    prompt: str
    response: str
    line: int
    extra: dict


def _check_world(path: str | Path, line: int, prompt: str) -> None:
    try:
        parse_prompt(prompt)
    except UnknownPromptError:
        raise RecordError(str(path), line, f"{NOT_WORLD}: {prompt[:60]!r}") from None


def read_world_prompts(path: str | Path) -> list[PromptRecord]:
    """Prompt records ({"prompt", "safety"?}) that must all be world prompts."""
    recs = read_prompts(path)
    for r in recs:
        _check_world(path, r.line, r.prompt)
    return recs


def read_responses(path: str | Path) -> list[ResponseRecord]:
    """{"prompt", "response"} records (both strings, the prompt a world prompt)."""
    out = []
    for line, row in iter_json_records(path):
        for key in ("prompt", "response"):
            if key not in row or row[key] is None:
                raise RecordError(str(path), line, f"missing field '{key}'")
            if not isinstance(row[key], str):
                got = type(row[key]).__name__
                raise RecordError(str(path), line, f"field '{key}' must be a string, got {got}")
        _check_world(path, line, row["prompt"])
        extra = {k: v for k, v in row.items() if k not in ("prompt", "response")}
        out.append(ResponseRecord(row["prompt"], row["response"], line, extra))
    if not out:
        raise RecordError(str(path), None, "empty file: no records")
    return out


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise unless none of `paths` exists or `overwrite` is set."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
