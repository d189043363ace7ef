"""PyTorch reference for the MiniCPM-V / MiniCPM-o vision path: SigLIP NaViT tower + resampler.

Written from the official remote code (MiniCPM-o 4.5 ``modeling_navit_siglip.py`` and
``modeling_minicpmo.py``; the same functions appear in MiniCPM-V 2.6 / o2.6 / V4.5), in float32,
with the Hugging Face parameter names so a checkpoint's ``vpm.*`` / ``resampler.*`` tensors load
with ``load_state_dict``. It is the ground truth of the C++ parity tests, so it mirrors the
reference step by step instead of calling a library:

* ``SiglipVisionEmbeddings``: Conv2d patch embedding (kernel = stride = patch size, with bias),
  flattened row-major, plus ``position_embedding[pos_id]`` where ``pos_id`` comes from NaViT
  bucketing (:func:`navit_position_ids`): the fractional coordinates ``arange(0, 1 - 1e-6, 1/ph)``
  (float32) are bucketized with ``right=True`` against the float32 boundaries
  ``arange(1/70, 1.0, 1/70)``; 70 = ``image_size // patch_size`` = sqrt(num_positions).
* ``SiglipEncoderLayer``: pre-LN, eager attention (scale ``head_dim ** -0.5``, softmax in
  float32), MLP ``fc2(gelu_tanh(fc1(x)))``; ``post_layernorm`` at the end. The model builds all
  ``num_hidden_layers`` layers and drops the last one when ``drop_vision_last_layer`` is true
  (``encoder.layers = encoder.layers[:-1]`` in ``init_vision_module``); a checkpoint may still
  store that layer, it is then ignored.
* ``Resampler`` (2D): ``kv = ln_kv(kv_proj(x))``, ``q = ln_q(query)``, ``nn.MultiheadAttention``
  with ``embed_dim // 128`` heads over keys ``kv + pos`` and values ``kv`` (positions in the keys
  only), ``ln_post``, then ``x @ proj``. ``pos`` is the 2D sin-cos table of
  :func:`get_2d_sincos_pos_embed` cut to the slice's patch grid: ``table[:ph, :pw]`` flattened
  row-major, the column (w) half first.

Slices are processed one at a time. The reference pads a batch of slices to the longest one,
masks padded keys in the ViT (``_prepare_4d_attention_mask``) and in the resampler
(``key_padding_mask``), and never reads the padded rows: the result for each slice equals running
it alone. :func:`vision_embeddings_batched` reproduces the padded path to check that claim.

Pixel layout: the processor stores a slice as ``[3, patch, n_patches * patch]`` (patches side
by side, row-major, ``reshape_by_patch``) and the model convolves that strip; convolving the
``[3, h, w]`` image and flattening the ``[ph, pw]`` grid row-major gives the same patches in the
same order, which is what this module takes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VisionConfig",
    "VisionParts",
    "SiglipVisionTransformer",
    "Resampler",
    "navit_position_ids",
    "get_2d_sincos_pos_embed",
    "pos_embed_k_table",
    "build_parts",
    "load_parts",
    "vit_features",
    "vit_stages",
    "resampler_forward",
    "resampler_stages",
    "vision_embeddings",
    "vision_embeddings_batched",
    "reshape_by_patch",
    "load_from_dir",
]


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class VisionConfig:
    """The fields of a MiniCPM config.json that the vision path reads."""

    hidden_size: int = 1152  # Dv
    num_hidden_layers: int = 27  # layers built (the checkpoint's count)
    num_attention_heads: int = 16
    intermediate_size: int = 4304
    patch_size: int = 14
    image_size: int = 980  # vision_config.image_size: 980 / 14 = 70 position buckets per side
    layer_norm_eps: float = 1e-6
    num_channels: int = 3
    drop_vision_last_layer: bool = True
    query_num: int = 64
    embed_dim: int = 4096  # D, the LLM hidden size
    resampler_eps: float = 1e-6

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def effective_layers(self) -> int:
        return self.num_hidden_layers - (1 if self.drop_vision_last_layer else 0)

    @property
    def resampler_heads(self) -> int:
        return self.embed_dim // 128  # hard-coded in every init_resampler

    @classmethod
    def from_config(cls, cfg: Dict[str, object]) -> "VisionConfig":
        """From a parsed config.json. Defaults are those of the official config classes."""
        vc = dict(cfg.get("vision_config") or {})
        return cls(
            hidden_size=int(vc.get("hidden_size", 1152)),
            num_hidden_layers=int(vc.get("num_hidden_layers", 27)),
            num_attention_heads=int(vc.get("num_attention_heads", 16)),
            intermediate_size=int(vc.get("intermediate_size", 4304)),
            patch_size=int(vc.get("patch_size", 14)),
            image_size=int(vc.get("image_size", 980)),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            num_channels=int(vc.get("num_channels", 3)),
            drop_vision_last_layer=bool(cfg.get("drop_vision_last_layer", True)),
            query_num=int(cfg.get("query_num", 64)),
            embed_dim=int(cfg["hidden_size"]),
        )


# ----------------------------------------------------------------------------------------------
# SigLIP NaViT vision tower


def navit_position_ids(ph: int, pw: int, num_patches_per_side: int = 70) -> torch.Tensor:
    """Position-table rows for a ``ph x pw`` patch grid, row-major: ``bucket_h * 70 + bucket_w``.

    As ``SiglipVisionEmbeddings.forward``: float32 ``torch.arange`` for both the boundaries and the
    fractional coordinates (``1 / nb_patches`` with ``nb_patches`` an integer tensor), then
    ``torch.bucketize(..., right=True)`` = the number of boundaries <= x.
    """
    n = num_patches_per_side
    boundaries = torch.arange(1 / n, 1.0, 1 / n)
    nb_h = torch.tensor(int(ph), dtype=torch.int32)
    nb_w = torch.tensor(int(pw), dtype=torch.int32)
    frac_h = torch.arange(0, 1 - 1e-6, 1 / nb_h)
    frac_w = torch.arange(0, 1 - 1e-6, 1 / nb_w)
    bucket_h = torch.bucketize(frac_h, boundaries, right=True)
    bucket_w = torch.bucketize(frac_w, boundaries, right=True)
    return (bucket_h[:, None] * n + bucket_w).flatten()


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.num_patches_per_side = cfg.num_patches_per_side
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, padding="valid"
        )
        self.position_embedding = nn.Embedding(self.num_patches_per_side**2, cfg.hidden_size)

    def patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[3, h, w] -> [ph * pw, Dv]: conv with bias, patches row-major."""
        out = self.patch_embedding(pixels.unsqueeze(0))  # [1, Dv, ph, pw]
        return out.flatten(2).transpose(1, 2)[0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        ph, pw = pixels.shape[1] // self.patch_size, pixels.shape[2] // self.patch_size
        pos = navit_position_ids(ph, pw, self.num_patches_per_side)
        return self.patch_embed(pixels) + self.position_embedding(pos)


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embed_dim = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"vision hidden {self.embed_dim} is not divisible by {self.num_heads} heads")
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B, L, Dv]; mask: additive [B, 1, L, L] or None (eager path of the reference)."""
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        w = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if mask is not None:
            w = w + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(w, v).transpose(1, 2).reshape(b, n, self.embed_dim)
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_pytorch_tanh


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class SiglipVisionTransformer(nn.Module):
    """``vpm``: embeddings, encoder (already cut to the effective depth), post_layernorm."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if cfg.drop_vision_last_layer:
            self.encoder.layers = self.encoder.layers[:-1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """One slice [3, h, w] -> [n_patches, Dv]."""
        x = self.embeddings(pixels).unsqueeze(0)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)[0]


# ----------------------------------------------------------------------------------------------
# resampler


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[..., embed_dim]: sin of all frequencies, then cos (``get_1d_sincos_pos_embed_from_grid_new``)."""
    omega = np.arange(embed_dim // 2, dtype=np.float32)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("hw,d->hwd", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1)


def get_2d_sincos_pos_embed(embed_dim: int, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """[h, w, embed_dim] float32: first half encodes the column (w), second half the row (h).

    The reference builds ``meshgrid(grid_w, grid_h)`` and encodes ``grid[0]`` (the w coordinate)
    into the first half although it names it ``emb_h``.
    """
    if embed_dim % 4:
        raise ValueError(f"the 2D sin-cos table needs embed_dim % 4 == 0, got {embed_dim}")
    gh, gw = (size, size) if isinstance(size, int) else size
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), axis=0)
    first = _sincos_1d(embed_dim // 2, grid[0])
    second = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([first, second], axis=-1).astype(np.float32)


def pos_embed_k_table(embed_dim: int, side: int = 70) -> np.ndarray:
    """The ``side x side`` table as [side*side, embed_dim], row ``r * side + c`` (clip.cpp's pos_embed_k)."""
    return get_2d_sincos_pos_embed(embed_dim, (side, side)).reshape(side * side, embed_dim)


class Resampler(nn.Module):
    """The 2D perceiver resampler of ``modeling_minicpmo.py`` (adaptive, max_size 70x70)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.embed_dim
        self.num_queries, self.embed_dim, self.num_heads = cfg.query_num, d, cfg.resampler_heads
        self.query = nn.Parameter(torch.zeros(self.num_queries, d))
        if cfg.hidden_size != d:
            self.kv_proj = nn.Linear(cfg.hidden_size, d, bias=False)
        else:
            self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(d, self.num_heads)
        self.ln_q = nn.LayerNorm(d, eps=cfg.resampler_eps)
        self.ln_kv = nn.LayerNorm(d, eps=cfg.resampler_eps)
        self.ln_post = nn.LayerNorm(d, eps=cfg.resampler_eps)
        self.proj = nn.Parameter((d**-0.5) * torch.randn(d, d))

    def pos_embed(self, ph: int, pw: int) -> torch.Tensor:
        """[ph * pw, D]: the sin-cos table at the slice's own patch grid (no bucketing)."""
        side = (max(70, ph), max(70, pw))  # the reference enlarges its 70x70 cache on demand
        table = torch.from_numpy(get_2d_sincos_pos_embed(self.embed_dim, side))
        return table[:ph, :pw, :].reshape(ph * pw, -1)

    def forward(
        self, x: torch.Tensor, tgt_sizes: Sequence[Tuple[int, int]], lengths: Optional[Sequence[int]] = None
    ) -> torch.Tensor:
        """x: [B, L, Dv] (rows past each slice's ph*pw are padding) -> [B, query_num, D]."""
        bs, max_len = x.shape[0], x.shape[1]
        pad_mask = torch.zeros((bs, max_len), dtype=torch.bool)
        pos = torch.zeros((bs, max_len, self.embed_dim), dtype=x.dtype)
        for i, (ph, pw) in enumerate(tgt_sizes):
            n = int(ph) * int(pw)
            pos[i, :n] = self.pos_embed(int(ph), int(pw)).to(x.dtype)
            pad_mask[i, n:] = True
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # [L, B, D]
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, bs, 1)  # [Q, B, D]
        out = self.attn(q, kv + pos.permute(1, 0, 2), kv, key_padding_mask=pad_mask)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


# ----------------------------------------------------------------------------------------------
# the two parts together


@dataclass
class VisionParts:
    config: VisionConfig
    vpm: SiglipVisionTransformer
    resampler: Resampler


def build_parts(cfg: Union[VisionConfig, Dict[str, object]]) -> VisionParts:
    """Modules with the reference's structure (random weights), float32, eval mode."""
    if not isinstance(cfg, VisionConfig):
        cfg = VisionConfig.from_config(cfg)
    vpm = SiglipVisionTransformer(cfg).float().eval()
    rs = Resampler(cfg).float().eval()
    return VisionParts(cfg, vpm, rs)


def load_parts(cfg: Dict[str, object], state: Dict[str, torch.Tensor]) -> VisionParts:
    """Build the parts from a parsed config.json and load the ``vpm.`` / ``resampler.`` tensors.

    Encoder layers past the effective depth (the dropped last layer) are ignored, as in the
    reference (its modules no longer exist when the weights are loaded).
    """
    parts = build_parts(cfg)
    c = parts.config
    for prefix, module in (("vpm.", parts.vpm), ("resampler.", parts.resampler)):
        sub = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        if prefix == "vpm.":
            dropped = f"encoder.layers.{c.effective_layers}."
            sub = {k: v for k, v in sub.items() if not k.startswith(dropped)}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"reference {prefix[:-1]}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return parts


def _grid(parts: VisionParts, pixels: torch.Tensor) -> Tuple[int, int]:
    p = parts.config.patch_size
    if pixels.dim() != 3 or pixels.shape[0] != parts.config.num_channels:
        raise ValueError(f"expected a slice [3, h, w], got {tuple(pixels.shape)}")
    if pixels.shape[1] % p or pixels.shape[2] % p:
        raise ValueError(f"slice {tuple(pixels.shape)} is not a whole number of {p}x{p} patches")
    return pixels.shape[1] // p, pixels.shape[2] // p


@torch.no_grad()
def vit_features(parts: VisionParts, pixels: torch.Tensor) -> torch.Tensor:
    """One slice [3, h, w] (normalised pixels) -> [n_patches, Dv] after post_layernorm."""
    _grid(parts, pixels)
    return parts.vpm(pixels.float())


@torch.no_grad()
def vit_stages(parts: VisionParts, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every intermediate of the ViT for one slice, for per-stage parity.

    Keys: ``pos_ids`` [n] (int64), ``patch_embd`` [n, Dv] (conv + bias), ``embeddings`` [n, Dv]
    (+ position), ``layer.{i}`` [n, Dv] (output of encoder layer i, i < effective depth),
    ``post_ln`` [n, Dv].
    """
    ph, pw = _grid(parts, pixels)
    emb = parts.vpm.embeddings
    out: Dict[str, torch.Tensor] = {}
    out["pos_ids"] = navit_position_ids(ph, pw, emb.num_patches_per_side)
    out["patch_embd"] = emb.patch_embed(pixels.float())
    x = out["patch_embd"] + emb.position_embedding(out["pos_ids"])
    out["embeddings"] = x
    x = x.unsqueeze(0)
    for i, layer in enumerate(parts.vpm.encoder.layers):
        x = layer(x)
        out[f"layer.{i}"] = x[0]
    out["post_ln"] = parts.vpm.post_layernorm(x)[0]
    return out


@torch.no_grad()
def resampler_forward(parts: VisionParts, features: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """ViT features [ph*pw, Dv] of one slice -> [query_num, D]."""
    return parts.resampler(features.float().unsqueeze(0), [grid])[0]


@torch.no_grad()
def resampler_stages(parts: VisionParts, features: torch.Tensor, grid: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """The resampler's intermediates for one slice, computed step by step (same math as forward).

    Keys: ``kv`` [n, D] (kv_proj), ``kv_norm`` [n, D] (ln_kv), ``q_norm`` [Q, D] (ln_q),
    ``pos`` [n, D] (2D sin-cos), ``q``/``k``/``v`` [Q|n, D] (in_proj with bias; k from kv + pos,
    v from kv), ``attn`` [Q, D] (heads concatenated, before out_proj), ``attn_out`` [Q, D],
    ``ln_post`` [Q, D], ``out`` [Q, D] (= ln_post @ proj).
    """
    rs = parts.resampler
    ph, pw = grid
    d, h = rs.embed_dim, rs.num_heads
    hd = d // h
    out: Dict[str, torch.Tensor] = {}
    out["kv"] = rs.kv_proj(features.float())
    out["kv_norm"] = rs.ln_kv(out["kv"])
    out["q_norm"] = rs.ln_q(rs.query)
    out["pos"] = rs.pos_embed(ph, pw)
    w, b = rs.attn.in_proj_weight, rs.attn.in_proj_bias
    out["q"] = out["q_norm"] @ w[:d].T + b[:d]
    out["k"] = (out["kv_norm"] + out["pos"]) @ w[d : 2 * d].T + b[d : 2 * d]
    out["v"] = out["kv_norm"] @ w[2 * d :].T + b[2 * d :]
    q = out["q"].view(-1, h, hd).transpose(0, 1)
    k = out["k"].view(-1, h, hd).transpose(0, 1)
    v = out["v"].view(-1, h, hd).transpose(0, 1)
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v  # [h, Q, hd]
    out["attn"] = att.transpose(0, 1).reshape(-1, d)
    out["attn_out"] = rs.attn.out_proj(out["attn"])
    out["ln_post"] = rs.ln_post(out["attn_out"])
    out["out"] = out["ln_post"] @ rs.proj
    return out


@torch.no_grad()
def vision_embeddings(parts: VisionParts, slices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Slices [3, h_i, w_i] (normalised pixels, sizes multiples of the patch) -> [n_slices, Q, D].

    Each slice goes through the ViT and the resampler alone (see the module docstring).
    """
    outs = [resampler_forward(parts, vit_features(parts, s), _grid(parts, s)) for s in slices]
    return torch.stack(outs) if outs else torch.zeros((0, parts.config.query_num, parts.config.embed_dim))


def reshape_by_patch(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[3, h, w] -> [3, patch, n_patches * patch]: the processor's strip layout (row-major patches)."""
    c = pixels.shape[0]
    p = F.unfold(pixels.unsqueeze(0), (patch, patch), stride=(patch, patch))  # [1, c*p*p, n]
    p = p.reshape(c, patch, patch, -1).permute(0, 1, 3, 2)  # [c, p, n, p]
    return p.reshape(c, patch, -1)


@torch.no_grad()
def vision_embeddings_batched(parts: VisionParts, slices: Sequence[torch.Tensor]) -> torch.Tensor:
    """The reference's batched path (``get_vision_embedding``): strip layout, padding, masks.

    Slices in the strip layout are padded to the longest, convolved together, given position ids
    on their valid patches, run through the encoder with the additive key mask, and resampled
    with ``key_padding_mask``. Used to check that per-slice processing gives the same result.
    """
    c = parts.config
    p = c.patch_size
    grids = [_grid(parts, s) for s in slices]
    strips = [reshape_by_patch(s.float(), p).flatten(end_dim=1).permute(1, 0) for s in slices]  # [L*p, 3*p]
    batch = torch.nn.utils.rnn.pad_sequence(strips, batch_first=True, padding_value=0.0)
    bsz, length, _ = batch.shape
    batch = batch.permute(0, 2, 1).reshape(bsz, 3, -1, length)  # [B, 3, p, L*p]
    max_n = max(h * w for h, w in grids)
    valid = torch.zeros((bsz, max_n), dtype=torch.bool)
    for i, (h, w) in enumerate(grids):
        valid[i, : h * w] = True

    emb = parts.vpm.embeddings
    x = emb.patch_embedding(batch).flatten(2).transpose(1, 2)  # [B, max_n, Dv]
    pos_ids = torch.zeros((bsz, max_n), dtype=torch.long)
    for i, (h, w) in enumerate(grids):
        pos_ids[i, valid[i]] = navit_position_ids(h, w, emb.num_patches_per_side)
    x = x + emb.position_embedding(pos_ids)
    mask = None
    if not bool(valid.all()):
        mask = torch.zeros((bsz, 1, max_n, max_n), dtype=x.dtype)
        mask.masked_fill_(~valid[:, None, None, :], torch.finfo(x.dtype).min)
    for layer in parts.vpm.encoder.layers:
        x = layer(x, mask)
    x = parts.vpm.post_layernorm(x)
    return parts.resampler(x, grids)


def load_from_dir(path: Union[str, Path]) -> VisionParts:
    """The reference parts of a checkpoint directory (config.json + safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: Dict[str, torch.Tensor] = {}
    for f in files:
        state.update({k: v for k, v in load_file(str(path / f)).items() if k.startswith(("vpm.", "resampler."))})
    return load_parts(cfg, state)
