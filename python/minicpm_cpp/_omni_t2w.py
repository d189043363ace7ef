"""llama.cpp-omni's Token2Wav files (``token2wav-gguf/``) as model files.

The release ships Token2Wav as ``token2wav-gguf/{encoder,flow_matching,flow_extra,hifigan2,
prompt_cache}.gguf`` (spec-audio-speech §5.5-5.6). The C++ flow component loads
``flow_matching.gguf`` and reads ``encoder.gguf`` and ``flow_extra.gguf`` from its folder (as
llama.cpp-omni's ``omni_init`` finds them); ``hifigan2.gguf`` is the original HiFT vocoder.
Here a folder, or any one of the three flow files, is turned into the files the core loads.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Union

from .errors import FileError

FLOW_FILES = ("encoder.gguf", "flow_matching.gguf", "flow_extra.gguf")
VOCODER_FILE = "hifigan2.gguf"
PROMPT_CACHE_FILE = "prompt_cache.gguf"

PathLike = Union[str, "os.PathLike[str]"]


def is_t2w_folder(path: str) -> bool:
    """A folder holding at least one of llama.cpp-omni's Token2Wav files."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in FLOW_FILES + (VOCODER_FILE,))


def _check_flow_folder(folder: str, what: str) -> str:
    missing = [f for f in FLOW_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileError(f"{what}: llama.cpp-omni's Token2Wav folder {folder!r} lacks {', '.join(missing)} "
                        f"(the flow needs {', '.join(FLOW_FILES)})")
    return os.path.join(folder, "flow_matching.gguf")


def flow_file(path: PathLike, what: str = "token2wav") -> str:
    """The file the core loads the flow from: ``path`` itself, or for a ``token2wav-gguf`` folder
    or one of its three flow files, that folder's ``flow_matching.gguf`` (all three checked)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return _check_flow_folder(p, what)
    if os.path.basename(p) in FLOW_FILES:
        return _check_flow_folder(os.path.dirname(p) or ".", what)
    return p


def vocoder_file(path: PathLike, what: str = "vocoder") -> str:
    """``path``, or for a ``token2wav-gguf`` folder its ``hifigan2.gguf`` (checked)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        v = os.path.join(p, VOCODER_FILE)
        if not os.path.isfile(v):
            raise FileError(f"{what}: llama.cpp-omni's Token2Wav folder {p!r} lacks {VOCODER_FILE}")
        return v
    return p


def expand_extra_files(paths: Sequence[PathLike]) -> List[PathLike]:
    """``Model(extra_files=...)`` with llama.cpp-omni's Token2Wav folder or files: a folder gives
    its ``flow_matching.gguf`` (after checking the three flow files) and ``hifigan2.gguf``; one of
    the flow files gives ``flow_matching.gguf`` once. Other paths pass unchanged."""
    out: List[PathLike] = []
    seen = set()

    def add(p: PathLike) -> None:
        key = os.path.realpath(os.fspath(p)) if isinstance(p, (str, os.PathLike)) else id(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for p in paths:
        try:
            s = os.fspath(p)
        except TypeError:
            out.append(p)   # reported by the caller's own check
            continue
        if not isinstance(s, str):
            out.append(p)
            continue
        if is_t2w_folder(s):
            add(_check_flow_folder(s, "extra file"))
            voc = os.path.join(s, VOCODER_FILE)
            if not os.path.isfile(voc):
                raise FileError(f"extra file: llama.cpp-omni's Token2Wav folder {s!r} lacks {VOCODER_FILE} (the vocoder)")
            add(voc)
        elif os.path.basename(s) in FLOW_FILES and os.path.isfile(s):
            add(_check_flow_folder(os.path.dirname(s) or ".", "extra file"))
        else:
            add(p)
    return out
