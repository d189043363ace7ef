"""Speech output containers and WAV writing (no third-party dependency).

``AudioChunk`` is what streaming speech yields: float32 mono PCM in [-1, 1] with its sample rate.
``write_wav`` writes 16-bit PCM WAV (the format every player reads), atomically.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from .errors import FileError, InvalidArgumentError

#: Token2Wav's output rate (MiniCPM-o 4.5): 25 speech tokens = 50 mel frames = 24 000 samples = 1 s.
SPEECH_SAMPLE_RATE = 24000

_MAX_RATE = 768000


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """A piece of synthesised speech: ``audio`` float32 mono PCM, ``sample_rate`` in Hz.

    ``last`` is true for the final chunk of an answer; ``text`` holds the answer text that was
    released together with this chunk (may be empty)."""

    audio: np.ndarray
    sample_rate: int = SPEECH_SAMPLE_RATE
    last: bool = False
    text: str = ""

    @property
    def seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)

    def __repr__(self) -> str:
        return f"AudioChunk({self.seconds:.3f} s at {self.sample_rate} Hz, last={self.last})"


def _pcm16(audio) -> np.ndarray:
    try:
        a = np.asarray(audio)
    except Exception as e:  # ragged lists and the like
        raise InvalidArgumentError(f"audio must be a 1-D float array, got {type(audio).__name__}: {e}") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InvalidArgumentError(f"audio must be a 1-D float array, got dtype {a.dtype}")
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise InvalidArgumentError(f"audio must be 1-D (mono), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype != np.int16:
            raise InvalidArgumentError(f"integer audio must be int16 PCM, got {a.dtype}")
        return a.astype("<i2")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InvalidArgumentError("audio holds NaN or infinite samples")
    # Round to nearest, clip to the int16 range (1.0 maps to 32767).
    return np.clip(np.rint(a * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: Union[str, os.PathLike], audio, sample_rate: int = SPEECH_SAMPLE_RATE) -> Path:
    """Writes mono ``audio`` (float in [-1, 1], or int16) as a 16-bit PCM WAV file; returns the path.

    The file appears whole or not at all (written beside it, then renamed)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise InvalidArgumentError(f"sample_rate must be an integer, got {type(sample_rate).__name__}")
    if not 1 <= int(sample_rate) <= _MAX_RATE:
        raise InvalidArgumentError(f"sample_rate {sample_rate} out of range [1, {_MAX_RATE}]")
    pcm = _pcm16(audio)
    data = pcm.tobytes()
    if len(data) > 0xFFFFFFFF - 36:
        raise InvalidArgumentError(f"audio too long for a WAV file ({len(pcm)} samples)")
    try:
        p = Path(os.fspath(path))
    except TypeError:
        raise InvalidArgumentError(f"path must be a string or os.PathLike, got {type(path).__name__}") from None
    if "\x00" in str(p):
        raise InvalidArgumentError("path contains a NUL character")
    rate = int(sample_rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", len(data))
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileError(f"cannot write {p}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + p.name + ".", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(data)
        os.replace(tmp, p)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise FileError(f"cannot write {p}: {e.strerror or e}") from None
    return p

