"""load_audio: every input form to the 16 kHz mono float32 PCM that librosa.load(sr=16000, mono=True) gives.

The reference (MiniCPM-o) loads audio with ``librosa.load(path, sr=16000, mono=True)``; the files
libsndfile reads must give exactly librosa's samples. Containers it does not read (m4a, webm...)
are compared with a decode written here with PyAV's own converter and librosa's to_mono/resample,
and with librosa itself when an ffmpeg binary is at hand for its audioread fallback.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
librosa = pytest.importorskip("librosa")
av = pytest.importorskip("av")

import minicpm_cpp  # noqa: E402
from minicpm_cpp import audio  # noqa: E402
from minicpm_cpp.audio import MAX_AUDIO_SECONDS, SAMPLE_RATE, load_audio  # noqa: E402
from minicpm_cpp.errors import Error, FileError, InvalidArgumentError, MissingDependencyError  # noqa: E402


def _librosa(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
        y, sr = librosa.load(path, sr=16000, mono=True)
    assert sr == 16000
    return y


def _signal(rate: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """(frames, channels) float32 in [-1, 1]: a different tone per channel plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(rate * seconds))) / rate
    tones = np.stack([0.4 * np.sin(2 * np.pi * (300 + 170 * c) * t) for c in range(channels)], axis=1)
    return (tones + 0.05 * rng.standard_normal(tones.shape)).clip(-1, 1).astype(np.float32)


def _sf_bytes(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _check_pcm(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous


def test_constants_and_exports():
    assert SAMPLE_RATE == 16000 and MAX_AUDIO_SECONDS == 3600
    assert minicpm_cpp.load_audio is load_audio
    assert minicpm_cpp.SAMPLE_RATE == 16000 and minicpm_cpp.MAX_AUDIO_SECONDS == 3600
    assert issubclass(MissingDependencyError, Error) and issubclass(MissingDependencyError, ImportError)


def _asset_audio(assets: Path):
    media = assets / "media"
    return sorted(media.glob("*.wav")) + [media / "test-2.mp3"]


def test_assets_match_librosa(assets_dir):
    files = _asset_audio(assets_dir)
    assert len(files) >= 5
    for path in files:
        got = load_audio(path)
        want = _librosa(path)
        _check_pcm(got)
        assert got.shape == want.shape, path.name
        assert np.array_equal(got, want), path.name
    # the mp3 is 44.1 kHz: resampled, not just read
    assert sf.info(str(assets_dir / "media" / "test-2.mp3")).samplerate == 44100


@pytest.mark.parametrize(
    "rate, channels, fmt, subtype, frames",
    [
        (44100, 2, "WAV", "PCM_16", 26901),
        (44100, 2, "FLAC", "PCM_24", 26460),
        (44100, 2, "OGG", "VORBIS", 26460),
        (44100, 2, "MP3", "MPEG_LAYER_III", 26460),
        (48000, 2, "OGG", "OPUS", 28800),
        (48000, 2, "WAV", "FLOAT", 24001),
        (48000, 6, "WAV", "PCM_24", 14400),
        (8000, 1, "WAV", "PCM_16", 5600),
        (22050, 3, "FLAC", "PCM_16", 8821),
        (44100, 2, "WAV", "PCM_U8", 44100),
        (44100, 1, "WAV", "PCM_16", 1),  # soxr gives no sample, librosa pads to one
        (16000, 2, "WAV", "PCM_16", 4800),  # channel mean, no resampling
    ],
)
def test_generated_files_match_librosa(tmp_path, rate, channels, fmt, subtype, frames):
    path = tmp_path / f"x-{rate}-{channels}.{fmt.lower()}"
    sf.write(path, _signal(rate, channels, frames / rate), rate, format=fmt, subtype=subtype)
    got = load_audio(path)
    want = _librosa(path)
    _check_pcm(got)
    assert got.shape == want.shape
    assert np.array_equal(got, want)


def _av_bytes(fmt: str, codec: str, rate: int, channels: int, seconds: float) -> bytes:
    """Encode _signal with PyAV into an in-memory container."""
    x = _signal(rate, channels, seconds, seed=5)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        sample_fmt = stream.codec_context.codec.audio_formats[0].name
        if sample_fmt == "s16":
            arr = np.round(x * 32767).astype(np.int16).reshape(1, -1)
        elif sample_fmt.endswith("p"):
            arr = np.ascontiguousarray(x.T)
        else:
            arr = x.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout=stream.layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _reference_pyav(data: bytes) -> np.ndarray:
    """librosa's audioread path, rebuilt: ffmpeg's 16-bit output (here libswresample through PyAV's
    AudioResampler), an mp4 stream cut at its stated duration, /32768, librosa.to_mono, librosa.resample."""
    pcm = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        converter = None
        for frame in container.decode(stream):
            if converter is None:
                rate = frame.sample_rate
                converter = av.AudioResampler(format="s16", layout=frame.layout.name, rate=rate)
            pcm += [f.to_ndarray().reshape(-1, len(f.layout.channels)) for f in converter.resample(frame)]
        pcm += [f.to_ndarray().reshape(-1, len(f.layout.channels)) for f in converter.resample(None)]
        y = np.concatenate(pcm)
        if container.format.name.startswith("mov,mp4") and stream.duration:
            y = y[: int(stream.duration * stream.time_base * rate)]
    y = librosa.to_mono((y.astype(np.float32) / 32768).T)
    return librosa.resample(y, orig_sr=rate, target_sr=16000, res_type="soxr_hq")


_AV_CASES = [
    ("ipod", "aac", 44100, 2, "m4a"),
    ("mp4", "aac", 48000, 1, "mp4"),
    ("adts", "aac", 44100, 2, "aac"),
    ("webm", "libopus", 48000, 2, "webm"),
    ("matroska", "aac", 22050, 2, "mka"),
]


@pytest.mark.parametrize("fmt, codec, rate, channels, ext", _AV_CASES)
def test_pyav_containers(tmp_path, fmt, codec, rate, channels, ext):
    data = _av_bytes(fmt, codec, rate, channels, 0.5)
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))  # libsndfile does not read these: the PyAV path is the one tested
    want = _reference_pyav(data)
    path = tmp_path / f"x.{ext}"
    path.write_bytes(data)
    for src in (path, data):
        got = load_audio(src)
        _check_pcm(got)
        assert got.shape == want.shape
        assert np.array_equal(got, want)


def test_mp4_end_padding_dropped():
    """An m4a states its length; the AAC encoder's last-frame padding is not audio."""
    data = _av_bytes("ipod", "aac", 44100, 1, 0.5)
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.audio[0]
        stated = int(s.duration * s.time_base * 44100)
        decoded = sum(f.samples for f in c.decode(s))
    assert decoded > stated
    assert len(load_audio(data)) == int(np.ceil(stated * (16000 / 44100)))


def _ffmpeg_dir(tmp_path_factory):
    """A directory holding an ``ffmpeg`` for audioread: imageio-ffmpeg's binary (a known version), else
    None when one is on PATH."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        if shutil.which("ffmpeg"):
            return None
        pytest.skip("no ffmpeg binary for librosa's audioread fallback (pip install imageio-ffmpeg)")
    d = tmp_path_factory.mktemp("ffmpeg-bin")
    os.symlink(exe, d / "ffmpeg")
    return d


def test_pyav_containers_match_librosa_through_ffmpeg(tmp_path_factory, monkeypatch):
    audioread = pytest.importorskip("audioread")
    d = _ffmpeg_dir(tmp_path_factory)
    if d is not None:
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    audioread.available_backends(flush_cache=True)
    try:
        out = tmp_path_factory.mktemp("av-files")
        for fmt, codec, rate, channels, ext in _AV_CASES:
            path = out / f"x.{ext}"
            path.write_bytes(_av_bytes(fmt, codec, rate, channels, 0.5))
            got = load_audio(path)
            want = _librosa(path)
            assert got.shape == want.shape, ext
            assert np.array_equal(got, want), ext
    finally:
        monkeypatch.undo()
        audioread.available_backends(flush_cache=True)


def test_pyav_integer_formats_scaled_like_libsndfile():
    """Through PyAV a PCM WAV gives libsndfile's samples (int16 kept, wider ints shifted as ffmpeg does)."""
    x = _signal(44100, 2, 0.2)
    for subtype in ("PCM_16", "PCM_U8"):
        data = _sf_bytes(x, 44100, "WAV", subtype)
        y, rate = audio._read_av(io.BytesIO(data), "wav", "test")
        want = librosa.to_mono(sf.read(io.BytesIO(data), dtype="float32")[0].T)
        assert rate == 44100 and np.array_equal(y, want), subtype


def test_input_forms_agree(tmp_path):
    data = _sf_bytes(_signal(44100, 2, 0.4), 44100, "WAV", "PCM_16")
    path = tmp_path / "a b.wav"
    path.write_bytes(data)
    want = _librosa(path)
    b64 = base64.b64encode(data).decode()
    url = f"data:audio/wav;base64,{b64}"
    forms = [
        str(path), path, path.as_uri(), url, f"data:audio/x-wav;base64,{b64.rstrip('=')}",
        "data:;base64," + b64, "data:application/octet-stream;base64," + b64,
        data, bytearray(data), memoryview(data),
        {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": b64}},
        {"type": "input_audio", "input_audio": {"data": url, "format": "wav"}},
        {"type": "audio_url", "audio_url": {"url": url}},
        {"type": "audio_url", "audio_url": {"url": path.as_uri()}},
        {"type": "audio_url", "audio_url": str(path)},
        {"type": "audio", "audio": data},
        {"type": "audio", "audio": path},
        {"type": "audio", "audio": {"url": url}},
        {"type": "audio", "audio": want},
    ]
    for src in forms:
        got = load_audio(src)
        _check_pcm(got)
        assert np.array_equal(got, want), repr(src)[:80]


def test_array_inputs():
    x = _signal(16000, 1, 0.3)[:, 0]
    assert np.array_equal(load_audio(x), x)
    got = load_audio(x.astype(np.float64))
    _check_pcm(got)
    assert np.array_equal(got, x)
    strided = np.repeat(x, 2)[::2]
    assert not strided.flags.c_contiguous
    got = load_audio(strided)
    _check_pcm(got)
    assert np.array_equal(got, x)
    assert np.array_equal(load_audio(x.astype(">f4")), x)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros(100, np.int16), "int16.*32768"),
        (np.zeros(100, np.int32), "int32.*convert"),
        (np.zeros(100, np.float16), "float16"),
        (np.zeros((2, 100), np.float32), "1-D.*average"),
        (np.zeros((100, 1), np.float32), "1-D"),
        (np.zeros((), np.float32), "1-D"),
        (np.zeros(100, np.complex64), "complex64"),
        (np.zeros(0, np.float32), "no samples"),
        (np.array([0.0, np.nan, 0.5], np.float32), "NaN.*sample 1"),
        (np.array([0.0, 0.1, -np.inf]), "NaN or infinite.*sample 2"),
    ],
)
def test_array_refusals(arr, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_audio(arr)


def test_too_long(monkeypatch, tmp_path):
    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 1)
    x = _signal(16000, 1, 1.0)[:, 0]
    assert len(load_audio(x)) == 16000  # exactly the limit is accepted
    with pytest.raises(InvalidArgumentError, match="limit of 1 s"):
        load_audio(np.zeros(16001, np.float32))
    path = tmp_path / "long.wav"
    sf.write(path, _signal(44100, 2, 1.5), 44100)

    def no_read(*a, **k):
        raise AssertionError("decoded although the header says the audio is too long")

    with monkeypatch.context() as m:
        m.setattr(sf.SoundFile, "read", no_read)
        with pytest.raises(InvalidArgumentError, match="long.wav.*1.5 s long.*limit of 1 s"):
            load_audio(path)
    data = _av_bytes("ipod", "aac", 44100, 1, 1.5)
    with pytest.raises(InvalidArgumentError, match=r"1\.5 s long.*limit of 1 s"):  # the container's length
        load_audio(data)


def _wav_with_data_length(data: bytes, length: int) -> bytes:
    i = data.index(b"data")
    return data[: i + 4] + struct.pack("<I", length) + data[i + 8:]


def test_truncated_wav_refused(tmp_path):
    data = _sf_bytes(_signal(44100, 2, 0.3), 44100, "WAV", "PCM_16")
    # libsndfile alone returns the frames present without a word: the case refused here
    assert sf.read(io.BytesIO(data[: len(data) // 2]))[0].shape[0] < 0.3 * 44100 / 2 + 1
    for cut in (len(data) // 2, len(data) - 1, 46, 44, 30):
        with pytest.raises(InvalidArgumentError, match="truncated WAV"):
            load_audio(data[:cut])
        path = tmp_path / f"cut{cut}.wav"
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidArgumentError, match=f"cut{cut}.wav: truncated WAV"):
            load_audio(path)


def test_wav_unknown_length_markers_read_to_the_end(tmp_path):
    data = _sf_bytes(_signal(44100, 2, 0.3), 44100, "WAV", "PCM_16")
    want = load_audio(data)
    for marker in (0xFFFFFFFF, 0x7FFFF000):  # ffmpeg / SoX writing to a pipe
        streamed = _wav_with_data_length(data, marker)
        path = tmp_path / f"streamed-{marker:x}.wav"
        path.write_bytes(streamed)
        assert np.array_equal(load_audio(streamed), want)
        assert np.array_equal(load_audio(path), _librosa(path))
    with pytest.raises(InvalidArgumentError, match="no samples"):
        load_audio(_wav_with_data_length(data, 0))
    # a shorter data length than present (a chunk follows) reads the declared part
    short = _wav_with_data_length(data, 4000)
    assert len(load_audio(short)) == int(np.ceil(1000 * 16000 / 44100))


def test_truncated_stream_formats_decode_like_reference(assets_dir, tmp_path):
    """MP3 and Ogg have no mandatory length: a cut file gives what decodes, as librosa does."""
    mp3 = (assets_dir / "media" / "test-2.mp3").read_bytes()
    ogg = _sf_bytes(_signal(44100, 2, 0.6), 44100, "OGG", "VORBIS")
    for name, data in (("cut.mp3", mp3[: len(mp3) // 2]), ("cut.ogg", ogg[: int(len(ogg) * 0.7)])):
        path = tmp_path / name
        path.write_bytes(data)
        got = load_audio(path)
        want = _librosa(path)
        assert 0 < len(got) and got.shape == want.shape and np.array_equal(got, want), name
        assert np.array_equal(load_audio(data), want)


def test_truncated_flac_and_mp4_refused(tmp_path):
    flac = _sf_bytes(_signal(44100, 2, 0.6), 44100, "FLAC", "PCM_16")
    m4a = _av_bytes("ipod", "aac", 44100, 2, 0.5)
    for name, data in (("cut.flac", flac[: len(flac) // 2]), ("cut.m4a", m4a[: len(m4a) // 2])):
        with pytest.raises(InvalidArgumentError, match="cannot decode|not a readable"):
            load_audio(data)
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidArgumentError, match=name):
            load_audio(path)


def test_non_audio_refused(assets_dir, tmp_path):
    rng = np.random.default_rng(3)
    jpeg = (assets_dir / "media" / "test-1.jpeg").read_bytes()
    bad = {
        "garbage": (bytes(rng.integers(0, 256, 5000, dtype=np.uint8)), "not a readable audio file"),
        "text": (b"Hello, this is not audio.\n" * 50, "not a readable audio file"),
        "jpeg": (jpeg, "no audio stream.*video"),
        "riff-not-wave": (b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(100), "not a readable audio file"),
        "wav-no-data-chunk": (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(16), "no data chunk"),
    }
    for name, (data, match) in bad.items():
        with pytest.raises(InvalidArgumentError, match=match):
            load_audio(data)
        path = tmp_path / f"{name}.wav"
        path.write_bytes(data)
        with pytest.raises(InvalidArgumentError, match=f"{name}.wav: .*{match}"):
            load_audio(path)
    with pytest.raises(InvalidArgumentError, match="no audio data"):
        load_audio(b"")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="empty"):
        load_audio(tmp_path / "empty.wav")


def test_non_finite_samples_in_files():
    for rate in (16000, 44100):
        x = _signal(rate, 2, 0.2)
        x[1000, 1] = np.nan
        with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
            load_audio(_sf_bytes(x, rate, "WAV", "FLOAT"))
        x[1000, 1] = np.inf
        with pytest.raises(InvalidArgumentError, match=f"NaN or infinite.*sample 1000, {1000 / rate:.3f} s"):
            load_audio(_sf_bytes(x, rate, "WAV", "FLOAT"))


@pytest.mark.parametrize("rate", [8, 999])
def test_sample_rate_below_minimum(rate):
    # (fuzz: 1 s of 16 kHz frames declared at 8 Hz is 2000 s of audio to upsample and encode)
    data = _sf_bytes(np.zeros((16000, 1), np.float32), rate, "WAV", "PCM_16")
    with pytest.raises(InvalidArgumentError, match=f"sample rate {rate} Hz is below the minimum of 1000 Hz"):
        load_audio(data)


def test_empty_audio_file():
    data = _sf_bytes(np.zeros((0, 2), np.float32), 44100, "WAV", "PCM_16")
    with pytest.raises(InvalidArgumentError, match="no samples"):
        load_audio(data)


def test_missing_pyav(monkeypatch):
    wav = _sf_bytes(_signal(44100, 2, 0.2), 44100, "WAV", "PCM_16")
    m4a = _av_bytes("ipod", "aac", 44100, 2, 0.2)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    assert len(load_audio(wav)) > 0  # libsndfile formats do not need it
    with pytest.raises(MissingDependencyError, match="pip install av") as e:
        load_audio(m4a)
    assert isinstance(e.value, ImportError) and isinstance(e.value, Error)
    assert "Format not recognised" in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(FileError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(FileError):
        load_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(FileError):
        load_audio((tmp_path / "missing.wav").as_uri())
    with pytest.raises(InvalidArgumentError, match="directory"):
        load_audio(tmp_path)
    locked = tmp_path / "locked.wav"
    sf.write(locked, _signal(16000, 1, 0.1), 16000)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running with permission to read any file")
        with pytest.raises(FileError, match="cannot read"):
            load_audio(locked)
    finally:
        locked.chmod(0o644)


@pytest.mark.parametrize(
    "src, match",
    [
        ("data:audio/wav;base64,@@@@", "bad base64"),
        ("data:audio/wav;base64", "missing ','"),
        ("data:image/png;base64,iVBORw0KGgo=", "image/png.*not audio"),
        ("data:text/plain,hello", "text/plain.*not audio"),
        ("https://example.com/a.wav", "remote audio is not fetched"),
        ("file://otherhost/a.wav", "other hosts"),
        ({"type": "input_audio", "input_audio": {"data": "###", "format": "wav"}}, "input_audio part: bad base64"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "needs"),
        ({"type": "input_audio", "input_audio": "UklGRg=="}, "needs"),
        ({"type": "input_audio", "input_audio": {"data": b"RIFF"}}, "base64 str"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": 3}}, "format must be a str"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "no audio data"),
        ({"type": "audio_url", "audio_url": {}}, "needs"),
        ({"type": "audio"}, "without audio"),
        ({"type": "image_url", "image_url": {"url": "x.png"}}, "unsupported content part type 'image_url'"),
        ({"audio": "x.wav"}, "unsupported content part type None"),
        (3.5, "expected a path.*got float"),
        ([0.0, 0.1], "got list"),
    ],
)
def test_bad_arguments(src, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_audio(src)


def test_name_labels_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="^message 0, part 1: "):
        load_audio({"type": "input_audio", "input_audio": {"data": "@@"}}, name="message 0, part 1")
    with pytest.raises(InvalidArgumentError, match="^clip: .*int16"):
        load_audio(np.zeros(3, np.int16), name="clip")
    with pytest.raises(FileError, match="^clip: no such audio file"):
        load_audio(tmp_path / "missing.wav", name="clip")
