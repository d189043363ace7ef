"""benchmarks/bench_audio.py, torch_audio_ref.py and make_random_audio.py: the random file (ours
and the llama.cpp variant), the benchmark's PyTorch reference against
tests/ref_minicpmo_audio.py, the report helpers, and the whole script end to end on a tiny
model on the CPU (minicpm.cpp, PyTorch, and llama.cpp through a stand-in llama-mtmd-cli that
logs as llama.cpp does)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402

BENCH_DIR = tiny_models.REPO_DIR / "benchmarks"
TINY = ["--layers", "2", "--d-model", "64", "--heads", "4", "--ffn", "256", "--proj-dim", "96"]


ba = tiny_models.load_benchmark("bench_audio")
mra = tiny_models.load_benchmark("make_random_audio")
tar = tiny_models.load_benchmark("torch_audio_ref")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-audio")
    ours, llama, pt = d / "audio.gguf", d / "audio-llama.gguf", d / "audio.pt"
    assert mra.main([str(ours), *TINY, "--type", "f32", "--llama-out", str(llama), "--torch-out", str(pt)]) == 0
    return ours, llama, pt


# ---------------------------------------------------------------------------------------------
# the random file


def test_random_file_metadata_and_names(tiny_files):
    ours, llama, _ = tiny_files
    meta = ba.audio_meta(str(ours))
    assert (meta["n_layer"], meta["n_embd"], meta["n_head"], meta["n_ff"], meta["proj_dim"], meta["pool_step"],
            meta["n_pos"]) == (2, 64, 4, 256, 96, 5, 1500)
    assert meta["projector_type"] == "minicpmo"
    assert ba.audio_meta(str(llama))["projector_type"] == mra.LLAMA_PROJECTOR_TYPE
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(llama)).tensors}
    assert set(a) == set(b) == set(mra.hf_to_gguf_names(2).values())
    for name, t in a.items():
        # the same values; mtmd takes the conv biases as [1, E]
        assert np.array_equal(np.asarray(t.data).reshape(-1), np.asarray(b[name].data).reshape(-1)), name
    assert list(b["a.conv1d.1.bias"].shape) == [1, 64] and list(a["a.conv1d.1.bias"].shape) == [64]


def test_random_file_loads_and_is_finite(tiny_files):
    core = pytest.importorskip("minicpm_cpp._core")
    ours, _, _ = tiny_files
    m = core.AudioModel(str(ours), "cpu", 1)
    assert m.hparams["n_layer"] == 2 and m.hparams["exact"]
    emb, states = m.encode(np.zeros((80, 200), np.float32) + 0.1)
    assert emb.shape == (20, 96) and np.isfinite(emb).all() and np.isfinite(states).all()


def test_f16_file(tmp_path):
    path = tmp_path / "a16.gguf"
    assert mra.main([str(path), *TINY]) == 0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    assert types["a.blk.0.attn_q.weight"] == F16 and types["a.conv1d.1.weight"] == F16
    assert types["a.position_embd.weight"] == F32 and types["a.blk.0.ln1.weight"] == F32


# ---------------------------------------------------------------------------------------------
# the benchmark's PyTorch reference


def test_torch_reference_matches_tests_reference(tiny_files):
    """The benchmark's SDPA modules compute what tests/ref_minicpmo_audio.py computes, offline
    (block mask) and streaming (K/V cache); the weights read back from the GGUF file are the
    saved state dict."""
    import ref_minicpmo_audio as ref

    ours, _, pt = tiny_files
    meta = ba.audio_meta(str(ours))
    state = torch.load(str(pt))
    from_gguf = tar.torch_state_from_gguf(str(ours), 2)
    assert set(from_gguf) == set(state)
    for k, v in state.items():
        assert np.array_equal(from_gguf[k].reshape(v.shape), v.numpy()), k

    cfg = ref.AudioConfig(d_model=64, n_heads=4, ffn_dim=256, n_layers=2, pool_step=5, llm_hidden=96)
    enc, proj = ref.WhisperEncoder(cfg).eval(), ref.MultiModalProjector(64, 96).eval()
    enc.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("apm.")})
    proj.load_state_dict({k[len("audio_projection_layer."):]: v for k, v in state.items()
                          if k.startswith("audio_projection_layer.")})
    bench = tar.TorchAudio(str(ours), meta, "cpu", torch.float32)
    rng = np.random.default_rng(0)
    mel = (0.5 * rng.standard_normal((80, 230))).astype(np.float32)

    with torch.no_grad():
        mask = ref.offline_attention_mask([230], 115, 1.0)
        want = ref._pool(proj(enc(torch.from_numpy(mel)[None], attention_mask=mask).states), 5)[0, :23].numpy()
    assert np.abs(bench.encode(mel) - want).max() < 1e-5

    cache = None
    for k in range(3):
        chunk = mel[:, 70 * k: 70 * (k + 1)]
        with torch.no_grad():
            out = enc(torch.from_numpy(np.ascontiguousarray(chunk))[None], past=cache, use_cache=True)
            cache = out.cache
            want = ref._pool(proj(out.states), 5)[0].numpy()
        got = bench.encode_stream(np.ascontiguousarray(chunk))
        assert got.shape == want.shape == (7, 96)
        assert np.abs(got - want).max() < 1e-5


def test_torch_mel_matches_ours():
    core = pytest.importorskip("minicpm_cpp._core")
    assert np.abs(tar.mel_filters() - np.asarray(core.mel_filters())).max() < 1e-6
    pcm = ba.test_pcm(3.0)
    tm = tar.TorchMel(tar.mel_filters(), "cpu")
    got, want = tm.offline(pcm), core.log_mel(pcm)
    assert got.shape == want.shape == (80, 300)
    assert np.abs(got - want).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# report helpers


def test_speed_ratio_direction():
    assert ba.speed_ratio(50.0, 100.0) == 2.0  # minicpm.cpp takes half the time: twice as fast
    assert ba.speed_ratio(102.0, 100.0) < 1
    assert ba.speed_ratio(None, 100.0) is None and ba.speed_ratio(50.0, None) is None


def test_summary_and_pushes():
    s = ba.summary([10.0, 1.0, 2.0, 6.0], 1, mean=True)
    assert s["cold_ms"] == 10.0 and s["warm_ms"] == 3.0 and s["warm_median_ms"] == 2.0
    assert ba.summary([10.0, 1.0, 2.0, 6.0], 1, mean=False)["warm_ms"] == 2.0
    assert ba.stream_pushes(16480, 16000, 3) == [(0, 16480), (16480, 32480), (32480, 48480)]


def test_block_mask():
    m = tar.block_mask(5, 2, 100)[0, 0]
    assert m.tolist()[0] == [True, True, False, False, False]
    assert m.tolist()[2] == [True, True, True, True, False]
    assert tar.block_mask(4, 0, 3)[0, 0].tolist()[0] == [True, True, True, False]


def test_table_and_targets():
    res = {"ours": {"device": "CPU", "tests": [{"test": "stream_1s", "cold_ms": 40.0, "warm_ms": 20.0},
                                               {"test": "offline_30s", "cold_ms": 900.0, "warm_ms": 300.0}]},
           "torch": {"tests": [{"test": "stream_1s", "cold_ms": 80.0, "warm_ms": 50.0}]},
           "llama_cpp": {"tests": [{"test": "offline_30s", "error": "llama-mtmd-cli exited with 1"}]}}
    rows = ba.compare(res, ["stream_1s", "offline_30s"])
    assert rows[0]["ratio_torch_warm"] == 2.5 and rows[0]["ratio_torch_cold"] == 2.0
    assert rows[1]["ratio_torch_warm"] is None and rows[1]["error"]
    table = ba.format_table(rows, ["ours", "torch", "llama_cpp"])
    assert "2.50x" in table and "vs PyTorch" in table and "error: llama-mtmd-cli" in table
    assert ba.check_targets(res) == [{"test": "stream_1s", "device": "cpu", "limit_ms": 250.0, "warm_ms": 20.0,
                                      "met": True}]


# ---------------------------------------------------------------------------------------------
# end to end

FAKE_CLI = """\
#!{python}
# Stands in for llama-mtmd-cli: one encode time per --audio clip, logged as llama.cpp does.
import json, sys
argv = sys.argv[1:]
clips = [argv[i + 1] for i, a in enumerate(argv) if a == "--audio"]
with open({record!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
if "-m" not in argv or "--mmproj" not in argv or not clips:
    sys.exit(2)
for n, path in enumerate(clips):
    print("encoding mtmd batch, n_chunks = 1 (done = %d, total = 9)" % n, file=sys.stderr)
    print("mtmd batch encoding done in %d ms" % (500 if n == 0 else 200 + n), file=sys.stderr)
print("A")
"""


def test_end_to_end(tiny_files, tmp_path):
    pytest.importorskip("minicpm_cpp")
    ours, llama, _ = tiny_files
    record = tmp_path / "argv.jsonl"
    cli = tmp_path / "llama-mtmd-cli"
    cli.write_text(FAKE_CLI.format(python=sys.executable, record=str(record)))
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, str(BENCH_DIR / "bench_audio.py"), str(ours), "--device", "cpu",
                        "--threads", "1", "--reps", "1", "--warmup-chunks", "2", "--chunks", "2",
                        "--llama-mtmd-cli", str(cli), "--llama-mmproj", str(llama), "--json", str(out)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    rows = {row["test"]: row for row in res["comparison"]}
    assert set(rows) == set(ba.TESTS)
    for name, row in rows.items():
        for kind in ("cold", "warm"):
            assert row[f"ours_{kind}_ms"] > 0 and row[f"torch_{kind}_ms"] > 0
            assert row[f"ratio_torch_{kind}"] == pytest.approx(row[f"torch_{kind}_ms"] / row[f"ours_{kind}_ms"])
    assert (rows["offline_30s"]["llama_cpp_cold_ms"], rows["offline_30s"]["llama_cpp_warm_ms"]) == (500.0, 201.0)
    assert rows["stream_1s"]["llama_cpp_warm_ms"] == 201.0 and rows["mel_30s"]["llama_cpp_warm_ms"] is None
    ours_tests = {t["test"]: t for t in res["ours"]["tests"]}
    assert len(ours_tests["stream_1s"]["warm_samples_ms"]) == 2
    assert ours_tests["offline_30s"]["tokens"] == 300
    # F32 weights: our embeddings are the PyTorch reference's
    assert res["agreement_max_rel_diff"]["offline_30s"] < 1e-4
    assert res["agreement_max_rel_diff"]["stream_1s"] < 1e-4
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(runs) == 2  # one process per llama.cpp test, each with 1 + reps clips
    for argv in runs:
        assert argv.count("--audio") == 2 and argv[argv.index("-ngl") + 1] == "0"
    assert "speed ratio" in r.stdout and "agreement with PyTorch" in r.stdout
