"""Raw rows of a data file, before any schema: JSON Lines, a Parquet file, or a folder
written by `datasets.Dataset.save_to_disk` (Arrow), each row with its line number (row
index + 1 for Parquet/Arrow). `data.records` validates them. No torch import here.

`rlhfkit.validate` reads every data file of a command before torch loads (`keep_reads`);
the command's own read of the same, unchanged file then takes those records instead of
reading and checking the file a second time (`reuse_or_read`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rlhfkit.errors import RecordError, UserError

PathLike = str | Path
T = TypeVar("T")


class _Bad(Exception):
    """A problem with one record; the reader adds file and line."""


# ---------------------------------------------------------------- records read once


_KEPT: dict[tuple[str, str], tuple[tuple[int, int], list]] = {}
_keeping = False


def _stamp(p: Path) -> tuple[int, int]:
    """(size, mtime) of a file, or of a folder's newest entry: changes when it is rewritten."""
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    stats = [f.stat() for f in files]
    return (sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))


@contextmanager
def keep_reads() -> Iterator[None]:
    """Records read inside are kept for the command that runs next (`reuse_or_read`)."""
    global _keeping
    _keeping = True
    try:
        yield
    finally:
        _keeping = False


def forget_reads() -> None:
    """Drop the kept records (a command finished, or never ran)."""
    _KEPT.clear()


def reuse_or_read(path: Path, kind: str, read: Callable[[], list[T]]) -> list[T]:
    """`read()`, unless records of this `kind` were kept from this unchanged file: those
    then (a shallow copy; the record objects are shared), until `forget_reads`."""
    key = (str(path.resolve()), kind)
    kept = _KEPT.get(key)
    if kept is not None and path.exists() and kept[0] == _stamp(path):
        return list(kept[1])
    out = read()
    if _keeping:
        _KEPT[key] = (_stamp(path), out)
    return out


# ---------------------------------------------------------------- raw rows


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError(
            "reading Parquet files and datasets folders needs pyarrow: pip install 'rlhfkit[data]'"
        ) from e
    return pyarrow


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | _Bad]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, _Bad(f"invalid UTF-8 (byte {e.start} of the line)")
                continue
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue  # blank lines are allowed
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, _Bad(f"bad JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield (
                    line_no,
                    _Bad(
                        f"record is not a JSON object (got {type(obj).__name__}); "
                        "expected JSON Lines: one object per line"
                    ),
                )
                continue
            yield line_no, obj


def _arrow_files(folder: Path) -> list[Path]:
    """The arrow files of a folder written by `Dataset.save_to_disk`, in row order."""
    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        if len(splits) != 1:
            raise RecordError(
                str(folder), None, f"a DatasetDict with splits {splits}: give one split's folder"
            )
        return _arrow_files(folder / splits[0])
    state = folder / "state.json"
    if state.exists():
        names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
        return [folder / n for n in names]
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise RecordError(
            str(folder), None, "a folder without arrow files is not a datasets folder"
        )
    return files


def _arrow_rows(path: Path) -> Iterator[tuple[int, dict | _Bad]]:
    pa = _pyarrow()
    if path.is_dir():
        batches: Iterable[Any] = (b for f in _arrow_files(path) for b in _read_arrow_file(pa, f))
    else:
        batches = pa.parquet.ParquetFile(str(path)).iter_batches(batch_size=4096)
    row = 0
    for batch in batches:
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def _read_arrow_file(pa: Any, f: Path) -> Iterator[Any]:
    # datasets writes the Arrow IPC stream format; accept the file format too.
    try:
        reader = pa.ipc.open_stream(str(f))
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(str(f))
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
        return
    yield from reader


def _rows(path: Path) -> Iterator[tuple[int, dict | _Bad]]:
    if not path.exists():
        raise RecordError(str(path), None, "file not found")
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return _arrow_rows(path)
    return _jsonl_rows(path)


def iter_json_records(path: PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line, record) from a JSON Lines file, a .parquet file or a datasets folder.

    Lazy: raises RecordError at the first undecodable line or non-object record.
    Blank lines of a JSON Lines file are skipped; line numbers count them.
    """
    p = Path(path)
    for line, obj in _rows(p):
        if isinstance(obj, _Bad):
            raise RecordError(str(p), line, str(obj))
        yield line, obj


def _read_all(path: PathLike, parse: Callable[[dict, int, str], T]) -> list[T]:
    """Parse every record of `path`; raise the first problem, with the count of bad records."""
    p = Path(path)
    return reuse_or_read(
        p, f"{parse.__module__}.{parse.__qualname__}", lambda: _parse_all(p, parse)
    )


def _parse_all(p: Path, parse: Callable[[dict, int, str], T]) -> list[T]:
    out: list[T] = []
    first: tuple[int, str] | None = None
    n_bad = 0
    for line, obj in _rows(p):
        try:
            if isinstance(obj, _Bad):
                raise obj
            out.append(parse(obj, line, str(p)))
        except _Bad as e:
            n_bad += 1
            first = first or (line, str(e))
    if first is not None:
        where = "the only bad record" if n_bad == 1 else f"first of {n_bad} bad records"
        raise RecordError(str(p), first[0], f"{first[1]} ({where} in this file)")
    if not out:
        raise RecordError(str(p), None, "empty file: no records")
    return out
