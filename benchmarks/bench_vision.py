#!/usr/bin/env python3
"""Vision encode time of minicpm.cpp, optionally next to llama.cpp's llama-mtmd-cli on the same files.

Tests:

* ``slice448``: a 448x448 image, which the MiniCPM-V rules do not slice (one 32x32-patch piece);
* ``img1344``: a 1344x1344 image: overview + 3x3 slices = 10 pieces.

Ours: ``Model.encode_image`` (preprocessing + vision tower + resampler, everything an image
costs before the LLM). ``cold`` is the first image of a fresh model (graph reservation and
first-use costs included), ``warm`` the median of ``--reps`` further runs. llama.cpp:
``llama-mtmd-cli`` is run once per image on the same LLM + mmproj files; its log line
``image slice encoded in N ms`` (``mtmd batch encoding done in N ms`` in newer versions) is
summed over the slices (its vision encode only, without
its preprocessing), in a fresh process, i.e. cold.

    python benchmarks/bench_vision.py --llm llm.gguf --mmproj mmproj.gguf --device cpu \\
        --llama-mtmd-cli ../llama.cpp/build/bin/llama-mtmd-cli --json vision.json
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

import numpy as np

SIZES = {"slice448": 448, "img1344": 1344}


def test_image(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([(x * 255 // max(side - 1, 1)), (y * 255 // max(side - 1, 1)), ((x + y) % 256)], axis=-1)
    noise = rng.integers(0, 32, size=(side, side, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def run_ours(args) -> dict:
    import minicpm_cpp

    t0 = time.perf_counter()
    model = minicpm_cpp.Model(args.llm, device=args.device, n_threads=args.threads, mmproj=args.mmproj)
    load_s = time.perf_counter() - t0
    out = {"runtime": "minicpm.cpp", "device": model.info["device"], "load_s": load_s, "tests": []}
    for name, side in SIZES.items():
        img = test_image(side)
        t = time.perf_counter()
        chunk = model.encode_image(img)
        cold = (time.perf_counter() - t) * 1000
        warm = []
        for _ in range(args.reps):
            t = time.perf_counter()
            model.encode_image(img)
            warm.append((time.perf_counter() - t) * 1000)
        out["tests"].append({"test": name, "pieces": chunk.n_slices, "cold_ms": cold,
                             "warm_ms": statistics.median(warm), "warm_samples_ms": warm})
    return out


def run_llama(args) -> dict:
    from PIL import Image

    out = {"runtime": "llama.cpp", "tests": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in SIZES.items():
            path = os.path.join(tmp, f"{name}.png")
            Image.fromarray(test_image(side)).save(path)
            cmd = [args.llama_mtmd_cli, "-m", args.llm, "--mmproj", args.mmproj, "--image", path, "-p", "Describe.",
                   "-n", "1", "--temp", "0"]
            if args.threads:
                cmd += ["-t", str(args.threads)]
            if args.device == "cpu":
                cmd += ["-ngl", "0", "--no-mmproj-offload"]
            else:
                cmd += ["-ngl", "99"]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            wall = time.perf_counter() - t
            log = r.stdout + r.stderr
            # older llama.cpp logs "image slice encoded in N ms", newer "mtmd batch encoding done in N ms"
            slices = [int(v) for v in re.findall(r"(?:slice encoded|batch encoding done) in (\d+) ms", log)]
            if r.returncode != 0 or not slices:
                sys.stderr.write(log[-3000:])
                out["tests"].append({"test": name, "error": f"exit {r.returncode}, no timing found"})
                continue
            out["tests"].append({"test": name, "pieces": len(slices), "cold_ms": float(sum(slices)),
                                 "slice_ms": slices, "process_wall_s": wall})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", required=True, help="LLM GGUF (its width must match the resampler's)")
    p.add_argument("--mmproj", required=True, help="vision GGUF in mmproj layout")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--llama-mtmd-cli", metavar="PATH")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()

    res = {}
    if not args.skip_ours:
        res["ours"] = run_ours(args)
    if args.llama_mtmd_cli:
        res["llama_cpp"] = run_llama(args)

    print(f"\n{'runtime':12} {'test':9} {'pieces':>6} {'cold ms':>10} {'warm ms':>10}  ours/llama.cpp (cold)")
    lt = {t["test"]: t for t in res.get("llama_cpp", {}).get("tests", [])}
    for key in ("ours", "llama_cpp"):
        for t in res.get(key, {}).get("tests", []):
            if "error" in t:
                print(f"{res[key]['runtime']:12} {t['test']:9} error: {t['error']}")
                continue
            ratio = ""
            if key == "ours" and t["test"] in lt and "cold_ms" in lt[t["test"]]:
                ratio = f"{lt[t['test']]['cold_ms'] / t['cold_ms']:.2f}x faster" if t["cold_ms"] else ""
            warm = f"{t['warm_ms']:10.1f}" if "warm_ms" in t else f"{'':>10}"
            print(f"{res[key]['runtime']:12} {t['test']:9} {t['pieces']:6d} {t['cold_ms']:10.1f} {warm}  {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
