"""report/run.py: a run folder read for the report, every missing or torn file read as empty
(a note in the report, never an error), and the Markdown helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlhfkit.report.run import (
    fmt,
    image,
    load_run,
    md_table,
    note,
    read_json,
    read_jsonl,
    read_yaml,
)


def test_missing_and_torn_files_read_as_empty(tmp_path):
    assert read_json(tmp_path / "nope.json") is None
    (tmp_path / "bad.json").write_text("{oops")
    assert read_json(tmp_path / "bad.json") is None
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n[2]\n{"b": 2}\n{"c": ')  # a list, a cut line
    assert read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"b": 2}]
    assert read_jsonl(tmp_path / "nope.jsonl") == []
    (tmp_path / "c.yaml").write_text("- a list\n")
    assert read_yaml(tmp_path / "c.yaml") == {} and read_yaml(tmp_path / "nope.yaml") == {}


def test_load_run_reads_each_stage_it_finds(tmp_path):
    assert load_run(tmp_path).models == {}  # an empty folder: nothing, no error
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({"sft": {"kl": 0.0}}))
    (tmp_path / "eval" / "sft.json").write_text(json.dumps({"reward": 1.5, "responses": ["x"]}))
    (tmp_path / "ppo").mkdir()
    rows = [{"step": 1, "train/loss": 0.5}, {"step": 2, "eval/reward": 2.0}]
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for n in (10, 2):
        (tmp_path / "rs" / f"round-{n}").mkdir(parents=True)
        (tmp_path / "rs" / f"round-{n}" / "stats.json").write_text(json.dumps({"round": n}))
    run = load_run(tmp_path)
    assert run.models == {"sft": {"reward": 1.5, "kl": 0.0}}  # responses left out
    assert run.ppo_train == [rows[0]] and run.ppo_eval == [{"step": 2, "eval/reward": 2.0}]
    assert [r["round"] for r in run.rs_rounds] == [2, 10]  # by number, not by name


def test_markdown_helpers():
    assert [fmt(x) for x in (None, True, 3, 0.12345, 1e-5, math.nan, "a")] == [
        "-", "True", "3", "0.123", "1e-05", "-", "a"]  # fmt: skip
    assert md_table(["a", "b"], [[1, 0.5]]) == "| a | b |\n|---|---|\n| 1 | 0.500 |"
    assert note("x") == "> x"
    assert image(None, "alt") == [] and image(Path("/out/report/p.png"), "alt") == [
        "![alt](report/p.png)"
    ]
