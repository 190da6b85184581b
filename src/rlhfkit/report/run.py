"""What a pipeline run left on disk, read for the report (`load_run` -> `RunData`), and the
Markdown helpers every section uses. A file that is missing or unreadable reads as empty:
the report gives a note where a stage left nothing, never an error."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOT_DIR = "report"


# ---------------------------------------------------------------------------------------
# Reading the run
# ---------------------------------------------------------------------------------------


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by an interrupted write
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _round_number(p: Path) -> int:
    tail = p.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


@dataclass
class RunData:
    """Everything the report reads, each part empty when its stage left nothing."""

    root: Path
    pipeline: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval rows by model
    ppo_train: list[dict[str, Any]] = field(default_factory=list)
    ppo_eval: list[dict[str, Any]] = field(default_factory=list)
    ppo_config: dict[str, Any] = field(default_factory=dict)
    rms: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> summary.json
    select: dict[str, Any] = field(default_factory=dict)
    rs_rounds: list[dict[str, Any]] = field(default_factory=list)


def load_run(root: Path) -> RunData:
    run = RunData(root, pipeline=read_json(root / "pipeline.json") or {})
    summary = read_json(root / "eval" / "summary.json") or {}
    names = list(summary) or sorted(p.stem for p in (root / "eval").glob("*.json"))
    for name in [n for n in names if n != "summary"]:
        detail = read_json(root / "eval" / f"{name}.json") or {}
        row = {k: v for k, v in detail.items() if k not in ("responses", "samples", "per_task")}
        run.models[name] = {**row, **(summary.get(name) or {})}
    for row in read_jsonl(root / "ppo" / "metrics.jsonl"):
        evals = {k: v for k, v in row.items() if k.startswith("eval/")}
        if evals:
            run.ppo_eval.append({"step": row.get("step"), **evals})
        if any(k.startswith(("train/", "score/")) for k in row):
            run.ppo_train.append(row)
    if not run.ppo_eval:  # older runs: the evaluations are in the summary only
        for e in (read_json(root / "ppo" / "summary.json") or {}).get("evals", []):
            run.ppo_eval.append({"step": e.get("step"), **{f"eval/{k}": v for k, v in e.items()}})
    run.ppo_config = read_yaml(root / "ppo" / "config.yaml")
    for folder in sorted(root.glob("rm_*")):
        if (s := read_json(folder / "summary.json")) is not None:
            run.rms[folder.name.removeprefix("rm_")] = s
    run.select = read_json(root / "select" / "select.json") or {}
    rounds = sorted((root / "rs").glob("round-*"), key=_round_number)
    run.rs_rounds = [s for p in rounds if (s := read_json(p / "stats.json")) is not None]
    return run


# ---------------------------------------------------------------------------------------
# Markdown helpers
# ---------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        return f"{x:.{digits}g}" if x != 0 and abs(x) < 10 ** (-digits + 1) else f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def note(text: str) -> str:
    return f"> {text}"


def image(path: Path | None, alt: str) -> list[str]:
    return [f"![{alt}]({PLOT_DIR}/{path.name})"] if path is not None else []
