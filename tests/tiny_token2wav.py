"""Tiny random Token2Wav flow-matching model (``assets/token2wav/flow.yaml`` + ``flow.pt``).

The model is minicpmo-utils' own ``CausalMaskedDiffWithXvec`` (``stepaudio2.cosyvoice2``) at tiny
sizes, with every parameter re-drawn at random (the DiT's initialisation zeroes its modulation
and output layers, which would make every estimator output 0). ``flow.yaml`` is written with the
hyperpyyaml ``!new:`` tags of the released files, ``flow.pt`` as a torch state dict, as the
reference ``Token2wav`` reads them. Import ``speech_ref`` first (it stubs torchaudio).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Union

PathLike = Union[str, "Path"]

# Real geometry where it is a contract (80 mel bins, 192-d speaker vector, 6561 codes, look-ahead 3,
# stride 2), tiny widths and depths elsewhere.
TINY_FLOW: Dict[str, object] = {
    "vocab_size": 6561,
    "width": 64,
    "enc_heads": 2,
    "enc_ff": 128,
    "num_blocks": 2,
    "num_up_blocks": 2,
    "pre_lookahead_len": 3,
    "up_stride": 2,
    "dit_depth": 2,
    "dit_heads": 2,
    "dit_head_dim": 32,
    "mlp_ratio": 4.0,
    "cfg_rate": 0.7,
}

_YAML = """\
# Tiny random stand-in for MiniCPM-o 4.5's assets/token2wav/flow.yaml (same tags and keys).
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: {width}
    output_size: 80
    spk_embed_dim: 192
    output_type: 'mel'
    vocab_size: {vocab_size}
    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: {width}
        output_size: {width}
        input_layer: 'linear'
        pre_lookahead_len: {pre_lookahead_len}
        num_blocks: {num_blocks}
        num_up_blocks: {num_up_blocks}
        up_stride: {up_stride}
        up_scale_factor: {up_stride}
        attention_heads: {enc_heads}
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        key_bias: true
        linear_units: {enc_ff}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: true
    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: {cfg_rate}
        estimator: !new:cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: {mlp_ratio}
            depth: {dit_depth}
            num_heads: {dit_heads}
            head_dim: {dit_head_dim}
            hidden_size: {width}
"""


def build_flow(sizes: Dict[str, object] = TINY_FLOW, seed: int = 0):
    """The reference ``CausalMaskedDiffWithXvec`` at ``sizes`` with random parameters (eval mode, CPU)."""
    import torch
    from stepaudio2.cosyvoice2.flow.decoder_dit import DiT
    from stepaudio2.cosyvoice2.flow.flow import CausalMaskedDiffWithXvec
    from stepaudio2.cosyvoice2.flow.flow_matching import CausalConditionalCFM
    from stepaudio2.cosyvoice2.transformer.upsample_encoder_v2 import UpsampleConformerEncoderV2

    s = dict(sizes)
    torch.manual_seed(seed)
    w = int(s["width"])
    encoder = UpsampleConformerEncoderV2(
        input_size=w, output_size=w, input_layer="linear", pre_lookahead_len=int(s["pre_lookahead_len"]),
        num_blocks=int(s["num_blocks"]), num_up_blocks=int(s["num_up_blocks"]), up_stride=int(s["up_stride"]),
        up_scale_factor=float(s["up_stride"]), attention_heads=int(s["enc_heads"]),
        pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn", key_bias=True,
        linear_units=int(s["enc_ff"]), dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1,
        normalize_before=True)
    estimator = DiT(in_channels=320, out_channels=80, mlp_ratio=float(s["mlp_ratio"]), depth=int(s["dit_depth"]),
                    num_heads=int(s["dit_heads"]), head_dim=int(s["dit_head_dim"]), hidden_size=w)
    decoder = CausalConditionalCFM(estimator, inference_cfg_rate=float(s["cfg_rate"]))
    flow = CausalMaskedDiffWithXvec(input_size=w, output_size=80, spk_embed_dim=192, output_type="mel",
                                    vocab_size=int(s["vocab_size"]), encoder=encoder, decoder=decoder)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if p.ndim == 1 and ("norm" in name or ".out.1." in name or "block.3" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))   # LayerNorm scales
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[1] * (p.shape[2] if p.ndim == 3 else 1)
                std = 1.0 if "input_embedding" in name else 1.0 / math.sqrt(fan_in)
                if "pos_bias" in name:
                    std = 0.1
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return flow.eval()


def write_flow(folder: PathLike, sizes: Dict[str, object] = TINY_FLOW, seed: int = 0) -> Path:
    """Writes ``flow.yaml`` and ``flow.pt`` of a tiny random flow into ``folder`` (created);
    returns the folder."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flow = build_flow(sizes, seed)
    (folder / "flow.yaml").write_text(_YAML.format(**dict(sizes)), encoding="utf-8")
    torch.save(flow.state_dict(), folder / "flow.pt")
    return folder


def add_token2wav_flow(checkpoint: PathLike, sizes: Dict[str, object] = TINY_FLOW, seed: int = 0) -> Path:
    """Adds ``assets/token2wav/flow.{yaml,pt}`` to a tiny MiniCPM-o 4.5 checkpoint folder (e.g.
    from ``tiny_models.make_minicpmo45``); returns the checkpoint folder."""
    write_flow(Path(checkpoint) / "assets" / "token2wav", sizes, seed)
    return Path(checkpoint)


def load_flow(folder: PathLike, sizes: Dict[str, object] = TINY_FLOW):
    """The reference module with the weights of ``folder/flow.pt`` (strict), as Token2wav loads them."""
    import torch

    flow = build_flow(sizes, seed=12345)
    flow.load_state_dict(torch.load(Path(folder) / "flow.pt", map_location="cpu", weights_only=True), strict=True)
    return flow.eval()
