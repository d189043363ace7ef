"""Hostile arguments through the Python API and the CLI: FIFOs and other non-regular files, NUL
bytes in paths, thread counts, lone surrogates, ``allow_local_files``, and CLI arguments that
used to end in a traceback or a hang. Cases that hung before run in a child process with a
timeout, so that a regression fails instead of blocking the suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minicpm_cpp
from minicpm_cpp import FileError, InvalidArgumentError
from minicpm_cpp.image import load_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture(scope="module")
def llm(tiny_qwen3_dir, converted) -> Path:
    return converted(tiny_qwen3_dir, "f16")


@pytest.fixture(scope="module")
def vlm(tiny_minicpmv45_vision_dir, converted) -> Path:
    return converted(tiny_minicpmv45_vision_dir, "f16")


@pytest.fixture()
def fifo(tmp_path) -> Path:
    p = tmp_path / "pipe.gguf"
    os.mkfifo(p)
    return p


def child(code: str, timeout: float = 60.0) -> str:
    """Runs `code` in a fresh interpreter (``m`` is minicpm_cpp); returns the class and message
    of what it raised, or "ok". A hang is a test failure, not a blocked suite."""
    src = "import minicpm_cpp as m\ntry:\n" + textwrap.indent(code, "    ") + (
        "\n    print('RESULT ok')\nexcept Exception as e:\n    print('RESULT', type(e).__name__, str(e))\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s: {code}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit {r.returncode}: {r.stderr[-2000:]}"
    return lines[-1][len("RESULT "):]


# ---------------------------------------------------------------------------------- files

def test_fifo_as_model_mmproj_image_or_url_is_refused(fifo, llm, vlm):
    assert child(f"m.Model({str(fifo)!r}, device='cpu')").startswith("FileError")
    assert "not a regular file" in child(f"m.Model({str(llm)!r}, device='cpu', mmproj={str(fifo)!r})")
    img = f"s = m.Session(m.Model({str(vlm)!r}, device='cpu'))\n"
    out = child(img + f"s.chat([{{'role': 'user', 'content': [{{'type': 'image', 'image': {str(fifo)!r}}}, 'hi']}}],"
                      " max_tokens=1)")
    assert out.startswith("FileError") and "not a regular file" in out
    out = child(img + f"s.chat([{{'role': 'user', 'content': [{{'type': 'image_url', 'image_url': "
                      f"{{'url': 'file://{fifo}'}}}}, 'hi']}}], max_tokens=1)")
    assert out.startswith("FileError") and "not a regular file" in out
    out = child(f"m.load_audio({str(fifo)!r})")
    assert out.startswith("FileError") and "not a regular file" in out


def test_fifo_named_like_audio_in_text_stays_text(tmp_path, llm):
    p = tmp_path / "talk.wav"
    os.mkfifo(p)
    out = child(f"s = m.Session(m.Model({str(llm)!r}, device='cpu'))\n"
                f"p = s.chat_prompt([{{'role': 'user', 'content': [{str(p)!r}, 'hi']}}])\n"
                f"assert {str(p)!r} in p['text'], p['text']")
    assert out == "ok"


def test_nul_in_paths(llm):
    with pytest.raises(InvalidArgumentError, match="NUL"):
        minicpm_cpp.Model(str(llm) + "\x00.bak", device="cpu")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        minicpm_cpp.Model(llm, device="cpu", mmproj=str(llm) + "\x00x")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        load_image(str(llm) + "\x00x.png")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        minicpm_cpp.load_audio(str(llm) + "\x00x.wav")


def test_directory_and_missing_media(tmp_path):
    with pytest.raises(InvalidArgumentError, match="is a directory, not an image file"):
        load_image(str(tmp_path))
    with pytest.raises(FileError, match="no such audio file"):
        minicpm_cpp.load_audio(str(tmp_path / "none.wav"))


# ----------------------------------------------------------------------------- arguments

def test_thread_counts_are_bounded(llm):
    cap = 4 * (os.cpu_count() or 4)
    for n in (cap + 1, 100_000, 10**6, 10**30):
        with pytest.raises(InvalidArgumentError, match="n_threads must be <="):
            minicpm_cpp.Model(llm, device="cpu", n_threads=n)
    model = minicpm_cpp.Model(llm, device="cpu", n_threads=cap)
    with pytest.raises(InvalidArgumentError, match="n_threads must be <="):
        minicpm_cpp.Session(model, n_threads=100_000)
    for n in (-1, 1.5, "2"):
        with pytest.raises(InvalidArgumentError):
            minicpm_cpp.Session(model, n_threads=n)


def test_lone_surrogates_and_bad_text(llm):
    model = minicpm_cpp.Model(llm, device="cpu")
    s = minicpm_cpp.Session(model)
    for call in (lambda: model.tokenize("a\udc80b"), lambda: s.tokenize("\ud800"),
                 lambda: s.chat([{"role": "user", "content": "hi \ud800"}], max_tokens=1),
                 lambda: s.chat([{"role": "user", "content": "hi"}], max_tokens=1, stop=["\udfff"])):
        with pytest.raises(InvalidArgumentError, match="lone surrogate"):
            call()
    with pytest.raises(InvalidArgumentError, match="must be a str"):
        model.tokenize(b"bytes")
    with pytest.raises(InvalidArgumentError, match="max_tokens"):
        s.chat([{"role": "user", "content": "hi"}], max_tokens=-5)


# ---------------------------------------------------------------------- allow_local_files

def test_allow_local_files_off(tmp_path, vlm, assets_dir):
    model = minicpm_cpp.Model(vlm, device="cpu")
    s = minicpm_cpp.Session(model, allow_local_files=False)
    image = assets_dir / "media" / "test-1.jpeg"
    wav = assets_dir / "media" / "audio_test_case_0000.wav"
    missing = tmp_path / "missing.png"
    texts = []
    for ref in (str(image), str(missing), f"file://{image}", f"file://{missing}"):
        for part in ({"type": "image", "image": ref}, {"type": "image_url", "image_url": {"url": ref}}):
            with pytest.raises(FileError, match="local files are not allowed") as e:
                s.chat([{"role": "user", "content": [part, "hi"]}], max_tokens=1)
            texts.append(str(e.value).split(": ", 1)[1])
    for ref in (str(wav), f"file://{wav}", f"file://{tmp_path / 'none.wav'}"):
        with pytest.raises(FileError, match="local files are not allowed") as e:
            s.chat([{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": ref}}, "hi"]}],
                   max_tokens=1)
        texts.append(str(e.value).split(": ", 1)[1])
    with pytest.raises(FileError, match="local files are not allowed"):
        s.chat([{"role": "user", "content": [Path(image), "hi"]}], max_tokens=1)
    # one text whether the file exists or not
    assert len(set(texts)) == 1, set(texts)
    # paths in text stay text (the file system is not asked), in-memory media still work
    p = s.chat_prompt([{"role": "user", "content": [str(wav), "hi"]}])
    assert str(wav) in p["text"]
    pixels = load_image(image)
    assert s.chat([{"role": "user", "content": [pixels, "hi"]}], max_tokens=1) is not None
    with pytest.raises(InvalidArgumentError, match="allow_local_files"):
        minicpm_cpp.Session(model, allow_local_files="no")
    # the default reads local files
    on = minicpm_cpp.Session(model)
    assert on.chat([{"role": "user", "content": [{"type": "image", "image": str(image)}, "hi"]}],
                   max_tokens=1) is not None


# ----------------------------------------------------------------------------- limits

def test_extreme_aspect_ratio_image_is_refused_by_patch_count(vlm):
    """1 x 100000 gives a 14 x 141666 overview in the reference's arithmetic (10,119 patches);
    the default limit (4096 per piece) refuses it, and the limit is configurable."""
    tall = np.full((100_000, 1, 3), 128, np.uint8)
    s = minicpm_cpp.Session(minicpm_cpp.Model(vlm, device="cpu"))
    with pytest.raises(InvalidArgumentError, match=r"10119 patches, more than the limit of 4096"):
        s.chat([{"role": "user", "content": [tall, "hi"]}], max_tokens=1)
    mid = np.full((20_000, 1, 3), 128, np.uint8)   # 14 x 63350: 4525 patches
    with pytest.raises(InvalidArgumentError, match="4525 patches"):
        s.chat([{"role": "user", "content": [mid, "hi"]}], max_tokens=1)
    roomy = minicpm_cpp.Session(minicpm_cpp.Model(vlm, device="cpu", max_image_patches=5000))
    assert roomy.chat([{"role": "user", "content": [mid, "hi"]}], max_tokens=1) is not None
    assert s.chat([{"role": "user", "content": [np.full((300, 200, 3), 9, np.uint8), "hi"]}], max_tokens=1) is not None
    with pytest.raises(InvalidArgumentError, match="max_image_patches"):
        minicpm_cpp.Model(vlm, device="cpu", max_image_patches=-1)


# ------------------------------------------------------------------------------------ CLI

def cli(*args, timeout: float = 120.0):
    try:
        return subprocess.run([sys.executable, "-m", "minicpm_cpp.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"minicpm-cli hung: {args}")


@pytest.mark.parametrize("flags, code, text", [
    (["-c", "99999999999999999999"], 2, "-c/--ctx-size: must be in [1, "),
    (["--top-k", "99999999999999999999"], 2, "--top-k: must be in [0, "),
    (["--seed", "99999999999999999999"], 2, "--seed: must be in [0, 18446744073709551615]"),
    (["--seed", "-1"], 2, "--seed: must be in"),
    (["--max-slice-nums", "99999999999999999999"], 2, "--max-slice-nums: must be in [0, 1024]"),
    (["-t", "100000"], 2, "-t/--threads: must be in [0, "),
    (["-n", "-5"], 2, "-n/--n-predict: must be in [-1, "),
    (["--temp", "nan"], 2, "--temp: must be finite"),
    (["-c", "abc"], 2, "must be an integer"),
])
def test_cli_bad_numbers_one_line(flags, code, text, llm):
    r = cli("-m", llm, "-p", "hi", "-n", "1", "--device", "cpu", *flags)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_cli_prompt_files(tmp_path, llm):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    pipe = tmp_path / "pipe.txt"
    os.mkfifo(pipe)
    for path, text in ((tmp_path / "none.txt", "no such prompt file"), (tmp_path, "is a directory"),
                       (bad, "not UTF-8 text"), (pipe, "not a regular file")):
        r = cli("-m", llm, "-f", path, "-n", "1", "--device", "cpu", timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and text in lines[0], r.stderr
    good = tmp_path / "p.txt"
    good.write_text("Hello", encoding="utf-8")
    r = cli("-m", llm, "-f", good, "-n", "2", "--device", "cpu", "--temp", "0")
    assert r.returncode == 0, r.stderr


def test_cli_fifo_model_and_unexpected_errors(fifo, tmp_path, llm):
    r = cli("-m", fifo, "-p", "hi", timeout=60)
    assert r.returncode == 1 and "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a failure outside minicpm_cpp.Error is still one line (with -v: the traceback)
    empty = tmp_path / "x.png"
    empty.write_bytes(b"")
    r = cli("-m", llm, "-p", "hi", "--device", "cpu", "--image", empty, timeout=60)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
