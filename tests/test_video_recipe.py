"""Video input (python/minicpm_cpp/video.py): the official frame sampling recipes and PyAV decoding.

* The MiniCPM-V 4.5 README's ``encode_video`` is ported here as the reference (same statements,
  decord's VideoReader replaced by a stand-in holding a frame count and an average fps) and compared
  with ``video.v45_plan`` over frame counts / rates / durations from 0.5 s to 3 h, 1-120 fps, every
  branch (packing 1, packing <= MAX_NUM_PACKING, capped) and ``force_packing``.
* The MiniCPM-V 2.6 README's ``encode_video`` likewise; MiniCPM-o 4.5's recipe is compared with
  the real ``minicpmo.utils.get_video_frame_audio_segments`` (minicpmo-utils) on a file.
* Decoding: lossless synthetic videos written here (libx264rgb at qp 0, rgb24, with B-frames and
  keyframes every few frames; FFV1) decode to exactly the frames written; frame count and fps equal
  decord's where decord is installed; a variable-frame-rate file; a long file where only the chosen
  frames are converted and the Python-side memory stays bounded; bad inputs give clear errors.
* Content parts (content.py) and CLI flags (cli.py) build the frames + temporal_ids parts.
"""

from __future__ import annotations

import fractions
import math
import tracemalloc

import numpy as np
import pytest

av = pytest.importorskip("av")

import minicpm_cpp
from minicpm_cpp import video as V
from minicpm_cpp.content import normalise_messages
from minicpm_cpp.errors import Error, FileError, InvalidArgumentError

# ------------------------------------------------------------------------------------------------
# The reference: MiniCPM-V 4.5 README (model card), "Chat with Video", ported statement by statement.
# Only the VideoReader is a stand-in (frame count + average fps; get_batch records the indices).

cKDTree = pytest.importorskip("scipy.spatial").cKDTree  # the README's `from scipy.spatial import cKDTree`


class FakeVR:
    def __init__(self, n, fps):
        self.n, self.fps, self.batches = n, fps, []

    def __len__(self):
        return self.n

    def get_avg_fps(self):
        return self.fps

    def get_batch(self, idx):
        self.batches.append(list(np.asarray(idx).tolist()))

        class _B:
            def asnumpy(_self):
                return np.zeros((len(idx), 1, 1, 3), np.uint8)

        return _B()


def ref_encode_video(vr, choose_fps=3, force_packing=None, MAX_NUM_FRAMES=180, MAX_NUM_PACKING=3):
    TIME_SCALE = 0.1

    def map_to_nearest_scale(values, scale):
        tree = cKDTree(np.asarray(scale)[:, None])
        _, indices = tree.query(np.asarray(values)[:, None])
        return np.asarray(scale)[indices]

    def group_array(arr, size):
        return [arr[i:i + size] for i in range(0, len(arr), size)]

    def uniform_sample(l, n):
        gap = len(l) / n
        idxs = [int(i * gap + gap / 2) for i in range(n)]
        return [l[i] for i in idxs]

    fps = vr.get_avg_fps()
    video_duration = len(vr) / fps

    if choose_fps * int(video_duration) <= MAX_NUM_FRAMES:
        packing_nums = 1
        choose_frames = round(min(choose_fps, round(fps)) * min(MAX_NUM_FRAMES, video_duration))
    else:
        packing_nums = math.ceil(video_duration * choose_fps / MAX_NUM_FRAMES)
        if packing_nums <= MAX_NUM_PACKING:
            choose_frames = round(video_duration * choose_fps)
        else:
            choose_frames = round(MAX_NUM_FRAMES * MAX_NUM_PACKING)
            packing_nums = MAX_NUM_PACKING

    frame_idx = [i for i in range(0, len(vr))]
    frame_idx = np.array(uniform_sample(frame_idx, choose_frames))

    if force_packing:
        packing_nums = min(force_packing, MAX_NUM_PACKING)

    frames = vr.get_batch(frame_idx).asnumpy()

    frame_idx_ts = frame_idx / fps
    scale = np.arange(0, video_duration, TIME_SCALE)

    frame_ts_id = map_to_nearest_scale(frame_idx_ts, scale) / TIME_SCALE
    frame_ts_id = frame_ts_id.astype(np.int32)

    assert len(frames) == len(frame_ts_id)

    frame_ts_id_group = group_array(frame_ts_id, packing_nums)
    return frame_idx.tolist(), packing_nums, [g.tolist() for g in frame_ts_id_group]


def ref_encode_video_v26(vr, MAX_NUM_FRAMES=64):
    """MiniCPM-V 2.6 README (docs/minicpm_v2dot6_en.md of OpenBMB/MiniCPM-V) encode_video."""

    def uniform_sample(l, n):
        gap = len(l) / n
        idxs = [int(i * gap + gap / 2) for i in range(n)]
        return [l[i] for i in idxs]

    sample_fps = round(vr.get_avg_fps() / 1)  # FPS
    frame_idx = [i for i in range(0, len(vr), sample_fps)]
    if len(frame_idx) > MAX_NUM_FRAMES:
        frame_idx = uniform_sample(frame_idx, MAX_NUM_FRAMES)
    return frame_idx


DURATIONS = [0.5, 0.9, 1.0, 2.5, 10, 59.9, 60, 60.4, 61, 90, 179.5, 180, 181, 300, 600, 1800, 3600, 10800]
RATES = [1, 2.5, 10, 23.976, 24, 25, 29.97, 30, 50, 59.94, 60, 120]


def _cases():
    for d in DURATIONS:
        for f in RATES:
            n = max(1, int(round(d * f)))
            yield n, f


def _compare_v45(n, f, choose_fps, max_packing, force_packing, max_frames=180):
    try:
        ref = ref_encode_video(FakeVR(n, f), choose_fps, force_packing, max_frames, max_packing)
    except ZeroDivisionError:  # the README's uniform_sample with 0 frames to choose
        with pytest.raises(V.VideoError):
            V.v45_plan(n, f, choose_fps=choose_fps, max_frames=max_frames, max_packing=max_packing,
                       force_packing=force_packing)
        return "short"
    plan = V.v45_plan(n, f, choose_fps=choose_fps, max_frames=max_frames, max_packing=max_packing,
                      force_packing=force_packing)
    assert (plan.frame_idx, plan.packing, plan.temporal_ids) == ref, (n, f, choose_fps, max_packing, force_packing)
    if plan.packing == 1 and not force_packing:
        return "p1"
    return "capped" if len(plan.frame_idx) == max_frames * max_packing and not force_packing else "packed"


def test_v45_plan_equals_readme_encode_video():
    seen = set()
    for k, (n, f) in enumerate(_cases()):
        seen.add(_compare_v45(n, f, 3, 3, None))  # the README's defaults
        seen.add(_compare_v45(n, f, (1, 5, 10, 2.5)[k % 4], 3, None))
    # max packing over its valid range, and force_packing (0 = not forced, as `if force_packing:`)
    for k, (n, f) in enumerate(list(_cases())[::7]):
        seen.add(_compare_v45(n, f, 3, (1, 2, 6)[k % 3], None))
        seen.add(_compare_v45(n, f, 5, 3, (0, 1, 2, 3, 6)[k % 5]))
    # a small MAX_NUM_FRAMES
    for n, f in list(_cases())[::11]:
        seen.add(_compare_v45(n, f, 3, 3, None, max_frames=32))
    assert {"p1", "packed", "capped", "short"} <= seen


def test_v45_plan_without_scipy(monkeypatch):
    """Without scipy the nearest 0.1 s point is found with numpy: the same ids as cKDTree except
    at exact ties (a frame time halfway between two points, e.g. 0.05 s), where cKDTree's answer
    depends on its tree and the fallback takes the lower point."""
    import builtins

    cases = list(_cases())[::5] + [(200, 20), (600, 20), (1000, 40), (30000, 40)]
    refs = []
    for k, (n, f) in enumerate(cases):
        try:
            refs.append(ref_encode_video(FakeVR(n, f), (3, 10)[k % 2]))
        except ZeroDivisionError:
            refs.append(None)
    real_import = builtins.__import__

    def no_scipy(name, *a, **kw):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    n_ties = 0
    for k, ((n, f), ref) in enumerate(zip(cases, refs)):
        if ref is None:
            continue
        p = V.v45_plan(n, f, choose_fps=(3, 10)[k % 2])
        assert (p.frame_idx, p.packing) == ref[:2]
        scale = np.arange(0, n / f, 0.1)
        got = [i for g in p.temporal_ids for i in g]
        exp = [i for g in ref[2] for i in g]
        for fi, a, b in zip(p.frame_idx, got, exp):
            if a != b:
                x = fi / f
                j = min(int(np.searchsorted(scale, x)), len(scale) - 1)
                # (the two points differ by one step; their ids by 1 or 2, the README truncating k * 0.1 / 0.1)
                assert abs(a - b) <= 2 and (x - scale[j - 1]) ** 2 == (scale[j] - x) ** 2, (n, f, fi, a, b)
                n_ties += 1
    assert n_ties > 0  # the cases hold ties, so the rule above was exercised


def test_v45_known_values():
    # 60 s at 30 fps, choose_fps 3: 180 frames, packing 1 (the benchmark's case)
    p = V.v45_plan(1800, 30.0)
    assert len(p.frame_idx) == 180 and p.packing == 1 and len(p.temporal_ids) == 180
    # 10 min: packing ceil(1800 / 180) = 10 > 3 -> 540 frames in groups of 3
    p = V.v45_plan(18000, 30.0)
    assert len(p.frame_idx) == 540 and p.packing == 3 and all(len(g) == 3 for g in p.temporal_ids)
    p = V.v45_plan(18000, 30.0, max_packing=6)
    assert len(p.frame_idx) == 1080 and p.packing == 6
    # force_packing caps at max_packing
    assert V.v45_plan(300, 30.0, force_packing=6).packing == 3
    # the ids are the frame times in 0.1 s steps, truncated as the README's astype(np.int32) of
    # (k * 0.1) / 0.1: a few come out one lower (4.3 s -> 42.99999... -> 42)
    p = V.v45_plan(100, 10.0, choose_fps=10)
    ids = [g[0] for g in p.temporal_ids]
    assert ids == (np.arange(0, 10.0, 0.1) / 0.1).astype(np.int32).tolist()
    assert ids[43] == 42 and sum(a != b for a, b in zip(ids, range(100))) < 20


def test_v45_option_errors():
    for bad in (0, 7, -1, 2.5, True, "3"):
        with pytest.raises(InvalidArgumentError):
            V.v45_plan(100, 30.0, max_packing=bad)
    for bad in (7, -1, 1.5):
        with pytest.raises(InvalidArgumentError):
            V.v45_plan(100, 30.0, force_packing=bad)
    for bad in (0, -3, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            V.v45_plan(100, 30.0, choose_fps=bad)
    with pytest.raises(V.VideoError, match="no frames"):
        V.v45_plan(0, 30.0)
    with pytest.raises(V.VideoError, match="frame rate"):
        V.v45_plan(10, 0.0)
    # too short to sample: 0.1 s at 3 fps chooses round(0.3) = 0 frames (the README would divide by 0)
    with pytest.raises(V.VideoError, match="too short"):
        V.v45_plan(3, 30.0)


def test_v26_plan_equals_readme_encode_video():
    for n, f in _cases():
        assert V.v26_plan(n, f).frame_idx == ref_encode_video_v26(FakeVR(n, f)), (n, f)
        assert V.v26_plan(n, f, max_frames=16).frame_idx == ref_encode_video_v26(FakeVR(n, f), 16), (n, f)


def test_o45_plan_frames():
    # <= 64 s: one frame per second, int(i * fps)
    p = V.o45_plan(300, 30.0)
    assert p.frame_idx == [int(i * 30.0) for i in range(10)] and p.timestamps == list(range(10))
    p = V.o45_plan(int(29.97 * 10.5), 29.97)
    assert len(p.frame_idx) == 11
    # > 64 s: 0.1 s steps reduced to 64 by linspace
    p = V.o45_plan(30 * 600, 30.0)
    stamps = [round(i * 0.1, 1) for i in range(int(600 / 0.1))]
    sel = np.linspace(0, len(stamps) - 1, 64, dtype=int)
    assert p.timestamps == [stamps[i] for i in sel]
    assert p.frame_idx == [min(int(stamps[i] * 30.0), 30 * 600 - 1) for i in sel]


# ------------------------------------------------------------------------------------------------
# Synthetic files


def frame_image(i: int, w: int = 32, h: int = 24) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_video(path, n, fps=30, w=32, h=24, codec="libx264rgb", gop=8, pts_ms=None, audio=None, fmt=None):
    """n lossless frames (frame_image(i)); pts_ms: per-frame times in ms (variable frame rate);
    audio: 16 kHz int16 mono samples muxed as PCM."""
    out = av.open(str(path), "w", format=fmt)
    s = out.add_stream(codec, rate=fps)
    s.width, s.height = w, h
    if codec == "libx264rgb":
        s.pix_fmt = "rgb24"
        s.options = {"qp": "0", "preset": "ultrafast", "g": str(gop), "bf": "2"}
    elif codec == "libx264":  # lossy yuv420p, as cameras record (compared with decord only)
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(gop), "bf": "2"}
    else:
        s.pix_fmt = "bgr0"
        s.options = {"g": str(gop)}
    if pts_ms is not None:
        s.codec_context.time_base = fractions.Fraction(1, 1000)
    a = None
    if audio is not None:
        a = out.add_stream("pcm_s16le", rate=16000, layout="mono")
    for i in range(n):
        fr = av.VideoFrame.from_ndarray(frame_image(i, w, h), format="rgb24")
        if pts_ms is not None:
            fr.pts, fr.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
        for p in s.encode(fr):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    if a is not None:
        for k in range(0, len(audio), 1600):
            chunk = np.ascontiguousarray(audio[None, k:k + 1600])
            af = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            af.sample_rate, af.pts = 16000, k
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    out.close()
    return path


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    gaps = np.where(np.arange(89) % 3 == 0, 80, 20)  # 20 / 80 ms: a variable frame rate
    return {
        "mkv": write_video(d / "a.mkv", 100),
        "mp4": write_video(d / "a.mp4", 100),
        "ffv1": write_video(d / "b.mkv", 40, fps=25, codec="ffv1"),
        "vfr": write_video(d / "vfr.mkv", 90, pts_ms=np.r_[0, np.cumsum(gaps)]),
        "yuv": write_video(d / "yuv.mp4", 60, w=66, h=38, codec="libx264"),
        "dir": d,
    }


def _decord():
    try:
        import decord
    except Exception:
        return None
    return decord


@pytest.mark.parametrize("key", ["mkv", "mp4", "ffv1", "vfr"])
def test_decode_lossless_exact(vids, key):
    path = vids[key]
    n = {"mkv": 100, "mp4": 100, "ffv1": 40, "vfr": 90}[key]
    for kw in ({"fps": 10}, {"fps": 3}, {"recipe": "v26"}, {"recipe": "o45"}, {"fps": 30, "force_packing": 2}):
        v = minicpm_cpp.load_video(path, **kw)
        assert len(v.frames) == len(v.frame_indices) > 0
        for fr, i in zip(v.frames, v.frame_indices):
            assert fr.dtype == np.uint8 and fr.shape == (24, 32, 3)
            np.testing.assert_array_equal(fr, frame_image(i))
        if v.recipe == "v45":
            assert sum(len(g) for g in v.temporal_ids) == len(v.frames)
    info = V.probe_video(path)
    assert info["n_packets"] == n


@pytest.mark.parametrize("key", ["mkv", "mp4", "ffv1", "vfr", "yuv"])
def test_probe_and_frames_as_decord(vids, key):
    """Frame count, fps and RGB frames equal decord's (yuv: H.264 yuv420p converted to RGB as
    decord converts it, odd sizes included)."""
    decord = _decord()
    if decord is None:
        pytest.skip("decord is not installed")
    path = str(vids[key])
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    info = V.probe_video(path)
    assert info["n_frames"] == len(vr)
    assert info["fps"] == vr.get_avg_fps()
    v = minicpm_cpp.load_video(path, fps=10)
    ref = vr.get_batch(v.frame_indices).asnumpy()
    for a, b in zip(v.frames, ref):
        np.testing.assert_array_equal(a, b)


def test_recipe_chat_settings(vids):
    """The model-call settings each recipe's source gives for video (use_image_id off; slices: V4.5
    README 1, V2.6 README 2, o2.6 demo 2 up to 16 frames else 1, o4.5 streaming_prefill 1)."""
    assert minicpm_cpp.load_video(vids["mkv"]).chat_settings == {"use_image_id": False, "max_slice_nums": 1}
    assert minicpm_cpp.load_video(vids["mkv"], recipe="v26").chat_settings["max_slice_nums"] == 2
    assert minicpm_cpp.load_video(vids["mkv"], recipe="o26").chat_settings["max_slice_nums"] == 2
    assert minicpm_cpp.load_video(vids["mkv"], recipe="o26", fps=10).chat_settings["max_slice_nums"] == 1
    assert minicpm_cpp.load_video(vids["mkv"], recipe="o45").chat_settings == {"use_image_id": False,
                                                                              "max_slice_nums": 1}
    with pytest.raises(InvalidArgumentError, match="fps"):
        minicpm_cpp.load_video(vids["mkv"], recipe="o45", fps=2)
    with pytest.raises(InvalidArgumentError, match="omni"):
        minicpm_cpp.load_video(vids["mkv"], audio=True)


def test_vfr_indexing(vids):
    """A variable-frame-rate file: frame i is the i-th frame in presentation order, the rate is
    the stream's average (decord's), and the recipe works on index / average fps."""
    v = minicpm_cpp.load_video(vids["vfr"], fps=30)
    info = V.probe_video(vids["vfr"])
    plan = V.v45_plan(info["n_frames"], info["fps"], choose_fps=30)
    assert v.frame_indices == plan.frame_idx and v.temporal_ids == plan.temporal_ids
    for fr, i in zip(v.frames, v.frame_indices):
        np.testing.assert_array_equal(fr, frame_image(i))


def test_long_video_only_chosen_frames_converted(tmp_path, monkeypatch):
    """400 s at 10 fps (4000 frames, keyframe every 50): choose_fps 3 -> packing ceil(1200/180) = 7
    > 3 -> 540 frames at packing 3. Only those are converted, memory is the chosen frames."""
    path = write_video(tmp_path / "long.mkv", 4000, fps=10, w=16, h=16, gop=50)
    calls = []
    real = V._to_rgb
    monkeypatch.setattr(V, "_to_rgb", lambda fr: calls.append(fr.pts) or real(fr))
    tracemalloc.start()
    v = minicpm_cpp.load_video(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(v.frames) == 540 and v.packing == 3 and len(v.temporal_ids) == 180
    assert len(calls) == len(set(v.frame_indices))
    for fr, i in zip(v.frames[::37], v.frame_indices[::37]):
        np.testing.assert_array_equal(fr, frame_image(i, 16, 16))
    # all 4000 frames as RGB would be 3 MB; the chosen ones are 0.4 MB
    assert peak < 2_000_000, peak


def test_sparse_choice_seeks(tmp_path, monkeypatch):
    """Frames far apart: the decoder seeks to the keyframe before each, and does not decode the
    whole file (counted by decoded frames)."""
    path = write_video(tmp_path / "sparse.mkv", 1200, fps=10, w=16, h=16, gop=10)
    v = minicpm_cpp.load_video(path, recipe="v26", max_frames=8)
    assert len(v.frames) == 8
    for fr, i in zip(v.frames, v.frame_indices):
        np.testing.assert_array_equal(fr, frame_image(i, 16, 16))
    decoded = []
    real_decode = av.container.InputContainer.decode

    def counting(self, *a, **k):
        for fr in real_decode(self, *a, **k):
            decoded.append(1)
            yield fr

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    minicpm_cpp.load_video(path, recipe="v26", max_frames=8)
    assert 8 <= len(decoded) < 8 * 25, len(decoded)


def test_raw_stream_without_timestamps(tmp_path):
    """A raw H.264 elementary stream: no timestamps, not seekable. Frames are counted from the
    start in order (the file is read again after indexing); decord refuses such a file ("broken
    metadata"), so this is the one place the decoder does more than the reference's reader."""
    path = write_video(tmp_path / "raw.h264", 50, fmt="h264")
    v = minicpm_cpp.load_video(path, fps=10)
    assert v.n_frames == 50 and v.fps == 25.0 and len(v.frames) == 20  # the raw demuxer's 25 fps
    for fr, i in zip(v.frames, v.frame_indices):
        np.testing.assert_array_equal(fr, frame_image(i))


def test_seek_landing_after_target(vids, monkeypatch):
    """A demuxer whose seek lands one keyframe late (as timestamp seeks on dts can): the decoder
    steps back to an earlier keyframe and still returns the exact frames."""
    real_seek = av.container.InputContainer.seek
    stream_tb = {}

    def late_seek(self, offset, *a, **k):
        s = k.get("stream")
        step = stream_tb.setdefault("step", None)
        if s is not None and step is None:
            stream_tb["step"] = step = int(round(8 / (s.average_rate * s.time_base)))  # one GOP of 8
        return real_seek(self, offset + (step or 0) if offset > 0 else offset, *a, **k)  # the start stays exact

    monkeypatch.setattr(av.container.InputContainer, "seek", late_seek)
    v = minicpm_cpp.load_video(vids["mkv"], recipe="v26")
    assert len(v.frames) == 4
    for fr, i in zip(v.frames, v.frame_indices):
        np.testing.assert_array_equal(fr, frame_image(i))


def test_o45_recipe_as_minicpmo_utils(tmp_path):
    """MiniCPM-o 4.5: frames and audio pieces equal minicpmo.utils.get_video_frame_audio_segments
    (decord path; the audio given as the same PCM in a WAV file, which librosa reads with
    libsndfile)."""
    decord = _decord()
    if decord is None:
        pytest.skip("decord is not installed")
    # minicpmo.utils imports decord, librosa and PIL only (no torch / torchaudio), so it does not
    # need speech_ref's torchaudio stand-in (whose stepaudio2 import costs ~20 s here).
    try:
        from minicpmo.utils import get_video_frame_audio_segments
    except Exception as e:  # pragma: no cover
        pytest.skip(f"minicpmo.utils does not import: {e}")

    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(16000 * 7 + 3000) * 3000).clip(-32768, 32767).astype(np.int16)
    path = write_video(tmp_path / "omni.mkv", 75, fps=10, audio=pcm)
    wav = tmp_path / "omni.wav"
    import soundfile as sf

    sf.write(str(wav), pcm, 16000, subtype="PCM_16")
    ref_frames, ref_audio, _ = get_video_frame_audio_segments(str(path), audio_path=str(wav))
    v = minicpm_cpp.load_video(path, recipe="o45", audio=True)
    assert len(v.frames) == len(ref_frames) == 8
    for a, b in zip(v.frames, ref_frames):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert len(v.audio) == len(ref_audio)
    for a, b in zip(v.audio, ref_audio):
        np.testing.assert_array_equal(a, b)
    content = v.to_content()
    assert len(content) == 16 and content[1] is v.audio[0]
    # o2.6 omni: "<unit>", frame, 1 s of audio
    u = minicpm_cpp.load_video(path, recipe="o26", audio=True)
    c = u.to_content()
    assert c[0] == "<unit>" and len(c) == 3 * math.ceil(u.duration)
    np.testing.assert_array_equal(u.audio[0], pcm[:16000].astype(np.float32) / 32768)


def test_audio_none_without_track(vids):
    v = minicpm_cpp.load_video(vids["mkv"], recipe="o45", audio=True)
    assert v.audio is None and len(v.frames) == 4


# ------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs(vids, tmp_path):
    d = tmp_path
    with pytest.raises(FileError):
        minicpm_cpp.load_video(d / "missing.mp4")
    (d / "empty.mp4").write_bytes(b"")
    with pytest.raises(minicpm_cpp.VideoError, match="empty"):
        minicpm_cpp.load_video(d / "empty.mp4")
    (d / "junk.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(minicpm_cpp.VideoError, match="not a readable video"):
        minicpm_cpp.load_video(d / "junk.mp4")
    # a cut Matroska file: the frames present are indexed (as decord does) and decode exactly
    data = vids["mkv"].read_bytes()
    (d / "cut.mkv").write_bytes(data[: len(data) // 2])
    v = minicpm_cpp.load_video(d / "cut.mkv", fps=30)
    assert 0 < v.n_frames < 100
    for fr, i in zip(v.frames, v.frame_indices):
        np.testing.assert_array_equal(fr, frame_image(i))
    # garbage in the middle of the stream: frames or a VideoError, never a crash
    bad = bytearray(data)
    bad[len(bad) // 3: len(bad) // 3 + 20000] = np.random.default_rng(2).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (d / "corrupt.mkv").write_bytes(bytes(bad))
    try:
        v = minicpm_cpp.load_video(d / "corrupt.mkv", fps=30)
        assert len(v.frames) == len(v.frame_indices)
    except minicpm_cpp.VideoError:
        pass
    mp4 = vids["mp4"].read_bytes()
    (d / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    with pytest.raises(minicpm_cpp.VideoError):
        minicpm_cpp.load_video(d / "cut.mp4")
    # a video stream without frames (the file holds audio packets only)
    out = av.open(str(d / "zero.mkv"), "w")
    s = out.add_stream("ffv1", rate=25)
    s.width, s.height, s.pix_fmt = 16, 16, "bgr0"
    a = out.add_stream("pcm_s16le", rate=16000, layout="mono")
    af = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
    af.sample_rate, af.pts = 16000, 0
    for p in a.encode(af):
        out.mux(p)
    for p in a.encode():
        out.mux(p)
    out.close()
    with pytest.raises(minicpm_cpp.VideoError, match="no frames|not a readable"):
        minicpm_cpp.load_video(d / "zero.mkv")
    # audio only
    from minicpm_cpp.wav import write_wav

    write_wav(str(d / "tone.wav"), np.zeros(2400, np.float32))
    with pytest.raises(minicpm_cpp.VideoError, match="no video stream"):
        minicpm_cpp.load_video(d / "tone.wav")
    with pytest.raises(InvalidArgumentError, match="directory"):
        minicpm_cpp.load_video(d)
    for bad in (0, 7):
        with pytest.raises(InvalidArgumentError, match="max_packing"):
            minicpm_cpp.load_video(vids["mkv"], max_packing=bad)
    with pytest.raises(InvalidArgumentError, match="network"):
        minicpm_cpp.load_video("https://example.com/a.mp4")
    with pytest.raises(InvalidArgumentError, match="recipe"):
        minicpm_cpp.load_video(vids["mkv"], recipe="v99")
    with pytest.raises(InvalidArgumentError, match="4.5"):
        minicpm_cpp.load_video(vids["mkv"], recipe="v26", max_packing=6)
    with pytest.raises(minicpm_cpp.VideoError, match="GiB"):
        minicpm_cpp.load_video(vids["mkv"], max_bytes=1000)
    assert issubclass(minicpm_cpp.VideoError, Error)


# ------------------------------------------------------------------------------------------------
# Content parts and CLI


def test_content_parts(vids):
    path = str(vids["mkv"])
    ref = minicpm_cpp.load_video(path, fps=10, max_packing=2)
    forms = [
        {"type": "video", "path": path, "fps": 10, "max_packing": 2},
        {"type": "video", "video": vids["mkv"], "fps": 10, "max_packing": 2},
        {"type": "video_url", "video_url": {"url": "file://" + path}, "fps": 10, "max_packing": 2},
        {"type": "video_url", "video_url": {"url": path}, "fps": 10, "max_packing": 2},
    ]
    for part in forms:
        msgs = normalise_messages([{"role": "user", "content": [part, "Describe the video."]}])
        got, text = msgs[0]["content"]
        assert text == "Describe the video."
        # the core's form of a video item (content.frames_part)
        assert got["temporal_ids"] == ref.temporal_ids and got["max_slice_nums"] == 1
        assert len(got["video_frames"]) == len(ref.frames)
        for a, b in zip(got["video_frames"], ref.frames):
            np.testing.assert_array_equal(a, b)
    # force_packing on the part
    got = normalise_messages([{"role": "user", "content": [{"type": "video", "path": path, "fps": 30,
                                                              "force_packing": 2}]}])[0]["content"][0]
    assert all(len(g) == 2 for g in got["temporal_ids"][:-1])
    # the frames form passes through
    frames = [frame_image(0), frame_image(1)]
    got = normalise_messages([{"role": "user", "content": [{"type": "video", "frames": frames,
                                                              "temporal_ids": [[0, 1]]}]}])[0]["content"][0]
    assert got["temporal_ids"] == [[0, 1]]
    for a, b in zip(got["video_frames"], frames):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_content_part_errors(vids):
    def parse(part, **kw):
        return normalise_messages([{"role": "user", "content": [part]}], **kw)

    with pytest.raises(InvalidArgumentError, match="network"):
        parse({"type": "video_url", "video_url": {"url": "https://example.com/x.mp4"}})
    with pytest.raises(InvalidArgumentError, match="without a video"):
        parse({"type": "video"})
    with pytest.raises(InvalidArgumentError, match="unknown video option"):
        parse({"type": "video", "path": str(vids["mkv"]), "fsp": 3})
    with pytest.raises(FileError, match="not allowed"):
        parse({"type": "video", "path": str(vids["mkv"])}, allow_local_files=False)
    with pytest.raises(InvalidArgumentError, match="max_packing"):
        parse({"type": "video", "path": str(vids["mkv"]), "max_packing": 9})
    with pytest.raises(FileError):
        parse({"type": "video_url", "video_url": {"url": "file:///nonexistent/x.mp4"}})


def test_cli_video_flags(vids, tmp_path):
    from minicpm_cpp import cli

    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(frame_image(5)).save(img)
    p = cli.build_parser()
    args = p.parse_args(["-m", "m.gguf", "--video", str(vids["mkv"]), "--image", str(img), "--video",
                         str(vids["ffv1"]), "--video-fps", "5", "--max-packing", "6", "-p", "Summarise."])
    assert args.video == [str(vids["mkv"]), str(vids["ffv1"])] and args.video_fps == 5.0 and args.max_packing == 6
    assert [k for k, _ in args.media] == ["video", "image", "video"]
    content = cli.media_content(args, "Summarise.")
    assert content[-1] == "Summarise." and len(content) == 4
    v0, im, v1 = content[:3]
    ref0 = minicpm_cpp.load_video(vids["mkv"], fps=5, max_packing=6)
    assert v0["type"] == "video" and v0["temporal_ids"] == ref0.temporal_ids
    np.testing.assert_array_equal(im, frame_image(5))
    assert v1["temporal_ids"] == minicpm_cpp.load_video(vids["ffv1"], fps=5, max_packing=6).temporal_ids
    # the recipe of the model's family (Model.info["model_type"])
    assert V.recipe_for_model_type("minicpm-o-4.5") == "o45" and V.recipe_for_model_type("minicpm-v-4.5") == "v45"
    assert V.recipe_for_model_type("minicpm-v-2.6") == "v26" and V.recipe_for_model_type(None) == "v45"
    args = p.parse_args(["-m", "m.gguf", "--video", str(vids["mkv"]), "-p", "x"])
    part = cli.media_content(args, "x", "o45")[0]
    assert "temporal_ids" not in part and len(part["frames"]) == 4
    # defaults: fps 3 (choose_fps), packing 3
    args = p.parse_args(["-m", "m.gguf", "--video", str(vids["mkv"]), "-p", "x"])
    assert args.video_fps is None and args.max_packing == 3
    for bad in (["--max-packing", "7"], ["--max-packing", "0"], ["--video-fps", "nan"]):
        with pytest.raises(SystemExit):
            p.parse_args(["-m", "m.gguf", "-p", "x"] + bad)


def test_bench_video_smoke(tmp_path):
    """benchmarks/bench_video.py: the synthetic generator and the decode measurement on a tiny file."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_video", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_video.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = mod.make_video(tmp_path / "s.mp4", 2.0, 64, 48, fps=30)
    res, v = mod.bench_decode(path, None, 3, 1)
    assert res["n_frames"] == 60 and res["frames_chosen"] == 6 and res["packing"] == 1 and len(v.frames) == 6
    if "max_abs_diff_vs_decord" in res:
        assert res["max_abs_diff_vs_decord"] == 0
