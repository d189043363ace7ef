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
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

TESTS = {"60s": 60.0, "10min": 600.0}


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


def bench_decode(path: Path, fps: Optional[float], max_packing: int, reps: int) -> dict:
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
        v = minicpm_cpp.load_video(path, fps=fps, max_packing=max_packing)
        times.append((time.perf_counter() - t) * 1e3)
    res = {
        "file": str(path), "n_frames": info["n_frames"], "fps": info["fps"], "duration_s": info["duration"],
        "size": f"{info['width']}x{info['height']}", "probe_ms": round(probe_ms, 1),
        "decode_ms": round(min(times), 1), "decode_ms_all": [round(x, 1) for x in times],
        "frames_chosen": len(v.frames), "packing": v.packing, "groups": len(v.temporal_ids),
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


def model_hook(model_path: str, v, device: str) -> dict:
    """Vision encode and time to first token of the video part (issue 11 item 6). Fills in once
    the runtime takes ``{"type": "video", "frames", "temporal_ids"}`` parts."""
    import minicpm_cpp

    out: dict = {"model": model_path}
    try:
        model = minicpm_cpp.Model(model_path, device=device)
        s = minicpm_cpp.Session(model, n_ctx=32768)
        t = time.perf_counter()
        # the reference's call: chat(..., use_image_id=False, max_slice_nums=1, temporal_ids=...)
        for _ in s.chat([{"role": "user", "content": [v.to_part(), "Describe the video."]}], max_tokens=1,
                        temperature=0.0, stream=True, **v.chat_settings):
            out["ttft_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            break
        tm = s.timings
        out.update({k: tm[k] for k in ("encode_ms", "n_images", "prefill_ms", "n_prefill") if k in tm})
    except minicpm_cpp.Error as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", default="60s,10min", help="comma-separated: " + ", ".join(TESTS))
    ap.add_argument("--out-dir", default="bench-videos", help="where the synthetic videos are written (kept)")
    ap.add_argument("--size60", default="1920x1080")
    ap.add_argument("--size10", default="1280x720")
    ap.add_argument("--rate", type=int, default=30, help="frame rate of the synthetic videos")
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--fps", type=float, default=None, help="choose_fps (default: the recipe's 3)")
    ap.add_argument("--max-packing", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--model", default=None, help="GGUF: also run the model hook (vision encode, TTFT)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in [t.strip() for t in args.tests.split(",") if t.strip()]:
        if name not in TESTS:
            ap.error(f"unknown test {name!r}")
        w, h = map(int, (args.size60 if name == "60s" else args.size10).split("x"))
        path = out_dir / f"{name}-{w}x{h}-{args.rate}fps-{args.codec}.mp4"
        gen_s = None
        if not path.exists():
            t = time.perf_counter()
            tmp = path.with_name(path.stem + ".part" + path.suffix)
            make_video(tmp, TESTS[name], w, h, args.rate, args.codec)
            os.replace(tmp, path)  # an interrupted run leaves no half file to reuse
            gen_s = round(time.perf_counter() - t, 1)
        res, v = bench_decode(path, args.fps, args.max_packing, args.reps)
        res.update({"test": name, "generate_s": gen_s, "file_mib": round(os.path.getsize(path) / 2**20, 1)})
        if args.model:
            res["model"] = model_hook(args.model, v, args.device)
        del v
        print(json.dumps(res), flush=True)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps({"video_decode": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
