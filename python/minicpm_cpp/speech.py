"""Spoken answers (MiniCPM-o 4.5): the LLM answer, the TTS talker and Token2Wav in one turn.

The layout is the reference's ``streaming_generate`` (the official offline
``chat(generate_audio=True)`` produces no o4.5 speech, so the streaming path is the definition):

1. the LLM answers with the speech template (``<|tts_bos|>`` after the generation prompt), its
   forbidden punctuation never sampled, stopping at ``<|tts_eos|>`` or ``<|im_end|>``; the
   last-layer hidden state of every answer token is kept;
2. (token, hidden) pairs go to the talker in chunks of 10, each chunk appended as
   ``[c x 10, (E at the end of the text), B]`` behind the codes of the chunk before, codes drawn
   until EOS (at most 500 per chunk);
3. the codes, after three ``4218`` silence codes, are synthesised in windows of 28 that advance by
   25 (1 s of audio each), the rest at the end of the answer; or, with ``whole=True``, in one
   flow-matching call and one vocoder call over the whole answer.

The turn runs in the C++ core (``minicpm::SpeechTurn``, csrc/runtime/speech.cpp; C++ programs
call ``Session::speak`` with callbacks); this module checks the arguments and turns its events
into text pieces and :class:`~minicpm_cpp.AudioChunk` objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Optional, Union

import numpy as np

from . import _core
from .errors import InvalidArgumentError
from .wav import SPEECH_SAMPLE_RATE, AudioChunk


@dataclasses.dataclass
class SpeechResult:
    """A spoken answer: ``text`` as ``chat()`` returns it, ``audio`` float32 mono PCM at
    ``sample_rate`` (24 kHz), the speech ``codes`` the talker drew."""

    text: str
    audio: np.ndarray
    sample_rate: int = SPEECH_SAMPLE_RATE
    codes: List[int] = dataclasses.field(default_factory=list)
    stop_reason: Optional[str] = None

    def __str__(self) -> str:
        return self.text

    @property
    def seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)

    def save(self, path) -> None:
        from .wav import write_wav

        write_wav(path, self.audio, self.sample_rate)


def flow_voice(voice: Any) -> dict:
    """A :class:`~minicpm_cpp.Voice` as the flow stage takes it (a dict of its three arrays)."""
    from .voice import Voice

    if isinstance(voice, dict):
        return voice
    if not isinstance(voice, Voice):
        raise InvalidArgumentError(f"voice must be a minicpm_cpp.Voice (model.voice('ref.wav')), got "
                                   f"{type(voice).__name__}")
    return {"prompt_tokens": voice.tokens, "prompt_mel": voice.prompt_mel, "spk": voice.speaker}


def _steps_arg(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InvalidArgumentError(f"tts_steps must be an int, got {type(n).__name__}")
    if not 1 <= int(n) <= 1000:
        raise InvalidArgumentError(f"tts_steps must be in [1, 1000], got {int(n)}")
    return int(n)


def speak(session: Any, begin, *, voice: Any, tts_steps: int, seed: int, stream: bool,
          whole: Optional[bool]) -> Union[SpeechResult, Iterator[Union[str, AudioChunk]]]:
    """Checks the arguments, prepares the C++ turn (which refuses a file that cannot speak, a
    missing default voice, windows without the streaming vocoder), then runs ``begin()`` (which
    starts the LLM answer with ``speech=True``) and relays the turn's events."""
    steps = _steps_arg(tts_steps)
    v = None if voice is None else flow_voice(voice)
    args = (None, None, None)
    if v is not None:
        spk = v.get("spk", v.get("speaker_embedding"))
        if v.get("prompt_tokens") is None or spk is None or v.get("prompt_mel") is None:
            raise InvalidArgumentError("voice: a dict voice needs prompt_tokens, prompt_mel and spk")
        mel = np.asarray(v["prompt_mel"])
        args = (v["prompt_tokens"], spk, mel[0] if mel.ndim == 3 and mel.shape[0] == 1 else mel)
    turn = _core.SpeechTurn(session._s, *args, steps, int(seed), whole)
    it = _TurnIter(session, begin, turn)
    if stream:
        return it
    text, chunks = [], []
    for ev in it:
        (chunks if isinstance(ev, AudioChunk) else text).append(ev)
    audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
    return SpeechResult("".join(text), audio, SPEECH_SAMPLE_RATE, it.codes, session.last_stop_reason)


class _TurnIter:
    """Text pieces and :class:`AudioChunk` objects of one C++ turn, begun at the first ``next``."""

    def __init__(self, session: Any, begin, turn: "_core.SpeechTurn") -> None:
        self._session = session
        self._begin = begin
        self._turn = turn
        self._started = False
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> Union[str, AudioChunk]:
        if self._done:
            raise StopIteration
        if not self._started:
            self._started = True
            prefix, _first = self._begin()
            self._turn.start_begun(prefix)
        ev = self._turn.next()
        reason = self._turn.stop_reason
        if reason != "none":
            self._session.last_stop_reason = reason
        if ev is None:
            self._done = True
            raise StopIteration
        if isinstance(ev, str):
            return ev
        pcm, last, rate = ev
        return AudioChunk(np.asarray(pcm, dtype=np.float32), int(rate), last=bool(last))

    @property
    def codes(self) -> List[int]:
        return list(self._turn.codes) if self._started else []
