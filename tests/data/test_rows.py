"""data/rows.py: raw rows of a data file before any schema: JSON Lines (lazy, with line
numbers), Parquet and `datasets` folders (row index + 1), and the records validation kept
for the command, reused while the file is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.data.test_records import GOOD_PAIR, GOOD_RANK, GOOD_SFT, write_jsonl

from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import (
    iter_json_records,
    read_prompts,
    read_sft,
)
from rlhfkit.data.rows import forget_reads, keep_reads, reuse_or_read
from rlhfkit.errors import RecordError


def test_iter_json_records_is_lazy_generic(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, "", {"b": 2}, "nope"])
    it = iter_json_records(f)
    assert next(it) == (1, {"a": 1})
    assert next(it) == (3, {"b": 2})
    with pytest.raises(RecordError, match=r"x\.jsonl:4: bad JSON"):
        next(it)


def _table(rows: list[dict]):
    """An Arrow table with the union of the rows' columns (absent = null);
    `from_pylist` alone takes the columns of the first row only."""
    pa = pytest.importorskip("pyarrow")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [GOOD_RANK, {**GOOD_RANK, "strengths": ["better", "slightly_better"]}]
    pq.write_table(_table(rows), tmp_path / "r.parquet")
    recs = read_preferences(tmp_path / "r.parquet")
    assert [r.strengths for r in recs] == [None, ["better", "slightly_better"]]
    assert [r.line for r in recs] == [1, 2] and recs[0].responses == ["a", "b", "c"]
    # mixed ranking and pairwise rows: missing columns come back as nulls
    pq.write_table(_table([GOOD_PAIR, GOOD_RANK]), tmp_path / "m.parquet")
    assert [r.ranking for r in read_preferences(tmp_path / "m.parquet")] == [[0, 1], [2, 0, 1]]
    bad = [GOOD_SFT, GOOD_SFT, {"prompt": "x", "completion": ""}]
    pq.write_table(_table(bad), tmp_path / "s.parquet")
    with pytest.raises(RecordError, match="empty") as e:
        read_sft(tmp_path / "s.parquet")
    assert e.value.line == 3  # row index + 1


def _save_like_datasets(folder: Path, rows: list[dict], n_files: int = 2) -> None:
    """The layout of `Dataset.save_to_disk`: Arrow IPC stream files listed in state.json."""
    pa = pytest.importorskip("pyarrow")
    folder.mkdir()
    names = []
    for k in range(n_files):
        name = f"data-{k:05d}-of-{n_files:05d}.arrow"
        table = _table(rows[k * 2 : k * 2 + 2])  # two rows a file
        with pa.ipc.new_stream(str(folder / name), table.schema) as w:
            w.write_table(table)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": None}))
    (folder / "dataset_info.json").write_text("{}")


def test_datasets_folder(tmp_path):
    rows = [{"prompt": f"q{i}", "safety": i % 2 == 0} for i in range(4)]
    _save_like_datasets(tmp_path / "ds", rows)
    recs = read_prompts(tmp_path / "ds")
    assert [(r.prompt, r.safety, r.line) for r in recs] == [
        (f"q{i}", i % 2 == 0, i + 1) for i in range(4)
    ]
    # a DatasetDict with one split is read through; several splits must be chosen
    (tmp_path / "dd").mkdir()
    _save_like_datasets(tmp_path / "dd" / "train", rows)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert len(read_prompts(tmp_path / "dd")) == 4
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(RecordError, match="one split"):
        read_prompts(tmp_path / "dd")


def test_datasets_folder_bad_row(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": ""}]
    _save_like_datasets(tmp_path / "ds", rows)
    with pytest.raises(RecordError) as e:
        read_prompts(tmp_path / "ds")
    assert e.value.line == 4 and "empty" in e.value.problem


def test_records_kept_by_validation_are_reused_until_the_file_changes(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    reads = []

    def read():
        reads.append(1)
        return [len(reads)]

    forget_reads()
    assert reuse_or_read(path, "k", read) == [1]  # not kept outside keep_reads
    with keep_reads():
        assert reuse_or_read(path, "k", read) == [2]
    got = reuse_or_read(path, "k", read)
    assert got == [2] and len(reads) == 2  # reused, as a copy
    got.append("x")
    assert reuse_or_read(path, "k", read) == [2]
    assert reuse_or_read(path, "other kind", read) == [3]
    write_jsonl(path, [{"prompt": "a"}, {"prompt": "b"}])  # rewritten: read again
    assert reuse_or_read(path, "k", read) == [4]
    with keep_reads():
        reuse_or_read(path, "k", read)
    forget_reads()
    assert reuse_or_read(path, "k", read) == [6]
