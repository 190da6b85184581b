"""`--report-to`: metrics.jsonl always, and each tracker receives the logged scalars, offline
(TensorBoard's event files, W&B offline mode, MLflow's local file store, trackio's local
database). wandb, mlflow and trackio are optional: their tests skip when absent."""

from __future__ import annotations

import importlib.machinery
import json
import sqlite3
import sys
import time
import types

import pytest

from rlhfkit import logging as rlog
from rlhfkit.errors import UserError
from rlhfkit.logging import MetricsLogger, mlflow_key, parse_report_to


def _log_three(out, report_to):
    logger = MetricsLogger(out, report_to=report_to)
    for step, loss in ((1, 0.75), (2, 0.5), (3, 0.25)):
        logger.log(step, {"train/loss": loss, "note": "text is not a scalar"})
    logger.text("samples", "a | b", 3)
    logger.close()
    return logger


# --- parsing the option ---------------------------------------------------------------------


def test_parse_report_to():
    assert parse_report_to("tensorboard") == ["tensorboard"]
    assert parse_report_to(" TensorBoard , tensorboard ") == ["tensorboard"]
    assert parse_report_to("none") == [] and parse_report_to("") == []
    with pytest.raises(UserError, match="'none' cannot be combined"):
        parse_report_to("tensorboard,none")
    with pytest.raises(
        UserError, match=r"unknown tracker 'comet' \(choose from tensorboard, wandb"
    ):
        parse_report_to("comet")


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_a_tracker_not_installed_is_a_one_line_error_with_the_pip_command(
    tmp_path, monkeypatch, name
):
    real = rlog.importlib.util.find_spec
    monkeypatch.setattr(
        rlog.importlib.util, "find_spec", lambda m, *a: None if m == name else real(m, *a)
    )
    with pytest.raises(UserError) as e:
        MetricsLogger(tmp_path / "run", report_to=f"tensorboard,{name}")
    msg = str(e.value)
    assert "\n" not in msg and f"--report-to {name}" in msg and f"pip install {name}" in msg
    assert not (tmp_path / "run").exists()  # refused before writing anything
    # on ranks that write nothing too: every rank fails alike
    with pytest.raises(UserError):
        MetricsLogger(tmp_path / "run", enabled=False, report_to=name)


def test_mlflow_key():
    assert mlflow_key("eval/acc@2") == "eval/acc_2"
    assert mlflow_key("train/kl k3-x.y") == "train/kl k3-x.y"


# --- metrics.jsonl and TensorBoard (always installed) ----------------------------------------


def test_none_writes_metrics_jsonl_only(tmp_path):
    _log_three(tmp_path, "none")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in rows] == [0.75, 0.5, 0.25]
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_scalar_lands_in_its_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_three(tmp_path, "tensorboard")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in events] == [(1, 0.75), (2, 0.5), (3, 0.25)]
    assert "note" not in acc.Tags()["scalars"]
    assert (tmp_path / "metrics.jsonl").is_file()


# --- the optional trackers, offline ------------------------------------------------------------


def _wandb_records(path):
    """The protobuf records of an offline W&B run file: a 7-byte header, then LevelDB-log
    blocks of 32 KiB holding chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(buf)


def test_wandb_offline_scalar_lands_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'rlhfkit[trackers]')")
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data")):  # fmt: skip
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    _log_three(out, "wandb")
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"expected one offline run under {out / 'wandb'}"
    for _ in range(100):  # the W&B service may still be writing after finish(): wait for exit
        records = list(_wandb_records(runs[0]))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(h["_step"], h["train/loss"]) for h in history] == [
        ("1", "0.75"), ("2", "0.5"), ("3", "0.25")
    ]  # fmt: skip
    assert not any("note" in h for h in history)
    assert (out / "metrics.jsonl").is_file()


def test_mlflow_file_store_holds_the_metric_history(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'rlhfkit[trackers]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored after the test
    out = tmp_path / "run"
    logger = _log_three(out, "mlflow")
    assert logger.trackers == {}  # closed
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("rlhfkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.75), (2, 0.5), (3, 0.25)]
    assert "note" not in run.data.metrics


def test_trackio_local_database_holds_the_scalar(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    pytest.importorskip("trackio", reason="trackio not installed (pip install trackio)")
    import trackio.utils

    store = trackio.utils.TRACKIO_DIR
    _log_three(tmp_path / "run", "trackio")
    dbs = list(store.rglob("*.db"))
    assert dbs, f"no trackio database under {store}"
    found = []
    for db in dbs:
        con = sqlite3.connect(db)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            found += [str(row) for row in con.execute(f'SELECT * FROM "{table}"')]
        con.close()
    assert any("train/loss" in row and "0.25" in row for row in found)


def test_trackio_wiring_with_a_stand_in_module(tmp_path, monkeypatch):
    """What the tracker class calls, checked in CI where trackio is not installed: a fake
    module records init(project, name), log(scalars, step) and finish()."""
    calls = []
    fake = types.ModuleType("trackio")
    fake.__spec__ = importlib.machinery.ModuleSpec("trackio", None)
    fake.init = lambda **kw: calls.append(("init", kw))
    fake.log = lambda metrics, step=None: calls.append(("log", metrics, step))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    _log_three(tmp_path / "run", "trackio")
    assert calls[0] == ("init", {"project": "rlhfkit", "name": "run"})
    assert calls[1:4] == [
        ("log", {"train/loss": x}, s) for s, x in ((1, 0.75), (2, 0.5), (3, 0.25))
    ]
    assert calls[-1] == ("finish",)


# --- through a command ----------------------------------------------------------------------


def test_sft_report_to_reaches_the_logger(tmp_path, tiny_tokenizer, capsys):
    from rlhfkit import cli
    from tests.helpers import make_base_model, sft_rows, write_jsonl

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    args = ["sft", "--model", str(base), "--data", str(data), "--batch-size", "4",
            "--max-steps", "2", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "none"
    assert cli.main([*args, "--out", str(out), "--report-to", "none"]) == 0
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()
    bad = tmp_path / "bad"
    assert cli.main([*args, "--out", str(bad), "--report-to", "tensorboard,comet"]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'comet'" in err and "Traceback" not in err
    assert not bad.exists()  # refused before the model was loaded or anything written


def test_the_check_imports_no_torch():
    """`parse_report_to` is the --report-to check of `validate`, before torch is imported."""
    import subprocess

    code = (
        "import sys, rlhfkit.logging as l; l.parse_report_to('none'); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
