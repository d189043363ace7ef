"""The streaming Token2Wav vocoder of MiniCPM-o 4.5: CosyVoice3's causal HiFT, run as
minicpmo-utils 1.0.7 streams it (``BoundedVocoder`` under ``Token2wav.stream``): 80-bin log mel
at 50 frames/s in chunks -> 24 kHz PCM, 8 frames (160 ms) behind the mel.

``Model.causal_vocoder`` gives a :class:`CausalVocoder`; :meth:`CausalVocoder.stream` starts one
utterance (:class:`VocoderStream`, its own compute state and history) and
:meth:`CausalVocoder.vocode` runs a whole clip as one final push.

The source's noise is a uniform table read at the absolute sample position (the reference draws
``torch.rand(1, 300 * 24000, 9)`` once at construction). ``noise`` ([rows, harmonics + 1]
float32, values in any range) replaces it; by default it is a fixed function of ``seed``, so an
utterance is reproducible.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import numpy as np

from . import _core
from .errors import InvalidArgumentError
from ._args import _seed_arg

__all__ = ["CausalVocoder", "VocoderStream"]


def _seed(seed: Any) -> int:
    return _seed_arg(seed)


def _flag(v: Any, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def _mel(mel: Any) -> np.ndarray:
    a = np.asarray(mel)
    if a.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"mel must be a numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InvalidArgumentError(f"mel must have shape [n_mel, frames], got {list(a.shape)}")
    return a


def _noise(noise: Any) -> Optional[np.ndarray]:
    if noise is None:
        return None
    a = np.asarray(noise)
    if a.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"noise must be a numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    return a


class VocoderStream:
    """One utterance: :meth:`push` fresh mel frames, ``last=True`` on the final call (which
    returns every pending sample). The first non-empty output of a stream that does not end
    there starts with ``delay_frames * samples_per_frame`` zeros when ``prefix_silence`` (as
    ``Token2wav.stream`` does). Not thread-safe; one stream per producer."""

    def __init__(self, v: "_core.CausalVocoder", seed: int, noise: Optional[np.ndarray], prefix_silence: bool,
                 record: bool = False) -> None:
        self._v = v
        self._args = (seed, noise, prefix_silence)
        self._v.reset(seed, noise, prefix_silence)
        self._v.record = record

    def push(self, mel: Any, last: bool = False) -> np.ndarray:
        """``mel`` [n_mel, frames] (frames may be 0) -> float32 PCM [samples] (possibly empty)."""
        return self._v.push(_mel(mel), _flag(last, "last"))

    def reset(self) -> None:
        """Starts a new utterance with the same noise."""
        self._v.reset(*self._args)

    @property
    def f0(self) -> np.ndarray:
        """With ``record``: every F0 frame [Hz] computed so far (the F0 predictor's output)."""
        return self._v.recorded_f0

    @property
    def source(self) -> np.ndarray:
        """With ``record``: every source sample computed so far (the excitation after its tanh)."""
        return self._v.recorded_source

    @property
    def finalized(self) -> bool:
        return bool(self._v.finalized)

    @property
    def frames_received(self) -> int:
        return int(self._v.frames_received)

    @property
    def samples_emitted(self) -> int:
        return int(self._v.samples_emitted)


class CausalVocoder:
    """The streaming vocoder of a loaded model."""

    def __init__(self, model: "_core.Model", n_threads: int = 0) -> None:
        self._m = model
        self._n_threads = int(n_threads)
        self._v = _core.CausalVocoder(model, self._n_threads)
        self._lock = threading.Lock()

    @property
    def hparams(self) -> Dict[str, Any]:
        return dict(self._v.hparams)

    @property
    def sample_rate(self) -> int:
        return int(self._v.hparams["sample_rate"])

    def stream(self, *, seed: int = 0, noise: Any = None, prefix_silence: bool = True,
               record: bool = False) -> VocoderStream:
        """A new :class:`VocoderStream` (its own compute state); ``record`` keeps its F0 and source
        (:attr:`VocoderStream.f0`, :attr:`VocoderStream.source`)."""
        return VocoderStream(_core.CausalVocoder(self._m, self._n_threads), _seed(seed), _noise(noise),
                             _flag(prefix_silence, "prefix_silence"), _flag(record, "record"))

    def vocode(self, mel: Any, *, seed: int = 0, noise: Any = None) -> np.ndarray:
        """A whole clip: ``mel`` [n_mel, frames] -> PCM [frames * samples_per_frame], as one final
        push of a fresh stream."""
        a = _mel(mel)
        if a.shape[-1] == 0:
            raise InvalidArgumentError("vocode: no mel frames")
        with self._lock:
            self._v.reset(_seed(seed), _noise(noise), False)
            return self._v.push(a, True)
