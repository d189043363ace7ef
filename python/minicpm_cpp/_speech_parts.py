"""The speech-output side of :class:`~minicpm_cpp.Model` and :class:`~minicpm_cpp.Session`
(MiniCPM-o 4.5): the stage handles, voices and the seed of a spoken turn (the turn itself, with
the session's own talker and Token2Wav states, runs in the C++ core: :mod:`minicpm_cpp.speech`).
Mixed into those classes; nothing here is public on its own."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

import numpy as np

from . import _core
from .errors import UnsupportedError
from ._args import _seed_arg


class SpeechModel:
    """Model methods for speech output. Expects ``_m``, ``_encoder_lock``, ``path``,
    ``extra_files``, ``_n_threads`` and ``_device`` from :class:`~minicpm_cpp.Model`."""

    def _stage(self, attr: str, make) -> Any:
        # One handle per model, created at first use under the model's lock (sessions that speak
        # have their own states, in the C++ session).
        with self._encoder_lock:
            h = self.__dict__.get(attr)
            if h is None:
                h = make()
                self.__dict__[attr] = h
            return h

    @property
    def vocoder(self) -> Any:
        """The Token2Wav vocoder (:class:`minicpm_cpp.vocoder.Vocoder`), created at first use;
        raises UnsupportedError when the file has none."""
        from .vocoder import Vocoder

        return self._stage("_vocoder", lambda: Vocoder(self._m))

    @property
    def causal_vocoder(self) -> Any:
        """The streaming Token2Wav vocoder (:class:`minicpm_cpp.causal_vocoder.CausalVocoder`),
        created at first use; raises UnsupportedError when the file has none."""
        from .causal_vocoder import CausalVocoder

        return self._stage("_causal_vocoder", lambda: CausalVocoder(self._m))

    @property
    def token2wav(self) -> Any:
        """Token2Wav's flow-matching stage (:class:`minicpm_cpp.token2wav.Token2Wav`), created at
        first use; raises UnsupportedError when the file has no ``t2w.flow.*`` weights."""
        from .token2wav import Token2Wav

        return self._stage("_token2wav", lambda: Token2Wav(self._m))

    @property
    def tts(self) -> Any:
        """The TTS talker of a MiniCPM-o 4.5 file as callable stages (:class:`minicpm_cpp.tts.Tts`):
        ``condition``, ``logits``, ``generate``, ``stream``. Raises UnsupportedError without one."""
        from .tts import model_tts

        return model_tts(self)

    def voice(self, audio: Any, sample_rate: int = 16000) -> Any:
        """A reference voice (MiniCPM-o 4.5 voice cloning) from a recording: a path, bytes or
        a 1-D float array of 16 kHz samples. See :mod:`minicpm_cpp.voice`. The same recording
        gives the same (cached) ``Voice``."""
        from .voice import Voice, find_voice_file

        key = None
        if isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1:
            key = ("pcm", hashlib.sha1(np.ascontiguousarray(audio).tobytes()).hexdigest(), sample_rate)
        elif isinstance(audio, (str, os.PathLike)) and os.path.isfile(os.fspath(audio)):
            st = os.stat(os.fspath(audio))
            key = ("file", os.path.realpath(os.fspath(audio)), st.st_size, st.st_mtime_ns, sample_rate)
        cache = self.__dict__.setdefault("_voices", {})
        if key is not None and key in cache:
            return cache[key]
        v = Voice.from_audio(find_voice_file([self.path, *self.extra_files]), audio, sample_rate,
                             n_threads=self._n_threads, device=self._device)
        if key is not None:
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[key] = v
        return v

    @property
    def can_speak(self) -> bool:
        """Whether the file holds everything speech output needs: the TTS talker, Token2Wav's
        flow and a vocoder (MiniCPM-o 4.5 converted with its assets/token2wav folder)."""
        return all(self._m.has_component(k) for k in ("tts", "flow")) and (
            self._m.has_component("hift") or self._m.has_component("cvoc"))

    def default_voice(self) -> Any:
        """The voice spoken when none is given: the voice stored in the model file (the converter
        makes it from a recording: ``minicpm-convert --default-voice FILE``, or one found in the
        checkpoint folder). Raises UnsupportedError when there is none."""
        from .voice import Voice

        v = self.__dict__.get("_default_voice")
        if v is None:
            for p in [self.path, *self.extra_files]:
                if _core.gguf_has_tensor(os.fspath(p), "voice.tokens"):
                    v = Voice.load(p, embedded=True)
                    break
            if v is None:
                raise UnsupportedError(
                    f"{self.path} has no default voice: pass voice=model.voice('reference.wav'), or convert with "
                    "minicpm-convert --default-voice FILE (the reference code takes the voice from the caller too)")
            self._default_voice = v
        return v


class SpeechSession:
    """Session methods for spoken answers. Expects ``model``, ``_seed_base`` and ``_n_spoken``
    from :class:`~minicpm_cpp.Session`."""

    def _tts_seed(self, seed: Optional[int]) -> int:
        # Unset: from the session's seed and the count of spoken answers (reproducible with
        # Session(seed=...)), else random.
        if seed is None:
            self._n_spoken += 1
            if self._seed_base is not None:
                return int((self._seed_base * 1000003 + self._n_spoken) % 2**63)
            return int(np.random.default_rng().integers(0, 2**63))
        return _seed_arg(seed, "tts_seed", bits=63)
