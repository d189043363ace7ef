"""Log-mel features against the MiniCPM-o 4.5 reference (tests/ref_audio_mel.py: transformers'
WhisperFeatureExtractor with torch, as processing_minicpmo.py uses it).

* Filters: the C++ filter bank equals librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).
* Offline: _core.log_mel / log_mel_pieces within 1e-4 of offline_features for clips from one
  sample to 30 s (odd lengths, the frames at the end of the audio that still see it), pieces
  of 31 s and 65 s, the test assets, noise, silence and a near-silent clip, a maximum in a
  frame past the kept ones; n_threads does not change a bit.
* Streaming: _core.StreamingMel frame for frame against StreamingMelRef: the o4.5 simplex
  chunking with a ragged last chunk, a short first chunk (left-padded, or not), duplex
  redundancy (r = 2) fed as the duplex prefill feeds it, ragged push sizes, a 45 s stream
  through the sliding window, the same without it (30 s truncation), pushes of 16 s and
  40 s, the 5 s switch from the floor to the dynamic clamp, a maximum that only edge frames
  see, reset and flush.
* Bad input: empty, NaN, inf, wrong dtype or shape, too long, bad settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

librosa = pytest.importorskip("librosa")

from minicpm_cpp import _core  # noqa: E402
from minicpm_cpp.errors import InvalidArgumentError  # noqa: E402
from ref_audio_mel import StreamingMelRef, offline_features  # noqa: E402

SR = 16000
TOL = 1e-4
# Streaming under 5 s has no clamp: bins near the 1e-10 floor in a loud frame then carry the
# reference's float32 STFT noise (2.8e-4 on test-2.mp3). Those outputs are held to TOL against
# the reference computed in float64, and to FLOOR_TOL against the float32 reference.
FLOOR_TOL = 1e-3


def noise(n: int, scale: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str = "", tol: float = TOL) -> float:
    assert ours.dtype == np.float32 and ours.shape == ref.shape, f"{what}: {ours.shape} vs {ref.shape}"
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    assert err <= tol, f"{what}: max |diff| {err}"
    return err


@pytest.fixture(scope="module")
def speech(assets_dir) -> np.ndarray:
    """test-2.mp3 (17.4 s of speech) at 16 kHz."""
    return librosa.load(str(assets_dir / "media" / "test-2.mp3"), sr=SR)[0]


@pytest.fixture(scope="module")
def long_stream(speech) -> np.ndarray:
    """45 s: speech, a quiet stretch, louder noise, speech again (the clamp's maximum moves)."""
    return np.concatenate([speech, noise(6 * SR, 1e-3, 1), noise(4 * SR, 0.8, 2), speech, noise(SR, 0.05, 3)])[:45 * SR]


# ---------------------------------------------------------------------------------------
# Filters and offline features


def test_mel_filters_match_librosa():
    ours = _core.mel_filters()
    ref = librosa.filters.mel(sr=SR, n_fft=400, n_mels=80)
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-6


@pytest.mark.parametrize("n", [1, 159, 160, 161, 199, 200, 201, 399, 400, 1600, 12345, 16001, 8 * SR + 77, 30 * SR])
def test_offline_lengths(n, speech):
    # Speech (repeated to 30 s) from a varying offset: its range is wider than the clamp's.
    start = 7919 * n % SR
    x = np.resize(speech, start + n)[start:]
    (ref,) = offline_features(x)
    assert ref.shape == (80, -(-n // 160))
    assert_close(_core.log_mel(x), ref, f"{n} samples")
    if n >= 1600:
        assert_close(_core.log_mel(noise(n, 0.1, seed=n)), offline_features(noise(n, 0.1, seed=n))[0], "noise")


def test_offline_pieces():
    x = noise(65 * SR + 123, 0.2, seed=7)
    # 31 s is the first 31 s of the same clip: its first piece is the 65 s clip's first piece.
    for n, sizes in ((31 * SR, [3000, 100]), (len(x), [3000, 3000, 501])):
        ours, ref = _core.log_mel_pieces(x[:n]), offline_features(x[:n])
        assert [p.shape[1] for p in ref] == sizes
        assert len(ours) == len(ref)
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_close(a, b, f"{n} samples, piece {i}")
    assert np.array_equal(_core.log_mel_pieces(x[:SR])[0], _core.log_mel(x[:SR]))


def test_offline_assets(assets_dir, speech):
    clips = [librosa.load(str(p), sr=SR)[0] for p in sorted((assets_dir / "media").glob("*.wav"))]
    assert len(clips) >= 3
    for i, clip in enumerate(clips + [speech]):
        assert_close(_core.log_mel(clip), offline_features(clip)[0], f"asset {i}")


def test_offline_silence_and_near_silence():
    zeros = np.zeros(2 * SR + 5, dtype=np.float32)
    ours = _core.log_mel(zeros)
    assert_close(ours, offline_features(zeros)[0], "silence")
    assert np.all(ours == -1.5)   # log10(1e-10) = -10, (-10 + 4) / 4
    for scale in (1e-7, 1e-5):
        quiet = noise(3 * SR, scale, seed=11)
        assert_close(_core.log_mel(quiet), offline_features(quiet)[0], f"noise at {scale}")
    # A tone that stops: the frames after it see only the zero padding.
    tone = (1e-4 * np.sin(2 * np.pi * 440 * np.arange(SR + 37) / SR)).astype(np.float32)
    assert_close(_core.log_mel(tone), offline_features(tone)[0], "quiet tone")


def test_offline_max_includes_frames_past_the_audio():
    # A loud last sample of a clip of 160 m samples lies at the centre of frame m, which is not
    # kept but whose maximum sets the clamp (2 above the kept frames' maximum, and the noise
    # reaches below both thresholds).
    x = noise(160 * 400, 1e-4, seed=4)
    x[-1] = 0.9
    ours, (ref,) = _core.log_mel(x), offline_features(x)
    assert ours.shape == (80, 400)
    assert_close(ours, ref, "loud last sample")


def test_offline_threads_identical(speech):
    one = _core.log_mel(speech, n_threads=1)
    assert np.array_equal(one, _core.log_mel(speech, n_threads=3))
    assert np.array_equal(one, _core.log_mel(speech, n_threads=0))
    strided = np.repeat(speech, 2)[::2]   # non-contiguous input is copied
    assert np.array_equal(one, _core.log_mel(strided))


# ---------------------------------------------------------------------------------------
# Streaming


class StreamCheck:
    """Our stream beside the reference's; the float64 reference runs while the clamp is off."""

    def __init__(self, **cfg):
        self.ours, self.ref = _core.StreamingMel(**cfg), StreamingMelRef(**cfg)
        self.ref64 = StreamingMelRef(dtype=torch.float64, **cfg)
        self.worst = 0.0

    def check(self, ours: np.ndarray, ref: np.ndarray, ref64, what: str) -> np.ndarray:
        if len(self.ref.buffer) >= 5 * SR:
            self.ref64 = None    # dynamic from here on: floor mode does not come back
            self.worst = max(self.worst, assert_close(ours, ref, what))
        else:
            assert ref64 is not None, f"{what}: floor mode after the dynamic clamp"
            self.worst = max(self.worst, assert_close(ours, ref64, what + " (float64)"))
            assert_close(ours, ref, what, tol=FLOOR_TOL)
        return ours

    def push(self, chunk: np.ndarray, is_last: bool = False, what: str = "push") -> np.ndarray:
        assert self.ours.next_chunk_samples == self.ref.next_chunk_samples()
        ref64 = self.ref64.process(chunk, is_last_chunk=is_last) if self.ref64 else None
        return self.check(self.ours.push(chunk, is_last=is_last), self.ref.process(chunk, is_last_chunk=is_last),
                          ref64, what)

    def flush(self) -> np.ndarray:
        ref64 = self.ref64.flush() if self.ref64 else None
        out = self.check(self.ours.flush(), self.ref.flush(), ref64, "flush")
        assert self.ours.frames_emitted == self.ref.last_emitted
        return out


def run_stream(chunks, last: bool = True, **cfg) -> dict:
    """Pushes `chunks` through both implementations, comparing every output and the flush."""
    s = StreamCheck(**cfg)
    emitted = []
    for i, chunk in enumerate(chunks):
        is_last = last and i == len(chunks) - 1
        emitted.append(s.push(chunk, is_last, f"push {i} ({len(chunk)} samples)").shape[1])
    return {"emitted": emitted, "flushed": s.flush().shape[1], "worst": s.worst}


def simplex_chunks(x: np.ndarray, first: int = 16560, size: int = 16000):
    out = [x[:first]]
    for at in range(first, len(x), size):
        out.append(x[at:at + size])
    return out


def test_streaming_simplex(speech):
    chunks = simplex_chunks(speech)
    assert len(chunks[-1]) != 16000   # a ragged last chunk
    r = run_stream(chunks)
    assert r["emitted"][:-1] == [100] * (len(chunks) - 1)
    # The last chunk emits up to one chunk's frames, computed on the reflected buffer end.
    assert r["emitted"][-1] == len(speech) // 160 - 100 * (len(chunks) - 1)
    # Without is_last the tail waits; flush then gives every frame left.
    r = run_stream(chunks, last=False)
    assert r["flushed"] > 0


def test_streaming_short_first_chunk(speech):
    x = speech[:5 * SR + 999]
    # streaming_prefill's rule: a first chunk under 1035 ms is left-padded with zeros.
    r = run_stream([x[:8000]] + [x[8000 + i:8000 + i + 16000] for i in range(0, len(x) - 8000, 16000)])
    assert r["emitted"][0] == 100
    ours = _core.StreamingMel()
    padded = ours.push(x[:8000])
    plain = _core.StreamingMel().push(np.concatenate([np.zeros(16560 - 8000, np.float32), x[:8000]]))
    assert np.array_equal(padded, plain)
    # Without the rule a short first chunk waits for more audio.
    r = run_stream([x[:8000], x[8000:24000], x[24000:]], pad_first_chunk=False)
    assert r["emitted"][0] == 0


def test_streaming_duplex_redundancy(speech):
    # The duplex prefill left-pads its audio to 1035 ms and feeds next_chunk_samples() at a time.
    x = np.concatenate([np.zeros(560, np.float32), speech[:9 * SR]])
    chunks = simplex_chunks(x, first=16480)
    r = run_stream(chunks, cnn_redundancy_ms=20, pad_first_chunk=False)
    assert r["emitted"][0] == 102 and set(r["emitted"][1:-1]) == {104}
    # And the simplex chunking with redundancy.
    run_stream(simplex_chunks(speech[:7 * SR]), cnn_redundancy_ms=20)


def test_streaming_ragged_pushes(speech):
    rng = np.random.default_rng(5)
    sizes = [int(s) for s in rng.integers(100, 30000, size=30)]
    bounds = np.cumsum([0] + sizes)
    x = np.concatenate([speech, speech])[: bounds[-1]]
    chunks = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    r = run_stream(chunks, cnn_redundancy_ms=20)
    assert sum(r["emitted"]) > 0


def test_streaming_sliding_window(long_stream):
    r = run_stream(simplex_chunks(long_stream))
    assert sum(r["emitted"]) + r["flushed"] == len(long_stream) // 160


def test_streaming_without_sliding_window(long_stream):
    # The buffer grows past 30 s; WhisperFeatureExtractor truncates it to 30 s, so nothing
    # past frame 3000 ever comes out.
    r = run_stream(simplex_chunks(long_stream), sliding_window=False)
    assert sum(r["emitted"]) + r["flushed"] == 3000


def test_streaming_long_pushes(long_stream):
    # 16 s at once at 28 s: the window slides once and still holds 34 s, of which the first
    # 30 s are analysed (the clamp's maximum includes the frames reflected at 30 s).
    chunks = simplex_chunks(long_stream)
    r = run_stream(chunks[:28] + [np.concatenate(chunks[28:44])] + chunks[44:])
    assert r["emitted"][28] == 100
    # A push of 40 s: the reference emits one chunk per push, and here its frames have
    # already slid out of the buffer, so nothing comes out.
    r = run_stream([long_stream[:16560], long_stream[16560:16560 + 40 * SR], long_stream[16560 + 40 * SR:]])
    assert r["emitted"] == [100, 0, 0]


def test_streaming_floor_to_dynamic(speech):
    # 3 s of speech, then near silence, pushed 500 ms at a time: the near-silent frames emitted
    # before the buffer holds 5 s keep their unclamped values, later ones are clamped at max - 8.
    x = np.concatenate([speech[:3 * SR], noise(int(2.5 * SR), 1e-6, 9), speech[3 * SR:4 * SR]])
    r = run_stream(simplex_chunks(x, first=16560, size=8000), chunk_ms=500)
    assert r["emitted"][:-1] == [50] * (len(r["emitted"]) - 1)


def test_streaming_edge_frames_set_the_clamp():
    # The clamp's maximum comes from frames at a reflected edge: an impulse in the first 200
    # samples (frames 0 and 1 only), one in the last 100 samples of a push (only the frames
    # past the last stable one see it), and one 50 samples after the first slide's cut.
    x = noise(40 * SR, 1e-3, seed=8)
    x[50] = 0.9
    x[10 * SR + 50] = 1.0
    chunks = simplex_chunks(x)
    chunks[7][-60] = 0.95
    run_stream(chunks)


def test_streaming_tiny_pushes_and_reset(speech):
    s = StreamCheck(pad_first_chunk=False)
    ours = s.ours
    # Under 400 samples the reference raises (the samples stay buffered); ours emits nothing.
    assert ours.push(speech[:100]).shape == (80, 0)
    for ref in (s.ref, s.ref64):
        with pytest.raises(ValueError):
            ref.process(speech[:100])
    for a, b in ((100, 20000), (20000, 36000)):
        s.check(ours.push(speech[a:b]), s.ref.process(speech[a:b]), s.ref64.process(speech[a:b]), f"[{a}, {b})")
    assert ours.buffered_samples == 36000
    ours.reset()
    assert ours.buffered_samples == 0 and ours.frames_emitted == 0 and ours.next_chunk_samples == 16480
    fresh = _core.StreamingMel(pad_first_chunk=False)
    for a, b in ((0, 20000), (20000, 36000)):
        assert np.array_equal(ours.push(speech[a:b]), fresh.push(speech[a:b]))
    assert _core.StreamingMel().flush().shape == (80, 0)


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.0, np.nan, 0.0], np.float32), "sample 1 is NaN"),
    (np.array([0.0, 0.0, np.inf], np.float32), "sample 2 is infinite"),
    (np.zeros(100, np.float64), "float32"),
    (np.zeros(100, np.int16), "float32"),
    (np.zeros((2, 100), np.float32), "1-D"),
    ([0.0] * 100, "numpy float32 array"),
])
def test_bad_input(bad, match):
    with pytest.raises(InvalidArgumentError, match=match):
        _core.log_mel(bad)
    with pytest.raises(InvalidArgumentError, match=match):
        _core.log_mel_pieces(bad)
    if match != "empty":
        with pytest.raises(InvalidArgumentError, match=match):
            _core.StreamingMel().push(bad)


def test_bad_arguments(speech):
    with pytest.raises(InvalidArgumentError, match="at most 480000"):
        _core.log_mel(np.zeros(30 * SR + 1, np.float32))
    with pytest.raises(InvalidArgumentError, match="n_threads"):
        _core.log_mel(speech, n_threads=-1)
    for kwargs in ({"chunk_ms": 0}, {"first_chunk_ms": -1}, {"cnn_redundancy_ms": -20},
                   {"slide_stride_s": 0.0}, {"slide_trigger_s": 10.0, "slide_stride_s": 10.0},
                   {"slide_trigger_s": float("nan")}):
        with pytest.raises(InvalidArgumentError):
            _core.StreamingMel(**kwargs)
    _core.StreamingMel(sliding_window=False, slide_stride_s=0.0)   # unused when not sliding


def test_bad_push_leaves_stream_unchanged(speech):
    s = StreamCheck()
    chunks = simplex_chunks(speech[:4 * SR])
    s.push(chunks[0])
    poisoned = chunks[1].copy()
    poisoned[-1] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        s.ours.push(poisoned)
    for c in chunks[1:]:
        s.push(c)
