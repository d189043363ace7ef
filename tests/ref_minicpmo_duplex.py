"""A PyTorch reference of MiniCPM-o 4.5's full-duplex session, written from the official code.

Sources: ``MiniCPMODuplex`` (``modeling_minicpmo.py``: ``__init__`` defaults, ``prepare``,
``streaming_prefill``, ``streaming_generate``, ``_convert_results_to_tts_input``,
``_generate_waveform_from_tokens``, ``_reset_streaming_state``, ``get_session_schema``),
``MiniCPMTTS.generate_chunk`` and ``StreamDecoder`` / ``DuplexWindowConfig`` /
``drop_tokens_from_cache`` / ``realign_rotary_suffix`` (``utils.py``). The LLM is transformers'
Qwen3ForCausalLM (float32 unless ``load_parts`` says otherwise, see the end) with the
checkpoint's ``llm.*`` weights and a DynamicCache, fed one piece at a time at positions
``cache_len ..`` exactly as ``StreamDecoder.feed`` does; the audio input goes through
``ref_audio_mel.StreamingMelRef`` and ``ref_minicpmo_audio.AudioStreamRef``; the talker is
``ref_minicpmo_tts.RefTts``'s modules.

What one session does (``RefDuplex``):

* prepare: the prefix text ids (``tokenizer.encode(prefix, add_special_tokens=False)``, fed one
  id per forward), the reference audio's offline embeddings (``process_audio`` +
  ``get_audio_embedding(chunk_length=audio_chunk_length)``, one forward), then the suffix ids.
  The kept system length is registered after the suffix (``off`` / ``basic``) or after the
  prefix + reference audio with the suffix counted in (``context``).
* one unit (``streaming_prefill`` + ``streaming_generate``): ``<unit>``, per frame (omni mode)
  ``<image>`` + the overview's 64 resampler rows + ``</image>`` (``max_slice_nums`` 1: no HD
  slices; ``tiny_models.load_reference_vision`` and ``ref_minicpmv_processor.preprocess``), the
  unit's audio embeddings (no markers), the ``text`` ids; with frames and no audio (VISION
  mode) the logits of ``</image>`` start the decode loop and the audio chunk counter advances; the logits of the last prefilled position start
  the decode loop. Audio: the samples are appended to a buffer; the first unit left-pads it
  with zeros to ``int(1035 * 16)`` = 16560 samples, takes ``get_streaming_chunk_size()``
  = 16480 (1035 ms aligned down to the 160-sample hop) and consumes 16480 (``int`` of
  ``effective_first_chunk_ms`` = 1030 ms); later units take and consume 16000. The mel
  processor is StreamingMelProcessorExact with chunk 1000 ms, first chunk 1035 ms, CNN
  redundancy 20 ms (2 frames each side), sliding window 30 s / 10 s; the encoder runs with
  ``use_extra_context`` (prefix 0 frames for chunk 0, then 2; suffix 2) on its K/V cache,
  which the session never drops (only the 1500-position overflow rule does: a new
  ``prepare`` keeps it, as the official does).
* decode loop, ``j = 0 .. max_speak_tokens - 1``: at ``j = max - 1`` feed ``<|chunk_eos|>``
  and stop; while ``force_listen_count`` calls are not used up the token is ``<|listen|>``
  without a draw; otherwise ``StreamDecoder.decode`` (below); a ``<|listen|>`` while the turn
  has not ended becomes ``<|tts_bos|>``. A terminator (``<|listen|>``, ``<|chunk_eos|>``,
  ``<|chunk_tts_eos|>``) is fed and ends the loop. Any other token is fed, clears
  ``turn_ended``, sets ``end_of_turn = (token == <|turn_eos|>)`` (so a token after
  ``<|turn_eos|>`` clears it again) and, for ``j >= 1`` only, its (id, post-norm last hidden
  state) goes to the TTS list. Then ``</unit>`` is fed, the unit registered, the window applied.
* ``decode``: a raw draw over the whole vocabulary (argmax when greedy, else from the
  untempered softmax); ``<|chunk_eos|>`` is returned at once. Else: ``<|tts_pad|>``, the
  tokenizer's ``bad_token_ids`` and ``<|chunk_eos|>`` to -inf; the repetition penalty over the
  distinct ids of the last 512 decoded ids **divides** every such logit by 1.05 whatever its
  sign (``logits /= penalty`` when penalty > 1; ``*= 1 / penalty`` when < 1); the length penalty
  on ``<|turn_eos|>`` divides a positive / multiplies a non-positive logit by 1.1; then argmax
  (greedy) or temperature 0.7, top-k 20, top-p 0.8 (``top_k_top_p_filtering``) and a draw. Every
  id that passes the raw check is appended to the decoded-id history (a ``<|listen|>`` later
  replaced by ``<|tts_bos|>`` is recorded as ``<|listen|>``; forced listens and raw
  ``<|chunk_eos|>`` are not). ``logit_bias`` ({id: value}) is added to the logits of every
  step before the raw draw (not an official feature: the runtime's, applied where a caller's
  bias would be).
* TTS (speaking units only, ``is_listen`` false): the condition is ``emb_text(ids) +
  F.normalize(projector_semantic(hidden))`` (normalised always, whatever
  ``normalize_projected_hidden`` says) followed by the ``emb_text(audio_bos)`` row (only that
  row when the list is empty); ``generate_chunk``: temperature 0.8, the repetition penalty 1.05
  over this chunk's codes (window 16), no top-k / top-p, EOS masked while ``t < min_new``,
  ``max_new`` 26 (so at most 25 codes come back: the loop's last index is excluded), ``min_new``
  26 except 0 at the turn's first chunk (``text_start_pos == 0``) and at end of turn; the
  talker's KV cache and ``text_start_pos`` carry over inside the turn (``+= L + n_codes``) and
  reset at end of turn.
* Token2Wav flush rules (``_generate_waveform_from_tokens``, ``CHUNK_SIZE`` 25,
  ``pre_lookahead`` 3): the code buffer starts as 3 silence codes 4218 (per turn); at a turn's
  first chunk (force_flush) windows of ``min(25 + 3, len)`` are synthesised while ``len >= 3 + 5``,
  the buffer advancing by ``min(25, window - 3)``; otherwise windows of 28 while ``len >= 28``,
  advancing by 25; at end of turn the rest is synthesised with ``last_chunk``. The reference
  records each window as ``(codes, last_chunk)`` in ``t2w_chunks``.
* Windows: ``basic`` — after a unit, when the cache holds more than ``window_max_tokens``
  drop the oldest units one by one until it holds at most ``window_target_tokens``; their K/V
  rows leave and the suffix keys are turned by RoPE from their old to their new positions.
  ``context`` — when more than ``context_max_units`` units are held, drop the oldest units one by
  one; the generated ids (special ids removed) of each dropped speaking unit are appended to the
  previous text (``"\\n\\nprevious: "`` ids first, content left-truncated to
  ``max_previous_tokens``), and the cache is rebuilt: ``[prefix][previous + suffix recomputed at
  positions prefix_len ..][kept units re-rotated]`` (while no previous text exists only the
  kept units are re-rotated).

Device and dtype: ``load_parts(ckpt_dir, device=, dtype=)`` puts the LLM, the audio encoder and
projector and the talker on a device in a dtype (default: the CPU in float32, the parity tests'
ground truth; a GPU in bfloat16 is what ``benchmarks/bench_duplex.py --torch`` times, as the
official runs). A session takes both from its parts: every tensor it makes goes to the LLM's
device, activations in the modules' dtype, ids as int64. The sampling arithmetic (softmax,
penalties, top-k / top-p, the talker's temperature) is float32 on that device; each SplitMix draw
reads its float64 [V] row on the host. The log-mel front end stays on the CPU in float32 (as the
official processor runs it) and so does the vision tower of omni units (its rows are moved). The
forward passes run under ``torch.inference_mode``. ``clock`` (optional) is called with
``"decision"`` (the unit's first token is chosen), ``"llm"`` (``</unit>`` fed, the window applied)
and ``"talker"`` (the talker's codes and the unit's Token2Wav windows are known) during ``step``,
so that a caller can time the stages (e.g. synchronise a GPU and read a clock); it changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

import ref_audio_mel
import ref_minicpmo_audio as ref_audio

__all__ = ["RefDuplex", "realign_keys", "DEFAULT_SYSTEM", "SILENCE_CODE"]

PathLike = Union[str, Path]

DEFAULT_SYSTEM = "You are a helpful assistant."
SILENCE_CODE = 4218
PREVIOUS_MARKER = "\n\nprevious: "
# StreamDecoder's custom list, added to tokenizer.all_special_ids for the previous-text filter.
CUSTOM_SPECIAL = ["<unit>", "</unit>", "<image>", "</image>", "<slice>", "</slice>", "<|listen|>", "<|speak|>",
                  "<|tts_bos|>", "<|tts_eos|>", "<|audio_start|>", "<|audio_end|>", "<|chunk_eos|>",
                  "<|chunk_tts_eos|>", "<|turn_eos|>"]


def realign_keys(keys: torch.Tensor, old_start: int, new_start: int, theta: float) -> torch.Tensor:
    """realign_rotary_suffix: undo the rotation of positions old_start.. and apply new_start..
    keys [B, H, T, hd] (rotate_half convention, cos/sin of cat(freqs, freqs)), on their device;
    the rotation is computed in float32 and the result has the keys' dtype."""
    t = keys.shape[2]
    if t == 0:
        return keys
    hd = keys.shape[-1]
    dev = keys.device
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32, device=dev) / hd))
    x = keys.float()

    def cs(start):
        ang = torch.outer(torch.arange(start, start + t, dtype=torch.float32, device=dev), inv)
        ang = torch.cat([ang, ang], -1)
        return ang.cos()[None, None], ang.sin()[None, None]

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], -1)

    c0, s0 = cs(old_start)
    base = c0 * x - s0 * rot(x)
    c1, s1 = cs(new_start)
    return (c1 * base + s1 * rot(base)).to(keys.dtype)


class _Kv:
    """The LLM cache as per-layer (K, V) tensors [1, H, T, hd] (a DynamicCache is made per forward)."""

    def __init__(self, layers: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None):
        self.layers = layers or []

    def __len__(self) -> int:
        return 0 if not self.layers else int(self.layers[0][0].shape[2])

    def dynamic(self):
        from transformers.cache_utils import DynamicCache

        c = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            c.update(k, v, i)
        return c

    @staticmethod
    def from_dynamic(c) -> "_Kv":
        return _Kv([(l.keys, l.values) for l in c.layers])

    def slice(self, a: int, b: Optional[int] = None) -> "_Kv":
        return _Kv([(k[:, :, a:b].clone(), v[:, :, a:b].clone()) for k, v in self.layers])

    def cat(self, other: "_Kv") -> "_Kv":
        if not self.layers:
            return other
        if not other.layers:
            return self
        return _Kv([(torch.cat([k1, k2], 2), torch.cat([v1, v2], 2))
                    for (k1, v1), (k2, v2) in zip(self.layers, other.layers)])

    def realign(self, old_start: int, new_start: int, theta: float) -> "_Kv":
        return _Kv([(realign_keys(k, old_start, new_start, theta), v) for k, v in self.layers])


class RefDuplex:
    """One MiniCPMODuplex session on a tiny checkpoint directory (see the module documentation).

    ``ref_audio``: the 16 kHz reference recording put in the system prompt (None: none). The
    knobs are those of the agreed ``minicpm_cpp.DuplexSession`` (defaults: the official ones).
    Draws (the LLM's when not greedy, the talker's always) use minicpm.cpp's splitmix64 generator
    (``ref_minicpmo_tts.SplitMix``) instead of torch.multinomial, the LLM's seeded with ``seed``,
    the talker's with ``(seed * 1000003 + 1) mod 2^63`` as the runtime derives it, so that a seeded
    session's codes can be compared.
    ``step()`` returns a dict: listening, text, end_of_turn, tokens, unit_tokens (-1 per
    embedding row), tts_tokens, tts_hidden ([n, n_embd]), tts_condition ([L, tts_hidden]),
    tts_codes, t2w_chunks ([(codes, last_chunk)]), is_listen_official (the official return's
    ``is_listen``).
    The device and dtype are those of ``parts`` (``load_parts``); ``clock(event)`` is the optional
    timing hook of the module documentation.
    """

    def __init__(self, ckpt_dir: PathLike, ref_audio: Optional[np.ndarray] = None, system: str = DEFAULT_SYSTEM,
                 prefix: Optional[str] = None, suffix: Optional[str] = None, max_speak_tokens: int = 20,
                 force_listen_count: int = 0, window: str = "off", window_max_tokens: int = 4000,
                 window_target_tokens: int = 3500, context_max_units: int = 24, max_previous_tokens: int = 500,
                 temperature: float = 0.7, top_k: int = 20, top_p: float = 0.8, repetition_penalty: float = 1.05,
                 repetition_window: int = 512, length_penalty: float = 1.1, greedy: bool = False,
                 seed: Optional[int] = None, generate_audio: bool = True, tts_greedy: bool = False,
                 tts_temperature: float = 0.8, tts_repetition_penalty: float = 1.05, pre_lookahead: int = 3,
                 parts=None, clock: Optional[Callable[[str], None]] = None):
        if window not in ("off", "basic", "context"):
            raise ValueError(f"window must be off / basic / context, got {window!r}")
        self.dir = Path(ckpt_dir)
        self.config = json.loads((self.dir / "config.json").read_text())
        if parts is None:
            parts = load_parts(self.dir, with_tts=generate_audio)
        self.tok, self.audio, self.llm, self.tts = parts["tok"], parts["audio"], parts["llm"], parts.get("tts")
        cfg = self.llm.config
        rp = getattr(cfg, "rope_parameters", None) or {}
        self.theta = float(getattr(cfg, "rope_theta", None) or rp.get("rope_theta") or self.config.get("rope_theta", 10000.0))
        self.embed = self.llm.get_input_embeddings()
        # where every tensor of the session goes, and the activations' dtype (the LLM's)
        self.device, self.dtype = self.embed.weight.device, self.embed.weight.dtype
        self.clock = clock

        self.prefix = prefix if prefix is not None else f"<|im_start|>system\n{system}\n<|audio_start|>"
        self.suffix = suffix if suffix is not None else "<|audio_end|><|im_end|>"
        self.ref_audio = None if ref_audio is None else np.asarray(ref_audio, dtype=np.float32)
        self.max_speak_tokens = int(max_speak_tokens)
        self.force_listen_count = int(force_listen_count)
        self.window = window
        self.window_max_tokens, self.window_target_tokens = int(window_max_tokens), int(window_target_tokens)
        self.context_max_units, self.max_previous_tokens = int(context_max_units), int(max_previous_tokens)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.repetition_penalty, self.repetition_window = float(repetition_penalty), int(repetition_window)
        self.length_penalty = float(length_penalty)
        self.greedy = bool(greedy)
        self.tts_greedy = bool(tts_greedy)   # the official talker always samples (decode_mode is the LLM's)
        self.seed = seed
        self.generate_audio = bool(generate_audio) and self.tts is not None
        self.tts_temperature, self.tts_repetition_penalty = float(tts_temperature), float(tts_repetition_penalty)
        self.pre_lookahead = int(pre_lookahead)

        conv = self.tok.convert_tokens_to_ids
        self.id = {t: conv(t) for t in ["<unit>", "</unit>", "<|listen|>", "<|speak|>", "<|tts_bos|>", "<|chunk_eos|>",
                                        "<|chunk_tts_eos|>", "<|turn_eos|>", "<|tts_pad|>"]}
        self.terminators = {self.id["<|listen|>"], self.id["<|chunk_eos|>"], self.id["<|chunk_tts_eos|>"]}
        tc = json.loads((self.dir / "tokenizer_config.json").read_text()) if (self.dir / "tokenizer_config.json").is_file() else {}
        self.forbidden = [self.id["<|tts_pad|>"]] + list(tc.get("bad_token_ids", [])) + [self.id["<|chunk_eos|>"]]
        special = set(self.tok.all_special_ids)
        for t in CUSTOM_SPECIAL:
            i = conv(t)
            if i is not None and i != self.tok.unk_token_id:
                special.add(i)
        self.special_ids = special
        self.marker_ids = self.tok.encode(PREVIOUS_MARKER, add_special_tokens=False)
        self.prepare()

    # ---- session state --------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self) -> None:
        """MiniCPMODuplex.prepare (+ _reset_streaming_state, StreamDecoder.reset,
        init_streaming_processor)."""
        from ref_minicpmo_tts import SplitMix

        seed = 0 if self.seed is None else int(self.seed)
        self.rng = SplitMix(seed)
        # the talker's own stream, seeded as minicpm.cpp derives it ((seed * 1000003 + 1) mod 2^63)
        self.tts_rng = SplitMix((seed * 1000003 + 1) % (1 << 63))
        self.kv = _Kv()
        self.ctx: List[int] = []            # ids in the cache, -1 for embedding rows
        self.decoded: List[int] = []        # StreamDecoder.generated_tokens
        self.units: List[Dict[str, object]] = []
        self.next_unit = 0
        self.turn_ended = True
        self.generate_count = 0
        self.audio_chunk_idx = 0
        self.audio_buffer = np.zeros(0, dtype=np.float32)
        self.mel = ref_audio_mel.StreamingMelRef(chunk_ms=1000, first_chunk_ms=1035, cnn_redundancy_ms=20,
                                                 sliding_window=True, pad_first_chunk=False)
        if not hasattr(self, "enc"):
            self.enc = ref_audio.AudioStreamRef(self.audio)   # the official keeps it across prepare()
        self.tts_past = None
        self.tts_text_start_pos = 0
        self.t2w_buffer = [SILENCE_CODE] * 3
        self.previous_ids: List[int] = []
        self.has_previous = False
        self.history: List[Dict[str, object]] = []
        self.ref_rows: Optional[torch.Tensor] = None   # the reference audio's embedding rows

        if self.prefix:
            for t in self.tok.encode(self.prefix, add_special_tokens=False):
                self._feed_ids([t])
        if self.ref_audio is not None:
            mels = ref_audio_mel.offline_features(self.ref_audio)
            embs = self.audio.get_audio_embedding(mels, self.audio.config.chunk_length)
            rows = torch.from_numpy(np.concatenate(embs, 0)).to(self.device)
            self.ref_rows = rows
            self._feed(rows, [-1] * rows.shape[0])
        self.suffix_ids = self.tok.encode(self.suffix, add_special_tokens=False) if self.suffix else []
        self.preserve_prefix = len(self.kv)
        if self.window == "context":
            self.system_length = self.preserve_prefix + len(self.suffix_ids)
            for t in self.suffix_ids:
                self._feed_ids([t])
        else:
            for t in self.suffix_ids:
                self._feed_ids([t])
            self.system_length = len(self.kv)

    reset = prepare

    @property
    def n_past(self) -> int:
        return len(self.kv)

    @property
    def tokens(self) -> List[int]:
        return list(self.ctx)

    @property
    def positions(self) -> List[int]:
        return list(range(len(self.ctx)))    # StreamDecoder keeps positions == cache rows

    # ---- LLM ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _feed(self, rows: torch.Tensor, ids: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """StreamDecoder.feed: rows [L, D] at positions len(cache)..; -> (last logits [V] float32,
        hidden [L, D] in the LLM's dtype)."""
        n0 = len(self.kv)
        pos = torch.arange(n0, n0 + rows.shape[0], device=self.device).unsqueeze(0)
        out = self.llm.model(inputs_embeds=rows.to(self.device, self.dtype).unsqueeze(0), position_ids=pos,
                             past_key_values=self.kv.dynamic() if self.kv.layers else None, use_cache=True)
        self.kv = _Kv.from_dynamic(out.past_key_values)
        self.ctx.extend(int(i) for i in ids)
        h = out.last_hidden_state[0]
        return self.llm.lm_head(h[-1:])[0].float(), h

    def _feed_ids(self, ids: Sequence[int]):
        rows = self.embed(torch.tensor(list(ids), dtype=torch.long, device=self.device))
        return self._feed(rows, ids)

    def _draw(self, probs: torch.Tensor) -> int:
        return int(self.rng.draw(probs.double().cpu().numpy()))

    def _decode(self, logits: torch.Tensor) -> int:
        """StreamDecoder.decode (listen_prob_scale 1, listen_top_k None)."""
        x = logits.clone().float()
        raw = int(torch.argmax(x)) if self.greedy else self._draw(F.softmax(x, -1))
        if raw == self.id["<|chunk_eos|>"]:
            return raw
        x[self.forbidden] = float("-inf")
        if self.repetition_penalty != 1.0 and self.decoded:
            # every distinct id of the window once (one indexed operation, the same per-element
            # arithmetic as the official loop over the set)
            rep = sorted(t for t in set(self.decoded[-self.repetition_window:]) if t < x.shape[0])
            if rep:
                idx = torch.tensor(rep, dtype=torch.long, device=x.device)
                if self.repetition_penalty > 1.0:
                    x[idx] = x[idx] / self.repetition_penalty
                else:
                    x[idx] = x[idx] * (1.0 / self.repetition_penalty)
        if self.length_penalty != 1.0:
            e = self.id["<|turn_eos|>"]
            x[e] = x[e] / self.length_penalty if x[e] > 0 else x[e] * self.length_penalty
        if self.greedy:
            nxt = int(torch.argmax(x))
        else:
            x = x / self.temperature
            x = _top_k_top_p(x, self.top_k, self.top_p)
            nxt = self._draw(F.softmax(x, -1))
        self.decoded.append(nxt)
        return nxt

    # ---- one unit -------------------------------------------------------------------------------

    def _audio_rows(self, audio: np.ndarray) -> torch.Tensor:
        self.audio_buffer = np.concatenate([self.audio_buffer, np.asarray(audio, dtype=np.float32)])
        if self.audio_chunk_idx == 0:
            need_pad = int(1035 * 16000 / 1000)
            if len(self.audio_buffer) < need_pad:
                self.audio_buffer = np.concatenate([np.zeros(need_pad - len(self.audio_buffer), np.float32), self.audio_buffer])
        need = self.mel.next_chunk_samples()
        if len(self.audio_buffer) < need:
            raise ValueError(f"audio not enough: need {need} samples, only {len(self.audio_buffer)}")
        mel = self.mel.process(self.audio_buffer[:need])
        if mel.shape[-1] == 0:
            raise ValueError("streaming audio processing returned empty")
        first = self.audio_chunk_idx == 0
        emb = self.enc.process(mel, use_extra_context=True, prefix_extra_frames=0 if first else 2, suffix_extra_frames=2)
        # the first chunk consumes int(effective_first_chunk_ms) ms, later ones CHUNK_MS
        consumed = int(int(self.mel.first_chunk_samples / 16000 * 1000.0) * 16000 / 1000) if first else 16000
        self.audio_buffer = self.audio_buffer[consumed:]
        self.audio_chunk_idx += 1
        return torch.from_numpy(np.ascontiguousarray(emb)).to(self.device)

    def _feed_frames(self, frames) -> torch.Tensor:
        import ref_minicpmv_processor as improc
        import ref_minicpmv_vision as vref
        import tiny_models
        from PIL import Image

        if getattr(self, "_vision", None) is None:
            self._vision = tiny_models.load_reference_vision(self.dir)
        conv = self.tok.convert_tokens_to_ids
        logits = None
        for f in frames:
            im = f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f, dtype=np.uint8))
            pieces, _ = improc.preprocess(im, max_slice_nums=1)
            emb = vref.vision_embeddings(self._vision, [torch.from_numpy(p) for p in pieces])   # [pieces, 64, D]
            for k in range(emb.shape[0]):
                start, end = ("<image>", "</image>") if k == 0 else ("<slice>", "</slice>")
                self._feed_ids([conv(start)])
                rows = emb[k].to(self.device, self.dtype)
                self._feed(rows, [-1] * rows.shape[0])
                logits, _ = self._feed_ids([conv(end)])
        return logits

    def _mark(self, event: str) -> None:
        if self.clock is not None:
            self.clock(event)

    @torch.inference_mode()
    def step(self, audio: Optional[np.ndarray] = None, frame=None, text: Optional[Union[str, List[str]]] = None,
             logit_bias: Optional[Dict[int, float]] = None) -> Dict[str, object]:
        frames = [] if frame is None else (list(frame) if isinstance(frame, (list, tuple)) else [frame])
        has_audio = audio is not None and len(audio) > 0
        text_ids: List[int] = []
        if text:
            text_ids = self.tok.encode("".join(text) if isinstance(text, list) else str(text), add_special_tokens=False)
        if not has_audio and not text_ids and not frames:
            raise ValueError("a unit needs audio, frames or text")
        bias = None
        if logit_bias:
            bias = torch.zeros(self.llm.config.vocab_size, device=self.device)
            for k, v in logit_bias.items():
                bias[int(k)] += float(v)

        unit_start = len(self.kv)
        unit_ctx_start = len(self.ctx)
        logits, _ = self._feed_ids([self.id["<unit>"]])
        if frames:
            # streaming_prefill step 2: per frame <image> overview rows </image>, then per HD
            # slice <slice> rows </slice> (max_slice_nums 1: the overview only); in VISION mode
            # (no audio) the logits of the last one start the decode loop.
            lg = self._feed_frames(frames)
            if not has_audio:
                logits = lg
        if has_audio:
            rows = self._audio_rows(audio)
            logits, _ = self._feed(rows, [-1] * rows.shape[0])
        if text_ids:
            lg, _ = self._feed_ids(text_ids)
            if not has_audio and not frames:
                logits = lg
        if frames and not has_audio:
            self.audio_chunk_idx += 1   # VISION mode counts as an audio chunk

        force_listen = self.generate_count < self.force_listen_count
        self.generate_count += 1
        tokens: List[int] = []
        pairs: List[Tuple[int, torch.Tensor]] = []
        is_listen = end_of_turn = False
        for j in range(self.max_speak_tokens):
            if j == self.max_speak_tokens - 1:
                if j == 0:
                    self._mark("decision")
                self._feed_ids([self.id["<|chunk_eos|>"]])
                tokens.append(self.id["<|chunk_eos|>"])
                break
            if force_listen:
                t = self.id["<|listen|>"]
            else:
                t = self._decode(logits + bias if bias is not None else logits)
                if t == self.id["<|listen|>"] and not self.turn_ended:
                    t = self.id["<|tts_bos|>"]
            if j == 0:
                self._mark("decision")
            tokens.append(t)
            is_listen = t == self.id["<|listen|>"]
            if t in self.terminators:
                logits, _ = self._feed_ids([t])
                break
            self.turn_ended = False
            logits, h = self._feed_ids([t])
            end_of_turn = t == self.id["<|turn_eos|>"]
            if end_of_turn:
                self.turn_ended = True
            if j != 0:
                pairs.append((t, h[-1].clone()))
        self._feed_ids([self.id["</unit>"]])
        gen_ids = [p[0] for p in pairs]
        text_out = self.tok.decode(gen_ids, skip_special_tokens=True) if gen_ids else ""
        unit_tokens = self.ctx[unit_ctx_start:]
        self.units.append({"id": self.next_unit, "length": len(self.kv) - unit_start, "tokens": gen_ids,
                           "text": text_out, "listen": is_listen})
        self.next_unit += 1
        evicted = self._enforce_window()
        self._mark("llm")

        out: Dict[str, object] = {
            "listening": bool(is_listen), "is_listen_official": bool(is_listen), "text": "" if is_listen else text_out,
            "end_of_turn": bool(end_of_turn) and not is_listen, "tokens": tokens, "unit_tokens": unit_tokens,
            "tts_tokens": [], "tts_hidden": np.zeros((0, self.llm.config.hidden_size), np.float32),
            "tts_condition": None, "tts_codes": [], "t2w_chunks": [], "evicted": evicted,
        }
        if not is_listen:
            out["tts_tokens"] = gen_ids
            if pairs:
                out["tts_hidden"] = torch.stack([p[1] for p in pairs]).float().cpu().numpy()
            if self.tts is not None:
                cond = self._tts_condition(pairs)
                out["tts_condition"] = cond[0].float().cpu().numpy()
                if self.generate_audio:
                    self._speak(cond, end_of_turn, out)
        self._mark("talker")
        self.history.append(out)
        return out

    # ---- TTS and the Token2Wav flush rules ---------------------------------------------------------

    @torch.inference_mode()
    def _tts_condition(self, pairs) -> torch.Tensor:
        t = self.tts
        dev, dt = t.emb_text.weight.device, t.emb_text.weight.dtype
        bos = t.emb_text(torch.tensor([t.audio_bos_token_id], dtype=torch.long, device=dev))
        if not pairs:
            return bos.unsqueeze(0)
        ids = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=dev)
        hid = torch.stack([p[1] for p in pairs]).to(dev, dt)
        e = t.emb_text(ids) + F.normalize(t.projector_semantic(hid), p=2, dim=-1)
        return torch.cat([e, bos], 0).unsqueeze(0)

    @torch.inference_mode()
    def _tts_chunk(self, cond: torch.Tensor, max_new: int, min_new: int) -> List[int]:
        """MiniCPMTTS.generate_chunk (num_vq 1); the logits' arithmetic in float32."""
        from ref_minicpmo_tts import penalty_processor

        t = self.tts
        dev, dt = t.emb_text.weight.device, t.emb_text.weight.dtype
        L = cond.shape[1]
        start = self.tts_text_start_pos
        past = self.tts_past
        new: List[int] = []
        step = 0
        for step in range(max_new):
            if step == 0:
                x, pos = cond.to(dt), torch.arange(start, start + L, device=dev).unsqueeze(0)
            else:
                x = t.emb_code[0](torch.tensor([[new[step - 1]]], dtype=torch.long, device=dev))
                pos = torch.tensor([[start + L + step - 1]], device=dev)
            o = t.model(position_ids=pos, past_key_values=past, inputs_embeds=x, use_cache=True)
            past = o.past_key_values
            lg = t.head(o.last_hidden_state)[:, -1].float() / self.tts_temperature
            if step > 0 and self.tts_repetition_penalty != 1:
                lg = penalty_processor(torch.tensor([new[:step]], dtype=torch.long, device=dev), lg,
                                       self.tts_repetition_penalty, 16)
            if step < min_new:
                lg[:, t.eos] = -torch.inf
            p = F.softmax(lg, -1)[0]
            idx = int(torch.argmax(p)) if self.tts_greedy else int(self.tts_rng.draw(p.double().cpu().numpy()))
            new.append(idx)
            if idx == t.eos:
                break
        self.tts_past = past
        return new[:step]

    def _speak(self, cond: torch.Tensor, end_of_turn: bool, out: Dict[str, object]) -> None:
        first = self.tts_text_start_pos == 0
        min_new = 0 if (end_of_turn or first) else 26
        codes = self._tts_chunk(cond, 26, min_new)
        if end_of_turn:
            self.tts_text_start_pos, self.tts_past = 0, None
        else:
            self.tts_text_start_pos += cond.shape[1] + len(codes)
        out["tts_codes"] = codes
        chunks: List[Tuple[List[int], bool]] = []
        self.t2w_buffer += codes
        pl = self.pre_lookahead
        if first:
            while len(self.t2w_buffer) >= pl + 5:
                n = min(25 + pl, len(self.t2w_buffer))
                chunks.append((self.t2w_buffer[:n], False))
                self.t2w_buffer = self.t2w_buffer[min(25, n - pl):]
        else:
            while len(self.t2w_buffer) >= 25 + pl:
                chunks.append((self.t2w_buffer[:25 + pl], False))
                self.t2w_buffer = self.t2w_buffer[25:]
        if end_of_turn and self.t2w_buffer:
            chunks.append((self.t2w_buffer, True))
            self.t2w_buffer = []
        if end_of_turn:
            self.t2w_buffer = [SILENCE_CODE] * 3
        out["t2w_chunks"] = chunks

    # ---- sliding windows --------------------------------------------------------------------------

    def _drop_rows(self, start: int, n: int) -> None:
        """drop_tokens_from_cache: rows [start, start + n) leave, the rest is re-rotated."""
        total = len(self.kv)
        head = self.kv.slice(0, start)
        tail = self.kv.slice(start + n, None).realign(start + n, start, self.theta)
        self.kv = head.cat(tail)
        del self.ctx[start:start + n]
        assert len(self.ctx) == len(self.kv) == total - n

    def _enforce_window(self) -> List[int]:
        dropped: List[int] = []
        if self.window == "basic":
            if len(self.kv) <= self.window_max_tokens:
                return dropped
            while len(self.kv) > self.window_target_tokens and self.units:
                u = self.units[0]
                if len(self.kv) - self.system_length < u["length"]:
                    break
                self._drop_rows(self.system_length, u["length"])
                self.units.pop(0)
                dropped.append(u["id"])
        elif self.window == "context":
            while len(self.units) > self.context_max_units:
                u = self.units.pop(0)
                dropped.append(u["id"])
                self._drop_with_context(u)
        return dropped

    def _drop_with_context(self, u: Dict[str, object]) -> None:
        new_ids: List[int] = []
        new_text = ""
        if not u["listen"]:
            clean = u["text"]
            for st in set(self.tok.all_special_tokens) | set(CUSTOM_SPECIAL):
                clean = clean.replace(st, "")
            if clean.strip():
                new_text = clean
            new_ids = [t for t in u["tokens"] if t not in self.special_ids]
        if new_ids or new_text:
            if not self.has_previous:
                self.previous_ids = list(self.marker_ids) + new_ids
                self.has_previous = True
            else:
                self.previous_ids.extend(new_ids)
            m = len(self.marker_ids)
            over = len(self.previous_ids) - m - self.max_previous_tokens
            if over > 0:
                self.previous_ids = list(self.marker_ids) + self.previous_ids[m + over:]
        self._rebuild()

    @torch.inference_mode()
    def _rebuild(self) -> None:
        """_rebuild_cache_with_previous."""
        keep = sum(int(u["length"]) for u in self.units)
        total = len(self.kv)
        prefix = self.preserve_prefix
        old_prev = self.system_length - prefix - len(self.suffix_ids)
        units_kv = self.kv.slice(total - keep, None) if keep > 0 else _Kv()
        units_ctx = self.ctx[total - keep:] if keep > 0 else []
        if not self.previous_ids and old_prev == 0:
            ps = prefix + len(self.suffix_ids)
            head = self.kv.slice(0, ps)
            if keep > 0 and total - ps - keep > 0:
                units_kv = units_kv.realign(total - keep, ps, self.theta)
            self.kv = head.cat(units_kv)
            self.ctx = self.ctx[:ps] + units_ctx
            return
        head = self.kv.slice(0, prefix)
        head_ctx = self.ctx[:prefix]
        self.kv = head
        self.ctx = head_ctx
        ids = self.previous_ids + self.suffix_ids
        if ids:
            self._feed_ids(ids)   # positions prefix.. (position_offset stays 0 in context mode)
        new_total = prefix + len(self.previous_ids) + len(self.suffix_ids)
        if keep > 0 and total - keep != new_total:
            units_kv = units_kv.realign(total - keep, new_total, self.theta)
        self.kv = self.kv.cat(units_kv)
        self.ctx = self.ctx + units_ctx
        self.system_length = new_total


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """utils.py top_k_top_p_filtering on a [V] row."""
    x = logits.clone().unsqueeze(0)
    if top_k > 0:
        k = min(top_k, x.size(-1))
        x[x < torch.topk(x, k)[0][..., -1, None]] = float("-inf")
    if top_p > 0.0:
        s, idx = torch.sort(x, descending=True)
        cum = torch.cumsum(F.softmax(s, -1), -1)
        rm = cum > top_p
        rm[..., 1:] = rm[..., :-1].clone()
        rm[..., 0] = False
        x[0, idx[rm]] = float("-inf")
    return x[0]


def load_parts(ckpt_dir: PathLike, with_tts: bool = True, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32) -> Dict[str, object]:
    """The tokenizer, audio reference, LLM and (when the checkpoint has one) talker, shareable
    between RefDuplex sessions (``parts=``), on ``device`` in ``dtype`` (the tokenizer aside).

    The CPU in float32 loads the LLM with ``tiny_models.load_reference_llm``; any other device or
    dtype builds it on the device and fills it tensor by tensor (:func:`_load_llm`): the host
    then never holds the whole checkpoint and a float32 copy of the LLM at once (about 50 GB for
    the released 8B). Rotary frequency tables stay float32 (:func:`_move`)."""
    import tiny_models

    d = Path(ckpt_dir)
    dev = torch.device(device)
    default = dev.type == "cpu" and dtype == torch.float32
    parts: Dict[str, object] = {"tok": ref_audio._tokenizer(d), "audio": ref_audio.AudioRef(d).to(dev, dtype),
                                "llm": tiny_models.load_reference_llm(d) if default else _load_llm(d, dev, dtype)}
    cfg = json.loads((d / "config.json").read_text())
    if with_tts and cfg.get("tts_config"):
        from ref_minicpmo_tts import load_ref_tts

        try:
            parts["tts"] = _move(load_ref_tts(d), dev, dtype)
        except RuntimeError:
            parts["tts"] = None
    return parts


def _load_llm(d: Path, device: torch.device, dtype: torch.dtype):
    """``tiny_models.load_reference_llm`` built on ``device`` in ``dtype``: the model is made there
    (its random initialisation too, in float32) and the ``llm.`` tensors are read one at a time
    and copied in, with the same strict check and embedding tie; then :func:`_move`."""
    import tiny_models
    from safetensors import safe_open
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if not tiny_models.is_minicpm_layout(d):
        from transformers import AutoModelForCausalLM

        return _move(AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32), device, dtype).eval()
    cfg = json.loads((d / "config.json").read_text())
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    keys: Dict[str, str] = {}
    for f in files:
        with safe_open(str(d / f), "pt") as st:
            keys.update({k: f for k in st.keys() if k.startswith("llm.")})
    qwen3 = any(k.endswith("self_attn.q_norm.weight") for k in keys)
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if qwen3 else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**{k: cfg[k] for k in tiny_models.LLM_CONFIG_FIELDS if k in cfg})
    with torch.device(device):
        model = model_cls(config).to(torch.float32)
    own = dict(model.state_dict(keep_vars=True))
    names = {k[len("llm."):]: k for k in keys}
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(set(names) - set(own))
    missing = sorted(set(own) - set(names))
    if unexpected or not set(missing) <= allowed_missing:
        raise RuntimeError(f"reference LLM: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for f in files:
            with safe_open(str(d / f), "pt") as st:
                for name, key in names.items():
                    if keys[key] == f:
                        own[name].copy_(st.get_tensor(key).to(device))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return _move(model, device, dtype).eval()


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(device, dtype)`` with the rotary frequency buffers (``inv_freq``,
    ``original_inv_freq``) moved but kept in float32, as ``from_pretrained(dtype=...)`` leaves
    them (they are computed at construction, not loaded): a bfloat16 copy would put the angles
    of positions in the thousands off by radians."""
    keep = {name: b for name, b in module.named_buffers() if name.endswith("inv_freq")}
    module.to(device, dtype)
    for name, b in keep.items():
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, leaf, b.to(device))
    return module
