"""Token2Wav's flow-matching model of MiniCPM-o 4.5: ``assets/token2wav/flow.yaml`` + ``flow.pt``.

The reference (minicpmo-utils 1.0.7, ``stepaudio2/token2wav.py``) builds
``CausalMaskedDiffWithXvec`` from ``flow.yaml`` with hyperpyyaml (``!new:`` tags name the
classes) and loads ``flow.pt``, a torch state dict, into it. Here the YAML is read with PyYAML
and a loader that turns ``!new:`` / ``!name:`` nodes into plain mappings (and resolves simple
``!ref <key>`` references); parameters the file leaves out take the class defaults, as the
reference gets them. Every hyperparameter goes to ``t2w.flow.*`` metadata and every tensor
under ``t2w.flow.*`` names (``csrc/model/names.def``, component prefix ``FLOW``).

Tensors: norms, biases and the relative-position biases are F32; convolution kernels are
permuted from torch's ``[out, in, kernel]`` to ``[out, kernel, in]`` (one product over the
shifted input windows) and stored F16 (F32 with an f32 output type); the other matrices take
the output type's weight type, F16 when that is quantized.

Reading ``flow.pt`` needs torch (and the YAML needs PyYAML); without them, or without the
folder, the flow model is skipped with a notice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from gguf import GGMLQuantizationType

from .checkpoint import ConvertError
from .names import key_name, tensor_name
from .quant import ENCODINGS, OUTTYPES
from .vision import VisionTensor

__all__ = ["FlowSpec", "detect_flow", "plan_flow", "write_flow_metadata", "load_flow_yaml", "TENSOR_IDS", "KEY_IDS",
           "FLOW_SUBDIR"]

Q = GGMLQuantizationType

FLOW_SUBDIR = Path("assets") / "token2wav"

# Class defaults of the reference constructors (stepaudio2.cosyvoice2), for what flow.yaml omits.
_FLOW_DEFAULTS = {"input_size": 512, "output_size": 80, "spk_embed_dim": 192, "output_type": "mel", "vocab_size": 5121}
_ENC_DEFAULTS = {
    "output_size": 256, "input_layer": "linear", "pre_lookahead_len": 3, "num_blocks": 6, "num_up_blocks": 4,
    "up_stride": 2, "up_scale_factor": 2.0, "attention_heads": 4, "pos_enc_layer_type": "rel_pos_espnet",
    "selfattention_layer_type": "rel_selfattn", "key_bias": True, "linear_units": 2048, "normalize_before": True,
    "activation_type": "swish",
}
_CFM_DEFAULTS = {"inference_cfg_rate": 0.7}
_DIT_DEFAULTS = {"mlp_ratio": 4.0, "depth": 28, "num_heads": 8, "head_dim": 64, "hidden_size": 256}

# Constants of the reference code (not in flow.yaml), written as metadata so the runtime has none.
_CONSTANTS = {
    "spk_norm_eps": 1e-12,      # F.normalize
    "embed_eps": 1e-5,          # LinearNoSubsampling LayerNorm(odim, eps=1e-5)
    "layer_eps": 1e-12,         # ConformerEncoderLayer norm_mha / norm_ff
    "after_norm_eps": 1e-5,     # UpsampleConformerEncoderV2.after_norm
    "pos_base": 10000.0,        # EspnetRelPositionalEncoding
    "lookahead_slope": 0.01,    # F.leaky_relu default
    "dit_norm_eps": 1e-6,       # DiTBlock norm1/2/3, FinalLayer.norm_final
    "qk_norm_eps": 1e-5,        # nn.LayerNorm(head_dim)
    "conv_norm_eps": 1e-5,      # CausalConvBlock nn.LayerNorm(out_channels)
    "conv_kernel": 3,           # DiTBlock's CausalConvBlock(kernel_size=3)
    "t_freq_dim": 256,          # TimestepEmbedder(frequency_embedding_size=256)
    "t_scale": 1000.0,
    "t_max_period": 10000.0,
    "temperature": 1.0,         # CausalConditionalCFM.forward default
    "n_timesteps": 10,          # Token2wav(n_timesteps=10), flow.inference default
    "max_frames": 50 * 600,     # CausalConditionalCFM.rand_noise: "a maximum of 600s"
    "stream_history": 100,      # Token2wav: CONFORMER_HISTORY_FRAMES, _trim_estimator_cache's 100
}

KEY_IDS = (
    "T2W_FLOW_VOCAB_SIZE", "T2W_FLOW_INPUT_SIZE", "T2W_FLOW_OUTPUT_SIZE", "T2W_FLOW_SPK_EMBED_DIM",
    "T2W_FLOW_SPK_NORM_EPS", "T2W_FLOW_ENC_WIDTH", "T2W_FLOW_ENC_HEADS", "T2W_FLOW_ENC_FF", "T2W_FLOW_ENC_BLOCKS",
    "T2W_FLOW_ENC_UP_BLOCKS", "T2W_FLOW_ENC_LOOKAHEAD", "T2W_FLOW_ENC_UP_STRIDE", "T2W_FLOW_ENC_UP_SCALE",
    "T2W_FLOW_ENC_KEY_BIAS", "T2W_FLOW_ENC_EMBED_EPS", "T2W_FLOW_ENC_LAYER_EPS", "T2W_FLOW_ENC_OUT_EPS",
    "T2W_FLOW_ENC_POS_BASE", "T2W_FLOW_ENC_LRELU_SLOPE", "T2W_FLOW_DIT_IN", "T2W_FLOW_DIT_OUT", "T2W_FLOW_DIT_WIDTH",
    "T2W_FLOW_DIT_DEPTH", "T2W_FLOW_DIT_HEADS", "T2W_FLOW_DIT_HEAD_DIM", "T2W_FLOW_DIT_FF", "T2W_FLOW_DIT_CONV_KERNEL",
    "T2W_FLOW_DIT_NORM_EPS", "T2W_FLOW_DIT_QK_NORM_EPS", "T2W_FLOW_DIT_CONV_NORM_EPS", "T2W_FLOW_DIT_T_FREQ_DIM",
    "T2W_FLOW_DIT_T_SCALE", "T2W_FLOW_DIT_T_MAX_PERIOD", "T2W_FLOW_CFG_RATE", "T2W_FLOW_TEMPERATURE",
    "T2W_FLOW_N_TIMESTEPS", "T2W_FLOW_MAX_FRAMES", "T2W_FLOW_STREAM_HISTORY",
)

# flow.pt name -> tensor id, per part. Layer names are relative to the layer.
_GLOBAL = {
    "input_embedding.weight": "FLOW_TOKEN_EMBD",
    "spk_embed_affine_layer.weight": "FLOW_SPK_PROJ",
    "spk_embed_affine_layer.bias": "FLOW_SPK_PROJ_BIAS",
    "encoder_proj.weight": "FLOW_ENC_PROJ",
    "encoder_proj.bias": "FLOW_ENC_PROJ_BIAS",
    "encoder.embed.out.0.weight": "FLOW_ENC_EMBD",
    "encoder.embed.out.0.bias": "FLOW_ENC_EMBD_BIAS",
    "encoder.embed.out.1.weight": "FLOW_ENC_EMBD_NORM",
    "encoder.embed.out.1.bias": "FLOW_ENC_EMBD_NORM_BIAS",
    "encoder.pre_lookahead_layer.conv1.weight": "FLOW_ENC_LA_CONV1",
    "encoder.pre_lookahead_layer.conv1.bias": "FLOW_ENC_LA_CONV1_BIAS",
    "encoder.pre_lookahead_layer.conv2.weight": "FLOW_ENC_LA_CONV2",
    "encoder.pre_lookahead_layer.conv2.bias": "FLOW_ENC_LA_CONV2_BIAS",
    "encoder.up_layer.conv.weight": "FLOW_ENC_UP_CONV",
    "encoder.up_layer.conv.bias": "FLOW_ENC_UP_CONV_BIAS",
    "encoder.up_embed.out.0.weight": "FLOW_ENC_UP_EMBD",
    "encoder.up_embed.out.0.bias": "FLOW_ENC_UP_EMBD_BIAS",
    "encoder.up_embed.out.1.weight": "FLOW_ENC_UP_EMBD_NORM",
    "encoder.up_embed.out.1.bias": "FLOW_ENC_UP_EMBD_NORM_BIAS",
    "encoder.after_norm.weight": "FLOW_ENC_OUT_NORM",
    "encoder.after_norm.bias": "FLOW_ENC_OUT_NORM_BIAS",
    "decoder.estimator.t_embedder.mlp.0.weight": "FLOW_DIT_T_EMBD_1",
    "decoder.estimator.t_embedder.mlp.0.bias": "FLOW_DIT_T_EMBD_1_BIAS",
    "decoder.estimator.t_embedder.mlp.2.weight": "FLOW_DIT_T_EMBD_2",
    "decoder.estimator.t_embedder.mlp.2.bias": "FLOW_DIT_T_EMBD_2_BIAS",
    "decoder.estimator.in_proj.weight": "FLOW_DIT_IN_PROJ",
    "decoder.estimator.in_proj.bias": "FLOW_DIT_IN_PROJ_BIAS",
    "decoder.estimator.final_layer.adaLN_modulation.1.weight": "FLOW_DIT_FINAL_ADALN",
    "decoder.estimator.final_layer.adaLN_modulation.1.bias": "FLOW_DIT_FINAL_ADALN_BIAS",
    "decoder.estimator.final_layer.linear.weight": "FLOW_DIT_FINAL_PROJ",
    "decoder.estimator.final_layer.linear.bias": "FLOW_DIT_FINAL_PROJ_BIAS",
}
_ENC_LAYER = {
    "norm_mha.weight": "FLOW_ENC_ATTN_NORM",
    "norm_mha.bias": "FLOW_ENC_ATTN_NORM_BIAS",
    "self_attn.linear_q.weight": "FLOW_ENC_ATTN_Q",
    "self_attn.linear_q.bias": "FLOW_ENC_ATTN_Q_BIAS",
    "self_attn.linear_k.weight": "FLOW_ENC_ATTN_K",
    "self_attn.linear_k.bias": "FLOW_ENC_ATTN_K_BIAS",
    "self_attn.linear_v.weight": "FLOW_ENC_ATTN_V",
    "self_attn.linear_v.bias": "FLOW_ENC_ATTN_V_BIAS",
    "self_attn.linear_out.weight": "FLOW_ENC_ATTN_OUT",
    "self_attn.linear_out.bias": "FLOW_ENC_ATTN_OUT_BIAS",
    "self_attn.linear_pos.weight": "FLOW_ENC_ATTN_POS",
    "self_attn.pos_bias_u": "FLOW_ENC_POS_BIAS_U",
    "self_attn.pos_bias_v": "FLOW_ENC_POS_BIAS_V",
    "norm_ff.weight": "FLOW_ENC_FFN_NORM",
    "norm_ff.bias": "FLOW_ENC_FFN_NORM_BIAS",
    "feed_forward.w_1.weight": "FLOW_ENC_FFN_UP",
    "feed_forward.w_1.bias": "FLOW_ENC_FFN_UP_BIAS",
    "feed_forward.w_2.weight": "FLOW_ENC_FFN_DOWN",
    "feed_forward.w_2.bias": "FLOW_ENC_FFN_DOWN_BIAS",
}
_DIT_LAYER = {
    "adaLN_modulation.1.weight": "FLOW_DIT_ADALN",
    "adaLN_modulation.1.bias": "FLOW_DIT_ADALN_BIAS",
    "attn.to_q.weight": "FLOW_DIT_ATTN_Q",
    "attn.to_q.bias": "FLOW_DIT_ATTN_Q_BIAS",
    "attn.to_k.weight": "FLOW_DIT_ATTN_K",
    "attn.to_k.bias": "FLOW_DIT_ATTN_K_BIAS",
    "attn.to_v.weight": "FLOW_DIT_ATTN_V",
    "attn.to_v.bias": "FLOW_DIT_ATTN_V_BIAS",
    "attn.q_norm.weight": "FLOW_DIT_ATTN_Q_NORM",
    "attn.q_norm.bias": "FLOW_DIT_ATTN_Q_NORM_BIAS",
    "attn.k_norm.weight": "FLOW_DIT_ATTN_K_NORM",
    "attn.k_norm.bias": "FLOW_DIT_ATTN_K_NORM_BIAS",
    "attn.proj.weight": "FLOW_DIT_ATTN_OUT",
    "attn.proj.bias": "FLOW_DIT_ATTN_OUT_BIAS",
    "conv.block.1.weight": "FLOW_DIT_CONV1",
    "conv.block.1.bias": "FLOW_DIT_CONV1_BIAS",
    "conv.block.3.weight": "FLOW_DIT_CONV_NORM",
    "conv.block.3.bias": "FLOW_DIT_CONV_NORM_BIAS",
    "conv.block.6.weight": "FLOW_DIT_CONV2",
    "conv.block.6.bias": "FLOW_DIT_CONV2_BIAS",
    "mlp.fc1.weight": "FLOW_DIT_FFN_UP",
    "mlp.fc1.bias": "FLOW_DIT_FFN_UP_BIAS",
    "mlp.fc2.weight": "FLOW_DIT_FFN_DOWN",
    "mlp.fc2.bias": "FLOW_DIT_FFN_DOWN_BIAS",
}
TENSOR_IDS = tuple(_GLOBAL.values()) + tuple(_ENC_LAYER.values()) + tuple(_DIT_LAYER.values())

_CONV_IDS = {"FLOW_ENC_LA_CONV1", "FLOW_ENC_LA_CONV2", "FLOW_ENC_UP_CONV", "FLOW_DIT_CONV1", "FLOW_DIT_CONV2"}


# ---- flow.yaml ------------------------------------------------------------------------------

class _Ref:
    def __init__(self, expr: str) -> None:
        self.expr = expr


def _yaml_loader():
    try:
        import yaml
    except ImportError:
        return None

    class Loader(yaml.SafeLoader):
        pass

    def obj(kind: str):
        def construct(loader, suffix, node):
            if isinstance(node, yaml.MappingNode):
                value = loader.construct_mapping(node, deep=True)
            elif isinstance(node, yaml.SequenceNode):
                value = {"__args__": loader.construct_sequence(node, deep=True)}
            else:
                value = {}
            return {"__class__": suffix, "__kind__": kind, **value}
        return construct

    Loader.add_multi_constructor("!new:", obj("new"))
    Loader.add_multi_constructor("!name:", obj("name"))
    Loader.add_multi_constructor("!apply:", obj("apply"))
    Loader.add_constructor("!ref", lambda loader, node: _Ref(loader.construct_scalar(node)))
    return Loader


def _resolve(value: Any, root: Dict[str, Any], depth: int = 0) -> Any:
    if depth > 32:
        raise ConvertError("flow.yaml: !ref nesting too deep")
    if isinstance(value, _Ref):
        expr = value.expr.strip()
        if not (expr.startswith("<") and expr.endswith(">") and expr.count("<") == 1):
            raise ConvertError(f"flow.yaml: unsupported !ref expression {expr!r} (only !ref <key> is read)")
        cur: Any = root
        for part in expr[1:-1].split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise ConvertError(f"flow.yaml: !ref {expr} names no key")
            cur = cur[part]
        return _resolve(cur, root, depth + 1)
    if isinstance(value, dict):
        return {k: _resolve(v, root, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, depth + 1) for v in value]
    return value


def load_flow_yaml(path: Path) -> Dict[str, Any]:
    """The ``flow`` object of flow.yaml as nested dicts (``__class__`` holds the ``!new:`` class)."""
    loader = _yaml_loader()
    if loader is None:
        raise ConvertError("reading flow.yaml needs PyYAML (pip install pyyaml)")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            root = yaml.load(f, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConvertError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(root, dict) or "flow" not in root:
        raise ConvertError(f"{path}: no top-level 'flow' entry")
    flow = _resolve(root["flow"], root)
    if not isinstance(flow, dict) or not str(flow.get("__class__", "")).endswith("CausalMaskedDiffWithXvec"):
        raise ConvertError(f"{path}: 'flow' is not a !new:...CausalMaskedDiffWithXvec object")
    return flow


def _part(obj: Dict[str, Any], key: str, cls: str, where: str) -> Dict[str, Any]:
    v = obj.get(key)
    if not isinstance(v, dict) or not str(v.get("__class__", "")).endswith(cls):
        raise ConvertError(f"flow.yaml: {where}{key} must be a !new:...{cls} object")
    return v


# ---- spec -----------------------------------------------------------------------------------

@dataclass
class FlowSpec:
    folder: Path
    vocab_size: int
    input_size: int
    output_size: int
    spk_embed_dim: int
    enc_width: int
    enc_heads: int
    enc_ff: int
    enc_blocks: int
    enc_up_blocks: int
    lookahead: int
    up_stride: int
    up_scale: float
    key_bias: bool
    dit_in: int
    dit_out: int
    dit_width: int
    dit_depth: int
    dit_heads: int
    dit_head_dim: int
    dit_ff: int
    cfg_rate: float
    state: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    notices: List[str] = field(default_factory=list)


def _pos_int(d: Dict[str, Any], key: str, where: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0 or v > (1 << 20):
        raise ConvertError(f"flow.yaml: {where}{key} = {v!r} is not a positive integer")
    return int(v)


def _number(d: Dict[str, Any], key: str, where: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConvertError(f"flow.yaml: {where}{key} = {v!r} is not a finite number")
    return float(v)


def _load_state(path: Path) -> Optional[Dict[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds)
        raise ConvertError(f"{path}: cannot read the torch state dict: {e}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: not a state dict")
    out: Dict[str, np.ndarray] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ConvertError(f"{path}: entry {k!r} is not a float tensor")
        out[str(k)] = v.detach().to(torch.float32).numpy()
    return out


def detect_flow(hf_dir: Path, say: Callable[[str], None] = lambda m: None) -> Optional[FlowSpec]:
    """The flow model of ``hf_dir/assets/token2wav``, or None (with a notice) when absent or
    when torch / PyYAML are not installed."""
    folder = Path(hf_dir) / FLOW_SUBDIR
    yml, pt = folder / "flow.yaml", folder / "flow.pt"
    if not folder.is_dir():
        return None
    if not yml.is_file() or not pt.is_file():
        missing = [p.name for p in (yml, pt) if not p.is_file()]
        say(f"token2wav: {folder} lacks {', '.join(missing)}; the flow-matching model is not converted")
        return None
    if _yaml_loader() is None:
        say("token2wav: PyYAML is not installed (pip install pyyaml); the flow-matching model is not converted")
        return None
    flow = load_flow_yaml(yml)
    f = {**_FLOW_DEFAULTS, **flow}
    enc = {**_ENC_DEFAULTS, **_part(flow, "encoder", "UpsampleConformerEncoderV2", "flow.")}
    dec = {**_CFM_DEFAULTS, **_part(flow, "decoder", "CausalConditionalCFM", "flow.")}
    dit = {**_DIT_DEFAULTS, **_part(dec, "estimator", "DiT", "flow.decoder.")}
    for key, want in (("input_layer", "linear"), ("pos_enc_layer_type", "rel_pos_espnet"),
                      ("selfattention_layer_type", "rel_selfattn"), ("activation_type", "swish")):
        if enc[key] != want:
            raise ConvertError(f"flow.yaml: encoder.{key} = {enc[key]!r} is not supported (expected {want!r})")
    if enc["normalize_before"] is not True:
        raise ConvertError("flow.yaml: encoder.normalize_before must be true (pre-LN layers)")
    if f.get("input_embedding") is not None:
        raise ConvertError("flow.yaml: a custom input_embedding module is not supported")
    for key in ("in_channels", "out_channels"):
        if key not in dit:
            raise ConvertError(f"flow.yaml: flow.decoder.estimator lacks {key}")
    state = _load_state(pt)
    if state is None:
        say("token2wav: reading flow.pt needs torch; the flow-matching model is not converted")
        return None
    spec = FlowSpec(
        folder=folder,
        vocab_size=_pos_int(f, "vocab_size", "flow."),
        input_size=_pos_int(f, "input_size", "flow."),
        output_size=_pos_int(f, "output_size", "flow."),
        spk_embed_dim=_pos_int(f, "spk_embed_dim", "flow."),
        enc_width=_pos_int(enc, "output_size", "encoder."),
        enc_heads=_pos_int(enc, "attention_heads", "encoder."),
        enc_ff=_pos_int(enc, "linear_units", "encoder."),
        enc_blocks=_pos_int(enc, "num_blocks", "encoder."),
        enc_up_blocks=_pos_int(enc, "num_up_blocks", "encoder."),
        lookahead=_pos_int(enc, "pre_lookahead_len", "encoder."),
        up_stride=_pos_int(enc, "up_stride", "encoder."),
        up_scale=_number(enc, "up_scale_factor", "encoder."),
        key_bias=bool(enc["key_bias"]),
        dit_in=_pos_int(dit, "in_channels", "estimator."),
        dit_out=_pos_int(dit, "out_channels", "estimator."),
        dit_width=_pos_int(dit, "hidden_size", "estimator."),
        dit_depth=_pos_int(dit, "depth", "estimator."),
        dit_heads=_pos_int(dit, "num_heads", "estimator."),
        dit_head_dim=_pos_int(dit, "head_dim", "estimator."),
        dit_ff=int(_pos_int(dit, "hidden_size", "estimator.") * _number(dit, "mlp_ratio", "estimator.")),
        cfg_rate=_number(dec, "inference_cfg_rate", "decoder."),
        state=state,
    )
    if f.get("output_type", "mel") != "mel":
        raise ConvertError(f"flow.yaml: output_type {f['output_type']!r} is not supported (expected 'mel')")
    if spec.enc_width % spec.enc_heads:
        raise ConvertError(f"flow.yaml: encoder output_size {spec.enc_width} is not divisible by "
                           f"{spec.enc_heads} attention heads")
    if spec.input_size != spec.enc_width:
        # up_embed is Linear(input_size, output_size) applied to the encoder's own states.
        raise ConvertError(f"flow.yaml: input_size {spec.input_size} differs from the encoder output_size "
                           f"{spec.enc_width} (the reference's up_embed needs them equal)")
    if spec.up_scale != float(spec.up_stride):
        raise ConvertError(f"flow.yaml: up_scale_factor {spec.up_scale} differs from up_stride {spec.up_stride} "
                           "(only integer nearest upsampling by the stride is supported)")
    if spec.dit_in != 4 * spec.output_size or spec.dit_out != spec.output_size:
        raise ConvertError(f"flow.yaml: estimator in/out channels {spec.dit_in}/{spec.dit_out} do not match "
                           f"x | mu | spk | cond of {spec.output_size} mel bins")
    if not (spec.cfg_rate > 0):
        raise ConvertError(f"flow.yaml: inference_cfg_rate {spec.cfg_rate} must be > 0 (the reference asserts it)")
    return spec


# ---- plan -----------------------------------------------------------------------------------

def _weight_type(outtype: str) -> Tuple[GGMLQuantizationType, GGMLQuantizationType]:
    weight = OUTTYPES[outtype].weight_type
    if ENCODINGS[weight].quantized:
        weight = Q.F16
    conv = Q.F32 if weight == Q.F32 else Q.F16
    return weight, conv


def _expected(spec: FlowSpec) -> Dict[str, Tuple[str, Optional[int], Tuple[int, ...]]]:
    """flow.pt name -> (tensor id, layer, expected torch shape)."""
    E, M, D = spec.enc_width, spec.output_size, spec.dit_width
    la = spec.lookahead
    us = spec.up_stride
    exp: Dict[str, Tuple[str, Optional[int], Tuple[int, ...]]] = {}
    g = {
        "input_embedding.weight": (spec.vocab_size, spec.input_size),
        "spk_embed_affine_layer.weight": (M, spec.spk_embed_dim),
        "spk_embed_affine_layer.bias": (M,),
        "encoder_proj.weight": (M, E),
        "encoder_proj.bias": (M,),
        "encoder.embed.out.0.weight": (E, spec.input_size),
        "encoder.embed.out.0.bias": (E,),
        "encoder.embed.out.1.weight": (E,),
        "encoder.embed.out.1.bias": (E,),
        "encoder.pre_lookahead_layer.conv1.weight": (E, E, la + 1),
        "encoder.pre_lookahead_layer.conv1.bias": (E,),
        "encoder.pre_lookahead_layer.conv2.weight": (E, E, 3),
        "encoder.pre_lookahead_layer.conv2.bias": (E,),
        "encoder.up_layer.conv.weight": (E, E, 2 * us + 1),
        "encoder.up_layer.conv.bias": (E,),
        "encoder.up_embed.out.0.weight": (E, spec.input_size),
        "encoder.up_embed.out.0.bias": (E,),
        "encoder.up_embed.out.1.weight": (E,),
        "encoder.up_embed.out.1.bias": (E,),
        "encoder.after_norm.weight": (E,),
        "encoder.after_norm.bias": (E,),
        "decoder.estimator.t_embedder.mlp.0.weight": (D, _CONSTANTS["t_freq_dim"]),
        "decoder.estimator.t_embedder.mlp.0.bias": (D,),
        "decoder.estimator.t_embedder.mlp.2.weight": (D, D),
        "decoder.estimator.t_embedder.mlp.2.bias": (D,),
        "decoder.estimator.in_proj.weight": (D, spec.dit_in),
        "decoder.estimator.in_proj.bias": (D,),
        "decoder.estimator.final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "decoder.estimator.final_layer.adaLN_modulation.1.bias": (2 * D,),
        "decoder.estimator.final_layer.linear.weight": (spec.dit_out, D),
        "decoder.estimator.final_layer.linear.bias": (spec.dit_out,),
    }
    for hf, shape in g.items():
        exp[hf] = (_GLOBAL[hf], None, shape)
    H, dk = spec.enc_heads, E // spec.enc_heads
    enc_shapes = {
        "self_attn.linear_q.weight": (E, E), "self_attn.linear_k.weight": (E, E), "self_attn.linear_v.weight": (E, E),
        "self_attn.linear_out.weight": (E, E), "self_attn.linear_pos.weight": (E, E),
        "self_attn.pos_bias_u": (H, dk), "self_attn.pos_bias_v": (H, dk),
        "feed_forward.w_1.weight": (spec.enc_ff, E), "feed_forward.w_1.bias": (spec.enc_ff,),
        "feed_forward.w_2.weight": (E, spec.enc_ff),
    }
    n_enc = spec.enc_blocks + spec.enc_up_blocks
    for il in range(n_enc):
        base = f"encoder.encoders.{il}." if il < spec.enc_blocks else f"encoder.up_encoders.{il - spec.enc_blocks}."
        for suffix, tid in _ENC_LAYER.items():
            if suffix == "self_attn.linear_k.bias" and not spec.key_bias:
                continue
            exp[base + suffix] = (tid, il, enc_shapes.get(suffix, (E,)))
    inner = spec.dit_heads * spec.dit_head_dim
    k = _CONSTANTS["conv_kernel"]
    dit_shapes = {
        "adaLN_modulation.1.weight": (9 * D, D), "adaLN_modulation.1.bias": (9 * D,),
        "attn.to_q.weight": (inner, D), "attn.to_q.bias": (inner,),
        "attn.to_k.weight": (inner, D), "attn.to_k.bias": (inner,),
        "attn.to_v.weight": (inner, D), "attn.to_v.bias": (inner,),
        "attn.q_norm.weight": (spec.dit_head_dim,), "attn.q_norm.bias": (spec.dit_head_dim,),
        "attn.k_norm.weight": (spec.dit_head_dim,), "attn.k_norm.bias": (spec.dit_head_dim,),
        "attn.proj.weight": (D, inner),
        "conv.block.1.weight": (D, D, k), "conv.block.6.weight": (D, D, k),
        "mlp.fc1.weight": (spec.dit_ff, D), "mlp.fc1.bias": (spec.dit_ff,),
        "mlp.fc2.weight": (D, spec.dit_ff),
    }
    for il in range(spec.dit_depth):
        for suffix, tid in _DIT_LAYER.items():
            exp[f"decoder.estimator.blocks.{il}.{suffix}"] = (tid, il, dit_shapes.get(suffix, (D,)))
    return exp


def plan_flow(spec: FlowSpec, outtype: str) -> Tuple[List[VisionTensor], List[str]]:
    """Every flow tensor checked against flow.yaml, in GGUF order; (plan, notices)."""
    weight_t, conv_t = _weight_type(outtype)
    exp = _expected(spec)
    state = spec.state
    unknown = sorted(set(state) - set(exp))
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ConvertError(f"{spec.folder / 'flow.pt'}: unexpected tensor(s) {', '.join(unknown[:3])}{more} "
                           "(flow.yaml describes a different model)")
    plan: List[VisionTensor] = []
    for hf, (tid, layer, shape) in exp.items():
        if hf not in state:
            raise ConvertError(f"{spec.folder / 'flow.pt'}: tensor {hf} is missing (needed by the flow model)")
        arr = state[hf]
        if tuple(arr.shape) != shape:
            raise ConvertError(f"{spec.folder / 'flow.pt'}: tensor {hf} has shape {list(arr.shape)}, flow.yaml "
                               f"gives {list(shape)}")
        if not np.isfinite(arr).all():
            raise ConvertError(f"{spec.folder / 'flow.pt'}: tensor {hf} holds non-finite values")
        if tid in _CONV_IDS:
            arr = np.ascontiguousarray(arr.transpose(0, 2, 1))  # [out, in, k] -> [out, k, in]
            qtype = conv_t
        elif arr.ndim == 1 or tid in ("FLOW_ENC_POS_BIAS_U", "FLOW_ENC_POS_BIAS_V"):
            qtype = Q.F32
        else:
            qtype = weight_t
            enc = ENCODINGS[qtype]
            if enc.quantized and arr.shape[-1] % enc.block_size:
                qtype = Q.F16

        def source(ckpt, start, stop, a=arr):
            return a if start is None else a[start:stop]

        plan.append(VisionTensor(tid, tensor_name(tid, layer), "t2w:" + hf, tuple(arr.shape), qtype=qtype,
                                 source=source))
    return plan, []


def write_flow_metadata(writer: Any, spec: FlowSpec) -> None:
    c = _CONSTANTS
    u32 = writer.add_uint32
    f32 = writer.add_float32
    u32(key_name("T2W_FLOW_VOCAB_SIZE"), spec.vocab_size)
    u32(key_name("T2W_FLOW_INPUT_SIZE"), spec.input_size)
    u32(key_name("T2W_FLOW_OUTPUT_SIZE"), spec.output_size)
    u32(key_name("T2W_FLOW_SPK_EMBED_DIM"), spec.spk_embed_dim)
    f32(key_name("T2W_FLOW_SPK_NORM_EPS"), c["spk_norm_eps"])
    u32(key_name("T2W_FLOW_ENC_WIDTH"), spec.enc_width)
    u32(key_name("T2W_FLOW_ENC_HEADS"), spec.enc_heads)
    u32(key_name("T2W_FLOW_ENC_FF"), spec.enc_ff)
    u32(key_name("T2W_FLOW_ENC_BLOCKS"), spec.enc_blocks)
    u32(key_name("T2W_FLOW_ENC_UP_BLOCKS"), spec.enc_up_blocks)
    u32(key_name("T2W_FLOW_ENC_LOOKAHEAD"), spec.lookahead)
    u32(key_name("T2W_FLOW_ENC_UP_STRIDE"), spec.up_stride)
    f32(key_name("T2W_FLOW_ENC_UP_SCALE"), spec.up_scale)
    writer.add_bool(key_name("T2W_FLOW_ENC_KEY_BIAS"), spec.key_bias)
    f32(key_name("T2W_FLOW_ENC_EMBED_EPS"), c["embed_eps"])
    f32(key_name("T2W_FLOW_ENC_LAYER_EPS"), c["layer_eps"])
    f32(key_name("T2W_FLOW_ENC_OUT_EPS"), c["after_norm_eps"])
    f32(key_name("T2W_FLOW_ENC_POS_BASE"), c["pos_base"])
    f32(key_name("T2W_FLOW_ENC_LRELU_SLOPE"), c["lookahead_slope"])
    u32(key_name("T2W_FLOW_DIT_IN"), spec.dit_in)
    u32(key_name("T2W_FLOW_DIT_OUT"), spec.dit_out)
    u32(key_name("T2W_FLOW_DIT_WIDTH"), spec.dit_width)
    u32(key_name("T2W_FLOW_DIT_DEPTH"), spec.dit_depth)
    u32(key_name("T2W_FLOW_DIT_HEADS"), spec.dit_heads)
    u32(key_name("T2W_FLOW_DIT_HEAD_DIM"), spec.dit_head_dim)
    u32(key_name("T2W_FLOW_DIT_FF"), spec.dit_ff)
    u32(key_name("T2W_FLOW_DIT_CONV_KERNEL"), c["conv_kernel"])
    f32(key_name("T2W_FLOW_DIT_NORM_EPS"), c["dit_norm_eps"])
    f32(key_name("T2W_FLOW_DIT_QK_NORM_EPS"), c["qk_norm_eps"])
    f32(key_name("T2W_FLOW_DIT_CONV_NORM_EPS"), c["conv_norm_eps"])
    u32(key_name("T2W_FLOW_DIT_T_FREQ_DIM"), c["t_freq_dim"])
    f32(key_name("T2W_FLOW_DIT_T_SCALE"), c["t_scale"])
    f32(key_name("T2W_FLOW_DIT_T_MAX_PERIOD"), c["t_max_period"])
    f32(key_name("T2W_FLOW_CFG_RATE"), spec.cfg_rate)
    f32(key_name("T2W_FLOW_TEMPERATURE"), c["temperature"])
    u32(key_name("T2W_FLOW_N_TIMESTEPS"), c["n_timesteps"])
    u32(key_name("T2W_FLOW_MAX_FRAMES"), c["max_frames"])
    u32(key_name("T2W_FLOW_STREAM_HISTORY"), c["stream_history"])
