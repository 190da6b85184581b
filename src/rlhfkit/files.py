"""Files written so that a reader (or a run killed mid-write) never sees half of one: every
write goes to a hidden temporary file beside the target, is flushed and fsynced, then
renamed over the target in one step. Plain Python: the world's commands use it without
torch. Folders (checkpoints) are `models.checkpoint.atomic_dir`'s."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing ('w' text, UTF-8, '\\n' newlines; or 'wb'); on a
    clean exit it replaces `path`, on an error it is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    text = "b" not in mode
    try:
        with open(tmp, mode, **({"encoding": "utf-8", "newline": "\n"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(v: Any) -> Any:
    """A JSON-ready value: tensors and NumPy scalars as numbers, non-finite floats as text."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json(path: str | Path, data: Any) -> None:
    """One JSON document, indented, atomically."""
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, default=_plain) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """JSON Lines, one record a line, atomically; returns the file's size in bytes."""
    with atomic_file(path) as f:
        f.writelines(json.dumps(r, default=_plain) + "\n" for r in rows)
    return Path(path).stat().st_size


def write_text(path: str | Path, text: str) -> None:
    """A text file, atomically."""
    with atomic_file(path) as f:
        f.write(text)
