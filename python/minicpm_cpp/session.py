"""The Pythonic layer over the native core: Session (Model and Tokenizer live in model.py).

Behaviour lives in C++ (prompt assembly, defaults, generation); this module converts Python
inputs (through content.py: PIL images, audio, paths, data URLs, OpenAI-style content parts) into
what the core takes and wraps generation in iterators.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from ._args import (
    MAX_THREADS,
    _bool_arg,
    _count,
    _max_slices,
    _max_tokens,
    _opt_bool,
    _sampling,
    _stops,
    _str_arg,
    _threads,
)
from ._speech_parts import SpeechSession
from .simplex import SimplexSession
from .content import Message, audio_part as _audio_part, normalise_messages as _normalise_messages
from .errors import InvalidArgumentError
from .model import Model, Tokenizer, _image_args, _video_recipe, find_model_files

__all__ = ["Model", "Session", "Tokenizer", "ChatTemplate", "list_devices", "set_log_level", "find_model_files"]


ChatTemplate = _core.ChatTemplate


def list_devices() -> List[Dict[str, Any]]:
    """Devices ggml's backend registry offers (name, description, type, memory)."""
    return list(_core.list_devices())


def set_log_level(level: str) -> None:
    """Native log level: "error", "warn" (default), "info" or "debug"."""
    _core.set_log_level(_str_arg(level, "level"))



class Session(SpeechSession, SimplexSession):
    """A conversation state (KV cache, compute buffers, sampler) over a :class:`Model`.

    Sessions on one model run in parallel, one per thread; one session is used from one thread
    at a time (a second thread gets :class:`~minicpm_cpp.errors.BusyError`).

    Args:
        model: a :class:`Model`, or a path to load one (then ``device``/``n_threads`` apply).
        n_ctx: context length in tokens (prompt plus generated text).
        seed: sampling seed; ``None`` draws one at random.
        n_batch: prompt tokens evaluated per graph (micro-batch).
        kv_type: ``"auto"`` (F32 for all-F32 models, else F16), ``"f16"`` or ``"f32"``.
        flash_attn: ``"auto"``, ``"on"`` or ``"off"``.
        n_threads: CPU threads of this session; ``None``: the model's.
        eval_callback: ``fn(name, array)`` called with every named intermediate of the graphs
            (``"llm:attn_norm-3"``, ``"vision:vit_features"``), for debugging; slow.
        eval_filter: only names containing this string.
        profile_ops: print a per-op time table after each graph evaluation.
        batch: evaluate through the model's cross-session batcher: the LLM steps of every
            batched session of the model waiting at the same moment run as one graph, the
            weights read once for all (see :meth:`Model.batch_stats`). For many concurrent
            sessions on one model; one session alone gains nothing. When the model was loaded
            with ``batch_cache_cells``, the session's cache is a range of that shared buffer.
        device, mmproj: passed to :class:`Model` when ``model`` is a path.
        allow_local_files: whether message content may name local files (paths, ``file://``
            URLs); ``True`` for the library and the CLI. A server that takes messages from
            others sets ``False``: such parts are then refused without touching the file system
            (one error text whether or not a file exists), and paths in text stay text.
    """

    def __init__(
        self,
        model: Union[Model, str, os.PathLike],
        n_ctx: int = 4096,
        seed: Optional[int] = None,
        *,
        n_batch: int = 512,
        kv_type: str = "auto",
        flash_attn: str = "auto",
        n_threads: Optional[int] = None,
        eval_callback: Optional[Callable[[str, np.ndarray], None]] = None,
        eval_filter: str = "",
        profile_ops: bool = False,
        batch: bool = False,
        device: str = "auto",
        mmproj: Optional[Union[str, os.PathLike]] = None,
        allow_local_files: bool = True,
    ) -> None:
        self.allow_local_files = _bool_arg(allow_local_files, "allow_local_files")
        if not isinstance(model, Model):
            model = Model(model, device=device, n_threads=n_threads, mmproj=mmproj)
        elif mmproj is not None:
            raise InvalidArgumentError("mmproj is given when loading a Model; pass it to Model(...)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise InvalidArgumentError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
        n_ctx = _count(n_ctx, "n_ctx", 1)
        n_batch = _count(n_batch, "n_batch", 1)
        if n_ctx >= 2**31 or n_batch >= 2**31:
            raise InvalidArgumentError("n_ctx and n_batch must be < 2**31")
        threads = 0 if n_threads is None else _threads(n_threads)
        if eval_callback is not None and not callable(eval_callback):
            raise InvalidArgumentError("eval_callback must be callable")
        self.model = model
        self._seed_base, self._n_spoken = seed, 0
        self._s = _core.Session(model._m, n_ctx, n_batch, seed, _str_arg(kv_type, "kv_type"),
                                _str_arg(flash_attn, "flash_attn"), threads, eval_callback,
                                _str_arg(eval_filter, "eval_filter"), bool(profile_ops),
                                _bool_arg(batch, "batch"))
        self.last_stop_reason: Optional[str] = None
        self._n_images = 0

    # -- context -----------------------------------------------------------------------------
    def prefill(
        self,
        text: Optional[str] = None,
        tokens: Optional[Sequence[int]] = None,
        image: Any = None,
        *,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
    ) -> int:
        """Appends ``image`` (PIL image, numpy HxWx3 uint8 array, path or data URL: its placeholder
        tokens and embeddings), then ``text`` (tokenized, special tokens parsed), then ``tokens`` to
        the context and evaluates them. Returns the number of positions added. Raises
        ContextFullError if they do not fit."""
        if text is None and tokens is None and image is None:
            raise InvalidArgumentError("prefill() needs text, tokens or an image")
        segments: list = []
        if image is not None:
            segments.append(
                self.encode_image(image, max_slice_nums=max_slice_nums, use_image_id=use_image_id,
                                  image_id=self._n_images)
            )
        if text is not None:
            if not isinstance(text, str):
                raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
            segments.append(self.model.tokenize(text))
        if tokens is not None:
            segments.append(_as_token_list(tokens))
        n = self._s.prefill_segments(segments)
        if image is not None:
            self._n_images += 1
        return n

    def encode_image(
        self,
        image: Any,
        *,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        image_id: int = 0,
    ) -> "_core.ImageChunk":
        """Encodes an image with this session's vision encoder (see :meth:`Model.encode_image`)."""
        return self._s.encode_image(*_image_args(image, max_slice_nums, use_image_id, image_id))

    def logits(self) -> np.ndarray:
        """Float32 logits of the last evaluated position, shape ``(n_vocab,)``."""
        return self._s.logits()

    def set_capture(self, hidden: bool = True, logits: bool = False) -> None:
        """Keep, for every position evaluated from now on, its last-layer hidden state (after
        the final norm, as transformers' ``hidden_states[-1]``) and/or its logits."""
        self._s.set_capture(bool(hidden), bool(logits))

    def _range(self, start: int, end: Optional[int]) -> tuple:
        n = self.n_past
        end = n if end is None else end
        start, end = _count(start, "start"), _count(end, "end")
        if start > end or end > n:
            raise InvalidArgumentError(f"range [{start}, {end}) is outside the context of {n} positions")
        return start, end - start

    def hidden_states(self, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Float32 ``(end - start, n_embd)``: the captured hidden states of context positions
        ``[start, end)`` (see :meth:`set_capture`)."""
        return self._s.hidden_states(*self._range(start, end))

    def position_logits(self, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Float32 ``(end - start, n_vocab)``: the captured logits of positions ``[start, end)``."""
        return self._s.position_logits(*self._range(start, end))

    def remove(self, start: int, end: int, realign: bool = False) -> None:
        """Removes context positions ``[start, end)``; the positions after them keep their RoPE
        positions (a windowed cache), and the next tokens continue after the last one.

        With ``realign=True`` the gap is closed: the positions after the range move back to
        follow the one before it and their cached keys are re-rotated by the change, nothing
        evaluated again (MiniCPM-o 4.5's duplex window, ``realign_rotary_suffix``)."""
        first, n = self._range(start, end)
        self._s.remove(first, first + n, bool(realign))

    def replace(self, start: int, end: int, tokens: Sequence[int]) -> int:
        """Replaces context positions ``[start, end)`` with text ``tokens``, evaluated now at the
        positions after ``start - 1`` and attending only what precedes them; the positions after
        the range are kept and re-rotated to follow the new tokens (MiniCPM-o 4.5's duplex
        window, ``_rebuild_cache_with_previous``). Returns the number of tokens evaluated."""
        first, n = self._range(start, end)
        return self._s.replace(first, first + n, _as_token_list(tokens))

    def tokenize(self, text: str, parse_special: bool = True) -> List[int]:
        return self.model.tokenize(text, parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.model.detokenize(ids, skip_special)

    def reset(self) -> None:
        """Empties the context (the KV cache is reused)."""
        self._s.reset()
        self._n_images = 0
        self._stream_voice = None

    @property
    def n_past(self) -> int:
        """Tokens in the context."""
        return self._s.n_past

    @property
    def n_ctx(self) -> int:
        return self._s.n_ctx

    @property
    def tokens(self) -> List[int]:
        return list(self._s.tokens)

    @property
    def positions(self) -> List[int]:
        """The RoPE position of each context entry (consecutive unless :meth:`remove` cut some)."""
        return list(self._s.positions)

    @property
    def timings(self) -> Dict[str, float]:
        """Accumulated prefill/decode/sampling/image-encoding times (ms) and counts."""
        return dict(self._s.timings)

    def reset_timings(self) -> None:
        self._s.reset_timings()

    # -- generation --------------------------------------------------------------------------
    def sample(self, **sampling: Any) -> int:
        """Samples one token from the current logits (without adding it to the context)."""
        return self._s.sample(_sampling(sampling))

    def generate(
        self,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        stop: Optional[Union[str, Sequence[str]]] = None,
        stream: bool = False,
        skip_special: bool = True,
        stop_at_end_of_turn: bool = True,
    ) -> Union[str, Iterator[str]]:
        """Generates text after the current context.

        Every argument left at ``None`` takes the model's default (:attr:`Model.defaults`: the
        reference ``chat()``'s sampling values). Stops at an end-of-turn token (``<|im_end|>``,
        eos), a ``stop`` string (not included), ``max_tokens`` (``-1``: no limit) or a full
        context; ``last_stop_reason`` says which. ``temperature=0`` is greedy. Returns the text,
        or with ``stream=True`` an iterator of text pieces as they are produced.
        """
        p = _sampling(dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                           repeat_last_n=repeat_last_n))
        self.last_stop_reason = None
        self._s.begin_generation(_max_tokens(max_tokens), _stops(stop), p,
                                 _bool_arg(stop_at_end_of_turn, "stop_at_end_of_turn"), _bool_arg(skip_special, "skip_special"))
        it = self._steps("")
        return it if stream else "".join(it)

    def _steps(self, prefix: str) -> Iterator[str]:
        if prefix:
            yield prefix
        while True:
            text, _tok, done, reason = self._s.next()
            if text:
                yield text
            if done:
                self.last_stop_reason = reason
                return

    def chat_prompt(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: Optional[bool] = None,
        add_generation_prompt: bool = True,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        use_tts_template: Optional[bool] = None,
        omni_mode: bool = False,
    ) -> Dict[str, Any]:
        """The prompt :meth:`chat` would evaluate: ``{"segments", "text", "thinking", "answer_prefix", "tts"}``
        (segments: token-id lists and encoded images / audio pieces, in order)."""
        segs, text, thinking, prefix, tts = self._s.chat_prompt(
            _normalise_messages(messages, self.allow_local_files, _video_recipe(self.model)), add_generation_prompt,
            _opt_bool(enable_thinking, "enable_thinking"),
            _max_slices(max_slice_nums), _opt_bool(use_image_id, "use_image_id"),
            _opt_bool(use_tts_template, "use_tts_template"), bool(omni_mode))
        return {"segments": list(segs), "text": text, "thinking": thinking, "answer_prefix": prefix, "tts": tts}

    def encode_audio(self, audio: Any) -> list:
        """Encodes audio (a 1-D float array at 16 kHz, a path, bytes, a data URL or an
        ``input_audio`` part) as :meth:`chat` does: one chunk per 30 s piece, each with its
        placeholder tokens and embeddings."""
        return list(self._s.encode_audio(_audio_part(audio, "audio")))

    def chat(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: Optional[bool] = None,
        stream: bool = False,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        max_tokens: Optional[int] = None,
        stop: Optional[Union[str, Sequence[str]]] = None,
        skip_special: bool = True,
        stop_at_end_of_turn: bool = True,
        use_tts_template: Optional[bool] = None,
        omni_mode: bool = False,
        generate_audio: bool = False,
        voice: Any = None,
        tts_steps: int = 10,
        tts_seed: Optional[int] = None,
        whole_audio: Optional[bool] = None,
        **sampling: Any,
    ) -> Any:
        """Answers the conversation ``messages`` (``[{"role": "user", "content": "..."}]``), as
        the reference ``chat()`` does with the same arguments.

        ``generate_audio=True`` (MiniCPM-o 4.5) speaks the answer: returns a
        :class:`~minicpm_cpp.speech.SpeechResult` (``.text``, ``.audio`` float32 at 24 kHz,
        ``.sample_rate``), or with ``stream=True`` yields text pieces and
        :class:`~minicpm_cpp.AudioChunk` objects as each 1 s window is ready. The answer is
        decoded as the reference's ``streaming_generate`` decodes it (see
        :mod:`minicpm_cpp.speech`); ``voice`` is a :class:`~minicpm_cpp.Voice` (default: the
        model's default voice), ``tts_steps`` the flow-matching steps (10, the reference's; 5
        and 3 are faster). ``whole_audio=True`` synthesises the answer in one piece at the end
        (flow matching over every code, the original HiFT vocoder), ``False`` in 1 s windows as
        the reference streams them (needs the streaming vocoder); unset: windows when the file
        has the streaming vocoder.

        Content may be a list mixing text and images, in the reference's form
        (``[PIL.Image, "What is in the image?"]``, items joined with ``"\\n"``) or OpenAI's
        (``[{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}, {"type": "text", ...}]``).
        ``max_slice_nums`` and ``use_image_id`` override the model's image defaults.

        Audio (MiniCPM-o): a 1-D float numpy array (16 kHz mono, as ``librosa.load(path,
        sr=16000, mono=True)`` gives), a path to an audio file, or an OpenAI ``input_audio``
        part. As in the reference, a message with audio switches the speech template on
        (``use_tts_template``: the prompt ends with ``<|tts_bos|>`` and the answer stops at
        ``<|tts_eos|>``); clips over 30 s are encoded as consecutive 30 s pieces, each with its
        own placeholder group. ``omni_mode`` joins parts with ``""`` instead of ``"\\n"``.

        ``enable_thinking=None`` takes the model's default: ``False`` for MiniCPM-V 4.5 and
        MiniCPM-o 4.5 (the prompt ends with ``<think>\\n\\n</think>\\n\\n``, as the reference's);
        sampling values left out take the reference ``chat()``'s for that mode (see
        :attr:`Model.defaults`). The whole conversation is rendered with the model's chat
        template; tokens already in the context that match are reused, so passing the growing
        history each turn only evaluates the new part (images already encoded are reused too).
        """
        p = _sampling(sampling)
        self.last_stop_reason = None
        speech = _bool_arg(generate_audio, "generate_audio")
        msgs = _normalise_messages(messages, self.allow_local_files, _video_recipe(self.model))

        def begin():
            _segs, _text, _thinking, prefix, _tts = self._s.begin_chat(
                msgs, _opt_bool(enable_thinking, "enable_thinking"),
                _max_slices(max_slice_nums), _opt_bool(use_image_id, "use_image_id"), _max_tokens(max_tokens),
                _stops(stop), p, _bool_arg(stop_at_end_of_turn, "stop_at_end_of_turn"),
                _bool_arg(skip_special, "skip_special"), _opt_bool(use_tts_template, "use_tts_template"),
                bool(omni_mode), speech)
            return prefix, self._s.n_past

        if speech:
            from . import speech as _speech

            return _speech.speak(self, begin, voice=voice, tts_steps=tts_steps,
                                 seed=self._tts_seed(tts_seed), stream=_bool_arg(stream, "stream"),
                                 whole=_opt_bool(whole_audio, "whole_audio"))
        prefix, _first = begin()
        it = self._steps(prefix)
        return it if stream else "".join(it)

    def audio_stream(self) -> "AudioStream":
        """Opens a user turn whose audio arrives in pieces (MiniCPM-o 4.5 simplex streaming, as
        the reference's ``streaming_prefill``). See :class:`AudioStream`."""
        self._s.begin_audio_stream()
        return AudioStream(self)

    def __repr__(self) -> str:
        return f"Session(n_past={self.n_past}, n_ctx={self.n_ctx})"


class AudioStream:
    """Streaming audio input for one user turn.

    >>> stream = s.audio_stream()
    >>> for chunk in microphone():          # float32 16 kHz, any size
    ...     stream.push(chunk)              # log-mel + encoder run per 1 s; embeddings enter the context
    >>> print(stream.respond())             # the answer (``stream=True`` yields pieces)

    The session cuts the audio into the reference's chunks (1035 ms first, then 1000 ms): each
    goes through the exact streaming log-mel (``StreamingMelProcessorExact``), the Whisper
    encoder with the turn's K/V cache, and is prefilled as its own
    ``<|audio_start|><unk>x10<|audio_end|>`` group (o4.5), the turn opened with
    ``<|im_start|>user\\n``. :meth:`finish` encodes the ragged rest; :meth:`respond` (which calls
    it) adds ``<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|tts_bos|>`` as
    the reference's ``streaming_generate`` does and generates until ``<|tts_eos|>`` or
    ``<|im_end|>``, never sampling what its decoder suppresses (a few punctuation tokens and the
    tokenizer's ``bad_token_ids``, which the converter records). A later
    :meth:`Session.audio_stream` continues the conversation, opened with
    ``<|tts_eos|><|im_end|>\\n<|im_start|>user\\n`` as the reference opens it.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self.n_tokens = 0

    @property
    def active(self) -> bool:
        return bool(self._session._s.audio_stream_active)

    def push(self, chunk: Any) -> int:
        """Adds audio (1-D float array at 16 kHz, or anything :func:`load_audio` reads); returns
        the LLM tokens added to the context by the chunks completed so far."""
        from .audio import load_audio

        if isinstance(chunk, np.ndarray) and chunk.ndim == 1 and chunk.size == 0 and chunk.dtype.kind == "f":
            pcm = np.zeros(0, np.float32)  # nothing to add
        else:
            # Arrays as load_audio takes them: float32/float64, 1-D, finite (an int16 array is refused,
            # not cast).
            pcm = load_audio(chunk, name="audio chunk")
        n = self._session._s.push_audio(pcm)
        self.n_tokens += n
        return n

    def finish(self) -> int:
        """Encodes what is left of the turn's audio (no-op when already finished)."""
        if not self.active:
            return 0
        n = self._session._s.end_audio_stream()
        self.n_tokens += n
        return n

    def respond(
        self,
        max_tokens: Optional[int] = None,
        *,
        stream: bool = False,
        stop: Optional[Union[str, Sequence[str]]] = None,
        skip_special: bool = True,
        **sampling: Any,
    ) -> Union[str, Iterator[str]]:
        """Finishes the turn and generates the answer (sampling defaults: the model's)."""
        self.finish()
        s = self._session
        s.last_stop_reason = None
        s._s.begin_stream_response(_max_tokens(max_tokens), _stops(stop), _sampling(sampling),
                                   _bool_arg(skip_special, "skip_special"))
        it = s._steps("")
        return it if stream else "".join(it)


def _as_token_list(tokens: Sequence[int]) -> List[int]:
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise InvalidArgumentError("tokens must be a 1-D integer array")
        return [int(t) for t in tokens]
    out = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise InvalidArgumentError(f"tokens must be ints, got {type(t).__name__}")
        if not -(2**31) <= int(t) < 2**31:
            raise InvalidArgumentError(f"token id {int(t)} is out of range")
        out.append(int(t))
    return out
