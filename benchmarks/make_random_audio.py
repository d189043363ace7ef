#!/usr/bin/env python3
"""Write a random-weight MiniCPM-o audio encoder file (Whisper encoder + projector + pooling).

The default size is MiniCPM-o 4.5's: Whisper-medium (24 layers, d_model 1024, 16 heads, FFN
4096, 1500 positions), projector 1024 -> 4096 -> 4096, AvgPool1d(5). The file is what
``minicpm-convert --audio-out`` writes for a real checkpoint: general.architecture "clip",
llama.cpp mtmd's audio tensor names (``a.*``, ``mm.a.*``) from the name table, the converter's
own metadata writer (``clip.audio.*`` + ``minicpm.audio.*`` keys), norms / biases / position
table F32, convolution kernels F16 (F32 with ``--type f32``), the other matrices ``--type``.
Load it with ``minicpm_cpp._core.AudioModel(path)`` or ``Model(..., audio=path)``.

Speed does not depend on weight values; the values are scaled so that activations stay in
range in F16 (matrices N(0, 1/fan_in), norms around 1, Whisper's sinusoidal position table).

``--llama-out`` also writes the same weights for llama.cpp's mtmd (``llama-mtmd-cli --mmproj``):
mtmd has no MiniCPM-o audio projector, and its ``musicflamingo`` type is the nearest graph
(Whisper encoder, then Linear -> GELU -> Linear with biases, over the same ``mm.a.mlp.{1,2}``
tensors); it pools by 2 *before* the final LayerNorm and projector instead of by 5 after, so
its projector runs on half the frames (about 3% less work for a 30 s clip at this size). Only
``clip.audio.projector_type`` differs between the two files.

``--torch-out`` saves the same weights as a torch state dict with the Hugging Face names
(``apm.*``, ``audio_projection_layer.*``), float32. ``bench_audio.py`` does not need it: it
reads the weights back from the GGUF file.

    python benchmarks/make_random_audio.py /tmp/audio-o45-f16.gguf --llama-out /tmp/audio-o45-llama.gguf
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("make_random_audio: the 'gguf' package is required (pip install gguf)")

_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "convert" / "names.py").is_file():
    sys.path.insert(0, str(_REPO))
    from convert.audio import AudioSpec, write_audio_metadata  # noqa: E402
    from convert.audio import _GLOBAL, _LAYER_TENSORS, _POST, _PROJ  # noqa: E402  (the converter's HF -> id table)
    from convert.names import key_name, tensor_name  # noqa: E402
else:  # the installed package carries the converter
    from minicpm_cpp.convert.audio import AudioSpec, write_audio_metadata  # noqa: E402
    from minicpm_cpp.convert.audio import _GLOBAL, _LAYER_TENSORS, _POST, _PROJ  # noqa: E402
    from minicpm_cpp.convert.names import key_name, tensor_name  # noqa: E402

# llama.cpp mtmd's projector type for the --llama-out file (see the module docstring).
LLAMA_PROJECTOR_TYPE = "musicflamingo"


def hf_to_gguf_names(n_layer: int) -> Dict[str, str]:
    """Hugging Face parameter name -> GGUF tensor name, from the converter's table."""
    out = {hf: tensor_name(tid) for hf, tid in _GLOBAL.items()}
    for il in range(n_layer):
        for suffix, tid in _LAYER_TENSORS.items():
            out[f"apm.layers.{il}.{suffix}"] = tensor_name(tid, il)
    out.update({hf: tensor_name(tid) for hf, tid in _POST.items()})
    out.update({hf: tensor_name(tid) for hf, tid in _PROJ.items()})
    return out


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table (the values the real checkpoint starts from): [length, channels]."""
    log_inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-log_inc * np.arange(channels // 2, dtype=np.float64))
    t = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def random_weights(spec: AudioSpec, seed: int) -> Iterator[Tuple[str, np.ndarray]]:
    """(HF name, float32 array in HF layout) for every tensor, in the converter's GGUF order."""
    rng = np.random.default_rng(seed)
    E, Fd, M, D = spec.n_embd, spec.n_ff, spec.n_mel, spec.proj_dim

    def mat(*shape: int) -> np.ndarray:  # [out, in, (kernel)]; fan_in = in * kernel
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(fan_in))

    def vec(n: int, around: float = 0.0) -> np.ndarray:
        return (around + 0.02 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    yield "apm.conv1.weight", mat(E, M, 3)
    yield "apm.conv1.bias", vec(E)
    yield "apm.conv2.weight", mat(E, E, 3)
    yield "apm.conv2.bias", vec(E)
    yield "apm.embed_positions.weight", sinusoids(spec.n_pos, E)
    for il in range(spec.n_layer):
        p = f"apm.layers.{il}."
        for suffix in _LAYER_TENSORS:
            if suffix.endswith("layer_norm.weight"):
                arr = vec(E, 1.0)
            elif suffix == "fc1.weight":
                arr = mat(Fd, E)
            elif suffix == "fc1.bias":
                arr = vec(Fd)
            elif suffix == "fc2.weight":
                arr = mat(E, Fd)
            elif suffix.endswith(".weight"):
                arr = mat(E, E)
            else:
                arr = vec(E)
            yield p + suffix, arr
    yield "apm.layer_norm.weight", vec(E, 1.0)
    yield "apm.layer_norm.bias", vec(E)
    yield "audio_projection_layer.linear1.weight", mat(D, spec.proj_in)
    yield "audio_projection_layer.linear1.bias", vec(D)
    yield "audio_projection_layer.linear2.weight", mat(D, D)
    yield "audio_projection_layer.linear2.bias", vec(D)


def stored(hf: str, arr: np.ndarray, f16: bool) -> np.ndarray:
    """The array as the converter stores it: 1-D and the position table F32, the conv kernels
    F16 unless the file is F32, the other matrices the file's type."""
    if arr.ndim == 1 or hf == "apm.embed_positions.weight" or not f16:
        return arr
    return arr.astype(np.float16)


class _ProjectorType:
    """A GGUFWriter whose audio projector type is replaced (every other call passes through)."""

    def __init__(self, writer: "gguf.GGUFWriter", projector_type: str):
        self._w, self._type = writer, projector_type

    def add_string(self, key: str, value: str) -> None:
        self._w.add_string(key, self._type if key == key_name("CLIP_A_PROJECTOR_TYPE") else value)

    def __getattr__(self, name):
        return getattr(self._w, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=4096, help="encoder_ffn_dim; the projector takes ffn / 4 inputs (= d-model)")
    p.add_argument("--positions", type=int, default=1500, help="max_source_positions (1500 = 30 s)")
    p.add_argument("--proj-dim", type=int, default=4096, help="projector width = LLM hidden size (4096)")
    p.add_argument("--pool", type=int, default=5, help="audio_pool_step (o4.5: 5, o2.6: 2)")
    p.add_argument("--chunk-length", type=float, default=1.0, help="audio_chunk_length in seconds (block mask)")
    p.add_argument("--type", choices=("f16", "f32"), default="f16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llama-out", type=Path, help=f"also write the weights for llama.cpp mtmd ({LLAMA_PROJECTOR_TYPE})")
    p.add_argument("--torch-out", type=Path, help="also save the weights as a torch state dict (HF names, float32)")
    args = p.parse_args(argv)
    if args.ffn // 4 != args.d_model:
        p.error(f"the projector takes --ffn / 4 = {args.ffn // 4} inputs, which must equal --d-model {args.d_model}")
    if args.d_model % args.heads:
        p.error("--d-model must be divisible by --heads")

    t0 = time.time()
    spec = AudioSpec(n_embd=args.d_model, n_ff=args.ffn, n_head=args.heads, n_layer=args.layers, n_mel=80,
                     n_pos=args.positions, proj_in=args.ffn // 4, proj_dim=args.proj_dim, pool_step=args.pool,
                     chunk_length=args.chunk_length)
    f16 = args.type == "f16"
    names = hf_to_gguf_names(spec.n_layer)
    weights = list(random_weights(spec, args.seed))

    def write(path: Path, projector_type: str = "") -> None:
        w = gguf.GGUFWriter(str(path), arch="clip")
        w.add_string(key_name("GENERAL_NAME"), "random MiniCPM-o audio encoder")
        w.add_string("general.description", "random-weight MiniCPM-o audio encoder (benchmarks)")
        w.add_uint32(key_name("GENERAL_FILE_TYPE"), 1 if f16 else 0)
        write_audio_metadata(_ProjectorType(w, projector_type) if projector_type else w, spec)
        for hf, arr in weights:
            arr = stored(hf, arr, f16)
            if projector_type and hf in ("apm.conv1.bias", "apm.conv2.bias"):
                arr = arr.reshape(-1, 1)  # mtmd adds the conv biases as ggml [1, E] (2-D)
            w.add_tensor(names[hf], arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    write(args.out)
    msg = f"wrote {args.out}: {spec.n_layer} layers x {spec.n_embd}, projector {spec.proj_in} -> {spec.proj_dim}, " \
          f"pool {spec.pool_step}, {args.type}, {args.out.stat().st_size / 2**20:.0f} MiB"
    if args.llama_out:
        write(args.llama_out, LLAMA_PROJECTOR_TYPE)
        msg += f"; {args.llama_out} (llama.cpp, {LLAMA_PROJECTOR_TYPE})"
    if args.torch_out:
        import torch

        torch.save({hf: torch.from_numpy(arr) for hf, arr in weights}, str(args.torch_out))
        msg += f"; {args.torch_out} (torch state dict)"
    print(f"{msg} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
