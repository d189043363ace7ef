#!/usr/bin/env python3
"""LLM throughput of minicpm.cpp on a GGUF file, optionally next to llama.cpp's llama-bench.

Tests, named as llama-bench names them:

* ``ppN``: prefill of an N-token prompt (random token ids) into an empty context, in
  micro-batches of ``--n-batch``; tok/s = N / prefill time. Loading is not included.
* ``tgN``: N tokens decoded one at a time (greedy) after a short prompt; tok/s = N / decode
  time. The runtime's own timings are used: ``decode_ms / n_decode`` counts exactly the N
  single-token evaluations (sampling and text decoding are timed apart and left out, as
  llama-bench does no sampling).

Each test runs ``--reps`` times after one warm-up; the median is reported (the mean and
standard deviation are in the JSON). With ``--llama-bench PATH`` the same file is run
through llama-bench in the same invocation with matching settings (prompt and generation
lengths, repetitions, threads, batch sizes, GPU offload, flash attention) and the table
shows ours / llama.cpp.

Memory: peak resident host memory (``ru_maxrss``; memory-mapped weights that were read
count) for this process and for llama-bench, and, when a GPU is used, the device memory
taken by the model and by the session (from ``minicpm_cpp.list_devices()``).

Example::

    python benchmarks/bench_llm.py model.gguf --threads 2 --n-prompt 512,128 \\
        --llama-bench ../llama.cpp/build/bin/llama-bench --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

# Ids below this are ordinary text tokens in every Qwen2/Qwen3 vocabulary.
_QWEN_FIRST_SPECIAL = 151643


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    # 0 skips the test kind (as in llama-bench).
    return [v for v in values if v > 0]


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def default_threads() -> int:
    """The runtime's default (n_threads=0): the core count, halved above 4 cores."""
    hc = os.cpu_count() or 4
    return max(1, hc // 2 if hc > 4 else hc)


def _summary(samples: List[float]) -> Dict[str, Any]:
    return {
        "median_ts": statistics.median(samples),
        "avg_ts": statistics.fmean(samples),
        "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "samples_ts": samples,
    }


def _gpu_memory(devices: List[Dict[str, Any]], name: str) -> Optional[Dict[str, int]]:
    for d in devices:
        if d["name"] == name:
            return {"free": int(d["memory_free"]), "total": int(d["memory_total"])}
    return None


# ---------------------------------------------------------------------------------------------
# minicpm.cpp


def bench_ours(args: argparse.Namespace) -> Dict[str, Any]:
    import minicpm_cpp

    rss_start = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    devices_before = minicpm_cpp.list_devices()
    t0 = time.perf_counter()
    fuse = {"auto": None, "on": True, "off": False}[args.fuse_qkv]
    model = minicpm_cpp.Model(args.model, device=args.device, n_threads=args.threads, fuse_qkv=fuse,
                              cpu_repack=args.repack != "off")
    load_s = time.perf_counter() - t0
    info = model.info
    devices_model = minicpm_cpp.list_devices()

    n_prompt_max = max(args.n_prompt + [args.tg_prompt])
    n_ctx = max(n_prompt_max, args.tg_prompt + max(args.n_gen + [0]) + 1)
    n_ctx = (n_ctx + 255) // 256 * 256
    session = minicpm_cpp.Session(
        model, n_ctx=n_ctx, seed=args.seed, n_batch=args.n_batch, kv_type=args.kv_type, flash_attn=args.flash_attn
    )
    devices_session = minicpm_cpp.list_devices()

    rng = np.random.default_rng(args.seed)
    hi = min(int(info["n_vocab"]), _QWEN_FIRST_SPECIAL)
    prompt = [int(t) for t in rng.integers(0, hi, size=n_prompt_max)]

    def prefill_once(n: int) -> float:
        session.reset()
        session.reset_timings()
        session.prefill(tokens=prompt[:n])
        tm = session.timings
        if tm["n_prefill"] != n:
            raise RuntimeError(f"prefill counted {tm['n_prefill']} tokens, expected {n}")
        return n / (tm["prefill_ms"] / 1e3)

    def generate_once(n: int) -> Dict[str, float]:
        session.reset()
        session.prefill(tokens=prompt[: args.tg_prompt])
        session.reset_timings()
        t = time.perf_counter()
        # n + 1 sampled tokens need exactly n single-token evaluations (the first token comes
        # from the prompt's logits, the last one is sampled but not evaluated).
        for _ in session.generate(max_tokens=n + 1, temperature=0, stream=True, stop_at_end_of_turn=False):
            pass
        wall = time.perf_counter() - t
        tm = session.timings
        if tm["n_decode"] != n:
            raise RuntimeError(f"decode counted {tm['n_decode']} evaluations, expected {n}")
        return {"ts": n / (tm["decode_ms"] / 1e3), "wall_ts": (n + 1) / wall, "sample_ms": tm["sample_ms"]}

    if not args.no_warmup:
        prefill_once(n_prompt_max)
        if args.n_gen:
            generate_once(min(4, max(args.n_gen)))

    tests: List[Dict[str, Any]] = []
    for n in args.n_prompt:
        samples = [prefill_once(n) for _ in range(args.reps)]
        tests.append({"test": f"pp{n}", "n_prompt": n, "n_gen": 0, **_summary(samples)})
    for n in args.n_gen:
        runs = [generate_once(n) for _ in range(args.reps)]
        entry = {"test": f"tg{n}", "n_prompt": 0, "n_gen": n, **_summary([r["ts"] for r in runs])}
        # End to end through the Python iterator, sampling and detokenising included.
        entry["wall_median_ts"] = statistics.median(r["wall_ts"] for r in runs)
        entry["sample_ms_per_token"] = statistics.median(r["sample_ms"] for r in runs) / (n + 1)
        tests.append(entry)

    result: Dict[str, Any] = {
        "runtime": "minicpm.cpp",
        "version": getattr(minicpm_cpp, "__version__", None),
        "device": info["device"],
        "threads": args.threads,
        "n_batch": args.n_batch,
        "n_ctx": n_ctx,
        "flash_attn": args.flash_attn,
        "kv_type": args.kv_type,
        "fuse_qkv": args.fuse_qkv,
        "cpu_repack": args.repack,
        "load_s": load_s,
        "model": {k: info[k] for k in ("arch", "n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff",
                                       "weight_type", "weight_bytes") if k in info},
        "tests": tests,
        "peak_rss_bytes": _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "rss_before_load_bytes": rss_start,
    }
    before = _gpu_memory(devices_before, info["device"])
    if before is not None and info["device"].upper() != "CPU":
        after_model = _gpu_memory(devices_model, info["device"]) or before
        after_session = _gpu_memory(devices_session, info["device"]) or after_model
        result["device_memory"] = {
            "total_bytes": before["total"],
            "free_before_bytes": before["free"],
            "model_bytes": before["free"] - after_model["free"],
            "session_bytes": after_model["free"] - after_session["free"],
            "used_bytes": before["free"] - after_session["free"],
        }
    del session, model
    return result


def resolve_flash_attn(args: argparse.Namespace, weight_type: Optional[str]) -> bool:
    """Whether our session runs flash attention (its "auto" rule: on with an F16 KV cache)."""
    if args.flash_attn != "auto":
        return args.flash_attn == "on"
    if args.kv_type != "auto":
        return args.kv_type == "f16"
    return (weight_type or "f16").lower() != "f32"


# ---------------------------------------------------------------------------------------------
# llama.cpp


def llama_bench_command(args: argparse.Namespace, on_gpu: bool, flash_attn: bool) -> List[str]:
    cmd = [
        args.llama_bench,
        "-m", args.model,
        "-p", ",".join(map(str, args.n_prompt or [0])),
        "-n", ",".join(map(str, args.n_gen or [0])),
        "-r", str(args.reps),
        "-t", str(args.threads),
        "-b", str(args.n_batch),
        "-ub", str(args.n_batch),
        "-ngl", "99" if on_gpu else "0",
        "-fa", "1" if flash_attn else "0",
        "-o", "json",
    ]
    if args.no_warmup:
        cmd.append("--no-warmup")
    return cmd + list(args.llama_bench_arg or [])


def bench_llama(args: argparse.Namespace, on_gpu: bool, flash_attn: bool) -> Dict[str, Any]:
    cmd = llama_bench_command(args, on_gpu, flash_attn)
    print("running: " + " ".join(cmd), file=sys.stderr)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        # wait4 gives this child's own resource usage (its peak RSS).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    try:
        rows = json.loads(stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"llama-bench printed no JSON ({e}):\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
    tests = []
    for r in rows:
        n_prompt, n_gen = int(r.get("n_prompt", 0)), int(r.get("n_gen", 0))
        name = f"pp{n_prompt}" if n_gen == 0 else f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}"
        samples = [float(x) for x in r.get("samples_ts") or []]
        entry = {"test": name, "n_prompt": n_prompt, "n_gen": n_gen, "avg_ts": float(r["avg_ts"]),
                 "stddev_ts": float(r.get("stddev_ts", 0.0)), "samples_ts": samples}
        entry["median_ts"] = statistics.median(samples) if samples else entry["avg_ts"]
        tests.append(entry)
    first = rows[0] if rows else {}
    return {
        "runtime": "llama.cpp",
        "command": cmd,
        "build_commit": first.get("build_commit"),
        "build_number": first.get("build_number"),
        "backends": first.get("backends"),
        "cpu_info": first.get("cpu_info"),
        "gpu_info": first.get("gpu_info"),
        "model_type": first.get("model_type"),
        "threads": args.threads,
        "flash_attn": flash_attn,
        "n_gpu_layers": 99 if on_gpu else 0,
        "tests": tests,
        "peak_rss_bytes": _maxrss_bytes(usage.ru_maxrss),
    }


# ---------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(report: Dict[str, Any]) -> None:
    ours = {t["test"]: t for t in report["ours"]["tests"]} if report.get("ours") else {}
    theirs = {t["test"]: t for t in report["llama_cpp"]["tests"]} if report.get("llama_cpp") else {}
    names = list(ours) + [n for n in theirs if n not in ours]
    print()
    print(f"{'runtime':<12} {'test':<8} {'tok/s':>10} {'+/-':>8} {'ours/llama.cpp':>15}")
    for name in names:
        o, t = ours.get(name), theirs.get(name)
        ratio = f"{o['median_ts'] / t['median_ts']:.2f}" if o and t and t["median_ts"] > 0 else ""
        if o:
            print(f"{'minicpm.cpp':<12} {name:<8} {o['median_ts']:>10.2f} {o['stddev_ts']:>8.2f} {ratio:>15}")
        if t:
            print(f"{'llama.cpp':<12} {name:<8} {t['median_ts']:>10.2f} {t['stddev_ts']:>8.2f}")
    for key, label in (("ours", "minicpm.cpp"), ("llama_cpp", "llama.cpp")):
        r = report.get(key)
        if r:
            line = f"{label}: peak host RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
            if r.get("device_memory"):
                line += f", device memory {r['device_memory']['used_bytes'] / 2**30:.2f} GiB"
            if r.get("load_s") is not None:
                line += f", load {r['load_s']:.2f} s"
            print(line)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="LLM GGUF file")
    p.add_argument("--device", default="auto", help="minicpm.cpp device: auto, cpu, gpu, cuda, metal, CUDA1, ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both runtimes (default: the runtime's pick)")
    p.add_argument("--n-prompt", type=_int_list, default=[512],
                   help="prompt lengths, comma-separated (default 512; 0: no prefill test)")
    p.add_argument("--n-gen", type=_int_list, default=[128],
                   help="generation lengths, comma-separated (default 128; 0: no generation test)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per test (default 3)")
    p.add_argument("--n-batch", type=int, default=512, help="prefill micro-batch (llama-bench -b and -ub; default 512)")
    p.add_argument("--tg-prompt", type=int, default=4, help="prompt tokens before a generation test (default 4)")
    p.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--kv-type", choices=("auto", "f16", "f32"), default="auto")
    p.add_argument("--fuse-qkv", choices=("auto", "on", "off"), default="auto",
                   help="minicpm.cpp: one Q|K|V product per layer (auto: on GPUs)")
    p.add_argument("--repack", choices=("on", "off"), default="on",
                   help="minicpm.cpp on the CPU: repacked weight layout (Model(cpu_repack=...))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (both runtimes)")
    p.add_argument("--llama-bench", metavar="PATH", help="llama.cpp's llama-bench binary to compare with")
    p.add_argument("--llama-bench-arg", action="append", metavar="ARG",
                   help="extra argument passed to llama-bench (repeatable), e.g. --llama-bench-arg=-mmp")
    p.add_argument("--skip-ours", action="store_true", help="run only llama-bench")
    p.add_argument("--json", metavar="OUT", help="write the full results as JSON here ('-': stdout)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    if args.tg_prompt < 1:
        p.error("--tg-prompt must be >= 1")
    if not args.n_prompt and not args.n_gen:
        p.error("nothing to run: --n-prompt and --n-gen are both 0")
    if args.threads is None:
        args.threads = default_threads()
    if not os.path.isfile(args.model):
        p.error(f"{args.model}: no such file")
    if args.llama_bench and not os.access(args.llama_bench, os.X_OK):
        p.error(f"--llama-bench {args.llama_bench}: not an executable")
    if args.skip_ours and not args.llama_bench:
        p.error("--skip-ours needs --llama-bench")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    report: Dict[str, Any] = {
        "model_path": os.path.abspath(args.model),
        "model_file_bytes": os.path.getsize(args.model),
        "host": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "settings": {"n_prompt": args.n_prompt, "n_gen": args.n_gen, "reps": args.reps, "n_batch": args.n_batch,
                     "threads": args.threads, "tg_prompt": args.tg_prompt},
    }
    weight_type, on_gpu = None, args.device.lower() not in ("cpu",)
    if not args.skip_ours:
        ours = bench_ours(args)
        report["ours"] = ours
        weight_type = ours["model"].get("weight_type")
        on_gpu = ours["device"].upper() != "CPU"
    if args.llama_bench:
        flash = resolve_flash_attn(args, weight_type)
        report["llama_cpp"] = bench_llama(args, on_gpu, flash)
    print_table(report)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
