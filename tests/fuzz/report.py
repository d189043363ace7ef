"""Tables for RESULTS.md from a run's output directory:

    python tests/fuzz/report.py OUT_DIR

prints the counts by kind x outcome, by kind/family/op x outcome, and the findings grouped
into distinct failures (outcome, kind, op, the exception class or signal, and the message with
numbers and paths blanked), each with its count and one example case.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

OUTCOMES = ["ok", "error", "unexpected_exception", "crash", "hang", "nan", "nan_weights", "harness_error", "skipped"]


def _norm(s: str) -> str:
    s = re.sub(r"/\S+", "<path>", s or "")
    s = re.sub(r"0x[0-9a-f]+|\d+", "N", s)
    return s.splitlines()[0][:90] if s else ""


def _abort_line(stderr: str) -> str:
    for line in (stderr or "").splitlines():
        if re.search(r"GGML_ASSERT|GGML_ABORT|terminate called|what\(\)|Assertion|error:|abort", line):
            return line.strip()[:160]
    return ""


def main(out: str) -> None:
    out = Path(out)
    rows = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:   # runs before the worker told the two apart
        if r["outcome"] == "unexpected_exception" and not r.get("desc"):
            r["outcome"] = "harness_error"
    s = json.loads((out / "summary.json").read_text())
    print("cases %d, wall %.0f s, seed %s, jobs %s\n" % (s["cases"], s["wall_s"], s["seed"], s["jobs"]))
    cols = [o for o in OUTCOMES if any(r["outcome"] == o for r in rows)]
    print("| kind | " + " | ".join(cols) + " | total |")
    print("|---" * (len(cols) + 2) + "|")
    for kind in ("gguf", "media", "api"):
        c = collections.Counter(r["outcome"] for r in rows if r["kind"] == kind)
        if c:
            print("| %s | %s | %d |" % (kind, " | ".join(str(c.get(o, 0)) for o in cols), sum(c.values())))
    print()
    print("| kind/family/op | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    ops = collections.defaultdict(collections.Counter)
    for r in rows:
        ops["%s/%s/%s" % (r["kind"], r.get("family", "?"), r.get("op", "?"))][r["outcome"]] += 1
    for k in sorted(ops):
        print("| %s | %s |" % (k, " | ".join(str(ops[k].get(o, 0)) for o in cols)))
    print()
    groups = collections.OrderedDict()
    for r in rows:
        if r["outcome"] not in ("crash", "hang", "unexpected_exception", "nan"):
            continue
        sig = r.get("signal") or r.get("exc") or ""
        detail = _norm(r.get("msg") or "") if r["outcome"] == "unexpected_exception" else _abort_line(r.get("stderr", ""))
        key = (r["outcome"], r["kind"], r.get("op"), sig, detail if r["outcome"] != "crash" else _norm(detail))
        groups.setdefault(key, []).append(r)
    print("distinct findings: %d\n" % len(groups))
    for (outcome, kind, op, sig, detail), rs in groups.items():
        ex = rs[0]
        print("- %s %s/%s %s x%d: %s || %s || e.g. [%s #%d seed %d base %s]" % (
            outcome, kind, op, sig, len(rs), detail, (ex.get("desc") or "")[:150], ex["kind"], ex["idx"], ex["seed"],
            ex.get("base")))
        for r in rs[1:6]:
            print("      also: %s" % (r.get("desc") or "")[:150])


if __name__ == "__main__":
    main(sys.argv[1])
