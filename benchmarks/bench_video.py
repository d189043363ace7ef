#!/usr/bin/env python3
"""Video input: decode time and frame choice of ``minicpm_cpp.load_video``, with hooks for the
vision encode and time to first token once the model side takes video parts (issue 11, item 6).

Tests (synthetic videos this script writes with PyAV, H.264 yuv420p as cameras and phones record
them; ``--codec`` to change):

* ``60s``: 60 s at 1920x1080, 30 fps. At choose_fps 3 the MiniCPM-V 4.5 recipe takes 180 frames
  at packing 1.
* ``10min``: 10 min (default 1280x720 to keep the generator under a few minutes; ``--size10``).
  At choose_fps 3 the recipe takes 540 frames at packing 3 (``--max-packing 6``: 1080 at 6).

For each: ``probe`` (frame index: the packets read once, no decoding), ``decode`` (everything
``load_video`` does: probe + seek/decode + RGB conversion of the chosen frames), the frames
chosen, packing, temporal groups, and the RGB bytes held; ``decord`` (the reference's reader,
``VideoReader`` + ``get_batch`` on the same indices) when decord is installed.

Model hooks (``--model``): the video part is given to ``Session.chat`` with ``max_tokens=1``;
``encode_ms`` (vision) / ``prefill_ms`` / ``n_prefill`` come from ``session.timings``, ``ttft_ms``
is timed around the first streamed piece. Until the runtime takes video parts the hook records the error it gives.

    python benchmarks/bench_video.py --out-dir /tmp/videos --json video.json
    python benchmarks/bench_video.py --tests 60s --model minicpm-v45-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

TESTS = {"6s": 6.0, "60s": 60.0, "10min": 600.0}


def make_video(path: Path, seconds: float, width: int, height: int, fps: int = 30, codec: str = "libx264",
               gop: int = 250) -> Path:
    """A synthetic video: a moving gradient with a frame counter band (cheap to generate, not
    trivially compressible). H.264 yuv420p (``preset=ultrafast``) by default."""
    import av

    n = int(round(seconds * fps))
    out = av.open(str(path), "w")
    s = out.add_stream(codec, rate=fps)
    s.width, s.height = width, height
    s.pix_fmt = "yuv420p" if codec in ("libx264", "mpeg4", "libvpx-vp9") else s.pix_fmt
    if codec == "libx264":
        s.options = {"preset": "ultrafast", "g": str(gop), "crf": "23"}
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx * 255 // max(1, width - 1)) ^ (yy * 255 // max(1, height - 1))).astype(np.uint8)
    img = np.empty((height, width, 3), np.uint8)
    for i in range(n):
        shift = (i * 7) % width
        img[..., 0] = np.roll(base, shift, axis=1)
        img[..., 1] = np.roll(base, i % height, axis=0)
        img[..., 2] = (i * 3) & 255
        img[: height // 20, : (i % 100) * width // 100] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        for p in s.encode(frame):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


def bench_decode(path: Path, fps: Optional[float], max_packing: int, reps: int,
                 force_packing: Optional[int] = None) -> dict:
    import minicpm_cpp
    from minicpm_cpp import video as V

    t = time.perf_counter()
    info = V.probe_video(path)
    probe_ms = (time.perf_counter() - t) * 1e3
    times = []
    v = None
    for _ in range(reps):
        v = None
        t = time.perf_counter()
        v = minicpm_cpp.load_video(path, fps=fps, max_packing=max_packing, force_packing=force_packing)
        times.append((time.perf_counter() - t) * 1e3)
    res = {
        "file": str(path), "n_frames": info["n_frames"], "fps": info["fps"], "duration_s": info["duration"],
        "size": f"{info['width']}x{info['height']}", "probe_ms": round(probe_ms, 1),
        "decode_ms": round(min(times), 1), "decode_ms_all": [round(x, 1) for x in times],
        "frames_chosen": len(v.frames), "packing": v.packing, "frame_size": f"{v.frames[0].shape[1]}x{v.frames[0].shape[0]}", "groups": len(v.temporal_ids),
        "rgb_mib": round(sum(f.nbytes for f in v.frames) / 2**20, 1),
    }
    try:
        import decord
    except Exception:
        decord = None
    if decord is not None:
        t = time.perf_counter()
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        ref = vr.get_batch(v.frame_indices).asnumpy()
        res["decord_ms"] = round((time.perf_counter() - t) * 1e3, 1)
        res["decord_len"], res["decord_fps"] = len(vr), vr.get_avg_fps()
        res["max_abs_diff_vs_decord"] = int(max(np.abs(a.astype(np.int16) - b).max() for a, b in zip(v.frames, ref)))
        del ref, vr
    return res, v


# ---------------------------------------------------------------------------------------------
# Time to first token: minicpm.cpp (the video part) and llama.cpp (the same frames as images)

PROMPT = "Describe the video."


def _n_ctx(n_pieces: int, query_num: int = 64) -> int:
    """Context for ``n_pieces`` image pieces (embeddings + markers) and the prompt."""
    n = n_pieces * (query_num + 8) + 512
    return -(-n // 256) * 256


def run_ours(model, v, reps: int) -> dict:
    """``Session.chat`` of the video part with ``max_tokens=1``: preprocessing, the vision tower
    over every chosen frame, the 3D resampler per temporal group, the prompt prefill and the
    first token. A fresh session per repetition (a session keeps its last videos' embeddings, so
    a second chat in one session would not encode again); ``1 + reps`` runs: the first is cold
    (first use after loading), ``warm`` the median of the others."""
    import minicpm_cpp

    runs = []
    for _ in range(1 + reps):
        s = minicpm_cpp.Session(model, n_ctx=_n_ctx(len(v.temporal_ids)))
        t = time.perf_counter()
        s.chat([{"role": "user", "content": [v.to_part(), PROMPT]}], max_tokens=1, temperature=0.0,
               **v.chat_settings)
        ttft = (time.perf_counter() - t) * 1e3
        tm = dict(s.timings)
        runs.append({"ttft_ms": round(ttft, 1), **{k: round(tm[k], 1) if isinstance(tm[k], float) else tm[k]
                                                    for k in ("encode_ms", "n_images", "prefill_ms", "n_prefill")
                                                    if k in tm}})
        del s
    warm = runs[1:] or runs
    return {"runtime": "minicpm.cpp", "groups": len(v.temporal_ids), "frames": len(v.frames),
            "n_prefill": runs[0].get("n_prefill"), "cold": runs[0],
            "ttft_ms": statistics.median(r["ttft_ms"] for r in warm),
            "encode_ms": statistics.median(r.get("encode_ms", 0.0) for r in warm),
            "prefill_ms": statistics.median(r.get("prefill_ms", 0.0) for r in warm), "runs": runs}


def unsliced_size(w: int, h: int, box: int = 448) -> tuple:
    """The frame size llama.cpp gets: within a 448x448 box, the aspect kept. llama.cpp slices a
    MiniCPM-V image whenever a side exceeds 448 (its llava-uhd preprocessor), so this is the
    largest frame it encodes as one 64-token piece, as the reference encodes its video frames
    (``max_slice_nums=1``). It is fewer patches than the reference's unsliced frame (area about
    448^2: 1280x720 gives 602x336 there, 448x252 here), so llama.cpp's vision work per frame is
    the smaller one. Given as they are, llama.cpp would slice each 720p/1080p frame into 3-10
    pieces and the prompt would not fit in the context."""
    f = min(1.0, box / float(max(w, h)))
    return max(14, int(w * f)), max(14, int(h * f))


_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
# llama-mtmd-cli's log lines start with a timestamp (minutes.seconds.ms.us since start); the last
# line before the prompt is evaluated is its "experimental CLI" warning.
_READY = re.compile(r"^(\d+\.\d+\.\d+\.\d+) W WARN: This is an experimental CLI", re.M)


def _stamp_s(stamp: str) -> float:
    m, sec, ms, us = (int(x) for x in stamp.split("."))
    return m * 60 + sec + ms / 1e3 + us / 1e6


_IMG_DECODED = re.compile(r"decoded \(batch \d+/\d+\) in (\d+) ms")


def run_llama(args, v, tmp: Path, reps: int) -> dict:
    """llama-mtmd-cli over the same chosen frames, each an image (``--image`` repeated; llama.cpp
    has no video input of its own here), one 64-token piece per frame; ``-n 1``. From its log:
    the encode time of every piece (``encode_ms``), the LLM time over the image embeddings and
    the text (``prefill_ms``: llama_perf's prompt eval time, which includes the image batches),
    ``ttft_ms`` = their sum (its image loading and resizing are not counted). One process per
    repetition; cold = the first."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_vision import chat_template_args, parse_piece_times, read_gguf_kv

    h, w = v.frames[0].shape[:2]
    fw, fh = unsliced_size(w, h)
    paths = []
    for i, fr in enumerate(v.frames):
        pth = tmp / f"frame{i:05d}.png"
        Image.fromarray(fr).resize((fw, fh), Image.BICUBIC).save(pth, compress_level=1)
        paths.append(str(pth))
    meta = read_gguf_kv(args.llm, ["tokenizer.chat_template"])
    cmd = [args.llama_mtmd_cli, "-m", args.llm, "--mmproj", args.mmproj, "-p", PROMPT, "-n", "1", "--temp", "0",
           "-c", str(_n_ctx(len(paths), query_num=64 + 24))]   # room for llama.cpp's markers and newlines
    for pth in paths:
        cmd += ["--image", pth]
    cmd += chat_template_args(None, bool(meta.get("tokenizer.chat_template")))
    if args.threads:
        cmd += ["-t", str(args.threads)]
    cmd += ["-ngl", "0", "--no-mmproj-offload"] if args.device == "cpu" else ["-ngl", "99"]
    runs = []
    for _ in range(1 + reps):
        t = time.perf_counter()
        env = dict(os.environ, LD_PRELOAD=args.llama_preload) if args.llama_preload else None
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
        wall = time.perf_counter() - t
        log = r.stdout + r.stderr
        pieces = parse_piece_times(log)
        pe = _PROMPT_EVAL.findall(log)
        ready = _READY.findall(log)
        if r.returncode != 0 or not ready:
            sys.stderr.write(f"--- llama-mtmd-cli: exit {r.returncode}\n{log[-3000:]}\n")
            return {"runtime": "llama.cpp", "error": f"llama-mtmd-cli exited with {r.returncode}", "frame_size": f"{fw}x{fh}",
                    "process_wall_s": round(wall, 1)}
        # Time from the end of loading (the log's timestamp of the line llama-mtmd-cli prints just before
        # it evaluates the prompt) to the process's exit, which follows the first token (-n 1).
        t_ready = _stamp_s(ready[-1])
        run = {"ttft_ms": round((wall - t_ready) * 1e3, 1), "load_s": round(t_ready, 2), "process_wall_s": round(wall, 2),
               "encode_ms": round(sum(pieces), 1), "pieces_logged": len(pieces)}
        if pe:
            run.update({"prefill_ms": float(pe[0][0]), "n_prefill": int(pe[0][1])})
        runs.append(run)
    warm = runs[1:] or runs
    return {"runtime": "llama.cpp", "frames": len(paths), "frame_size": f"{fw}x{fh}", "cold": runs[0],
            "ttft_ms": statistics.median(r["ttft_ms"] for r in warm),
            "encode_ms": statistics.median(r["encode_ms"] for r in warm), "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", default="60s,10min", help="comma-separated: " + ", ".join(TESTS))
    ap.add_argument("--out-dir", default="bench-videos", help="where the synthetic videos are written (kept)")
    ap.add_argument("--size60", default="1920x1080", help="frame size of the 60s and short tests")
    ap.add_argument("--size10", default="1280x720")
    ap.add_argument("--rate", type=int, default=30, help="frame rate of the synthetic videos")
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--fps", type=float, default=None, help="choose_fps (default: the recipe's 3)")
    ap.add_argument("--max-packing", default="3", help="comma-separated to run several (e.g. 3,6)")
    ap.add_argument("--force-packing", type=int, default=None, help="the recipe's force_packing")
    ap.add_argument("--reps", type=int, default=2, help="decode repetitions")
    ap.add_argument("--llm", "--model", dest="llm", default=None,
                    help="LLM GGUF (with the vision encoder, or with --mmproj): also time vision encode and TTFT")
    ap.add_argument("--mmproj", default=None, help="vision GGUF (mmproj layout; V4.5: the 3D resampler)")
    ap.add_argument("--model-reps", type=int, default=1, help="warm TTFT runs after the cold one (each runtime)")
    ap.add_argument("--llama-mtmd-cli", default=None, metavar="PATH", help="also run llama.cpp on the same frames")
    ap.add_argument("--llama-preload", default=None, metavar="SO",
                    help="LD_PRELOAD for llama-mtmd-cli: it logs through an asynchronous worker thread whose last "
                         "lines (the perf summary) can be lost at exit; a library whose destructor sleeps a second "
                         "(see benchmarks/README.md) lets it flush")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.llama_mtmd_cli and not (args.llm and args.mmproj):
        ap.error("--llama-mtmd-cli needs --llm and --mmproj (the same files for both runtimes)")

    model = None
    if args.llm and not args.skip_ours:
        import minicpm_cpp

        t = time.perf_counter()
        kw = {"mmproj": args.mmproj} if args.mmproj else {}
        model = minicpm_cpp.Model(args.llm, device=args.device, n_threads=args.threads, **kw)
        print(f"model loaded in {time.perf_counter() - t:.1f} s on {model.info['device']}", flush=True)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    packings = [int(x) for x in str(args.max_packing).split(",") if x.strip()]
    for name in [t.strip() for t in args.tests.split(",") if t.strip()]:
        if name not in TESTS:
            ap.error(f"unknown test {name!r}")
        w, h = map(int, (args.size10 if name == "10min" else args.size60).split("x"))
        path = out_dir / f"{name}-{w}x{h}-{args.rate}fps-{args.codec}.mp4"
        gen_s = None
        if not path.exists():
            t = time.perf_counter()
            tmp = path.with_name(path.stem + ".part" + path.suffix)
            make_video(tmp, TESTS[name], w, h, args.rate, args.codec)
            os.replace(tmp, path)  # an interrupted run leaves no half file to reuse
            gen_s = round(time.perf_counter() - t, 1)
        for mp in packings:
            res, v = bench_decode(path, args.fps, mp, args.reps, args.force_packing)
            res.update({"test": name, "max_packing": mp, "generate_s": gen_s,
                        "file_mib": round(os.path.getsize(path) / 2**20, 1)})
            if model is not None:
                res["minicpm"] = run_ours(model, v, args.model_reps)
            if args.llama_mtmd_cli:
                with tempfile.TemporaryDirectory() as tmp:
                    res["llama_cpp"] = run_llama(args, v, Path(tmp), args.model_reps)
            a, b = res.get("minicpm", {}), res.get("llama_cpp", {})
            if a.get("ttft_ms") and b.get("ttft_ms"):
                res["ttft_speed_ratio"] = round(b["ttft_ms"] / a["ttft_ms"], 2)   # llama.cpp ms / ours; > 1: ours faster
            del v
            print(json.dumps(res), flush=True)
            results.append(res)
            if args.json:   # written after every test, so a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({"video": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
