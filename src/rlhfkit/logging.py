"""Metrics for people and machines: a progress bar, `metrics.jsonl`, experiment trackers.

Only rank 0 writes or prints (under torchrun every rank builds a logger; the others are
silent). `metrics.jsonl` is always written; `--report-to` adds trackers, comma-separated:
- tensorboard (the default; a pinned dependency): `out/tensorboard/`;
- wandb: a W&B run named after the out folder, its files in `out/wandb/` (online or offline
  as W&B is set up: `WANDB_MODE=offline` or `wandb offline` keep it on this machine);
- mlflow: an MLflow run in experiment "rlhfkit" at `MLFLOW_TRACKING_URI`, else in a local
  file store `out/mlruns/` (`mlflow ui --backend-store-uri out/mlruns`);
- trackio: a trackio run in project "rlhfkit", stored where trackio stores (`TRACKIO_DIR`);
- none: no tracker.
wandb, mlflow and trackio are optional (`pip install 'rlhfkit[trackers]'` installs wandb and
mlflow-skinny; `pip install trackio`): one asked for but not installed is a one-line
`UserError` naming --report-to and the pip command, raised by `parse_report_to` (torch-free).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfkit.errors import UserError
from rlhfkit.files import json_ready

if TYPE_CHECKING:
    import torch

PROJECT = "rlhfkit"
"""The W&B / trackio project and the MLflow experiment of every run."""


def rank0_print(*args: Any, rank: int = 0, **kwargs: Any) -> None:
    if rank == 0:
        print(*args, **kwargs, flush=True)


# --- one class per tracker: __init__(out), log(step, scalars), text(tag, text, step), close()


class TensorBoardTracker:
    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, out: Path):
        import wandb

        self.run = wandb.init(project=PROJECT, name=out.name, dir=str(out), reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        pass  # samples tables go to TensorBoard only

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, out: Path):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store; MLflow 3 asks to opt in to it (no database needed)
            uri = (out / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(PROJECT)
        experiment = found.experiment_id if found else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(experiment, run_name=out.name).info.run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{mlflow_key(tag)}/step-{step}.txt")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    def __init__(self, out: Path):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=out.name)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.trackio.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        pass  # samples tables go to TensorBoard only

    def close(self) -> None:
        self.trackio.finish()


TRACKERS: dict[str, type] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
    "trackio": TrackioTracker,
}
"""--report-to NAME -> its tracker class."""


def mlflow_key(name: str) -> str:
    """An MLflow metric name: letters, digits and _-./ and spaces only ("acc@2" -> "acc_2")."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def parse_report_to(text: str | None) -> list[str]:
    """ "tensorboard,wandb" -> ["tensorboard", "wandb"]; "none" or "" -> []. Checks each name
    and that its package is installed (without importing it): a UserError otherwise."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name == "none":
            raise UserError(f"--report-to {text}: 'none' cannot be combined with trackers")
        if name not in TRACKERS:
            known = ", ".join([*TRACKERS, "none"])
            raise UserError(f"--report-to {text}: unknown tracker {name!r} (choose from {known})")
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise UserError(f"--report-to {name}: {name} is not installed; pip install {name}")
    return list(dict.fromkeys(names))


class MetricsLogger:
    """Appends `{"step", "time", **metrics}` lines to `out/metrics.jsonl` and logs the numbers
    to each tracker of `report_to` (module docstring)."""

    def __init__(
        self, out: str | Path | None, *, enabled: bool = True, report_to: str = "tensorboard"
    ):
        names = parse_report_to(report_to)  # on every rank: all fail alike, none hangs
        self.enabled = enabled and out is not None
        self.start = time.time()
        self._jsonl = None
        self.trackers: dict[str, Any] = {}
        if not self.enabled:
            return
        out = Path(out)  # type: ignore[arg-type]
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        for name in names:
            try:
                self.trackers[name] = TRACKERS[name](out)
            except ImportError as e:
                if name != "tensorboard":  # installed (parse_report_to checked) but broken
                    raise UserError(f"--report-to {name}: cannot import {name}: {e}") from None
                print(f"rlhfkit: TensorBoard disabled ({e})", file=sys.stderr)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: json_ready(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        scalars = {
            k: v
            for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, (int, float))
        }
        if scalars:
            for tracker in self.trackers.values():
                tracker.log(step, scalars)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            for tracker in self.trackers.values():
                tracker.text(tag, text, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}


@functools.cache
def _bar_class() -> type:
    """tqdm whose `update` first calls `rlhfkit.threads.check` (built once, on first use:
    tqdm is imported only when a bar is needed)."""
    from tqdm.auto import tqdm

    from rlhfkit import threads

    class Bar(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            threads.check()
            return super().update(n)

    return Bar


def progress(total: int | None, *, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (disabled off rank 0 or when asked). Its updates also re-check
    torch's thread count against the other processes' load (`rlhfkit.threads.check`)."""
    return _bar_class()(
        total=total,
        desc=desc,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
    )


def format_metrics(metrics: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """Short strings for a progress-bar postfix."""
    out = {}
    for k, v in metrics.items():
        if keys is not None and k not in keys:
            continue
        v = v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v  # 0-d tensor
        out[k] = f"{v:.3g}" if isinstance(v, float) else str(json_ready(v))  # nan stays "nan"
    return out


def sync_time(device: torch.device) -> float:
    """perf_counter after the device finished its queued work (honest GPU timings)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()
