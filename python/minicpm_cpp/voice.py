"""Reference voices for MiniCPM-o 4.5 speech output (voice cloning).

A :class:`Voice` holds what ``stepaudio2.token2wav.Token2wav._prepare_prompt`` computes from a
reference recording, the inputs of Token2Wav's prompt (the flow's cache setup):

* ``tokens``: S3Tokenizer v2 speech tokens (25 Hz, int32), computed by the C++ S3Tokenizer
  component from the model file (``s3.*`` tensors; see ``csrc/models/s3tok.h``);
* ``speaker``: the 192-d CAM++ speaker vector, from the ONNX model embedded in the model file
  (``spk.campplus.onnx``) run by onnxruntime on a Kaldi fbank (80 bins, 25 ms / 10 ms frames,
  povey window, dither 0, the mean over time subtracted), as ``_prepare_prompt`` does with
  ``torchaudio.compliance.kaldi.fbank``;
* ``prompt_mel``: the 24 kHz mel of the flow (80 bins, n_fft 1920, hop 480, magnitude, natural
  log with floor 1e-5; ``stepaudio2.flashcosyvoice.utils.audio.mel_spectrogram``) of the
  recording resampled 16 kHz -> 24 kHz as ``torchaudio.transforms.Resample`` does, padded by
  repeating its last frame (or cut) to ``2 * len(tokens)`` frames.

The recording goes through what the reference does before: ``MiniCPMO.init_token2wav_cache``
writes the 16 kHz samples to a temporary WAV with ``soundfile.write`` (16-bit PCM) and the
encoders read that file back, so the samples are rounded to 16-bit PCM here too.

``Voice.save(path)`` writes a small GGUF (``voice.*`` keys, three tensors); ``Voice.load(path)``
reads and validates one.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import FileError, FormatError, InvalidArgumentError, MissingDependencyError

__all__ = ["Voice", "PromptCache", "MIN_VOICE_SECONDS", "MAX_VOICE_SECONDS", "kaldi_fbank", "prompt_mel", "resample_16k_to_24k"]

SAMPLE_RATE = 16000
MEL_RATE = 24000
# Shorter than this, S3Tokenizer gives a handful of tokens and the fbank a few frames; the
# reference itself needs more than 200 samples (its STFT's reflect padding).
MIN_VOICE_SECONDS = 0.5
# A prompt is a few seconds; S3Tokenizer windows anything past 30 s. The bound keeps the flow's
# prompt (2 mel frames per token) reasonable.
MAX_VOICE_SECONDS = 300.0
TOKEN_MEL_RATIO = 2  # flow.yaml token_mel_ratio: prompt mel frames per speech token

_VOICE_ARCH = "minicpm-voice"
_KEY_VERSION = "voice.version"
_KEY_TOKENS = "voice.n_tokens"
_KEY_SPK_DIM = "voice.speaker_dim"
_KEY_MEL_BINS = "voice.mel_bins"
_KEY_SR = "voice.source_sample_rate"
_T_TOKENS, _T_SPK, _T_MEL = "voice.tokens", "voice.speaker", "voice.prompt_mel"
_T_AUDIO = "voice.audio_16k"   # optional: the recording itself, for the system prompt (an LLM input)
_VERSION = 1


# ---- the reference's front ends, in numpy ---------------------------------------------------


def _kaldi_mel_banks(n_bins: int, n_fft: int, sr: float, low: float = 20.0, high: float = 0.0) -> np.ndarray:
    """torchaudio.compliance.kaldi.get_mel_banks (no VTLN), float32, with the zero Nyquist column."""
    nyquist = 0.5 * sr
    if high <= 0.0:
        high += nyquist
    f32 = np.float32
    mel_low = 1127.0 * math.log(1.0 + low / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (n_bins + 1)
    b = np.arange(n_bins, dtype=f32)[:, None]
    left = (f32(mel_low) + b * f32(delta)).astype(f32)
    center = (f32(mel_low) + (b + f32(1.0)) * f32(delta)).astype(f32)
    right = (f32(mel_low) + (b + f32(2.0)) * f32(delta)).astype(f32)
    freqs = (f32(sr / n_fft) * np.arange(n_fft // 2, dtype=f32)).astype(f32)
    mel = (f32(1127.0) * np.log((f32(1.0) + freqs / f32(700.0)).astype(f32))).astype(f32)[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down)).astype(f32)
    return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(pcm: np.ndarray, n_bins: int = 80, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``torchaudio.compliance.kaldi.fbank(pcm[None], num_mel_bins=n_bins, dither=0,
    sample_frequency=sr)``: [frames, n_bins] float32 (25 ms frames every 10 ms, snip_edges,
    DC offset removed, pre-emphasis 0.97, povey window, power spectrum of 512 points, log)."""
    x = np.asarray(pcm, dtype=np.float32)
    size, shift = int(sr * 25 * 0.001), int(sr * 10 * 0.001)
    n_fft = 1 if size == 0 else 2 ** (size - 1).bit_length()
    if x.shape[0] < size:
        raise InvalidArgumentError(f"voice: {x.shape[0]} samples, fewer than one 25 ms fbank frame")
    m = 1 + (x.shape[0] - size) // shift
    frames = np.lib.stride_tricks.as_strided(x, (m, size), (shift * x.strides[0], x.strides[0])).astype(np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * prev
    n = np.arange(size, dtype=np.float64)
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / (size - 1))).astype(np.float32)   # periodic=False
    window = np.power(hann.astype(np.float64), 0.85)
    spec = np.fft.rfft(frames * window, n=n_fft, axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    mel = power @ _kaldi_mel_banks(n_bins, n_fft, float(sr)).astype(np.float64).T
    eps = float(np.finfo(np.float32).eps)
    return np.log(np.maximum(mel, eps)).astype(np.float32)


def resample_16k_to_24k(pcm: np.ndarray) -> np.ndarray:
    """``torchaudio.transforms.Resample(16000, 24000)`` (sinc_interp_hann, lowpass_filter_width
    6, rolloff 0.99; the kernel computed in float64 and kept as float32)."""
    g = math.gcd(SAMPLE_RATE, MEL_RATE)
    orig, new = SAMPLE_RATE // g, MEL_RATE // g
    lpw, rolloff = 6, 0.99
    base = min(orig, new) * rolloff
    width = math.ceil(lpw * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    # torch.arange(0, -new, -1) / new is float32 (int tensor / int), added to the float64 idx
    t = (np.arange(0, -new, -1).astype(np.float32) / np.float32(new)).astype(np.float32)[:, None].astype(np.float64) + idx
    t = np.clip(t * base, -lpw, lpw)
    window = np.cos(t * math.pi / lpw / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kern = np.where(t == 0, 1.0, np.sin(t) / t)
    kern = (kern * window * (base / orig)).astype(np.float32)   # [new, taps]
    x = np.asarray(pcm, dtype=np.float32)
    n = x.shape[0]
    xp = np.pad(x, (width, width + orig)).astype(np.float64)
    taps = kern.shape[1]
    n_steps = (xp.shape[0] - taps) // orig + 1
    cols = np.lib.stride_tricks.as_strided(xp, (n_steps, taps), (orig * xp.strides[0], xp.strides[0]))
    out = (cols @ kern.astype(np.float64).T).astype(np.float32)   # [steps, new]
    target = int(math.ceil(new * n / orig))
    return np.ascontiguousarray(out.reshape(-1)[:target])


def _slaney_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax) (Slaney
    scale and norm; float32 weights times the float64 norm, as librosa computes them)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


_MEL_FILTERS: Optional[np.ndarray] = None


def prompt_mel(pcm24k: np.ndarray) -> np.ndarray:
    """``mel_spectrogram(y)`` of stepaudio2 (24 kHz, n_fft 1920, hop 480, Hann 1920, fmax 8000,
    reflect padding 720, center False, sqrt(|X|^2 + 1e-9), log(max(., 1e-5))): [frames, 80]."""
    global _MEL_FILTERS
    if _MEL_FILTERS is None:
        _MEL_FILTERS = _slaney_filters(MEL_RATE, 1920, 80, 0.0, 8000.0)
    n_fft, hop, pad = 1920, 480, (1920 - 480) // 2
    x = np.asarray(pcm24k, dtype=np.float32)
    if x.shape[0] <= pad:
        raise InvalidArgumentError(f"voice: {x.shape[0]} samples at 24 kHz, too few for the prompt mel")
    xp = np.pad(x, (pad, pad), mode="reflect").astype(np.float64)
    n_frames = 1 + (xp.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(xp, (n_frames, n_fft), (hop * xp.strides[0], xp.strides[0]))
    n = np.arange(n_fft, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32).astype(np.float64)   # periodic
    spec = np.fft.rfft(frames * window, axis=1)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = mag @ _MEL_FILTERS.astype(np.float64).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


def _pcm16_round_trip(pcm: np.ndarray) -> np.ndarray:
    """The samples as soundfile.write(..., 16000) (16-bit PCM WAV) and a float32 read give them."""
    try:
        import soundfile as sf
    except ImportError:  # pragma: no cover - a runtime dependency
        raise MissingDependencyError("voice: soundfile is needed (pip install soundfile)") from None
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="WAV")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return np.ascontiguousarray(y, dtype=np.float32)


# ---- the Voice ----------------------------------------------------------------------------------


class Voice:
    """A reference voice: prompt speech tokens, speaker vector and prompt mel (see the module doc).
    Create one with :meth:`minicpm_cpp.Model.voice` (or :meth:`Voice.from_audio`); keep it with
    :meth:`save` / :meth:`load`."""

    def __init__(self, tokens: Any, speaker: Any, prompt_mel: Any, source_sample_rate: int = SAMPLE_RATE) -> None:
        tok = np.asarray(tokens)
        spk = np.asarray(speaker)
        mel = np.asarray(prompt_mel)
        if tok.ndim != 1 or tok.shape[0] == 0 or tok.dtype.kind not in "iu":
            raise InvalidArgumentError(f"voice: tokens must be a non-empty 1-D integer array, got {tok.dtype} {tok.shape}")
        if tok.min() < 0 or tok.max() >= 2**31:
            raise InvalidArgumentError("voice: tokens must be in [0, 2^31)")
        if spk.ndim != 1 or spk.shape[0] == 0 or spk.dtype.kind != "f" or not np.isfinite(spk).all():
            raise InvalidArgumentError(f"voice: speaker must be a finite 1-D float array, got {spk.dtype} {spk.shape}")
        if mel.ndim != 2 or mel.shape[0] != TOKEN_MEL_RATIO * tok.shape[0] or mel.dtype.kind != "f" or not np.isfinite(mel).all():
            raise InvalidArgumentError(
                f"voice: prompt_mel must be finite floats of shape [{TOKEN_MEL_RATIO} x n_tokens = "
                f"{TOKEN_MEL_RATIO * tok.shape[0]}, bins], got {mel.dtype} {mel.shape}")
        self.tokens = np.ascontiguousarray(tok, dtype=np.int32)
        self.speaker = np.ascontiguousarray(spk, dtype=np.float32)
        self.prompt_mel = np.ascontiguousarray(mel, dtype=np.float32)
        self.source_sample_rate = int(source_sample_rate)
        # The 16 kHz recording the voice was made from (None for a voice from llama.cpp-omni's
        # cache or one saved without it): the reference voice is also an LLM input, in the
        # system prompt (minicpm_cpp.system_prompt).
        self.audio_16k: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return (f"Voice(tokens={self.tokens.shape[0]}, speaker={self.speaker.shape[0]}, "
                f"prompt_mel={list(self.prompt_mel.shape)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Voice):
            return NotImplemented
        return (np.array_equal(self.tokens, other.tokens) and np.array_equal(self.speaker, other.speaker)
                and np.array_equal(self.prompt_mel, other.prompt_mel))

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def from_audio(cls, model_file: Union[str, os.PathLike], audio: Any, sample_rate: int = SAMPLE_RATE,
                   n_threads: int = 0, device: str = "auto") -> "Voice":
        """A voice from a recording (path, bytes or a 1-D float array at ``sample_rate``, which
        must be 16000: the reference's encoders take 16 kHz), with the encoders of
        ``model_file``."""
        raw = _load_pcm(audio, sample_rate)
        pcm = _pcm16_round_trip(raw)
        from . import _core

        tok = _core.S3Tokenizer(os.fspath(model_file), device, int(n_threads))
        tokens = tok.tokens(pcm)
        if tokens.shape[0] == 0:
            raise InvalidArgumentError("voice: the recording gives no speech tokens")
        speaker = _speaker_vector(os.fspath(model_file), pcm)
        mel = prompt_mel(resample_16k_to_24k(pcm))
        n = TOKEN_MEL_RATIO * tokens.shape[0]
        mel = mel[:n] if mel.shape[0] >= n else np.concatenate([mel, np.repeat(mel[-1:], n - mel.shape[0], axis=0)])
        v = cls(tokens, speaker, mel, SAMPLE_RATE)
        v.audio_16k = np.ascontiguousarray(raw, dtype=np.float32)
        return v

    # -- files ------------------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the voice as a small GGUF file."""
        from gguf import GGUFWriter

        p = os.fspath(path)
        tmp = p + ".tmp"
        w = GGUFWriter(tmp, _VOICE_ARCH)
        try:
            w.add_uint32(_KEY_VERSION, _VERSION)
            w.add_uint32(_KEY_TOKENS, int(self.tokens.shape[0]))
            w.add_uint32(_KEY_SPK_DIM, int(self.speaker.shape[0]))
            w.add_uint32(_KEY_MEL_BINS, int(self.prompt_mel.shape[1]))
            w.add_uint32(_KEY_SR, self.source_sample_rate)
            w.add_tensor(_T_TOKENS, self.tokens)
            w.add_tensor(_T_SPK, self.speaker)
            w.add_tensor(_T_MEL, self.prompt_mel)
            if self.audio_16k is not None:
                w.add_tensor(_T_AUDIO, np.ascontiguousarray(self.audio_16k, dtype=np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], embedded: bool = False) -> "Voice":
        """Read a voice written by :meth:`save`; FormatError when it is not one. ``embedded``:
        the voice tensors and keys inside another GGUF (a model file's default voice)."""
        from gguf import GGUFReader

        p = os.fspath(path)
        if not os.path.isfile(p):
            raise FileError(f"voice file {p!r} not found")
        from . import _core

        # the C++ reader validates the file first (and is quick on a large model file by mistake)
        if not _core.gguf_has_tensor(p, _T_TOKENS):
            raise FormatError(f"{p}: not a voice file (no {_T_TOKENS} tensor)")
        try:
            r = GGUFReader(p)
        except Exception as e:
            raise FormatError(f"{p}: not a GGUF voice file ({e})") from None

        def u32(key: str) -> int:
            f = r.fields.get(key)
            if f is None or len(f.data) != 1:
                raise FormatError(f"{p}: voice key {key} missing")
            try:
                return int(f.parts[f.data[0]][0])
            except (IndexError, TypeError, ValueError):
                raise FormatError(f"{p}: voice key {key} is not an integer") from None

        arch = r.fields.get("general.architecture")
        if not embedded and (arch is None or bytes(arch.parts[arch.data[0]]).decode("utf-8", "replace") != _VOICE_ARCH):
            raise FormatError(f"{p}: not a voice file (general.architecture is not {_VOICE_ARCH!r})")
        if u32(_KEY_VERSION) != _VERSION:
            raise FormatError(f"{p}: voice file version {u32(_KEY_VERSION)}, expected {_VERSION}")
        n, d, bins = u32(_KEY_TOKENS), u32(_KEY_SPK_DIM), u32(_KEY_MEL_BINS)
        tensors = {t.name: t for t in r.tensors}
        expect = {_T_TOKENS: ((n,), np.int32), _T_SPK: ((d,), np.float32), _T_MEL: ((TOKEN_MEL_RATIO * n, bins), np.float32)}
        got = {}
        for name, (shape, dtype) in expect.items():
            t = tensors.get(name)
            if t is None:
                raise FormatError(f"{p}: voice tensor {name} missing")
            a = np.asarray(t.data)
            if a.dtype != dtype or tuple(a.shape) != shape:
                raise FormatError(f"{p}: voice tensor {name} is {a.dtype} {list(a.shape)}, expected "
                                  f"{np.dtype(dtype).name} {list(shape)}")
            got[name] = np.array(a)
        try:
            v = cls(got[_T_TOKENS], got[_T_SPK], got[_T_MEL], u32(_KEY_SR))
        except InvalidArgumentError as e:
            raise FormatError(f"{p}: {e}") from None
        t = tensors.get(_T_AUDIO)
        if t is not None:
            a = np.asarray(t.data)
            if a.dtype != np.float32 or a.ndim != 1 or not np.isfinite(a).all() or \
                    not MIN_VOICE_SECONDS * SAMPLE_RATE <= a.shape[0] <= MAX_VOICE_SECONDS * SAMPLE_RATE:
                raise FormatError(f"{p}: voice tensor {_T_AUDIO} must be finite float32 16 kHz samples of "
                                  f"{MIN_VOICE_SECONDS}-{MAX_VOICE_SECONDS:.0f} s, got {a.dtype} {list(a.shape)}")
            v.audio_16k = np.array(a)
        return v


def _load_pcm(audio: Any, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise InvalidArgumentError(f"voice: sample_rate must be an int, got {type(sample_rate).__name__}")
    if sample_rate != SAMPLE_RATE:
        raise InvalidArgumentError(
            f"voice: sample_rate {sample_rate} Hz; the voice encoders take {SAMPLE_RATE} Hz samples "
            "(pass the file, which is resampled on decoding, or resample the array first)")
    from .audio import load_audio

    if isinstance(audio, np.ndarray) and audio.dtype.kind == "f" and audio.ndim == 1 and audio.shape[0] == 0:
        raise InvalidArgumentError("voice: the audio has no samples")
    pcm = load_audio(audio, name="voice audio")
    seconds = pcm.shape[0] / SAMPLE_RATE
    if seconds < MIN_VOICE_SECONDS:
        raise InvalidArgumentError(f"voice: {seconds:.3f} s of audio; a reference voice needs at least "
                                   f"{MIN_VOICE_SECONDS} s")
    if seconds > MAX_VOICE_SECONDS:
        raise InvalidArgumentError(f"voice: {seconds:.1f} s of audio; at most {MAX_VOICE_SECONDS:.0f} s")
    return pcm


def _campplus_bytes(model_file: str) -> bytes:
    from . import _core

    data = _core.gguf_tensor_bytes(model_file, "spk.campplus.onnx")
    if data is None:
        raise FormatError(f"{model_file}: no CAM++ speaker encoder (tensor spk.campplus.onnx); convert the model "
                          "with its assets/token2wav folder")
    return data


def _speaker_vector(model_file: str, pcm: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("voice: the CAM++ speaker encoder runs on onnxruntime (pip install onnxruntime)") from None
    data = _campplus_bytes(model_file)
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    try:
        sess = onnxruntime.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise FormatError(f"{model_file}: the embedded CAM++ model does not load in onnxruntime ({e})") from None
    feat = kaldi_fbank(pcm)
    feat = feat - feat.mean(axis=0, keepdims=True)
    out = sess.run(None, {sess.get_inputs()[0].name: feat[None].astype(np.float32)})[0]
    return np.asarray(out, dtype=np.float32).reshape(-1)


def find_voice_file(paths: Sequence[Union[str, os.PathLike]]) -> str:
    """The first of a model's files that holds the voice encoders (S3Tokenizer tensors)."""
    from . import _core

    for p in paths:
        if _core.gguf_has_tensor(os.fspath(p), "s3.conv1.weight"):
            return os.fspath(p)
    raise FormatError("the model has no voice encoders (S3Tokenizer s3.* and CAM++ spk.* tensors): convert a "
                      "MiniCPM-o 4.5 checkpoint with its assets/token2wav folder")


# ---- llama.cpp-omni's prompt_cache.gguf ---------------------------------------------------------

_PC_KEYS = ("version", "n_timesteps", "temperature", "pre_lookahead", "chunk_main", "chunk_total", "up_rate")
_PC_TENSORS = {  # name -> number of ggml dimensions (trailing 1s aside)
    "conformer_cnn_cache": 3,
    "conformer_att_cache": 4,
    "estimator_cnn_cache": 4,
    "estimator_att_cache": 4,
}


class PromptCache:
    """llama.cpp-omni's ``prompt_cache.gguf``: the state ``setup_cache`` leaves for a default
    voice (its Token2Mel ``start_stream_with_prompt_cache_gguf`` restores it instead of running
    S3Tokenizer and CAM++), as ``t2m_load_prompt_cache_gguf`` reads it.

    ``speaker`` is ``prompt_cache.spk_cb`` (192 floats; the exporter writes it 1-D, the reader
    takes ne [192, B] with B = 1 only). The four caches (F32, numpy order, i.e. the ggml shape
    reversed) are tied to the flow and to ``n_timesteps``. ``meta`` holds the
    ``mtmd.prompt_cache.*`` values present (version 2, n_timesteps, temperature, pre_lookahead
    3, chunk_main 25, chunk_total 28, up_rate 2 in the exporter); the reader uses
    n_timesteps and temperature only, with 0 and 1.0 when absent."""

    def __init__(self, speaker: np.ndarray, caches: dict, meta: dict) -> None:
        self.speaker = speaker
        self.caches = caches
        self.meta = meta

    @property
    def n_timesteps(self) -> int:
        return int(self.meta.get("n_timesteps", 0))

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.caches.items()}
        return f"PromptCache(speaker={self.speaker.shape[0]}, caches={shapes}, meta={self.meta})"

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "PromptCache":
        from gguf import GGUFReader

        from . import _core

        p = os.fspath(path)
        if not os.path.isfile(p):
            raise FileError(f"prompt cache {p!r} not found")
        if not _core.gguf_has_tensor(p, "prompt_cache.spk_cb"):
            raise FormatError(f"{p}: not a llama.cpp-omni prompt cache (no prompt_cache.spk_cb tensor)")
        r = GGUFReader(p)
        meta = {}
        for k in _PC_KEYS:
            f = r.fields.get("mtmd.prompt_cache." + k)
            if f is None:
                continue
            try:
                v = f.parts[f.data[0]][0]
            except (IndexError, TypeError):
                raise FormatError(f"{p}: mtmd.prompt_cache.{k} is not a scalar") from None
            meta[k] = float(v) if k == "temperature" else int(v)
        if "n_timesteps" in meta and not 0 <= meta["n_timesteps"] <= 1000:
            raise FormatError(f"{p}: mtmd.prompt_cache.n_timesteps = {meta['n_timesteps']} is out of range")
        if "temperature" in meta and not (math.isfinite(meta["temperature"]) and meta["temperature"] >= 0):
            raise FormatError(f"{p}: mtmd.prompt_cache.temperature = {meta['temperature']} is not a finite value >= 0")
        tensors = {t.name: t for t in r.tensors}

        def f32(name: str) -> np.ndarray:
            t = tensors.get(name)
            if t is None:
                raise FormatError(f"{p}: tensor {name} missing")
            if t.tensor_type.name != "F32":
                raise FormatError(f"{p}: tensor {name} is {t.tensor_type.name}, expected F32")
            a = np.array(t.data, dtype=np.float32).reshape([int(n) for n in reversed(list(t.shape))])
            if not np.isfinite(a).all():
                raise FormatError(f"{p}: tensor {name} has NaN or infinite values")
            return a

        spk = f32("prompt_cache.spk_cb")
        ne = list(reversed(spk.shape))
        if ne[0] != 192 or int(np.prod(ne[1:], dtype=np.int64)) != 1:
            raise FormatError(f"{p}: prompt_cache.spk_cb has ne {ne}, expected [192] or [192, 1] (one speaker)")
        caches = {}
        for name, dims in _PC_TENSORS.items():
            a = f32("prompt_cache." + name)
            if a.ndim > dims:
                raise FormatError(f"{p}: prompt_cache.{name} has {a.ndim} dimensions, expected {dims}")
            caches[name] = a.reshape((1,) * (dims - a.ndim) + a.shape)
        return cls(spk.reshape(192), caches, meta)
