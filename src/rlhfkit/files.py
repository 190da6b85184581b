"""Files written so that a reader (or a run killed mid-write) never sees half of one: every
write goes to a hidden temporary file beside the target, is flushed and fsynced, then
renamed over the target in one step. Plain Python: the world's commands use it without
torch. Folders (checkpoints, exported models) are written whole the same way: `atomic_dir`."""

from __future__ import annotations

import json
import math
import os
import shutil
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


def json_ready(v: Any) -> Any:
    """A JSON-ready value: tensors and NumPy scalars as numbers, non-finite floats (NaN,
    infinities: JSON has none) as null."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def json_clean(data: Any) -> Any:
    """`data` with `json_ready` applied to every value inside dicts, lists and tuples."""
    if isinstance(data, dict):
        return {k: json_clean(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_clean(v) for v in data]
    return json_ready(data)


def to_json(data: Any, **kwargs: Any) -> str:
    """`json.dumps` of `json_clean(data)`: standard JSON, never a bare NaN or Infinity
    (`json.dumps` writes those for floats and most readers other than Python's refuse them)."""
    return json.dumps(json_clean(data), allow_nan=False, **kwargs)


def write_json(path: str | Path, data: Any) -> None:
    """One JSON document, indented, atomically (NaN and infinities as null)."""
    with atomic_file(path) as f:
        f.write(to_json(data, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """JSON Lines, one record a line, atomically (NaN and infinities as null); returns the
    file's size in bytes."""
    with atomic_file(path) as f:
        f.writelines(to_json(r) + "\n" for r in rows)
    return Path(path).stat().st_size


def write_text(path: str | Path, text: str) -> None:
    """A text file, atomically."""
    with atomic_file(path) as f:
        f.write(text)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk (best effort on folders)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    try:  # folders cannot be opened on Windows; the rename is still atomic there
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _recover(final: Path) -> None:
    """Undo what a kill during a previous swap of `final` left behind.

    Killed between "rename old aside" and "rename new in": `final` is missing and its old
    version sits in `.old-<name>-<pid>`: put it back. Killed after the swap: delete the old.
    """
    olds = sorted(final.parent.glob(f".old-{final.name}-*"))
    if not final.exists() and olds:
        olds[-1].rename(final)
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def start_dir(final_path: str | Path, tag: str | int | None = None) -> Path:
    """A new, empty temporary sibling of `final_path` to write into (`commit_dir` puts it in
    place). `tag` names it (default: this process's id); a leftover of that name is removed,
    as is what a kill during an earlier swap of `final_path` left behind."""
    final = Path(final_path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid() if tag is None else tag}"
    if tmp.exists():  # left by a killed process with the same tag
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, final_path: str | Path) -> Path:
    """Flush `tmp` to disk and make it `final_path` in one rename: an existing `final_path`
    is renamed aside first and deleted after."""
    final = Path(final_path).absolute()
    _fsync_tree(tmp)
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


@contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes `final_path` in one rename.

    An existing `final_path` is renamed aside, the new folder renamed in, then the old one
    deleted. On an exception the temporary folder is removed and `final_path` is untouched.
    """
    tmp = start_dir(final_path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, final_path)
