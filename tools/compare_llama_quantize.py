#!/usr/bin/env python3
"""Compare minicpm-quantize with llama.cpp's own quantizer, tensor by tensor (development check).

    python tools/compare_llama_quantize.py --libllama /path/to/libllama.so model-f32.gguf [TYPE ...]

For each TYPE (default: every mix both tools know), the input is quantized by llama.cpp's
``llama_model_quantize`` (called through ctypes, in a child process, because libllama brings
its own ggml that must not share a process with minicpm_cpp's) and by
``minicpm_cpp.quantize``; the script then reports tensors whose type or bytes differ, and
metadata entries that differ. The input must be an LLM-only file (llama.cpp refuses tensors it
does not know). The ``llama_model_quantize_params`` layout below is the one of llama.h at the
time of writing; check it against the llama.h of the library you load.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# LLAMA_FTYPE of each mix.
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "F16": 1, "BF16": 32}


class _Params(ctypes.Structure):
    _fields_ = [
        ("nthread", ctypes.c_int32),
        ("ftype", ctypes.c_int),
        ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int),
        ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool),
        ("only_copy", ctypes.c_bool),
        ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool),
        ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("tt_overrides", ctypes.c_void_p),
        ("prune_layers", ctypes.c_void_p),
        ("max_buf_size", ctypes.c_size_t),
    ]


def _llama_quantize(lib_path: str, src: str, dst: str, ftype: int, threads: int) -> None:
    lib = ctypes.CDLL(lib_path)
    lib.llama_model_quantize_default_params.restype = _Params
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Params)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    lib.llama_backend_init()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = lib.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc}) for {src}")


def _compare(ref: Path, ours: Path) -> str:
    import numpy as np
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    from minicpm_cpp.convert.gguf_raw import RawGGUF

    a, b = RawGGUF(ref), RawGGUF(ours)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    if set(ta) != set(tb):
        return f"tensor sets differ: {sorted(set(ta) ^ set(tb))}"
    types = [n for n in ta if ta[n].ggml_type != tb[n].ggml_type or ta[n].ne != tb[n].ne]
    data = []
    for n, t in ta.items():
        if n in types:
            continue
        block, size = GGML_QUANT_SIZES[Q(t.ggml_type)]
        nbytes = int(np.prod(t.ne[1:], dtype=np.int64)) * t.ne[0] // block * size
        if not np.array_equal(a.data(t, nbytes), b.data(tb[n], nbytes)):
            data.append(n)
    kv = sorted(k for k in set(a.kv) | set(b.kv) if a.kv.get(k) != b.kv.get(k))
    detail = [f"{n}: {Q(ta[n].ggml_type).name} vs {Q(tb[n].ggml_type).name}" for n in types]
    return f"types differ: {detail or 'none'}; bytes differ: {data or 'none'}; metadata differs: {kv or 'none'}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libllama", required=True, help="path of libllama.so")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="where to write the quantized files (default: a temp dir)")
    p.add_argument("input", type=Path)
    p.add_argument("types", nargs="*", default=list(FTYPES))
    p.add_argument("--child", nargs=2, metavar=("DST", "TYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _llama_quantize(args.libllama, str(args.input), args.child[0], FTYPES[args.child[1]], args.threads)
        return 0

    from minicpm_cpp.quantize import quantize

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cmp-quant-"))
    status = 0
    for qtype in (t.upper() for t in args.types):
        ref, ours = work / f"llama-{qtype}.gguf", work / f"ours-{qtype}.gguf"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run(
            [sys.executable, __file__, "--libllama", args.libllama, "--threads", str(args.threads), str(args.input),
             "--child", str(ref), qtype],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        quantize(args.input, ours, qtype, force=True, progress=False, threads=args.threads, log=lambda m: None)
        report = _compare(ref, ours)
        print(f"{args.input.name} {qtype}: {report}")
        if report.count("none") != 3:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
