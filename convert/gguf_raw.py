"""A minimal GGUF reader and header writer that keep metadata values as raw bytes.

The quantizer copies every metadata entry unchanged, so it never needs to decode the large
tokenizer arrays (150k token strings and merges): each entry is kept as the bytes of its
value and written back verbatim. Parsing walks the string arrays by their length prefixes
only, which takes a fraction of a second where a full decode takes many seconds. Tensor data
is reached through a read-only memory map of the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Sequence, Tuple

import numpy as np

from .names import key_name

__all__ = [
    "GGUF_MAGIC",
    "DEFAULT_ALIGNMENT",
    "RawKV",
    "RawTensor",
    "RawGGUF",
    "GGUFParseError",
    "write_header",
    "encode_u32",
    "raw_kv",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types: id -> (struct format or None for variable-sized, name).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR_FORMATS = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}


class GGUFParseError(ValueError):
    """The bytes are not a well-formed GGUF file (the message says where)."""


@dataclass
class RawKV:
    key: str
    vtype: int
    value: bytes  # the encoded value, exactly as in the file (after the type id)

    def decode(self) -> Any:
        """The value for scalars and strings; None for arrays."""
        if self.vtype in _SCALAR_FORMATS:
            return struct.unpack_from(_SCALAR_FORMATS[self.vtype], self.value)[0]
        if self.vtype == _STRING:
            (n,) = struct.unpack_from("<Q", self.value)
            return self.value[8 : 8 + n].decode("utf-8", errors="replace")
        return None


@dataclass
class RawTensor:
    name: str
    ne: Tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: int
    offset: int  # relative to the start of the data section


class _Cursor:
    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFParseError(f"truncated while reading {what} at byte {self.pos} (file size {self.size})")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFParseError(f"{what} is not UTF-8 (byte {self.pos - n})") from None

    def skip_value(self, vtype: int, what: str) -> None:
        if vtype in _SCALAR_FORMATS:
            n = struct.calcsize(_SCALAR_FORMATS[vtype])
            self.need(n, what)
            self.pos += n
        elif vtype == _STRING:
            n = self.unpack("<Q", what)
            self.need(n, what)
            self.pos += n
        elif vtype == _ARRAY:
            etype = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if etype in _SCALAR_FORMATS:
                n = struct.calcsize(_SCALAR_FORMATS[etype]) * count
                self.need(n, what)
                self.pos += n
            elif etype == _STRING:
                unpack, buf, size, pos = struct.unpack_from, self.buf, self.size, self.pos
                for _ in range(count):
                    if pos + 8 > size:
                        self.pos = pos
                        self.need(8, what)
                    (n,) = unpack("<Q", buf, pos)
                    pos += 8 + n
                if pos > size:
                    self.pos = size
                    self.need(1, what)
                self.pos = pos
            elif etype == _ARRAY:
                for _ in range(count):
                    self.skip_value(_ARRAY, what)
            else:
                raise GGUFParseError(f"{what}: unknown array element type {etype}")
        else:
            raise GGUFParseError(f"{what}: unknown value type {vtype}")


class RawGGUF:
    """A GGUF file: metadata as raw entries, tensor infos, and a memory map of the data."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.size = self.path.stat().st_size
        if self.size < 24:
            raise GGUFParseError(f"file too short for a GGUF header ({self.size} bytes)")
        self.map = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(self.map, self.size)
        if bytes(self.map[:4]) != GGUF_MAGIC:
            raise GGUFParseError("no GGUF magic")
        cur.pos = 4
        self.version = cur.unpack("<I", "version")
        if self.version not in (2, 3):
            raise GGUFParseError(f"unsupported GGUF version {self.version}")
        n_tensors = cur.unpack("<Q", "tensor count")
        n_kv = cur.unpack("<Q", "metadata count")
        if n_tensors > self.size or n_kv > self.size:
            raise GGUFParseError(f"implausible counts ({n_tensors} tensors, {n_kv} metadata entries)")
        self.kv: Dict[str, RawKV] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            vtype = cur.unpack("<I", f"type of {key}")
            start = cur.pos
            cur.skip_value(vtype, f"value of {key}")
            self.kv[key] = RawKV(key, vtype, bytes(self.map[start : cur.pos]))
        self.tensors: List[RawTensor] = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name {i}")
            n_dims = cur.unpack("<I", f"dimensions of {name}")
            if not 1 <= n_dims <= 4:
                raise GGUFParseError(f"tensor {name} has {n_dims} dimensions")
            ne = tuple(int(cur.unpack("<Q", f"shape of {name}")) for _ in range(n_dims))
            ggml_type = cur.unpack("<I", f"type of {name}")
            offset = cur.unpack("<Q", f"offset of {name}")
            self.tensors.append(RawTensor(name, ne, int(ggml_type), int(offset)))
        align = self.get(key_name("GENERAL_ALIGNMENT"))
        self.alignment = int(align) if isinstance(align, int) and align > 0 else DEFAULT_ALIGNMENT
        self.data_start = cur.pos + (-cur.pos % self.alignment)

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kv.get(key)
        if kv is None:
            return default
        v = kv.decode()
        return default if v is None else v

    def data(self, t: RawTensor, nbytes: int) -> np.ndarray:
        """The ``nbytes`` bytes of tensor ``t`` (a read-only view of the memory map)."""
        start = self.data_start + t.offset
        if start + nbytes > self.size:
            raise GGUFParseError(f"tensor {t.name} lies beyond the end of the file (truncated?)")
        return self.map[start : start + nbytes]

    def close(self) -> None:
        self.map = None  # type: ignore[assignment]


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encode_u32(value: int) -> Tuple[int, bytes]:
    return _UINT32, struct.pack("<I", int(value))


def write_header(
    f: BinaryIO, kvs: Sequence[RawKV], tensors: Sequence[Tuple[str, Sequence[int], int, int]], alignment: int
) -> List[int]:
    """Write a GGUF v3 header: metadata, then (name, ne, ggml type, nbytes) tensor infos with
    offsets laid out at ``alignment``; pads to the data section and returns the offsets."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for kv in kvs:
        parts.append(_str(kv.key) + struct.pack("<I", kv.vtype) + kv.value)
    offsets, offset = [], 0
    for name, ne, ggml_type, nbytes in tensors:
        parts.append(_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", int(d)) for d in ne))
        parts.append(struct.pack("<IQ", int(ggml_type), offset))
        offsets.append(offset)
        offset += nbytes + (-nbytes % alignment)
    head = b"".join(parts)
    f.write(head)
    f.write(b"\0" * (-len(head) % alignment))
    return offsets


def raw_kv(key: str, vtype_value: Tuple[int, bytes]) -> RawKV:
    return RawKV(key, vtype_value[0], vtype_value[1])
