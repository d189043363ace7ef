"""A PyTorch reference of MiniCPM-o 4.5's TTS talker, written from the official remote code.

Sources (MiniCPM-o 4.5 ``modeling_minicpmo.py`` / ``utils.py`` / ``configuration_minicpmo.py``):

* ``MiniCPMTTS.__init__``: ``emb_text`` (nn.Embedding), ``model`` = transformers' ``LlamaModel``
  built from ``LlamaConfig(hidden_size, intermediate_size, num_attention_heads, num_hidden_layers,
  num_key_value_heads, max_position_embeddings, attn_implementation)`` (everything else LlamaConfig's
  defaults), ``projector_semantic`` = MultiModalProjector (Linear, ReLU, Linear), ``emb_code[0]``,
  ``head_code[0]`` = ``weight_norm(nn.Linear(hidden, num_audio_tokens, bias=False))``
  (torch.nn.utils.parametrizations).
* The condition of ``_generate_speech_non_streaming`` / ``streaming_generate``:
  ``emb_text(tokens) + F.normalize(projector_semantic(hidden), p=2, dim=-1)`` (the normalisation
  gated by ``tts_config.normalize_projected_hidden``).
* ``MiniCPMTTS.generate`` (offline): position ids ``0..L-1`` for the condition, then each sampled
  code fed back at ``L + t - 1``; ``logits /= temperature``; from the second step the repetition
  penalty (``CustomRepetitionPenaltyLogitsProcessorRepeat``, window 16) then the warpers
  (``TopPLogitsWarper(top_p, min_tokens_to_keep=3)``, ``TopKLogitsWarper(top_k, 3)``, from
  ``gen_logits``); EOS masked while ``t < min_new_token``; softmax; multinomial. Returns
  ``new_tokens[:, 0:t]``.
* ``TTSStreamingGenerator.generate_with_buffer``: per chunk ``[c, (E), B]`` at positions
  ``text_start_pos..``; the first code of the turn is the audio-BOS step (temperature only); the
  processors and warpers see every code of the turn; EOS ends the chunk and is not fed; the
  attention types full_attention / sliding_window / sliding_recompute keep or rebuild the cache.

The multinomial draw is the one thing not taken from torch: both sides use minicpm.cpp's own
seeded generator (splitmix64, inverse CDF), :class:`SplitMix`, so that sampled codes can be
compared. The penalty processor is re-expressed here (same arithmetic); the warpers are
transformers' own classes, as the official code imports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RefTts", "SplitMix", "ref_probs", "load_ref_tts"]

_MASK64 = (1 << 64) - 1

# MiniCPMTTSConfig defaults the reference gets for absent tts_config fields.
_DEFAULTS = {
    "llm_dim": 2560,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 20,
    "num_key_value_heads": 12,
    "max_position_embeddings": 4096,
    "num_audio_tokens": 4097,
    "num_text_tokens": 21178,
    "audio_bos_token_id": 21132,
    "text_eos_token_id": 21133,
    "normalize_projected_hidden": False,
    "attention_type": "sliding_recompute",
    "streaming_sliding_window_audio_window_size": 300,
    "attn_implementation": "sdpa",
}


class SplitMix:
    """minicpm.cpp's TtsRng: splitmix64, uniform = (next >> 11) * 2^-53."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def draw(self, probs: np.ndarray) -> int:
        """Inverse CDF: the first index whose running sum (float64) exceeds uniform() * sum.
        The running sum is ``np.cumsum`` over the positive entries (a sequential accumulation,
        the same additions in the same order as an element-by-element loop), searched with
        ``searchsorted``: a full-vocabulary row takes no Python loop."""
        p = np.asarray(probs, dtype=np.float64)
        target = self.uniform() * float(p.sum())
        nz = np.flatnonzero(p > 0)
        if nz.size == 0:
            return -1
        acc = np.cumsum(p[nz])
        k = int(np.searchsorted(acc, target, side="right"))
        return int(nz[min(k, nz.size - 1)])


class _Projector(nn.Module):
    """MultiModalProjector: Linear -> ReLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim, bias=True)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


def penalty_processor(history: torch.Tensor, scores: torch.Tensor, penalty: float, past_window: int) -> torch.Tensor:
    """CustomRepetitionPenaltyLogitsProcessorRepeat: counts of the last ``past_window`` ids, then
    scores * penalty^k where scores < 0, scores / penalty^k elsewhere. history [B, T], scores [B, V]."""
    if history.size(1) > past_window:
        history = history.narrow(1, -past_window, past_window)
    freq = F.one_hot(history, scores.size(1)).sum(1)
    alpha = torch.pow(penalty, freq)
    scores = scores.contiguous()
    return torch.where(scores < 0, scores.multiply(alpha), scores.divide(alpha))


def ref_probs(
    logits: torch.Tensor,
    history: Sequence[int],
    temperature: float = 0.8,
    top_p: float = 0.85,
    top_k: int = 25,
    repetition_penalty: float = 1.05,
    past_window: int = 16,
    bos_step: bool = False,
    eos: int = -1,
    mask_eos: bool = False,
) -> torch.Tensor:
    """One step's probabilities as MiniCPMTTS.generate / generate_with_buffer compute them."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    x = logits.detach().float().reshape(1, -1).clone()
    x /= torch.tensor([temperature], dtype=torch.float).view(-1, 1)
    if not bos_step:
        ids = torch.tensor([list(history)], dtype=torch.long).reshape(1, -1)
        if repetition_penalty is not None and repetition_penalty != 1 and ids.numel() > 0:
            x = penalty_processor(ids, x, float(repetition_penalty), past_window)
        if top_p is not None:
            x = TopPLogitsWarper(top_p, min_tokens_to_keep=3)(ids, x)
        if top_k is not None:
            x = TopKLogitsWarper(top_k, min_tokens_to_keep=3)(ids, x)
    if mask_eos:
        x[:, eos] = -torch.inf
    return F.softmax(x, dim=-1)[0]


class RefTts(nn.Module):
    """MiniCPMTTS at the checkpoint's sizes (num_vq = 1, projector_type mlp, llama backbone)."""

    def __init__(self, tc: Dict[str, object]) -> None:
        super().__init__()
        from torch.nn.utils.parametrizations import weight_norm
        from transformers import LlamaConfig, LlamaModel

        c = dict(_DEFAULTS)
        c.update(tc)
        self.cfg = c
        self.emb_text = nn.Embedding(int(c["num_text_tokens"]), int(c["hidden_size"]))
        self.model = LlamaModel(
            LlamaConfig(
                hidden_size=int(c["hidden_size"]),
                intermediate_size=int(c["intermediate_size"]),
                num_attention_heads=int(c["num_attention_heads"]),
                num_hidden_layers=int(c["num_hidden_layers"]),
                num_key_value_heads=int(c["num_key_value_heads"]),
                max_position_embeddings=int(c["max_position_embeddings"]),
                attn_implementation=str(c["attn_implementation"]),
            )
        )
        self.projector_spk = _Projector(int(c["llm_dim"]), int(c["hidden_size"]))
        self.projector_semantic = _Projector(int(c["llm_dim"]), int(c["hidden_size"]))
        self.emb_code = nn.ModuleList([nn.Embedding(int(c["num_audio_tokens"]), int(c["hidden_size"]))])
        self.head_code = nn.ModuleList(
            [weight_norm(nn.Linear(int(c["hidden_size"]), int(c["num_audio_tokens"]), bias=False), name="weight")]
        )
        self.audio_bos_token_id = int(c["audio_bos_token_id"])
        self.text_eos_token_id = int(c["text_eos_token_id"])
        self.num_audio_tokens = int(c["num_audio_tokens"])
        self.eos = self.num_audio_tokens - 1

    # ---- stages ----------------------------------------------------------------------------------

    @torch.no_grad()
    def condition(self, tokens: Sequence[int], hidden: torch.Tensor) -> torch.Tensor:
        llm_embeds = self.emb_text(torch.tensor(list(tokens), dtype=torch.long))
        hidden_embeds = self.projector_semantic(hidden.float())
        if self.cfg["normalize_projected_hidden"]:
            hidden_embeds = F.normalize(hidden_embeds, p=2, dim=-1)
        return llm_embeds + hidden_embeds

    @torch.no_grad()
    def text_row(self, token: int) -> torch.Tensor:
        return self.emb_text(torch.tensor([token], dtype=torch.long))

    @torch.no_grad()
    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head_code[0](hidden_states).float()

    @torch.no_grad()
    def logits(self, inputs_embeds: torch.Tensor, audio_tokens: Sequence[int]) -> torch.Tensor:
        """Teacher forcing: [inputs_embeds, emb_code(audio_tokens)] at positions 0.. -> [n+m, V]."""
        seq = [inputs_embeds.float()]
        if len(audio_tokens):
            seq.append(self.emb_code[0](torch.tensor(list(audio_tokens), dtype=torch.long)))
        x = torch.cat(seq, 0).unsqueeze(0)
        pos = torch.arange(x.shape[1]).unsqueeze(0)
        out = self.model(inputs_embeds=x, position_ids=pos, use_cache=False)
        return self.head(out.last_hidden_state)[0]

    # ---- MiniCPMTTS.generate -------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor,
        rng: SplitMix,
        temperature: float = 0.8,
        top_p: float = 0.85,
        top_k: int = 25,
        repetition_penalty: float = 1.05,
        min_new_token: int = 50,
        max_new_token: int = 2048,
    ) -> List[int]:
        inputs_embeds = torch.cat([condition.float(), self.text_row(self.text_eos_token_id),
                                   self.text_row(self.audio_bos_token_id)], 0).unsqueeze(0)
        L = inputs_embeds.shape[1]
        new_tokens: List[int] = []
        past = None
        t = 0
        for t in range(max_new_token):
            if t == 0:
                x, pos = inputs_embeds, torch.arange(L).unsqueeze(0)
            else:
                x = self.emb_code[0](torch.tensor([[new_tokens[t - 1]]], dtype=torch.long))
                pos = torch.tensor([[L + t - 1]])
            out = self.model(position_ids=pos, past_key_values=past, inputs_embeds=x, use_cache=True)
            past = out.past_key_values
            logits = self.head(out.last_hidden_state)[0, -1]
            probs = ref_probs(logits, new_tokens[:t], temperature, top_p, top_k, repetition_penalty, 16,
                              bos_step=t == 0, eos=self.eos, mask_eos=t < min_new_token)
            idx = rng.draw(probs.numpy())
            new_tokens.append(idx)
            if idx == self.eos:
                break
        return new_tokens[:t]

    # ---- TTSStreamingGenerator.generate_with_buffer --------------------------------------------

    def stream_begin(self) -> None:
        self.past = None
        self.text_start_pos = 0
        self.idx = -1
        self.all_tokens: List[int] = []
        self.chunk_info: List[Tuple[torch.Tensor, List[int]]] = []
        self.step_logits: List[torch.Tensor] = []   # every step's raw logits (for comparisons)

    def _truncate(self, window: int) -> None:
        from transformers.cache_utils import DynamicCache

        if self.past is None or self.past.get_seq_length() <= window:
            return
        new = DynamicCache()
        for li, layer in enumerate(self.past.layers):
            new.update(layer.keys[:, :, -window:, :], layer.values[:, :, -window:, :], li)
        self.past = new

    def _reindex(self) -> None:
        """utils.py TTSStreamingGenerator._reindex_kv_cache: the first chunk (sink) and the last
        one kept, the last one's keys turned by RoPE through arange(last) + (sink - start)."""
        from transformers.cache_utils import DynamicCache

        if self.past is None or len(self.chunk_info) < 2:
            return
        cur = self.past.get_seq_length()
        (c0, t0), (c1, t1) = self.chunk_info[0], self.chunk_info[-1]
        sink, last = c0.shape[1] + len(t0), c1.shape[1] + len(t1)
        if cur <= sink + last:
            return
        cfg = self.model.config
        theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        half = head_dim // 2
        inv_freq = 1.0 / (float(theta) ** (torch.arange(0, half, dtype=torch.float32) / half))
        delta = torch.arange(last) + (sink - (cur - last))
        ang = delta.float().unsqueeze(-1) * inv_freq.unsqueeze(0)
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]
        new = DynamicCache()
        for li, layer in enumerate(self.past.layers):
            k, v = layer.keys, layer.values
            kl = k[:, :, -last:, :]
            rot = torch.cat([-kl[..., half:], kl[..., :half]], -1)
            new.update(torch.cat([k[:, :, :sink, :], kl * cos + rot * sin], 2),
                       torch.cat([v[:, :, :sink, :], v[:, :, -last:, :]], 2), li)
        self.past = new
        self.text_start_pos = sink + last
        self.n_reindex = getattr(self, "n_reindex", 0) + 1

    @torch.no_grad()
    def stream_push(
        self,
        condition: torch.Tensor,
        last: bool,
        rng: SplitMix,
        temperature: float = 0.8,
        top_p: float = 0.85,
        top_k: int = 25,
        repetition_penalty: float = 1.05,
        max_new_token: int = 500,
    ) -> List[int]:
        attn = self.cfg["attention_type"]
        self.idx += 1
        parts = [condition.float()]
        if last:
            parts.append(self.text_row(self.text_eos_token_id))
        parts.append(self.text_row(self.audio_bos_token_id))
        cond = torch.cat(parts, 0).unsqueeze(0)
        if attn == "reindex" and self.idx >= 1:
            self._reindex()
        if attn == "sliding_recompute" and self.idx >= 1:
            self.past = None
            prev_cond, prev_tokens = self.chunk_info[-1]
            seq = [prev_cond]
            if prev_tokens:
                seq.append(self.emb_code[0](torch.tensor([prev_tokens], dtype=torch.long)))
            seq.append(cond)
            current = torch.cat(seq, 1)
            self.text_start_pos = 0
        else:
            current = cond
        L = current.shape[1]
        chunk: List[int] = []
        for t in range(max_new_token):
            if t == 0:
                x = current
                pos = torch.arange(self.text_start_pos, self.text_start_pos + L).unsqueeze(0)
            else:
                x = self.emb_code[0](torch.tensor([[self.all_tokens[-1]]], dtype=torch.long))
                pos = torch.tensor([[self.text_start_pos + L + t - 1]])
            out = self.model(position_ids=pos, past_key_values=self.past, inputs_embeds=x, use_cache=True)
            self.past = out.past_key_values
            if attn == "sliding_window":
                self._truncate(int(self.cfg["streaming_sliding_window_audio_window_size"]))
            logits = self.head(out.last_hidden_state)[0, -1]
            self.step_logits.append(logits)
            bos = len(self.all_tokens) == 0 and t == 0
            probs = ref_probs(logits, self.all_tokens, temperature, top_p, top_k, repetition_penalty, 16, bos_step=bos)
            idx = rng.draw(probs.numpy())
            if idx == self.eos:
                break
            self.all_tokens.append(idx)
            chunk.append(idx)
        self.chunk_info.append((cond, list(chunk)))
        if attn == "sliding_recompute":
            self.text_start_pos += L + len(chunk)
        else:
            self.text_start_pos += cond.shape[1] + len(chunk)
        return chunk


def load_ref_tts(hf_dir: Path, overrides: Optional[Dict[str, object]] = None) -> RefTts:
    """The reference talker with the checkpoint's ``tts.*`` weights (float32)."""
    from safetensors import safe_open

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    tc = dict(cfg.get("tts_config") or {})
    if overrides:
        tc.update(overrides)
    ref = RefTts(tc)
    state: Dict[str, torch.Tensor] = {}
    for f in sorted(hf_dir.glob("model*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                # (model.embed_tokens is never used: the talker runs on inputs_embeds; the tiny
                # checkpoint stores a smaller one than LlamaConfig's 32000 rows)
                if k.startswith("tts.") and not k.startswith("tts.model.embed_tokens."):
                    state[k[len("tts."):]] = st.get_tensor(k).float()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k and not k.startswith("model.embed_tokens.")]
    if missing or unexpected:
        raise RuntimeError(f"reference talker: missing {missing}, unexpected {unexpected}")
    return ref.eval()
