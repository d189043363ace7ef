"""PyTorch reference of MiniCPM-o's audio input path: Whisper encoder ("apm"), projector,
pooling, placeholders and prompt assembly, for MiniCPM-o 4.5 (primary) and 2.6.

Written from the official remote code (o4.5: ``modeling_minicpmo.py`` /
``processing_minicpmo.py`` / ``configuration_minicpmo.py``; o2.6: the same files of the o2.6
release), float32 on the CPU, with the Hugging Face parameter names so a checkpoint's
``apm.*`` / ``audio_projection_layer.*`` tensors load with ``load_state_dict``. It is the ground
truth of the C++ parity tests, so it mirrors the official code step by step. (``AudioRef.to``
moves the encoder and projector to another device / dtype, for the PyTorch timings of
``benchmarks/bench_duplex.py``: the mel input follows them, the embeddings come back as float32
numpy arrays.)

Encoder (``MiniCPMWhisperEncoder.forward``; the same topology in o2.6 and o4.5):

* ``conv1`` (k 3, stride 1, pad 1) + exact (erf) GELU, ``conv2`` (k 3, stride 2, pad 1) + GELU:
  ``C = (F - 1) // 2 + 1`` encoder frames for ``F`` mel frames (50 per second);
* optional ``cnn_min_length`` (zero-pad short inputs for the convs, then keep ``(F + 1) // 2``
  frames) and ``use_extra_context`` (drop ``(prefix + 1) // 2`` frames in front when
  ``prefix > 0`` and ``(suffix + 1) // 2`` at the end when that is > 0 and shorter than the
  sequence: duplex sends 2 extra mel frames on each side, chunk 0 has none in front);
* positions ``embed_positions[offset : offset + C]`` where ``offset`` is the length of the
  per-layer K/V cache when a cache is used (0 otherwise); past the table end the last row repeats;
* pre-LN layers: ``x += out_proj(attn(LN1(x)))``, ``x += fc2(gelu(fc1(LN2(x))))``, LayerNorm eps
  1e-5, q/v/out projections with bias, ``k_proj`` without; scale ``head_dim ** -0.5``; the
  additive float mask (0 / -inf) is added to the scores; K/V of the current frames are appended
  to the cache (K stored without scaling, V with its bias);
* final ``layer_norm``: the features are the post-LN states (``hidden_states[-1]``,
  ``audio_encoder_layer = -1``; the tuple never holds the last layer's pre-LN output).

Then ``audio_projection_layer`` (``linear2(relu(linear1(x)))``, input ``encoder_ffn_dim // 4``
which equals ``d_model`` only when the FFN is 4x) and only after it
``AvgPool1d(pool_step, stride=pool_step)`` (floor): 5 in o4.5 (10 tokens/s), 2 in o2.6 (25/s).

Offline batch (``MiniCPMO.get_audio_embedding``, called from ``generate`` with
``config.audio_chunk_length`` = 1.0): every audio piece of one chat is zero-padded to the longest
(``pad_sequence``) and encoded in one batch. The key padding mask compares the encoder-frame
index with the *mel* length (``seq_range >= audio_feature_lens``, lengths in mel frames, about
twice the encoder length), so it never masks anything of an item's own padding inside the
longest item: a short item batched with a longer one attends, inside its last (partial) 1-s
block, to encoder frames computed from the zero padding. The chunk mask lets frame ``i`` see
``[0, (i // 50 + 1) * 50)``. Each item keeps ``N = (C - p) // p + 1`` pooled rows.

Streaming (``get_audio_embedding_streaming``): one mel chunk per call, batch 1; the cache is
dropped first when ``cache_len + C >= 1500`` (``>=``: a 30th 50-frame chunk restarts at 0), the
mask is all zeros over past + current, positions continue at the cache length.

What holds between the two (checked in test_audio_reference.py): for a clip of whole seconds the
streaming path with 1-s mel blocks is *not* the offline chunk-masked path, because each block is
convolved alone (zero padding at both block edges changes encoder frames 0 and 49 of every block,
and attention carries that everywhere after); a single 1-s clip is the exception. With the duplex
CNN context (blocks ``[100k - 2, 100(k+1) + 2)``, prefix 0 for block 0, the last block without a
suffix) the trimmed conv outputs are exactly the offline ones, and streaming equals offline.

Prompts (``MiniCPMO.chat`` + ``MiniCPMOProcessor``), see :func:`build_prompt_ids`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # mel frames are 10 ms
MAX_PIECE_SAMPLES = 30 * SAMPLE_RATE  # the processor cuts clips into 30 s pieces
ENCODER_FRAMES_PER_SECOND = 50

AUDIO_START, AUDIO_END, UNK = "<|audio_start|>", "<|audio_end|>", "<unk>"
TTS_BOS, TTS_EOS = "<|tts_bos|>", "<|tts_eos|>"
LISTEN = "<|listen|>"
TERMINATORS = ("<|im_end|>", "<|endoftext|>")

# o2.6's ``default_tts_chat_template`` (used by its chat() whenever a message holds audio, and by
# streaming_prefill): ChatML turns, and the generation prompt with the speaker-embedding slot.
O26_TTS_GENERATION_PROMPT = "<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>"

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Lengths and placeholders
# --------------------------------------------------------------------------------------------

def mel_frames(n_samples: int) -> int:
    """Mel frames of a clip: the attention mask of the 30 s padded features, ``ceil(n / 160)``."""
    return math.ceil(n_samples / HOP_LENGTH)


def encoder_frames(n_mel: int) -> int:
    """``_get_feat_extract_output_lengths``: frames after conv2 (stride 2)."""
    return (n_mel - 1) // 2 + 1


def pooled_tokens(n_encoder: int, pool_step: int) -> int:
    """Rows kept after AvgPool1d(pool_step): ``(C - p) // p + 1`` (0 or less: nothing)."""
    return (n_encoder - pool_step) // pool_step + 1


def tokens_for_mel(n_mel: int, pool_step: int) -> int:
    """LLM audio tokens of one item with ``n_mel`` mel frames (what the model slices to)."""
    return pooled_tokens(encoder_frames(n_mel), pool_step)


def audio_tokens(n_samples: int, pool_step: int) -> int:
    """LLM audio tokens of one piece of ``n_samples`` samples (o4.5: 10/s, o2.6: 25/s)."""
    return tokens_for_mel(mel_frames(n_samples), pool_step)


def audio_placeholder(n_samples: int, pool_step: int, chunk_input: bool = False, chunk_length: int = 1) -> str:
    """``MiniCPMOProcessor.get_audio_placeholder`` (o4.5) / the nested one of o2.6.

    One ``<|audio_start|><unk>*N<|audio_end|>`` group, or with ``chunk_input`` one group per
    ``chunk_length`` seconds (10 / 25 tokens each) with the remainder in the last group. ``N``
    counts the whole clip, also past 30 s (the official code then raises, see
    :func:`build_prompt_ids`).
    """
    n = pooled_tokens(encoder_frames(math.ceil(n_samples / HOP_LENGTH)), pool_step)
    if not chunk_input:
        return AUDIO_START + UNK * n + AUDIO_END
    per_chunk = pooled_tokens(encoder_frames(int(chunk_length * 100)), pool_step)
    n_chunks = (n + per_chunk - 1) // per_chunk
    out, done = "", 0
    for _ in range(n_chunks):
        k = min(per_chunk, n - done)
        out += AUDIO_START + UNK * k + AUDIO_END
        done += k
    return out


def split_pieces(pcm: np.ndarray) -> List[np.ndarray]:
    """The processor's 30 s cut (``audio_feature_extract``): one piece up to 30 s, else
    ``ceil(n / 480000)`` consecutive pieces, the last one shorter."""
    if len(pcm) <= MAX_PIECE_SAMPLES:
        return [pcm]
    return [pcm[i * MAX_PIECE_SAMPLES : (i + 1) * MAX_PIECE_SAMPLES] for i in range(math.ceil(len(pcm) / MAX_PIECE_SAMPLES))]


# --------------------------------------------------------------------------------------------
# Encoder, projector
# --------------------------------------------------------------------------------------------

@dataclass
class AudioConfig:
    d_model: int
    n_heads: int
    ffn_dim: int
    n_layers: int
    n_mels: int = 80
    n_positions: int = 1500
    pool_step: int = 5
    chunk_length: float = 1.0
    llm_hidden: int = 0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def projector_in(self) -> int:
        # MiniCPMO.__init__: in_dim = encoder_ffn_dim // 4 (the projector is built from it).
        return self.ffn_dim // 4

    @classmethod
    def from_config(cls, cfg: Dict[str, object]) -> "AudioConfig":
        a = cfg["audio_config"]
        return cls(
            d_model=int(a["d_model"]),
            n_heads=int(a["encoder_attention_heads"]),
            ffn_dim=int(a["encoder_ffn_dim"]),
            n_layers=int(a["encoder_layers"]),
            n_mels=int(a.get("num_mel_bins", 80)),
            n_positions=int(a.get("max_source_positions", 1500)),
            pool_step=int(cfg.get("audio_pool_step", 5)),
            chunk_length=float(cfg.get("audio_chunk_length", 1.0)),
            llm_hidden=int(cfg["hidden_size"]),
        )


KVCache = List[Tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each [B, H, L, head_dim]


class WhisperSelfAttention(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, hd]
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], past: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5  # [B, H, T, L]
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(x.shape)
        return self.out_proj(out), (k, v)


class WhisperEncoderLayer(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = WhisperSelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x, mask=None, past=None):
        a, kv = self.self_attn(self.self_attn_layer_norm(x), mask, past)
        x = x + a
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x, kv


@dataclass
class EncoderOutput:
    states: torch.Tensor  # [B, C, d_model], post final LayerNorm
    cache: Optional[KVCache]
    stages: Dict[str, torch.Tensor] = field(default_factory=dict)


class WhisperEncoder(nn.Module):
    """MiniCPMWhisperEncoder (parameter names of transformers' WhisperEncoder, no decoder)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.n_positions, d)
        self.layers = nn.ModuleList([WhisperEncoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.layer_norm = nn.LayerNorm(d, eps=1e-5)

    def conv_frontend(self, mel: torch.Tensor, use_extra_context=False, prefix_extra_frames=1,
                      suffix_extra_frames=1, cnn_min_length=None, stages=None) -> torch.Tensor:
        """[B, n_mels, F] -> [B, C, d_model] (after both GELUs and the optional trims)."""
        x = mel.to(self.conv1.weight.dtype)
        orig = x.shape[2]
        padded_for_cnn = cnn_min_length is not None and orig < cnn_min_length
        if padded_for_cnn:
            x = F.pad(x, (0, cnn_min_length - orig))
        h = F.gelu(self.conv1(x))
        if stages is not None:
            stages["conv1"] = h
        h = F.gelu(self.conv2(h))
        if stages is not None:
            stages["conv2"] = h
        if padded_for_cnn:
            h = h[:, :, : (orig + 1) // 2]
        if use_extra_context:
            pre = (prefix_extra_frames + 1) // 2 if prefix_extra_frames > 0 else 0
            suf = (suffix_extra_frames + 1) // 2 if suffix_extra_frames > 0 else 0
            if pre > 0:
                h = h[:, :, pre:]
            if 0 < suf < h.shape[2]:
                h = h[:, :, :-suf]
        return h.permute(0, 2, 1)

    def positions(self, n: int, offset: int, use_cache: bool) -> torch.Tensor:
        table = self.embed_positions.weight
        if not use_cache:
            if n > table.shape[0]:
                raise ValueError(f"{n} encoder frames exceed the {table.shape[0]}-row position table")
            return table[:n]
        if n + offset > table.shape[0]:
            # "seems the audio is longer than 30s": the rows past the end repeat the last one.
            extra = n - table.shape[0] + offset
            return torch.cat([table[offset:], table[-1:].expand(extra, -1)])
        return table[offset : offset + n]

    def forward(self, mel: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past: Optional[KVCache] = None, use_cache: bool = False, use_extra_context: bool = False,
                prefix_extra_frames: int = 1, suffix_extra_frames: int = 1, cnn_min_length: Optional[int] = None,
                return_stages: bool = False) -> EncoderOutput:
        stages: Optional[Dict[str, torch.Tensor]] = {} if return_stages else None
        h = self.conv_frontend(mel, use_extra_context, prefix_extra_frames, suffix_extra_frames, cnn_min_length, stages)
        offset = past[0][0].shape[2] if (use_cache and past is not None) else 0
        x = h + self.positions(h.shape[1], offset, use_cache)
        if stages is not None:
            stages["embed"] = x
        new_cache: Optional[KVCache] = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, attention_mask, past[i] if (use_cache and past is not None) else None)
            if new_cache is not None:
                new_cache.append(kv)
            if stages is not None:
                stages[f"layer{i}"] = x
        x = self.layer_norm(x)
        if stages is not None:
            stages["ln_post"] = x
        return EncoderOutput(x, new_cache, stages or {})


class MultiModalProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear2(F.relu(self.linear1(x)))


def subsequent_chunk_mask(size: int, chunk_size: int, num_left_chunks: int = -1, num_lookahead: int = 0) -> torch.Tensor:
    """Bool [size, size], True = may attend: row i sees ``[start, min((i // chunk + 1) * chunk
    + lookahead, size))`` with ``start`` 0 (num_left_chunks < 0) or that many chunks back."""
    i = torch.arange(size)
    blk = i // chunk_size
    start = torch.zeros_like(i) if num_left_chunks < 0 else torch.clamp((blk - num_left_chunks) * chunk_size, min=0)
    end = torch.clamp((blk + 1) * chunk_size + num_lookahead, max=size)
    j = torch.arange(size)[None, :]
    return (j >= start[:, None]) & (j < end[:, None])


def offline_attention_mask(mel_lens: Sequence[int], n_frames: int, chunk_length: float,
                           mask_lengths: str = "mel") -> torch.Tensor:
    """Additive [B, 1, C, C] mask of ``get_audio_embedding`` for a batch padded to ``n_frames``
    encoder frames. ``mask_lengths="mel"`` is the official comparison (encoder index >= mel
    length); ``"encoder"`` compares with the encoder length instead (not what the official code
    does; tests use it to show what the quirk changes)."""
    lens = torch.tensor([int(x) for x in mel_lens])
    if mask_lengths == "encoder":
        lens = (lens - 1) // 2 + 1
    elif mask_lengths != "mel":
        raise ValueError(f"mask_lengths must be 'mel' or 'encoder', got {mask_lengths!r}")
    padded = torch.arange(n_frames)[None, :] >= lens[:, None]  # [B, C] True = masked key
    masked = padded[:, None, None, :].expand(len(lens), 1, n_frames, n_frames)
    if chunk_length > 0:
        chunk = subsequent_chunk_mask(n_frames, int(chunk_length * ENCODER_FRAMES_PER_SECOND))
        masked = masked | ~chunk
    mask = torch.zeros(masked.shape, dtype=torch.float32)
    mask[masked] = float("-inf")
    return mask


def _pool(x: torch.Tensor, pool_step: int) -> torch.Tensor:
    """AvgPool1d(pool_step, stride=pool_step) over time of [B, T, D] (raises when T < pool_step,
    as torch does in the official code)."""
    return F.avg_pool1d(x.transpose(1, 2), pool_step, pool_step).transpose(1, 2)


def _as_mel_tensor(m) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))
    if t.dim() != 2:
        raise ValueError(f"a mel spectrogram is [n_mels, frames], got shape {tuple(t.shape)}")
    return t


def _load_prefixed(ckpt_dir: PathLike, prefixes: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(ckpt_dir)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out: Dict[str, torch.Tensor] = {}
    for f in files:
        out.update({k: v for k, v in load_file(str(path / f)).items() if k.startswith(prefixes)})
    return out


class AudioRef:
    """Encoder + projector + pooling of a checkpoint directory (``apm.*``,
    ``audio_projection_layer.*``, config.json ``audio_config`` / ``audio_pool_step`` /
    ``audio_chunk_length``), float32, eval mode."""

    def __init__(self, ckpt_dir: PathLike):
        self.dir = Path(ckpt_dir)
        self.model_config = json.loads((self.dir / "config.json").read_text())
        self.config = AudioConfig.from_config(self.model_config)
        c = self.config
        self.encoder = WhisperEncoder(c).eval()
        self.projector = MultiModalProjector(c.projector_in, c.llm_hidden).eval()
        state = {k: v.float() for k, v in _load_prefixed(self.dir, ("apm.", "audio_projection_layer.")).items()}
        apm = {k[len("apm."):]: v for k, v in state.items() if k.startswith("apm.")}
        proj = {k[len("audio_projection_layer."):]: v for k, v in state.items() if k.startswith("audio_projection_layer.")}
        self.encoder.load_state_dict(apm, strict=True)
        self.projector.load_state_dict(proj, strict=True)

    @property
    def pool_step(self) -> int:
        return self.config.pool_step

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "AudioRef":
        """Moves the encoder and projector (in place); returns self."""
        self.encoder.to(device=device, dtype=dtype)
        self.projector.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def project_and_pool(self, states: torch.Tensor) -> torch.Tensor:
        """[B, C, d_model] post-LN states -> [B, C // p, D]."""
        return _pool(self.projector(states), self.pool_step)

    @torch.no_grad()
    def forward_batch(self, mels: Sequence[np.ndarray], chunk_length: float = 1.0, mask_lengths: str = "mel",
                      return_stages: bool = False) -> Dict[str, object]:
        """The batched path of ``get_audio_embedding`` with every intermediate.

        Returns ``mel`` [B, n_mels, F_max] (zero padded), ``mel_lens``, ``mask`` [B, 1, C, C],
        ``states`` [B, C, d] (post-LN), ``proj`` [B, C, D], ``pooled`` [B, C // p, D],
        ``n_tokens`` (per item) and ``stages`` (encoder intermediates when asked).
        """
        ms = [_as_mel_tensor(m) for m in mels]
        if not ms:
            raise ValueError("no audio")
        lens = [m.shape[1] for m in ms]
        batch = torch.nn.utils.rnn.pad_sequence([m.t() for m in ms], batch_first=True, padding_value=0.0).transpose(1, 2)
        n_frames = encoder_frames(batch.shape[2])
        mask = offline_attention_mask(lens, n_frames, chunk_length, mask_lengths)
        out = self.encoder(batch.to(self.device), attention_mask=mask.to(self.device, self.dtype),
                           return_stages=return_stages)
        proj = self.projector(out.states)
        pooled = _pool(proj, self.pool_step)
        return {
            "mel": batch,
            "mel_lens": lens,
            "mask": mask,
            "states": out.states,
            "proj": proj,
            "pooled": pooled,
            "n_tokens": [tokens_for_mel(n, self.pool_step) for n in lens],
            "stages": out.stages,
        }

    def encoder_states(self, mels: Sequence[np.ndarray], chunk_length: float = 1.0) -> List[np.ndarray]:
        """Post-final-LN encoder states of each item, [C_i, d_model] (C_i of its own mel length)."""
        r = self.forward_batch(mels, chunk_length)
        return [r["states"][i, : encoder_frames(n)].float().cpu().numpy() for i, n in enumerate(r["mel_lens"])]

    def get_audio_embedding(self, mels: Sequence[np.ndarray], chunk_length: float = 1.0,
                            mask_lengths: str = "mel") -> List[np.ndarray]:
        """``get_audio_embedding``: the pieces of one chat in one padded batch -> [N_i, D] each.

        ``chunk_length`` <= 0 gives full attention (what the o4.5 simplex system prefill uses);
        chat() uses the config's ``audio_chunk_length`` (1.0).
        """
        r = self.forward_batch(mels, chunk_length, mask_lengths)
        return [r["pooled"][i, : max(n, 0)].float().cpu().numpy() for i, n in enumerate(r["n_tokens"])]


class AudioStreamRef:
    """``get_audio_embedding_streaming``: one mel chunk [n_mels, n] per call, batch 1, with the
    per-layer K/V cache kept between calls (``MiniCPMO.audio_past_key_values``).

    * before encoding, the cache is dropped when ``cache_len + (n - 1) // 2 + 1 >= n_positions``
      (the untrimmed length, ``>=`` as in the code);
    * the mask is zeros over ``[cache + current]``, positions ``[cache_len, cache_len + C)``;
    * ``use_extra_context`` trims the CNN context frames after conv2 (duplex: prefix 0 for the
      first chunk, then 2; suffix 2); simplex streaming passes nothing (no trimming);
    * ``N = ((n - 1) // 2 + 1 - p) // p + 1`` rows are kept, from the *untrimmed* mel length.

    The official code also drops the cache at every new simplex turn and on system / assistant
    prefills; call :meth:`reset` for those.
    """

    def __init__(self, audio: AudioRef):
        self.audio = audio
        self.cache: Optional[KVCache] = None
        self.last_states: Optional[np.ndarray] = None
        self.resets = 0

    def reset(self) -> None:
        self.cache = None

    @property
    def cache_len(self) -> int:
        return 0 if self.cache is None else int(self.cache[0][0].shape[2])

    @torch.no_grad()
    def process(self, mel_chunk: np.ndarray, use_extra_context: bool = False, prefix_extra_frames: int = 1,
                suffix_extra_frames: int = 1, cnn_min_length: Optional[int] = None) -> np.ndarray:
        mel = _as_mel_tensor(mel_chunk)[None].to(self.audio.device)
        n = mel.shape[2]
        full = encoder_frames(n)
        if self.cache is not None and self.cache_len + full >= self.audio.config.n_positions:
            self.cache = None
            self.resets += 1
        expected = full
        if use_extra_context:
            expected -= (prefix_extra_frames + 1) // 2 if prefix_extra_frames > 0 else 0
            expected -= (suffix_extra_frames + 1) // 2 if suffix_extra_frames > 0 else 0
        out = self.audio.encoder(mel, past=self.cache, use_cache=True, use_extra_context=use_extra_context,
                                 prefix_extra_frames=prefix_extra_frames, suffix_extra_frames=suffix_extra_frames,
                                 cnn_min_length=cnn_min_length)
        if out.states.shape[1] != expected:
            # The official mask is built for `expected` rows: a different length fails there too.
            raise ValueError(f"encoder gave {out.states.shape[1]} frames, the streaming mask expects {expected}")
        self.cache = out.cache
        self.last_states = out.states[0].float().cpu().numpy()
        pooled = self.audio.project_and_pool(out.states)
        return pooled[0, : max(tokens_for_mel(n, self.audio.pool_step), 0)].float().cpu().numpy()


def hf_whisper_encoder(audio: AudioRef, n_positions: Optional[int] = None):
    """transformers' WhisperEncoder (float32, eval) with the same weights, for cross-checks.

    It only accepts ``2 * max_source_positions`` mel frames; ``n_positions`` builds it with a
    shorter position table (the first rows of ours) so that short inputs can be compared.
    """
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    c = audio.config
    n_pos = c.n_positions if n_positions is None else int(n_positions)
    cfg = WhisperConfig(d_model=c.d_model, encoder_attention_heads=c.n_heads, encoder_ffn_dim=c.ffn_dim,
                        encoder_layers=c.n_layers, num_mel_bins=c.n_mels, max_source_positions=n_pos,
                        activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    cfg._attn_implementation = "eager"
    model = HFWhisperEncoder(cfg).to(torch.float32).eval()
    state = {k: v.clone() for k, v in audio.encoder.state_dict().items()}
    state["embed_positions.weight"] = state["embed_positions.weight"][:n_pos]
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------------
# Prompt assembly
# --------------------------------------------------------------------------------------------

# Content markers of chat(): o4.5 writes them bare, o2.6 in parentheses. The processor splits on
# a regex built from them (its "." is a regex dot) and replaces each whole marker.
_MARKERS = {
    "o4.5": ("<image>./</image>", "<audio>./</audio>"),
    "o2.6": ("(<image>./</image>)", "(<audio>./</audio>)"),
}
_POOL_STEP = {"o4.5": 5, "o2.6": 2}


def _jinja_env():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render_chat_template(template: str, messages: List[Dict[str, str]], **kwargs) -> str:
    """Render a Hugging Face chat template the way apply_chat_template does (jinja2 sandbox,
    trim_blocks, lstrip_blocks, loop controls, ``tojson`` / ``raise_exception``)."""
    return _jinja_env().from_string(template).render(messages=messages, **kwargs)


def _render_o26_tts(messages: List[Dict[str, str]], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + (O26_TTS_GENERATION_PROMPT if add_generation_prompt else "")


@dataclass
class AudioPrompt:
    """A chat's prompt as the official processor builds it, plus what its audio rows need.

    ``audio_sources`` are the PCM arrays that go to the feature extractor, in batch order; each
    gives one mel piece per 30 s (``mel_fn``); ``fill`` says how the embeddings of all those
    pieces are written over ``audio_bounds``: ``"zip"`` pairs the k-th piece with the k-th
    ``<|audio_start|>`` group and raises on a length mismatch (o4.5, and o2.6 without
    ``chunk_input``), ``"concat"`` concatenates all pieces and fills the groups in order
    (o2.6 with ``config.chunk_input``).
    """

    model: str
    text: str
    ids: List[int]
    audio_bounds: List[Tuple[int, int]]
    image_positions: List[int]
    audio_sources: List[np.ndarray]
    images: list
    fill: str
    use_tts_template: bool


def _tokenizer(tokenizer_dir: PathLike):
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast.from_pretrained(str(tokenizer_dir))


def _merge_same_message(audios: List[np.ndarray], parts: List[int]) -> List[np.ndarray]:
    """``audio_feature_extract`` with audio_parts: consecutive audios of one message are joined
    with np.hstack before featurising."""
    merged, cur = [], []
    for k, a in enumerate(audios):
        if k == 0 or parts[k] == parts[k - 1]:
            cur.append(a)
        else:
            merged.append(np.hstack(cur))
            cur = [a]
    if cur:
        merged.append(np.hstack(cur))
    return merged


def build_prompt_ids(tokenizer_dir: PathLike, msgs: List[Dict[str, object]], enable_thinking: bool = False,
                     model: str = "o4.5", omni_mode: bool = False, stream_input: bool = False,
                     chunk_input: Optional[bool] = None, use_tts_template: Optional[bool] = None,
                     audio_rule: str = "official", merge_audio_from_same_content: bool = True,
                     add_generation_prompt: bool = True, fill: Optional[str] = None, tokenizer=None,
                     max_slice_nums: int = 9, use_image_id: bool = True) -> AudioPrompt:
    """The official chat() + processor prompt for messages whose ``content`` is a str or a list
    of str / audio (1-D float np.ndarray, 16 kHz) / image (PIL.Image) items.

    What chat() does (o4.5; o2.6 differences in brackets):

    * each item becomes text, the marker ``<audio>./</audio>`` / ``<image>./</image>``
      [``(<audio>./</audio>)`` / ``(<image>./</image>)``] or itself; the items of a message are
      joined with "\\n", or with "" when ``omni_mode`` or ``stream_input`` [``omni_input``];
    * any audio switches ``use_tts_template`` on. o4.5 renders tokenizer_config.json's template
      with ``enable_thinking`` (False: ``<think>\\n\\n</think>\\n\\n`` after the assistant
      header) and ``use_tts_template`` (``<|tts_bos|>`` at the very end). [o2.6 renders its own
      ``default_tts_chat_template`` instead, plain ChatML plus
      ``<|im_start|>assistant\\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>``; without audio the
      tokenizer's template, which for o2.6 is not in the test assets: here it is the one of
      ``tokenizer_dir``.] The answer is cut at the first ``<|tts_eos|>`` [o2.6 removes every
      ``<|tts_eos|>`` instead];
    * every audio marker becomes :func:`audio_placeholder` of that item's sample count, chunked
      per second when ``stream_input`` [o2.6: ``chunk_input``, True by default in its chat()];
      every image marker the slice placeholder of ``ref_minicpmv_processor`` (image ids on);
    * the text is tokenized (no BOS) and every ``<|listen|>`` id is removed [o2.6 keeps it].

    Features (``audio_rule="official"``): with ``merge_audio_from_same_content`` (chat()'s
    default; o2.6 always) consecutive audios of one message are concatenated, then every source
    is cut into 30 s pieces, all pieces of the chat go into one encoder batch. Placeholders do not
    follow that: so two audios in one message, or one clip over 30 s (313 placeholders for 31.3 s
    against a first piece of 300 rows), make the official ``get_omni_embedding`` raise its
    "Shape mismatch" ValueError (see :func:`fill_audio_rows`); o2.6 with ``chunk_input``
    concatenates all pieces instead and fails only when the rows run short. o4.5's chat(
    stream_input=True) chunks the placeholders per second but generate() still takes the offline
    embeddings and fills them by ``"zip"`` unless ``config.stream_input`` is set (False by
    default), so it raises for any audio longer than 1 s.

    ``audio_rule="per_item"`` is this runtime's rule: every audio item and every 30 s piece of
    it is its own encoder item with its own ``<|audio_start|><unk>*N<|audio_end|>`` group (the
    pieces of one item joined as items are, "\\n" or "" in omni mode), filled by ``"zip"``
    (o2.6: each piece keeps chat()'s per-second groups of 25, filled in order).
    """
    if model not in _MARKERS:
        raise ValueError(f"model must be one of {sorted(_MARKERS)}, got {model!r}")
    if audio_rule not in ("official", "per_item"):
        raise ValueError(f"audio_rule must be 'official' or 'per_item', got {audio_rule!r}")
    from PIL import Image

    import ref_minicpmv_processor as improc

    tok = tokenizer if tokenizer is not None else _tokenizer(tokenizer_dir)
    image_mark, audio_mark = _MARKERS[model]
    pool = _POOL_STEP[model]
    if chunk_input is None:
        chunk_input = stream_input if model == "o4.5" else True
    if audio_rule == "per_item":
        chunk_input = False
    if fill is None:
        fill = "concat" if (model == "o2.6" and (chunk_input or audio_rule == "per_item")) else "zip"

    tts = bool(use_tts_template)
    images, audios, parts = [], [], []
    rendered: List[Dict[str, str]] = []
    if not msgs:
        raise ValueError("msgs is empty")
    for i, msg in enumerate(msgs):
        role, content = msg["role"], msg["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: role {role!r}")
        if i == 0 and role not in ("user", "system"):
            raise ValueError("the first message must be user or system")
        items = [content] if isinstance(content, str) else list(content)
        cur: List[str] = []
        for c in items:
            if isinstance(c, Image.Image):
                images.append(c)
                cur.append(image_mark)
            elif isinstance(c, np.ndarray):
                audios.append(c)
                parts.append(i)
                cur.append(audio_mark)
                if use_tts_template is None:
                    tts = True
            elif isinstance(c, str):
                cur.append(c)
            # anything else is dropped silently, as chat() does
        joiner = "" if (omni_mode or (stream_input and model == "o4.5")) else "\n"
        rendered.append({"role": role, "content": joiner.join(cur)})

    if model == "o2.6" and tts:
        text = _render_o26_tts(rendered, add_generation_prompt)
    else:
        cfg = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())
        text = render_chat_template(cfg["chat_template"], rendered, add_generation_prompt=add_generation_prompt,
                                    use_tts_template=tts, enable_thinking=enable_thinking)

    # Audio placeholders and the feature sources.
    if audio_rule == "official":
        phs = [audio_placeholder(len(a), pool, chunk_input=chunk_input) for a in audios]
        sources = _merge_same_message(audios, parts) if (merge_audio_from_same_content or model == "o2.6") else list(audios)
        sources = [p for s in sources for p in split_pieces(s)]
    else:
        # Each piece is an item of its own: joined as items are; o2.6 keeps its per-second groups
        # (chat()'s chunk_input) filled in order.
        phs, sources = [], []
        piece_join = "" if omni_mode else "\n"
        for a in audios:
            pieces = split_pieces(a)
            phs.append(piece_join.join(audio_placeholder(len(p), pool, chunk_input=(model == "o2.6")) for p in pieces))
            sources.extend(pieces)

    pattern = "(" + "|".join(re.escape(m).replace(r"\.", ".") for m in (image_mark, audio_mark)) + ")"
    chunks = re.split(pattern, text)
    n_img = n_aud = 0
    for k, ch in enumerate(chunks):
        if ch == image_mark:
            chunks[k] = improc.placeholder(images[n_img].size, n_img, max_slice_nums, use_image_id)
            n_img += 1
        elif ch == audio_mark:
            chunks[k] = phs[n_aud]
            n_aud += 1
    if n_img != len(images) or n_aud != len(audios):
        raise ValueError(f"markers found for {n_img}/{len(images)} images and {n_aud}/{len(audios)} audios")
    final = "".join(chunks)

    ids = tok(final, add_special_tokens=False).input_ids
    if model == "o4.5":
        listen = tok.convert_tokens_to_ids(LISTEN)
        ids = [t for t in ids if t != listen]
    a_start, a_end = tok.convert_tokens_to_ids(AUDIO_START), tok.convert_tokens_to_ids(AUDIO_END)
    starts = [k + 1 for k, t in enumerate(ids) if t == a_start]
    ends = [k for k, t in enumerate(ids) if t == a_end]
    if len(starts) != len(ends):
        raise ValueError("unbalanced <|audio_start|> / <|audio_end|>")
    conv = tok.convert_tokens_to_ids
    img_pos = improc.image_positions(ids, {conv(improc.IM_START), conv(improc.SLICE_START)},
                                     {conv(improc.IM_END), conv(improc.SLICE_END)})
    return AudioPrompt(model, final, ids, list(zip(starts, ends)), img_pos, sources, images, fill, tts)


def fill_audio_rows(rows: torch.Tensor, bounds: Sequence[Tuple[int, int]], embeddings: Sequence[np.ndarray],
                    fill: str = "zip") -> None:
    """Write audio embeddings into ``rows`` [L, D] in place, as ``get_omni_embedding``.

    ``"zip"``: piece k fills group k; a length mismatch raises ValueError ("Shape mismatch");
    extra pieces or groups are ignored (``zip``). ``"concat"``: all pieces joined, groups filled
    in order (o2.6 ``config.chunk_input``); too few rows raise ValueError.
    """
    if fill == "zip":
        for emb, (s, e) in zip(embeddings, bounds):
            if emb.shape[0] != e - s:
                raise ValueError(f"Shape mismatch: embeddings of shape {tuple(emb.shape)} for {e - s} audio positions")
            rows[s:e] = torch.as_tensor(emb, dtype=rows.dtype)
    elif fill == "concat":
        allemb = np.concatenate(list(embeddings), axis=0) if embeddings else np.zeros((0, rows.shape[1]), np.float32)
        pos = 0
        for s, e in bounds:
            if pos + (e - s) > allemb.shape[0]:
                raise ValueError(f"{allemb.shape[0]} audio embeddings for at least {pos + e - s} positions")
            rows[s:e] = torch.as_tensor(allemb[pos : pos + e - s], dtype=rows.dtype)
            pos += e - s
    else:
        raise ValueError(f"fill must be 'zip' or 'concat', got {fill!r}")


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------

def default_mel_fn(pcm: np.ndarray) -> List[np.ndarray]:
    """The offline log-mel reference (``tests/ref_audio_mel.py``, one [80, F] per 30 s piece)."""
    import ref_audio_mel  # imported lazily: written separately

    return ref_audio_mel.offline_features(pcm)


class OmniReference:
    """Tokenizer, audio reference, vision reference and LLM of one tiny checkpoint."""

    def __init__(self, ckpt_dir: PathLike):
        import tiny_models

        self.dir = Path(ckpt_dir)
        self.config = json.loads((self.dir / "config.json").read_text())
        self.model = "o4.5" if float(self.config.get("version", 4.5)) >= 4 else "o2.6"
        self.tok = _tokenizer(self.dir)
        self.audio = AudioRef(self.dir)
        self.llm = tiny_models.load_reference_llm(self.dir)
        self._vision = None

    @property
    def vision(self):
        if self._vision is None:
            import tiny_models

            self._vision = tiny_models.load_reference_vision(self.dir)
        return self._vision

    def image_embeddings(self, images) -> torch.Tensor:
        import ref_minicpmv_processor as improc
        import ref_minicpmv_vision as vref

        out = []
        for im in images:
            pieces, _ = improc.preprocess(im)
            emb = vref.vision_embeddings(self.vision, [torch.from_numpy(p) for p in pieces])
            out.append(emb.reshape(-1, emb.shape[-1]))
        return torch.cat(out) if out else torch.zeros((0, self.llm.config.hidden_size))

    @torch.no_grad()
    def chat(self, msgs, n_gen: int = 16, mel_fn: Optional[Callable[[np.ndarray], List[np.ndarray]]] = None,
             return_logits: bool = True, **prompt_kw) -> Dict[str, object]:
        prompt_kw.setdefault("model", self.model)
        prompt = build_prompt_ids(self.dir, msgs, tokenizer=self.tok, **prompt_kw)
        mel_fn = mel_fn or default_mel_fn
        mels = [m for src in prompt.audio_sources for m in mel_fn(src)]
        embs = self.audio.get_audio_embedding(mels, self.audio.config.chunk_length) if mels else []

        rows = self.llm.get_input_embeddings()(torch.tensor([prompt.ids]))[0].clone()
        fill_audio_rows(rows, prompt.audio_bounds, embs, prompt.fill)
        if prompt.images:
            img = self.image_embeddings(prompt.images)
            if img.shape[0] != len(prompt.image_positions):
                raise ValueError(f"{img.shape[0]} image embeddings for {len(prompt.image_positions)} positions")
            rows[prompt.image_positions] = img.to(rows.dtype)

        stop = {self.tok.convert_tokens_to_ids(t) for t in TERMINATORS}
        res = self.llm(inputs_embeds=rows[None], use_cache=True)
        prompt_logits = res.logits[0].float().numpy() if return_logits else None
        step_logits, tokens = [], []
        past, last = res.past_key_values, res.logits[0, -1]
        for _ in range(n_gen):
            step_logits.append(last.float().numpy())
            nxt = int(last.argmax())
            tokens.append(nxt)
            if nxt in stop:
                break
            res = self.llm(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, last = res.past_key_values, res.logits[0, -1]
        text = decode_answer(self.tok, tokens, self.model)
        return {
            "prompt": prompt,
            "ids": prompt.ids,
            "inputs_embeds": rows.numpy(),
            "audio_embeddings": embs,
            "mels": mels,
            "prompt_logits": prompt_logits,
            "step_logits": np.stack(step_logits) if step_logits else np.zeros((0, self.llm.config.vocab_size), np.float32),
            "tokens": tokens,
            "text": text,
        }


def decode_answer(tok, tokens: Sequence[int], model: str = "o4.5") -> str:
    """chat()'s answer text from the generated ids (``_decode_text``, both versions): every id 0
    is dropped (it is the generate() pad id, and also the token "!"), a leading BOS id (the
    tokenizer's ``<|im_start|>``) and one trailing terminator are dropped, the rest is decoded
    with special tokens; o4.5 then keeps the text before the first ``<|tts_eos|>``, o2.6 removes
    every ``<|tts_eos|>``."""
    stop = {tok.convert_tokens_to_ids(t) for t in TERMINATORS}
    ids = [int(t) for t in tokens if int(t) != 0]
    if ids and tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
        ids = ids[1:]
    if ids and ids[-1] in stop:
        ids = ids[:-1]
    text = tok.decode(ids)
    return text.split(TTS_EOS)[0] if model == "o4.5" else text.replace(TTS_EOS, "")


_REFERENCES: Dict[str, OmniReference] = {}


def reference_chat(ckpt_dir: PathLike, msgs, n_gen: int = 16,
                   mel_fn: Optional[Callable[[np.ndarray], List[np.ndarray]]] = None, **prompt_kw) -> Dict[str, object]:
    """Official chat() on a tiny checkpoint, greedy (``do_sample=False, num_beams=1``, no
    repetition penalty: chat()'s own non-sampling default is beam search 3 with penalty 1.2).

    Prompt ids (:func:`build_prompt_ids`, keyword arguments pass through) -> the ``llm.``
    embedding rows, audio embeddings written unscaled over each ``<|audio_start|>`` group
    (:func:`fill_audio_rows`), image embeddings over the image positions -> transformers
    Qwen3/Qwen2ForCausalLM. Returns the prompt, ``inputs_embeds`` [L, D], ``prompt_logits``
    [L, V] (every prompt position), ``step_logits`` [n, V] (the distribution each generated
    token was taken from), ``tokens`` (greedy, ending with ``<|im_end|>`` / ``<|endoftext|>``
    when one came within ``n_gen``) and the answer ``text`` cut as chat() cuts it. Mel comes from
    ``mel_fn(pcm) -> [mel per 30 s piece]`` (default: ``ref_audio_mel.offline_features``).
    """
    key = str(Path(ckpt_dir).resolve())
    if key not in _REFERENCES:
        _REFERENCES[key] = OmniReference(ckpt_dir)
    return _REFERENCES[key].chat(msgs, n_gen=n_gen, mel_fn=mel_fn, **prompt_kw)
