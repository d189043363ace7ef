"""Token2Wav of MiniCPM-o 4.5 from Python: the flow-matching model (speech tokens -> mel).

``Model(...).token2wav`` is a :class:`Token2Wav` when the file holds the ``t2w.flow.*`` weights.
Mels are in the reference's orientation, ``[80, frames]`` (``CausalMaskedDiffWithXvec.inference``
returns ``[1, 80, frames]``); the prompt mel is ``[frames, 80]`` as ``Token2wav._prepare_prompt``
makes it; noise is ``[80, >= frames]`` like the reference's ``rand_noise[0]``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .errors import InvalidArgumentError
from ._args import _seed_arg

__all__ = ["Token2Wav", "FlowPrompt"]

Tokens = Union[Sequence[int], np.ndarray]


class FlowPrompt:
    """The voice part of a flow call: prompt speech tokens, the prompt mel ``[frames, 80]`` and
    the 192-d speaker vector (what a reference voice provides)."""

    def __init__(self, prompt_tokens: Tokens = (), prompt_mel: Optional[np.ndarray] = None,
                 spk: Optional[np.ndarray] = None, n_mel: int = 80, n_spk: int = 192) -> None:
        self.prompt_tokens = _tokens(prompt_tokens, "prompt_tokens", allow_empty=True)
        mel = np.zeros((0, n_mel), np.float32) if prompt_mel is None else _floats(prompt_mel, "prompt_mel")
        if mel.ndim == 3 and mel.shape[0] == 1:
            mel = mel[0]
        self.prompt_mel = mel
        self.spk = np.zeros(n_spk, np.float32) if spk is None else _floats(spk, "spk").reshape(-1)


def _tokens(tokens: Any, what: str, allow_empty: bool = False) -> np.ndarray:
    if isinstance(tokens, (str, bytes)):
        raise InvalidArgumentError(f"{what} must be a sequence of ints, got {type(tokens).__name__}")
    try:
        a = np.asarray(tokens)
    except Exception as e:  # noqa: BLE001
        raise InvalidArgumentError(f"{what} must be a sequence of ints: {e}") from None
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.size == 0:
        a = a.reshape(0).astype(np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgumentError(f"{what} must be a 1-D sequence of ints, got {a.dtype} of shape {a.shape}")
    if a.size == 0 and not allow_empty:
        raise InvalidArgumentError(f"{what} is empty")
    return a.astype(np.int64)


def _floats(a: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float32)
    except Exception as e:  # noqa: BLE001
        raise InvalidArgumentError(f"{what} must be a float array: {e}") from None
    return np.ascontiguousarray(arr)


def _steps(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InvalidArgumentError(f"n_timesteps must be an int, got {type(n).__name__}")
    if not 1 <= int(n) <= 1000:
        raise InvalidArgumentError(f"n_timesteps must be in [1, 1000], got {int(n)}")
    return int(n)


class Token2Wav:
    """The flow-matching stage of Token2Wav over a loaded model (or, given a path, over the flow
    weights of one GGUF file alone, or of llama.cpp-omni's ``token2wav-gguf`` folder: the folder
    or any of its ``encoder`` / ``flow_matching`` / ``flow_extra.gguf``). Calls are serialised
    per object."""

    def __init__(self, model: Union["_core.Model", str, "os.PathLike[str]"], n_threads: int = 0,
                 device: str = "auto") -> None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0:
            raise InvalidArgumentError("n_threads must be an int >= 0")
        if isinstance(model, (str, os.PathLike)):
            if not isinstance(device, str):
                raise InvalidArgumentError("device must be a str")
            from ._omni_t2w import flow_file

            # llama.cpp-omni's token2wav-gguf folder (or one of its flow files): flow_matching.gguf,
            # which reads encoder.gguf and flow_extra.gguf from its folder
            self._flow = _core.Token2WavFlow(flow_file(model), device, n_threads)
        else:
            self._flow = _core.Token2WavFlow(model, n_threads)
        self._lock = threading.Lock()
        self.hparams = dict(self._flow.hparams)

    def _prompt(self, voice: Any) -> FlowPrompt:
        n_mel, n_spk = self.hparams["n_mel"], self.hparams["spk_embed_dim"]
        if isinstance(voice, FlowPrompt):
            return voice
        if isinstance(voice, Mapping):
            return FlowPrompt(voice.get("prompt_tokens", ()), voice.get("prompt_mel"),
                              voice.get("spk", voice.get("speaker_embedding")), n_mel, n_spk)
        if isinstance(voice, tuple) and len(voice) == 3:
            return FlowPrompt(voice[0], voice[1], voice[2], n_mel, n_spk)
        if all(hasattr(voice, k) for k in ("prompt_tokens", "prompt_mel")):
            spk = getattr(voice, "spk", None)
            if spk is None:
                spk = getattr(voice, "speaker_embedding", None)
            return FlowPrompt(voice.prompt_tokens, voice.prompt_mel, spk, n_mel, n_spk)
        raise InvalidArgumentError("voice must be a Voice, a FlowPrompt, a dict with prompt_tokens / prompt_mel / spk, "
                                   "or a (prompt_tokens, prompt_mel, spk) tuple")

    def flow_mel(self, tokens: Tokens, voice_or_parts: Any, n_timesteps: int = 10,
                 noise: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
        """The mel ``[80, 2 * len(tokens)]`` of ``tokens`` in the voice (prompt removed), as
        ``CausalMaskedDiffWithXvec.inference``. ``noise`` ``[80, >= total frames]`` (or
        ``[1, 80, ...]``) replaces the seeded default noise."""
        p = self._prompt(voice_or_parts)
        t = _tokens(tokens, "tokens")
        z = self._noise(noise)
        _seed_arg(seed)
        with self._lock:
            mel = self._flow.flow_mel(t, p.prompt_tokens, p.prompt_mel, p.spk, _steps(n_timesteps), z, int(seed))
        return np.ascontiguousarray(mel.T)

    def _noise(self, noise: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """An injected noise table [80, frames] (or [1, 80, frames]) as the core takes it."""
        if noise is None:
            return None
        z = _floats(noise, "noise")
        if z.ndim == 3 and z.shape[0] == 1:
            z = z[0]
        if z.ndim != 2:
            raise InvalidArgumentError(f"noise must be [{self.hparams['n_mel']}, frames], got shape {z.shape}")
        return np.ascontiguousarray(z.T)

    # ---- streaming ----------------------------------------------------------------------------

    def set_prompt(self, voice: Any, n_timesteps: int = 10, noise: Optional[np.ndarray] = None,
                   seed: int = 0) -> None:
        """Starts a stream (``Token2wav.set_stream_cache``): the prompt pass over the voice's
        tokens (their first 3 as look-ahead) and mel (2 frames per prompt token) fills the
        encoder and estimator caches. ``noise`` ``[80, frames]`` replaces the seeded table; each
        chunk reads it from the estimator cache length, as the reference's ``rand_noise``."""
        p = self._prompt(voice)
        z = self._noise(noise)
        _seed_arg(seed)
        with self._lock:
            self._flow.stream_start(p.prompt_tokens, p.prompt_mel, p.spk, _steps(n_timesteps), z, int(seed))

    def push(self, tokens: Tokens, last: bool = False) -> np.ndarray:
        """One window (``Token2wav.stream``'s flow part): new tokens plus 3 look-ahead tokens
        (``last``: the final tokens, look-ahead padded). Returns the new mel ``[80, frames]``."""
        t = _tokens(tokens, "tokens", allow_empty=bool(last))
        with self._lock:
            mel = self._flow.stream_push(t, bool(last))
        return np.ascontiguousarray(mel.T)

    @property
    def stream_frames(self) -> Tuple[int, int]:
        """(token frames in the encoder caches, frames in each estimator cache)."""
        with self._lock:
            return tuple(self._flow.stream_frames())

    # ---- stages -------------------------------------------------------------------------------

    def encode(self, tokens: Tokens, spk: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The encoder: ``(mu [80, 2 * len(tokens)], projected speaker [80] or None)``."""
        t = _tokens(tokens, "tokens")
        with self._lock:
            mu, spk80 = self._flow.encode(t, None if spk is None else _floats(spk, "spk"))
        return np.ascontiguousarray(mu.T), (spk80 if spk is not None else None)

    def dit_step(self, x: np.ndarray, mu: np.ndarray, spk: np.ndarray, cond: np.ndarray, t: float) -> np.ndarray:
        """One estimator evaluation on the guidance batch: ``x, mu, cond [80, n]``, ``spk [80]``
        (projected); returns ``[2, 80, n]`` (conditional, then unconditional with zero mu / spk /
        cond), as ``DiT.forward`` on solve_euler's batch."""
        out = self._call("dit", x, mu, spk, cond, float(t))
        return np.ascontiguousarray(out.transpose(0, 2, 1))

    def solve(self, noise: np.ndarray, mu: np.ndarray, spk: np.ndarray, cond: np.ndarray,
              n_timesteps: int = 10) -> np.ndarray:
        """``CausalConditionalCFM.forward`` with the given noise ``[80, n]``: the solved mel ``[80, n]``."""
        out = self._call("solve", noise, mu, spk, cond, _steps(n_timesteps))
        return np.ascontiguousarray(out.T)

    def default_noise(self, n_frames: int, first: int = 0, seed: int = 0) -> np.ndarray:
        """The seeded default noise ``[80, n_frames]`` from absolute frame ``first``."""
        with self._lock:
            return np.ascontiguousarray(self._flow.default_noise(int(first), int(n_frames), int(seed)).T)

    def _call(self, fn: str, a, mu, spk, cond, arg):
        def fr(v, what):
            v = _floats(v, what)
            if v.ndim == 3 and v.shape[0] == 1:
                v = v[0]
            if v.ndim != 2:
                raise InvalidArgumentError(f"{what} must be [{self.hparams['n_mel']}, frames], got shape {v.shape}")
            return np.ascontiguousarray(v.T)

        with self._lock:
            return getattr(self._flow, fn)(fr(a, "x" if fn == "dit" else "noise"), fr(mu, "mu"),
                                           _floats(spk, "spk").reshape(-1), fr(cond, "cond"), arg)
