#!/usr/bin/env python3
"""Write a random-weight Qwen3/Qwen2 LLM GGUF at real model sizes, for speed benchmarks.

The file follows llama.cpp's conventions (the same names as ``minicpm-convert`` writes), so
both this runtime and llama.cpp (llama-bench) load it. Weights are random but finite, with a
spread close to a trained model (about 0.02), so activations stay in range on every backend.

Speed: a few buffers of valid random blocks are made once per ggml type and streamed into
every tensor from varying offsets, so writing is bound by the disk, not by Python (an 8B F16
file is 16 GB). Memory stays bounded by the buffers (``--pool-mib`` per type).

Examples::

    python benchmarks/make_random_gguf.py /tmp/q17-f16.gguf --preset qwen3-1.7b --type f16 \\
        --tokenizer-dir tests/assets/tokenizer/minicpm-o-4_5
    python benchmarks/make_random_gguf.py /tmp/q8b-q8.gguf --preset qwen3-8b --type q8_0 --vocab 151936
    python benchmarks/make_random_gguf.py /tmp/tiny.gguf --hidden 512 --layers 4 --heads 8 \\
        --kv-heads 4 --head-dim 64 --ffn 1536 --vocab 151748 --type q4_k_m

Without ``--tokenizer-dir`` a minimal byte-level vocabulary is written (256 byte tokens, the
Qwen special tokens, padding up to the vocabulary size): enough to load and benchmark with
token ids, not to tokenize text well, and without the image tokens that
``bench_vision.py`` needs.

Adding a type: one ``BlockType`` entry (how to fill random blocks) and one ``Recipe`` entry
(which type each tensor takes, and the ``general.file_type`` value).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

try:
    import gguf
    from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, LlamaFileType
except ImportError:  # pragma: no cover - reported to the user
    sys.exit("make_random_gguf: the 'gguf' package is required (pip install gguf)")

_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "convert" / "names.py").is_file():
    sys.path.insert(0, str(_REPO))
    from convert import llm as convert_llm  # noqa: E402
    from convert.names import key_name, tensor_name  # noqa: E402
    from convert.tokenizer import add_tokenizer  # noqa: E402
    from convert.writer import write_padding  # noqa: E402
else:  # the installed package carries the converter
    from minicpm_cpp.convert import llm as convert_llm  # noqa: E402
    from minicpm_cpp.convert.names import key_name, tensor_name  # noqa: E402
    from minicpm_cpp.convert.tokenizer import add_tokenizer  # noqa: E402
    from minicpm_cpp.convert.writer import write_padding  # noqa: E402

Q = GGMLQuantizationType

# ---------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class Shape:
    arch: str = "qwen3"  # "qwen3" (q/k norms) or "qwen2" (q/k/v biases)
    n_vocab: int = 151748
    n_embd: int = 2048
    n_layer: int = 28
    n_head: int = 16
    n_head_kv: int = 8
    head_dim: int = 128
    n_ff: int = 6144
    tied: bool = True
    rope_base: float = 1e6
    rms_eps: float = 1e-6
    n_ctx: int = 40960


# MiniCPM-o 4.5 carries a Qwen3-8B LLM with a 151748-row vocabulary (151643 + 105 added
# tokens); plain Qwen3 checkpoints have 151936 rows.
PRESETS: Dict[str, Shape] = {
    "qwen3-8b": Shape(n_embd=4096, n_layer=36, n_head=32, n_head_kv=8, head_dim=128, n_ff=12288, tied=False),
    "qwen3-4b": Shape(n_embd=2560, n_layer=36, n_head=32, n_head_kv=8, head_dim=128, n_ff=9728, tied=True),
    "qwen3-1.7b": Shape(n_embd=2048, n_layer=28, n_head=16, n_head_kv=8, head_dim=128, n_ff=6144, tied=True),
    "qwen3-0.6b": Shape(n_embd=1024, n_layer=28, n_head=16, n_head_kv=8, head_dim=128, n_ff=3072, tied=True),
}

# ---------------------------------------------------------------------------------------------
# Random blocks per ggml type


@dataclass(frozen=True)
class BlockType:
    qtype: GGMLQuantizationType
    fill: Callable[[np.random.Generator, int, float], np.ndarray]  # (rng, n_blocks, std) -> uint8 bytes

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def block_bytes(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]


def _normal(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32) * np.float32(std)


def _fill_f32(rng, n, std):
    return _normal(rng, n, std).view(np.uint8)


def _fill_f16(rng, n, std):
    return _normal(rng, n, std).astype(np.float16).view(np.uint8)


def _fill_bf16(rng, n, std):
    # bf16 is the upper half of an f32 (truncation is fine for random data).
    return (_normal(rng, n, std).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def _blocks(fields: List[Tuple[str, str, int]], n: int) -> np.ndarray:
    dt = np.dtype([(name, code, (count,)) if count > 1 else (name, code) for name, code, count in fields])
    return np.zeros(n, dtype=dt)


def _rand_u8(rng, shape):
    return np.frombuffer(rng.bytes(int(np.prod(shape))), dtype=np.uint8).reshape(shape)


def _fill_q8_0(rng, n, std):
    # x = d * q, q uniform in [-127, 127] (std ~73).
    b = _blocks([("d", "<f2", 1), ("qs", "i1", 32)], n)
    b["d"] = std / 73.0
    b["qs"] = rng.integers(-127, 128, size=(n, 32), dtype=np.int8)
    return b.view(np.uint8)


def _fill_q4_0(rng, n, std):
    # x = d * (q - 8), q in [0, 15] (std ~4.6).
    b = _blocks([("d", "<f2", 1), ("qs", "u1", 16)], n)
    b["d"] = std / 4.6
    b["qs"] = _rand_u8(rng, (n, 16))
    return b.view(np.uint8)


def _fill_q4_k(rng, n, std):
    # x = d * sc * q - dmin * m with 6-bit sc, m (packed in 12 bytes; any bytes are valid) and
    # 4-bit q; d*sc*q has a spread of about 220 d, dmin = 7.5 d centres the values.
    b = _blocks([("d", "<f2", 1), ("dmin", "<f2", 1), ("scales", "u1", 12), ("qs", "u1", 128)], n)
    d = std / 256.0
    b["d"] = d
    b["dmin"] = 7.5 * d
    b["scales"] = _rand_u8(rng, (n, 12))
    b["qs"] = _rand_u8(rng, (n, 128))
    return b.view(np.uint8)


def _fill_q5_k(rng, n, std):
    # As Q4_K with 5-bit q (one extra bit per value in qh).
    b = _blocks(
        [("d", "<f2", 1), ("dmin", "<f2", 1), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)], n
    )
    d = std / 512.0
    b["d"] = d
    b["dmin"] = 15.5 * d
    b["scales"] = _rand_u8(rng, (n, 12))
    b["qh"] = _rand_u8(rng, (n, 32))
    b["qs"] = _rand_u8(rng, (n, 128))
    return b.view(np.uint8)


def _fill_q6_k(rng, n, std):
    # x = d * sc * (q - 32), q 6-bit, sc int8 kept in [-16, 16].
    b = _blocks([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2", 1)], n)
    b["ql"] = _rand_u8(rng, (n, 128))
    b["qh"] = _rand_u8(rng, (n, 64))
    b["scales"] = rng.integers(-16, 17, size=(n, 16), dtype=np.int8)
    b["d"] = std / 176.0
    return b.view(np.uint8)


BLOCK_TYPES: Dict[GGMLQuantizationType, BlockType] = {
    bt.qtype: bt
    for bt in (
        BlockType(Q.F32, _fill_f32),
        BlockType(Q.F16, _fill_f16),
        BlockType(Q.BF16, _fill_bf16),
        BlockType(Q.Q8_0, _fill_q8_0),
        BlockType(Q.Q4_0, _fill_q4_0),
        BlockType(Q.Q4_K, _fill_q4_k),
        BlockType(Q.Q5_K, _fill_q5_k),
        BlockType(Q.Q6_K, _fill_q6_k),
    )
}

# ---------------------------------------------------------------------------------------------
# Which type each tensor takes (mirrors llama.cpp's llama-quantize choices for these files)


def _more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's use_more_bits: the layers Q4_K_M / Q5_K_M give Q6_K for attn_v and ffn_down."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


@dataclass(frozen=True)
class Recipe:
    file_type: int  # general.file_type (llama.cpp's llama_ftype)
    base: GGMLQuantizationType  # the type of most 2-D weights
    output: Optional[GGMLQuantizationType] = None  # output.weight (token_embd when tied); None: base
    more_bits: Optional[GGMLQuantizationType] = None  # attn_v / ffn_down of _more_bits layers

    def pick(self, tensor_id: str, layer: Optional[int], shape: Shape) -> GGMLQuantizationType:
        is_output = tensor_id == "LLM_OUTPUT" or (tensor_id == "LLM_TOKEN_EMBD" and shape.tied)
        if is_output and self.output is not None:
            return self.output
        if self.more_bits is not None and tensor_id in ("LLM_ATTN_V", "LLM_FFN_DOWN") and layer is not None:
            if _more_bits(layer, shape.n_layer):
                return self.more_bits
        return self.base


RECIPES: Dict[str, Recipe] = {
    "f32": Recipe(int(LlamaFileType.ALL_F32), Q.F32),
    "f16": Recipe(int(LlamaFileType.MOSTLY_F16), Q.F16),
    "bf16": Recipe(int(LlamaFileType.MOSTLY_BF16), Q.BF16),
    "q8_0": Recipe(int(LlamaFileType.MOSTLY_Q8_0), Q.Q8_0),
    "q4_0": Recipe(int(LlamaFileType.MOSTLY_Q4_0), Q.Q4_0, output=Q.Q6_K),
    "q4_k_m": Recipe(int(LlamaFileType.MOSTLY_Q4_K_M), Q.Q4_K, output=Q.Q6_K, more_bits=Q.Q6_K),
    "q5_k_m": Recipe(int(LlamaFileType.MOSTLY_Q5_K_M), Q.Q5_K, output=Q.Q6_K, more_bits=Q.Q6_K),
    "q6_k": Recipe(int(LlamaFileType.MOSTLY_Q6_K), Q.Q6_K),
}


def _fit_type(qtype: GGMLQuantizationType, row: int) -> GGMLQuantizationType:
    """A type whose block divides the row length (as llama.cpp falls back for odd sizes)."""
    for t in (qtype, Q.Q8_0, Q.F16):
        if row % GGML_QUANT_SIZES[t][0] == 0:
            return t
    return Q.F16


# ---------------------------------------------------------------------------------------------
# Tensor plan


@dataclass
class Planned:
    name: str
    shape: Tuple[int, ...]  # numpy order (rows, cols)
    qtype: GGMLQuantizationType
    kind: str  # "weight", "norm" or "bias"

    @property
    def nbytes(self) -> int:
        bs, ts = GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape))
        return n // bs * ts

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape))


def plan(shape: Shape, recipe: Recipe) -> Tuple[List[Planned], List[str]]:
    notes: List[str] = []
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    out: List[Planned] = []

    def weight(tid: str, layer: Optional[int], rows: int, cols: int) -> None:
        want = recipe.pick(tid, layer, shape)
        got = _fit_type(want, cols)
        name = tensor_name(tid, layer)
        if got != want:
            notes.append(f"{name}: row length {cols} is not a multiple of the {want.name} block; using {got.name}")
        out.append(Planned(name, (rows, cols), got, "weight"))

    def vec(tid: str, layer: Optional[int], n: int, kind: str) -> None:
        out.append(Planned(tensor_name(tid, layer), (n,), Q.F32, kind))

    weight("LLM_TOKEN_EMBD", None, shape.n_vocab, shape.n_embd)
    for il in range(shape.n_layer):
        vec("LLM_ATTN_NORM", il, shape.n_embd, "norm")
        weight("LLM_ATTN_Q", il, q_dim, shape.n_embd)
        if shape.arch == "qwen2":
            vec("LLM_ATTN_Q_BIAS", il, q_dim, "bias")
        weight("LLM_ATTN_K", il, kv_dim, shape.n_embd)
        if shape.arch == "qwen2":
            vec("LLM_ATTN_K_BIAS", il, kv_dim, "bias")
        weight("LLM_ATTN_V", il, kv_dim, shape.n_embd)
        if shape.arch == "qwen2":
            vec("LLM_ATTN_V_BIAS", il, kv_dim, "bias")
        if shape.arch == "qwen3":
            vec("LLM_ATTN_Q_NORM", il, shape.head_dim, "norm")
            vec("LLM_ATTN_K_NORM", il, shape.head_dim, "norm")
        weight("LLM_ATTN_OUT", il, shape.n_embd, q_dim)
        vec("LLM_FFN_NORM", il, shape.n_embd, "norm")
        weight("LLM_FFN_GATE", il, shape.n_ff, shape.n_embd)
        weight("LLM_FFN_UP", il, shape.n_ff, shape.n_embd)
        weight("LLM_FFN_DOWN", il, shape.n_embd, shape.n_ff)
    vec("LLM_OUTPUT_NORM", None, shape.n_embd, "norm")
    if not shape.tied:
        weight("LLM_OUTPUT", None, shape.n_vocab, shape.n_embd)
    return out, notes


# ---------------------------------------------------------------------------------------------
# Metadata


STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_level_chars() -> List[str]:
    """GPT-2's byte -> printable character map (the tokens of a byte-level BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def add_minimal_tokenizer(writer: "gguf.GGUFWriter", n_vocab: int) -> None:
    """A byte-level vocabulary padded to ``n_vocab``, with the Qwen special tokens at their ids."""
    base = _byte_level_chars()
    space2 = base[ord(" ")] * 2
    tokens = base + [space2]
    types = [1] * len(tokens)  # normal
    first_special = 151643 if n_vocab >= 151643 + len(_QWEN_SPECIALS) else n_vocab - len(_QWEN_SPECIALS)
    if first_special < len(tokens):
        raise SystemExit(f"make_random_gguf: vocabulary of {n_vocab} is too small for the minimal tokenizer")
    while len(tokens) < n_vocab:
        i = len(tokens)
        if first_special <= i < first_special + len(_QWEN_SPECIALS):
            tokens.append(_QWEN_SPECIALS[i - first_special])
            types.append(3)  # control
        else:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # unused
    writer.add_string(key_name("TOKENIZER_MODEL"), "gpt2")
    writer.add_string(key_name("TOKENIZER_PRE"), "qwen2")
    writer.add_array(key_name("TOKENIZER_TOKENS"), tokens)
    writer.add_array(key_name("TOKENIZER_TOKEN_TYPE"), types)
    writer.add_array(key_name("TOKENIZER_MERGES"), [f"{base[ord(' ')]} {base[ord(' ')]}"])
    writer.add_uint32(key_name("TOKENIZER_EOS_ID"), first_special + 2)
    writer.add_uint32(key_name("TOKENIZER_PAD_ID"), first_special)
    writer.add_bool(key_name("TOKENIZER_ADD_BOS"), False)


def write_metadata(writer: "gguf.GGUFWriter", shape: Shape, recipe: Recipe, name: str) -> None:
    """The converter's hyperparameter keys (one writer for both), plus the file type."""
    hp = convert_llm.Hparams(
        n_vocab=shape.n_vocab, n_embd=shape.n_embd, n_layer=shape.n_layer, n_head=shape.n_head,
        n_head_kv=shape.n_head_kv, head_dim=shape.head_dim, n_ff=shape.n_ff, rms_eps=shape.rms_eps,
        rope_theta=shape.rope_base, n_ctx=shape.n_ctx, tie_embeddings=shape.tied,
    )
    spec = convert_llm.LlmSpec(arch=shape.arch, prefix="", model_type=shape.arch, source="random weights", hparams=hp)
    convert_llm.write_metadata(writer, spec, name)
    writer.add_uint32(key_name("GENERAL_FILE_TYPE"), recipe.file_type)
    writer.add_uint32(key_name("GENERAL_QUANT_VERSION"), GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------
# Writing


class BlockPool:
    """One buffer of valid random blocks per (type, kind), handed out as slices from rotating offsets."""

    def __init__(self, rng: np.random.Generator, pool_bytes: int, std: float, tensors: List[Planned]) -> None:
        self.rng, self.pool_bytes, self.std = rng, pool_bytes, std
        # No buffer larger than the largest tensor it serves.
        self.largest: Dict[Tuple[GGMLQuantizationType, str], int] = {}
        for t in tensors:
            key = (t.qtype, t.kind)
            self.largest[key] = max(self.largest.get(key, 0), t.nbytes)
        self.buffers: Dict[Tuple[GGMLQuantizationType, str], memoryview] = {}
        self.cursor = 0

    def _buffer(self, qtype: GGMLQuantizationType, kind: str) -> memoryview:
        key = (qtype, kind)
        if key not in self.buffers:
            bt = BLOCK_TYPES[qtype]
            # Norm gains and biases are small tensors: a small buffer does.
            size = self.pool_bytes if kind == "weight" else min(self.pool_bytes, 1 << 20)
            size = min(size, self.largest.get(key, size))
            n_blocks = max(1, size // bt.block_bytes)
            if kind == "norm":
                # RMSNorm gains around 1 (as trained models), not around 0.
                data = (1.0 + _normal(self.rng, n_blocks, 0.1)).view(np.uint8)
            else:
                data = bt.fill(self.rng, n_blocks, self.std)
            self.buffers[key] = memoryview(np.ascontiguousarray(data)).cast("B")
        return self.buffers[key]

    def write(self, fout, t: Planned) -> None:
        buf = self._buffer(t.qtype, t.kind)
        unit = BLOCK_TYPES[t.qtype].block_bytes
        n_units = len(buf) // unit
        # A different start per tensor (in whole blocks), so tensors differ.
        self.cursor = (self.cursor + 7919) % n_units
        pos, left = self.cursor * unit, t.nbytes
        while left > 0:
            n = min(left, len(buf) - pos)
            fout.write(buf[pos : pos + n])
            left -= n
            pos = 0


def write_gguf(
    out: Path,
    shape: Shape,
    recipe_name: str,
    tokenizer_dir: Optional[Path],
    name: Optional[str] = None,
    seed: int = 0,
    std: float = 0.02,
    pool_mib: int = 64,
    quiet: bool = False,
) -> Dict[str, object]:
    recipe = RECIPES[recipe_name]
    tensors, notes = plan(shape, recipe)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    writer = gguf.GGUFWriter(str(out), shape.arch)
    try:
        write_metadata(writer, shape, recipe, name or f"random {shape.arch} {recipe_name}")
        if tokenizer_dir is not None:
            add_tokenizer(writer, tokenizer_dir, shape.n_vocab)
            vocab = set(writer.kv_data[0][key_name("TOKENIZER_TOKENS")].value)
            stops = [s for s in STOP_TOKENS if s in vocab]
            if stops:
                writer.add_array(key_name("MINICPM_STOP_TOKENS"), stops)
        else:
            add_minimal_tokenizer(writer, shape.n_vocab)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()

        fout = writer.fout[0]
        align = writer.data_alignment
        t_meta = time.perf_counter() - t0
        pool = BlockPool(np.random.default_rng(seed), pool_mib << 20, std, tensors)
        written = 0
        next_report = time.perf_counter() + 2.0
        for i, t in enumerate(tensors):
            write_padding(fout, fout.tell(), align)
            pool.write(fout, t)
            written += t.nbytes
            if not quiet and time.perf_counter() >= next_report:
                dt = time.perf_counter() - t0
                print(f"  {i + 1}/{len(tensors)} tensors, {written / 1e9:.2f} GB, {written / 1e9 / dt:.2f} GB/s",
                      file=sys.stderr)
                next_report += 2.0
        write_padding(fout, fout.tell(), align)
        fout.flush()
    finally:
        writer.close()
    dt = time.perf_counter() - t0
    n_params = sum(t.n_params for t in tensors)
    type_counts: Dict[str, int] = {}
    for t in tensors:
        type_counts[t.qtype.name] = type_counts.get(t.qtype.name, 0) + 1
    return {
        "path": str(out),
        "n_params": n_params,
        "n_tensors": len(tensors),
        "bytes": out.stat().st_size,
        "seconds": dt,
        "metadata_seconds": t_meta,
        "types": type_counts,
    }


def _parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output .gguf path")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape (flags below override it)")
    p.add_argument("--type", dest="outtype", choices=list(RECIPES), default="f16", help="weight type (default f16)")
    p.add_argument("--tokenizer-dir", type=Path, default=None,
                   help="a Hugging Face tokenizer directory (vocab.json + merges.txt or tokenizer.json); "
                        "default: a minimal byte-level vocabulary")
    g = p.add_argument_group("shape (custom sizes or preset overrides)")
    g.add_argument("--arch", choices=("qwen3", "qwen2"))
    g.add_argument("--vocab", type=int, help="vocabulary rows (default 151748, MiniCPM-o 4.5; Qwen3: 151936)")
    g.add_argument("--hidden", type=int)
    g.add_argument("--layers", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--kv-heads", type=int)
    g.add_argument("--head-dim", type=int)
    g.add_argument("--ffn", type=int)
    g.add_argument("--ctx", type=int, help="context_length metadata (default 40960)")
    g.add_argument("--rope-base", type=float)
    g.add_argument("--eps", type=float)
    tie = g.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None, help="no output.weight (token_embd is reused)")
    tie.add_argument("--untied", dest="tied", action="store_false", help="a separate output.weight")
    p.add_argument("--name", help="general.name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.02, help="spread of the weights (default 0.02)")
    p.add_argument("--pool-mib", type=int, default=64, help="random bytes kept per type (default 64 MiB)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def shape_from_args(args: argparse.Namespace) -> Shape:
    shape = PRESETS[args.preset] if args.preset else Shape()
    overrides = {
        "arch": args.arch, "n_vocab": args.vocab, "n_embd": args.hidden, "n_layer": args.layers,
        "n_head": args.heads, "n_head_kv": args.kv_heads, "head_dim": args.head_dim, "n_ff": args.ffn,
        "n_ctx": args.ctx, "rope_base": args.rope_base, "rms_eps": args.eps, "tied": args.tied,
    }
    shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
    if not args.preset and args.head_dim is None and args.hidden is not None and args.heads is not None:
        shape = replace(shape, head_dim=shape.n_embd // shape.n_head)
    for field_name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx"):
        if getattr(shape, field_name) <= 0:
            raise SystemExit(f"make_random_gguf: {field_name} must be positive")
    if shape.n_head % shape.n_head_kv:
        raise SystemExit(f"make_random_gguf: heads {shape.n_head} is not a multiple of kv heads {shape.n_head_kv}")
    return shape


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    shape = shape_from_args(args)
    if args.tokenizer_dir is not None and not args.tokenizer_dir.is_dir():
        raise SystemExit(f"make_random_gguf: tokenizer directory {args.tokenizer_dir} does not exist")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = write_gguf(
        args.out, shape, args.outtype, args.tokenizer_dir, name=args.name, seed=args.seed, std=args.std,
        pool_mib=args.pool_mib, quiet=args.quiet,
    )
    gb = info["bytes"] / 1e9
    print(
        f"wrote {info['path']}: {shape.arch}, {info['n_params'] / 1e9:.3f}B parameters, {info['n_tensors']} tensors "
        f"({', '.join(f'{k} x{v}' for k, v in sorted(info['types'].items()))}), {gb:.2f} GB in "
        f"{info['seconds']:.1f} s (metadata {info['metadata_seconds']:.1f} s; tensor data "
        f"{gb / max(info['seconds'] - info['metadata_seconds'], 1e-9):.2f} GB/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
