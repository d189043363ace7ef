"""Quantize a GGUF file: ``minicpm-quantize in.gguf out.gguf TYPE``.

The language model gets one of llama.cpp's quantization mixes (Q4_0 ... Q8_0, Q4_K_M, Q5_K_M,
Q6_K, or plain F16 / BF16 / F32), with the per-tensor choices llama.cpp's ``llama-quantize``
makes, so a file quantized here matches one quantized there tensor for tensor:

* only 2-D (or higher) tensors whose name ends in ``weight`` are converted; 1-D tensors,
  norms and a few small named tables are copied unchanged (they stay F32);
* ``output.weight`` (or ``token_embd.weight`` when the embeddings are tied and there is no
  ``output.weight``) takes Q6_K in every quantized mix but Q8_0, and Q8_0 when its row length
  does not split into blocks of the mix's type;
* in Q4_K_M and Q5_K_M, ``attn_v`` (and ``attn_qkv``) and ``ffn_down`` take Q6_K in the layers
  llama.cpp's ``use_more_bits`` picks: the first and last eighth of the layers and every third
  layer between them;
* a tensor whose row length is not a multiple of its type's block size falls back:
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (Q2_K, Q3_K -> Q4_0), and to F16 when even that
  block does not fit.

Encoder tensors (vision tower ``v.*``, resampler ``resampler.*``, ``mm.*`` projectors, and every
tensor of an mmproj file) are not part of the mix: their matrices are written F16 (an
already-quantized one is kept), or the single type given by ``encoder_type``.

The conversion itself is ggml's: rows go through ``ggml_quantize_chunk`` (``minicpm_cpp._core``)
in row chunks spread over a thread pool, so the output equals llama.cpp's for the same input
rows. The input is read through a memory map and the output written tensor by tensor, so an 8B
model quantizes in bounded memory. The output goes to a temporary file beside the target that
is renamed when complete; a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from gguf import GGML_QUANT_VERSION, LlamaFileType
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from minicpm_cpp.errors import Error, FileError, FormatError, InvalidArgumentError

from .gguf_raw import GGUF_MAGIC, GGUFParseError, RawGGUF, encode_u32, raw_kv, write_header
from .names import TENSORS, key_name, tensor_name
from .writer import Progress, atomic_output, write_padding

__all__ = [
    "QUANT_TYPES",
    "ENCODER_TYPES",
    "QuantType",
    "QuantizeResult",
    "quantize",
    "plan_types",
    "choose_llm_types",
    "main",
]

PROG = "minicpm-quantize"

PathLike = Union[str, "os.PathLike[str]"]

# Float32 bytes dequantized and quantized at a time: bounds the memory of one tensor.
_CHUNK_BYTES = 64 << 20
# Fewest rows handed to one thread (smaller pieces cost more in overhead than they gain).
_MIN_ROWS_PER_TASK = 8
_F16_MAX = 65504.0


@dataclass(frozen=True)
class QuantType:
    """One TYPE of the command line: a llama.cpp file type and the type most weights take."""

    name: str
    file_type: int  # llama.cpp's LLAMA_FTYPE, recorded as general.file_type
    default: Q  # type of the LLM matrices the mix does not single out
    k_mix: str = ""  # "M" for the _K_M mixes (more bits in some attn_v / ffn_down layers)
    description: str = ""


QUANT_TYPES: Dict[str, QuantType] = {
    t.name: t
    for t in (
        QuantType("Q4_0", int(LlamaFileType.MOSTLY_Q4_0), Q.Q4_0, description="4.5 bpw, output Q6_K"),
        QuantType("Q4_1", int(LlamaFileType.MOSTLY_Q4_1), Q.Q4_1, description="5.0 bpw, output Q6_K"),
        QuantType("Q5_0", int(LlamaFileType.MOSTLY_Q5_0), Q.Q5_0, description="5.5 bpw, output Q6_K"),
        QuantType("Q5_1", int(LlamaFileType.MOSTLY_Q5_1), Q.Q5_1, description="6.0 bpw, output Q6_K"),
        QuantType("Q8_0", int(LlamaFileType.MOSTLY_Q8_0), Q.Q8_0, description="8.5 bpw"),
        QuantType("Q4_K_M", int(LlamaFileType.MOSTLY_Q4_K_M), Q.Q4_K, "M", "Q4_K, Q6_K for output and half of attn_v / ffn_down"),
        QuantType("Q5_K_M", int(LlamaFileType.MOSTLY_Q5_K_M), Q.Q5_K, "M", "Q5_K, Q6_K for output and half of attn_v / ffn_down"),
        QuantType("Q6_K", int(LlamaFileType.MOSTLY_Q6_K), Q.Q6_K, description="6.56 bpw"),
        QuantType("F16", int(LlamaFileType.MOSTLY_F16), Q.F16, description="16 bpw"),
        QuantType("BF16", int(LlamaFileType.MOSTLY_BF16), Q.BF16, description="16 bpw, bfloat16"),
        QuantType("F32", int(LlamaFileType.ALL_F32), Q.F32, description="32 bpw"),
    )
}

# Types ``encoder_type`` accepts: one type for every encoder matrix (no mix).
ENCODER_TYPES: Dict[str, Q] = {
    t.name: t for t in (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)
}

# Block-size fallbacks of the 256-element types (a 32-element type of about as many bits).
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0}

_FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)


def _core():
    from minicpm_cpp import _core as core

    return core


def _block(qtype: Q) -> int:
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[qtype][0]


def _lookup_type(name: str, table: Dict, what: str):
    key = str(name).strip().upper()
    if key not in table:
        raise InvalidArgumentError(f"unknown {what} {name!r}; valid types: {', '.join(table)}")
    return table[key]


# ----------------------------------------------------------------------------------------------
# which tensors are whose


def _compile_names() -> List[Tuple["re.Pattern[str]", str]]:
    import re

    out = []
    for ident, pattern in TENSORS.items():
        out.append((re.compile("^" + re.escape(pattern).replace("%d", r"\d+") + "$"), ident))
    return out


_NAME_TABLE = _compile_names()
# Prefixes of encoder tensors the name table does not list (clip.cpp's projector names etc.).
_ENCODER_PREFIXES = ("v.", "resampler.", "mm.", "a.", "model.vision")
# A_: the audio encoder and projector; S3_ / SPK_: the voice-cloning encoders
# (convert/t2w_voice.py); FLOW_: Token2Wav flow matching; TTS_: the talker; HIFT_ / CV_: the
# vocoders. All F16 like the encoders.
_ENCODER_IDS = ("V_", "RS_", "A_", "S3_", "SPK_", "FLOW_", "TTS_", "HIFT_", "CV_")


def is_encoder_tensor(name: str) -> bool:
    """Whether a GGUF tensor belongs to an encoder (vision tower, resampler, projector)."""
    for rx, ident in _NAME_TABLE:
        if rx.match(name):
            return ident.startswith(_ENCODER_IDS)
    return name.startswith(_ENCODER_PREFIXES)


# ----------------------------------------------------------------------------------------------
# llama.cpp's per-tensor choices

# Tensors llama.cpp never converts although they are matrices named "...weight".
_KEEP_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "attn_rel_b.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    ".position_embd",
    ".patch_embd",
    ".patch_merger",
    ".rel_pos",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
)
_KEEP_NAMES = ("position_embd.weight", "token_types.weight")
# Components whose tensors are copied unchanged (the vocoders compute in F32 only).
_KEEP_PREFIXES = tuple(TENSORS[i].split(".", 1)[0] + "." for i in ("HIFT_CONV_PRE", "CV_CONV_PRE"))


def _n_dims(ne: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    n = len(ne)
    while n > 1 and int(ne[n - 1]) == 1:
        n -= 1
    return n


def may_convert(name: str, ne: Sequence[int]) -> bool:
    """Whether llama.cpp would give this tensor the file's type (else it is copied unchanged)."""
    if _n_dims(ne) < 2 or not name.endswith("weight") or name in _KEEP_NAMES or name.startswith(_KEEP_PREFIXES):
        return False
    return not any(s in name for s in _KEEP_SUBSTRINGS)


def _layer_suffix(ident: str) -> str:
    """The per-layer part of a table name: "attn_v.weight" for blk.%d.attn_v.weight."""
    return tensor_name(ident, 0).split(".", 2)[2]


# llama.cpp's categories, by the substring it looks for (first match wins, in this order).
_CATEGORY_KEYS = (
    ("attn_qkv.weight", "attn_qkv"),  # fused projections: not in our table
    ("attn_kv_b.weight", "attn_kv_b"),
    (_layer_suffix("LLM_ATTN_V"), "attn_v"),
    (_layer_suffix("LLM_ATTN_K"), "attn_k"),
    (_layer_suffix("LLM_ATTN_Q"), "attn_q"),
    (_layer_suffix("LLM_ATTN_OUT"), "attn_output"),
    (_layer_suffix("LLM_FFN_UP").rsplit(".", 1)[0], "ffn_up"),
    (_layer_suffix("LLM_FFN_GATE").rsplit(".", 1)[0], "ffn_gate"),
    (_layer_suffix("LLM_FFN_DOWN").rsplit(".", 1)[0], "ffn_down"),
)
_OUTPUT = tensor_name("LLM_OUTPUT")
_TOKEN_EMBD = (tensor_name("LLM_TOKEN_EMBD"), "per_layer_" + tensor_name("LLM_TOKEN_EMBD"))


def _category(name: str) -> str:
    if name == _OUTPUT:
        return "output"
    if name in _TOKEN_EMBD:
        return "token_embd"
    for key, cat in _CATEGORY_KEYS:
        if key in name:
            return cat
    return "other"


_ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: first and last eighth of the layers, and every third between."""
    eighth = n // 8
    return i < eighth or i >= 7 * n // 8 or (i - eighth) % 3 == 2


def fallback_type(qtype: Q, row: int) -> Tuple[Q, Optional[str]]:
    """The type a row of ``row`` elements can take instead of ``qtype``, with a notice (or None)."""
    if row % _block(qtype) == 0:
        return qtype, None
    alt = _FALLBACK.get(qtype)
    if alt is None:
        if _block(qtype) > 32:
            raise InvalidArgumentError(f"no fallback type is defined for {qtype.name}")
        alt = qtype
    if row % _block(alt) != 0:
        alt = Q.F16
    return alt, f"row length {row} is not a multiple of the {qtype.name} block size {_block(qtype)}; written as {alt.name}"


def _layer_of(name: str) -> int:
    if name.startswith("blk."):
        head = name[4:].split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return -1


def choose_llm_types(
    tensors: Sequence[Tuple[str, Sequence[int]]], qtype: Union[str, QuantType], n_layer: Optional[int] = None
) -> Tuple[Dict[str, Optional[Q]], Dict[str, str]]:
    """The type of each LLM tensor under ``qtype`` (None: copy unchanged) and fallback notices.

    ``tensors`` lists (name, ne) with ne in ggml order (ne[0] is the row length); ``n_layer`` is
    the model's block count (llama.cpp counts ffn_down layers against it). Tensors are visited
    in llama.cpp's order (by layer, then by name), which its attn_v counter depends on.
    """
    qt = _lookup_type(qtype, QUANT_TYPES, "type") if isinstance(qtype, str) else qtype
    default = qt.default
    quantized = default not in _FLOAT_TYPES
    cats = {name: _category(name) for name, _ in tensors}
    tied = "output" not in cats.values()
    n_attn_v = sum(1 for c in cats.values() if c in _ATTN_V_LIKE)
    if n_layer is None:
        n_layer = sum(1 for c in cats.values() if c == "ffn_down")
    i_attn_v = i_ffn_down = 0

    types: Dict[str, Optional[Q]] = {}
    notices: Dict[str, str] = {}
    for name, ne in sorted(tensors, key=lambda t: (_layer_of(t[0]), t[0])):
        if not may_convert(name, ne):
            types[name] = None
            continue
        if not quantized:
            types[name] = default
            continue
        cat, row = cats[name], int(ne[0])
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if row % _block(default) != 0:
                new = Q.Q8_0
            elif default != Q.Q8_0:
                new = Q.Q6_K
        elif cat == "token_embd":
            pass
        elif cat in _ATTN_V_LIKE:
            # (llama.cpp's separate attn_qkv rule sits after this one and is never reached)
            if qt.k_mix == "M" and _more_bits(i_attn_v, n_attn_v):
                new = Q.Q6_K
            i_attn_v += 1
        elif cat == "ffn_down":
            if qt.k_mix == "M" and _more_bits(i_ffn_down, n_layer):
                new = Q.Q6_K
            i_ffn_down += 1
        new, why = fallback_type(new, row)
        if why:
            notices[name] = why
        types[name] = new
    return types, notices


# ----------------------------------------------------------------------------------------------
# reading the input


@dataclass
class _Tensor:
    name: str
    ne: Tuple[int, ...]  # ggml order
    src: Q
    offset: int  # absolute offset of the data in the input file
    nbytes: int
    encoder: bool
    dst: Q = Q.F32
    why: Optional[str] = None

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def n_rows(self) -> int:
        return self.n_elements // int(self.ne[0])

    @property
    def np_shape(self) -> Tuple[int, ...]:
        return tuple(reversed(self.ne))


def _row_size(qtype: Q, row: int) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return row // block * size


def _open(path: Path) -> RawGGUF:
    if not path.exists():
        raise FileError(f"input file not found: {path}")
    if path.is_dir():
        raise FileError(f"input {path} is a directory, not a GGUF file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FileError(f"cannot read {path}: {e}") from None
    if magic != GGUF_MAGIC:
        raise FormatError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        return RawGGUF(path)
    except GGUFParseError as e:
        raise FormatError(f"{path}: not a valid GGUF file: {e}") from None


def _tensors_of(reader: RawGGUF) -> Tuple[str, List[_Tensor]]:
    arch = reader.get(key_name("GENERAL_ARCHITECTURE"))
    if not isinstance(arch, str):
        raise FormatError(f"{reader.path}: no {key_name('GENERAL_ARCHITECTURE')} key")
    all_encoder = arch == "clip"
    out = []
    for t in reader.tensors:
        try:
            src = Q(t.ggml_type)
            block = _block(src)
        except (ValueError, KeyError):
            raise FormatError(f"{reader.path}: tensor {t.name} has an unknown ggml type {t.ggml_type}") from None
        if any(d <= 0 for d in t.ne) or t.ne[0] % block:
            raise FormatError(f"{reader.path}: tensor {t.name} has an invalid shape {list(t.ne)} for {src.name}")
        n_rows = int(np.prod(t.ne[1:], dtype=np.int64)) if len(t.ne) > 1 else 1
        nbytes = n_rows * _row_size(src, t.ne[0])
        if reader.data_start + t.offset + nbytes > reader.size:
            raise FormatError(f"{reader.path}: tensor {t.name} lies beyond the end of the file (truncated?)")
        out.append(_Tensor(t.name, t.ne, src, reader.data_start + t.offset, nbytes, all_encoder or is_encoder_tensor(t.name)))
    return arch, out


def _encoder_target(t: _Tensor, encoder_type: Optional[Q]) -> Tuple[Optional[Q], Optional[str]]:
    if not may_convert(t.name, t.ne):
        return None, None
    if encoder_type is None:
        # F16 by default; a tensor the file already holds quantized (or F16) stays as it is.
        if t.src not in (Q.F32, Q.BF16):
            return None, None
        return Q.F16, None
    return fallback_type(encoder_type, int(t.ne[0]))


def _plan(reader: RawGGUF, qt: QuantType, encoder_type: Optional[Q]) -> Tuple[str, List[_Tensor], Dict[str, List[str]]]:
    arch, tensors = _tensors_of(reader)
    llm = [t for t in tensors if not t.encoder]
    n_layer = reader.get(key_name("LLM_BLOCK_COUNT", arch))
    llm_types, llm_why = choose_llm_types([(t.name, t.ne) for t in llm], qt, int(n_layer) if n_layer else None)
    notices: Dict[str, List[str]] = {}
    for t in tensors:
        if t.encoder:
            dst, why = _encoder_target(t, encoder_type)
        else:
            dst, why = llm_types[t.name], llm_why.get(t.name)
        t.dst = t.src if dst is None else dst
        if why:
            notices.setdefault(why, []).append(t.name)
    return arch, tensors, notices


def plan_types(
    path: PathLike, qtype: str, encoder_type: Optional[str] = None
) -> Dict[str, Q]:
    """The type every tensor of ``path`` would get under ``qtype`` (nothing is written)."""
    qt = _lookup_type(qtype, QUANT_TYPES, "type")
    enc = _lookup_type(encoder_type, ENCODER_TYPES, "encoder type") if encoder_type is not None else None
    reader = _open(Path(path))
    try:
        _, tensors, _ = _plan(reader, qt, enc)
    finally:
        reader.close()
    return {t.name: t.dst for t in tensors}


# ----------------------------------------------------------------------------------------------
# writing


def _to_f32(raw: np.ndarray, src: Q) -> np.ndarray:
    """Rows of raw bytes [n, row_bytes] in type ``src`` -> float32 [n, row]."""
    if src == Q.F32:
        return raw.view(np.float32)
    if src == Q.F16:
        return raw.view(np.float16).astype(np.float32)
    if src == Q.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(gguf_quants.dequantize(raw, src), dtype=np.float32)


class _Quantizer:
    """Quantizes row chunks with ggml over a thread pool (the binding releases the GIL)."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(max_workers=self.threads) if self.threads > 1 else None
        self.core = _core()

    def run(self, dst: Q, rows: np.ndarray, out: np.ndarray) -> None:
        n = rows.shape[0]
        parts = min(self.threads, max(1, n // _MIN_ROWS_PER_TASK))
        if self.pool is None or parts <= 1:
            self.core.quantize_rows(int(dst), rows, out)
            return
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        futures = [
            self.pool.submit(self.core.quantize_rows, int(dst), rows[a:b], out[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]
        for f in futures:
            f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _write_data(fout, data: np.memmap, tensors: Sequence[_Tensor], align: int, quantizer: _Quantizer, progress: bool) -> None:
    core = quantizer.core

    def pad(n: int) -> None:
        write_padding(fout, n, align)

    pad(fout.tell())
    bar = Progress(len(tensors), progress, desc="quantizing", prog=PROG)
    try:
        for t in tensors:
            raw = data[t.offset : t.offset + t.nbytes]
            if t.dst == t.src:
                fout.write(memoryview(raw).cast("B"))
                pad(t.nbytes)
                bar.step(t.name)
                continue
            row = int(t.ne[0])
            src_row, dst_row = _row_size(t.src, row), core.quant_row_size(int(t.dst), row)
            raw = raw.reshape(t.n_rows, src_row)
            step = max(1, _CHUNK_BYTES // (4 * row))
            written = 0
            for a in range(0, t.n_rows, step):
                b = min(t.n_rows, a + step)
                rows = np.ascontiguousarray(_to_f32(raw[a:b], t.src), dtype=np.float32)
                if not np.isfinite(rows).all():
                    raise InvalidArgumentError(f"tensor {t.name} holds NaN or infinite values")
                if t.dst == Q.F16 and rows.size and float(np.abs(rows).max()) > _F16_MAX:
                    raise InvalidArgumentError(
                        f"tensor {t.name} has values beyond the F16 range (|x| > 65504); use BF16 or F32"
                    )
                out = np.empty((b - a, dst_row), dtype=np.uint8)
                quantizer.run(t.dst, rows, out)
                fout.write(memoryview(out).cast("B"))
                written += out.nbytes
            pad(written)
            bar.step(t.name)
    finally:
        bar.close()
    fout.flush()


@dataclass
class QuantizeResult:
    """What :func:`quantize` wrote."""

    path: Path
    type: str
    types: Dict[str, Q] = field(default_factory=dict)  # every tensor's type in the output
    bytes_in: int = 0  # file sizes
    bytes_out: int = 0
    n_elements: int = 0  # weights in the file (all tensors)
    data_in: int = 0  # tensor data bytes
    data_out: int = 0
    seconds: float = 0.0

    @property
    def bpw_in(self) -> float:
        return 8.0 * self.data_in / max(1, self.n_elements)

    @property
    def bpw_out(self) -> float:
        return 8.0 * self.data_out / max(1, self.n_elements)

    def summary(self) -> str:
        counts: Dict[str, int] = {}
        for q in self.types.values():
            counts[q.name] = counts.get(q.name, 0) + 1
        mix = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.type}: {self.bytes_in / 2**20:.1f} MiB ({self.bpw_in:.2f} bits/weight) -> "
            f"{self.bytes_out / 2**20:.1f} MiB ({self.bpw_out:.2f} bits/weight) in {self.seconds:.1f} s; "
            f"tensors: {mix}"
        )


def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def quantize(
    src: PathLike,
    dst: PathLike,
    qtype: str,
    *,
    encoder_type: Optional[str] = None,
    allow_requantize: bool = False,
    threads: Optional[int] = None,
    force: bool = False,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> QuantizeResult:
    """Quantize the GGUF file ``src`` to ``dst`` with the mix ``qtype`` (see :data:`QUANT_TYPES`).

    ``encoder_type`` (one of :data:`ENCODER_TYPES`) converts the encoder matrices too; by default
    they are written F16. An input that is already quantized is refused unless
    ``allow_requantize``. ``threads`` defaults to the CPU count. An existing ``dst`` is replaced
    only with ``force``. Raises minicpm_cpp errors: FileError (missing input), FormatError (not
    a GGUF, truncated), InvalidArgumentError (type, paths, requantization).
    """
    say = log if log is not None else _say
    t0 = time.perf_counter()
    qt = _lookup_type(qtype, QUANT_TYPES, "type")
    enc = _lookup_type(encoder_type, ENCODER_TYPES, "encoder type") if encoder_type is not None else None
    src, dst = Path(src), Path(dst)
    if threads is None:
        threads = os.cpu_count() or 1
    if int(threads) < 1:
        raise InvalidArgumentError(f"threads must be at least 1, got {threads}")
    if not src.exists():
        raise FileError(f"input file not found: {src}")
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
        raise InvalidArgumentError(f"the output {dst} is the input file; give another output path")
    if dst.is_dir():
        raise InvalidArgumentError(f"output {dst} is a directory; give a file name")
    if not dst.parent.is_dir():
        raise InvalidArgumentError(f"output directory {dst.parent} does not exist")
    if dst.exists() and not force:
        raise InvalidArgumentError(f"output {dst} already exists; pass --force (force=True) to overwrite it")

    reader = _open(src)
    arch, tensors, notices = _plan(reader, qt, enc)
    core = _core()
    for t in tensors:
        if t.dst != t.src:
            if core.quant_requires_imatrix(int(t.dst)):
                raise InvalidArgumentError(f"{t.dst.name} (for {t.name}) needs an importance matrix, which is not supported")
            if t.src not in _FLOAT_TYPES and not allow_requantize:
                raise InvalidArgumentError(
                    f"the input is already quantized ({t.name} is {t.src.name}); quantizing again loses more "
                    "precision than quantizing the F32/F16/BF16 original: pass --allow-requantize to do it anyway"
                )
    for why, names in notices.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        say(f"{len(names)} tensor(s) ({', '.join(names[:3])}{more}): {why}")
    n_llm = sum(1 for t in tensors if not t.encoder)
    n_enc = len(tensors) - n_llm
    if n_enc:
        say(f"{n_enc} encoder tensor(s): {'as ' + enc.name if enc is not None else 'matrices F16 (--encoder-type to change)'}")

    file_type_key, quant_version_key = key_name("GENERAL_FILE_TYPE"), key_name("GENERAL_QUANT_VERSION")
    kvs = dict(reader.kv)
    kvs[file_type_key] = raw_kv(file_type_key, encode_u32(qt.file_type))
    kvs[quant_version_key] = raw_kv(quant_version_key, encode_u32(GGML_QUANT_VERSION))
    infos = []
    for t in tensors:
        nbytes = t.n_rows * core.quant_row_size(int(t.dst), int(t.ne[0])) if t.dst != t.src else t.nbytes
        infos.append((t.name, t.ne, int(t.dst), nbytes))
    quantizer = _Quantizer(int(threads))
    try:
        with atomic_output(dst) as tmp:
            with open(tmp, "wb") as fout:
                write_header(fout, list(kvs.values()), infos, reader.alignment)
                _write_data(fout, reader.map, tensors, reader.alignment, quantizer, progress)
    finally:
        quantizer.close()
        reader.close()
    result = QuantizeResult(dst, qt.name, {t.name: t.dst for t in tensors})
    result.bytes_in, result.bytes_out = src.stat().st_size, dst.stat().st_size
    result.n_elements = sum(t.n_elements for t in tensors)
    result.data_in = sum(t.nbytes for t in tensors)
    result.data_out = sum(_row_size(t.dst, int(t.ne[0])) * t.n_rows for t in tensors)
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    types = "\n".join(f"  {t.name:<7} {t.description}" for t in QUANT_TYPES.values())
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Quantize a minicpm.cpp / llama.cpp GGUF file with ggml's kernels and llama.cpp's per-tensor "
            "rules: norms and 1-D tensors stay F32, the output matrix takes Q6_K (Q8_0 in Q8_0), and the _K_M "
            "mixes give Q6_K to attn_v and ffn_down in half of the layers. Encoder tensors (vision tower, "
            "resampler) are written F16 unless --encoder-type says otherwise."
        ),
        epilog=f"TYPE (case-insensitive):\n{types}\n\nThe output is written to OUTPUT.tmp-XXXX and renamed when complete.",
    )
    p.add_argument("input", type=Path, help="GGUF file to quantize (F32, F16 or BF16; a quantized one with --allow-requantize)")
    p.add_argument("output", type=Path, help="GGUF file to write")
    p.add_argument("type", metavar="TYPE", help=f"one of {', '.join(QUANT_TYPES)}")
    p.add_argument(
        "--encoder-type",
        metavar="TYPE",
        default=None,
        help=f"type of the encoder matrices (vision tower, resampler): one of {', '.join(ENCODER_TYPES)} (default: F16)",
    )
    p.add_argument("--allow-requantize", action="store_true", help="accept an input that is already quantized")
    p.add_argument("--threads", "-t", type=int, default=None, metavar="N", help="quantization threads (default: all CPUs)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = quantize(
            args.input,
            args.output,
            args.type,
            encoder_type=args.encoder_type,
            allow_requantize=args.allow_requantize,
            threads=args.threads,
            force=args.force,
            progress=not args.no_progress,
        )
    except (Error, OSError) as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no output written", file=sys.stderr)
        raise SystemExit(130) from None
    _say(f"wrote {result.path}")
    _say(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
