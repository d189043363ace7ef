"""Simplex streaming voice turns (MiniCPM-o 4.5), as the reference's ``MiniCPMO.streaming_prefill``
and ``MiniCPMO.streaming_generate``:

>>> s = m.Session(model)
>>> s.streaming_system(voice, mode="audio_assistant")      # get_sys_prompt + init_token2wav_cache
>>> for chunk in microphone_seconds():                    # 1 s of 16 kHz audio each
...     s.streaming_prefill(audio=chunk)                  # optional frame=image, text=...
>>> for ev in s.streaming_generate():                      # str pieces and AudioChunk objects
...     ...

The turn runs in the C++ core (``Session::streaming_prefill`` and ``minicpm::StreamingTurn``,
csrc/runtime/session.cpp and speech.cpp); this module checks the arguments and relays events.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Union

import numpy as np

from . import _core
from ._args import _bool_arg, _count, _max_slices, _str_arg
from .errors import InvalidArgumentError
from .wav import AudioChunk


def _float_arg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class StreamingAnswer:
    """The events of one streamed answer: ``str`` text pieces and :class:`~minicpm_cpp.AudioChunk`
    objects (24 kHz), in the order the reference's ``streaming_generate`` yields them. After (or
    during) iteration: ``codes`` (the talker's), ``answer_tokens`` (the tokens the reference
    yields to the talker or as text), ``talker_hidden`` (with ``capture=True``: their hidden
    states, ``[n, n_embd]``), ``stop_reason``, ``text``."""

    def __init__(self, session: Any, turn: "_core.StreamingTurn") -> None:
        self._session = session
        self._turn = turn
        self._done = False
        self._text: List[str] = []

    def __iter__(self) -> "StreamingAnswer":
        return self

    def __next__(self) -> Union[str, AudioChunk]:
        if self._done:
            raise StopIteration
        ev = self._turn.next()
        if ev is None:
            self._done = True
            self._session.last_stop_reason = self._turn.stop_reason
            raise StopIteration
        if isinstance(ev, str):
            self._text.append(ev)
            return ev
        pcm, last, rate = ev
        return AudioChunk(np.asarray(pcm, dtype=np.float32), int(rate), last=bool(last))

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def codes(self) -> List[int]:
        return list(self._turn.codes)

    @property
    def answer_tokens(self) -> List[int]:
        return list(self._turn.answer_tokens)

    @property
    def talker_hidden(self) -> np.ndarray:
        return self._turn.talker_hidden

    @property
    def stop_reason(self) -> str:
        return self._turn.stop_reason

    @property
    def seed(self) -> int:
        return self._turn.seed


class SimplexSession:
    """Session methods for simplex streaming. Expects ``_s``, ``model``, ``allow_local_files``,
    ``_tts_seed`` and ``last_stop_reason`` from :class:`~minicpm_cpp.Session`."""

    _stream_voice: Any = None

    def streaming_prefill(
        self,
        msg: Optional[dict] = None,
        *,
        audio: Any = None,
        frame: Any = None,
        text: Optional[str] = None,
        role: str = "user",
        is_last_chunk: bool = False,
        omni_mode: bool = True,
        max_slice_nums: Optional[int] = None,
        use_tts_template: bool = True,
        enable_thinking: bool = False,
    ) -> int:
        """Adds one message to a simplex streaming conversation, as ``streaming_prefill(msgs=[msg])``.

        Either ``msg`` (``{"role": ..., "content": [...]}``, the reference's form) or the parts:
        ``frame`` (an image: PIL, HxWx3 uint8 array or path), ``audio`` (about 1 s of 16 kHz mono
        float audio) and ``text``, laid out in that order (the reference's omni contents put each
        frame before its second of audio). The first call starts a new streaming session (the
        context is cleared, as the reference's ``reset_session``); a first system message is
        rendered with the chat template. A user turn opens with ``<|im_start|>user\\n`` (after an
        answer: ``<|tts_eos|><|im_end|>\\n<|im_start|>user\\n``). Send 1 s chunks (16000 samples;
        the first chunk of a turn is left-padded to 1035 ms), a shorter last one with
        ``is_last_chunk=True``: a chunk whose audio positions and embeddings would differ is
        refused, as the reference raises. Returns the positions added."""
        if msg is None:
            content: list = []
            if frame is not None:
                content.append(frame)
            if audio is not None:
                content.append(audio)
            if text is not None:
                if not isinstance(text, str):
                    raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
                content.append(text)
            if not content:
                raise InvalidArgumentError("streaming_prefill() needs msg, audio, frame or text")
            msg = {"role": _str_arg(role, "role"), "content": content}
        elif audio is not None or frame is not None or text is not None:
            raise InvalidArgumentError("streaming_prefill(): give msg or audio/frame/text, not both")
        from .content import normalise_messages

        if not isinstance(msg, dict) or "content" not in msg or "role" not in msg:
            raise InvalidArgumentError("msg must be a dict with 'role' and 'content'")
        if not isinstance(msg["content"], (list, tuple)):
            msg = {"role": msg["role"], "content": [msg["content"]]}
        m = normalise_messages([msg], self.allow_local_files)[0]
        slices = _max_slices(max_slice_nums) or 1
        return self._s.streaming_prefill(m, True if omni_mode is None else _bool_arg(omni_mode, "omni_mode"),
                                         _bool_arg(is_last_chunk, "is_last_chunk"), slices,
                                         _bool_arg(use_tts_template, "use_tts_template"),
                                         _bool_arg(enable_thinking, "enable_thinking"))

    def streaming_system(self, voice: Any = None, *, mode: str = "audio_assistant", language: str = "en",
                         ref_audio: Any = None) -> int:
        """The system prompt of a spoken conversation: ``system_prompt(ref audio, mode, language)``
        (the reference's ``get_sys_prompt``) prefilled with :meth:`streaming_prefill`; the ``voice``
        (a :class:`~minicpm_cpp.Voice`) is also what later answers speak with (the reference's
        ``init_token2wav_cache``). The reference audio is ``ref_audio`` or the voice's 16 kHz
        recording; with neither, the mode's text without audio."""
        from .speech_prompt import system_prompt
        from .voice import Voice

        if voice is not None and not isinstance(voice, Voice):
            raise InvalidArgumentError(f"voice must be a minicpm_cpp.Voice (model.voice('ref.wav')), got {type(voice).__name__}")
        audio = ref_audio if ref_audio is not None else (voice.audio_16k if voice is not None else None)
        msg = system_prompt(audio, mode=mode, language=language)
        n = self.streaming_prefill(msg)
        if voice is not None:
            self._stream_voice = voice
        return n

    def streaming_generate(
        self,
        generate_audio: bool = True,
        *,
        voice: Any = None,
        max_new_tokens: int = 256,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_p: float = 0.8,
        top_k: int = 100,
        repetition_penalty: float = 1.02,
        enable_thinking: bool = False,
        use_tts_template: bool = True,
        bos_input: Optional[str] = None,
        tts_steps: int = 10,
        tts_seed: Optional[int] = None,
        whole_audio: Optional[bool] = None,
        capture: bool = False,
    ) -> StreamingAnswer:
        """Answers what :meth:`streaming_prefill` added, as the reference's ``streaming_generate``
        (its defaults): an iterator of ``str`` text pieces and, with ``generate_audio``,
        :class:`~minicpm_cpp.AudioChunk` objects (24 kHz), each 1 s window after the text the
        talker has received so far; without audio, the text of each LLM chunk. The LLM answers
        in chunks of 10 tokens (``max_new_tokens`` rounded up to whole chunks) with the
        reference's sampling (``do_sample=False``: argmax), suppressed punctuation and repetition
        penalty; ``voice`` defaults to the one given to :meth:`streaming_system`, else the model's
        default voice. ``tts_steps``, ``tts_seed`` and ``whole_audio`` as in :meth:`chat`."""
        from .speech import _steps_arg, flow_voice

        audio = _bool_arg(generate_audio, "generate_audio")
        n = _count(max_new_tokens, "max_new_tokens", 1)
        if n >= 2**31:
            raise InvalidArgumentError(f"max_new_tokens must be < 2**31, got {n}")
        k = _count(top_k, "top_k")
        if k >= 2**31:
            raise InvalidArgumentError(f"top_k must be < 2**31, got {k}")
        if bos_input is not None:
            bos_input = _str_arg(bos_input, "bos_input")
        args = (None, None, None)
        steps, seed, whole = 10, 0, None
        if audio:
            steps = _steps_arg(tts_steps)
            v = voice if voice is not None else self._stream_voice
            if v is not None:
                fv = flow_voice(v)
                mel = np.asarray(fv["prompt_mel"])
                args = (fv["prompt_tokens"], fv["spk"], mel[0] if mel.ndim == 3 and mel.shape[0] == 1 else mel)
            whole = None if whole_audio is None else _bool_arg(whole_audio, "whole_audio")
            seed = self._tts_seed(tts_seed)
        self.last_stop_reason = None
        turn = _core.StreamingTurn(
            self._s, audio, n, _bool_arg(do_sample, "do_sample"), _float_arg(temperature, "temperature"),
            _float_arg(top_p, "top_p"), k, _float_arg(repetition_penalty, "repetition_penalty"),
            _bool_arg(enable_thinking, "enable_thinking"), _bool_arg(use_tts_template, "use_tts_template"), bos_input,
            *args, steps, seed, whole, _bool_arg(capture, "capture"))
        return StreamingAnswer(self, turn)

    @property
    def streaming_started(self) -> bool:
        """Whether :meth:`streaming_prefill` has started a streaming session (until :meth:`reset`)."""
        return bool(self._s.streaming_started)
