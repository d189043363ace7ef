"""Full-duplex voice sessions (MiniCPM-o 4.5): the model listens and speaks at the same time.

One call of :meth:`DuplexSession.step` is one unit of the reference's ``MiniCPMODuplex``: one
second of 16 kHz user audio (optionally camera frames and text) goes in, the model decides to
listen or to speak, and what it says comes back as text and 24 kHz audio::

    import minicpm_cpp as m
    model = m.Model("minicpm-o45.gguf")
    d = m.DuplexSession(model, voice=model.voice("me.wav"))
    for second in microphone_seconds():          # float32 arrays of 16000 samples
        out = d.step(second)
        if not out.listening:
            speaker.play(out.audio)              # 24 kHz

The unit is built and decoded in the C++ core (``minicpm::DuplexSession``,
csrc/runtime/duplex.cpp); see that header for the layout. ``push`` / ``poll`` run it on a worker
thread of the session (the async mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import _core
from .errors import InvalidArgumentError, UnsupportedError
from .wav import SPEECH_SAMPLE_RATE

UNIT_SAMPLES = int(_core.DUPLEX_UNIT_SAMPLES)   # 1 s at 16 kHz
UNIT_SAMPLE_RATE = 16000


@dataclasses.dataclass
class DuplexResult:
    """What one unit produced. ``audio`` is float32 at 24 kHz (1 s of silence when listening,
    possibly empty while speaking); ``tokens`` the generated ids in feed order (terminator
    included); ``unit_tokens`` the whole unit as fed (-1 per embedding position)."""

    unit: int
    listening: bool
    text: str
    audio: np.ndarray
    end_of_turn: bool
    tokens: List[int]
    unit_tokens: List[int]
    codes: List[int] = dataclasses.field(default_factory=list)
    tts_tokens: Optional[List[int]] = None
    tts_hidden: Optional[np.ndarray] = None
    ms_decision: float = 0.0
    ms_first_audio: float = 0.0
    ms_total: float = 0.0
    ms_llm: float = 0.0          # audio encoder, unit prefill and decode loop
    ms_talker: float = 0.0
    ms_token2wav: float = 0.0    # flow and vocoder (and the stream restart at a turn's end)
    ms_encoder: float = 0.0      # inside ms_llm: streaming log-mel + audio encoder
    ms_prefill: float = 0.0      # inside ms_llm: the unit's prefill
    ms_sample: float = 0.0       # inside ms_llm: the decode loop's host sampling
    ms_flow: float = 0.0         # inside ms_token2wav: the flow's windows
    ms_vocoder: float = 0.0      # inside ms_token2wav: the streaming vocoder
    sample_rate: int = SPEECH_SAMPLE_RATE

    def __getitem__(self, key: str) -> Any:   # dict-style access, as the reference's results
        return getattr(self, key)

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "DuplexResult":
        return cls(**d)


def _frames(frame: Any) -> Optional[list]:
    if frame is None:
        return None
    items = list(frame) if isinstance(frame, (list, tuple)) else [frame]
    out = []
    for f in items:
        if hasattr(f, "convert") and hasattr(f, "size"):   # PIL image
            f = np.asarray(f.convert("RGB"))
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[2] != 3:
            raise InvalidArgumentError(f"frame must be an RGB image ([height, width, 3] array or PIL image), got shape {a.shape}")
        if a.dtype != np.uint8:
            raise InvalidArgumentError(f"frame array must be uint8, got {a.dtype}")
        out.append(np.ascontiguousarray(a))
    return out


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be a bool, got {type(v).__name__}")
    return v


class DuplexSession:
    """A full-duplex session on ``model`` (MiniCPM-o 4.5 with its audio encoder; with
    ``generate_audio`` also its TTS and Token2Wav). The constructor runs the reference's
    ``prepare``: system prefix, the voice's recording as audio embeddings, suffix. Parameters
    follow ``MiniCPMODuplex`` (defaults included); see ``minicpm/duplex.h``.

    ``batch=True`` sends the session's LLM steps through the model's cross-session batcher:
    the steps of every batched session of the model that wait at the same moment run as one
    graph (each weight read once for all), which is what lets many sessions share one GPU in
    real time. One session alone gains nothing from it. Load the model with
    ``Model(..., batch_cache_cells=sessions * n_ctx)`` so that the batched sessions' caches are
    ranges of one shared buffer and their steps one attention over it (fewer, replayed graphs).

    ``warmup`` builds the speech graphs (talker step, Token2Wav window phases) at construction so
    that the first answer does not pay for it; ``None``: on a GPU, off on the CPU."""

    def __init__(self, model: Any, voice: Any = None, system: str = "You are a helpful assistant.",
                 prefix: Optional[str] = None, suffix: Optional[str] = None, max_speak_tokens: int = 20,
                 force_listen_count: int = 0, window: str = "off", window_max_tokens: int = 4000,
                 window_target_tokens: int = 3500, context_max_units: int = 24, max_previous_tokens: int = 500,
                 temperature: float = 0.7, top_k: int = 20, top_p: float = 0.8, repetition_penalty: float = 1.05,
                 repetition_window: int = 512, length_penalty: float = 1.1, greedy: bool = False,
                 seed: Optional[int] = None, generate_audio: bool = True, tts_steps: Optional[int] = None,
                 capture: bool = False, n_ctx: int = 8192, n_threads: int = 0, batch: bool = False,
                 warmup: Optional[bool] = None) -> None:
        from .voice import Voice

        core_model = getattr(model, "_m", model)
        if not isinstance(core_model, _core.Model):
            raise InvalidArgumentError(f"model must be a minicpm_cpp.Model, got {type(model).__name__}")
        if window not in ("off", "basic", "context"):
            raise InvalidArgumentError(f"window must be 'off', 'basic' or 'context', got {window!r}")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
        v = None
        if voice is not None:
            if not isinstance(voice, Voice):
                raise InvalidArgumentError(f"voice must be a minicpm_cpp.Voice (model.voice('ref.wav')), got "
                                           f"{type(voice).__name__}")
            v = (voice.tokens, voice.speaker, voice.prompt_mel, voice.audio_16k)
        elif generate_audio:
            if not _core.can_speak(core_model):
                raise UnsupportedError(f"{getattr(model, 'path', 'the model')} cannot speak (no TTS talker / Token2Wav): "
                                       "pass generate_audio=False for text-only duplex")
            if hasattr(model, "default_voice"):
                dv = model.default_voice()
                v = (dv.tokens, dv.speaker, dv.prompt_mel, dv.audio_16k)
        params = dict(system=system, prefix=prefix, suffix=suffix, voice=v, max_speak_tokens=int(max_speak_tokens),
                      force_listen_count=int(force_listen_count), window=window,
                      window_max_tokens=int(window_max_tokens), window_target_tokens=int(window_target_tokens),
                      context_max_units=int(context_max_units), max_previous_tokens=int(max_previous_tokens),
                      temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                      repetition_penalty=float(repetition_penalty), repetition_window=int(repetition_window),
                      length_penalty=float(length_penalty), greedy=bool(greedy), seed=seed,
                      generate_audio=bool(generate_audio), tts_steps=tts_steps, capture=bool(capture),
                      n_ctx=int(n_ctx), n_threads=int(n_threads), batch=_bool(batch, "batch"),
                      warmup=None if warmup is None else _bool(warmup, "warmup"))
        self.model = model
        self.capture = bool(capture)
        self._d = _core.DuplexSession(core_model, params)

    @staticmethod
    def _audio(audio: Any) -> np.ndarray:
        a = np.asarray(audio)
        if a.ndim != 1:
            raise InvalidArgumentError(f"audio must be 1-D (mono 16 kHz), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise InvalidArgumentError(f"audio must be float PCM in [-1, 1], got {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def step(self, audio: Any = None, frame: Any = None, text: Any = None,
             logit_bias: Optional[Dict[int, float]] = None, sample_rate: int = UNIT_SAMPLE_RATE) -> DuplexResult:
        """One unit: ``audio`` is 1 s of 16 kHz mono float PCM (16000 samples), ``frame`` an
        optional RGB image or list of images (omni mode), ``text`` optional text (a str or the
        reference's text_list), ``logit_bias`` {token id: value} added to the LLM logits at every
        decode step of this unit."""
        if sample_rate != UNIT_SAMPLE_RATE:
            raise InvalidArgumentError(f"duplex audio must be {UNIT_SAMPLE_RATE} Hz, got {sample_rate} Hz (resample first)")
        a = None
        if audio is not None:
            a = self._audio(audio)
            if a.size != UNIT_SAMPLES:
                raise InvalidArgumentError(f"a duplex unit takes {UNIT_SAMPLES} samples (1 s at 16 kHz), got {a.size}")
        if isinstance(text, (list, tuple)):
            text = "".join(str(t) for t in text)
        if text is not None and not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str or a list of str, got {type(text).__name__}")
        if logit_bias is not None:
            if not isinstance(logit_bias, dict):
                raise InvalidArgumentError("logit_bias must be a dict {token_id: float}")
            logit_bias = {int(k): float(v) for k, v in logit_bias.items()}
        return DuplexResult._from(self._d.step(a, _frames(frame), text, logit_bias))

    def interrupt(self) -> None:
        """Barge-in: the current spoken turn ends now."""
        self._d.interrupt()

    def reset(self) -> None:
        """Back to just after ``prepare``: the system prompt only."""
        self._d.reset()

    # async mode
    def start(self) -> None:
        """Starts the session's worker thread: :meth:`push` audio of any length from a capture
        thread; each whole second is stepped, results read with :meth:`poll`."""
        self._d.start_async()

    def push(self, audio: Any, frame: Any = None) -> None:
        self._d.push(self._audio(audio), _frames(frame))

    def poll(self, timeout: float = 0.0) -> Optional[DuplexResult]:
        d = self._d.poll(int(max(0.0, timeout) * 1000))
        return None if d is None else DuplexResult._from(d)

    def stop(self) -> None:
        """Steps the whole units left, then ends the worker."""
        self._d.stop_async()

    @property
    def n_past(self) -> int:
        return self._d.n_past

    @property
    def tokens(self) -> List[int]:
        return list(self._d.tokens)

    @property
    def positions(self) -> List[int]:
        return list(self._d.positions)

    @property
    def system_length(self) -> int:
        return self._d.system_length

    @property
    def units(self) -> int:
        return self._d.units

    def __enter__(self) -> "DuplexSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._d.async_active:
            self._d.stop_async()
