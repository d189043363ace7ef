"""The Token2Wav vocoder (original HiFT) against minicpmo-utils 1.0.7's ``HiFTGenerator`` at tiny
widths on the CPU: converter (weight-norm folding, metadata), F0, the source excitation and the
waveform with the same injected randomness, and the errors of bad input."""

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
# End to end, the source follows the F0 predictor's float32 rounding times the accumulated phase
# (2 pi * f0 * harmonic * t: thousands of radians within a second), so a 5e-7 relative F0
# difference already moves the sines by ~5e-5 of their amplitude, growing with the clip. The
# source itself is checked at 1e-5 for a given F0 (test_source_exact_for_a_given_f0).
TOL_PHASE = 3e-4


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-o45-hift")
    tiny_models.make_minicpm(d, "o4.5", vision=False, layers=1, hidden=32, heads=2, kv_heads=1, head_dim=16, ffn=64,
                             tie=True)
    ref = tiny_hift.add_hift(d, seed=3)
    out = convert(d, d / "model.gguf", "f16", force=True, progress=False, log=lambda m: None)
    return d, ref, out


@pytest.fixture(scope="module")
def vocoder(tiny):
    _, _, out = tiny
    m = Model(str(out), device="cpu", n_threads=1, warmup=False)
    return m.vocoder


def mel_input(T: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(80, T, generator=g) * 2.0 - 4.0).numpy().astype(np.float32)


class Injected:
    """Replaces the reference's torch.randn_like / torch.rand draws by given arrays (SineGen2's
    noise [1, L, H] and rand_ini [1, H]); other draws (the unused noise branch) give zeros."""

    def __init__(self, noise: np.ndarray, phases: np.ndarray):
        self.noise, self.phases = torch.from_numpy(noise[None]), torch.from_numpy(phases[None])

    def __enter__(self):
        self._randn_like, self._rand = torch.randn_like, torch.rand

        def randn_like(x, *a, **k):
            return self.noise.clone() if tuple(x.shape) == tuple(self.noise.shape) else torch.zeros_like(x)

        def rand(*shape, **k):
            if tuple(shape) == tuple(self.phases.shape):
                return self.phases.clone()
            return self._rand(*shape, **k)

        torch.randn_like, torch.rand = randn_like, rand
        return self

    def __exit__(self, *exc):
        torch.randn_like, torch.rand = self._randn_like, self._rand


def reference(ref, mel: np.ndarray, noise: np.ndarray, phases: np.ndarray):
    x = torch.from_numpy(mel)[None]
    with torch.no_grad():
        f0 = ref.f0_predictor(x)[0].numpy()
        with Injected(noise, phases):
            wav, s = ref.forward(x)
    return wav[0].numpy(), f0, s[0, 0].numpy()


def draws(T: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    L, H = T * 480, 9
    noise = rng.standard_normal((L, H)).astype(np.float32)
    phases = rng.random(H).astype(np.float32)
    return noise, phases


# ---- converter ------------------------------------------------------------------------------------

def test_converter_metadata_and_folding(tiny, tmp_path):
    from gguf import GGUFReader, GGUFWriter

    from minicpm_cpp.convert.t2w_hift import HIFT_DEFAULTS, load_hift, write_hift_metadata

    d, ref, _ = tiny
    spec = load_hift(d / "assets" / "token2wav" / "hift_original.pt")
    # the metadata as the converter writes it, in a file of its own (the model file's tokenizer
    # makes GGUFReader slow)
    path = tmp_path / "meta.gguf"
    w = GGUFWriter(str(path), "hift-test")
    write_hift_metadata(w, spec)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    r = GGUFReader(str(path))

    def val(key):
        f = r.fields[key]
        if f.types[0].name == "STRING":
            return bytes(f.parts[f.data[0]]).decode()
        if f.types[0].name == "ARRAY":
            return [int(f.parts[i][0]) for i in f.data]
        return f.parts[f.data[0]][0].item()

    D = HIFT_DEFAULTS
    assert val("minicpm.hift.sample_rate") == 24000
    assert val("minicpm.hift.in_channels") == 80
    assert val("minicpm.hift.base_channels") == 32
    assert val("minicpm.hift.nb_harmonics") == D["nb_harmonics"] == 8
    assert val("minicpm.hift.f0_layers") == 5
    assert val("minicpm.hift.upsample_rates") == [8, 5, 3]
    assert val("minicpm.hift.upsample_kernel_sizes") == [16, 11, 7]
    assert val("minicpm.hift.upsample_padding") == [4, 3, 2]
    assert val("minicpm.hift.istft_n_fft") == 16 and val("minicpm.hift.istft_hop") == 4
    assert val("minicpm.hift.stft_window") == "hann"
    assert val("minicpm.hift.resblock_kernel_sizes") == [3, 7, 11]
    assert val("minicpm.hift.resblock_dilation_sizes") == [1, 3, 5] * 3
    assert val("minicpm.hift.source_resblock_kernel_sizes") == [7, 7, 11]
    assert val("minicpm.hift.source_resblock_dilation_sizes") == [1, 3, 5] * 3
    assert val("minicpm.hift.source_down_strides") == [15, 3, 1]
    assert val("minicpm.hift.source_down_padding") == [7, 1, 0]
    assert [val("minicpm.hift." + k) for k in ("conv_pre_padding", "conv_post_padding", "f0_padding",
                                                "last_stage_reflect_pad")] == [3, 3, 1, 1]
    sg = ref.m_source.l_sin_gen
    for key, want in [("sine_amp", sg.sine_amp), ("noise_std", sg.noise_std), ("voiced_threshold", sg.voiced_threshold),
                      ("lrelu_slope", ref.lrelu_slope), ("audio_limit", ref.audio_limit),
                      ("post_lrelu_slope", 0.01), ("magnitude_clip", 100.0), ("snake_eps", 1e-9),
                      ("unvoiced_noise_div", 3.0)]:
        assert val("minicpm.hift." + key) == pytest.approx(want, rel=1e-6), key
    assert sg.upsample_scale == 480 and sg.sampling_rate == 24000
    # weight norms folded: the tensors are the weights the reference computes at forward time
    pairs = [(tensor_name("HIFT_CONV_PRE"), ref.conv_pre.weight), (tensor_name("HIFT_UP", 1), ref.ups[1].weight),
             (tensor_name("HIFT_F0_CONV", 4), ref.f0_predictor.condnet[8].weight),
             (tensor_name("HIFT_RB_CONV1", 13), ref.resblocks[4].convs1[1].weight),
             (tensor_name("HIFT_SRB_CONV2", 8), ref.source_resblocks[2].convs2[2].weight),
             (tensor_name("HIFT_RB_ALPHA2", 26), ref.resblocks[8].activations2[2].alpha),
             (tensor_name("HIFT_SRC_DOWN", 0), ref.source_downs[0].weight), (tensor_name("HIFT_CONV_POST"), ref.conv_post.weight)]
    for name, want in pairs:
        got = spec.tensors[name]
        assert got.dtype == np.float32 and rel(got, want.detach().numpy()) < 1e-6, name
    assert len(spec.tensors) == len(ref.state_dict()) - sum(1 for k in ref.state_dict() if k.endswith("original0"))
    # and the model file holds them (the vocoder loads from it in the tests below)
    hp = Model(str(tiny[2]), device="cpu", n_threads=1, warmup=False).vocoder.hparams
    assert hp["base_channels"] == 32 and hp["samples_per_frame"] == 480 and hp["n_f0_layers"] == 5


def test_converter_legacy_weight_norm(tiny, tmp_path):
    from minicpm_cpp.convert.t2w_hift import load_hift

    d, ref, _ = tiny
    new = load_hift(d / "assets" / "token2wav" / "hift_original.pt")
    old = load_hift(tiny_hift.save_like_release(ref, tmp_path / "hift_original.pt", legacy_norm=True))
    assert new.prefix == "generator." and sorted(new.tensors) == sorted(old.tensors)
    for k in new.tensors:
        np.testing.assert_array_equal(new.tensors[k], old.tensors[k])


def test_converter_rejects_unknown_tensors(tiny, tmp_path):
    from minicpm_cpp.convert.checkpoint import ConvertError
    from minicpm_cpp.convert.t2w_hift import load_hift

    _, ref, _ = tiny
    p = tiny_hift.save_like_release(ref, tmp_path / "hift_original.pt")
    state = torch.load(str(p), weights_only=True)
    state["generator.extra.weight"] = torch.zeros(3)
    torch.save(state, str(p))
    with pytest.raises(ConvertError, match="does not know"):
        load_hift(p)


# ---- parity -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [7, 24])
def test_stages_match_reference(tiny, vocoder, T):
    _, ref, _ = tiny
    mel = mel_input(T, seed=T)
    noise, phases = draws(T, seed=T)
    wav_r, f0_r, s_r = reference(ref, mel, noise, phases)
    out = vocoder.vocode(mel, noise=noise, phases=phases, stages=True)
    # the fixture spreads F0 over both sides of the voiced threshold (sines and unvoiced noise)
    assert (f0_r > 10).any() and (f0_r < 10).any()
    assert rel(out.f0, f0_r) < TOL
    assert rel(out.source, s_r) < TOL_PHASE
    assert rel(out.wav, wav_r) < TOL_PHASE
    assert out.wav.shape == (T * 480,) and out.sample_rate == 24000
    print(f"T={T}: f0 {rel(out.f0, f0_r):.2e} source {rel(out.source, s_r):.2e} wav {rel(out.wav, wav_r):.2e}")


def reference_from_f0(ref, mel: np.ndarray, f0: np.ndarray, noise: np.ndarray, phases: np.ndarray):
    x = torch.from_numpy(mel)[None]
    with torch.no_grad(), Injected(noise, phases):
        s = ref.f0_upsamp(torch.from_numpy(f0)[None, None]).transpose(1, 2)
        s, _, _ = ref.m_source(s)
        s = s.transpose(1, 2)
        wav = ref.decode(x=x, s=s)
    return wav[0].numpy(), s[0, 0].numpy()


def test_source_exact_for_a_given_f0(tiny, vocoder):
    """For a given F0 the source is the reference's to float rounding over a longer clip (3 s,
    phases of ~10^4 radians), and so is the waveform."""
    _, ref, _ = tiny
    T = 150
    mel = mel_input(T, seed=9)
    noise, phases = draws(T, seed=9)
    g = torch.Generator().manual_seed(9)
    f0 = (torch.rand(T, generator=g) * 300.0).numpy().astype(np.float32)
    f0[::7] = 4.0   # unvoiced frames
    wav_r, s_r = reference_from_f0(ref, mel, f0, noise, phases)
    out = vocoder.vocode(mel, noise=noise, phases=phases, f0=f0, stages=True)
    np.testing.assert_array_equal(out.f0, f0)
    print(f"T={T} given f0: source {rel(out.source, s_r):.2e} wav {rel(out.wav, wav_r):.2e}")
    assert rel(out.source, s_r) < 1e-5
    assert rel(out.wav, wav_r) < TOL


def test_phases_do_not_change_the_output(vocoder):
    mel = mel_input(6, seed=2)
    noise, _ = draws(6)
    a = vocoder.vocode(mel, noise=noise, phases=np.zeros(9, np.float32))
    b = vocoder.vocode(mel, noise=noise, phases=np.full(9, 0.37, np.float32))
    np.testing.assert_array_equal(a, b)


def test_seeded_default_is_deterministic(tiny, vocoder):
    _, ref, _ = tiny
    mel = mel_input(8, seed=4)
    a = vocoder.vocode(mel, seed=7)
    b = vocoder.vocode(mel, seed=7)
    c = vocoder.vocode(mel, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    # without noise the output is the reference's with zero noise
    quiet = vocoder.vocode(mel, add_noise=False, stages=True)
    wav_r, _, s_r = reference(ref, mel, np.zeros((8 * 480, 9), np.float32), np.zeros(9, np.float32))
    assert rel(quiet.wav, wav_r) < TOL_PHASE and rel(quiet.source, s_r) < TOL_PHASE


# ---- errors -----------------------------------------------------------------------------------------

def test_bad_input(vocoder):
    with pytest.raises(InvalidArgumentError, match="shape"):
        vocoder.vocode(np.zeros((81, 10), np.float32))
    with pytest.raises(InvalidArgumentError, match="no mel frames"):
        vocoder.vocode(np.zeros((80, 0), np.float32))
    with pytest.raises(InvalidArgumentError):
        vocoder.vocode(np.zeros(80, np.float32))
    bad = mel_input(5)
    bad[3, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        vocoder.vocode(bad)
    bad[3, 2] = np.inf
    with pytest.raises(InvalidArgumentError, match="NaN"):
        vocoder.vocode(bad)
    with pytest.raises(InvalidArgumentError, match="noise"):
        vocoder.vocode(mel_input(5), noise=np.zeros((10, 9), np.float32))
    with pytest.raises(InvalidArgumentError, match="phases"):
        vocoder.vocode(mel_input(5), phases=np.zeros(3, np.float32))
    with pytest.raises(InvalidArgumentError, match="seed"):
        vocoder.vocode(mel_input(5), seed=-1)
    with pytest.raises(InvalidArgumentError, match="f0"):
        vocoder.vocode(mel_input(5), f0=np.zeros(4, np.float32))
    with pytest.raises(InvalidArgumentError, match="f0"):
        vocoder.vocode(mel_input(5), f0=np.full(5, np.nan, np.float32))
    with pytest.raises(InvalidArgumentError, match="numeric"):
        vocoder.vocode(np.array([["a"] * 5] * 80))


def test_model_without_vocoder(llm_only):
    assert any("--llm-only: the vocoder" in m for m in LLM_ONLY_LOG)
    m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False)
    with pytest.raises(UnsupportedError, match="no vocoder"):
        m.vocoder


# ---- bad model files: checked before ggml sees them ---------------------------------------------

@pytest.fixture(scope="module")
def llm_only(tiny, tmp_path_factory):
    d, _, _ = tiny
    LLM_ONLY_LOG.clear()
    return convert(d, tmp_path_factory.mktemp("llm") / "llm.gguf", "f16", force=True, progress=False,
                   log=LLM_ONLY_LOG.append, llm_only=True)


LLM_ONLY_LOG: list = []


def write_hift_file(spec, path, meta=None, drop=(), retype=None) -> Path:
    """The vocoder alone in a GGUF file (loaded as an extra file of a model), with changes."""
    import copy

    from gguf import GGUFWriter

    from minicpm_cpp.convert.t2w_hift import write_hift_metadata

    s = copy.copy(spec)
    s.meta = dict(spec.meta, **(meta or {}))
    w = GGUFWriter(str(path), "hift")
    write_hift_metadata(w, s)
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
def hift_spec(tiny):
    from minicpm_cpp.convert.t2w_hift import load_hift

    return load_hift(tiny[0] / "assets" / "token2wav" / "hift_original.pt")


def test_vocoder_from_an_extra_file(tiny, llm_only, hift_spec, vocoder, tmp_path):
    extra = write_hift_file(hift_spec, tmp_path / "hift.gguf")
    m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[str(extra)])
    mel = mel_input(5, seed=1)
    np.testing.assert_array_equal(m.vocoder.vocode(mel, seed=3), vocoder.vocode(mel, seed=3))


@pytest.mark.parametrize("change, error, match", [
    (dict(meta={"upsample_rates": [8, 5]}), "FormatError", "upsample"),
    (dict(meta={"sampling_rate": 0}), "FormatError", "sample_rate"),
    (dict(meta={"n_fft": 15}), "FormatError", "even"),
    (dict(meta={"window": "hamming"}), "UnsupportedError", "window"),
    (dict(meta={"f0_layers": 6}), "FormatError", "f0"),
    (dict(meta={"snake_eps": float("nan")}), "FormatError", "snake_eps"),
    (dict(meta={"resblock_dilation_sizes": [[1, 3, 5], [1, 3], [1, 3, 5]]}), "FormatError", "dilation"),
    (dict(meta={"source_down_strides": [15, 3, 2]}), "FormatError", "inconsistent"),
    (dict(meta={"conv_pre_padding": 2}), "FormatError", "conv_pre"),
    (dict(drop=(tensor_name("HIFT_RB_ALPHA1", 3),)), "FormatError", "rb.3"),
    (dict(retype=tensor_name("HIFT_UP", 0)), "UnsupportedError", "F32"),
])
def test_bad_vocoder_file(llm_only, hift_spec, tmp_path, change, error, match):
    import minicpm_cpp.errors as errors

    bad = write_hift_file(hift_spec, tmp_path / "bad.gguf", **change)
    with pytest.raises(getattr(errors, error), match=match):
        m = Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[str(bad)])
        m.vocoder.vocode(mel_input(4))


def test_quantized_model_keeps_the_vocoder(tiny, vocoder, tmp_path):
    from minicpm_cpp.convert.quantize import quantize

    _, _, out = tiny
    q = tmp_path / "model-q8_0.gguf"
    quantize(out, q, "q8_0", force=True, progress=False, log=lambda m: None)
    m = Model(str(q), device="cpu", n_threads=1, warmup=False)
    mel = mel_input(5, seed=2)
    np.testing.assert_array_equal(m.vocoder.vocode(mel, seed=1), vocoder.vocode(mel, seed=1))
