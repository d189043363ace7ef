#!/usr/bin/env python3
"""Write a random-weight MiniCPM-V vision file (SigLIP-400M NaViT + resampler) at real sizes.

The file follows clip.cpp's mmproj conventions (general.architecture "clip", clip.* keys, the
tensor names of csrc/model/names.def), so minicpm.cpp (``Model(llm, mmproj=...)``) and
llama.cpp's ``llama-mtmd-cli --mmproj`` load the same file. Speed does not depend on weight
values; the values are small random numbers so activations stay finite.

    python benchmarks/make_random_mmproj.py mmproj-o45-f16.gguf --llm-dim 4096 --version 100045
    python benchmarks/make_random_mmproj.py mmproj-v45-f16.gguf --llm-dim 4096 --layers 27   # V4.5 (3D resampler)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("make_random_mmproj: the 'gguf' package is required (pip install gguf)")

_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "convert" / "names.py").is_file():
    sys.path.insert(0, str(_REPO))
    from convert.names import key_name, tensor_name  # noqa: E402
    from convert.vision import VisionSpec, write_vision_metadata  # noqa: E402
else:  # the installed package carries the converter
    from minicpm_cpp.convert.names import key_name, tensor_name  # noqa: E402
    from minicpm_cpp.convert.vision import VisionSpec, write_vision_metadata  # noqa: E402


def sincos_2d(dim: int, side: int) -> np.ndarray:
    """[side*side, dim] 2D sin-cos table (column half first), as the reference resampler builds it."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    return np.concatenate([one(gw), one(gh)], axis=1).astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--llm-dim", type=int, default=4096, help="resampler output width = LLM hidden size (4096)")
    p.add_argument("--layers", type=int, default=26, help="vision layers stored and run (o4.5: 26; V2.6: 27)")
    p.add_argument("--hidden", type=int, default=1152)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=4304)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--version", type=int, default=6, help="clip.minicpmv_version (V4.5: 6, o4.5: 100045, V2.6: 3)")
    p.add_argument("--kind", choices=("2d", "3d"), default=None,
                   help="resampler: 3d = MiniCPM-V 4.5's temporal one (default: 3d for --version 6, else 2d)")
    p.add_argument("--type", choices=("f16", "f32"), default="f16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    kind = args.kind or ("3d" if args.version == 6 else "2d")
    rng = np.random.default_rng(args.seed)
    wdt = np.float16 if args.type == "f16" else np.float32
    Dv, D, F, L = args.hidden, args.llm_dim, args.ffn, args.layers
    patch, side = 14, 70
    t0 = time.time()

    def mat(out_f: int, in_f: int, dtype=wdt) -> np.ndarray:   # numpy shape [out, in] = ggml [in, out]
        return (rng.standard_normal((out_f, in_f), dtype=np.float32) * (1.0 / np.sqrt(in_f))).astype(dtype)

    def vec(n: int, around: float = 0.0) -> np.ndarray:
        return (around + 0.02 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    w = gguf.GGUFWriter(str(args.out), arch="clip")
    w.add_string("general.description", "random-weight MiniCPM-V image encoder (benchmarks)")
    w.add_uint32(key_name("GENERAL_FILE_TYPE"), 1 if args.type == "f16" else 0)
    # The converter's metadata writer, so the two never disagree on keys.
    spec = VisionSpec(
        flavour="v", version="4.5", minicpmv_version=args.version, n_embd=Dv, n_ff=F, n_head=args.heads,
        n_layer_stored=L, n_layer=L, patch_size=patch, n_positions=side * side, eps=1e-6, rs_embd=D,
        rs_heads=D // 128, rs_eps=1e-6, query_num=args.queries, image_size=448, max_slice_nums=9,
        scale_resolution=448, use_image_id=True, kind=kind, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    write_vision_metadata(w, spec)

    T = tensor_name
    # conv weight: numpy [out, in, kh, kw] = ggml [kw, kh, in, out]; clip.cpp wants it F16
    w.add_tensor(T("V_PATCH_EMBD"), (rng.standard_normal((Dv, 3, patch, patch), dtype=np.float32) * 0.02).astype(np.float16))
    w.add_tensor(T("V_PATCH_EMBD_BIAS"), vec(Dv))
    w.add_tensor(T("V_POS_EMBD"), (rng.standard_normal((side * side, Dv), dtype=np.float32) * 0.02).astype(wdt))
    for il in range(L):
        w.add_tensor(T("V_LN1", il), vec(Dv, 1.0))
        w.add_tensor(T("V_LN1_BIAS", il), vec(Dv))
        for nm in ("V_ATTN_Q", "V_ATTN_K", "V_ATTN_V", "V_ATTN_OUT"):
            w.add_tensor(T(nm, il), mat(Dv, Dv))
            w.add_tensor(T(nm + "_BIAS", il), vec(Dv))
        w.add_tensor(T("V_LN2", il), vec(Dv, 1.0))
        w.add_tensor(T("V_LN2_BIAS", il), vec(Dv))
        w.add_tensor(T("V_FFN_UP", il), mat(F, Dv))
        w.add_tensor(T("V_FFN_UP_BIAS", il), vec(F))
        w.add_tensor(T("V_FFN_DOWN", il), mat(Dv, F))
        w.add_tensor(T("V_FFN_DOWN_BIAS", il), vec(Dv))
    w.add_tensor(T("V_POST_LN"), vec(Dv, 1.0))
    w.add_tensor(T("V_POST_LN_BIAS"), vec(Dv))
    w.add_tensor(T("RS_QUERY"), (rng.standard_normal((args.queries, D), dtype=np.float32) * 0.02))
    w.add_tensor(T("RS_KV"), mat(D, Dv))
    for nm in ("RS_ATTN_Q", "RS_ATTN_K", "RS_ATTN_V", "RS_ATTN_OUT"):
        w.add_tensor(T(nm), mat(D, D))
        w.add_tensor(T(nm + "_BIAS"), vec(D))
    for nm in ("RS_LN_Q", "RS_LN_KV", "RS_LN_POST"):
        w.add_tensor(T(nm), vec(D, 1.0))
        w.add_tensor(T(nm + "_BIAS"), vec(D))
    w.add_tensor(T("RS_PROJ"), mat(D, D))
    w.add_tensor(T("RS_POS_EMBED_K"), sincos_2d(D, side))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {L} vision layers, {kind} resampler of width {D}, {size / 2**20:.0f} MiB in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
