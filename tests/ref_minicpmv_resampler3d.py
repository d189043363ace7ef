"""PyTorch reference of MiniCPM-V 4.5's 3D resampler (``Resampler.forward`` of the official
``resampler.py`` with ``batch_infer = config.batch_3d_resampler = True``, i.e.
``batch_attn_forward``), written for the tests on the weights of ``ref_minicpmv_vision.Resampler``.

What the official code does, step by step:

* ``temporal_pos_embed``: ``get_1d_sincos_pos_embed_from_temporal_size(D, arange(max_temporal_size))``,
  float32 numpy: ``omega = 1 / 10000 ** (arange(D/2) / (D/2))``, ``out = t * omega``,
  ``[sin(out), cos(out)]``; the table (72000 rows) is enlarged when an id is past its end, so
  row t is the same formula at t (computed here for the ids used only).
* ``temporal_ids`` (a list of groups) flattened: one id per slice of the batch; since the check
  is ``max(ids) + 1 > -1``, any list turns the temporal path on, and id -1 adds a zero vector.
* keys ``k = ln_kv(kv_proj(x)) + pos_2d``, then ``k += temporal``; values ``v = ln_kv(kv_proj(x))``.
* per group: its slices' keys / values / padding masks flattened frame by frame into one
  sequence, the groups padded to the longest (mask True there), one ``nn.MultiheadAttention``
  with the queries repeated per group; ``ln_post``, ``@ proj``: ``[n_groups, Q, D]``.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch


def temporal_embed(embed_dim: int, ids: Sequence[int]) -> np.ndarray:
    """Rows ``ids`` of the reference's temporal table, [len(ids), D] float32."""
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float32)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    pos = np.asarray(ids, dtype=np.float32).reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@torch.no_grad()
def resample_3d(rs, x: torch.Tensor, tgt_sizes: Sequence[Tuple[int, int]], temporal_ids: List[List[int]]) -> torch.Tensor:
    """x: [B, L, Dv] ViT features of B slices (rows past ph*pw are padding), tgt_sizes (ph, pw)
    per slice, temporal_ids: groups of consecutive slices with one id each -> [n_groups, Q, D]."""
    bs, max_len = x.shape[0], x.shape[1]
    flat = [t for g in temporal_ids for t in g]
    assert len(flat) == bs, "one temporal id per slice"
    d = rs.embed_dim
    pad = torch.zeros((bs, max_len), dtype=torch.bool)
    pos = torch.zeros((bs, max_len, d), dtype=x.dtype)
    for i, (ph, pw) in enumerate(tgt_sizes):
        n = int(ph) * int(pw)
        pos[i, :n] = rs.pos_embed(int(ph), int(pw)).to(x.dtype)
        pad[i, n:] = True
    kv = rs.ln_kv(rs.kv_proj(x)).permute(1, 0, 2)  # L, B, D
    q = rs.ln_q(rs.query)
    v = kv
    k = kv + pos.permute(1, 0, 2)
    table = torch.from_numpy(temporal_embed(d, [max(t, 0) for t in flat])).to(x.dtype)
    temporal = torch.stack([torch.zeros(d, dtype=x.dtype) if t == -1 else table[i] for i, t in enumerate(flat)])
    k = k + temporal  # [L, B, D] + [B, D]
    merge_k, merge_v, merge_m = [], [], []
    start = 0
    for grp in temporal_ids:
        end = start + len(grp)
        merge_k.append(k[:, start:end, :].permute(1, 0, 2).reshape(-1, d))
        merge_v.append(v[:, start:end, :].permute(1, 0, 2).reshape(-1, d))
        merge_m.append(pad[start:end, :].reshape(-1, 1))
        start = end
    k = torch.nn.utils.rnn.pad_sequence(merge_k, batch_first=True, padding_value=0.0).permute(1, 0, 2)
    v = torch.nn.utils.rnn.pad_sequence(merge_v, batch_first=True, padding_value=0.0).permute(1, 0, 2)
    mask = torch.nn.utils.rnn.pad_sequence(merge_m, batch_first=True, padding_value=True).squeeze(-1)
    g = len(temporal_ids)
    out = rs.attn(q.unsqueeze(1).repeat(1, g, 1), k, v, key_padding_mask=mask)[0]
    return rs.ln_post(out.permute(1, 0, 2)) @ rs.proj


@torch.no_grad()
def video_embeddings(parts, frames: Sequence[torch.Tensor], temporal_ids: List[List[int]]) -> torch.Tensor:
    """Normalised frame pixels [3, h, w] (unsliced) -> [n_groups, Q, D]: each frame through the
    reference ViT alone, the features padded into one batch, then the 3D resampler."""
    import ref_minicpmv_vision as rv

    feats = [rv.vit_features(parts, f) for f in frames]
    grids = [rv._grid(parts, f) for f in frames]
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=0.0)
    return resample_3d(parts.resampler, x, grids, temporal_ids)
