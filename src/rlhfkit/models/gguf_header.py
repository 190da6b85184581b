"""A GGUF file's header, read in plain Python: is it a GGUF (llama.cpp's format), whole?

`read_gguf_header` walks the header the way llama.cpp writes it (GGUF v2 and v3, little
endian): the magic b"GGUF", the version, the tensor and metadata counts, every metadata
key and value (string arrays, such as a 49k-token vocabulary, are stepped over, not
decoded), then the tensor table; the tensor data starts at the next `general.alignment`
boundary (32 by default). The file must be long enough to hold the tensor that ends last,
so a truncated download or an interrupted copy is caught here, in milliseconds, before
transformers dequantizes anything. Block sizes of the quantized types come from the
`gguf` package (llama.cpp's own Python reader, imported only for a quantized tensor).

This module imports no torch and no transformers: `rlhfkit.validate` calls it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import UserError

GGUF_SUFFIX = ".gguf"
MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 counted in 32 bits; transformers reads v2 and v3
DEFAULT_ALIGNMENT = 32

# Metadata value types: fixed-size ones by struct format; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
# ggml types stored as plain values (not blocks): F32, F16, BF16, F64 and the integers.
_PLAIN_BYTES = {0: 4, 1: 2, 30: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8}


def is_gguf_path(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by its suffix: what a user gives as a model)."""
    return str(path).lower().endswith(GGUF_SUFFIX)


@dataclass(frozen=True)
class GGUFHeader:
    """What the header says: the version, the architecture, the scalar metadata (strings
    and numbers; arrays are counted, not kept), and the number of bytes the file needs."""

    path: Path
    version: int
    architecture: str
    metadata: dict[str, object]
    n_tensors: int
    needed_bytes: int

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)


class _Corrupt(Exception):
    """The header does not parse: cut short, or not written as GGUF."""


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Corrupt("cut short inside the header")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def string(self, keep: bool = True) -> str | None:
        (n,) = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise _Corrupt("cut short inside the header")
        start, self.pos = self.pos, self.pos + n
        if not keep:
            return None
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt("a metadata string is not UTF-8") from None

    def value(self, kind: int) -> object:
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])[0]
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<IQ")
            if item in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[item])
            elif item == _STRING:
                for _ in range(count):  # a vocabulary: stepped over, not decoded
                    self.string(keep=False)
            else:
                raise _Corrupt(f"an array of metadata type {item}")
            if self.pos > len(self.buf):
                raise _Corrupt("cut short inside the header")
            return f"<array of {count}>"
        raise _Corrupt(f"unknown metadata type {kind}")


def _tensor_bytes(kind: int, elements: int) -> int:
    if kind in _PLAIN_BYTES:
        return elements * _PLAIN_BYTES[kind]
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise _Corrupt(f"unknown tensor type {kind}") from None
    return elements // block * size


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """The header of the GGUF file `path`; UserError naming the file if it is not one, is
    of an unsupported version, or is shorter than its tensor table says."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"GGUF file {file} does not exist")
    if not file.is_file():
        raise UserError(f"{file} is a folder, not a GGUF file")
    size = file.stat().st_size
    with file.open("rb") as f:
        if f.read(4) != MAGIC:
            raise UserError(
                f"{file}: not a GGUF file (it does not start with the GGUF magic bytes); "
                "give a llama.cpp .gguf file or a Hugging Face model folder"
            )
        if size < 24:
            raise UserError(
                f"{file}: a truncated GGUF file ({size} bytes); download or copy it again"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(file, buf, size)
            except _Corrupt as e:
                raise UserError(
                    f"{file}: a corrupt or truncated GGUF file ({e}); download or copy it again"
                ) from None


def _parse(file: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    r = _Reader(buf)
    r.pos = 4
    (version,) = r.unpack("<I")
    if version not in VERSIONS:
        raise UserError(
            f"{file}: GGUF version {version}; supported: {', '.join(map(str, VERSIONS))} "
            "(re-export it with a recent llama.cpp)"
        )
    n_tensors, n_kv = r.unpack("<QQ")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        (kind,) = r.unpack("<I")
        metadata[str(key)] = r.value(kind)
    end = 0
    for _ in range(n_tensors):
        r.string(keep=False)
        (dims,) = r.unpack("<I")
        if dims > 8:
            raise _Corrupt(f"a tensor with {dims} dimensions")
        shape = r.unpack(f"<{dims}Q")
        kind, offset = r.unpack("<IQ")
        elements = 1
        for d in shape:
            elements *= d
        end = max(end, offset + _tensor_bytes(kind, elements))
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    align = align if isinstance(align, int) and align > 0 else DEFAULT_ALIGNMENT
    start = -(-r.pos // align) * align
    needed = start + end if n_tensors else r.pos
    if needed > size:
        raise UserError(
            f"{file}: truncated ({size} bytes, its tensor table needs {needed}); "
            "download or copy it again"
        )
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise _Corrupt("no general.architecture in its metadata")
    return GGUFHeader(file, version, arch, metadata, n_tensors, needed)


def check_gguf_file(path: str) -> None:
    """An option that takes a GGUF file only (`rlhfkit convert FILE.gguf`): UserError if
    `path` does not name one or its header is not whole (`read_gguf_header`)."""
    if not is_gguf_path(path):
        hint = " (a folder: it is already a Hugging Face model)" if Path(path).is_dir() else ""
        raise UserError(f"{path}: not a .gguf file{hint}")
    read_gguf_header(path)
