"""Message content as the core takes it: text, images (HxWx3 uint8) and audio (1-D float32 at
16 kHz), from what callers pass (the reference's content lists, OpenAI-style parts, PIL images,
numpy arrays, paths, data URLs). Decoding itself is image.py's and audio.py's."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ._files import MAX_PATH_CHARS, is_regular_file, refuse_local
from .errors import InvalidArgumentError

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


def normalise_parts(content: Any, where: str, allow_local_files: bool = True) -> list:
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
            elif kind == "video" and "frames" in part:
                from ._video_part import video_part

                parts.append(video_part(part, w))
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


def normalise_messages(messages: Sequence[Message], allow_local_files: bool = True) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidArgumentError(f"message {i} must be a dict with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise InvalidArgumentError(f"message {i}: role must be a str")
        d = {"role": m["role"], "content": normalise_parts(m["content"], f"message {i}", allow_local_files)}
        if m.get("reasoning_content") is not None:
            d["reasoning_content"] = str(m["reasoning_content"])
        out.append(d)
    return out
