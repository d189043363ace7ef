"""The TTS talker of MiniCPM-o 4.5 as stages you can call: ``model.tts``.

The talker turns LLM text tokens and their last-layer hidden states into S3 speech tokens (25 per
second of audio, codes ``0 .. num_audio_tokens - 2``; ``eos`` ends a chunk), as the reference's
``MiniCPMTTS`` does:

>>> tts = model.tts
>>> c = tts.condition(tokens, hidden)          # emb_text[t] + normalize(projector_semantic(h))
>>> tts.logits(c, audio_tokens)                # teacher-forced logits of [c, emb_code[audio]]
>>> tts.generate(c, seed=0)                    # [c, E, B] then codes until EOS (offline)
>>> s = tts.stream(seed=0)                     # the streaming form, 10 text tokens a chunk
>>> s.push(c[:10]); s.push(c[10:], last=True)

Sampling follows the reference (temperature, the ChatTTS repetition penalty over the last 16
codes, top-p then top-k keeping at least 3, softmax, a multinomial draw); the draw uses this
library's own seeded generator (splitmix64), so a seed gives the same codes on every machine,
not the codes torch would draw. Defaults come from the file (``TTSSamplingParams``).

A handle holds its own compute state (K/V cache, streamed turn): use one per thread
(:meth:`Tts.fork` makes another on the same weights).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import _core
from .errors import InvalidArgumentError, UnsupportedError

__all__ = ["Tts", "TtsStream", "tts_probs", "tts_draw"]


def _sampling(defaults: "_core.TtsSampling", temperature, top_p, top_k, repetition_penalty, penalty_window):
    s = _core.TtsSampling(defaults.temperature, defaults.top_p, defaults.top_k, defaults.repetition_penalty,
                          defaults.penalty_window)
    if temperature is not None:
        s.temperature = _pos_float(temperature, "temperature")
    if top_p is not None:
        v = _float(top_p, "top_p")
        if not 0.0 <= v <= 1.0:
            raise InvalidArgumentError(f"top_p must be in [0, 1], got {top_p!r}")
        s.top_p = v
    if top_k is not None:
        s.top_k = _nonneg_int(top_k, "top_k")
    if repetition_penalty is not None:
        s.repetition_penalty = _pos_float(repetition_penalty, "repetition_penalty")
    if penalty_window is not None:
        s.penalty_window = _nonneg_int(penalty_window, "penalty_window")
    return s


def _float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise InvalidArgumentError(f"{name} must be a number, got {type(v).__name__}")
    f = float(v)
    if not np.isfinite(f):
        raise InvalidArgumentError(f"{name} must be finite, got {v!r}")
    return f


def _pos_float(v: Any, name: str) -> float:
    f = _float(v, name)
    if f <= 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {v!r}")
    return f


def _nonneg_int(v: Any, name: str, hi: int = 2**31 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 <= int(v) <= hi:
        raise InvalidArgumentError(f"{name} must be in [0, {hi}], got {v!r}")
    return int(v)


def _seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"seed must be an int, got {type(v).__name__}")
    return int(v) % (1 << 64)


def _ids(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgumentError(f"{name} must be a 1-D sequence of ints")
    return a.astype(np.int64)


def _rows(v: Any, name: str, width: int) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a float array of shape [n, {width}]") from None
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] < 1:
        raise InvalidArgumentError(f"{name} must be a float array of shape [n, {width}], got {list(a.shape)}")
    return np.ascontiguousarray(a)


class Tts:
    """The talker of a loaded MiniCPM-o 4.5 model (``model.tts``), or of a GGUF file given by path:
    ours, or llama.cpp-omni's ``tts/<name>-tts-F16.gguf`` with ``projector`` =
    ``tts/<name>-projector-F16.gguf`` (those files carry no special ids: llama.cpp-omni's constants
    apply, audio BOS 151687, text EOS 151692, normalised projection, the whole turn's cache).

    Raises :class:`UnsupportedError` when the file has no TTS weights."""

    def __init__(self, model: Any, *, n_threads: int = 0, n_ctx: int = 0, device: str = "auto",
                 projector: Any = None) -> None:
        n_threads = _nonneg_int(n_threads, "n_threads")
        n_ctx = _nonneg_int(n_ctx, "n_ctx")
        self._model = model
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            import os

            self._h = _core.Tts(os.fspath(model), device, n_threads, n_ctx,
                                os.fspath(projector) if projector is not None else "")
        else:
            if projector is not None:
                raise InvalidArgumentError("projector= goes with a llama.cpp-omni TTS file path")
            core = getattr(model, "_m", model)
            self._h = _core.Tts(core, n_threads, n_ctx)
        self._n_threads, self._n_ctx, self._device, self._projector = n_threads, n_ctx, device, projector
        self._hp: Dict[str, Any] = dict(self._h.hparams)
        self._lock = threading.Lock()
        self._active: Optional["TtsStream"] = None

    def fork(self) -> "Tts":
        """Another handle on the same weights with its own compute state (for another thread)."""
        return Tts(self._model, n_threads=self._n_threads, n_ctx=self._n_ctx, device=self._device,
                   projector=self._projector)

    @property
    def hparams(self) -> Dict[str, Any]:
        """Sizes, special rows, attention type and sampling defaults read from the file."""
        return dict(self._hp)

    @property
    def eos(self) -> int:
        """The end-of-chunk code (``num_audio_tokens - 1``)."""
        return int(self._hp["eos"])

    @property
    def defaults(self) -> Dict[str, Any]:
        """The sampling defaults (TTSSamplingParams as recorded in the file)."""
        return dict(self._hp["sampling"])

    def condition(self, tokens: Sequence[int], hidden: Any) -> np.ndarray:
        """``emb_text[tokens] + normalize(projector_semantic(hidden))`` ([n, hidden_size]); the
        normalisation as the file's ``normalize_projected_hidden`` says. ``hidden``: the LLM's
        last-layer hidden states (after the final norm) at the positions where the tokens were the
        input, [n, llm_dim]."""
        t = _ids(tokens, "tokens")
        if t.size == 0:
            raise InvalidArgumentError("tokens is empty")
        h = _rows(hidden, "hidden", int(self._hp["llm_dim"]))
        if h.shape[0] != t.size:
            raise InvalidArgumentError(f"hidden has {h.shape[0]} rows for {t.size} tokens")
        return self._h.condition(t, h)

    def text_embeddings(self, tokens: Sequence[int]) -> np.ndarray:
        """The ``emb_text`` rows of ``tokens`` (the audio BOS / text EOS rows, for instance)."""
        t = _ids(tokens, "tokens")
        if t.size == 0:
            raise InvalidArgumentError("tokens is empty")
        return self._h.condition(t, None)

    def code_embeddings(self, audio_tokens: Sequence[int]) -> np.ndarray:
        """The ``emb_code`` rows of speech codes: [m, hidden_size]."""
        return self._h.code_embeddings(_ids(audio_tokens, "audio_tokens"))

    def logits(self, inputs_embeds: Any, audio_tokens: Sequence[int] = ()) -> np.ndarray:
        """Teacher-forced logits: the sequence ``[inputs_embeds, emb_code[audio_tokens]]`` from
        position 0 (a fresh cache), the head's logits at every position: [n + m, num_audio_tokens].
        Row ``n - 1 + i`` predicts ``audio_tokens[i]``."""
        e = _rows(inputs_embeds, "inputs_embeds", int(self._hp["n_embd"]))
        with self._lock:
            return self._h.logits(e, _ids(audio_tokens, "audio_tokens"))

    def generate(
        self,
        condition: Any,
        *,
        seed: int = 0,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        penalty_window: Optional[int] = None,
        min_new_tokens: int = 50,
        max_new_tokens: int = 2048,
    ) -> List[int]:
        """The offline talker (``MiniCPMTTS.generate``): ``[condition, E, B]`` from position 0, then
        codes until EOS (masked for the first ``min_new_tokens``) or ``max_new_tokens`` steps.
        Returns the codes as the reference does: neither the EOS nor the code drawn at the last
        step."""
        c = _rows(condition, "condition", int(self._hp["n_embd"]))
        s = _sampling(self._h.defaults, temperature, top_p, top_k, repetition_penalty, penalty_window)
        mn = _nonneg_int(min_new_tokens, "min_new_tokens")
        mx = _nonneg_int(max_new_tokens, "max_new_tokens")
        if mx < 1:
            raise InvalidArgumentError("max_new_tokens must be >= 1")
        with self._lock:
            return list(self._h.generate(c, _seed(seed), s, mn, mx))

    def stream(
        self,
        *,
        seed: int = 0,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        penalty_window: Optional[int] = None,
    ) -> "TtsStream":
        """A streamed turn (``TTSStreamingGenerator``): each :meth:`TtsStream.push` appends a
        condition chunk behind the previous chunk's codes. One stream per handle at a time: a new
        ``stream()`` ends the previous one."""
        s = _sampling(self._h.defaults, temperature, top_p, top_k, repetition_penalty, penalty_window)
        return TtsStream(self, _seed(seed), s)


class TtsStream:
    """One streamed turn of the talker. ``push(chunk, last)`` returns the chunk's new codes."""

    def __init__(self, tts: Tts, seed: int, sampling: "_core.TtsSampling") -> None:
        self._tts = tts
        self._seed = seed
        self._sampling = sampling
        self._done = False
        tts._active = self
        with tts._lock:
            tts._h.stream_begin(seed, sampling)

    def _check(self) -> None:
        if getattr(self._tts, "_active", None) is not self:
            raise InvalidArgumentError("this TTS stream was ended by a newer tts.stream()")

    def push(self, condition: Any, last: bool = False, max_new_tokens: int = 500) -> List[int]:
        """Appends ``[condition, (E if last), B]`` and generates until EOS or ``max_new_tokens``
        (500 in the reference); returns the new codes (EOS not included). After ``last`` the turn
        is over: :meth:`reset` starts another."""
        self._check()
        if not isinstance(last, (bool, np.bool_)):
            raise InvalidArgumentError(f"last must be a bool, got {type(last).__name__}")
        if self._done:
            raise InvalidArgumentError("the turn has ended (a chunk with last=True was pushed); call reset()")
        c = _rows(condition, "condition", int(self._tts._hp["n_embd"]))
        mx = _nonneg_int(max_new_tokens, "max_new_tokens")
        if mx < 1:
            raise InvalidArgumentError("max_new_tokens must be >= 1")
        with self._tts._lock:
            out = list(self._tts._h.stream_push(c, bool(last), mx))
        self._done = bool(last)
        return out

    def reset(self) -> None:
        """A new turn: positions from 0, an empty cache, the generator seeded again."""
        self._check()
        with self._tts._lock:
            self._tts._h.stream_begin(self._seed, self._sampling)
        self._done = False

    @property
    def tokens(self) -> List[int]:
        """Every code of the turn so far."""
        self._check()
        return list(self._tts._h.stream_tokens)

    @property
    def position(self) -> int:
        """The position where the next chunk starts (the reference's ``text_start_pos``)."""
        self._check()
        return int(self._tts._h.stream_position)


def tts_probs(
    logits: Any,
    history: Sequence[int] = (),
    *,
    temperature: float = 0.8,
    top_p: float = 0.85,
    top_k: int = 25,
    repetition_penalty: float = 1.05,
    penalty_window: int = 16,
    bos_step: bool = False,
    eos: int = -1,
    mask_eos: bool = False,
) -> np.ndarray:
    """The probabilities the talker samples from for one step of ``logits`` (see the module)."""
    s = _core.TtsSampling(_pos_float(temperature, "temperature"), _float(top_p, "top_p"), _nonneg_int(top_k, "top_k"),
                          _pos_float(repetition_penalty, "repetition_penalty"), _nonneg_int(penalty_window, "penalty_window"))
    x = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
    if x.ndim != 1 or x.size == 0:
        raise InvalidArgumentError("logits must be a non-empty 1-D array")
    return _core.tts_probs(x, [int(t) for t in _ids(history, "history")], s, bool(bos_step), int(eos), bool(mask_eos))


def tts_draw(probs: Any, seed: int, n: int = 1) -> List[int]:
    """``n`` multinomial draws from ``probs`` with the talker's generator seeded with ``seed``."""
    return list(_core.tts_draw(np.ascontiguousarray(np.asarray(probs, dtype=np.float32)), _seed(seed),
                               _nonneg_int(n, "n")))


def model_tts(model: Any) -> Tts:
    """``model.tts``: created at the first use and kept (raises when the model has no talker)."""
    tts = getattr(model, "_tts", None)
    if tts is None:
        if not model._m.has_component("tts"):
            raise UnsupportedError(f"{model.path} has no TTS talker (no tts.* tensors: convert a MiniCPM-o 4.5 "
                                   "checkpoint with minicpm-convert)")
        tts = Tts(model)
        model._tts = tts
    return tts
