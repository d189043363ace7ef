"""benchmarks/bench_speech.py and make_random_speech.py end to end at tiny sizes on the CPU: the
random checkpoint and its GGUF file, then every test of the benchmark for minicpm.cpp and the
PyTorch reference path, and a JSON report with every figure (finite, positive), the ratios and
the machine's load."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

import speech_ref  # noqa: E402,F401  (stubs torchaudio before the reference imports)
import tiny_models  # noqa: E402


bs = tiny_models.load_benchmark("bench_speech")
mrs = tiny_models.load_benchmark("make_random_speech")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-speech")
    assert mrs.main([str(d), "--tiny", "--type", "f32", "--quiet"]) == 0
    return d


def test_random_checkpoint(tiny_folder):
    meta = json.loads((tiny_folder / "speech-sizes.json").read_text())
    assert meta["tiny"] and meta["llm_dim"] == 256
    cfg = json.loads((tiny_folder / "hf" / "config.json").read_text())
    assert cfg["tts_config"]["hidden_size"] == meta["sizes"]["tts"]["hidden_size"]
    t2w = tiny_folder / "hf" / "assets" / "token2wav"
    assert (t2w / "flow.yaml").is_file() and (t2w / "flow.pt").is_file() and (t2w / "hift_original.pt").is_file()
    import minicpm_cpp

    m = minicpm_cpp.Model(meta["gguf"], device="cpu", n_threads=1)
    assert m.can_speak


def test_real_sizes_match_the_spec():
    s = mrs.sizes(False)
    t = s["tts"]
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["intermediate_size"]) == (768, 20, 12, 3072)
    f = s["flow"]
    assert (f["width"], f["num_blocks"], f["num_up_blocks"], f["dit_depth"], f["dit_heads"]) == (512, 6, 4, 16, 8)
    assert s["hift"] == {"base_channels": 512, "f0_channels": 512}


def _finite_pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_end_to_end(tiny_folder, tmp_path):
    out = tmp_path / "speech.json"
    assert bs.main([str(tiny_folder), "--threads", "2", "--reps", "1", "--codes", "12", "--chunk-codes", "6",
                    "--flow-codes", "25", "--steps", "2,1", "--ttfa-steps", "2", "--windows", "1", "--prompt-codes", "4",
                    "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["tiny"] and r["threads"] == 2 and len(r["machine"]["loadavg_start"]) == 3
    for rt in ("minicpm.cpp", "pytorch"):
        res = r["results"][rt]
        assert set(res) == set(bs.TESTS), rt
        figs = bs.headline(res)
        want = (["tts_stream tokens/s cold", "tts_stream tokens/s warm", "tts_offline tokens/s warm",
                 "flow_stream window ms cold", "ttfa cold", "ttfa warm", "vocoder 1s ms per 1 s", "vocoder 4s ms per 1 s"]
                + [f"flow_mel 25 codes {s} steps ms per 1 s" for s in (2, 1)]
                + [f"flow_stream ms per 1 s at {s} steps" for s in (2, 1)])
        for k in want:
            assert k in figs and _finite_pos(figs[k]), (rt, k, figs.get(k))
        assert res["tts_offline"]["codes"] == 12
        assert res["tts_stream"]["codes"] > 0
        t = res["ttfa"]
        assert abs(t["cold_ms"] - (t["cold_tts_ms"] + t["cold_flow_ms"] + t["cold_vocoder_ms"])) < 1.0
    assert set(r["ratios"]) >= {"ttfa warm", "flow_stream ms per 1 s at 2 steps", "tts_stream tokens/s warm"}
    assert all(_finite_pos(v) for v in r["ratios"].values())
