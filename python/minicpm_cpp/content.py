"""Message content as the core takes it: text, images (HxWx3 uint8) and audio (1-D float32 at
16 kHz), from what callers pass (the reference's content lists, OpenAI-style parts, PIL images,
numpy arrays, paths, data URLs). Decoding itself is image.py's and audio.py's; video parts are
sampled and decoded by video.py into ``{"type": "video", "frames", "temporal_ids"}`` dicts."""

from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ._files import MAX_PATH_CHARS, is_regular_file, refuse_local
from .errors import InvalidArgumentError
from .video import MAX_PACKING_LIMIT as MAX_PACKING   # frames per temporal group: the recipe's 1..6

Message = Mapping[str, Any]

def is_image_like(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim != 1
    mod = type(x).__module__ or ""
    return mod.startswith("PIL.")


# File name endings taken as audio when a content item is a path (str or os.PathLike).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".mka", ".wma",
                    ".aiff", ".aif")


def is_audio_path(x: Any, allow_local_files: bool = True) -> bool:
    """Whether a content item names an audio file. Without local files nothing does (and the
    file system is not asked, so that text content cannot probe which files exist)."""
    if not allow_local_files:
        return False
    if isinstance(x, os.PathLike):
        x = os.fspath(x)
    if not isinstance(x, str) or len(x) > MAX_PATH_CHARS or "\n" in x or "\x00" in x:
        return False
    return x.lower().endswith(AUDIO_EXTENSIONS) and is_regular_file(x)


def audio_part(ref: Any, where: str, allow_local_files: bool = True) -> np.ndarray:
    from .audio import load_audio

    if ref is None:
        raise InvalidArgumentError(f"{where}: audio part without audio")
    return load_audio(ref, name=where, allow_local_files=allow_local_files)


def image_part(ref: Any, where: str, allow_local_files: bool = True) -> np.ndarray:
    from .image import load_image

    if isinstance(ref, Mapping):
        ref = ref.get("url")
    if ref is None:
        raise InvalidArgumentError(f"{where}: image part without an image")
    return load_image(ref, allow_local_files=allow_local_files)


# Options a video content part may carry, passed to video.load_video.
VIDEO_PART_OPTIONS = ("fps", "max_frames", "max_packing", "force_packing", "recipe", "audio")

MAX_TEMPORAL_ID = 1 << 24  # ids stay exact float32 integers


def _int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def frames_part(part: Mapping[str, Any], where: str) -> dict:
    """The ``video`` content part given as frames: ``{"type": "video", "frames": [...],
    "temporal_ids": [[...], ...]}`` -> what the core takes (checked here, with clear errors).

    ``frames`` are HxWx3 uint8 arrays or PIL images, in time order. ``temporal_ids`` (MiniCPM-V 4.5's
    3D resampler; the reference ``chat(..., temporal_ids=...)``): one list per group of consecutive
    frames, one int per frame (time in 0.1 s units, -1 for a still image), 1 to 6 frames a group;
    each group becomes one unsliced image placeholder without ``<image_id>``. Without
    ``temporal_ids`` every frame is a plain image without ``<image_id>``, unsliced unless the part
    says ``max_slice_nums`` (the recipe of models without temporal ids).
    """
    frames = part.get("frames")
    if frames is None or isinstance(frames, (str, bytes)) or not hasattr(frames, "__len__"):
        raise InvalidArgumentError(f"{where}: a video part needs 'frames', a list of HxWx3 uint8 arrays or PIL images")
    frames = list(frames)
    if not frames:
        raise InvalidArgumentError(f"{where}: the video has no frames")
    out = [image_part(f, f"{where}, frame {i}") for i, f in enumerate(frames)]
    ids = part.get("temporal_ids")
    groups = None
    if ids is not None:
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise InvalidArgumentError(f"{where}: temporal_ids must be a list of lists of ints (one per frame)")
        groups = []
        for g, grp in enumerate(ids):
            if isinstance(grp, (str, bytes)) or not hasattr(grp, "__iter__"):
                raise InvalidArgumentError(f"{where}: temporal_ids[{g}] must be a list of ints, got {type(grp).__name__}")
            grp = list(grp)
            if not 1 <= len(grp) <= MAX_PACKING:
                raise InvalidArgumentError(f"{where}: temporal_ids[{g}] has {len(grp)} frames; a group packs "
                                           f"1 to {MAX_PACKING} frames")
            for t in grp:
                if not _int(t) or not -1 <= int(t) < MAX_TEMPORAL_ID:
                    raise InvalidArgumentError(f"{where}: temporal id {t!r} in group {g} must be an int in "
                                               f"[-1, {MAX_TEMPORAL_ID})")
            groups.append([int(t) for t in grp])
        if not groups:
            raise InvalidArgumentError(f"{where}: temporal_ids is empty")
        n = sum(len(grp) for grp in groups)
        if n != len(out):
            raise InvalidArgumentError(f"{where}: temporal_ids give {n} ids for {len(out)} frames (one id per frame)")
    slices = part.get("max_slice_nums", 1)
    if not _int(slices) or slices < 1:
        raise InvalidArgumentError(f"{where}: max_slice_nums must be an int >= 1, got {slices!r}")
    if groups is not None and slices != 1:
        raise InvalidArgumentError(f"{where}: frames with temporal_ids are not sliced (the reference recipe's "
                                   f"max_slice_nums=1); max_slice_nums applies to frames without temporal_ids")
    return {"video_frames": out, "temporal_ids": groups, "max_slice_nums": int(slices)}


def video_part(part: Mapping, where: str, allow_local_files: bool = True, recipe: Optional[str] = None) -> dict:
    """A video content part -> ``{"type": "video", "frames": [...], "temporal_ids": [...]}``.

    ``{"type": "video", "path": p}``, ``{"type": "video", "video": p}`` and
    ``{"type": "video_url", "video_url": {"url": u}}`` (``u`` a ``file://`` URL or a local path; no
    network fetches) are decoded with the part's options (``fps``, ``max_frames``, ``max_packing``,
    ``force_packing``, ``recipe``, ``audio``; see video.load_video). A part that already holds
    ``frames`` is passed on as given (a copy of the dict)."""
    from .video import load_video

    if "frames" in part:
        return dict(part)
    if part.get("type") == "video_url":
        ref = part.get("video_url")
        if isinstance(ref, Mapping):
            ref = ref.get("url")
    else:
        ref = part.get("path", part.get("video", part.get("url")))
        if isinstance(ref, Mapping):
            ref = ref.get("url", ref.get("path"))
    if ref is None:
        raise InvalidArgumentError(f"{where}: video part without a video (give 'path', or 'frames' and 'temporal_ids')")
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        raise InvalidArgumentError(f"{where}: a video is given by a path or file:// URL, got {type(ref).__name__}")
    if ref.lower().startswith(("http://", "https://")):
        raise InvalidArgumentError(f"{where}: videos are not fetched from the network ({ref[:80]!r}); download "
                                   "the file and give its path")
    if not allow_local_files:
        raise refuse_local(where)
    unknown = sorted(k for k in part if k not in VIDEO_PART_OPTIONS + ("type", "path", "video", "url", "video_url"))
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown video option(s) {', '.join(map(repr, unknown))} "
                                   f"(known: {', '.join(VIDEO_PART_OPTIONS)})")
    opts = {k: part[k] for k in VIDEO_PART_OPTIONS if part.get(k) is not None}
    if recipe is not None:
        opts.setdefault("recipe", recipe)
    v = load_video(ref, name=f"{where} ({ref})", **opts)
    out = v.to_part()
    if v.temporal_ids is None:   # frames as plain images, sliced as the recipe's chat() call says
        out["max_slice_nums"] = int(v.chat_settings.get("max_slice_nums", 1))
    if v.audio is not None and v.recipe == "o26":
        out["unit_marker"] = "<unit>"
    return out


def video_parts(part: Mapping, where: str) -> list:
    """A video part with its frames -> the core's parts: one video item, or, with the omni
    recipes' audio pieces, each frame followed by its audio (o2.6: each unit after "<unit>"), as
    the reference's content list interleaves them."""
    audio = part.get("audio")
    if audio is None:
        return [frames_part(part, where)]
    frames = list(part.get("frames") or [])
    if len(audio) != len(frames):
        raise InvalidArgumentError(f"{where}: {len(audio)} audio pieces for {len(frames)} frames (one per frame)")
    if part.get("temporal_ids") is not None:
        raise InvalidArgumentError(f"{where}: a video with audio pieces has no temporal_ids (the omni recipes)")
    out: list = []
    for i, (fr, a) in enumerate(zip(frames, audio)):
        w = f"{where}, unit {i}"
        if part.get("unit_marker"):
            out.append(str(part["unit_marker"]))
        out.append(frames_part({"frames": [fr], "max_slice_nums": part.get("max_slice_nums", 1)}, w))
        out.append(audio_part(np.asarray(a, np.float32), w))
    return out


def normalise_parts(content: Any, where: str, allow_local_files: bool = True, video_recipe: Optional[str] = None) -> list:
    """Content -> a list of str, HxWx3 uint8 arrays (images) and 1-D float32 arrays (16 kHz
    audio): the parts the core joins. A 1-D float array is audio, as in the reference; a str
    that names an existing audio file (by its ending, see AUDIO_EXTENSIONS) is read as audio
    (with ``allow_local_files``: without, paths are text and file parts are refused)."""
    loc = allow_local_files
    if content is None:
        return [""]
    if isinstance(content, np.ndarray) and content.ndim == 1:
        return [audio_part(content, where)]
    if is_audio_path(content, loc):
        return [audio_part(content, where)]
    if isinstance(content, str):
        return [content]
    if is_image_like(content):
        return [image_part(content, where)]
    if not isinstance(content, (list, tuple)):
        raise InvalidArgumentError(f"{where}: content must be a str or a list, got {type(content).__name__}")
    parts: list = []
    for j, part in enumerate(content):
        w = f"{where}, part {j}"
        if isinstance(part, np.ndarray) and part.ndim == 1:
            parts.append(audio_part(part, w))
        elif is_audio_path(part, loc):
            parts.append(audio_part(part, w))
        elif isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping):
            kind = part.get("type")
            if kind == "text":
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise InvalidArgumentError(f"{w}: text must be a str")
                parts.append(text)
            elif kind in ("image_url", "image"):
                parts.append(image_part(part.get("image_url", part.get("image")), w, loc))
            elif kind in ("input_audio", "audio_url", "audio"):
                parts.append(audio_part(part, w, loc))
            elif kind in ("video", "video_url"):
                parts.extend(video_parts(video_part(part, w, loc, video_recipe), w))
            else:
                raise InvalidArgumentError(f"{w}: unsupported content part type {kind!r}")
        elif is_image_like(part):
            parts.append(image_part(part, w))
        elif isinstance(part, os.PathLike) and not loc:
            raise refuse_local(w)
        elif isinstance(part, os.PathLike):
            raise InvalidArgumentError(f"{w}: {os.fspath(part)!r} is not an audio file this library reads "
                                       f"(endings {', '.join(AUDIO_EXTENSIONS)}) or does not exist")
        else:
            raise InvalidArgumentError(f"{w}: unsupported content item of type {type(part).__name__}")
    return parts


def normalise_messages(messages: Sequence[Message], allow_local_files: bool = True,
                       video_recipe: Optional[str] = None) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidArgumentError(f"message {i} must be a dict with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise InvalidArgumentError(f"message {i}: role must be a str")
        d = {"role": m["role"], "content": normalise_parts(m["content"], f"message {i}", allow_local_files, video_recipe)}
        if m.get("reasoning_content") is not None:
            d["reasoning_content"] = str(m["reasoning_content"])
        out.append(d)
    return out
