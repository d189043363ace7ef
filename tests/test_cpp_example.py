"""The C++ API example (examples/chat.cpp, the README's C++ section) builds with CMake against the
same ggml as the package and answers like the Python API on a tiny model, with an image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicpm_cpp
import tiny_models


def _ggml_root() -> str:
    import libggml

    return os.path.dirname(libggml.__file__)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed to build the C++ example (pip install cmake)")
    build = tmp_path_factory.mktemp("cpp-example")
    cfg = [cmake, "-S", str(tiny_models.REPO_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           "-DMINICPM_BUILD_EXAMPLES=ON", f"-Dggml_ROOT={_ggml_root()}", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        cfg += ["-G", "Ninja"]
    for cmd in (cfg, [cmake, "--build", str(build), "--target", "minicpm-chat", "-j", str(os.cpu_count() or 2)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    exe = build / "minicpm-chat"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def model_path(tiny_minicpmv45_vision_dir, converted):
    return converted(tiny_minicpmv45_vision_dir, "f32")


def _rgb(w, h):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_example_chat_with_image_equals_python(example, model_path, tmp_path):
    from PIL import Image

    rgb = _rgb(500, 300)
    ppm = tmp_path / "x.ppm"
    Image.fromarray(rgb).save(ppm)
    prompt = "What is in the image?"
    r = subprocess.run([str(example), str(model_path), "-p", prompt, "--image", str(ppm), "-n", "12", "--temp", "0",
                        "-t", "2"], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    assert b"images: 1" in r.stderr
    s = minicpm_cpp.Session(minicpm_cpp.Model(model_path, device="cpu"), n_ctx=4096)
    want = s.chat([{"role": "user", "content": [rgb, prompt]}], max_tokens=12, temperature=0)
    # Bytes as printed (a random model's text may hold "\r\n"; text mode would fold it).
    assert r.stdout.decode("utf-8", "replace") == want + "\n"


def test_example_reports_errors(example, tmp_path):
    r = subprocess.run([str(example), str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error:" in r.stderr and "missing.gguf" in r.stderr
    bad = tmp_path / "bad.ppm"
    bad.write_bytes(b"P3\n1 1\n255\n0 0 0\n")
    r = subprocess.run([str(example), "x.gguf", "--image", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "P6" in r.stderr
