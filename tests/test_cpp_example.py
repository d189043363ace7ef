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


# ---- --speak: Session::speak (minicpm/speech.h) from a C++ program --------------------------------


@pytest.fixture(scope="module")
def speech_model_path(tiny_speech_dir, converted):
    return converted(tiny_speech_dir, "f32")


def _tone(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def test_example_speaks_as_python(example, speech_model_path, tmp_path):
    import wave

    model = minicpm_cpp.Model(speech_model_path, device="cpu", n_threads=2)
    voice = model.voice(_tone(2.0))
    vpath = tmp_path / "me.voice.gguf"
    voice.save(vpath)
    out, raw = tmp_path / "answer.wav", tmp_path / "answer.f32"
    r = subprocess.run([str(example), str(speech_model_path), "-p", "Hi", "-n", "30", "--temp", "0", "--seed", "3",
                        "-t", "2", "--speak", "-o", str(out), "--pcm-out", str(raw), "--voice", str(vpath),
                        "--tts-steps", "3"], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    # the same turn from Python (the tts seed derived from the session seed on both sides)
    s = minicpm_cpp.Session(model, n_ctx=4096, seed=3)
    want = s.chat([{"role": "user", "content": "Hi"}], generate_audio=True, voice=voice, max_tokens=30, temperature=0,
                  tts_steps=3)
    # the text pieces printed in order by on_text
    assert r.stdout.decode("utf-8", "replace") == want.text + "\n"
    err = r.stderr.decode()
    codes = [int(c) for c in err.split("codes:")[1].split("\n")[0].split()]
    assert codes == want.codes and codes
    pcm = np.fromfile(raw, dtype=np.float32)
    assert pcm.shape == want.audio.shape and pcm.size > 0
    assert float(np.abs(pcm - want.audio).max()) <= 1e-5 * max(float(np.abs(want.audio).max()), 1e-12)
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert frames.size == pcm.size
    assert np.array_equal(frames, np.clip(np.rint(pcm.astype(np.float64) * 32767), -32768, 32767).astype(np.int16))


def test_example_speak_errors(example, speech_model_path, model_path, tmp_path):
    out = tmp_path / "x.wav"
    # no voice given and none in the file
    r = subprocess.run([str(example), str(speech_model_path), "-p", "Hi", "-n", "2", "--speak", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no default voice" in r.stderr and not out.exists()
    # a model without the speech parts
    r = subprocess.run([str(example), str(model_path), "-p", "Hi", "-n", "2", "--speak", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot speak" in r.stderr
    # a voice file that is not one
    r = subprocess.run([str(example), str(speech_model_path), "--speak", "-o", str(out), "--voice", str(model_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not a voice file" in r.stderr
    r = subprocess.run([str(example), str(speech_model_path), "--speak"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs -o" in r.stderr
