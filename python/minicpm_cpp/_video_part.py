"""The ``video`` content part given as frames: ``{"type": "video", "frames": [...],
"temporal_ids": [[...], ...]}`` -> what the core takes (checked here, with clear errors).

``frames`` are HxWx3 uint8 arrays or PIL images, in time order. ``temporal_ids`` (MiniCPM-V 4.5's
3D resampler; the reference ``chat(..., temporal_ids=...)``): one list per group of consecutive
frames, one int per frame (time in 0.1 s units, -1 for a still image), 1 to 6 frames a group;
each group becomes one unsliced image placeholder without ``<image_id>``. Without
``temporal_ids`` every frame is a plain image without ``<image_id>``, unsliced unless the part
says ``max_slice_nums`` (the recipe of models without temporal ids).
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import InvalidArgumentError

MAX_PACKING = 6  # frames per temporal group: the reference recipe's valid range 1..6
MAX_TEMPORAL_ID = 1 << 24  # ids stay exact float32 integers


def _int(x: Any) -> bool:
    import numbers

    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def video_part(part: Mapping[str, Any], where: str) -> dict:
    from .content import image_part

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
