"""The streaming Token2Wav vocoder (CosyVoice3 CausalHiFTGenerator) against minicpmo-utils 1.0.7's
``BoundedVocoder`` / ``Token2wav`` at tiny widths on the CPU, the reference's noise table injected
into ours: converter (config.yaml, folding, metadata), a whole clip, streamed chunks as
``Token2wav.stream`` feeds them, state and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import speech_ref  # noqa: F401  (reference packages on CPU)
import tiny_hift
import tiny_models

torch = pytest.importorskip("torch")

from minicpm_cpp import Model  # noqa: E402
from minicpm_cpp.convert import convert  # noqa: E402
from minicpm_cpp.convert.names import tensor_name  # noqa: E402
from minicpm_cpp.errors import InvalidArgumentError, UnsupportedError  # noqa: E402

TOL = 1e-4
ROWS = 20000   # a short noise table (the reference's holds 7.2M rows): clips wrap around it


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-o45-cvoc")
    tiny_models.make_minicpm(d, "o4.5", vision=False, layers=1, hidden=32, heads=2, kv_heads=1, head_dim=16, ffn=64,
                             tie=True)
    tiny_hift.add_causal_hift(d, seed=3)
    log: list = []
    out = convert(d, d / "model.gguf", "f16", force=True, progress=False, log=log.append)
    return d, out, log


@pytest.fixture(scope="module")
def ref(tiny):
    """The reference as Token2wav loads it (hyperpyyaml config.yaml + strict state dict), with a
    short seeded noise table in place of its construction-time draw."""
    from stepaudio2.token2wav import load_causal_vocoder

    d, _, _ = tiny
    model, _, _ = load_causal_vocoder(d / "assets" / "token2wav", "cpu")
    model.m_source.l_sin_gen.sine_waves = torch.rand(1, ROWS, 9, generator=torch.Generator().manual_seed(5))
    return model


@pytest.fixture(scope="module")
def table(ref):
    return ref.m_source.l_sin_gen.sine_waves[0].numpy().copy()


@pytest.fixture(scope="module")
def cvoc(tiny):
    m = Model(str(tiny[1]), device="cpu", n_threads=1, warmup=False)
    return m.causal_vocoder


def bounded(ref):
    from stepaudio2.causal_vocoder.bounded_vocoder import BoundedVocoder

    return BoundedVocoder(ref)


def token2wav_stub(ref):
    """Token2wav's streaming vocoder part (set_stream_cache's vocoder lines, _stream_vocode) on
    the reference model, without the flow model."""
    from stepaudio2.token2wav import Token2wav

    tw = Token2wav.__new__(Token2wav)
    tw.hift = ref
    tw.bounded_vocoder = bounded(ref)
    tw.vocoder_delay_frames = ref.f0_predictor.condnet[0].causal_padding + ref.conv_pre_look_right + 1
    tw.source_cache_len = tw.vocoder_delay_frames * 480
    tw.bounded_vocoder.reset()
    tw.hift_cache_dict = tw.bounded_vocoder.cache
    tw.hift_cache_dict["first_chunk"] = torch.ones(1, dtype=torch.long)
    return tw


def mel_input(T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 80, T, generator=g) * 2.0 - 4.0


# ---- converter ------------------------------------------------------------------------------------

def test_converter_config_and_folding(tiny, ref, cvoc):
    from minicpm_cpp.convert.t2w_cvoc import load_cvoc

    d, _, log = tiny
    assert any("streaming vocoder" in m and "config.yaml" in m for m in log)
    a = d / "assets" / "token2wav"
    spec = load_cvoc(a / "hift.pt", a / "config.yaml")
    m = spec.meta
    assert m["sampling_rate"] == ref.sampling_rate == 24000
    assert m["upsample_rates"] == ref.upsample_rates == [8, 5, 3]
    assert m["base_channels"] == 32 and m["nb_harmonics"] == ref.nb_harmonics
    assert m["conv_pre_look_right"] == ref.conv_pre_look_right == 4
    assert (m["n_fft"], m["hop_len"]) == (ref.istft_params["n_fft"], ref.istft_params["hop_len"])
    assert m["source_down_strides"] == [15, 3, 1] and m["f0_layers"] == 5
    assert m["noise_table_samples"] == 300 * 24000 and m["block_frames"] == 16
    sg = ref.m_source.l_sin_gen
    for key, want in [("nsf_alpha", sg.sine_amp), ("nsf_sigma", sg.noise_std), ("nsf_voiced_threshold", sg.voiced_threshold),
                      ("lrelu_slope", ref.lrelu_slope), ("audio_limit", ref.audio_limit)]:
        assert m[key] == pytest.approx(want), key
    pairs = [(tensor_name("CV_CONV_PRE"), ref.conv_pre.weight), (tensor_name("CV_UP", 2), ref.ups[2].weight),
             (tensor_name("CV_RB_CONV1", 13), ref.resblocks[4].convs1[1].weight),
             (tensor_name("CV_SRB_CONV2", 8), ref.source_resblocks[2].convs2[2].weight),
             (tensor_name("CV_RB_ALPHA2", 26), ref.resblocks[8].activations2[2].alpha),
             (tensor_name("CV_SRC_DOWN", 0), ref.source_downs[0].weight), (tensor_name("CV_CONV_POST"), ref.conv_post.weight)]
    for name, want in pairs:
        got = spec.tensors[name]
        assert got.dtype == np.float32 and rel(got, want.detach().float().numpy()) < 1e-6, name
    # the F0 predictor (float64 in the reference): weight-norm parts kept, v and g as saved
    for i in (0, 4):
        p = ref.f0_predictor.condnet[2 * i].parametrizations.weight
        np.testing.assert_array_equal(spec.tensors[tensor_name("CV_F0_CONV", i)], p.original1.detach().numpy())
        np.testing.assert_array_equal(spec.tensors[tensor_name("CV_F0_CONV_MAG", i)], p.original0.detach().numpy().reshape(-1))
    sd = ref.state_dict()
    assert len(spec.tensors) == len(sd) - sum(1 for k in sd if k.endswith("original0")) + 5
    # the runtime's streaming sizes are BoundedVocoder's
    lim = bounded(ref).limits
    hp = cvoc.hparams
    assert (hp["f0_left_frames"], hp["f0_right_frames"], hp["decoder_history_frames"], hp["delay_frames"]) == (
        lim["f0_left_frames"], lim["f0_right_frames"], lim["decoder_history_frames"], lim["delay_frames"])
    assert hp["delay_frames"] == 8 and hp["samples_per_frame"] == 480 and hp["block_frames"] == lim["internal_chunk_frames"]


def test_converter_class_defaults_and_bad_config(tiny, tmp_path):
    from minicpm_cpp.convert.checkpoint import ConvertError
    from minicpm_cpp.convert.t2w_cvoc import CVOC_DEFAULTS, read_cvoc_config

    d, _, _ = tiny
    text = (d / "assets" / "token2wav" / "config.yaml").read_text()
    p = tmp_path / "config.yaml"
    p.write_text(text.replace("    lrelu_slope: 0.1\n", "").replace("    conv_pre_look_right: 4\n", ""))
    args, f0 = read_cvoc_config(p)
    assert args["lrelu_slope"] == CVOC_DEFAULTS["lrelu_slope"] and args["conv_pre_look_right"] == 4
    assert args["sampling_rate"] == 24000 and f0["cond_channels"] == 16   # the !ref resolved
    p.write_text(text.replace("CausalHiFTGenerator", "HiFTGenerator"))
    with pytest.raises(ConvertError, match="CausalHiFTGenerator"):
        read_cvoc_config(p)
    p.write_text(text.replace("    audio_limit: 0.99\n", "    audio_limit: 0.99\n    bogus: 1\n"))
    with pytest.raises(ConvertError, match="bogus"):
        read_cvoc_config(p)
    p.write_text(text.replace("!ref <sample_rate>", "!ref <sample_rate> // 2", 1))
    with pytest.raises(ConvertError, match="reference"):
        read_cvoc_config(p)


# ---- parity -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 45])
def test_whole_clip_matches_reference(ref, table, cvoc, T):
    mel = mel_input(T, seed=T)
    want = bounded(ref).stream(mel, finalize=True)[0].numpy()
    got = cvoc.vocode(mel[0].numpy(), noise=table)
    assert got.shape == want.shape == (T * 480,)
    err = rel(got, want)
    print(f"T={T}: whole clip {err:.2e}")
    assert err < TOL


def test_streamed_windows_match_token2wav(ref, table, cvoc):
    """50-frame windows as Token2wav.stream feeds the vocoder (non-final chunks, then the last
    one), the first output prefixed with 3840 zeros; also with the F0 on both sides of the
    voiced threshold and the clip longer than the noise table."""
    T = 100
    mel = mel_input(T, seed=11)
    tw = token2wav_stub(ref)
    s = cvoc.stream(noise=table, record=True)
    rec = []
    source_fn = tw.bounded_vocoder._source

    def recording(f0, offset):
        out = source_fn(f0, offset)
        rec.append((f0.clone(), out.clone()))
        return out

    tw.bounded_vocoder._source = recording
    outs_r, outs = [], []
    for i in range(0, T, 50):
        last = i + 50 >= T
        a = tw._stream_vocode(mel[:, :, i:i + 50], last)[0].numpy()
        b = s.push(mel[0, :, i:i + 50].numpy(), last)
        assert b.shape == a.shape, i
        outs_r.append(a)
        outs.append(b)
    assert s.finalized and s.frames_received == T
    assert np.all(outs[0][:3840] == 0) and outs_r[0].shape[0] == (50 - 8) * 480 + 3840
    want, got = np.concatenate(outs_r), np.concatenate(outs)
    assert got.shape == (T * 480 + 3840,) and s.samples_emitted == got.shape[0]
    err = rel(got, want)
    # stages: F0 (float64 in both, then float32) and the source over the whole clip
    f0_r = torch.cat([f for f, _ in rec], 1)[0].numpy()
    src_r = torch.cat([x for _, x in rec], 2)[0, 0].numpy()
    err_f0, err_src = rel(s.f0, f0_r), rel(s.source, src_r)
    print(f"T={T} in 50-frame windows: f0 {err_f0:.2e} source {err_src:.2e} pcm {err:.2e}")
    assert err_f0 < 1e-6 and err_src < 1e-5
    assert err < TOL
    # the fixture's F0 crosses the voiced threshold
    with torch.no_grad():
        f0 = ref.f0_predictor.double()(mel.double(), finalize=True)[0].numpy()
    assert (f0 > 10).any() and (f0 < 10).any()


def test_irregular_chunks_and_flush(ref, table, cvoc):
    """Chunks of any size (empty ones included), then an empty final push that flushes, as
    BoundedVocoder.stream returns them (no silence prefix)."""
    mel = mel_input(48, seed=4)
    bv = bounded(ref)
    s = cvoc.stream(noise=table, prefix_silence=False)
    cuts = [0, 7, 30, 30, 31, 40, 48]
    for a, b in zip(cuts[:-1], cuts[1:]):
        want = bv.stream(mel[:, :, a:b], finalize=False)[0].numpy()
        got = s.push(mel[0, :, a:b].numpy())
        assert got.shape == want.shape, (a, b)
        if want.size:
            assert rel(got, want) < TOL, (a, b)
    want = bv.stream(mel[:, :, :0], finalize=True)[0].numpy()
    got = s.push(np.zeros((80, 0), np.float32), last=True)
    assert got.shape == want.shape == (8 * 480,)
    assert rel(got, want) < TOL
    assert s.push(np.zeros((80, 0), np.float32), last=True).shape == (0,)


def test_stream_reset_and_determinism(cvoc, table):
    mel = mel_input(40, seed=2)[0].numpy()
    s = cvoc.stream(seed=7)
    a = np.concatenate([s.push(mel[:, :25]), s.push(mel[:, 25:], last=True)])
    with pytest.raises(InvalidArgumentError, match="finalized"):
        s.push(mel[:, :3])
    with pytest.raises(InvalidArgumentError, match="finalized"):
        s.push(np.zeros((80, 0), np.float32))
    s.reset()
    b = np.concatenate([s.push(mel[:, :25]), s.push(mel[:, 25:], last=True)])
    np.testing.assert_array_equal(a, b)
    # prefix of 8 frames of zeros, then the clip as vocode gives it with the same noise
    np.testing.assert_array_equal(a[:3840], 0)
    whole = cvoc.vocode(mel, seed=7)
    assert rel(a[3840:], whole) < 1e-6
    assert np.abs(cvoc.vocode(mel, seed=8) - whole).max() > 0
    assert np.abs(cvoc.vocode(mel, noise=table) - whole).max() > 0


# ---- errors -----------------------------------------------------------------------------------------

def test_bad_input(cvoc):
    mel = mel_input(5)[0].numpy()
    s = cvoc.stream()
    with pytest.raises(InvalidArgumentError, match="shape"):
        s.push(np.zeros((81, 10), np.float32))
    with pytest.raises(InvalidArgumentError, match="shape"):
        s.push(np.zeros(80, np.float32))
    bad = mel.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        s.push(bad)
    bad[3, 2] = np.inf
    with pytest.raises(InvalidArgumentError, match="NaN"):
        cvoc.vocode(bad)
    with pytest.raises(InvalidArgumentError, match="numeric"):
        s.push(np.array([["a"] * 5] * 80))
    with pytest.raises(InvalidArgumentError, match="last"):
        s.push(mel, last=1)
    with pytest.raises(InvalidArgumentError, match="no mel frames"):
        cvoc.vocode(np.zeros((80, 0), np.float32))
    with pytest.raises(InvalidArgumentError, match="noise"):
        cvoc.stream(noise=np.zeros((10, 8), np.float32))
    with pytest.raises(InvalidArgumentError, match="noise"):
        cvoc.vocode(mel, noise=np.zeros((0, 9), np.float32))
    with pytest.raises(InvalidArgumentError, match="noise"):
        cvoc.vocode(mel, noise=np.full((4, 9), np.nan, np.float32))
    with pytest.raises(InvalidArgumentError, match="seed"):
        cvoc.stream(seed=-1)
    with pytest.raises(InvalidArgumentError, match="prefix_silence"):
        cvoc.stream(prefix_silence="yes")
    # the stream still works after the refused calls
    assert s.push(mel, last=True).shape == (5 * 480,)


@pytest.fixture(scope="module")
def llm_only(tiny, tmp_path_factory):
    return convert(tiny[0], tmp_path_factory.mktemp("llm") / "llm.gguf", "f16", force=True, progress=False,
                   log=lambda m: None, llm_only=True)


def test_model_without_streaming_vocoder(llm_only):
    m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False)
    with pytest.raises(UnsupportedError, match="no streaming vocoder"):
        m.causal_vocoder


def write_cvoc_file(spec, path, meta=None, drop=(), retype=None) -> Path:
    import copy

    from gguf import GGUFWriter

    from minicpm_cpp.convert.t2w_cvoc import write_cvoc_metadata

    s = copy.copy(spec)
    s.meta = dict(spec.meta, **(meta or {}))
    w = GGUFWriter(str(path), "cvoc")
    write_cvoc_metadata(w, s)
    for _, name, _ in spec.ids:
        if name in drop:
            continue
        a = spec.tensors[name]
        w.add_tensor(name, a.astype(np.float16) if name == retype else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


@pytest.fixture(scope="module")
def cvoc_spec(tiny):
    from minicpm_cpp.convert.t2w_cvoc import load_cvoc

    a = tiny[0] / "assets" / "token2wav"
    return load_cvoc(a / "hift.pt", a / "config.yaml")


def test_streaming_vocoder_from_an_extra_file(llm_only, cvoc_spec, cvoc, tmp_path):
    extra = write_cvoc_file(cvoc_spec, tmp_path / "cvoc.gguf")
    m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[str(extra)])
    mel = mel_input(6, seed=1)[0].numpy()
    np.testing.assert_array_equal(m.causal_vocoder.vocode(mel, seed=3), cvoc.vocode(mel, seed=3))


@pytest.mark.parametrize("change, error, match", [
    (dict(meta={"upsample_rates": [8, 5]}), "FormatError", "dilations for 2"),
    (dict(meta={"sampling_rate": 0}), "FormatError", "sample_rate"),
    (dict(meta={"n_fft": 15}), "FormatError", "even"),
    (dict(meta={"window": "hamming"}), "UnsupportedError", "window"),
    (dict(meta={"f0_layers": 6}), "FormatError", "f0"),
    (dict(meta={"snake_eps": float("nan")}), "FormatError", "snake_eps"),
    (dict(meta={"conv_pre_look_right": 3}), "FormatError", "conv_pre"),
    (dict(meta={"source_down_strides": [15, 3, 2]}), "FormatError", "down-sampling"),
    (dict(meta={"noise_table_samples": 0}), "FormatError", "noise_table"),
    (dict(meta={"resblock_dilation_sizes": [[1, 3, 5], [1, 3], [1, 3, 5]]}), "FormatError", "dilation"),
    (dict(drop=(tensor_name("CV_RB_ALPHA1", 3),)), "FormatError", "rb.3"),
    (dict(retype=tensor_name("CV_UP", 0)), "UnsupportedError", "F32"),
])
def test_bad_streaming_vocoder_file(llm_only, cvoc_spec, tmp_path, change, error, match):
    import minicpm_cpp.errors as errors

    bad = write_cvoc_file(cvoc_spec, tmp_path / "bad.gguf", **change)
    with pytest.raises(getattr(errors, error), match=match):
        m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[str(bad)])
        m.causal_vocoder.vocode(mel_input(4)[0].numpy())


def test_quantized_model_keeps_the_streaming_vocoder(tiny, cvoc, tmp_path):
    from minicpm_cpp.convert.quantize import quantize

    q = tmp_path / "model-q8_0.gguf"
    quantize(tiny[1], q, "q8_0", force=True, progress=False, log=lambda m: None)
    m = Model(str(q), device="cpu", n_threads=1, warmup=False)
    mel = mel_input(5, seed=2)[0].numpy()
    np.testing.assert_array_equal(m.causal_vocoder.vocode(mel, seed=1), cvoc.vocode(mel, seed=1))
