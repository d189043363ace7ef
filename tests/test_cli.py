"""minicpm-cli end to end (subprocess), as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def cli(*args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "minicpm_cpp.cli", *map(str, args)],
        capture_output=True, text=True, input=input, timeout=300,
    )


@pytest.fixture(scope="module")
def gguf_path(tiny_qwen3_dir, converted):
    return converted(tiny_qwen3_dir, "f16")


def test_console_scripts_installed():
    assert shutil.which("minicpm-cli") and shutil.which("minicpm-convert")


def test_prompt_streams_and_prints_timings(gguf_path):
    r = cli("-m", gguf_path, "-p", "Why is the sky blue?", "-n", "8", "--temp", "0", "--seed", "1", "-t", "2",
            "--device", "cpu", "--system", "Be brief.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "prompt:" in r.stderr and "generation:" in r.stderr and "tok/s" in r.stderr
    again = cli("-m", gguf_path, "-p", "Why is the sky blue?", "-n", "8", "--temp", "0", "--device", "cpu",
                "--system", "Be brief.")
    assert again.stdout == r.stdout


def test_raw_and_sampling_flags(gguf_path):
    r = cli("-m", gguf_path, "-p", "Hello", "-n", "4", "--raw", "--top-k", "5", "--top-p", "0.9", "--temp", "0.8",
            "-c", "128", "--seed", "3", "--no-timings")
    assert r.returncode == 0, r.stderr
    assert "tok/s" not in r.stderr


def test_interactive(gguf_path):
    r = cli("-m", gguf_path, "-i", "-n", "4", "--temp", "0", input="hello\nand more\n\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("generation:") == 2


def test_errors_are_messages_not_tracebacks(tmp_path, gguf_path):
    r = cli("-m", tmp_path / "missing.gguf", "-p", "hi")
    assert r.returncode == 1 and "error: model file not found" in r.stderr and "Traceback" not in r.stderr
    r = cli("-p", "hi")
    assert r.returncode == 2 and "--model" in r.stderr
    r = cli("-m", gguf_path, "-p", "hi", "--top-p", "7")
    assert r.returncode == 1 and "top_p" in r.stderr and "Traceback" not in r.stderr
    r = cli("-m", gguf_path, "-p", "hi", "--image", "x.jpg")
    assert r.returncode == 2 and "vision" in r.stderr


def test_list_devices():
    r = cli("--list-devices")
    assert r.returncode == 0 and "CPU" in r.stdout
