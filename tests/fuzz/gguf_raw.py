"""A minimal GGUF (v2/v3) reader and writer that can also write *lies*: header counts, string
and array lengths, tensor dims/types/offsets that disagree with what follows.

The tensor data region is kept as raw bytes and copied verbatim after the (re)written header,
padded to the alignment the *original* file used, so a mutation of ``general.alignment`` makes
the loader look for the data where it is not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
           U64: "<Q", I64: "<q", F64: "<d"}


@dataclass
class KV:
    key: str
    vtype: int
    value: Any                  # scalar, str (bytes allowed) or list for arrays
    subtype: Optional[int] = None
    # lies, applied when writing
    key_len: Optional[int] = None       # the u64 written before the key bytes
    str_len: Optional[int] = None       # for STR values
    arr_len: Optional[int] = None       # the u64 element count written for arrays
    raw: Optional[bytes] = None         # value bytes exactly as read (used when unchanged)


@dataclass
class TensorInfo:
    name: str
    dims: List[int]
    ttype: int
    offset: int
    n_dims: Optional[int] = None        # lie: the u32 n_dims written (dims list written as is)


@dataclass
class GGUF:
    version: int
    kvs: List[KV]
    tensors: List[TensorInfo]
    alignment: int
    data: bytes                         # the tensor data region
    n_tensors: Optional[int] = None     # lies for the header counts
    n_kv: Optional[int] = None
    magic: bytes = b"GGUF"
    data_start: int = 0                 # where the data region started in the source file

    def kv(self, key: str) -> Optional[KV]:
        for k in self.kvs:
            if k.key == key:
                return k
        return None

    def arch(self) -> str:
        k = self.kv("general.architecture")
        v = k.value if k else ""
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class _R:
    def __init__(self, buf: memoryview):
        self.b, self.o = buf, 0

    def take(self, n: int) -> bytes:
        if self.o + n > len(self.b):
            raise ValueError("truncated")
        v = bytes(self.b[self.o:self.o + n])
        self.o += n
        return v

    def fmt(self, f: str):
        n = struct.calcsize(f)
        return struct.unpack(f, self.take(n))[0]

    def string(self) -> bytes:
        return self.take(self.fmt("<Q"))


def _read_value(r: _R, vtype: int, want_value: bool = True) -> Tuple[Any, Optional[int]]:
    if vtype in _SCALAR:
        return r.fmt(_SCALAR[vtype]), None
    if vtype == STR:
        s = r.string()
        try:
            return s.decode("utf-8"), None
        except UnicodeDecodeError:
            return s, None
    if vtype == ARR:
        sub = r.fmt("<I")
        n = r.fmt("<Q")
        if sub in _SCALAR:
            f = _SCALAR[sub]
            size = struct.calcsize(f)
            raw = r.take(size * n)
            return list(struct.unpack("<%d%s" % (n, f[1:]), raw)), sub
        return [_read_value(r, sub)[0] for _ in range(n)], sub
    raise ValueError("bad value type %d" % vtype)


def parse(data: bytes) -> GGUF:
    r = _R(memoryview(data))
    magic = r.take(4)
    if magic != b"GGUF":
        raise ValueError("not a GGUF")
    version = r.fmt("<I")
    n_t, n_kv = r.fmt("<Q"), r.fmt("<Q")
    kvs: List[KV] = []
    for _ in range(n_kv):
        key = r.string().decode("utf-8")
        vtype = r.fmt("<I")
        start = r.o
        value, sub = _read_value(r, vtype)
        kvs.append(KV(key, vtype, value, sub, raw=bytes(r.b[start:r.o])))
    tensors: List[TensorInfo] = []
    for _ in range(n_t):
        name = r.string().decode("utf-8")
        nd = r.fmt("<I")
        dims = [r.fmt("<Q") for _ in range(nd)]
        tt = r.fmt("<I")
        off = r.fmt("<Q")
        tensors.append(TensorInfo(name, dims, tt, off))
    align = 32
    for k in kvs:
        if k.key == "general.alignment" and isinstance(k.value, int):
            align = k.value
    start = (r.o + align - 1) // align * align
    return GGUF(version, kvs, tensors, align, bytes(data[start:]), data_start=start)


def _enc_str(s: Any, length: Optional[int] = None) -> bytes:
    b = s if isinstance(s, (bytes, bytearray)) else str(s).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(b) if length is None else length & 0xFFFFFFFFFFFFFFFF) + bytes(b)


def _enc_scalar(vtype: int, v: Any) -> bytes:
    f = _SCALAR[vtype]
    if f in ("<f", "<d"):
        return struct.pack(f, float(v))
    size = struct.calcsize(f)
    return (int(v) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def encode_value(kv: KV) -> bytes:
    vtype, v = kv.vtype, kv.value
    if vtype in _SCALAR:
        return _enc_scalar(vtype, v)
    if vtype == STR:
        return _enc_str(v, kv.str_len)
    if vtype == ARR:
        sub = kv.subtype if kv.subtype is not None else I32
        n = len(v) if kv.arr_len is None else kv.arr_len
        out = [struct.pack("<IQ", sub & 0xFFFFFFFF, n & 0xFFFFFFFFFFFFFFFF)]
        if sub in _SCALAR:
            f = _SCALAR[sub]
            if f in ("<f", "<d"):
                out.append(struct.pack("<%d%s" % (len(v), f[1:]), *[float(x) for x in v]))
            else:
                out.extend(_enc_scalar(sub, x) for x in v)
        elif sub == STR:
            out.extend(_enc_str(x) for x in v)
        else:
            raise ValueError("nested arrays are not written")
        return b"".join(out)
    raise ValueError("bad value type %d" % vtype)


def write(g: GGUF) -> bytes:
    out = [g.magic, struct.pack("<I", g.version & 0xFFFFFFFF),
           struct.pack("<Q", (len(g.tensors) if g.n_tensors is None else g.n_tensors) & 0xFFFFFFFFFFFFFFFF),
           struct.pack("<Q", (len(g.kvs) if g.n_kv is None else g.n_kv) & 0xFFFFFFFFFFFFFFFF)]
    for kv in g.kvs:
        out.append(_enc_str(kv.key, kv.key_len))
        out.append(struct.pack("<I", kv.vtype & 0xFFFFFFFF))
        if kv.raw is not None:
            out.append(kv.raw)
        else:
            out.append(encode_value(kv))
    for t in g.tensors:
        out.append(_enc_str(t.name))
        out.append(struct.pack("<I", (len(t.dims) if t.n_dims is None else t.n_dims) & 0xFFFFFFFF))
        out.extend(struct.pack("<Q", d & 0xFFFFFFFFFFFFFFFF) for d in t.dims)
        out.append(struct.pack("<I", t.ttype & 0xFFFFFFFF))
        out.append(struct.pack("<Q", t.offset & 0xFFFFFFFFFFFFFFFF))
    head = b"".join(out)
    pad = (-len(head)) % g.alignment if g.alignment > 0 else 0
    return head + b"\0" * pad + g.data
