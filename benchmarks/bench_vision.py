#!/usr/bin/env python3
"""Vision encode time of minicpm.cpp, optionally next to llama.cpp's llama-mtmd-cli on the same files.

Tests:

* ``slice448``: a 448x448 image, which the MiniCPM-V rules do not slice (one 32x32-patch piece);
* ``img1344``: a 1344x1344 image: overview + 3x3 slices = 10 pieces.

Each test encodes ``1 + --reps`` images of that size (same size, different pixels). ``cold`` is
the first image after the model is loaded, ``warm`` the median of the ``--reps`` further ones.

minicpm.cpp: ``Model.encode_image`` (preprocessing + vision tower + resampler, everything an
image costs before the LLM), timed around the call, with a freshly loaded model per test; the
cold image includes graph reservation and first-use costs.

llama.cpp: one ``llama-mtmd-cli`` process per test, given all ``1 + --reps`` images of the test
(``--image`` repeated) in one prompt. llama-mtmd-cli encodes the pieces one after the other and
logs the encode time of each: ``mtmd batch encoding done in N ms`` after ``encoding mtmd batch,
n_chunks = K`` (current llama.cpp), or ``image slice encoded in N ms`` (older versions). Every
image of a test has the same number of pieces, so the log's times split into consecutive groups
of ``pieces``: the first group is the cold image, the others the warm ones; an image's time is
the sum over its pieces. These figures are llama.cpp's vision encode only (its preprocessing is
not in them), and llama.cpp reserves its vision graph when it loads the mmproj, so its cold
image does not pay for that. A batch of K > 1 pieces (llama.cpp batches same-shaped pieces
when the model supports it; MiniCPM-V's pieces are separated by text and come one by one) is
split evenly between its pieces.

The ratio printed and written to the JSON is a speed ratio, the same way everywhere:
``llama.cpp ms / minicpm.cpp ms`` (> 1: minicpm.cpp is faster).

The LLM file must have MiniCPM-V's image tokens (``<image>``, ``</image>``, ``<slice>``,
``</slice>``, ``<unk>``), which both runtimes put around the image embeddings; a file from
``make_random_gguf.py`` has them when written with ``--tokenizer-dir`` (e.g.
``tests/assets/tokenizer/minicpm-o-4_5``); the script checks this before running anything.
llama-mtmd-cli also needs a chat template: a file without one gets llama.cpp's built-in
``--llama-chat-template`` (``chatml`` by default; the template does not change the timing).

    python benchmarks/bench_vision.py --llm llm.gguf --mmproj mmproj.gguf --device cpu \\
        --llama-mtmd-cli ../llama.cpp/build/bin/llama-mtmd-cli --json vision.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

SIZES = {"slice448": 448, "img1344": 1344}
MAX_PIECES = 10  # the most pieces a test image makes (img1344: overview + 3x3)

# The tokens around the image embeddings: minicpm.cpp needs all five, llama.cpp the first four.
IMAGE_TOKENS = ("<image>", "</image>", "<slice>", "</slice>", "<unk>")
RATIO_LABEL = "speed ratio minicpm/llama.cpp (>1 = minicpm faster)"
RATIO_DEFINITION = "llama.cpp ms / minicpm.cpp ms; > 1 means minicpm.cpp is faster"
DEFAULT_CHAT_TEMPLATE = "chatml"
FIX_TOKENS = ("regenerate it with make_random_gguf.py --tokenizer-dir tests/assets/tokenizer/minicpm-o-4_5 "
              "(or convert a real checkpoint)")


# ---------------------------------------------------------------------------------------------
# GGUF metadata (only the key/value section is read, so this is fast on a multi-GB file)

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_kv(path: str, keys: Iterable[str]) -> Dict[str, object]:
    """The values of ``keys`` (those present) in a GGUF file's metadata; arrays as lists."""
    wanted = set(keys)
    out: Dict[str, object] = {}
    with open(path, "rb") as f:

        def read(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def read_str(keep: bool = True):
            n = read("<Q")
            if not keep:
                f.seek(n, os.SEEK_CUR)
                return None
            return f.read(n).decode("utf-8", errors="replace")

        def value(vtype: int, keep: bool):
            if vtype == _STRING:
                return read_str(keep)
            if vtype == _ARRAY:
                etype, count = read("<I"), read("<Q")
                if etype in _SCALARS and not keep:
                    f.seek(count * struct.calcsize(_SCALARS[etype]), os.SEEK_CUR)
                    return None
                items = [value(etype, keep) for _ in range(count)]
                return items if keep else None
            if vtype not in _SCALARS:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")
            v = read(_SCALARS[vtype])
            return v if keep else None

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = read("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key = read_str()
            keep = key in wanted
            v = value(read("<I"), keep)
            if keep:
                out[key] = v
    return out


def check_files(llm: str, mmproj: str) -> Dict[str, object]:
    """Check up front what both runtimes need from the files; exit with the fix when it is missing.

    Returns what the rest of the script uses: ``has_chat_template``, ``query_num``."""
    for path, what in ((llm, "--llm"), (mmproj, "--mmproj")):
        if not os.path.isfile(path):
            raise SystemExit(f"bench_vision: {what} {path} does not exist")
    meta = read_gguf_kv(llm, ["tokenizer.ggml.tokens", "tokenizer.chat_template"])
    vision = read_gguf_kv(mmproj, ["clip.minicpmv_query_num", "general.architecture"])
    if vision.get("general.architecture") != "clip":
        raise SystemExit(f"bench_vision: {mmproj} is not an mmproj file (general.architecture is not 'clip')")
    vocab = set(meta.get("tokenizer.ggml.tokens") or [])
    missing = [t for t in IMAGE_TOKENS if t not in vocab]
    if missing:
        raise SystemExit(
            f"bench_vision: the vocabulary of {llm} has no {', '.join(missing)} token"
            f"{'s' if len(missing) > 1 else ''}, which both runtimes put around the image embeddings "
            f"(make_random_gguf.py's minimal vocabulary, written without --tokenizer-dir, has none): {FIX_TOKENS}"
        )
    return {"has_chat_template": bool(meta.get("tokenizer.chat_template")),
            "query_num": int(vision.get("clip.minicpmv_query_num") or 64)}


# ---------------------------------------------------------------------------------------------
# Shared helpers


def test_image(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([(x * 255 // max(side - 1, 1)), (y * 255 // max(side - 1, 1)), ((x + y) % 256)], axis=-1)
    noise = rng.integers(0, 32, size=(side, side, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def speed_ratio(ours_ms: Optional[float], llama_ms: Optional[float]) -> Optional[float]:
    """minicpm.cpp's speed over llama.cpp's for the same work: llama.cpp ms / minicpm.cpp ms."""
    if not ours_ms or llama_ms is None:
        return None
    return llama_ms / ours_ms


# ---------------------------------------------------------------------------------------------
# minicpm.cpp


def run_ours(args) -> dict:
    """One freshly loaded model per test (as llama.cpp's one process per test), so that each
    test's cold image is the first one after loading."""
    import minicpm_cpp

    out = {"runtime": "minicpm.cpp", "tests": []}
    for name, side in SIZES.items():
        images = [test_image(side, seed) for seed in range(1 + args.reps)]
        t0 = time.perf_counter()
        model = minicpm_cpp.Model(args.llm, device=args.device, n_threads=args.threads, mmproj=args.mmproj)
        load_s = time.perf_counter() - t0
        out["device"] = model.info["device"]
        times, pieces = [], None
        for img in images:
            t = time.perf_counter()
            chunk = model.encode_image(img)
            times.append((time.perf_counter() - t) * 1000)
            pieces = chunk.n_slices
        del model, chunk
        out["tests"].append({"test": name, "pieces": pieces, "cold_ms": times[0],
                             "warm_ms": statistics.median(times[1:]) if times[1:] else None,
                             "warm_samples_ms": times[1:], "load_s": load_s})
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp

_BATCH_START = re.compile(r"encoding mtmd batch, n_chunks = (\d+)")
_BATCH_DONE = re.compile(r"mtmd batch encoding done in (\d+(?:\.\d+)?) ms")
_SLICE_DONE = re.compile(r"slice encoded in (\d+(?:\.\d+)?) ms")


def parse_piece_times(log: str) -> List[float]:
    """The encode time of every image piece in a llama-mtmd-cli log, in order (ms).

    Current llama.cpp logs ``encoding mtmd batch, n_chunks = K ...`` then ``mtmd batch encoding
    done in N ms`` (a batch of K > 1 pieces counts N / K for each); older versions log ``image
    slice encoded in N ms`` per piece."""
    times: List[float] = []
    pending = 1
    for line in log.splitlines():
        m = _BATCH_START.search(line)
        if m:
            pending = max(1, int(m.group(1)))
            continue
        m = _BATCH_DONE.search(line)
        if m:
            times += [float(m.group(1)) / pending] * pending
            pending = 1
    if times:
        return times
    return [float(v) for v in _SLICE_DONE.findall(log)]


def split_images(piece_ms: Sequence[float], n_images: int) -> List[List[float]]:
    """Per-piece times of ``n_images`` images of one size, in order, as one list per image."""
    if n_images < 1 or not piece_ms or len(piece_ms) % n_images:
        raise ValueError(f"{len(piece_ms)} piece times do not split into {n_images} images of the same size "
                         "(no encode times in the log, or llama-mtmd-cli did not take every --image)")
    k = len(piece_ms) // n_images
    return [list(piece_ms[i * k:(i + 1) * k]) for i in range(n_images)]


def llama_timings(log: str, n_images: int) -> dict:
    """Cold and warm figures of one llama-mtmd-cli run over ``n_images`` same-sized images."""
    per_image = split_images(parse_piece_times(log), n_images)
    sums = [sum(p) for p in per_image]
    return {"pieces": len(per_image[0]), "cold_ms": sums[0],
            "warm_ms": statistics.median(sums[1:]) if sums[1:] else None,
            "warm_samples_ms": sums[1:], "slice_ms": per_image}


def chat_template_args(requested: Optional[str], file_has_template: bool) -> List[str]:
    """``--chat-template`` for llama-mtmd-cli: the one asked for, else ``chatml`` when the LLM
    file has none (llama-mtmd-cli refuses to start without a template)."""
    if requested:
        return ["--chat-template", requested]
    if not file_has_template:
        return ["--chat-template", DEFAULT_CHAT_TEMPLATE]
    return []


def llama_command(args, image_paths: Sequence[str], file_has_template: bool, query_num: int) -> List[str]:
    # --image repeated: every llama-mtmd-cli version appends each one (recent ones also take a
    # comma-separated list, and warn, wrongly, that only the last repeated value is used).
    # Context for every image's embeddings and markers, plus the prompt.
    n_ctx = len(image_paths) * MAX_PIECES * (query_num + 8) + 512
    n_ctx = -(-n_ctx // 256) * 256
    cmd = [args.llama_mtmd_cli, "-m", args.llm, "--mmproj", args.mmproj, "-p", "Describe the images.",
           "-n", "1", "--temp", "0", "-c", str(n_ctx)]
    for p in image_paths:
        cmd += ["--image", p]
    cmd += chat_template_args(args.llama_chat_template, file_has_template)
    if args.threads:
        cmd += ["-t", str(args.threads)]
    if args.device == "cpu":
        cmd += ["-ngl", "0", "--no-mmproj-offload"]
    else:
        cmd += ["-ngl", "99"]
    return cmd + list(args.llama_arg)


def run_llama(args, files: Dict[str, object]) -> dict:
    from PIL import Image

    out = {"runtime": "llama.cpp", "tests": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in SIZES.items():
            paths = []
            for seed in range(1 + args.reps):
                path = os.path.join(tmp, f"{name}-{seed}.png")
                Image.fromarray(test_image(side, seed)).save(path)
                paths.append(path)
            cmd = llama_command(args, paths, bool(files["has_chat_template"]), int(files["query_num"]))
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            wall = time.perf_counter() - t
            log = r.stdout + r.stderr
            try:
                if r.returncode != 0:
                    raise ValueError(f"llama-mtmd-cli exited with {r.returncode}")
                timing = llama_timings(log, len(paths))
            except ValueError as e:
                sys.stderr.write(f"--- llama-mtmd-cli ({name}): {' '.join(cmd)}\n{log[-3000:]}\n")
                out["tests"].append({"test": name, "error": str(e)})
                continue
            out["tests"].append({"test": name, **timing, "process_wall_s": wall})
    return out


# ---------------------------------------------------------------------------------------------
# Report


def compare(res: dict) -> List[dict]:
    """One row per test: both runtimes' cold/warm figures and the speed ratios."""
    ours = {t["test"]: t for t in res.get("ours", {}).get("tests", [])}
    llama = {t["test"]: t for t in res.get("llama_cpp", {}).get("tests", [])}
    rows = []
    for name in SIZES:
        o, ll = ours.get(name, {}), llama.get(name, {})
        row = {"test": name, "pieces_ours": o.get("pieces"), "pieces_llama_cpp": ll.get("pieces")}
        for kind in ("cold", "warm"):
            row[f"ours_{kind}_ms"] = o.get(f"{kind}_ms")
            row[f"llama_cpp_{kind}_ms"] = ll.get(f"{kind}_ms")
            row[f"speed_ratio_{kind}"] = speed_ratio(o.get(f"{kind}_ms"), ll.get(f"{kind}_ms"))
        row["error"] = "; ".join(e for e in (o.get("error"), ll.get("error")) if e) or None
        rows.append(row)
    return rows


def format_table(rows: List[dict], with_ours: bool, with_llama: bool) -> str:
    def ms(v):
        return f"{v:10.1f}" if v is not None else f"{'-':>10}"

    def ratio(v):
        return f"{v:9.2f}x" if v is not None else f"{'-':>10}"

    def pieces(r):
        p = {r["pieces_ours"], r["pieces_llama_cpp"]} - {None}
        return "/".join(str(v) for v in sorted(p)) or "-"

    head1 = f"{'':9} {'':>6}"
    head2 = f"{'test':9} {'pieces':>6}"
    if with_ours:
        head1 += f" {'minicpm.cpp ms':>21}"
        head2 += f" {'cold':>10} {'warm':>10}"
    if with_llama:
        head1 += f" {'llama.cpp ms':>21}"
        head2 += f" {'cold':>10} {'warm':>10}"
    if with_ours and with_llama:
        head1 += f"  {RATIO_LABEL}"
        head2 += f" {'cold':>10} {'warm':>10}"
    lines = [head1, head2]
    for r in rows:
        line = f"{r['test']:9} {pieces(r):>6}"
        if with_ours:
            line += f" {ms(r['ours_cold_ms'])} {ms(r['ours_warm_ms'])}"
        if with_llama:
            line += f" {ms(r['llama_cpp_cold_ms'])} {ms(r['llama_cpp_warm_ms'])}"
        if with_ours and with_llama:
            line += f" {ratio(r['speed_ratio_cold'])} {ratio(r['speed_ratio_warm'])}"
        if r["error"]:
            line += f"  error: {r['error']}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", required=True, help="LLM GGUF with MiniCPM-V's image tokens (its width must match the resampler's)")
    p.add_argument("--mmproj", required=True, help="vision GGUF in mmproj layout")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=3, help="warm images per test, after the cold one (3)")
    p.add_argument("--llama-mtmd-cli", metavar="PATH")
    p.add_argument("--llama-chat-template", metavar="NAME", default=None,
                   help=f"llama.cpp built-in chat template given to llama-mtmd-cli as --chat-template; default: "
                        f"{DEFAULT_CHAT_TEMPLATE} when the LLM file has no chat template, else the file's own")
    p.add_argument("--llama-arg", action="append", default=[], metavar="ARG",
                   help="extra llama-mtmd-cli argument (repeatable), e.g. --llama-arg=--no-warmup")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.skip_ours and not args.llama_mtmd_cli:
        p.error("--skip-ours needs --llama-mtmd-cli")

    files = check_files(args.llm, args.mmproj)
    res: dict = {}
    if not args.skip_ours:
        res["ours"] = run_ours(args)
    if args.llama_mtmd_cli:
        res["llama_cpp"] = run_llama(args, files)
    rows = compare(res)
    res["comparison"] = rows
    res["speed_ratio"] = RATIO_DEFINITION

    print()
    print(format_table(rows, "ours" in res, "llama_cpp" in res))
    print(f"cold: first image after load; warm: median of {args.reps} further images. "
          "minicpm.cpp: encode_image (preprocessing included); llama.cpp: its per-piece vision encode times.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if not any(r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
