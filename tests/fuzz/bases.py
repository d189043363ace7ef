"""Tiny valid base files for the fuzzer, built once into a cache directory.

Every base is a conversion of a checkpoint from ``tests/tiny_models.py``:

* ``llm``      : plain Qwen3 (2 layers, hidden 128), f16, LLM only.
* ``v45_llm``  : MiniCPM-V 4.5 layout, ``llm_only=True`` (the LLM part of a split pair);
* ``v45_mmproj``: the vision part of that pair (llama.cpp ``mmproj`` layout);
* ``v45``      : the single combined MiniCPM-V 4.5 file (LLM + vision);
* ``o45``      : the combined MiniCPM-o 4.5 file (LLM + vision + audio).

The cache key includes the installed package version, so a stale cache is rebuilt.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

BASE_NAMES = ("llm", "v45_llm", "v45_mmproj", "v45", "o45")


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINICPM_FUZZ_CACHE", Path(tempfile.gettempdir()) / "minicpm-fuzz-cache"))


def build_bases(cache_dir: Path = None, log=print) -> Dict[str, Path]:
    """Returns {name: path} of every base file, building what is missing."""
    import minicpm_cpp
    from minicpm_cpp.convert import convert
    import tiny_models

    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    stamp = cache_dir / "bases.json"
    want = {n: cache_dir / f"{n}.gguf" for n in BASE_NAMES}
    key = {"version": minicpm_cpp.__version__, "files": sorted(str(p) for p in want.values())}
    if stamp.exists() and all(p.exists() for p in want.values()):
        try:
            if json.loads(stamp.read_text()) == key:
                return want
        except ValueError:
            pass
    quiet = dict(force=True, progress=False, log=lambda msg: None)
    ck = cache_dir / "ckpt"
    ck.mkdir(exist_ok=True)
    log("fuzz: building base files in %s" % cache_dir)
    qwen3 = tiny_models.make_qwen3(ck / "qwen3")
    convert(qwen3, want["llm"], "f16", **quiet)
    v45 = tiny_models.make_minicpmv45(ck / "v45")
    convert(v45, want["v45_llm"], "f16", llm_only=True, mmproj=want["v45_mmproj"], **quiet)
    convert(v45, want["v45"], "f16", **quiet)
    o45 = tiny_models.make_minicpmo45(ck / "o45")
    convert(o45, want["o45"], "f16", **quiet)
    stamp.write_text(json.dumps(key))
    return want


if __name__ == "__main__":
    for k, v in build_bases(Path(sys.argv[1]) if len(sys.argv) > 1 else None).items():
        print(k, v, v.stat().st_size)
