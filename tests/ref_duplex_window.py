"""Reference for the KV sliding window of MiniCPM-o 4.5 full duplex, written from the official
code (MiniCPMO45/utils.py: ``StreamDecoder`` register_system_prompt*, register_unit_start/end,
enforce_window, enforce_window_with_context and their helpers; ``realign_rotary_suffix``,
``get_rotary_cos_sin``, ``drop_tokens_from_cache``), over a transformers causal LM fed token ids.

The cache is kept as a list of per-layer ``(keys, values)`` tensors ``[1, heads, length, dim]``
and handed to the model as a fresh ``DynamicCache`` for each forward pass, so that the edits are
the reference's tensor slicing and concatenation. Every token fed goes at the position equal to
the cache length (StreamDecoder.feed), so positions stay contiguous after each edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

MARKER = "\n\nprevious: "

# StreamDecoder's custom_special_tokens (added to the tokenizer's special tokens).
DUPLEX_SPECIAL = [
    "<unit>", "</unit>", "<image>", "</image>", "<slice>", "</slice>", "<|listen|>", "<|speak|>",
    "<|tts_bos|>", "<|tts_eos|>", "<|audio_start|>", "<|audio_end|>", "<|chunk_eos|>",
    "<|chunk_tts_eos|>", "<|turn_eos|>",
]


def rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    return float(theta)


def _half_turn(x: torch.Tensor) -> torch.Tensor:
    """rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


def cos_sin(head_dim: int, positions: torch.Tensor, theta: float, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """get_rotary_cos_sin: [1, 1, n, head_dim] tables, the frequencies repeated as two halves."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1).to(dtype)[None, None]
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1).to(dtype)[None, None]
    return cos, sin


def realign_keys(keys: torch.Tensor, old_pos: Sequence[int], new_pos: Sequence[int], theta: float) -> torch.Tensor:
    """realign_rotary_suffix: undo the rotation at the old positions, apply the new ones."""
    if keys.numel() == 0:
        return keys
    d = keys.shape[-1]
    c0, s0 = cos_sin(d, torch.as_tensor(list(old_pos)), theta, keys.dtype)
    base = c0 * keys - s0 * _half_turn(keys)
    c1, s1 = cos_sin(d, torch.as_tensor(list(new_pos)), theta, keys.dtype)
    return c1 * base + s1 * _half_turn(base)


class KvModel:
    """A causal LM with the cache as explicit tensors, fed token ids at position = cache length."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.theta = rope_theta(model.config)
        self._cache_cls = DynamicCache
        self.kv: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.tokens: List[int] = []

    def length(self) -> int:
        return self.kv[0][0].shape[2] if self.kv else 0

    def forward(self, kv, ids: Sequence[int], start: int):
        """Runs ids at positions start.. over the cache `kv`; returns (new kv, logits [n, vocab])."""
        cache = self._cache_cls()
        for i, (k, v) in enumerate(kv):
            cache.update(k.clone(), v.clone(), i)
        past = kv[0][0].shape[2] if kv else 0
        n = len(ids)
        with torch.no_grad():
            out = self.model(
                torch.tensor([list(ids)]),
                position_ids=torch.arange(start, start + n).unsqueeze(0),
                attention_mask=torch.ones(1, past + n, dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
            )
        new_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return new_kv, out.logits[0].double().numpy()

    def feed(self, ids: Sequence[int]):
        """StreamDecoder.feed: returns the logits of every fed token."""
        self.kv, logits = self.forward(self.kv, ids, self.length())
        self.tokens = self.tokens + list(ids)
        return logits

    def slice(self, a: int, b: Optional[int]):
        return [(k[:, :, a:b].clone(), v[:, :, a:b].clone()) for k, v in self.kv]

    def drop(self, first: int, last: int) -> None:
        """drop_tokens_from_cache's edit: entries [first, last) go, the rest is realigned."""
        n = self.length()
        tail = n - last
        out = []
        for k, v in self.kv:
            tk = realign_keys(k[:, :, last:], range(last, n), range(first, first + tail), self.theta)
            out.append((torch.cat([k[:, :, :first], tk], dim=2), torch.cat([v[:, :, :first], v[:, :, last:]], dim=2)))
        self.kv = out
        self.tokens = self.tokens[:first] + self.tokens[last:]


@dataclass
class WindowConfig:
    mode: str = "off"
    max_tokens: int = 4000      # basic_window_high_tokens (MiniCPMODuplex's default)
    target_tokens: int = 3500   # basic_window_low_tokens
    max_units: int = 24         # context_max_units
    max_previous_tokens: int = 500   # context_previous_max_tokens


@dataclass
class _Unit:
    unit_id: int
    length: int
    type: str
    generated_tokens: List[int]
    generated_text: str
    is_listen: bool


class RefWindow:
    """StreamDecoder's window state and its cache edits, over a KvModel."""

    def __init__(self, kvm: KvModel, tokenizer, config: WindowConfig, special_ids: Sequence[int],
                 special_texts: Sequence[str]):
        self.m = kvm
        self.tok = tokenizer
        self.cfg = config
        self.special_ids = set(special_ids)
        self.special_texts = set(special_texts)
        self.units: List[_Unit] = []
        self.next_unit_id = 0
        self.pending_id: Optional[int] = None
        self.pending_start = 0
        self.system_preserve_length = 0
        self.position_offset = 0
        self.prefix_length = 0
        self.previous_content_length = 0
        self.suffix_ids: List[int] = []
        self.marker_ids: List[int] = []
        self.has_previous = False
        self.previous_text = ""
        self.previous_ids: List[int] = []
        self.stats = {"sliding_event_count": 0, "total_dropped_tokens": 0, "total_dropped_units": 0}

    # -- registration ---------------------------------------------------------------------------
    def register_system_prompt(self):
        self.system_preserve_length = self.m.length()

    def register_system_prompt_with_context(self, suffix_ids: Sequence[int], marker: str = MARKER):
        self.prefix_length = self.m.length()
        self.previous_content_length = 0
        self.suffix_ids = list(suffix_ids)
        self.system_preserve_length = self.prefix_length + len(self.suffix_ids)
        self.marker_ids = self.tok.encode(marker, add_special_tokens=False)
        self.has_previous = False
        self.previous_text = ""
        self.previous_ids = []

    def register_unit_start(self):
        self.pending_id = self.next_unit_id
        self.pending_start = self.m.length()
        return self.pending_id

    def register_unit_end(self, type: str, tokens: Sequence[int], is_listen: bool, text: str):
        if self.pending_id is None:
            return
        n = self.m.length() - self.pending_start
        if n > 0:
            self.units.append(_Unit(self.pending_id, n, type, list(tokens), text, is_listen))
        self.pending_id = None
        self.pending_start = 0
        self.next_unit_id += 1

    def enforce(self) -> bool:
        if self.cfg.mode == "context":
            return self.enforce_window_with_context()
        if self.cfg.mode == "basic":
            return self.enforce_window()
        return False

    # -- basic ----------------------------------------------------------------------------------
    def _drop_tokens(self, length: int) -> bool:
        if length <= 0:
            return False
        total = self.m.length()
        if total <= 0:
            return False
        preserve = min(self.system_preserve_length, total)
        if total - preserve < length:
            return False
        self.m.drop(preserve, preserve + length)
        self.position_offset += length
        return True

    def _drop_unit(self, unit_id: int) -> bool:
        entries = [u for u in self.units if u.unit_id == unit_id]
        if not entries:
            return False
        n = sum(e.length for e in entries)
        if n <= 0:
            for e in entries:
                self.units.remove(e)
            return False
        if not self._drop_tokens(n):
            return False
        for e in entries:
            self.units.remove(e)
        return True

    def _drop_next_unit(self) -> bool:
        for u in list(self.units):
            if u.type == "system":
                continue
            if self._drop_unit(u.unit_id):
                return True
        return False

    def enforce_window(self) -> bool:
        if self.cfg.mode == "off":
            return False
        before = self.m.length()
        if before <= self.cfg.max_tokens:
            return False
        dropped, n = 0, before
        while n > self.cfg.target_tokens:
            if not self._drop_next_unit():
                break
            dropped += 1
            n = self.m.length()
        if dropped:
            self.stats["sliding_event_count"] += 1
            self.stats["total_dropped_tokens"] += before - n
            self.stats["total_dropped_units"] += dropped
        return dropped > 0

    # -- context --------------------------------------------------------------------------------
    def _extract(self, units: List[_Unit]) -> Tuple[str, List[int]]:
        parts, ids = [], []
        for u in units:
            if u.is_listen:
                continue
            if u.generated_text:
                clean = u.generated_text
                for st in self.special_texts:
                    clean = clean.replace(st, "")
                if clean.strip():
                    parts.append(clean)
            ids += [t for t in u.generated_tokens if t not in self.special_ids]
        return "".join(parts), ids

    def _rebuild(self, new_previous: List[int]) -> None:
        """_rebuild_cache_with_previous."""
        old_len = self.previous_content_length
        new_len = len(new_previous)
        suffix_len = len(self.suffix_ids)
        total = self.m.length()
        keep = sum(u.length for u in self.units)
        m = self.m
        if new_len == 0 and old_len == 0:
            preserve = self.prefix_length + suffix_len
            if keep > 0:
                head = m.slice(0, preserve)
                units = m.slice(total - keep, None)
                dropped = total - preserve - keep
                if dropped > 0:
                    units = [(realign_keys(k, range(preserve + dropped, preserve + dropped + keep),
                                           range(preserve, preserve + keep), m.theta), v) for k, v in units]
                m.kv = [(torch.cat([hk, uk], 2), torch.cat([hv, uv], 2)) for (hk, hv), (uk, uv) in zip(head, units)]
                m.tokens = m.tokens[:preserve] + m.tokens[total - keep:]
            else:
                m.kv = m.slice(0, preserve)
                m.tokens = m.tokens[:preserve]
            return
        prefix_end = self.prefix_length
        prefix = m.slice(0, prefix_end)
        units_start = total - keep
        units = m.slice(units_start, None) if keep > 0 else None
        prev_suffix = list(new_previous) + self.suffix_ids
        head = prefix
        if prev_suffix:
            head, _ = m.forward(prefix, prev_suffix, self.prefix_length + self.position_offset)
        new_start = prefix_end + new_len + suffix_len
        if units is not None and units_start != new_start:
            units = [(realign_keys(k, range(units_start, units_start + keep), range(new_start, new_start + keep),
                                   m.theta), v) for k, v in units]
        if units is not None:
            m.kv = [(torch.cat([hk, uk], 2), torch.cat([hv, uv], 2)) for (hk, hv), (uk, uv) in zip(head, units)]
        else:
            m.kv = head
        m.tokens = m.tokens[:prefix_end] + prev_suffix + (m.tokens[units_start:] if keep > 0 else [])
        self.previous_content_length = new_len
        self.system_preserve_length = prefix_end + new_len + suffix_len

    def _update_previous(self, text: str, ids: List[int]) -> None:
        marker_len = len(self.marker_ids)
        if not ids and not text:
            self._rebuild(self.previous_ids)
            return
        if not self.has_previous:
            self.previous_text = text
            self.previous_ids = list(self.marker_ids) + ids
            self.has_previous = True
        else:
            self.previous_text += text
            self.previous_ids += ids
        content = len(self.previous_ids) - marker_len
        if content > self.cfg.max_previous_tokens:
            drop = content - self.cfg.max_previous_tokens
            kept = self.previous_ids[marker_len + drop:]
            self.previous_ids = list(self.marker_ids) + kept
            self.previous_text = self.tok.decode(kept, skip_special_tokens=True)
        self._rebuild(self.previous_ids)

    def _drop_unit_with_context(self, unit_id: int) -> bool:
        entries = [u for u in self.units if u.unit_id == unit_id]
        if not entries:
            return False
        text, ids = self._extract(entries)
        for e in entries:
            self.units.remove(e)
        if sum(e.length for e in entries) <= 0:
            return False
        self._update_previous(text, ids)
        return True

    def enforce_window_with_context(self) -> bool:
        if self.cfg.mode == "off":
            return False
        if self.cfg.mode != "context":
            return self.enforce_window()
        before = self.m.length()
        if len(self.units) <= self.cfg.max_units:
            return False
        dropped = 0
        while len(self.units) > self.cfg.max_units:
            done = False
            for u in list(self.units):
                if u.type == "system":
                    continue
                if self._drop_unit_with_context(u.unit_id):
                    done = True
                    break
            if not done:
                break
            dropped += 1
        if dropped:
            self.stats["sliding_event_count"] += 1
            self.stats["total_dropped_tokens"] += before - self.m.length()
            self.stats["total_dropped_units"] += dropped
        return dropped > 0


def special_sets(tokenizer) -> Tuple[List[int], List[str]]:
    """StreamDecoder's _all_special_ids / _all_special_tokens_text."""
    ids = set(tokenizer.all_special_ids)
    texts = set(tokenizer.all_special_tokens)
    texts.update(DUPLEX_SPECIAL)
    for t in DUPLEX_SPECIAL:
        i = tokenizer.convert_tokens_to_ids(t)
        if i is not None and i != tokenizer.unk_token_id:
            ids.add(i)
    return sorted(ids), sorted(texts)
