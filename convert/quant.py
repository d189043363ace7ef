"""Output types: which ggml type each tensor gets, and how float32 rows are encoded into it.

Two tables make this extensible. ``ENCODINGS`` maps a ggml type to its row encoder (float32
rows in, the bytes ggml expects out). ``OUTTYPES`` maps a ``--outtype`` name to the type that
2-D weights take, the ``general.file_type`` value (llama.cpp's LlamaFileType numbering) and
the rules deciding which tensors may take that type. Adding Q4_0 or Q4_K later means one
encoder entry (``gguf.quants`` implements both), one ``OutType`` entry, and rules such as
"token_embd and output stay Q8_0" expressed in ``OutType.pick``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gguf_quants

from .checkpoint import ConvertError

__all__ = ["OutType", "OUTTYPES", "ENCODINGS", "Encoding", "choose_type", "row_bytes", "tensor_bytes", "encode_rows"]

Q = GGMLQuantizationType

# Largest magnitude representable in IEEE half precision.
_F16_MAX = 65504.0


def _encode_f32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def _encode_f16(rows: np.ndarray) -> np.ndarray:
    if rows.size and float(np.max(np.abs(rows))) > _F16_MAX:
        raise ConvertError("values beyond the f16 range (|x| > 65504); use --outtype bf16 or f32")
    return rows.astype(np.float16)


def _encode_with_gguf(qtype: GGMLQuantizationType) -> Callable[[np.ndarray], np.ndarray]:
    def encode(rows: np.ndarray) -> np.ndarray:
        return gguf_quants.quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype)

    return encode


@dataclass(frozen=True)
class Encoding:
    """How to produce one ggml type from float32 rows."""

    qtype: GGMLQuantizationType
    encode: Callable[[np.ndarray], np.ndarray]

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def quantized(self) -> bool:
        return self.qtype not in (Q.F32, Q.F16, Q.BF16)


ENCODINGS: Dict[GGMLQuantizationType, Encoding] = {
    Q.F32: Encoding(Q.F32, _encode_f32),
    Q.F16: Encoding(Q.F16, _encode_f16),
    Q.BF16: Encoding(Q.BF16, _encode_with_gguf(Q.BF16)),
    Q.Q8_0: Encoding(Q.Q8_0, _encode_with_gguf(Q.Q8_0)),
}


def _encode_bytes(rows: np.ndarray) -> np.ndarray:
    if rows.dtype not in (np.int8, np.uint8):
        raise ConvertError("I8 tensors hold raw bytes, not float values")
    return np.ascontiguousarray(rows).view(np.int8)


# Raw bytes (a file embedded as a tensor, e.g. the CAM++ ONNX model of convert/t2w_voice.py).
ENCODINGS[Q.I8] = Encoding(Q.I8, _encode_bytes)


def _encode_i32(rows: np.ndarray) -> np.ndarray:
    if rows.dtype.kind not in "iu":
        raise ConvertError("I32 tensors hold integers, not float values")
    return np.ascontiguousarray(rows, dtype=np.int32)


# Integers (a default voice's speech tokens, convert/t2w_voice.py).
ENCODINGS[Q.I32] = Encoding(Q.I32, _encode_i32)


def _default_pick(out: "OutType", tensor_id: str, shape: Sequence[int]) -> Tuple[GGMLQuantizationType, Optional[str]]:
    """The rules shared by every output type.

    1-D tensors (norms, biases) stay F32 as llama.cpp keeps them. 2-D weights, token_embd
    included, take the chosen type; a block type whose block does not divide the row length
    falls back to ``out.fallback`` and says so.
    """
    if len(shape) < 2:
        return Q.F32, None
    enc = ENCODINGS[out.weight_type]
    row = int(shape[-1])
    if row % enc.block_size != 0:
        return out.fallback, (
            f"row length {row} is not a multiple of the {out.weight_type.name} block size {enc.block_size}; "
            f"written as {out.fallback.name}"
        )
    return out.weight_type, None


@dataclass(frozen=True)
class OutType:
    """One ``--outtype`` choice."""

    name: str
    file_type: int
    weight_type: GGMLQuantizationType
    fallback: GGMLQuantizationType = Q.F16
    rules: Callable[["OutType", str, Sequence[int]], Tuple[GGMLQuantizationType, Optional[str]]] = field(
        default=_default_pick, compare=False
    )

    @property
    def quantized(self) -> bool:
        return ENCODINGS[self.weight_type].quantized

    def pick(self, tensor_id: str, shape: Sequence[int]) -> Tuple[GGMLQuantizationType, Optional[str]]:
        """The ggml type for a tensor (by its name-table ID and numpy shape), and a notice or None."""
        return self.rules(self, tensor_id, shape)


OUTTYPES: Dict[str, OutType] = {
    "f32": OutType("f32", int(LlamaFileType.ALL_F32), Q.F32),
    "f16": OutType("f16", int(LlamaFileType.MOSTLY_F16), Q.F16),
    "bf16": OutType("bf16", int(LlamaFileType.MOSTLY_BF16), Q.BF16),
    "q8_0": OutType("q8_0", int(LlamaFileType.MOSTLY_Q8_0), Q.Q8_0),
}


def choose_type(outtype: str, tensor_id: str, shape: Sequence[int]) -> Tuple[GGMLQuantizationType, Optional[str]]:
    try:
        out = OUTTYPES[outtype]
    except KeyError:
        raise ConvertError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}") from None
    return out.pick(tensor_id, shape)


def row_bytes(qtype: GGMLQuantizationType, n: int) -> int:
    """Bytes of one row of ``n`` elements in ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    if n % block != 0:
        raise ValueError(f"row of {n} elements does not split into {qtype.name} blocks of {block}")
    return n // block * size


def tensor_bytes(qtype: GGMLQuantizationType, shape: Sequence[int]) -> int:
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * row_bytes(qtype, int(shape[-1]))


def encode_rows(qtype: GGMLQuantizationType, rows: np.ndarray) -> np.ndarray:
    """Encode float32 rows (last axis = row) into the bytes of ``qtype``."""
    return ENCODINGS[qtype].encode(rows)
