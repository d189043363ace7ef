"""benchmarks/bench_duplex.py end to end at the tiny size on the CPU with ``--torch``: the random
checkpoint and its GGUF file, minicpm.cpp's session and the PyTorch reference session
(RefDuplex + the PyTorch Token2Wav) in one report. The scripted biases force every decision of
a 4-unit run (3 units of user speech: listen; the first silent unit: speak), so both sides must
have listened and spoken at the same units; every timing is finite. (Longer runs, a turn's end
and its Token2Wav restart included, are the benchmark's job: this one only has to stay fast.)"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

import speech_ref  # noqa: E402,F401  (stubs torchaudio before the reference imports)
import tiny_models  # noqa: E402

import minicpm_cpp  # noqa: E402


@pytest.mark.skipif(not hasattr(minicpm_cpp, "DuplexSession"), reason="minicpm_cpp.DuplexSession is not built in this tree")
def test_torch_session_next_to_minicpm(tmp_path):
    bd = tiny_models.load_benchmark("bench_duplex")
    out = tmp_path / "duplex.json"
    assert bd.main([str(tmp_path / "files"), "--size", "tiny", "--units", "4", "--threads", "2", "--torch",
                    "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["torch_dtype"] == "float32"
    by_impl = {r["impl"]: r for r in report["results"]}
    assert sorted(by_impl) == ["minicpm.cpp", "pytorch"] and len(report["results"]) == 2
    ours, ref = by_impl["minicpm.cpp"], by_impl["pytorch"]
    assert ref["type"] == "float32" and ref["sessions"] == 1 and ref["file"] == "hf-tiny"
    # the biases' decisions: listen while the user talks, speak at the first silent unit
    assert ours["decisions"] == ref["decisions"] == ["LLLS"]
    for r in (ours, ref):
        assert r["units"] == 4 and r["speaking_units"] == 1
        for k in ("decision_ms_p50", "decision_ms_p95", "unit_ms_p50", "unit_ms_p95", "rtf", "speaking_llm_ms_p50",
                  "speaking_talker_ms_p50", "speaking_token2wav_ms_p50"):
            assert r[k] is not None and math.isfinite(r[k]) and r[k] >= 0, (r["impl"], k)
        assert 0 < r["decision_ms_p50"] <= r["unit_ms_p95"]
        # PCM when the answer's first talker chunk held enough codes for a window (sampled codes)
        if r["first_pcm_ms_p50"] is not None:
            assert math.isfinite(r["first_pcm_ms_p50"]) and r["first_pcm_ms_p50"] > r["decision_ms_p50"], r["impl"]
            assert r["first_speech_ms"] > 0, r["impl"]
