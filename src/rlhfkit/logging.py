"""Metrics for people and machines: a progress bar, `metrics.jsonl`, TensorBoard.

Only rank 0 writes or prints (under torchrun every rank builds a logger; the others are
silent). TensorBoard is optional at run time: without it, JSONL still records everything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlhfkit.files import json_ready


def rank0_print(*args: Any, rank: int = 0, **kwargs: Any) -> None:
    if rank == 0:
        print(*args, **kwargs, flush=True)


class MetricsLogger:
    """Appends `{"step", "time", **metrics}` lines to `out/metrics.jsonl` and TensorBoard."""

    def __init__(self, out: str | Path | None, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled and out is not None
        self.start = time.time()
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        out = Path(out)  # type: ignore[arg-type]
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tensorboard"))
            except Exception as e:  # pragma: no cover - tensorboard is a pinned dependency
                print(f"rlhfkit: TensorBoard disabled ({e})", file=sys.stderr)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: json_ready(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def progress(total: int | None, *, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (disabled off rank 0 or when asked)."""
    from tqdm.auto import tqdm

    return tqdm(
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
        v = json_ready(v)
        out[k] = f"{v:.3g}" if isinstance(v, float) else str(v)
    return out


def sync_time(device: torch.device) -> float:
    """perf_counter after the device finished its queued work (honest GPU timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
