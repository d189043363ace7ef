"""minicpm.cpp: a C++/ggml runtime for MiniCPM-V / MiniCPM-o models with GGUF weights.

>>> import minicpm_cpp as m
>>> s = m.Session("model-f16.gguf")
>>> s.prefill("Hello")
>>> print(s.generate(max_tokens=16))
"""

from __future__ import annotations

from .errors import (
    BackendError,
    BusyError,
    ContextFullError,
    Error,
    FileError,
    FormatError,
    InvalidArgumentError,
    MissingDependencyError,
    UnsupportedError,
)
from .audio import MAX_AUDIO_SECONDS, SAMPLE_RATE, load_audio
from .wav import SPEECH_SAMPLE_RATE, AudioChunk, write_wav
from .speech_prompt import system_prompt
from .voice import Voice
from .session import AudioStream, ChatTemplate, Model, Session, Tokenizer, find_model_files, list_devices, set_log_level
from .token2wav import Token2Wav
from .duplex import DuplexResult, DuplexSession

from .video import Video, VideoError, load_video

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Session",
    "AudioStream",
    "find_model_files",
    "Tokenizer",
    "ChatTemplate",
    "list_devices",
    "set_log_level",
    "Error",
    "FileError",
    "FormatError",
    "UnsupportedError",
    "InvalidArgumentError",
    "ContextFullError",
    "BackendError",
    "BusyError",
    "MissingDependencyError",
    "load_audio",
    "SAMPLE_RATE",
    "MAX_AUDIO_SECONDS",
    "AudioChunk",
    "write_wav",
    "SPEECH_SAMPLE_RATE",
    "system_prompt",
    "Voice",
    "load_video",
    "Video",
    "VideoError",
    "Token2Wav",
    "DuplexSession",
    "DuplexResult",
]
