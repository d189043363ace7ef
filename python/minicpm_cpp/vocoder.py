"""The Token2Wav vocoder of MiniCPM-o 4.5 (the original HiFT): 80-bin log mel at 50 frames/s to
24 kHz PCM, as minicpmo-utils' ``Token2wav`` vocodes whole utterances (``hift_original.pt``).

``Model.vocoder`` gives one :class:`Vocoder` per model (its compute state, used under a lock).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from . import _core
from .errors import InvalidArgumentError
from ._args import _seed_arg

__all__ = ["Vocoder", "VocoderOutput"]


@dataclass
class VocoderOutput:
    """``wav`` [samples] float32 in [-audio_limit, audio_limit]; ``f0`` [frames] in Hz (the F0
    predictor); ``source`` [samples], the harmonic-plus-noise excitation after its tanh."""

    wav: np.ndarray
    f0: np.ndarray
    source: np.ndarray
    sample_rate: int


class Vocoder:
    """The HiFT vocoder of a loaded model, or of a GGUF file given by path (ours, or
    llama.cpp-omni's ``hifigan2.gguf`` / its ``token2wav-gguf`` folder).

    The source module's random parts (the reference draws them from torch's global generator on
    every call) are seeded here: ``seed`` picks the noise (and the initial harmonic phases, which
    do not change the output: the frame-rate interpolation never reads the sample they are added
    to), so a call is reproducible. ``noise`` ([samples, harmonics + 1] standard normal draws)
    and ``phases`` ([harmonics + 1], cycles) replace the draws; ``add_noise=False`` drops the
    noise term. ``f0`` ([frames], Hz) replaces the F0 predictor's output.

    The sines' phase accumulates over the utterance (thousands of radians after a few seconds),
    so a relative difference e in F0 moves the late samples' phase by about e times that: the
    source is exact for a given F0, and follows the F0 predictor's rounding otherwise."""

    def __init__(self, model: Any, n_threads: int = 0, device: str = "auto") -> None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0:
            raise InvalidArgumentError("n_threads must be an int >= 0")
        if isinstance(model, (str, os.PathLike)):
            # a vocoder file alone: ours, llama.cpp-omni's hifigan2.gguf, or its token2wav-gguf folder
            if not isinstance(device, str):
                raise InvalidArgumentError("device must be a str")
            from ._omni_t2w import vocoder_file

            self._v = _core.Vocoder(vocoder_file(model), device, n_threads)
        else:
            self._v = _core.Vocoder(model, int(n_threads))
        self._lock = threading.Lock()

    @property
    def hparams(self) -> Dict[str, Any]:
        return dict(self._v.hparams)

    @property
    def sample_rate(self) -> int:
        return int(self._v.hparams["sample_rate"])

    def vocode(
        self,
        mel: Any,
        *,
        seed: int = 0,
        add_noise: bool = True,
        noise: Optional[Any] = None,
        phases: Optional[Any] = None,
        f0: Optional[Any] = None,
        stages: bool = False,
    ) -> Any:
        """``mel`` [n_mel, frames] (natural-log magnitude mel, 50 frames/s) -> waveform
        [frames * samples_per_frame] float32 (or a :class:`VocoderOutput` with ``stages``)."""
        _seed_arg(seed)
        if not isinstance(add_noise, (bool, np.bool_)):
            raise InvalidArgumentError(f"add_noise must be a bool, got {type(add_noise).__name__}")
        a = np.asarray(mel)
        if a.dtype.kind not in "fiu":
            raise InvalidArgumentError(f"mel must be a numeric array, got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise InvalidArgumentError(f"mel must have shape [n_mel, frames], got {list(a.shape)}")
        with self._lock:
            wav, f0, source = self._v.vocode(a, int(seed), bool(add_noise), noise, phases, f0)
        if stages:
            return VocoderOutput(wav=wav, f0=f0, source=source, sample_rate=self.sample_rate)
        return wav
