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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Optional, Sequence, Union

import numpy as np

from .errors import InvalidArgumentError, UnsupportedError
from .wav import SPEECH_SAMPLE_RATE, AudioChunk

#: Text (token, hidden) pairs per talker chunk, as ``streaming_generate`` (``generate_chunk_size``).
TEXT_CHUNK = 10
#: Codes per synthesis window advance (1 s) and the look-ahead codes each window also reads.
CODES_PER_WINDOW = 25
LOOKAHEAD = 3
#: The silence code the reference puts before the first window.
SILENCE_CODE = 4218
#: Most codes drawn after one text chunk (``TTSStreamingGenerator``).
MAX_CODES_PER_CHUNK = 500


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
    """A :class:`~minicpm_cpp.Voice` as the flow stage takes it."""
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


class SpeechTurn:
    """The talker and Token2Wav side of one spoken answer. ``feed(token, hidden)`` per answer
    token (in order), ``finish(text_finished)`` at the end; each returns the ``AudioChunk``s that
    became ready. ``whole=True`` keeps every code and synthesises once, in ``finish``."""

    def __init__(self, model: Any, voice: Any, *, tts: Any, flow: Any, vocoder: Any, stream_vocoder: Any = None,
                 tts_steps: int = 10, seed: int = 0, whole: bool = False, tts_sampling: Optional[dict] = None) -> None:
        self._model = model
        self._voice = flow_voice(voice)
        self._tts = tts
        self._flow = flow
        self._vocoder = vocoder
        self._stream_vocoder = stream_vocoder
        self._steps = _steps_arg(tts_steps)
        self._seed = int(seed)
        self._whole = bool(whole)
        self._stream = tts.stream(seed=self._seed, **(tts_sampling or {}))
        self._tokens: List[int] = []
        self._hidden: List[np.ndarray] = []
        self.codes: List[int] = []
        self._buffer: List[int] = [SILENCE_CODE] * LOOKAHEAD
        self._vstream = None
        if not self._whole:
            # Token2wav.stream: the prompt pass fills the flow's caches; the vocoder stream starts.
            self._flow.set_prompt(self._voice, n_timesteps=self._steps, seed=self._seed)
            self._vstream = self._stream_vocoder.stream(seed=self._seed)

    # -- text side ---------------------------------------------------------------------------
    def feed(self, token: int, hidden: np.ndarray, more: bool) -> List[AudioChunk]:
        """One answer token with its hidden state. ``more``: another answer token follows (so a
        full chunk of 10 is not the last one)."""
        self._tokens.append(int(token))
        self._hidden.append(np.asarray(hidden, dtype=np.float32).reshape(-1))
        if len(self._tokens) == TEXT_CHUNK and more:
            return self._push_text(last=False)
        return []

    def finish(self, text_finished: bool = True) -> List[AudioChunk]:
        """The end of the answer: the remaining pairs (with ``E`` when the text ended, not when a
        token limit cut it), then the remaining codes."""
        out: List[AudioChunk] = []
        if self._tokens or text_finished:
            out += self._push_text(last=text_finished, final=True)
        out += self._flush()
        return out

    def _push_text(self, last: bool, final: bool = False) -> List[AudioChunk]:
        tts = self._tts
        if self._tokens:
            cond = tts.condition(self._tokens, np.stack(self._hidden))
        else:
            cond = np.zeros((0, int(tts.hparams["n_embd"])), np.float32)
        self._tokens, self._hidden = [], []
        codes = self._stream.push(cond, last=last, max_new_tokens=MAX_CODES_PER_CHUNK) if (len(cond) or last) else []
        self.codes += codes
        if self._whole:
            return []
        self._buffer += codes
        out = []
        while len(self._buffer) >= CODES_PER_WINDOW + LOOKAHEAD:
            out.append(self._window(self._buffer[: CODES_PER_WINDOW + LOOKAHEAD], last=False))
            self._buffer = self._buffer[CODES_PER_WINDOW:]
        return out

    def _window(self, codes: Sequence[int], last: bool) -> AudioChunk:
        mel = self._flow.push(list(codes), last=last)
        pcm = self._vstream.push(mel, last=last)
        return AudioChunk(np.asarray(pcm, dtype=np.float32), SPEECH_SAMPLE_RATE, last=last)

    def _flush(self) -> List[AudioChunk]:
        if self._whole:
            if not self.codes:
                return [AudioChunk(np.zeros(0, np.float32), SPEECH_SAMPLE_RATE, last=True)]
            mel = self._flow.flow_mel(self.codes, self._voice, n_timesteps=self._steps, seed=self._seed)
            # Token2wav.__call__ vocodes a whole utterance with the original HiFT; a file with
            # only the streaming vocoder runs that one over the whole mel.
            voc = self._vocoder if self._vocoder is not None else self._stream_vocoder
            pcm = voc.vocode(mel, seed=self._seed)
            return [AudioChunk(np.asarray(pcm, dtype=np.float32), SPEECH_SAMPLE_RATE, last=True)]
        buf, self._buffer = self._buffer, []
        if not buf:
            return [AudioChunk(np.zeros(0, np.float32), SPEECH_SAMPLE_RATE, last=True)]
        return [self._window(buf, last=True)]


def _require_speech(model: Any) -> None:
    for part, what in (("tts", "TTS talker (tts.*)"), ("token2wav", "Token2Wav flow (t2w.flow.*)"),
                       ("vocoder", "vocoder (HiFT)")):
        try:
            getattr(model, part)
        except UnsupportedError:
            raise UnsupportedError(f"{model.path} cannot speak: it has no {what}; convert a MiniCPM-o 4.5 "
                                   "checkpoint with its assets/token2wav folder") from None


def speak(session: Any, begin, *, voice: Any, tts_steps: int, seed: int, stream: bool,
          whole: bool) -> Union[SpeechResult, Iterator[Union[str, AudioChunk]]]:
    """Runs ``begin()`` (which starts the LLM answer with ``speech=True``) and drives the turn."""
    model = session.model
    _require_speech(model)
    if voice is None:
        voice = model.default_voice()
    it = _turn(session, begin, voice, tts_steps, seed, whole)
    if stream:
        return it
    text, chunks = [], []
    for ev in it:
        (chunks if isinstance(ev, AudioChunk) else text).append(ev)
    audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
    return SpeechResult("".join(text), audio, SPEECH_SAMPLE_RATE, list(getattr(it, "codes", [])),
                        session.last_stop_reason)


class _TurnIter:
    def __init__(self, gen, turn_box):
        self._gen = gen
        self._box = turn_box

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    @property
    def codes(self) -> List[int]:
        return list(self._box[0].codes) if self._box else []


def _turn(session, begin, voice, tts_steps, seed, whole):
    box: List[SpeechTurn] = []

    def gen():
        s = session
        tts, flow, vocoder, stream_vocoder = s._speech_parts()
        nonlocal whole
        if whole is None:   # windows when the file has the streaming vocoder, else one piece
            whole = stream_vocoder is None
        if not whole and stream_vocoder is None:
            raise UnsupportedError("windowed speech needs the streaming vocoder (cvoc.*, from assets/token2wav/"
                                   "hift.pt); pass whole_audio=True to synthesise the answer in one piece")
        prefix, first = begin()
        turn = SpeechTurn(s.model, voice, tts=tts, flow=flow, vocoder=vocoder, stream_vocoder=stream_vocoder,
                          tts_steps=tts_steps, seed=seed, whole=whole)
        box.append(turn)
        if prefix:
            yield prefix
        pos = first               # context position of the next answer token
        pending: Optional[int] = None   # the last sampled answer token, not yet evaluated
        while True:
            text, tok, done, reason = s._s.next()
            if pending is not None:
                # Every step evaluates the token drawn at the step before (then draws the next):
                # `pending` now has its hidden state, at context position `pos`.
                hidden = s._s.hidden_states(pos, 1)
                pos += 1
                for c in turn.feed(pending, hidden[0], more=not done):
                    yield c
                pending = None
            if text:
                yield text
            if done:
                s.last_stop_reason = reason
                # A terminator ends the text (E goes to the talker); a token limit only cuts it,
                # and its last token, never evaluated, has no hidden state (as in the reference).
                for c in turn.finish(text_finished=reason == "end_of_turn"):
                    yield c
                return
            pending = tok

    return _TurnIter(gen(), box)
