"""Voice cloning inputs (MiniCPM-o 4.5): the S3Tokenizer v2 component, its log-mel, the Kaldi
fbank and CAM++ speaker vector, the 24 kHz prompt mel, the Voice file, against the reference
packages (s3tokenizer 0.3.0, stepaudio2 of minicpmo-utils 1.0.7, torchaudio's Kaldi module) on
tiny random-weight ONNX models written by tests/tiny_voice.py."""

from __future__ import annotations

import ast
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import speech_ref  # noqa: F401  (before the reference packages)
import tiny_models
import tiny_voice

import minicpm_cpp
from minicpm_cpp import _core
from minicpm_cpp.convert.t2w_voice import onnx_to_s3_state, write_voice_gguf
from minicpm_cpp.voice import kaldi_fbank, prompt_mel, resample_16k_to_24k

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a few moving formant-like sines, in [-0.5, 0.5]."""
    g = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000.0
    y = 0.05 * g.standard_normal(n)
    for f0 in (140.0, 530.0, 1700.0):
        y += 0.1 * np.sin(2 * np.pi * f0 * t * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t + f0))
    return np.clip(y, -0.5, 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    return tiny_voice.add_voice_assets(tmp_path_factory.mktemp("voice-ckpt"))


@pytest.fixture(scope="module")
def voice_gguf(assets, tmp_path_factory) -> Path:
    return write_voice_gguf(assets, tmp_path_factory.mktemp("voice-gguf") / "voice.gguf")


@pytest.fixture(scope="module")
def ref_s3(assets):
    from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

    s = tiny_voice.S3_SIZES
    m = S3TokenizerV2("speech_tokenizer_v2_25hz", ModelConfig(n_mels=s["n_mels"], n_audio_state=s["n_state"],
                                                              n_audio_head=s["n_head"], n_audio_layer=s["n_layer"]))
    m.init_from_onnx(str(assets / "speech_tokenizer_v2_25hz.onnx"))
    return m.eval()


@pytest.fixture(scope="module")
def s3(voice_gguf):
    return _core.S3Tokenizer(str(voice_gguf), "cpu", 2)


def _ref_tokens(ref_s3, pcm: np.ndarray):
    import s3tokenizer

    mel = s3tokenizer.log_mel_spectrogram(torch.from_numpy(pcm))
    mels, lens = s3tokenizer.padding([mel])
    with torch.no_grad():
        codes, n = ref_s3.quantize(mels, lens)
    return codes[0, : int(n[0])].numpy().astype(np.int32), mel.numpy()


# ---- converter ---------------------------------------------------------------------------------


def test_onnx_names_as_s3tokenizer_maps_them(assets):
    from s3tokenizer.utils import onnx2torch

    ref = onnx2torch(str(assets / "speech_tokenizer_v2_25hz.onnx"), None, False)
    mine = onnx_to_s3_state(assets / "speech_tokenizer_v2_25hz.onnx")
    assert sorted(mine) == sorted(ref)
    for k, v in ref.items():
        assert mine[k].shape == tuple(v.shape), k
        assert np.array_equal(mine[k], v.numpy()), k


def _tensor_types(path: Path) -> dict:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def test_voice_gguf_types(assets, tmp_path):
    from gguf import GGMLQuantizationType

    t = _tensor_types(write_voice_gguf(assets, tmp_path / "v16.gguf", GGMLQuantizationType.F16))
    assert t["s3.blk.1.attn_q.weight"] == "F16" and t["s3.blk.0.ffn_down.weight"] == "F16"
    assert t["s3.blk.0.fsmn.weight"] == t["s3.conv1.weight"] == t["s3.fsq.project_down.weight"] == "F32"
    assert t["spk.campplus.onnx"] == "I8"
    s3 = _core.S3Tokenizer(str(tmp_path / "v16.gguf"), "cpu", 1)
    pcm = _speechlike(1.0, 4)
    assert s3.tokens(pcm).shape == (25,)


def test_voice_assets_skip_missing_files(tmp_path):
    from minicpm_cpp.convert.t2w_voice import find_voice_assets

    assert find_voice_assets(tmp_path) is None
    tiny_voice.add_voice_assets(tmp_path, s3=False)
    a = find_voice_assets(tmp_path)
    assert a.s3 is None and any("speech_tokenizer_v2_25hz.onnx" in n for n in a.notices)
    from gguf import GGMLQuantizationType

    assert [p.gguf_name for p in a.plan(GGMLQuantizationType.F16)] == ["spk.campplus.onnx"]


def test_convert_writes_voice_tensors(tiny_minicpmv45_dir, tmp_path):
    from minicpm_cpp.convert import convert

    ckpt = Path(shutil.copytree(tiny_minicpmv45_dir, tmp_path / "ckpt"))
    tiny_voice.add_voice_assets(ckpt)
    out = convert(ckpt, tmp_path / "b.gguf", "f16", force=True, progress=False, log=lambda m: None)
    onnx_bytes = (ckpt / "assets" / "token2wav" / "campplus.onnx").read_bytes()
    assert _core.gguf_tensor_bytes(str(out), "spk.campplus.onnx") == onnx_bytes
    hp = _core.S3Tokenizer(str(out), "cpu", 1).hparams
    assert (hp["n_mels"], hp["n_state"], hp["n_head"], hp["n_layer"], hp["fsmn_kernel"], hp["fsq_dim"]) == (128, 128, 2, 2, 31, 8)

    # the model loads (the S3Tokenizer component with it) and makes voices
    model = minicpm_cpp.Model(out, device="cpu", warmup=False)
    v = model.voice(_speechlike(1.5, 3))
    assert v.tokens.shape[0] == 38 and v.prompt_mel.shape == (76, 80) and v.speaker.shape == (192,)

    # a quantized model keeps the voice encoders F16 (encoder tensors) and the ONNX bytes as they are
    from minicpm_cpp.convert.quantize import plan_types, quantize

    types = plan_types(out, "q4_k_m")
    assert types["s3.blk.0.attn_q.weight"].name == "F16" and types["spk.campplus.onnx"].name == "I8"
    q = tmp_path / "q.gguf"
    quantize(out, q, "q4_k_m", progress=False, log=lambda m: None)
    assert _core.gguf_tensor_bytes(str(q), "spk.campplus.onnx") == onnx_bytes
    pcm = _speechlike(2.0, 8)
    t16 = _core.S3Tokenizer(str(out), "cpu", 1).tokens(pcm)
    tq = _core.S3Tokenizer(str(q), "cpu", 1).tokens(pcm)
    assert tq.shape == t16.shape and (tq == t16).mean() > 0.9


def test_convert_without_assets(tiny_minicpmv45_dir, converted):
    path = converted(tiny_minicpmv45_dir)
    assert not _core.gguf_has_tensor(str(path), "s3.conv1.weight")
    assert not _core.gguf_has_tensor(str(path), "spk.campplus.onnx")
    with pytest.raises(minicpm_cpp.FormatError, match="voice encoders"):
        minicpm_cpp.Model(path, device="cpu", warmup=False).voice(_speechlike(1.0, 1))


# ---- S3Tokenizer -------------------------------------------------------------------------------


def test_mel_filters_match_package():
    import os

    import s3tokenizer

    with np.load(os.path.join(os.path.dirname(s3tokenizer.__file__), "assets", "mel_filters.npz")) as f:
        for n in (80, 128):
            assert np.abs(_core.s3_mel_filters(n) - f[f"mel_{n}"]).max() <= 1e-8


@pytest.mark.parametrize("seconds,seed", [(0.5, 0), (1.37, 1), (7.0, 2), (31.3, 3)])
def test_log_mel_matches_package(seconds, seed):
    import s3tokenizer

    pcm = _speechlike(seconds, seed)
    ref = s3tokenizer.log_mel_spectrogram(torch.from_numpy(pcm)).numpy()
    got = _core.s3_log_mel(pcm, 128, 2)
    assert got.shape == ref.shape == (128, len(pcm) // 160)
    assert np.abs(got - ref).max() <= 1e-4


def test_tokens_match_package(s3, ref_s3):
    for seconds, seed in [(0.8, 10), (2.05, 11), (4.0, 12)]:
        pcm = _speechlike(seconds, seed)
        ref, mel = _ref_tokens(ref_s3, pcm)
        got, proj = s3.tokens_from_mel(mel)
        # the FSQ inputs (project_down of the encoder states) to 1e-4
        with torch.no_grad():
            hidden, _ = ref_s3.encoder(torch.from_numpy(mel)[None], torch.tensor([mel.shape[1]]))
            h = ref_s3.quantizer._codebook.project_down(hidden)[0].numpy()
        assert proj.shape == h.shape
        assert _rel(proj, h) <= 1e-4
        assert got.shape == ref.shape == (len(pcm) // 160 // 4 + (1 if (len(pcm) // 160) % 4 else 0),)
        # tokens: equal, except where tanh lands within float error of a rounding boundary
        near = np.abs(np.abs(np.tanh(h)) - 0.5).min(axis=1) < 1e-5
        assert np.array_equal(got[~near], ref[~near])
        assert len(set(ref.tolist())) > 3
        assert np.array_equal(s3.tokens(pcm), got)


def test_long_audio_windows_match_package(s3, ref_s3):
    pcm = _speechlike(36.5, 20)   # 3650 frames: windows [0, 3000) and [2600, 3650)
    ref, mel = _ref_tokens(ref_s3, pcm)
    got, proj = s3.tokens_from_mel(mel)
    assert proj.shape[0] == 750 + 263
    assert got.shape == ref.shape == (700 + 263 - 50,)
    assert np.array_equal(got, ref)


def test_s3_errors(s3, tmp_path):
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s3.tokens(np.zeros(100, np.float32))
    bad = _speechlike(1.0, 0)
    bad[5] = np.nan
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="NaN"):
        s3.tokens(bad)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s3.tokens(np.zeros((2, 16000), np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s3.tokens_from_mel(np.zeros((80, 100), np.float32))


# ---- speaker vector and prompt mel -------------------------------------------------------------


def test_fbank_matches_kaldi():
    kaldi = _kaldi()
    for seconds, seed in [(0.5, 0), (2.345, 1)]:
        pcm = _speechlike(seconds, seed)
        ref = kaldi.fbank(torch.from_numpy(pcm)[None], num_mel_bins=80, dither=0, sample_frequency=16000).numpy()
        got = kaldi_fbank(pcm)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def _kaldi():
    """torchaudio.compliance.kaldi as tests/speech_ref.py provides it."""
    k = getattr(speech_ref, "kaldi", None)
    if callable(k):
        return k()
    import torchaudio.compliance.kaldi as mod

    return mod


def _torchaudio_source(rel: str) -> Path:
    """A source file of torchaudio: the unpacked copy beside speech_ref, else the installed package."""
    p = Path(speech_ref.__file__).parent / ".ref" / "torchaudio" / rel
    if p.is_file():
        return p
    import importlib.util

    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchaudio's source is not available")
    return Path(spec.submodule_search_locations[0]) / rel


def _torchaudio_resample():
    """torchaudio.transforms.Resample's two kernel functions, read from torchaudio's source
    (its compiled library does not load here; these are pure torch)."""
    src = _torchaudio_source("functional/functional.py").read_text()
    tree = ast.parse(src)
    ns = {"torch": torch, "math": math, "Optional": None, "Tensor": torch.Tensor, "_CPU": torch.device("cpu"),
          "warnings": __import__("warnings")}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("_get_sinc_resample_kernel", "_apply_sinc_resample_kernel"):
            node.decorator_list = []
            for a in node.args.args:
                a.annotation = None
            node.returns = None
            exec(compile(ast.Module([node], []), "functional.py", "exec"), ns)

    def resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
        g = math.gcd(orig, new)
        kernel, width = ns["_get_sinc_resample_kernel"](orig, new, g, 6, 0.99, "sinc_interp_hann", None)
        return ns["_apply_sinc_resample_kernel"](x, orig, new, g, kernel, width)

    return resample


def test_prompt_mel_matches_stepaudio2():
    from stepaudio2.flashcosyvoice.utils.audio import mel_spectrogram

    resample = _torchaudio_resample()
    pcm = _speechlike(2.7, 5)
    ref24 = resample(torch.from_numpy(pcm)[None], 16000, 24000)
    got24 = resample_16k_to_24k(pcm)
    assert got24.shape == (ref24.shape[1],)
    assert np.abs(got24 - ref24[0].numpy()).max() <= 1e-5
    ref = mel_spectrogram(ref24).transpose(1, 2).squeeze(0).numpy()
    got = prompt_mel(got24)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_voice_matches_prepare_prompt(voice_gguf, assets, ref_s3, tmp_path):
    """Voice.from_audio against Token2wav._prepare_prompt's steps on the reference's own WAV."""
    import soundfile as sf
    import s3tokenizer
    from stepaudio2.flashcosyvoice.utils.audio import mel_spectrogram

    pcm = _speechlike(2.3, 7)
    wav = tmp_path / "prompt.wav"
    sf.write(str(wav), pcm, 16000)   # MiniCPMO.init_token2wav_cache
    audio = torch.from_numpy(sf.read(str(wav), dtype="float32")[0])
    mels, lens = s3tokenizer.padding([s3tokenizer.log_mel_spectrogram(audio)])
    with torch.no_grad():
        tokens, n_tok = ref_s3.quantize(mels, lens)
    feat = _kaldi().fbank(audio[None], num_mel_bins=80, dither=0, sample_frequency=16000)
    feat = feat - feat.mean(dim=0, keepdim=True)
    sess = ort.InferenceSession(str(assets / "campplus.onnx"), providers=["CPUExecutionProvider"])
    spk = sess.run(None, {sess.get_inputs()[0].name: feat[None].numpy()})[0][0]
    a24 = _torchaudio_resample()(audio[None], 16000, 24000)
    mel = mel_spectrogram(a24).transpose(1, 2)
    mel = torch.nn.functional.pad(mel, (0, 0, 0, tokens.shape[1] * 2 - mel.shape[1]), mode="replicate")[0].numpy()

    v = minicpm_cpp.Voice.from_audio(voice_gguf, pcm)
    assert np.array_equal(v.tokens, tokens[0, : int(n_tok[0])].numpy())
    assert _rel(v.speaker, spk) <= 1e-4
    assert v.prompt_mel.shape == mel.shape
    assert np.abs(v.prompt_mel - mel).max() <= 1e-4 * np.abs(mel).max()
    # from a file: decoded by minicpm_cpp.load_audio, the same voice
    assert minicpm_cpp.Voice.from_audio(voice_gguf, str(wav)) == v


# ---- Voice files and errors --------------------------------------------------------------------


def test_voice_save_load(voice_gguf, tmp_path):
    v = minicpm_cpp.Voice.from_audio(voice_gguf, _speechlike(1.2, 9))
    p = tmp_path / "v.gguf"
    v.save(p)
    w = minicpm_cpp.Voice.load(p)
    assert w == v and w.tokens.dtype == np.int32 and w.prompt_mel.shape == (60, 80)
    with pytest.raises(minicpm_cpp.FileError):
        minicpm_cpp.Voice.load(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(minicpm_cpp.FormatError):
        minicpm_cpp.Voice.load(tmp_path / "junk.gguf")
    with pytest.raises(minicpm_cpp.FormatError, match="not a voice file"):
        minicpm_cpp.Voice.load(voice_gguf)
    # a mel of the wrong length for its tokens
    from gguf import GGUFWriter

    q = tmp_path / "bad.gguf"
    wr = GGUFWriter(str(q), "minicpm-voice")
    for k, val in (("voice.version", 1), ("voice.n_tokens", 3), ("voice.speaker_dim", 4), ("voice.mel_bins", 80),
                   ("voice.source_sample_rate", 16000)):
        wr.add_uint32(k, val)
    wr.add_tensor("voice.tokens", np.arange(3, dtype=np.int32))
    wr.add_tensor("voice.speaker", np.zeros(4, np.float32))
    wr.add_tensor("voice.prompt_mel", np.zeros((5, 80), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    with pytest.raises(minicpm_cpp.FormatError, match="prompt_mel"):
        minicpm_cpp.Voice.load(q)


def test_voice_errors(voice_gguf):
    V = minicpm_cpp.Voice
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="no samples"):
        V.from_audio(voice_gguf, np.zeros(0, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="at least"):
        V.from_audio(voice_gguf, _speechlike(0.3, 0))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="at most"):
        V.from_audio(voice_gguf, np.zeros(16000 * 301, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="16000"):
        V.from_audio(voice_gguf, _speechlike(1.0, 0), sample_rate=24000)
    bad = _speechlike(1.0, 0)
    bad[100] = np.nan
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="NaN"):
        V.from_audio(voice_gguf, bad)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        V.from_audio(voice_gguf, (np.ones(16000) * 1000).astype(np.int16))
    with pytest.raises(minicpm_cpp.Error):
        V.from_audio(voice_gguf, io.BytesIO(b"xx"))
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        V(np.zeros(0, np.int32), np.zeros(192, np.float32), np.zeros((0, 80), np.float32))


# ---- llama.cpp-omni prompt_cache.gguf ----------------------------------------------------------


def _write_prompt_cache(path: Path, spk_shape=(192,), drop=None, n_timesteps=5) -> dict:
    """A file laid out as llama.cpp-omni's exporter writes it (token2wav-impl.cpp)."""
    from gguf import GGUFWriter

    g = np.random.default_rng(0)
    arrays = {
        "prompt_cache.spk_cb": g.standard_normal(spk_shape).astype(np.float32),
        "prompt_cache.conformer_cnn_cache": g.standard_normal((2, 16, 3)).astype(np.float32),
        "prompt_cache.conformer_att_cache": g.standard_normal((2, 4, 10, 8)).astype(np.float32),
        "prompt_cache.estimator_cnn_cache": g.standard_normal((n_timesteps, 2, 16, 4)).astype(np.float32),
        "prompt_cache.estimator_att_cache": g.standard_normal((n_timesteps, 2, 20, 8)).astype(np.float32),
    }
    w = GGUFWriter(str(path), "prompt_cache")
    w.add_int32("mtmd.prompt_cache.version", 2)
    w.add_int32("mtmd.prompt_cache.n_timesteps", n_timesteps)
    w.add_float32("mtmd.prompt_cache.temperature", 1.0)
    for k, v in (("pre_lookahead", 3), ("chunk_main", 25), ("chunk_total", 28), ("up_rate", 2)):
        w.add_int32("mtmd.prompt_cache." + k, v)
    for name, a in arrays.items():
        if name != drop:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def test_prompt_cache_gguf(tmp_path):
    from minicpm_cpp.voice import PromptCache

    arrays = _write_prompt_cache(tmp_path / "prompt_cache.gguf")
    pc = PromptCache.load(tmp_path / "prompt_cache.gguf")
    assert np.array_equal(pc.speaker, arrays["prompt_cache.spk_cb"])
    for k, a in arrays.items():
        if k != "prompt_cache.spk_cb":
            assert np.array_equal(pc.caches[k.split(".", 1)[1]], a)
    assert pc.n_timesteps == 5 and pc.temperature == 1.0
    assert pc.meta == {"version": 2, "n_timesteps": 5, "temperature": 1.0, "pre_lookahead": 3, "chunk_main": 25,
                       "chunk_total": 28, "up_rate": 2}
    # [192, 1] reads too; two speakers, another width, a missing cache do not
    _write_prompt_cache(tmp_path / "b1.gguf", spk_shape=(1, 192))
    assert PromptCache.load(tmp_path / "b1.gguf").speaker.shape == (192,)
    for name, kw, msg in [("b2", dict(spk_shape=(2, 192)), "one speaker"), ("w", dict(spk_shape=(80,)), "192"),
                          ("m", dict(drop="prompt_cache.estimator_att_cache"), "missing")]:
        _write_prompt_cache(tmp_path / f"{name}.gguf", **kw)
        with pytest.raises(minicpm_cpp.FormatError, match=msg):
            PromptCache.load(tmp_path / f"{name}.gguf")
    with pytest.raises(minicpm_cpp.FormatError, match="not a llama.cpp-omni prompt cache"):
        _write_prompt_cache(tmp_path / "nospk.gguf", drop="prompt_cache.spk_cb")
        PromptCache.load(tmp_path / "nospk.gguf")


@pytest.mark.parametrize("change,msg", [
    (dict(set_keys={"minicpm.s3tok.head_count": (3, "UINT32")}), "rotary"),
    (dict(set_keys={"minicpm.s3tok.hop_length": (200, "UINT32")}), "only 16000 Hz"),
    (dict(set_keys={"minicpm.s3tok.block_count": (5, "UINT32")}), "block_count"),
    (dict(set_keys={"minicpm.s3tok.fsq_dim": (40, "UINT32")}), "fsq_dim"),
    (dict(set_keys={"minicpm.s3tok.attn_norm_epsilon": (float("nan"), "FLOAT32")}), "attn_norm_epsilon"),
    (dict(drop_keys=["minicpm.s3tok.n_mels"]), "n_mels"),
    (dict(drop_tensors=["s3.blk.1.fsmn.weight"]), "fsmn"),
    (dict(replace_tensors={"s3.blk.0.fsmn.weight": np.zeros((128, 1, 30), np.float32)}), "fsmn"),
    (dict(replace_tensors={"s3.blk.0.fsmn.weight": np.zeros((128, 1, 31), np.int32)}), "fsmn"),
])
def test_bad_voice_files(voice_gguf, tmp_path, change, msg):
    import gguf

    import gguf_edit

    if "set_keys" in change:
        change = dict(set_keys={k: (v, getattr(gguf.GGUFValueType, t)) for k, (v, t) in change["set_keys"].items()})
    bad = gguf_edit.rewrite(voice_gguf, tmp_path / "bad.gguf", **change)
    with pytest.raises(minicpm_cpp.Error, match=msg):
        _core.S3Tokenizer(str(bad), "cpu", 1)


def test_release_depth_matches_package(tmp_path):
    """The release's 6 blocks (one 64-wide head here): graph size and parity at full depth."""
    from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

    sizes = dict(n_state=64, n_head=1, n_layer=6)
    root = tiny_voice.add_voice_assets(tmp_path, seed=5, campplus=False, sizes=sizes)
    ref = S3TokenizerV2("speech_tokenizer_v2_25hz", ModelConfig(n_mels=128, n_audio_state=64, n_audio_head=1, n_audio_layer=6))
    ref.init_from_onnx(str(root / "speech_tokenizer_v2_25hz.onnx"))
    s3 = _core.S3Tokenizer(str(write_voice_gguf(root, tmp_path / "v6.gguf")), "cpu", 2)
    assert s3.hparams["n_layer"] == 6
    pcm = _speechlike(2.5, 6)
    want, mel = _ref_tokens(ref.eval(), pcm)
    got, proj = s3.tokens_from_mel(mel)
    with torch.no_grad():
        hidden, _ = ref.encoder(torch.from_numpy(mel)[None], torch.tensor([mel.shape[1]]))
        h = ref.quantizer._codebook.project_down(hidden)[0].numpy()
    assert _rel(proj, h) <= 1e-4
    assert np.array_equal(got, want)
