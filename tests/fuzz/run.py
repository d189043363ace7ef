#!/usr/bin/env python
"""minicpm.cpp fuzz harness.

    python tests/fuzz/run.py --cases N --seed S [--kinds gguf,media,api] [--timeout SEC] [--out DIR]
                             [--jobs J] [--threads T] [--cache DIR] [--replay FAILURES.json]

Cases are split over the kinds in proportion (``--mix``, default gguf:0.7,media:0.2,api:0.1)
and run in persistent worker processes (tests/fuzz/worker.py); a worker that dies or goes past
the per-case timeout is killed and restarted, and that case is recorded as ``crash`` (with the
signal) or ``hang``. Case ``i`` of a kind is fully determined by (seed, kind, i): the same
command gives the same cases. ``--out`` gets ``summary.json`` (counts by kind, family, op and
outcome, wall time), ``cases.jsonl`` (every case) and ``failures.json`` (every crash, hang,
unexpected_exception and nan, with its description and the worker's last stderr lines);
mutated GGUF files of crashes/hangs are kept under ``repro/`` (up to ``--keep-mb``).

Outcomes: ok, error (a minicpm_cpp.Error subclass), unexpected_exception, crash, hang, nan,
nan_weights (non-finite outputs after a mutation that changed tensor bytes: not a finding), and
harness_error (the case generator itself failed: a bug of this harness).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FINDINGS = ("crash", "hang", "unexpected_exception", "nan")


class Worker:
    def __init__(self, cfg, log_path):
        self.cfg = cfg
        self.log_path = log_path
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("GGML_NO_BACKTRACE", "1")   # no gdb attach on aborts: the assert line is enough
        self.proc = subprocess.Popen([sys.executable, str(HERE / "worker.py"), json.dumps(self.cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, start_new_session=True)
        self.buf = b""
        msg = self._read(120)
        if not isinstance(msg, dict) or not msg.get("ready"):
            raise RuntimeError("fuzz worker did not start; see %s" % self.log_path)

    def _read(self, timeout):
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    return json.loads(line)
                except ValueError:
                    continue       # not a protocol line
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return "eof"
            self.buf += chunk

    def kill(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc:
            self.proc.wait()
        self.proc = None

    def stderr_tail(self, start, n=1500):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def run(self, case, timeout):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        log_start = os.path.getsize(self.log_path)
        self.proc.stdin.write((json.dumps(case) + "\n").encode())
        self.proc.stdin.flush()
        t0 = time.monotonic()
        info = {}
        while True:
            msg = self._read(max(0.0, timeout - (time.monotonic() - t0)))
            if msg is None:
                self.kill()
                res = dict(info, outcome="hang", secs=round(time.monotonic() - t0, 2))
                res["stderr"] = self.stderr_tail(log_start)
                return res
            if msg == "eof":
                rc = self.proc.wait()
                self.proc = None
                sig = -rc if rc < 0 else None
                res = dict(info, outcome="crash", returncode=rc,
                           signal=signal.Signals(sig).name if sig else None, secs=round(time.monotonic() - t0, 2))
                res["stderr"] = self.stderr_tail(log_start)
                return res
            if "desc" in msg:
                info.update(msg)
                continue
            if "outcome" in msg:
                info.update(msg)
                info["secs"] = round(time.monotonic() - t0, 2)
                return info


def plan(n, kinds, mix, seed):
    """The case list: per-kind counts in proportion to mix, interleaved deterministically."""
    w = {k: mix.get(k, 0.0) for k in kinds}
    tot = sum(w.values()) or 1.0
    counts = {k: int(n * w[k] / tot) for k in kinds}
    for k in kinds:                      # hand the rounding remainder out in order
        if sum(counts.values()) >= n:
            break
        counts[k] += 1
    while sum(counts.values()) < n:
        counts[kinds[0]] += 1
    cases, nxt = [], {k: 0 for k in kinds}
    # round-robin weighted by count so a prefix of the run is a fair sample
    total = sum(counts.values())
    for j in range(total):
        best = max(kinds, key=lambda k: (counts[k] - nxt[k]) / max(counts[k], 1) if nxt[k] < counts[k] else -1)
        cases.append({"kind": best, "idx": nxt[best], "seed": seed})
        nxt[best] += 1
    for i, c in enumerate(cases):
        c["id"] = i
    return cases


def run_cases(cases, args, bases, out: Path, progress=True):
    import threading
    import queue

    workdir = Path(tempfile.mkdtemp(prefix="minicpm-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    (out / "repro").mkdir(parents=True, exist_ok=True)
    cfg = {"bases": {k: str(v) for k, v in bases.items()}, "threads": args.threads, "mem_limit_gb": args.mem_limit_gb}
    q = queue.Queue()
    for c in cases:
        q.put(c)
    results = []
    lock = threading.Lock()
    keep = {"bytes": args.keep_mb * 2**20}
    t_start = time.monotonic()

    def loop(j):
        wd = workdir / ("w%d" % j)
        wd.mkdir()
        w = Worker(dict(cfg, workdir=str(wd)), out / ("worker-%d.log" % j))
        try:
            while True:
                try:
                    c = q.get_nowait()
                except queue.Empty:
                    return
                if time.monotonic() - t_start > args.budget > 0:
                    res = dict(c, outcome="skipped")
                else:
                    res = w.run(dict(c, blind_frac=args.blind_frac), args.timeout)
                    res.update({k: c[k] for k in ("kind", "idx", "seed", "id")})
                    f = res.get("file")
                    if res["outcome"] in ("crash", "hang") and f and os.path.exists(f):
                        size = os.path.getsize(f)
                        with lock:
                            if size <= keep["bytes"]:
                                keep["bytes"] -= size
                                dst = out / "repro" / ("%s-%d-%d.gguf" % (c["kind"], c["seed"], c["idx"]))
                                shutil.copyfile(f, dst)
                                res["repro_file"] = str(dst)
                    if f and os.path.exists(f):
                        os.unlink(f)
                with lock:
                    results.append(res)
                    if progress and (len(results) % 25 == 0 or res["outcome"] in FINDINGS):
                        el = time.monotonic() - t_start
                        tag = res["outcome"] if res["outcome"] in FINDINGS else ""
                        print("[%5d/%d %6.0fs] %s %s %s" % (len(results), len(cases), el, tag, res.get("kind"),
                                                           (res.get("desc") or "")[:100] if tag else ""), flush=True)
        finally:
            w.kill()

    threads = [threading.Thread(target=loop, args=(j,)) for j in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(workdir, ignore_errors=True)
    results.sort(key=lambda r: r["id"])
    return results, time.monotonic() - t_start


def summarise(results, wall, args):
    by_kind = collections.defaultdict(collections.Counter)
    by_op = collections.defaultdict(collections.Counter)
    errors = collections.Counter()
    for r in results:
        by_kind[r["kind"]][r["outcome"]] += 1
        by_op["%s/%s/%s" % (r["kind"], r.get("family", "?"), r.get("op", "?"))][r["outcome"]] += 1
        if r["outcome"] == "error":
            errors[r.get("exc")] += 1
    return {
        "cases": len(results), "seed": args.seed, "kinds": args.kinds, "wall_s": round(wall, 1), "jobs": args.jobs,
        "threads": args.threads, "timeout_s": args.timeout,
        "outcomes": dict(collections.Counter(r["outcome"] for r in results)),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "by_op": {k: dict(v) for k, v in sorted(by_op.items())},
        "error_classes": dict(errors),
        "gguf_files": sum(1 for r in results if r["kind"] == "gguf" and r["outcome"] != "skipped"),
        "media_inputs": sum(1 for r in results if r["kind"] == "media" and r["outcome"] != "skipped"),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default="gguf,media,api")
    p.add_argument("--mix", default="gguf:0.7,media:0.2,api:0.1")
    p.add_argument("--timeout", type=float, default=30.0, help="per-case seconds before it counts as a hang")
    p.add_argument("--out", default="fuzz-out")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per model")
    p.add_argument("--cache", default=None, help="base-file cache (default $MINICPM_FUZZ_CACHE or /tmp/minicpm-fuzz-cache)")
    p.add_argument("--blind-frac", type=float, default=0.3, help="share of gguf cases that are blind byte flips/truncations")
    p.add_argument("--mem-limit-gb", type=float, default=8.0, help="RLIMIT_AS of each worker (0: none)")
    p.add_argument("--keep-mb", type=int, default=2048, help="disk budget for kept crash/hang files")
    p.add_argument("--budget", type=float, default=0, help="stop starting cases after this many seconds (0: none)")
    p.add_argument("--replay", default=None, help="run only the cases listed in a failures.json / cases.jsonl")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from bases import build_bases

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bases = build_bases(Path(args.cache) if args.cache else None)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    mix = {k: float(v) for k, v in (x.split(":") for x in args.mix.split(","))}
    if args.replay:
        src = Path(args.replay).read_text()
        rows = json.loads(src) if src.lstrip().startswith("[") else [json.loads(x) for x in src.splitlines() if x.strip()]
        cases = [{"kind": r["kind"], "idx": r["idx"], "seed": r["seed"], "id": i} for i, r in enumerate(rows)]
    else:
        cases = plan(args.cases, kinds, mix, args.seed)
    results, wall = run_cases(cases, args, bases, out, progress=not args.quiet)
    summary = summarise(results, wall, args)
    with open(out / "cases.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    fails = [r for r in results if r["outcome"] in FINDINGS]
    (out / "failures.json").write_text(json.dumps(fails, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("cases", "wall_s", "outcomes", "by_kind")}, indent=1))
    print("findings: %d (see %s)" % (len(fails), out / "failures.json"))
    return summary, results


if __name__ == "__main__":
    main()
