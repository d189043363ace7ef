"""The PyTorch side of ``bench_audio.py``: MiniCPM-o's audio reference computation in plain torch
modules (no transformers), fed from our GGUF file.

* :func:`build_torch_model`: MiniCPMWhisperEncoder's layers (conv1 + GELU, conv2 + GELU,
  positions, pre-LN blocks with ``scaled_dot_product_attention``, final LayerNorm) and the
  MultiModalProjector, with the checkpoint's parameter names (``apm.*``,
  ``audio_projection_layer.*``);
* :class:`TorchAudio`: that model on one device and dtype: ``encode`` is get_audio_embedding of
  one clip (the reference's boolean block mask), ``encode_stream`` get_audio_embedding_streaming
  (per-layer K/V cache grown with ``torch.cat``, as transformers' DynamicCache, dropped when it
  would reach the position table), AvgPool1d after the projector; numpy in, float32 numpy out;
* :class:`TorchMel`: WhisperFeatureExtractor's torch path with MiniCPMAAudioProcessor's dynamic
  clamp, with :func:`mel_filters` (librosa's Slaney bank, in numpy).

tests/test_bench_audio.py checks these against tests/ref_minicpmo_audio.py and this runtime.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from make_random_audio import hf_to_gguf_names

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 400
CLIP_SECONDS = 30

def mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = 80) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and area norm): [n_mels, n_fft // 2 + 1],
    the bank WhisperFeatureExtractor uses (so the PyTorch side needs neither librosa nor us)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    ramps = pts[:, None] - fft_f[None, :]
    fdiff = np.diff(pts)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (pts[2:] - pts[:-2]))[:, None]
    return weights.astype(np.float32)



def build_torch_model(meta: dict, n_pos: int):
    """The reference modules (MiniCPMWhisperEncoder with SDPA attention, MultiModalProjector),
    parameter names as in the checkpoint (``apm.*``, ``audio_projection_layer.*``)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    E, H, Fd, L, D = (int(meta[k]) for k in ("n_embd", "n_head", "n_ff", "n_layer", "proj_dim"))
    eps = float(meta.get("eps") or 1e-5)
    hd = E // H

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(E, E), nn.Linear(E, E, bias=False)
            self.v_proj, self.out_proj = nn.Linear(E, E), nn.Linear(E, E)

        def forward(self, x, mask, past):
            b, t, _ = x.shape
            q, k, v = (p(x).view(b, t, H, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # scale hd ** -0.5
            return self.out_proj(o.transpose(1, 2).reshape(b, t, E)), (k, v)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attention()
            self.self_attn_layer_norm = nn.LayerNorm(E, eps=eps)
            self.fc1, self.fc2 = nn.Linear(E, Fd), nn.Linear(Fd, E)
            self.final_layer_norm = nn.LayerNorm(E, eps=eps)

        def forward(self, x, mask, past):
            a, kv = self.self_attn(self.self_attn_layer_norm(x), mask, past)
            x = x + a
            return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), kv

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(80, E, 3, padding=1)
            self.conv2 = nn.Conv1d(E, E, 3, stride=2, padding=1)
            self.embed_positions = nn.Embedding(n_pos, E)
            self.layers = nn.ModuleList([Layer() for _ in range(L)])
            self.layer_norm = nn.LayerNorm(E, eps=eps)

        def forward(self, mel, mask=None, past=None, offset=0):
            h = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).permute(0, 2, 1)   # [B, C, E]
            x = h + self.embed_positions.weight[offset: offset + h.shape[1]]
            cache = []
            for i, layer in enumerate(self.layers):
                x, kv = layer(x, mask, None if past is None else past[i])
                cache.append(kv)
            return self.layer_norm(x), cache

    class Projector(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1, self.linear2 = nn.Linear(E, D), nn.Linear(D, D)

        def forward(self, x):
            return self.linear2(F.relu(self.linear1(x)))

    class Audio(nn.Module):
        def __init__(self):
            super().__init__()
            self.apm = Encoder()
            self.audio_projection_layer = Projector()

    return Audio()


def torch_state_from_gguf(path: str, n_layer: int) -> Dict[str, np.ndarray]:
    """The file's tensors under their Hugging Face names, float32 (dequantized where needed)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    to_hf = {g: h for h, g in hf_to_gguf_names(n_layer).items()}
    out = {}
    for t in GGUFReader(path).tensors:
        hf = to_hf.get(t.name)
        if hf is None:
            continue
        # numpy order (the reverse of ggml's); the caller reshapes to the module's parameter shapes
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        out[hf] = arr if arr.flags.writeable else arr.copy()   # F32 tensors are views of the read-only map
    missing = set(to_hf.values()) - set(out)
    if missing:
        raise SystemExit(f"bench_audio: {path} lacks {len(missing)} audio tensors (e.g. {sorted(missing)[0]})")
    return out


def block_mask(n: int, block: int, n_mel: int):
    """get_audio_embedding's mask for one item, as a boolean [1, 1, n, n] (True = attend): key j
    is visible from row i when j < the item's mel length and j lies before the end of i's block."""
    import torch

    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    keep = j < n_mel
    if block > 0:
        keep = keep & (j < (i // block + 1) * block)
    return keep[None, None]


class TorchAudio:
    """The reference on one device and dtype, fed and read as numpy."""

    def __init__(self, path: str, meta: dict, device: str, dtype):
        import torch

        self.torch = torch
        self.device, self.dtype = torch.device(device), dtype
        state = torch_state_from_gguf(path, int(meta["n_layer"]))
        self.n_pos = state["apm.embed_positions.weight"].shape[0]
        self.pool = int(meta["pool_step"])
        chunk = float(meta.get("chunk_length") if meta.get("chunk_length") is not None else 1.0)
        self.block = int(chunk * 50) if chunk > 0 else 0
        model = build_torch_model(meta, self.n_pos)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: torch.from_numpy(v.reshape(shapes[k])) for k, v in state.items()}, strict=True)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.enc, self.proj = self.model.apm, self.model.audio_projection_layer
        self.cache = None
        self._masks: Dict[Tuple[int, int], object] = {}

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _mel(self, mel: np.ndarray):
        return self.torch.from_numpy(mel)[None].to(self.device, non_blocking=False).to(self.dtype)

    def _embed(self, states, n_tok: int) -> np.ndarray:
        x = self.proj(states)                                                   # [1, C, D]
        x = self.torch.nn.functional.avg_pool1d(x.transpose(1, 2), self.pool, self.pool).transpose(1, 2)
        return x[0, :n_tok].float().cpu().numpy()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """get_audio_embedding of one clip (batch of one)."""
        with self.torch.inference_mode():
            n_mel = mel.shape[1]
            C = (n_mel - 1) // 2 + 1
            key = (C, n_mel)
            if key not in self._masks:
                self._masks[key] = block_mask(C, self.block, n_mel).to(self.device)
            states, _ = self.enc(self._mel(mel), mask=self._masks[key])
            out = self._embed(states, (C - self.pool) // self.pool + 1)
        self.sync()
        return out

    def encode_stream(self, mel: np.ndarray) -> np.ndarray:
        """get_audio_embedding_streaming of one chunk, with the per-layer K/V cache."""
        with self.torch.inference_mode():
            C = (mel.shape[1] - 1) // 2 + 1
            past_len = 0 if self.cache is None else int(self.cache[0][0].shape[2])
            if self.cache is not None and past_len + C >= self.n_pos:
                self.cache, past_len = None, 0
            states, self.cache = self.enc(self._mel(mel), past=self.cache, offset=past_len)
            out = self._embed(states, (C - self.pool) // self.pool + 1)
        self.sync()
        return out


class TorchMel:
    """WhisperFeatureExtractor's torch path with MiniCPMAAudioProcessor's dynamic clamp."""

    def __init__(self, filters: np.ndarray, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.filters = torch.from_numpy(filters).to(self.device)                 # [80, 201]
        self.window = torch.hann_window(N_FFT, device=self.device)

    def features(self, pcm: np.ndarray, pad_to: int = 0, dynamic: bool = True) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(pcm).to(self.device)
            if pad_to > x.shape[0]:
                x = torch.nn.functional.pad(x, (0, pad_to - x.shape[0]))
            spec = torch.stft(x, N_FFT, HOP, window=self.window, return_complex=True)
            power = spec[..., :-1].abs() ** 2                                      # [201, frames]
            log = torch.clamp(self.filters @ power, min=1e-10).log10()
            if dynamic:
                log = torch.maximum(log, log.max() - 8.0)
            out = ((log + 4.0) / 4.0).cpu().numpy()
        return out

    def offline(self, pcm: np.ndarray) -> np.ndarray:
        """One clip <= 30 s: padded to 30 s, clamped over all 3000 frames, trimmed."""
        return self.features(pcm, pad_to=CLIP_SECONDS * SAMPLE_RATE)[:, : math.ceil(len(pcm) / HOP)]
