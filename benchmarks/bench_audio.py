#!/usr/bin/env python3
"""MiniCPM-o audio input speed: minicpm.cpp next to the PyTorch reference (and llama.cpp's mtmd
Whisper encoder where it does comparable work), on one audio encoder file.

Tests (``--tests``, all by default):

* ``stream_1s``: one 1 s streaming chunk (100 mel frames -> 50 encoder frames -> 10 tokens)
  through the encoder with its per-stream K/V cache (``get_audio_embedding_streaming``).
  ``cold`` is the first chunk after loading (empty cache; graph build and cache allocation
  included); then ``--warmup-chunks`` chunks fill the cache and ``warm`` is the *mean* over the
  next ``--chunks`` chunks (steady state: by default the timed chunks attend to 500-950 earlier
  encoder frames; the median is in the JSON too).
* ``offline_30s``: a 30 s clip (3000 mel frames -> 1500 encoder frames -> 300 tokens) through
  the offline path with the 1 s block-causal mask (``get_audio_embedding``, chat()'s
  ``audio_chunk_length`` = 1.0). ``cold``: the first clip after loading; ``warm``: the median
  of ``--reps`` more.
* ``mel_30s``: the offline log-mel features of that 30 s clip (cold: first call; warm: median).
* ``mel_stream_1s``: one 1 s push into the streaming log-mel processor, cold = the first push,
  warm = the mean over the same steady-state pushes as ``stream_1s``.

Every test runs on a freshly loaded model, so that its cold figure is the first call after load.

minicpm.cpp: ``minicpm_cpp._core.AudioModel(file, device, n_threads)`` (``encode_stream`` /
``encode``, mel in, embeddings out, numpy both ways), ``_core.log_mel`` and
``_core.StreamingMel`` (CPU).

PyTorch (``torch_audio_ref.py``): the reference computation in plain torch modules with the
Hugging Face parameter names (MiniCPMWhisperEncoder's layers with ``scaled_dot_product_attention``, the same
MultiModalProjector and AvgPool1d), weights read from the same GGUF file (F16 values upcast
where the dtype is float32), fp16 on CUDA / fp32 on the CPU (``--torch-dtype``),
``torch.inference_mode``, ``cuda.synchronize`` before each clock read; numpy mel in and float32
numpy embeddings out, as ours. Offline: the reference's boolean block mask; streaming: the
per-layer K/V cache grown by ``torch.cat`` (as transformers' DynamicCache does), dropped when
it would reach the position table, as in the reference. Log-mel: WhisperFeatureExtractor's torch
path (pad to 30 s, ``torch.stft``, mel filters, log10, max - 8 clamp) on the CPU
(``--torch-mel-device``; the official processor runs there), and for streaming what
StreamingMelProcessorExact does per push: re-featurise the whole buffer received so far and
keep the chunk's frames. No transformers import: the module mirrors the reference
(tests/test_bench_audio.py checks it against tests/ref_minicpmo_audio.py and this runtime).

llama.cpp (``--llama-mtmd-cli``, with ``--llama-mmproj`` from ``make_random_audio.py
--llama-out``, the same weights under mtmd's ``musicflamingo`` projector): one
``llama-mtmd-cli`` process per test with ``1 + --reps`` clips, timings from its log as in
``bench_vision.py``. mtmd encodes audio in 3000-frame windows only (every clip is zero-padded
to 30 s; full attention), so ``offline_30s`` gives it 29 s clips (a clip of 30 s exactly makes
it add a second, silent window) and ``stream_1s`` 1 s clips, each one padded window; it has no
streaming path. Its projector pools by 2 before the projector (ours projects all 1500 frames,
then pools by 5): about 3% less work at this size. llama.cpp reserves its graph at load, so
its cold figure does not include that. Without ``--llama-llm`` a throwaway one-layer LLM of the
projector's width is written with ``make_random_gguf.py``.

Speed ratios: ``other ms / minicpm.cpp ms`` (> 1: minicpm.cpp is faster), against PyTorch and
against llama.cpp. The JSON also holds the agreement of our embeddings with PyTorch's (max
abs difference over max abs value).

    python benchmarks/make_random_audio.py /tmp/audio-f16.gguf --llama-out /tmp/audio-llama.gguf
    python benchmarks/bench_audio.py /tmp/audio-f16.gguf --device cpu --threads 2 \\
        --llama-mtmd-cli ../llama.cpp/build/bin/llama-mtmd-cli --llama-mmproj /tmp/audio-llama.gguf --json audio.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import bench_vision  # noqa: E402  (the GGUF metadata reader and llama-mtmd-cli log parser)
from torch_audio_ref import TorchAudio, TorchMel, mel_filters  # noqa: E402

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 400
CHUNK_FRAMES = 100  # one 1 s streaming chunk of mel frames
CLIP_SECONDS = 30
TESTS = ("stream_1s", "offline_30s", "mel_stream_1s", "mel_30s")
LLAMA_TESTS = {"offline_30s": 29.0, "stream_1s": 1.0}  # clip seconds given to llama-mtmd-cli
RATIO_DEFINITION = "other runtime ms / minicpm.cpp ms; > 1 means minicpm.cpp is faster"
# The targets of the audio issue: (test, device kind, limit ms).
TARGETS = (("stream_1s", "cuda", 2.0), ("offline_30s", "cuda", 8.0), ("stream_1s", "cpu", 250.0))

AUDIO_KEYS = {
    "n_embd": "clip.audio.embedding_length",
    "n_ff": "clip.audio.feed_forward_length",
    "n_head": "clip.audio.attention.head_count",
    "n_layer": "clip.audio.block_count",
    "proj_dim": "clip.audio.projection_dim",
    "pool_step": "minicpm.audio.pool_step",
    "chunk_length": "minicpm.audio.chunk_length",
    "eps": "clip.audio.attention.layer_norm_epsilon",
    "projector_type": "clip.audio.projector_type",
    "file_type": "general.file_type",
}


# ---------------------------------------------------------------------------------------------
# Inputs and helpers


def test_pcm(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like 16 kHz float32 test audio: a voiced harmonic series with a wandering pitch,
    syllable-rate loudness, and some noise (the values do not change the timing)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))) ** 2
    x = 0.08 * env * voiced + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def write_wav(path: str, pcm: np.ndarray) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def audio_meta(path: str) -> dict:
    """The audio hyperparameters of a file (ours or the --llama-out one), n_pos from the
    position table."""
    from gguf import GGUFReader

    kv = bench_vision.read_gguf_kv(path, list(AUDIO_KEYS.values()) + ["general.architecture"])
    if not kv.get("clip.audio.embedding_length"):
        raise SystemExit(f"bench_audio: {path} has no audio encoder (no clip.audio.* keys); "
                         "write one with make_random_audio.py or minicpm-convert --audio-out")
    meta = {k: kv.get(v) for k, v in AUDIO_KEYS.items()}
    pos = [t for t in GGUFReader(path).tensors if t.name == "a.position_embd.weight"]
    meta["n_pos"] = int(pos[0].shape[1]) if pos else 1500
    return meta


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def summary(times: List[float], warm_from: int, mean: bool) -> dict:
    """cold = times[0]; warm = mean or median of times[warm_from:]."""
    warm = times[warm_from:]
    out = {"cold_ms": times[0], "warm_samples_ms": warm}
    if warm:
        out["warm_ms"] = statistics.fmean(warm) if mean else statistics.median(warm)
        out["warm_median_ms"] = statistics.median(warm)
        out["warm_mean_ms"] = statistics.fmean(warm)
    else:
        out["warm_ms"] = None
    out["warm_stat"] = "mean" if mean else "median"
    return out


def speed_ratio(ours_ms: Optional[float], other_ms: Optional[float]) -> Optional[float]:
    """minicpm.cpp's speed over another runtime's for the same work: other ms / minicpm.cpp ms."""
    if not ours_ms or other_ms is None:
        return None
    return other_ms / ours_ms


def rel_diff(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if a is None or b is None or a.shape != b.shape:
        return None
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale



class Inputs:
    """The audio and features every runtime gets (made once): our log-mel where the package is
    installed, else the PyTorch one (the same features to ~1e-5)."""

    def __init__(self, args):
        self.n_chunks = args.warmup_chunks + args.chunks
        stream_s = self.n_chunks + 2
        self.pcm = test_pcm(max(CLIP_SECONDS, stream_s), seed=args.seed)
        self.clip = self.pcm[: CLIP_SECONDS * SAMPLE_RATE]
        self.clips = [self.clip] + [test_pcm(CLIP_SECONDS, seed=args.seed + 1 + i) for i in range(args.reps)]
        self.mel_filters = mel_filters()   # [80, 201]
        try:
            from minicpm_cpp import _core

            log_mel = lambda pcm: _core.log_mel(pcm, 0)  # noqa: E731
        except ImportError:
            log_mel = TorchMel(self.mel_filters, "cpu").offline
        piece = CLIP_SECONDS * SAMPLE_RATE
        self.mels = [np.ascontiguousarray(log_mel(c)) for c in self.clips]   # [80, 3000] each
        stream_mel = np.concatenate([log_mel(self.pcm[i: i + piece]) for i in range(0, len(self.pcm), piece)], axis=1)
        self.chunks = [np.ascontiguousarray(stream_mel[:, CHUNK_FRAMES * k: CHUNK_FRAMES * (k + 1)])
                       for k in range(self.n_chunks)]


def stream_pushes(first: int, chunk: int, n: int) -> List[Tuple[int, int]]:
    """(start, end) sample ranges of the streaming mel pushes: the first chunk, then 1 s each."""
    out, pos = [], 0
    for k in range(n):
        size = first if k == 0 else chunk
        out.append((pos, pos + size))
        pos += size
    return out


# ---------------------------------------------------------------------------------------------
# minicpm.cpp


def run_ours(args, inp: Inputs, tests: Sequence[str]) -> dict:
    from minicpm_cpp import _core

    threads = args.threads or 0
    out: dict = {"runtime": "minicpm.cpp", "tests": [], "outputs": {}}

    def load():
        t0 = time.perf_counter()
        m = _core.AudioModel(args.audio, args.device, threads)
        out["device"] = m.hparams["device"]
        out["flash_attention"] = bool(m.hparams["flash"])
        return m, time.perf_counter() - t0

    out["ggml_libraries"] = loaded_libraries("libggml")
    if "stream_1s" in tests:
        model, load_s = load()
        times, emb = [], None
        for c in inp.chunks:
            t = time.perf_counter()
            emb, _ = model.encode_stream(c, states=False)
            times.append(ms_since(t))
        out["outputs"]["stream_1s"] = emb
        out["tests"].append({"test": "stream_1s", **summary(times, args.warmup_chunks, mean=True), "load_s": load_s,
                             "cache_frames_timed": [50 * args.warmup_chunks, 50 * (inp.n_chunks - 1)]})
        del model
    if "offline_30s" in tests:
        model, load_s = load()
        times, emb = [], None
        for mel in inp.mels:
            t = time.perf_counter()
            emb, _ = model.encode(mel, 0, True, states=False)
            times.append(ms_since(t))
        out["outputs"]["offline_30s"] = emb
        out["tests"].append({"test": "offline_30s", **summary(times, 1, mean=False), "load_s": load_s,
                             "tokens": int(emb.shape[0])})
        del model
    if "mel_stream_1s" in tests:
        sm = _core.StreamingMel()
        pushes = stream_pushes(sm.next_chunk_samples, SAMPLE_RATE, inp.n_chunks)
        times = []
        for a, b in pushes:
            t = time.perf_counter()
            sm.push(inp.pcm[a:b])
            times.append(ms_since(t))
        out["tests"].append({"test": "mel_stream_1s", **summary(times, args.warmup_chunks, mean=True)})
    if "mel_30s" in tests:
        times = []
        for c in inp.clips:
            t = time.perf_counter()
            _core.log_mel(c, threads)
            times.append(ms_since(t))
        out["tests"].append({"test": "mel_30s", **summary(times, 1, mean=False), "threads": threads})
    return out


# ---------------------------------------------------------------------------------------------
# PyTorch reference (torch_audio_ref.py)


def torch_device(args) -> str:
    import torch

    if args.device == "cpu":
        return "cpu"
    if args.device in ("cuda", "gpu", "auto") and torch.cuda.is_available():
        return "cuda"
    if args.device == "auto":
        return "cpu"
    raise SystemExit(f"bench_audio: torch has no device for --device {args.device}")


def torch_dtype(args, device: str):
    import torch

    name = args.torch_dtype
    if name == "auto":
        name = "fp16" if device == "cuda" else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name], name


def run_torch(args, inp: Inputs, meta: dict, tests: Sequence[str]) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch_device(args)
    dtype, dtype_name = torch_dtype(args, device)
    out: dict = {"runtime": "PyTorch", "torch": torch.__version__, "device": device, "dtype": dtype_name,
                 "threads": torch.get_num_threads(), "tests": [], "outputs": {}}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()

    def load():
        t0 = time.perf_counter()
        m = TorchAudio(args.audio, meta, device, dtype)
        m.sync()
        return m, time.perf_counter() - t0

    if "stream_1s" in tests:
        model, load_s = load()
        times, emb = [], None
        for c in inp.chunks:
            t = time.perf_counter()
            emb = model.encode_stream(c)
            times.append(ms_since(t))
        out["outputs"]["stream_1s"] = emb
        out["tests"].append({"test": "stream_1s", **summary(times, args.warmup_chunks, mean=True), "load_s": load_s})
        del model
    if "offline_30s" in tests:
        model, load_s = load()
        times, emb = [], None
        for mel in inp.mels:
            t = time.perf_counter()
            emb = model.encode(mel)
            times.append(ms_since(t))
        out["outputs"]["offline_30s"] = emb
        out["tests"].append({"test": "offline_30s", **summary(times, 1, mean=False), "load_s": load_s,
                             "tokens": int(emb.shape[0])})
        del model
    if device == "cuda":
        torch.cuda.empty_cache()
    mel_device = device if args.torch_mel_device == "device" else "cpu"
    out["mel_device"] = mel_device
    if "mel_stream_1s" in tests:
        tm = TorchMel(inp.mel_filters, mel_device)
        first = int(1035 * SAMPLE_RATE / 1000) // HOP * HOP   # the processor's hop-aligned first chunk
        times, start, emitted = [], 0, 0
        for a, b in stream_pushes(first, SAMPLE_RATE, inp.n_chunks):
            t = time.perf_counter()
            # StreamingMelProcessorExact.process: re-featurise the buffer (floor clamp under 5 s,
            # dynamic after), keep the next chunk's frames; slide by 10 s once it holds 30 s.
            if b - start >= CLIP_SECONDS * SAMPLE_RATE:
                start += 10 * SAMPLE_RATE
            feats = tm.features(inp.pcm[start:b], dynamic=(b - start) >= 5 * SAMPLE_RATE)
            first_local = emitted - start // HOP
            _ = feats[:, first_local: first_local + CHUNK_FRAMES]
            emitted += CHUNK_FRAMES
            times.append(ms_since(t))
        out["tests"].append({"test": "mel_stream_1s", **summary(times, args.warmup_chunks, mean=True)})
    if "mel_30s" in tests:
        tm = TorchMel(inp.mel_filters, mel_device)
        times = []
        for c in inp.clips:
            t = time.perf_counter()
            tm.offline(c)
            times.append(ms_since(t))
        out["tests"].append({"test": "mel_30s", **summary(times, 1, mean=False)})
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp


def make_llama_llm(path: str, width: int) -> None:
    """A one-layer LLM of the projector's width with a byte-level vocabulary: llama-mtmd-cli
    needs a language model to host the audio encoder; its cost is not in the encode times."""
    head_dim = 128 if width % 128 == 0 else width
    cmd = [sys.executable, str(BENCH_DIR / "make_random_gguf.py"), path, "--hidden", str(width), "--layers", "1",
           "--heads", str(width // head_dim), "--kv-heads", "1", "--head-dim", str(head_dim), "--ffn", "256",
           "--vocab", "1024", "--type", "f16", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_audio: could not write the llama.cpp host LLM: {r.stderr[-2000:]}")


def llama_command(args, llm: str, wavs: Sequence[str], tokens_per_clip: int) -> List[str]:
    n_ctx = len(wavs) * (tokens_per_clip + 16) + 512
    n_ctx = -(-n_ctx // 256) * 256
    cmd = [args.llama_mtmd_cli, "-m", llm, "--mmproj", args.llama_mmproj, "-p", "Transcribe.", "-n", "1",
           "--temp", "0", "-c", str(n_ctx), "--chat-template", "chatml"]
    for p in wavs:
        cmd += ["--audio", p]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    if args.device == "cpu":
        cmd += ["-ngl", "0", "--no-mmproj-offload"]
    else:
        cmd += ["-ngl", "99"]
    return cmd + list(args.llama_arg)


def run_llama(args, meta: dict, tests: Sequence[str]) -> dict:
    out: dict = {"runtime": "llama.cpp", "tests": [], "projector_type": None}
    lmeta = audio_meta(args.llama_mmproj)
    out["projector_type"] = lmeta.get("projector_type")
    with tempfile.TemporaryDirectory() as tmp:
        llm = args.llama_llm
        if not llm:
            llm = os.path.join(tmp, "host-llm.gguf")
            make_llama_llm(llm, int(lmeta["proj_dim"]))
        for name, seconds in LLAMA_TESTS.items():
            if name not in tests:
                continue
            wavs = []
            for i in range(1 + args.reps):
                path = os.path.join(tmp, f"{name}-{i}.wav")
                write_wav(path, test_pcm(seconds, seed=args.seed + i))
                wavs.append(path)
            cmd = llama_command(args, llm, wavs, 1500 // 2)
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            wall = time.perf_counter() - t
            log = r.stdout + r.stderr
            try:
                if r.returncode != 0:
                    raise ValueError(f"llama-mtmd-cli exited with {r.returncode}")
                timing = bench_vision.llama_timings(log, len(wavs))
                if timing["pieces"] != 1:
                    raise ValueError(f"llama-mtmd-cli encoded {timing['pieces']} windows per clip, expected 1")
            except ValueError as e:
                sys.stderr.write(f"--- llama-mtmd-cli ({name}): {' '.join(cmd)}\n{log[-3000:]}\n")
                out["tests"].append({"test": name, "error": str(e)})
                continue
            timing.pop("slice_ms", None)
            out["tests"].append({"test": name, "clip_s": seconds, "windows_per_clip": timing.pop("pieces"),
                                 **timing, "warm_stat": "median", "process_wall_s": wall})
    return out


# ---------------------------------------------------------------------------------------------
# Report


def compare(res: dict, tests: Sequence[str]) -> List[dict]:
    by = {k: {t["test"]: t for t in res.get(k, {}).get("tests", [])} for k in ("ours", "torch", "llama_cpp")}
    rows = []
    for name in tests:
        o, pt, ll = by["ours"].get(name, {}), by["torch"].get(name, {}), by["llama_cpp"].get(name, {})
        row = {"test": name}
        for kind in ("cold", "warm"):
            row[f"ours_{kind}_ms"] = o.get(f"{kind}_ms")
            row[f"torch_{kind}_ms"] = pt.get(f"{kind}_ms")
            row[f"llama_cpp_{kind}_ms"] = ll.get(f"{kind}_ms")
            row[f"ratio_torch_{kind}"] = speed_ratio(o.get(f"{kind}_ms"), pt.get(f"{kind}_ms"))
            row[f"ratio_llama_cpp_{kind}"] = speed_ratio(o.get(f"{kind}_ms"), ll.get(f"{kind}_ms"))
        row["error"] = "; ".join(e for e in (o.get("error"), pt.get("error"), ll.get("error")) if e) or None
        rows.append(row)
    return rows


def check_targets(res: dict) -> List[dict]:
    """The issue's targets that apply to this run's device."""
    ours = {t["test"]: t for t in res.get("ours", {}).get("tests", [])}
    dev = str(res.get("ours", {}).get("device", "")).lower()
    kind = "cpu" if dev.startswith("cpu") else "cuda" if dev.startswith("cuda") else dev
    out = []
    for test, where, limit in TARGETS:
        if where != kind or test not in ours or ours[test].get("warm_ms") is None:
            continue
        v = ours[test]["warm_ms"]
        out.append({"test": test, "device": where, "limit_ms": limit, "warm_ms": v, "met": v <= limit})
    return out


def format_table(rows: List[dict], cols: Sequence[str]) -> str:
    labels = {"ours": "minicpm.cpp ms", "torch": "PyTorch ms", "llama_cpp": "llama.cpp ms"}

    def ms(v):
        return f"{v:10.2f}" if v is not None else f"{'-':>10}"

    def ratio(v):
        return f"{v:9.2f}x" if v is not None else f"{'-':>10}"

    head1, head2 = f"{'':14}", f"{'test':14}"
    for c in cols:
        head1 += f" {labels[c]:>21}"
        head2 += f" {'cold':>10} {'warm':>10}"
    others = [c for c in cols if c != "ours"] if "ours" in cols else []
    if others:
        head1 += "  speed ratio, warm (>1 = minicpm faster)"
        for c in others:
            head2 += f" {'vs ' + ('PyTorch' if c == 'torch' else 'llama.cpp'):>12}"
    lines = [head1, head2]
    for r in rows:
        line = f"{r['test']:14}"
        for c in cols:
            line += f" {ms(r[f'{c}_cold_ms'])} {ms(r[f'{c}_warm_ms'])}"
        for c in others:
            line += f"   {ratio(r[f'ratio_{c}_warm'])}"
        if r["error"]:
            line += f"  error: {r['error']}"
        lines.append(line)
    return "\n".join(lines)


def loaded_libraries(prefix: str) -> List[str]:
    """Shared libraries of this process whose file name starts with ``prefix`` (which ggml build
    the runtime linked, for the record)."""
    found: List[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith(prefix) and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = os.getloadavg()
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="audio encoder GGUF (make_random_audio.py, or minicpm-convert --audio-out)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (both runtimes)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every runtime (default: theirs)")
    p.add_argument("--tests", default=",".join(TESTS), help=f"comma-separated subset of {', '.join(TESTS)}")
    p.add_argument("--reps", type=int, default=3, help="warm 30 s clips (and llama.cpp clips) after the cold one (3)")
    p.add_argument("--warmup-chunks", type=int, default=10, help="streaming chunks before the timed ones (10)")
    p.add_argument("--chunks", type=int, default=10, help="timed streaming chunks at steady state (10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="PyTorch dtype (auto: fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--torch-mel-device", choices=("cpu", "device"), default="cpu",
                   help="where PyTorch computes log-mel (cpu, as the official processor; or the benchmark device)")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--llama-mtmd-cli", metavar="PATH")
    p.add_argument("--llama-mmproj", metavar="GGUF", help="the same weights for mtmd (make_random_audio.py --llama-out)")
    p.add_argument("--llama-llm", metavar="GGUF", help="host LLM for llama-mtmd-cli (default: a throwaway one)")
    p.add_argument("--llama-arg", action="append", default=[], metavar="ARG", help="extra llama-mtmd-cli argument")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    bad = [t for t in tests if t not in TESTS]
    if bad:
        p.error(f"unknown test {bad[0]!r}; choose from {', '.join(TESTS)}")
    if args.reps < 1 or args.chunks < 1 or args.warmup_chunks < 1:
        p.error("--reps, --chunks and --warmup-chunks must be at least 1")
    if bool(args.llama_mtmd_cli) != bool(args.llama_mmproj):
        p.error("--llama-mtmd-cli and --llama-mmproj go together")
    if not os.path.isfile(args.audio):
        p.error(f"{args.audio} does not exist")
    meta = audio_meta(args.audio)
    max_chunks = (int(meta["n_pos"]) - 1) // 50
    if args.warmup_chunks + args.chunks > max_chunks:
        p.error(f"--warmup-chunks + --chunks must be at most {max_chunks} (the streaming cache restarts after that)")

    res: dict = {"machine": machine_info(), "file": {"path": os.path.abspath(args.audio), **meta},
                 "args": {k: v for k, v in vars(args).items() if k != "llama_arg"}, "tests": tests}
    t_start = time.time()
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    inp = Inputs(args)
    outputs: Dict[str, dict] = {}
    if not args.skip_ours:
        res["ours"] = run_ours(args, inp, tests)
        outputs["ours"] = res["ours"].pop("outputs")
    if not args.skip_torch:
        res["torch"] = run_torch(args, inp, meta, tests)
        outputs["torch"] = res["torch"].pop("outputs")
    if args.llama_mtmd_cli:
        res["llama_cpp"] = run_llama(args, meta, tests)
    if "ours" in outputs and "torch" in outputs:
        res["agreement_max_rel_diff"] = {k: rel_diff(outputs["ours"].get(k), outputs["torch"].get(k))
                                         for k in ("stream_1s", "offline_30s") if k in outputs["ours"]}
    rows = compare(res, tests)
    res["comparison"] = rows
    res["speed_ratio"] = RATIO_DEFINITION
    res["targets"] = check_targets(res)
    if hasattr(os, "getloadavg"):
        res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.time() - t_start

    cols = [c for c in ("ours", "torch", "llama_cpp") if c in res]
    print()
    dev = []
    if "ours" in res:
        dev.append(f"minicpm.cpp on {res['ours'].get('device')}")
    if "torch" in res:
        dev.append(f"PyTorch {res['torch']['torch']} on {res['torch']['device']} ({res['torch']['dtype']}, "
                   f"log-mel on {res['torch']['mel_device']})")
    print(f"{args.audio}: {meta['n_layer']} layers x {meta['n_embd']}, projector -> {meta['proj_dim']}, pool "
          f"{meta['pool_step']}; " + "; ".join(dev))
    print(format_table(rows, cols))
    print(f"cold: first call after load; warm: stream = mean of {args.chunks} chunks after {args.warmup_chunks}, "
          f"offline/mel_30s = median of {args.reps}." + (" llama.cpp: 1 s and 29 s clips, each one padded 30 s window."
                                                         if "llama_cpp" in res else ""))
    if res.get("agreement_max_rel_diff"):
        print("agreement with PyTorch (max abs diff / max abs): " +
              ", ".join(f"{k} {v:.2e}" for k, v in res["agreement_max_rel_diff"].items() if v is not None))
    for t in res["targets"]:
        print(f"target {t['test']} on {t['device']}: <= {t['limit_ms']:g} ms, warm {t['warm_ms']:.2f} ms: "
              f"{'met' if t['met'] else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if not any(r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
