"""Video input: the official frame sampling of each model family, decoded with PyAV.

Recipes (``recipe=``), each written from its official source:

``"v45"`` (MiniCPM-V 4.5, the default)
    ``encode_video`` of the MiniCPM-V 4.5 README (the model card, copied in the GitHub repository
    PcOffeeP/FineTune_MLLM under ``Model/MiniCPM-VL-4.5/README.md``): ``MAX_NUM_FRAMES = 180``
    (frames after packing), ``MAX_NUM_PACKING = 3`` (valid range 1-6), ``TIME_SCALE = 0.1``,
    ``choose_fps = 3``. If ``choose_fps * int(duration) <= MAX_NUM_FRAMES`` the packing is 1 and
    ``round(min(choose_fps, round(fps)) * min(MAX_NUM_FRAMES, duration))`` frames are chosen; else
    the packing is ``ceil(duration * choose_fps / MAX_NUM_FRAMES)`` with ``round(duration *
    choose_fps)`` frames while that packing is at most ``MAX_NUM_PACKING``, and ``MAX_NUM_FRAMES *
    MAX_NUM_PACKING`` frames at packing ``MAX_NUM_PACKING`` otherwise. Frames are sampled
    uniformly (``int(i * gap + gap / 2)``), ``force_packing`` then overrides the packing (capped at
    ``MAX_NUM_PACKING``), each frame's time ``index / fps`` is mapped to the nearest point of
    ``np.arange(0, duration, TIME_SCALE)`` and divided by ``TIME_SCALE`` (int32: the temporal
    id), and the ids are grouped by the packing (``group_array``). The model is then called with
    ``use_image_id=False, max_slice_nums=1, temporal_ids=groups``.
``"v26"`` / ``"o26"`` (MiniCPM-V 2.6 / MiniCPM-o 2.6, no temporal ids)
    ``encode_video`` of the MiniCPM-V 2.6 README (``docs/minicpm_v2dot6_en.md`` of
    OpenBMB/MiniCPM-V; the o2.6 web demo ``web_demos/minicpm-o_2.6/chatbot_web_demo_o2.6.py`` has the
    same): every ``round(fps / 1)``-th frame (1 frame per second), at most ``MAX_NUM_FRAMES = 64``
    by uniform sampling; ``use_image_id=False``, ``max_slice_nums=2`` (the o2.6 demo: 1 when the
    context holds more than 16 frames). With ``audio=True``, ``"o26"`` is the o2.6 omni recipe
    (``get_video_chunk_content`` of the MiniCPM-o 2.6 model card): ``ceil(duration)`` units of
    ``"<unit>"``, the frame at ``i + 1`` s and 1 s of 16 kHz audio. (That recipe reads the file with
    moviepy, whose audio goes through ffmpeg's resampler to 16 kHz; here the audio track is decoded
    as :func:`~minicpm_cpp.load_audio` decodes it, soxr HQ as librosa: equal for 16 kHz tracks.)
``"o45"`` (MiniCPM-o 4.5, no temporal ids)
    ``get_video_frame_audio_segments`` of ``minicpmo.utils`` (minicpmo-utils, used by the o4.5
    README ``MiniCPMO45/README.md`` of OpenBMB/MiniCPM-o-Demo and the MiniCPM-V README's o4.5
    "Chat with Video"): one frame per second (``int(i * fps)`` for ``i < ceil(duration)``);
    a video longer than ``MAX_NUM_FRAMES = 64`` s is sampled at 0.1 s steps then reduced to 64 by
    ``np.linspace`` (``uniform_sample`` of minicpmo.utils); ``use_image_id=False``,
    ``max_slice_nums=1``. With ``audio=True`` each frame gets the audio from its time to the
    next frame's (the last to the end, zero-padded to 0.1 s): the omni recipe, one frame + 1 s of
    16 kHz audio per unit.

Decoding (PyAV, ``pip install av``) sees the file as decord's ``VideoReader`` does, since the
recipes are written against it: the best video stream; the frame count is the stream's
``nb_frames`` or, where the container does not state it, ``avg_frame_rate * duration`` truncated
(decord's ``GetFrameCount``); the rate is ``avg_frame_rate`` (``get_avg_fps``); frame ``i`` is the
frame with the ``i``-th smallest presentation time (decord's frame index, so a variable frame
rate file is indexed as decord indexes it). The packets are read once (no decoding) to index the
frames and keyframes; then for each chosen frame the decoder seeks to the keyframe before it when
that skips work and decodes forward to it. Only chosen frames are converted to RGB (``rgb24``, as
decord's ``get_batch(...).asnumpy()``; the recipes' PIL ``convert("RGB")`` leaves RGB unchanged)
and only they are kept: memory is the chosen frames plus the decoder's, whatever the length.
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ._files import open_regular
from .errors import InvalidArgumentError, MissingDependencyError

__all__ = [
    "VideoError",
    "Video",
    "load_video",
    "v45_plan",
    "v26_plan",
    "o45_plan",
    "o26_omni_plan",
    "choose_frames_v45",
    "MAX_NUM_FRAMES",
    "MAX_NUM_PACKING",
    "MAX_PACKING_LIMIT",
    "TIME_SCALE",
    "CHOOSE_FPS",
    "RECIPES",
    "recipe_for_model_type",
]

# MiniCPM-V 4.5 README encode_video
MAX_NUM_FRAMES = 180
MAX_NUM_PACKING = 3
MAX_PACKING_LIMIT = 6  # "valid range: 1-6"
TIME_SCALE = 0.1
CHOOSE_FPS = 3  # encode_video(video_path, choose_fps=3, ...)
# MiniCPM-V 2.6 README / MiniCPM-o 2.6 demo encode_video; minicpmo.utils (o4.5)
V26_MAX_NUM_FRAMES = 64
O45_MAX_NUM_FRAMES = 64
AUDIO_RATE = 16000

RECIPES = ("v45", "v26", "o26", "o45")
# Chat settings of each recipe for the model call (the README's / remote code's values).
RECIPE_CHAT_SETTINGS = {
    "v45": {"use_image_id": False, "max_slice_nums": 1},
    "v26": {"use_image_id": False, "max_slice_nums": 2},
    "o26": {"use_image_id": False, "max_slice_nums": 2},
    "o45": {"use_image_id": False, "max_slice_nums": 1},
}
_ALIASES = {"minicpm-v-4.5": "v45", "minicpm-v-2.6": "v26", "minicpm-o-2.6": "o26", "minicpm-o-4.5": "o45",
            "frames": "v26"}

# Bounds on what a file may state (beyond them the metadata is broken, not a real video).
MAX_VIDEO_FRAMES = 50_000_000
MAX_FRAME_PIXELS = 16384 * 16384


class VideoError(InvalidArgumentError):
    """A video that cannot be used: not a readable video, no video stream, no frames, corrupt or
    truncated data (a missing file is a :class:`~minicpm_cpp.errors.FileError`)."""


# ---------------------------------------------------------------------------------------------
# Frame plans: pure functions of (frame count, average fps), as the recipes compute them.


@dataclass
class Plan:
    """Which frames a recipe takes: ``frame_idx`` (decord indices, in order; repeats possible),
    ``packing`` (frames per temporal group), ``temporal_ids`` (groups of ids, V4.5 only),
    ``timestamps`` (seconds of each frame as the recipe states them), ``duration``."""

    frame_idx: List[int]
    packing: int
    temporal_ids: Optional[List[List[int]]]
    timestamps: List[float]
    duration: float


def _check_counts(n_frames: Any, fps: Any) -> Tuple[int, float]:
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)):
        raise InvalidArgumentError(f"the frame count must be an int, got {type(n_frames).__name__}")
    n = int(n_frames)
    if n < 1:
        raise VideoError("the video has no frames")
    f = float(fps)
    if not math.isfinite(f) or f <= 0:
        raise VideoError(f"the video's frame rate is not a positive number ({fps!r})")
    return n, f


def _check_int_option(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    if not lo <= int(v) <= hi:
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi}], got {int(v)}")
    return int(v)


def _check_fps_option(v: Any, name: str = "fps") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a positive number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f <= 0 or f > 1000:
        raise InvalidArgumentError(f"{name} must be in (0, 1000], got {v!r}")
    return f


def _uniform_sample_mid(n_items: int, n: int) -> List[int]:
    """The README's uniform_sample on range(n_items): int(i * gap + gap / 2), gap = len / n."""
    gap = n_items / n
    return [int(i * gap + gap / 2) for i in range(n)]


def choose_frames_v45(n_frames: int, fps: float, choose_fps: float = CHOOSE_FPS, max_frames: int = MAX_NUM_FRAMES,
                      max_packing: int = MAX_NUM_PACKING) -> Tuple[int, int]:
    """(packing, number of frames chosen) of encode_video, before ``force_packing``."""
    duration = n_frames / fps
    if choose_fps * int(duration) <= max_frames:
        packing = 1
        count = round(min(choose_fps, round(fps)) * min(max_frames, duration))
    else:
        packing = math.ceil(duration * choose_fps / max_frames)
        if packing <= max_packing:
            count = round(duration * choose_fps)
        else:
            count = round(max_frames * max_packing)
            packing = max_packing
    return packing, int(count)


def _nearest_scale(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """map_to_nearest_scale of the README (scipy's cKDTree nearest neighbour in 1-D). With scipy
    the same query is made; without, the nearest by squared distance, the lower on a tie."""
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        _, idx = cKDTree(scale[:, None]).query(values[:, None])
        return scale[idx]
    hi = np.clip(np.searchsorted(scale, values), 1, len(scale) - 1) if len(scale) > 1 else np.zeros(len(values), int)
    if len(scale) == 1:
        return scale[hi]
    lo = hi - 1
    d_lo = (values - scale[lo]) ** 2
    d_hi = (values - scale[hi]) ** 2
    return scale[np.where(d_hi < d_lo, hi, lo)]


def v45_plan(n_frames: int, fps: float, *, choose_fps: float = CHOOSE_FPS, max_frames: int = MAX_NUM_FRAMES,
             max_packing: int = MAX_NUM_PACKING, force_packing: Optional[int] = None) -> Plan:
    """The frames, packing and temporal ids of the MiniCPM-V 4.5 README's ``encode_video`` for a
    video of ``n_frames`` frames at an average ``fps`` (``len(vr)``, ``vr.get_avg_fps()``).
    ``choose_fps`` is encode_video's argument, ``max_frames`` its MAX_NUM_FRAMES, ``max_packing``
    its MAX_NUM_PACKING (1-6), ``force_packing`` its argument (capped at ``max_packing``; 0 or
    None: not forced, as the README's ``if force_packing:``)."""
    n, f = _check_counts(n_frames, fps)
    choose_fps = _check_fps_option(choose_fps, "fps")
    max_frames = _check_int_option(max_frames, "max_frames", 1, 100_000)
    max_packing = _check_int_option(max_packing, "max_packing", 1, MAX_PACKING_LIMIT)
    if force_packing is not None:
        force_packing = _check_int_option(force_packing, "force_packing", 0, MAX_PACKING_LIMIT)
    duration = n / f
    packing, count = choose_frames_v45(n, f, choose_fps, max_frames, max_packing)
    if count < 1:
        raise VideoError(f"the video is too short to sample: {duration:.3f} s at fps {choose_fps:g} gives no frame")
    frame_idx = _uniform_sample_mid(n, count)
    if force_packing:
        packing = min(force_packing, max_packing)
    idx = np.array(frame_idx)
    ts = idx / f
    scale = np.arange(0, duration, TIME_SCALE)
    ids = (_nearest_scale(ts, scale) / TIME_SCALE).astype(np.int32)
    groups = [ids[i:i + packing].tolist() for i in range(0, len(ids), packing)]
    return Plan(frame_idx, packing, groups, ts.tolist(), duration)


def v26_plan(n_frames: int, fps: float, *, sample_fps: float = 1.0, max_frames: int = V26_MAX_NUM_FRAMES) -> Plan:
    """MiniCPM-V 2.6 / o 2.6 ``encode_video``: every ``round(fps / sample_fps)``-th frame (the
    README's ``round(vr.get_avg_fps() / 1)``), uniformly reduced to ``max_frames`` (64). A rate
    that rounds to a step of 0 (fps < 0.5 * sample_fps) takes every frame (the README's
    ``range`` would raise)."""
    n, f = _check_counts(n_frames, fps)
    sample_fps = _check_fps_option(sample_fps, "fps")
    max_frames = _check_int_option(max_frames, "max_frames", 1, 100_000)
    step = max(1, round(f / sample_fps))
    idx = list(range(0, n, step))
    if len(idx) > max_frames:
        idx = [idx[i] for i in _uniform_sample_mid(len(idx), max_frames)]
    return Plan(idx, 1, None, [i / f for i in idx], n / f)


def _linspace_sample(items: Sequence, n: int) -> list:
    """uniform_sample of minicpmo.utils: np.linspace(0, len - 1, n, dtype=int) when longer than n."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n, dtype=int)]


def o45_plan(n_frames: int, fps: float, *, max_frames: int = O45_MAX_NUM_FRAMES) -> Plan:
    """The frames of ``minicpmo.utils.get_video_frame_audio_segments`` (decord path, MiniCPM-o
    4.5): ``int(i * fps)`` for each second ``i < ceil(duration)``; a video longer than
    ``max_frames`` seconds: 0.1 s steps ``round(i * 0.1, 1)`` for ``i < int(duration / 0.1)``,
    indices ``min(int(t * fps), n - 1)``, both reduced to ``max_frames`` by linspace."""
    n, f = _check_counts(n_frames, fps)
    max_frames = _check_int_option(max_frames, "max_frames", 1, 100_000)
    duration = n / f
    if duration > max_frames:
        stamps = [round(i * 0.1, 1) for i in range(int(duration / 0.1))]
        idx = _linspace_sample([min(int(t * f), n - 1) for t in stamps], max_frames)
        stamps = _linspace_sample(stamps, max_frames)
    else:
        stamps = list(range(math.ceil(duration)))
        idx = [int(i * f) for i in stamps]
    return Plan(idx, 1, None, [float(t) for t in stamps], duration)


def o26_omni_plan(n_frames: int, fps: float, duration: Optional[float] = None) -> Plan:
    """MiniCPM-o 2.6 ``get_video_chunk_content``: ``ceil(duration)`` units, unit ``i`` the frame
    at ``i + 1`` s (moviepy's ``get_frame``: index ``int(fps * t + 1e-5)``, the last frame past
    the end). ``duration`` is the container's (moviepy's); default ``n_frames / fps``."""
    n, f = _check_counts(n_frames, fps)
    d = n / f if duration is None or not duration > 0 else float(duration)
    units = math.ceil(d)
    idx = [min(int(f * (i + 1) + 1e-5), n - 1) for i in range(units)]
    return Plan(idx, 1, None, [float(i) for i in range(units)], d)


# ---------------------------------------------------------------------------------------------
# Decoding


def _av():
    try:
        import av
    except ImportError as e:
        raise MissingDependencyError("video input is decoded with PyAV: pip install av") from e
    return av


def _to_rgb(frame) -> np.ndarray:
    """One decoded frame as HxWx3 uint8 RGB (decord's rgb24 output). Only chosen frames get here."""
    return frame.to_ndarray(format="rgb24")


@dataclass
class _Probe:
    n_frames: int  # as decord's len(vr)
    fps: float  # as decord's get_avg_fps()
    pts: Any  # sorted presentation times of the packets (array('q')) or None (no timestamps)
    key_pts: Any  # presentation times of keyframe packets (sorted) or None
    n_packets: int
    container_duration: Optional[float]
    width: int
    height: int
    has_audio: bool
    stated_frames: int = 0  # nb_frames or avg_frame_rate * duration, as the container states


def _err(name: str, e: BaseException, what: str) -> VideoError:
    why = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return VideoError(f"{name}: {what}: {why}")


def _probe(container, stream, name: str) -> _Probe:
    av = _av()
    rate = stream.average_rate
    fps = float(rate.numerator) / rate.denominator if rate is not None and rate.denominator else 0.0
    dur_us = container.duration  # AV_TIME_BASE units, as fmt_ctx->duration
    nb = int(stream.frames or 0)
    if nb < 1 and fps > 0 and dur_us:
        nb = int(float(rate.numerator) / rate.denominator * dur_us / 1000000)  # decord GetFrameCount
    pts = array("q")
    keys = array("q")
    have_pts = True
    n_packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet
            n_packets += 1
            if packet.pts is None:
                have_pts = False
                continue
            if have_pts:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
            if n_packets > MAX_VIDEO_FRAMES:
                raise VideoError(f"{name}: more than {MAX_VIDEO_FRAMES} video packets")
    except av.error.FFmpegError as e:
        raise _err(name, e, "cannot read the video stream (corrupt or truncated file)") from e
    if n_packets == 0:
        raise VideoError(f"{name}: the video stream has no frames")
    # decord 0.6 GetFrameCount: the number of the stream's packets it indexed; the stated count
    # (nb_frames, else avg_frame_rate * duration) only before indexing.
    stated = nb
    nb = n_packets
    if fps <= 0:  # no average rate stated: frames over the stated duration, else 25 (ffmpeg's guess)
        fps = n_packets / (dur_us / 1e6) if dur_us else 25.0
    if nb > MAX_VIDEO_FRAMES:
        raise VideoError(f"{name}: the file states {nb} frames, more than {MAX_VIDEO_FRAMES}")
    sorted_pts = array("q", sorted(pts)) if have_pts else None
    sorted_keys = array("q", sorted(keys)) if have_pts and len(keys) else None
    w, h = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if w * h > MAX_FRAME_PIXELS:
        raise VideoError(f"{name}: frames of {w}x{h} pixels are larger than this library decodes")
    return _Probe(nb, fps, sorted_pts, sorted_keys, n_packets, dur_us / 1e6 if dur_us else None, w, h,
                  bool(container.streams.audio), stated)


def _open(path: str, name: str):
    av = _av()
    f = open_regular(path, name, "video")
    try:
        if os.fstat(f.fileno()).st_size == 0:
            raise VideoError(f"{name}: the file is empty")
        try:
            container = av.open(f, mode="r")
        except Exception as e:  # noqa: BLE001 - InvalidDataError and other FFmpeg errors
            raise _err(name, e, "not a readable video file") from e
    except BaseException:
        f.close()
        raise
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        f.close()
        raise VideoError(f"{name}: no video stream in this file (streams: {', '.join(kinds)})")
    return f, container


def _resolve_targets(frame_idx: Sequence[int], probe: _Probe, name: str) -> List[int]:
    """Decord indices, checked against the frames indexed."""
    have = probe.n_packets if probe.pts is None else len(probe.pts)
    out = []
    for i in frame_idx:
        if not 0 <= i < have:
            raise VideoError(f"{name}: frame {i} is not in the video ({have} frames)")
        out.append(int(i))
    return out


def _decode_frames(container, stream, probe: _Probe, frame_idx: Sequence[int], name: str,
                   reopen=None) -> List[np.ndarray]:
    """The chosen frames (decord indices, in increasing order with repeats allowed) as RGB arrays;
    other frames are decoded only as far as needed to reach them and never converted."""
    av = _av()
    targets = _resolve_targets(frame_idx, probe, name)
    if any(b < a for a, b in zip(targets, targets[1:])):
        raise InvalidArgumentError("frame indices must be in increasing order")
    out: List[np.ndarray] = []
    want = sorted(set(targets))
    got: dict = {}
    if probe.pts is None:  # no timestamps (raw streams): count frames from the start, in order
        try:
            container.seek(0)
        except av.error.FFmpegError:  # not seekable (a raw elementary stream): read it again
            if reopen is None:
                raise VideoError(f"{name}: the video has no timestamps and cannot be rewound") from None
            container, stream = reopen()
        pos = -1
        it = iter(want)
        nxt = next(it, None)
        try:
            for frame in container.decode(stream):
                pos += 1
                while nxt is not None and nxt == pos:
                    got[pos] = _to_rgb(frame)
                    nxt = next(it, None)
                if nxt is None:
                    break
        except av.error.FFmpegError as e:
            raise _err(name, e, f"cannot decode frame {pos + 1}") from e
    else:
        import bisect

        pts = probe.pts
        keys = probe.key_pts
        gen = None
        last = None  # pts of the last frame the decoder returned
        for t in want:
            target = pts[t]
            k = bisect.bisect_right(keys, target) - 1 if keys is not None else -1
            need_seek = gen is None or last is None or target <= last or (k >= 0 and keys[k] > last)
            found = None
            while True:
                if need_seek:
                    try:
                        container.seek(int(keys[k] if k >= 0 else min(pts[0], 0)), stream=stream, backward=True,
                                       any_frame=False)
                    except av.error.FFmpegError as e:
                        raise _err(name, e, "cannot seek in the video") from e
                    gen = container.decode(stream)
                    last = None
                fresh, overshoot = need_seek, False
                try:
                    for frame in gen:
                        fp = frame.pts
                        if fp is None:
                            continue
                        if fresh and last is None and fp > target:
                            overshoot = True  # the seek landed after the target
                        last = fp
                        if fp >= target:
                            found = frame
                            break
                except av.error.FFmpegError as e:
                    raise _err(name, e, f"cannot decode frame {t} (corrupt or truncated data)") from e
                # an earlier keyframe, finally the start of the stream (where a frame before the first
                # one decoded, if any, cannot be had: the first decoded frame stands for it)
                if overshoot and k >= 0:
                    k -= 1
                    need_seek, found = True, None
                    continue
                break
            if found is None:
                raise VideoError(f"{name}: frame {t} could not be decoded (the stream ends before it)")
            got[t] = _to_rgb(found)
    for t in targets:
        if t not in got:
            raise VideoError(f"{name}: frame {t} could not be decoded (the stream ends before it)")
        out.append(got[t])
    return out


def _check_max_pixels(w: int, h: int, n: int, name: str, max_bytes: int) -> None:
    if max_bytes and w * h * 3 * n > max_bytes:
        raise VideoError(f"{name}: {n} frames of {w}x{h} need {w * h * 3 * n / 2**30:.1f} GiB, more than the "
                         f"limit of {max_bytes / 2**30:.1f} GiB (max_bytes); lower max_frames or fps")


# ---------------------------------------------------------------------------------------------
# Public API


@dataclass
class Video:
    """A decoded video as a recipe samples it.

    ``frames``: HxWx3 uint8 RGB arrays; ``temporal_ids``: the groups of temporal ids (V4.5) or
    None; ``frame_indices``: decord indices of the frames; ``timestamps``: seconds of each frame as
    the recipe states them; ``fps`` / ``n_frames`` / ``duration``: the file as decord sees it
    (``get_avg_fps()``, ``len(vr)``, ``len / fps``); ``packing``: frames per group; ``recipe``;
    ``audio``: with ``audio=True``, one 16 kHz float32 piece per frame (None where the file has no
    audio track); ``chat_settings``: the recipe's model-call settings (``use_image_id``,
    ``max_slice_nums``)."""

    frames: List[np.ndarray]
    temporal_ids: Optional[List[List[int]]]
    frame_indices: List[int]
    timestamps: List[float]
    fps: float
    n_frames: int
    duration: float
    packing: int
    recipe: str
    width: int = 0
    height: int = 0
    audio: Optional[List[np.ndarray]] = None
    chat_settings: dict = field(default_factory=dict)

    def to_part(self) -> dict:
        """The content part the runtime takes: ``{"type": "video", "frames": [...],
        "temporal_ids": [[...], ...]}`` (``temporal_ids`` only for V4.5; ``audio`` pieces, one
        per frame, with an omni recipe)."""
        part = {"type": "video", "frames": list(self.frames)}
        if self.temporal_ids is not None:
            part["temporal_ids"] = [list(g) for g in self.temporal_ids]
        if self.audio is not None:
            part["audio"] = list(self.audio)
        return part

    def to_content(self) -> list:
        """The recipe's own content list for models without temporal ids: the frames (images),
        interleaved with the audio pieces in the omni recipes (o4.5: frame, audio, ...; o2.6:
        "<unit>", frame, audio, ...)."""
        if self.audio is None:
            return list(self.frames)
        out: list = []
        for fr, a in zip(self.frames, self.audio):
            if self.recipe == "o26":
                out.append("<unit>")
            out.extend([fr, a])
        return out


# minicpm.model_type (the converter's family names) -> the recipe of that family.
MODEL_TYPE_RECIPES = {"minicpm-v-4.5": "v45", "minicpm-v-2.6": "v26", "minicpm-o-2.6": "o26", "minicpm-o-4.5": "o45"}


def recipe_for_model_type(model_type: Optional[str]) -> str:
    """The video recipe of a model family (``Model.info["model_type"]``); V4.5's for others."""
    return MODEL_TYPE_RECIPES.get(model_type or "", "v45")


def _recipe_name(recipe: Any) -> str:
    if not isinstance(recipe, str):
        raise InvalidArgumentError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    r = _ALIASES.get(recipe.lower(), recipe.lower())
    if r not in RECIPES:
        raise InvalidArgumentError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return r


def _audio_pieces(path: str, name: str, plan: Plan, recipe: str) -> Optional[List[np.ndarray]]:
    from .audio import load_audio

    y = load_audio(path, name=name)
    sr = AUDIO_RATE
    pieces = []
    if recipe == "o26":  # audio_np[sr*i : sr*(i+1)]
        for i in range(len(plan.frame_idx)):
            pieces.append(np.ascontiguousarray(y[sr * i:sr * (i + 1)]))
        return pieces
    ts = plan.timestamps  # minicpmo.utils get_audio_segments, adjust_length=False
    for i, start in enumerate(ts):
        end = ts[i + 1] if i < len(ts) - 1 else plan.duration
        seg = y[int(start * sr):int(end * sr)]
        if i == len(ts) - 1 and len(seg) < 1600:
            seg = np.concatenate([seg, np.zeros(1600 - len(seg), dtype=seg.dtype)])
        pieces.append(np.ascontiguousarray(seg, dtype=np.float32))
    return pieces


def probe_video(path: Any, *, name: Optional[str] = None) -> dict:
    """Frame count, average fps, duration and size of a video as decord reports them."""
    path, name = _path(path, name)
    f, container = _open(path, name)
    with f, container:
        stream = container.streams.best("video")
        p = _probe(container, stream, name)
    return {"n_frames": p.n_frames, "fps": p.fps, "duration": p.n_frames / p.fps, "width": p.width,
            "height": p.height, "n_packets": p.n_packets, "stated_frames": p.stated_frames, "has_audio": p.has_audio}


def _path(path: Any, name: Optional[str]) -> Tuple[str, str]:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        raise InvalidArgumentError(f"a video is given by its path (str or os.PathLike), got {type(path).__name__}")
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        u = urlparse(path)
        if u.netloc not in ("", "localhost"):
            raise InvalidArgumentError(f"{path!r}: file:// URLs on another host are not read")
        path = unquote(u.path)
    low = path.lower()
    if low.startswith(("http://", "https://", "ftp://", "rtsp://", "rtmp://")):
        raise InvalidArgumentError(f"{path!r}: videos are not fetched from the network; download the file and "
                                   "give its path")
    if low.startswith("data:"):
        raise InvalidArgumentError("data: URLs are not taken for video; give a file path")
    return path, name or path


def load_video(path: Any, *, fps: Optional[float] = None, max_frames: Optional[int] = None,
               max_packing: int = MAX_NUM_PACKING, force_packing: Optional[int] = None, recipe: str = "v45",
               audio: bool = False, max_bytes: int = 32 * 2**30, name: Optional[str] = None) -> Video:
    """Decode the frames a recipe chooses from the video file at ``path`` (a path, ``os.PathLike``
    or ``file://`` URL; no network fetches).

    ``recipe``: ``"v45"`` (MiniCPM-V 4.5, temporal ids), ``"v26"`` / ``"o26"`` (V 2.6 / o 2.6),
    ``"o45"`` (o 4.5); see the module text for each one's source. ``fps``: V4.5's ``choose_fps``
    (default 3) or V2.6's sampling rate (default 1; not settable for o4.5, whose recipe is fixed
    at 1 per second). ``max_frames``: the recipe's MAX_NUM_FRAMES (180 for V4.5, 64 otherwise).
    ``max_packing`` (1-6, default 3) and ``force_packing``: V4.5 only. ``audio``: with o45/o26,
    also cut the audio track into the omni recipe's pieces (None when the file has none).
    ``max_bytes``: refuse more RGB frame data than this (default 32 GiB)."""
    r = _recipe_name(recipe)
    path, name = _path(path, name)
    max_packing = _check_int_option(max_packing, "max_packing", 1, MAX_PACKING_LIMIT)
    if force_packing is not None:
        force_packing = _check_int_option(force_packing, "force_packing", 0, MAX_PACKING_LIMIT)
    if r != "v45" and (force_packing or max_packing != MAX_NUM_PACKING):
        raise InvalidArgumentError(f"max_packing / force_packing are MiniCPM-V 4.5's (recipe 'v45'), not {r!r}'s")
    if fps is not None:
        fps = _check_fps_option(fps)
        if r == "o45":
            raise InvalidArgumentError("the o4.5 recipe samples 1 frame per second; fps is not settable")
    if max_frames is not None:
        max_frames = _check_int_option(max_frames, "max_frames", 1, 100_000)
    if audio and r not in ("o45", "o26"):
        raise InvalidArgumentError("audio=True is the omni recipe of MiniCPM-o ('o45' or 'o26')")
    f, container = _open(path, name)
    with f, container:
        stream = container.streams.best("video")
        stream.thread_type = "AUTO"
        probe = _probe(container, stream, name)
        if r == "v45":
            plan = v45_plan(probe.n_frames, probe.fps, choose_fps=CHOOSE_FPS if fps is None else fps,
                            max_frames=MAX_NUM_FRAMES if max_frames is None else max_frames,
                            max_packing=max_packing, force_packing=force_packing)
        elif r == "o45":
            plan = o45_plan(probe.n_frames, probe.fps, max_frames=O45_MAX_NUM_FRAMES if max_frames is None else max_frames)
        elif r == "o26" and audio:
            plan = o26_omni_plan(probe.n_frames, probe.fps, probe.container_duration)
        else:
            plan = v26_plan(probe.n_frames, probe.fps, sample_fps=1.0 if fps is None else fps,
                            max_frames=V26_MAX_NUM_FRAMES if max_frames is None else max_frames)
        if not plan.frame_idx:
            raise VideoError(f"{name}: the recipe chooses no frame from this video ({plan.duration:.3f} s)")
        _check_max_pixels(probe.width, probe.height, len(plan.frame_idx), name, max_bytes)
        reopened = []

        def reopen():
            f2, c2 = _open(path, name)
            reopened.append((f2, c2))
            return c2, c2.streams.best("video")

        try:
            frames = _decode_frames(container, stream, probe, plan.frame_idx, name, reopen)
        finally:
            for f2, c2 in reopened:
                c2.close()
                f2.close()
        has_audio = probe.has_audio
    pieces = _audio_pieces(path, name, plan, r) if audio and has_audio else None
    h, w = frames[0].shape[:2]
    settings = dict(RECIPE_CHAT_SETTINGS[r])
    if r == "o26" and len(frames) > 16:  # the o2.6 web demo: max_slice_nums 1 beyond 16 frames
        settings["max_slice_nums"] = 1
    return Video(frames, plan.temporal_ids, list(plan.frame_idx), list(plan.timestamps), probe.fps, probe.n_frames,
                 plan.duration, plan.packing, r, w, h, pieces, settings)
