"""benchmarks/bench_vision.py: the up-front file checks, the llama-mtmd-cli log parsing (cold and
warm from one run over several images), the speed ratio, and both runtimes' paths end to end
(minicpm.cpp on a tiny random model, llama.cpp through a stand-in llama-mtmd-cli that logs as
llama.cpp does)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")

import tiny_models  # noqa: E402

BENCH_DIR = tiny_models.REPO_DIR / "benchmarks"


bv = tiny_models.load_benchmark("bench_vision")

# What llama-mtmd-cli logs around its vision encode (current llama.cpp), for one image of
# 2 pieces: one batch per piece, each followed by the LLM decode of its embeddings.
LOG_BATCH = """\
main: loading model: llm.gguf
encoding mtmd batch, n_chunks = 1 (done = 1, total = 7)
mtmd batch encoding done in 120 ms
decoding image batch 1/1, n_tokens_batch = 64
image decoded (batch 1/1) in 15 ms
encoding mtmd batch, n_chunks = 1 (done = 4, total = 7)
mtmd batch encoding done in 80 ms
decoding image batch 1/1, n_tokens_batch = 64
image decoded (batch 1/1) in 14 ms
"""

# As llama-mtmd-cli (llama.cpp of llama-cpp-python 0.3.36) printed it for a 448x448 image then a
# 1344x1344 one (an excerpt: the overview and first slice of the second).
LOG_REAL = """\
0.01.712.329 I main: loading model: /tmp/tiny-llm-tok.gguf
0.02.423.179 I encoding mtmd batch, n_chunks = 1 (done = 1, total = 23)
0.03.391.150 I mtmd batch encoding done in 968 ms
0.04.363.154 I encoding mtmd batch, n_chunks = 1 (done = 3, total = 23)
0.04.792.016 I mtmd batch encoding done in 428 ms
0.04.794.401 I encoding mtmd batch, n_chunks = 1 (done = 5, total = 23)
0.04.867.318 I mtmd batch encoding done in 73 ms
"""

# Older llama.cpp (mtmd-helper), one line per piece.
LOG_SLICE = """\
encoding image slice...
image slice encoded in 200 ms
decoding image batch 1/1, n_tokens_batch = 64
image decoded (batch 1/1) in 20 ms
encoding image slice...
image slice encoded in 90 ms
decoding image batch 1/1, n_tokens_batch = 64
image decoded (batch 1/1) in 19 ms
"""


# ---------------------------------------------------------------------------------------------
# log parsing


def test_parse_batch_log():
    assert bv.parse_piece_times(LOG_BATCH) == [120.0, 80.0]


def test_parse_real_log():
    assert bv.parse_piece_times(LOG_REAL) == [968.0, 428.0, 73.0]


def test_parse_slice_log():
    assert bv.parse_piece_times(LOG_SLICE) == [200.0, 90.0]


def test_parse_batch_of_several_pieces_splits_evenly():
    log = "encoding mtmd batch, n_chunks = 4 (done = 0, total = 9)\nmtmd batch encoding done in 100 ms\n"
    assert bv.parse_piece_times(log) == [25.0] * 4


def test_parse_no_timing():
    assert bv.parse_piece_times("llama_model_load: error loading model\n") == []


def test_cold_and_warm_from_one_run():
    # 1 cold + 3 warm images of 2 pieces each
    cold = LOG_BATCH.replace("120 ms", "200 ms").replace("80 ms", "90 ms")
    log = cold + LOG_BATCH + LOG_BATCH.replace("120 ms", "100 ms") + LOG_BATCH.replace("80 ms", "60 ms")
    t = bv.llama_timings(log, 4)
    assert t["pieces"] == 2
    assert t["cold_ms"] == 290.0
    assert t["warm_samples_ms"] == [200.0, 180.0, 180.0]
    assert t["warm_ms"] == 180.0
    assert t["slice_ms"][0] == [200.0, 90.0]


def test_pieces_that_do_not_split_into_images():
    with pytest.raises(ValueError, match="do not split into 2 images"):
        bv.llama_timings("image slice encoded in 5 ms\n" * 3, 2)
    with pytest.raises(ValueError):
        bv.llama_timings("", 1)


# ---------------------------------------------------------------------------------------------
# speed ratio and table


def test_speed_ratio_direction():
    assert bv.speed_ratio(50.0, 100.0) == 2.0  # minicpm.cpp takes half the time: twice as fast
    assert bv.speed_ratio(102.0, 100.0) < 1  # 2% slower
    assert bv.speed_ratio(None, 100.0) is None and bv.speed_ratio(50.0, None) is None


def test_table_and_comparison_use_one_ratio():
    res = {
        "ours": {"tests": [{"test": "slice448", "pieces": 1, "cold_ms": 200.0, "warm_ms": 50.0}]},
        "llama_cpp": {"tests": [{"test": "slice448", "pieces": 1, "cold_ms": 100.0, "warm_ms": 100.0},
                                {"test": "img1344", "error": "llama-mtmd-cli exited with 1"}]},
    }
    rows = bv.compare(res)
    assert rows[0]["speed_ratio_cold"] == 0.5 and rows[0]["speed_ratio_warm"] == 2.0
    assert rows[1]["error"] and rows[1]["speed_ratio_cold"] is None
    table = bv.format_table(rows, True, True)
    assert bv.RATIO_LABEL in table
    assert "0.50x" in table and "2.00x" in table
    assert "faster" not in table.replace(bv.RATIO_LABEL, "")


# ---------------------------------------------------------------------------------------------
# files and command line


def _write_gguf(path: Path, arch: str, kv: dict) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


@pytest.fixture()
def mmproj_meta(tmp_path):
    return _write_gguf(tmp_path / "mmproj.gguf", "clip", {"clip.minicpmv_query_num": 64})


def test_read_gguf_kv(tmp_path):
    p = _write_gguf(tmp_path / "a.gguf", "qwen3", {"tokenizer.ggml.tokens": ["a", "<image>"], "x.n": 7,
                                                  "tokenizer.chat_template": "{{ x }}"})
    kv = bv.read_gguf_kv(str(p), ["tokenizer.ggml.tokens", "x.n", "general.architecture", "absent"])
    assert kv == {"tokenizer.ggml.tokens": ["a", "<image>"], "x.n": 7, "general.architecture": "qwen3"}


def test_llm_without_image_tokens_names_the_fix(tmp_path, mmproj_meta):
    llm = _write_gguf(tmp_path / "llm.gguf", "qwen3", {"tokenizer.ggml.tokens": ["a", "b", "<|im_end|>"]})
    with pytest.raises(SystemExit) as e:
        bv.check_files(str(llm), str(mmproj_meta))
    msg = str(e.value)
    assert "<image>" in msg and "--tokenizer-dir tests/assets/tokenizer/minicpm-o-4_5" in msg


def test_llm_with_image_tokens(tmp_path, mmproj_meta):
    llm = _write_gguf(tmp_path / "llm.gguf", "qwen3", {"tokenizer.ggml.tokens": list(bv.IMAGE_TOKENS)})
    assert bv.check_files(str(llm), str(mmproj_meta)) == {"has_chat_template": False, "query_num": 64}
    with pytest.raises(SystemExit, match="not an mmproj"):
        bv.check_files(str(llm), str(llm))


def test_chat_template_argument():
    assert bv.chat_template_args(None, False) == ["--chat-template", "chatml"]
    assert bv.chat_template_args(None, True) == []
    assert bv.chat_template_args("vicuna", True) == ["--chat-template", "vicuna"]


# ---------------------------------------------------------------------------------------------
# end to end

FAKE_CLI = """\
#!{python}
# Stands in for llama-mtmd-cli: logs one encode time per image piece, as llama.cpp does.
import json, sys
argv = sys.argv[1:]
images = [argv[i + 1] for i, a in enumerate(argv) if a == "--image"]
with open({record!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
if "-m" not in argv or "--mmproj" not in argv or not images:
    sys.exit(2)
if "--chat-template" not in argv and {needs_template!r}:
    print("Model does not have chat template.", file=sys.stderr)
    sys.exit(1)
for n, path in enumerate(images):
    pieces = 1 if "slice448" in path else 10
    for p in range(pieces):
        print("encoding mtmd batch, n_chunks = 1 (done = %d, total = 99)" % p, file=sys.stderr)
        print("mtmd batch encoding done in %d ms" % (300 if n == 0 else 100 + n), file=sys.stderr)
        print("image decoded (batch 1/1) in 9 ms", file=sys.stderr)
print("A")
"""


def _fake_cli(tmp_path: Path, needs_template: bool) -> tuple:
    record = tmp_path / "argv.jsonl"
    cli = tmp_path / "llama-mtmd-cli"
    cli.write_text(FAKE_CLI.format(python=sys.executable, record=str(record), needs_template=needs_template))
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return cli, record


def test_llama_path_end_to_end(tmp_path, mmproj_meta, capsys):
    llm = _write_gguf(tmp_path / "llm.gguf", "qwen3", {"tokenizer.ggml.tokens": list(bv.IMAGE_TOKENS)})
    cli, record = _fake_cli(tmp_path, needs_template=True)
    out = tmp_path / "res.json"
    rc = bv.main(["--llm", str(llm), "--mmproj", str(mmproj_meta), "--device", "cpu", "--skip-ours", "--reps", "2",
                  "--llama-mtmd-cli", str(cli), "--json", str(out)])
    assert rc == 0
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(runs) == 2  # one process per test
    for argv in runs:
        assert argv.count("--image") == 3  # cold + 2 warm
        assert argv[argv.index("--chat-template") + 1] == "chatml"  # the file has no template
        assert argv[argv.index("-ngl") + 1] == "0"
    res = json.loads(out.read_text())
    t448, t1344 = res["llama_cpp"]["tests"]
    assert (t448["pieces"], t448["cold_ms"], t448["warm_ms"]) == (1, 300.0, 101.5)
    assert (t1344["pieces"], t1344["cold_ms"], t1344["warm_ms"]) == (10, 3000.0, 1015.0)
    assert res["speed_ratio"] == bv.RATIO_DEFINITION
    assert "llama.cpp ms" in capsys.readouterr().out


def test_llama_failure_is_reported(tmp_path, mmproj_meta, capsys):
    llm = _write_gguf(tmp_path / "llm.gguf", "qwen3", {"tokenizer.ggml.tokens": list(bv.IMAGE_TOKENS)})
    cli = tmp_path / "llama-mtmd-cli"
    cli.write_text("#!/bin/sh\necho 'error loading model' >&2\nexit 1\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    rc = bv.main(["--llm", str(llm), "--mmproj", str(mmproj_meta), "--device", "cpu", "--skip-ours", "--reps", "1",
                  "--llama-mtmd-cli", str(cli)])
    assert rc == 1
    captured = capsys.readouterr()
    assert "error loading model" in captured.err
    assert "error: llama-mtmd-cli exited with 1" in captured.out


def test_both_runtimes_end_to_end(tmp_path):
    """minicpm.cpp on a tiny random LLM (real tokenizer) + mmproj, llama.cpp through the stand-in."""
    pytest.importorskip("minicpm_cpp")
    llm, mmproj = tmp_path / "llm.gguf", tmp_path / "mmproj.gguf"
    subprocess.run([sys.executable, str(BENCH_DIR / "make_random_gguf.py"), str(llm), "--hidden", "256", "--layers",
                    "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "128", "--ffn", "256", "--type", "f16",
                    "--tokenizer-dir", str(tiny_models.tokenizer_dir())], check=True, capture_output=True)
    subprocess.run([sys.executable, str(BENCH_DIR / "make_random_mmproj.py"), str(mmproj), "--llm-dim", "256",
                    "--layers", "1", "--hidden", "64", "--heads", "4", "--ffn", "128"], check=True, capture_output=True)
    cli, record = _fake_cli(tmp_path, needs_template=False)
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, str(BENCH_DIR / "bench_vision.py"), "--llm", str(llm), "--mmproj", str(mmproj),
                        "--device", "cpu", "--threads", "2", "--reps", "1", "--llama-mtmd-cli", str(cli),
                        "--json", str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    argv = json.loads(record.read_text().splitlines()[0])
    assert "--chat-template" not in argv  # the real tokenizer brings its template
    res = json.loads(out.read_text())
    rows = {row["test"]: row for row in res["comparison"]}
    assert rows["slice448"]["pieces_ours"] == 1 and rows["img1344"]["pieces_ours"] == 10
    for row in rows.values():
        assert row["pieces_ours"] == row["pieces_llama_cpp"]
        for kind in ("cold", "warm"):
            assert row[f"ours_{kind}_ms"] > 0
            assert row[f"speed_ratio_{kind}"] == pytest.approx(row[f"llama_cpp_{kind}_ms"] / row[f"ours_{kind}_ms"])
    assert bv.RATIO_LABEL in r.stdout
