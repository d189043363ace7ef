#!/usr/bin/env python3
"""Sessions on one Model at the same time give exactly the serial results, on any device.

Each of N sessions prefills a prompt (every other one with an image first), reads its logits and
decodes greedily; then the same N jobs run on N threads at once, several rounds. Prints, per
round, whether every job's logits (bit for bit) and tokens equal the serial run's; exit status 1
on any difference. The CPU test suite does this on tiny models (tests/test_concurrency.py); this
script is for real sizes and GPUs::

    python benchmarks/check_concurrency.py --llm q8b.gguf --mmproj mmproj.gguf --device cuda
"""

from __future__ import annotations

import argparse
import sys
import threading

import numpy as np

import minicpm_cpp as m


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", required=True)
    p.add_argument("--mmproj")
    p.add_argument("--device", default="auto")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=24)
    a = p.parse_args()
    model = m.Model(a.llm, device=a.device, mmproj=a.mmproj)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (300 + 50 * k, 400, 3), dtype=np.uint8) for k in range(a.sessions)]

    def job(k: int):
        s = m.Session(model, n_ctx=4096)
        toks = list(range(2000 + 10 * k, 2016 + 10 * k))
        segs = [s.encode_image(imgs[k], image_id=0), toks] if (k % 2 and model.has_vision) else [toks]
        s._s.sync_segments(segs)
        first = s.logits()
        s.generate(max_tokens=a.tokens, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
        return first, s.tokens[-a.tokens:]

    serial = [job(k) for k in range(a.sessions)]
    ok = True
    for rnd in range(a.rounds):
        out: list = [None] * a.sessions
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, job(k))) for k in range(a.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        same = [o is not None and np.array_equal(o[0], s[0]) and o[1] == s[1] for o, s in zip(out, serial)]
        print(f"round {rnd}: concurrent == serial: {same}")
        ok = ok and all(same)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
