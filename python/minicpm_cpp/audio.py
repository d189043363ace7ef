"""Audio inputs: decoding to the 16 kHz mono float32 PCM the MiniCPM-o reference feeds its processor.

The reference loads audio with ``librosa.load(path, sr=16000, mono=True)``; :func:`load_audio`
gives the same samples. It accepts what a caller or an OpenAI-style content part may hold:

* a 1-D numpy array of float32 or float64 samples, taken as 16 kHz mono as the reference takes
  the arrays it is given (float64 is cast to float32; nothing is resampled or rescaled);
* a path (``str`` or ``os.PathLike``), or a ``file://`` URL;
* a ``data:`` URL (``data:audio/wav;base64,...``; non-base64 data is percent-decoded), whose
  media type, when given, is ``audio/*``, ``video/*``, ``application/ogg`` or
  ``application/octet-stream``;
* raw encoded bytes (``bytes``, ``bytearray``, ``memoryview``);
* a content part: ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}``
  (OpenAI's form; ``format`` is informational, the data is identified by its content),
  ``{"type": "audio_url", "audio_url": {"url": ...}}`` or ``{"type": "audio", "audio": ...}``
  holding any of the above.

Decoding follows ``librosa.load`` step by step: libsndfile (through ``soundfile``; WAV, FLAC,
Ogg Vorbis/Opus, MP3 and the other formats it reads) decodes to float32 (integer PCM scaled by
1/32768 for 16 bits); several channels are averaged (``librosa.to_mono``); a rate other than
16 kHz is converted with soxr at quality ``HQ`` (librosa's default ``res_type="soxr_hq"``) and the
result cut or zero-padded to ``ceil(n * 16000 / rate)`` samples, computed as librosa does.
Containers libsndfile does not open (m4a/AAC, mp4, webm, mkv...) are decoded with PyAV, an
optional dependency (``pip install av``). There librosa falls back to audioread, which reads
ffmpeg's 16-bit output (``ffmpeg -i file -f s16le -``) and scales it by 1/32768; the PyAV path
does the same: the decoder's samples are converted to 16 bits as libswresample does (floats
rounded to nearest and clipped), an mp4/m4a stream is cut at the duration its container states
(as ffmpeg drops the AAC encoder's end padding), then channels are averaged and the rate converted
as above.

Refused with :class:`~minicpm_cpp.errors.InvalidArgumentError` (naming the input): data that no
decoder reads, a file that decodes to no samples, samples that are NaN or infinite, audio longer
than :data:`MAX_AUDIO_SECONDS` (checked from the header before decoding when the file states its
length, and while decoding otherwise), arrays of another dtype or shape, bad base64 and data URLs
of another media type. A missing or unreadable file raises :class:`~minicpm_cpp.errors.FileError`;
a missing decoder package :class:`~minicpm_cpp.errors.MissingDependencyError`.

Truncated files: a WAV file whose data chunk declares more bytes than the file holds is refused
(libsndfile would silently return the frames present; the WAV length field is mandatory and exact,
so a shortfall means a cut download or upload). Lengths of 0x7FFFF000 and above are the "length
unknown" markers of streaming writers (ffmpeg writes 0xFFFFFFFF, SoX 0x7FFFF000) and read to the
end of the file. Data that libsndfile opens but fails to decode midway (a cut FLAC file: "lost
sync") is refused, with no second decoder tried; PyAV refuses an mp4/m4a whose index is cut.
Formats without a mandatory length (MP3, Ogg, webm) give the frames that decode, as they do for
the reference (libsndfile returns them without an error).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import urllib.parse
from collections.abc import Mapping
from typing import Any, BinaryIO, Optional, Tuple

import numpy as np

from ._files import open_regular, refuse_local
from .errors import FileError, InvalidArgumentError, MissingDependencyError
from .image import _file_url_path

__all__ = ["SAMPLE_RATE", "MAX_AUDIO_SECONDS", "MIN_SAMPLE_RATE", "load_audio"]

#: Sample rate of the PCM that :func:`load_audio` returns (the MiniCPM-o audio encoder's rate).
SAMPLE_RATE: int = 16000

#: Longest accepted audio, in seconds (one hour: 230 MB of float32 at 16 kHz).
MAX_AUDIO_SECONDS: int = 3600

#: Lowest accepted sample rate of a decoded file (telephone audio is 8 kHz). Below it the file is
#: not speech, and a tiny header could state hours of samples to upsample and encode.
MIN_SAMPLE_RATE: int = 1000

# librosa.load(res_type="soxr_hq") -> soxr.resample(quality="soxr_hq"), the same setting as "HQ".
_SOXR_QUALITY = "HQ"

# A WAV data length at or above this states "length unknown" (see the module documentation).
_WAV_UNKNOWN_LENGTH = 0x7FFFF000

# libsndfile's sf_count_t maximum: a frame count it could not determine.
_SF_UNKNOWN_FRAMES = 2**62

_AUDIO_MEDIA_TYPES = ("application/ogg", "application/octet-stream")


def _soundfile():
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise MissingDependencyError("decoding audio files needs soundfile: pip install soundfile") from e
    return soundfile


def _soxr():
    try:
        import soxr
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise MissingDependencyError("resampling audio needs soxr: pip install soxr") from e
    return soxr


def _av(name: str, sndfile_error: str):
    try:
        import av
    except ImportError as e:
        raise MissingDependencyError(
            f"{name}: libsndfile cannot read this data ({sndfile_error}); other containers "
            "(m4a/AAC, mp4, webm, mkv...) are decoded with PyAV: pip install av"
        ) from e
    return av


def _check_length(n_frames: int, rate: int, name: str) -> None:
    if n_frames > MAX_AUDIO_SECONDS * rate:
        raise InvalidArgumentError(
            f"{name}: audio is {n_frames / rate:.1f} s long, more than the limit of {MAX_AUDIO_SECONDS} s"
        )


def _check_wav_complete(fp: BinaryIO, name: str) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is cut short; leave ``fp`` at offset 0."""
    head = fp.read(12)
    try:
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = fp.seek(0, io.SEEK_END)
        pos = 12
        while pos + 8 <= size:
            fp.seek(pos)
            chunk = fp.read(8)
            length = struct.unpack("<I", chunk[4:8])[0]
            if chunk[:4] == b"data":
                present = size - pos - 8
                if present < length < _WAV_UNKNOWN_LENGTH:
                    raise InvalidArgumentError(
                        f"{name}: truncated WAV file: its header declares {length} bytes of audio data, "
                        f"the file holds {present}"
                    )
                return
            pos += 8 + length + (length & 1)  # chunks are padded to an even size
        raise InvalidArgumentError(f"{name}: truncated WAV file: no data chunk")
    finally:
        fp.seek(0)


def _read_soundfile(fp: BinaryIO, name: str) -> Tuple[Optional[np.ndarray], int, str]:
    """(samples, rate, "") with samples 1-D (mono) or (frames, channels), as soundfile reads
    them with ``dtype="float32"``; (None, 0, why) when libsndfile cannot open the data."""
    sf = _soundfile()
    try:
        f = sf.SoundFile(fp)
    except Exception as e:  # noqa: BLE001 - LibsndfileError, or TypeError for odd headers
        return None, 0, str(getattr(e, "error_string", e)).strip().rstrip(".")
    with f:
        rate = int(f.samplerate)
        channels = int(f.channels)
        if rate <= 0:  # pragma: no cover - libsndfile refuses these itself
            raise InvalidArgumentError(f"{name}: sample rate {rate} is invalid")
        try:
            if f.frames < _SF_UNKNOWN_FRAMES:
                _check_length(f.frames, rate, name)
                return f.read(dtype="float32", always_2d=False), rate, ""
            blocks = []  # length unknown: read up to one block past the limit
            total = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                total += len(block)
                _check_length(total, rate, name)
                blocks.append(block)
        except sf.LibsndfileError as e:
            raise InvalidArgumentError(f"{name}: cannot decode audio: {e.error_string.strip()}") from e
    y = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return (np.ascontiguousarray(y[:, 0]) if channels == 1 else y), rate, ""


def _frame_pcm16(frame: Any, name: str) -> np.ndarray:
    """One PyAV audio frame as int16 [channels, samples], converted as ffmpeg's ``-f s16le`` output
    (libswresample): floats rounded to nearest and clipped, wider integers shifted right."""
    x = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: [1, samples * channels], interleaved
        x = x.reshape(-1, len(frame.layout.channels)).T
    if x.dtype == np.int16:
        return x
    if x.dtype in (np.float32, np.float64):
        if not np.isfinite(x).all():
            raise InvalidArgumentError(f"{name}: the decoder produced NaN or infinite samples")
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)
    if x.dtype == np.int32:
        return (x >> 16).astype(np.int16)
    if x.dtype == np.int64:
        return (x >> 48).astype(np.int16)
    if x.dtype == np.uint8:
        return ((x.astype(np.int16) - 0x80) << 8).astype(np.int16)
    # not reached: PyAV decodes to one of the formats above
    raise InvalidArgumentError(f"{name}: unsupported decoded sample format {frame.format.name}")


def _read_av(fp: BinaryIO, name: str, sndfile_error: str) -> Tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, decoded with PyAV (first audio stream) the way
    librosa's audioread fallback sees them through ffmpeg: 16-bit samples scaled by 1/32768,
    an mp4/mov stream cut at its declared duration (the encoder's end padding dropped)."""
    av = _av(name, sndfile_error)
    try:
        container = av.open(fp, mode="r")
    except Exception as e:  # noqa: BLE001 - InvalidDataError and other FFmpeg errors
        why = getattr(e, "strerror", None) or str(e)
        raise InvalidArgumentError(
            f"{name}: not a readable audio file (libsndfile: {sndfile_error}; PyAV: {why})"
        ) from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InvalidArgumentError(
                f"{name}: no audio stream in this {container.format.name} data (streams: {', '.join(kinds)})"
            )
        stream = container.streams.audio[0]
        duration = None  # seconds, as the container states it
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6  # AV_TIME_BASE
        if duration is not None and duration > MAX_AUDIO_SECONDS:
            raise InvalidArgumentError(
                f"{name}: audio is {duration:.1f} s long, more than the limit of {MAX_AUDIO_SECONDS} s"
            )
        # mp4/m4a state each sample's duration exactly: the rest of the last AAC frame is padding.
        exact = "mp4" in container.format.name.split(",") and stream.duration is not None
        stated_seconds = float(stream.duration * stream.time_base) if exact else None
        chunks = []
        rate = 0
        total = 0
        try:
            for frame in container.decode(stream):
                if rate == 0:
                    rate = int(frame.sample_rate)
                elif frame.sample_rate != rate:
                    raise InvalidArgumentError(
                        f"{name}: the sample rate changes within the stream ({rate} -> {frame.sample_rate} Hz)"
                    )
                x = _frame_pcm16(frame, name).astype(np.float32) * np.float32(1.0 / 0x8000)
                # The channel mean of each frame: the same numbers as to_mono on the whole.
                chunks.append(x[0] if x.shape[0] == 1 else np.mean(x, axis=0))
                total += x.shape[1]
                _check_length(total, rate, name)
        except av.error.FFmpegError as e:
            why = getattr(e, "strerror", None) or str(e)
            raise InvalidArgumentError(f"{name}: cannot decode audio: {why}") from e
    y = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if stated_seconds is not None:
        y = y[: int(round(stated_seconds * rate))]
    return y, rate


def _to_mono(y: np.ndarray) -> np.ndarray:
    """librosa.to_mono of soundfile's (frames, channels): the mean over channels."""
    if y.ndim > 1:
        y = np.mean(y.T, axis=0)
    return y


def _resample(y: np.ndarray, rate: int) -> np.ndarray:
    """librosa.resample(y, orig_sr=rate, target_sr=16000, res_type="soxr_hq"), fix=True."""
    if rate == SAMPLE_RATE:
        return y
    ratio = float(SAMPLE_RATE) / rate
    n_out = int(np.ceil(y.shape[-1] * ratio))  # in double precision, as librosa does
    y_hat = _soxr().resample(y, rate, SAMPLE_RATE, quality=_SOXR_QUALITY)
    if len(y_hat) > n_out:
        y_hat = y_hat[:n_out]
    elif len(y_hat) < n_out:
        y_hat = np.pad(y_hat, (0, n_out - len(y_hat)))
    return np.asarray(y_hat, dtype=np.float32)


def _check_samples(y: np.ndarray, rate: int, name: str) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise InvalidArgumentError(f"{name}: sample rate {rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz")
    if y.shape[-1] == 0:
        raise InvalidArgumentError(f"{name}: the audio has no samples")
    finite = np.isfinite(y)
    if not finite.all():
        first = int(np.argmin(finite))
        raise InvalidArgumentError(
            f"{name}: the audio has NaN or infinite samples (the first at sample {first}, "
            f"{first / rate:.3f} s)"
        )


def _decode(fp: BinaryIO, name: str) -> np.ndarray:
    _check_wav_complete(fp, name)
    y, rate, why = _read_soundfile(fp, name)
    if y is None:
        fp.seek(0)
        y, rate = _read_av(fp, name, why)
    else:
        y = _to_mono(y)
    _check_samples(y, rate, name)
    return np.ascontiguousarray(_resample(y, rate), dtype=np.float32)


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    if len(data) == 0:
        raise InvalidArgumentError(f"{name}: no audio data")
    return _decode(io.BytesIO(data), name)


def _decode_path(path: str, name: Optional[str] = None, allow_local_files: bool = True) -> np.ndarray:
    name = name or path
    if not allow_local_files:
        raise refuse_local(name)
    with open_regular(path, name, "audio") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidArgumentError(f"{name}: the file is empty")
        return _decode(f, name)


def _b64decode(text: str, name: str) -> bytes:
    try:
        compact = "".join(text.split())
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidArgumentError(f"{name}: bad base64 data: {e}") from e


def _data_url_bytes(url: str, name: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise InvalidArgumentError(f"{name}: missing ',' before the data")
    params = head[len("data:"):].split(";")
    is_base64 = params[-1].strip().lower() == "base64"
    if is_base64:
        params = params[:-1]
    media_type = params[0].strip().lower() if params else ""
    if media_type and not (media_type.startswith(("audio/", "video/")) or media_type in _AUDIO_MEDIA_TYPES):
        raise InvalidArgumentError(f"{name}: media type {media_type!r} is not audio (expected audio/...)")
    if is_base64:
        return _b64decode(payload, name)
    return urllib.parse.unquote_to_bytes(payload)


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        hint = ""
        if arr.dtype.kind in "iu":
            hint = (" (integer PCM: convert and scale it, e.g. x.astype(np.float32) / 32768 for int16, "
                    "or pass the encoded file)")
        raise InvalidArgumentError(
            f"{name}: expected float32 or float64 samples in [-1, 1] at {SAMPLE_RATE} Hz, "
            f"got dtype {arr.dtype}{hint}"
        )
    if arr.ndim != 1:
        raise InvalidArgumentError(
            f"{name}: expected a 1-D array (mono, {SAMPLE_RATE} Hz), got shape {arr.shape}; average the "
            "channels and resample first, or pass the encoded file"
        )
    _check_length(arr.shape[0], SAMPLE_RATE, name)
    y = np.ascontiguousarray(arr, dtype=np.float32)
    _check_samples(y, SAMPLE_RATE, name)
    return y


def _from_str(src: str, name: Optional[str], allow_local_files: bool = True) -> np.ndarray:
    lowered = src[:16].lower()
    if lowered.startswith("data:"):
        name = name or "data URL"
        return _decode_bytes(_data_url_bytes(src, name), name)
    if lowered.startswith("file://"):
        if not allow_local_files:
            raise refuse_local(name or src[:200])
        return _decode_path(_file_url_path(src), name or src)
    if lowered.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"{name or src}: remote audio is not fetched; download the file first")
    return _decode_path(src, name, allow_local_files)


def _from_part(part: Mapping, name: str, allow_local_files: bool = True) -> np.ndarray:
    kind = part.get("type")
    if kind == "input_audio":
        body = part.get("input_audio")
        if not isinstance(body, Mapping) or "data" not in body:
            raise InvalidArgumentError(f"{name}: input_audio part needs {{'data': <base64>, 'format': ...}}")
        data, fmt = body["data"], body.get("format")
        if fmt is not None and not isinstance(fmt, str):
            raise InvalidArgumentError(f"{name}: input_audio format must be a str, got {type(fmt).__name__}")
        if isinstance(data, str) and data[:5].lower() == "data:":
            return _decode_bytes(_data_url_bytes(data, name), name)
        if not isinstance(data, str):
            raise InvalidArgumentError(f"{name}: input_audio data must be a base64 str, got {type(data).__name__}")
        return _decode_bytes(_b64decode(data, name), name)
    if kind == "audio_url":
        ref = part.get("audio_url")
        if isinstance(ref, Mapping):
            ref = ref.get("url")
        if not isinstance(ref, str):
            raise InvalidArgumentError(f"{name}: audio_url part needs {{'url': <str>}}")
        return _from_str(ref, name, allow_local_files)
    if kind == "audio":
        ref = part.get("audio")
        if isinstance(ref, Mapping) and "url" in ref:
            ref = ref["url"]
        if ref is None:
            raise InvalidArgumentError(f"{name}: audio part without audio")
        return load_audio(ref, name=name, allow_local_files=allow_local_files)
    raise InvalidArgumentError(
        f"{name}: unsupported content part type {kind!r} (expected 'input_audio', 'audio_url' or 'audio')"
    )


def load_audio(src: Any, *, name: Optional[str] = None, allow_local_files: bool = True) -> np.ndarray:
    """Decode ``src`` into C-contiguous float32 samples, 1-D, mono at :data:`SAMPLE_RATE` Hz.

    ``name`` labels the input in error messages (a path names itself otherwise). With
    ``allow_local_files=False`` paths and ``file://`` URLs are refused (one error text, whether
    or not the file exists).
    See the module documentation for the accepted inputs and the refusals.
    """
    if isinstance(src, np.ndarray):
        return _from_array(src, name or "audio array")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(src), name or "audio bytes")
    if isinstance(src, str):
        return _from_str(src, name, allow_local_files)
    if isinstance(src, os.PathLike):
        return _decode_path(os.fspath(src), name, allow_local_files)
    if isinstance(src, Mapping):
        return _from_part(src, name or f"{src.get('type')} part", allow_local_files)
    raise InvalidArgumentError(
        f"{name or 'audio'}: expected a path, a file:// or data: URL, encoded bytes, a 1-D float32 array "
        f"or an audio content part, got {type(src).__name__}"
    )
