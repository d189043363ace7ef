#!/usr/bin/env python3
"""Throughput of several sessions on one Model, each driven from its own thread, against one
session alone: text decode (tokens/s summed over sessions) and image encode (images/s).

Every session owns its backends and buffers, so sessions compute at the same time; whether that
gains throughput depends on what limits one session (on a CPU: cores and memory bandwidth).
Configurations, for a budget of T CPU threads:

  one session, T threads          what a single user gets
  one session, T/S threads        one of the S sessions running alone
  S sessions, T/S threads each    S users at once (aggregate)

Example (random weights at a real size; speed does not depend on the weight values)::

    python benchmarks/make_random_gguf.py /tmp/q06.gguf --preset qwen3-0.6b --type q4_k_m \\
        --tokenizer-dir tests/assets/tokenizer/minicpm-o-4_5
    python benchmarks/make_random_mmproj.py /tmp/mmproj.gguf --llm-dim 1024
    python benchmarks/bench_sessions.py --llm /tmp/q06.gguf --mmproj /tmp/mmproj.gguf --sessions 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List

import numpy as np

import minicpm_cpp


def _parallel(n: int, fn: Callable[[int], None]) -> float:
    """Runs fn(0..n-1) on n threads started together; returns the wall time in seconds."""
    start = threading.Barrier(n + 1)
    errors: List[BaseException] = []

    def work(k: int) -> None:
        try:
            start.wait()
            fn(k)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def bench_decode(model: minicpm_cpp.Model, n_sessions: int, threads: int, tokens: int, reps: int) -> Dict:
    sessions = [minicpm_cpp.Session(model, n_ctx=tokens + 64, n_threads=threads, seed=k) for k in range(n_sessions)]
    prompt = list(range(1000, 1016))

    def one(k: int) -> None:
        s = sessions[k]
        s.reset()
        s.prefill(tokens=prompt)
        s.generate(max_tokens=tokens, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)

    one_warm = [one(k) for k in range(n_sessions)]  # noqa: F841 - warm-up (buffers, page faults)
    walls = [_parallel(n_sessions, one) for _ in range(reps)]
    wall = statistics.median(walls)
    return {"sessions": n_sessions, "threads_each": threads, "tokens_each": tokens,
            "wall_s": wall, "tok_per_s": n_sessions * tokens / wall, "walls": walls}


def bench_images(model: minicpm_cpp.Model, n_sessions: int, threads: int, size: int, images: int, reps: int) -> Dict:
    sessions = [minicpm_cpp.Session(model, n_ctx=64, n_threads=threads) for _ in range(n_sessions)]
    rng = np.random.default_rng(0)
    # A different image each call (the session cache must not hide the work).
    pics = [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(images * (reps + 1))]
            for _ in range(n_sessions)]
    counter = [0] * n_sessions

    def one(k: int) -> None:
        for _ in range(images):
            sessions[k].encode_image(pics[k][counter[k]], max_slice_nums=1)
            counter[k] += 1

    for k in range(n_sessions):
        one(k)  # warm-up
    walls = [_parallel(n_sessions, one) for _ in range(reps)]
    wall = statistics.median(walls)
    return {"sessions": n_sessions, "threads_each": threads, "images_each": images, "size": size,
            "wall_s": wall, "images_per_s": n_sessions * images / wall, "walls": walls}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", required=True, help="LLM GGUF")
    p.add_argument("--mmproj", help="vision GGUF (mmproj layout) for the image part")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads in all (default: all cores)")
    p.add_argument("--tokens", type=int, default=64, help="tokens each session decodes")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--images", type=int, default=2, help="images each session encodes per repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", metavar="OUT")
    a = p.parse_args()
    if a.sessions < 1 or a.threads < a.sessions:
        p.error("need --sessions >= 1 and --threads >= --sessions")
    each = a.threads // a.sessions
    model = minicpm_cpp.Model(a.llm, device=a.device, mmproj=a.mmproj, n_threads=a.threads)
    print(f"model {a.llm} on {model.info['device']}; {a.threads} threads in all, {a.sessions} sessions of {each}",
          file=sys.stderr)
    out: Dict = {"llm": a.llm, "mmproj": a.mmproj, "device": model.info["device"], "threads": a.threads,
                 "sessions": a.sessions, "decode": {}, "images": {}}
    configs = [("one session, all threads", 1, a.threads), (f"one session, {each} threads", 1, each),
               (f"{a.sessions} sessions, {each} threads each", a.sessions, each)]
    print("| test | configuration | throughput | wall s |")
    print("|---|---|---|---|")
    for name, n, t in configs:
        r = bench_decode(model, n, t, a.tokens, a.reps)
        out["decode"][name] = r
        print(f"| decode {a.tokens} tok | {name} | {r['tok_per_s']:.2f} tok/s | {r['wall_s']:.2f} |", flush=True)
    if a.mmproj:
        for name, n, t in configs:
            r = bench_images(model, n, t, a.image_size, a.images, a.reps)
            out["images"][name] = r
            print(f"| encode {a.image_size}px | {name} | {r['images_per_s']:.3f} img/s | {r['wall_s']:.2f} |",
                  flush=True)
    base_d = out["decode"][configs[0][0]]["tok_per_s"]
    multi_d = out["decode"][configs[2][0]]["tok_per_s"]
    print(f"decode: {a.sessions} sessions give {multi_d / base_d:.2f}x the throughput of one session with all threads")
    if a.mmproj:
        base_i = out["images"][configs[0][0]]["images_per_s"]
        multi_i = out["images"][configs[2][0]]["images_per_s"]
        print(f"images: {a.sessions} sessions give {multi_i / base_i:.2f}x the throughput of one session with all threads")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
