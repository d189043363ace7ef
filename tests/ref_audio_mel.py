"""Ground truth for the log-mel tests: MiniCPM-o 4.5's audio features, offline and streaming,
rebuilt on transformers' WhisperFeatureExtractor and torch as the official processor does
(``processing_minicpmo.py``: MiniCPMAAudioProcessor, process_audio_batch, chunk_audio,
StreamingMelProcessorExact; ``modeling_minicpmo.py``: MiniCPMO.init_streaming_processor and
streaming_prefill).

What the official code does, and what is kept here:

* Feature extraction is WhisperFeatureExtractor.__call__ with the torch path (torch is
  installed): float64 input becomes float32; ``padding="max_length"`` zero-pads to 480000
  samples (30 s), ``padding=False`` does not pad but ``truncation=True`` (the default) still
  cuts anything past 480000 samples; torch.stft(n_fft=400, hop=160, periodic Hann,
  center=True, reflect), last frame dropped, power, 80 Slaney mel filters, log10 of
  max(mel, 1e-10), then MiniCPMAAudioProcessor's clamp: ``max - 8`` over the whole extracted
  window ("dynamic") or the fixed floor -10 ("floor", a no-op after the 1e-10 floor), then
  (x + 4) / 4. The attention mask has ceil(n / 160) ones for n real samples.
* Offline (chat) features: the clip is cut into consecutive 30 s pieces; each piece is
  padded to 30 s, featurised in dynamic mode and trimmed to its attention-mask length.
* Streaming: the whole received buffer is re-featurised after each chunk (no padding),
  floor mode while the buffer is shorter than 5 s, dynamic mode after; only frames whose
  window ends inside the buffer are "stable"; chunk k emits global frames
  [100k - r, 100(k+1) + r) once they are stable, or whatever exists when is_last_chunk;
  a sliding window drops 10 s (hop-aligned, keeping >= 1 s) once the buffer reaches 30 s.
  The defaults are those of MiniCPMO.init_streaming_processor (chunk 1000 ms, first chunk
  1035 ms, CNN redundancy 0 ms, sliding window 30 s / 10 s); duplex uses
  cnn_redundancy_ms=20. ``pad_first_chunk`` adds the callers' rule (streaming_prefill and the
  duplex prefill both left-pad a first chunk shorter than 1035 ms with zeros).

``dtype=torch.float64`` runs the same steps in double (with the float32 window and filters):
not the reference, but the exact value of its arithmetic. Where the clamp is off (streaming,
under 5 s), bins near the 1e-10 floor in an otherwise loud frame carry the float32 STFT's
rounding noise (up to ~3e-4 on the features for real speech), which no other float32 or
double implementation reproduces; such outputs are checked against float64.

One deliberate difference: the official streaming processor switches the mode of the
feature extractor it shares with the offline path (so an offline call made after a
streaming session can inherit floor mode); here each use owns its extractor.
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
PIECE_SAMPLES = 30 * SAMPLE_RATE


class RefAudioFeatureExtractor(WhisperFeatureExtractor):
    """WhisperFeatureExtractor with MiniCPMAAudioProcessor's two clamp modes (torch path)."""

    def __init__(self, dynamic_log_norm: bool = True, dynamic_range_db: float = 8.0,
                 log_floor_db: float = -10.0, dtype: torch.dtype = torch.float32, **kwargs):
        kwargs.setdefault("return_attention_mask", True)
        super().__init__(**kwargs)
        self.dtype = dtype
        self.dynamic_log_norm = dynamic_log_norm
        self.dynamic_range_db = float(dynamic_range_db)
        self.log_floor_db = float(log_floor_db)

    def _torch_extract_fbank_features(self, waveform: np.ndarray, device: str = "cpu") -> np.ndarray:
        # float64 (a check of the arithmetic, not the reference) keeps the float32 window and
        # filters and only computes in double.
        wave = torch.from_numpy(waveform).to(device, torch.float32).to(self.dtype)   # [batch, samples]
        window = torch.hann_window(self.n_fft, device=device).to(self.dtype)
        spec = torch.stft(wave, n_fft=self.n_fft, hop_length=self.hop_length, window=window, return_complex=True)
        power = spec[..., :-1].abs() ** 2                             # [batch, 201, frames]
        filters = torch.from_numpy(self.mel_filters).to(device, torch.float32).to(self.dtype)   # [201, 80]
        log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()  # [batch, 80, frames]
        if self.dynamic_log_norm:
            # One maximum per batch item, over all its bins and frames.
            peak = log_spec.amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - self.dynamic_range_db)
        else:
            log_spec = torch.maximum(log_spec, torch.tensor(self.log_floor_db, dtype=log_spec.dtype))
        return ((log_spec + 4.0) / 4.0).cpu().float().numpy()


_offline_extractors = {}


def pieces(pcm: np.ndarray) -> List[np.ndarray]:
    """chunk_audio: consecutive 30 s pieces, the last one shorter (a clip of <= 30 s is one piece)."""
    if len(pcm) <= PIECE_SAMPLES:
        return [pcm]
    return [pcm[i:i + PIECE_SAMPLES] for i in range(0, len(pcm), PIECE_SAMPLES)]


def offline_features(pcm: np.ndarray, dtype: torch.dtype = torch.float32) -> List[np.ndarray]:
    """Chat-path features of one clip: per 30 s piece, float32 [80, ceil(len(piece) / 160)]."""
    if dtype not in _offline_extractors:
        _offline_extractors[dtype] = RefAudioFeatureExtractor(dtype=dtype)
    extractor = _offline_extractors[dtype]
    out = []
    for piece in pieces(np.asarray(pcm)):
        feats = extractor(piece, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length",
                                   return_attention_mask=True)
        n = int(feats["attention_mask"].sum(dim=1)[0])
        out.append(feats["input_features"][0, :, :n].numpy().astype(np.float32))
    return out


class StreamingMelRef:
    """StreamingMelProcessorExact with MiniCPMO.init_streaming_processor's settings."""

    def __init__(self, chunk_ms: int = 1000, first_chunk_ms: int = 1035, cnn_redundancy_ms: int = 0,
                 sliding_window: bool = True, slide_trigger_s: float = 30.0, slide_stride_s: float = 10.0,
                 pad_first_chunk: bool = True, dtype: torch.dtype = torch.float32):
        self.extractor = RefAudioFeatureExtractor(dtype=dtype)
        self.chunk_frames = int(round(chunk_ms * SAMPLE_RATE / 1000)) // HOP
        self.first_chunk_samples = max(HOP, int(round(first_chunk_ms * SAMPLE_RATE / 1000)) // HOP * HOP)
        self.pad_target = int(first_chunk_ms * SAMPLE_RATE / 1000)   # streaming_prefill's left-pad length
        self.chunk_samples = int(round(chunk_ms * SAMPLE_RATE / 1000))
        self.redundancy = max(0, int(cnn_redundancy_ms * SAMPLE_RATE / 1000) // HOP)
        self.sliding_window = sliding_window
        self.trigger_samples = int(slide_trigger_s * SAMPLE_RATE)
        self.stride_samples = int(slide_stride_s * SAMPLE_RATE)
        self.pad_first_chunk = pad_first_chunk
        self.reset()

    def reset(self) -> None:
        self.buffer = np.zeros(0, dtype=np.float32)
        self.last_emitted = 0    # global index of the next core frame
        self.base = 0            # global index of the buffer's frame 0
        self.is_first = True

    def next_chunk_samples(self) -> int:
        return self.first_chunk_samples if self.is_first else self.chunk_samples

    def _features(self) -> np.ndarray:
        if len(self.buffer) < N_FFT:
            raise ValueError(f"buffer length is shorter than n_fft {len(self.buffer)} < {N_FFT}")
        self.extractor.dynamic_log_norm = len(self.buffer) >= 5 * SAMPLE_RATE
        feats = self.extractor(self.buffer, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=False)
        return feats["input_features"][0].numpy()

    def _slide(self) -> None:
        n = len(self.buffer)
        if not self.sliding_window or n < self.trigger_samples:
            return
        keep = min(SAMPLE_RATE, n - self.stride_samples)
        drop = min(self.stride_samples, max(0, n - keep)) // HOP * HOP
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.base += drop // HOP

    def process(self, chunk: np.ndarray, is_last_chunk: bool = False) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.is_first and self.pad_first_chunk and len(chunk) < self.pad_target:
            chunk = np.concatenate([np.zeros(self.pad_target - len(chunk), dtype=np.float32), chunk])
        self.buffer = np.concatenate([self.buffer, chunk])
        self._slide()
        mel = self._features()
        n_local = mel.shape[-1]
        stable = min(n_local, (len(self.buffer) - N_FFT // 2) // HOP + 1)   # frames whose window ends in the buffer
        core_start = self.last_emitted
        core_end = core_start + self.chunk_frames
        self.is_first = False
        if self.base + stable >= core_end + self.redundancy or is_last_chunk:
            start = min(max(0, max(0, core_start - self.redundancy) - self.base), n_local)
            end = max(start, min(core_end + self.redundancy - self.base, n_local))
            self.last_emitted = core_end
            return mel[:, start:end].astype(np.float32)
        return mel[:, 0:0].astype(np.float32)

    def flush(self) -> np.ndarray:
        if len(self.buffer) == 0:
            return np.zeros((N_MELS, 0), dtype=np.float32)
        mel = self._features()
        n_global = self.base + mel.shape[-1]
        if self.last_emitted >= n_global:
            return mel[:, 0:0].astype(np.float32)
        start = max(0, self.last_emitted - self.base)
        self.last_emitted = n_global
        return mel[:, start:].astype(np.float32)


def mel_filters() -> np.ndarray:
    """The extractor's filter bank as torch uses it: float32 [80, 201]."""
    return RefAudioFeatureExtractor().mel_filters.T.astype(np.float32)
