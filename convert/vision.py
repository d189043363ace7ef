"""The vision part: the SigLIP NaViT tower (``vpm.*``) and the resampler (``resampler.*``).

Tensor names and metadata keys are clip.cpp's MiniCPM-V ones (from the name table), so the same
tensors can go into our single model file or into a llama.cpp ``mmproj`` file. What differs from
llama.cpp's legacy converter, and why:

* Only the layers that run are exported: the reference builds ``num_hidden_layers`` encoder
  layers and removes the last one when ``drop_vision_last_layer`` is true
  (``init_vision_module``: ``encoder.layers[:-1]``), while checkpoints may still store it.
  ``clip.vision.block_count`` is that effective depth, so clip.cpp (which runs every stored
  layer) and our runtime both match the reference.
* ``mlp.fc1`` (Dv -> FFN) is written as ``ffn_up`` and ``mlp.fc2`` as ``ffn_down``, the right
  names; clip.cpp looks at the shapes and accepts either.
* ``resampler.proj`` is applied as ``y = x @ proj`` (``proj`` is [D_in, D_out] in PyTorch order).
  ``ggml_mul_mat(w, x)`` computes ``x @ w_np.T`` for a weight stored as numpy ``w_np`` (ggml
  ``ne = [D_in, D_out]``), so the stored array is ``proj.T``, the same orientation as an
  ``nn.Linear`` weight.
* ``resampler.attn.in_proj_weight`` / ``in_proj_bias`` hold q, k, v in that order, D rows each;
  they become ``resampler.attn.{q,k,v}``.
* ``resampler.pos_embed_k`` is the 70x70 2D sin-cos table, row ``r * 70 + c`` holding
  ``concat(E1(c), E1(r))`` with ``E1(p) = [sin(p * w_i), cos(p * w_i)]``,
  ``w_i = 10000 ** (-i / (D / 4))`` (``get_2d_sincos_pos_embed``: the column half first). clip.cpp
  requires the tensor; our runtime computes the table of each slice's own grid instead.

Types: norms, biases, ``resampler.query`` and ``resampler.pos_embed_k`` are F32. The patch
embedding is F16 (ggml's convolution wants F16 kernels), F32 with a f32 vision type. The other
matrices take the vision type, which follows ``--outtype`` except that a quantized outtype keeps
the vision part F16 unless a quantized vision type is asked for explicitly; the position table
is never quantized.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gguf import GGMLQuantizationType

from .checkpoint import Checkpoint, ConvertError
from .llm import LlmSpec, PlannedTensor
from .names import key_name, tensor_name
from .quant import ENCODINGS, OUTTYPES

__all__ = [
    "VisionSpec",
    "VisionTensor",
    "detect_vision",
    "plan_vision",
    "write_vision_metadata",
    "vision_qtypes",
    "sincos_2d_table",
    "MINICPMV_VERSIONS",
    "VISION_OUTTYPES",
    "TENSOR_IDS",
    "KEY_IDS",
]

Q = GGMLQuantizationType

# clip.minicpmv_version (llama.cpp's numbering) by (V or O, version).
MINICPMV_VERSIONS = {
    ("v", "2.6"): 3,
    ("o", "2.6"): 4,
    ("v", "4.0"): 5,
    ("v", "4.5"): 6,
    ("o", "4.5"): 100045,
}
# A MiniCPM config without "version": the LLM type tells it.
_VERSION_BY_LLM = {"qwen3": "4.5", "qwen2": "2.6"}

# Choices of --vision-outtype; "auto" follows --outtype as described in the module docstring.
VISION_OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")

# The resampler's attention heads are hard-coded to embed_dim // 128 in every init_resampler.
RESAMPLER_HEAD_DIM = 128
# The 2D sin-cos table written as resampler.pos_embed_k (the reference's max_size).
POS_EMBED_K_SIDE = 70

_DEFAULT_MEAN_STD = [0.5, 0.5, 0.5]

# Per encoder layer: HF suffix under "vpm.encoder.layers.N." -> name-table ID.
_LAYER_TENSORS = {
    "layer_norm1.weight": "V_LN1",
    "layer_norm1.bias": "V_LN1_BIAS",
    "self_attn.q_proj.weight": "V_ATTN_Q",
    "self_attn.q_proj.bias": "V_ATTN_Q_BIAS",
    "self_attn.k_proj.weight": "V_ATTN_K",
    "self_attn.k_proj.bias": "V_ATTN_K_BIAS",
    "self_attn.v_proj.weight": "V_ATTN_V",
    "self_attn.v_proj.bias": "V_ATTN_V_BIAS",
    "self_attn.out_proj.weight": "V_ATTN_OUT",
    "self_attn.out_proj.bias": "V_ATTN_OUT_BIAS",
    "layer_norm2.weight": "V_LN2",
    "layer_norm2.bias": "V_LN2_BIAS",
    "mlp.fc1.weight": "V_FFN_UP",
    "mlp.fc1.bias": "V_FFN_UP_BIAS",
    "mlp.fc2.weight": "V_FFN_DOWN",
    "mlp.fc2.bias": "V_FFN_DOWN_BIAS",
}
# Straight copies: HF name -> name-table ID.
_VPM_GLOBAL = {
    "vpm.embeddings.patch_embedding.weight": "V_PATCH_EMBD",
    "vpm.embeddings.patch_embedding.bias": "V_PATCH_EMBD_BIAS",
    "vpm.embeddings.position_embedding.weight": "V_POS_EMBD",
}
_VPM_POST = {
    "vpm.post_layernorm.weight": "V_POST_LN",
    "vpm.post_layernorm.bias": "V_POST_LN_BIAS",
}
# HF names under "resampler." (built from parts: several equal the GGUF names, which the
# converter never spells itself).
_RS = "resampler."
_RS_COPIES = {
    _RS + "attn.out_proj.weight": "RS_ATTN_OUT",
    _RS + "attn.out_proj.bias": "RS_ATTN_OUT_BIAS",
}
for _norm, _tid in (("ln_q", "RS_LN_Q"), ("ln_kv", "RS_LN_KV"), ("ln_post", "RS_LN_POST")):
    _RS_COPIES[f"{_RS}{_norm}.weight"] = _tid
    _RS_COPIES[f"{_RS}{_norm}.bias"] = _tid + "_BIAS"
# in_proj rows: q, k, v blocks of D rows each.
_RS_IN_PROJ = (("RS_ATTN_Q", "RS_ATTN_Q_BIAS"), ("RS_ATTN_K", "RS_ATTN_K_BIAS"), ("RS_ATTN_V", "RS_ATTN_V_BIAS"))
# Buffers some checkpoints carry; nothing to convert.
_IGNORED = re.compile(r"^(resampler\.(pos_embed|temporal_pos_embed)\w*|vpm\.embeddings\.position_ids)$")
_VPM_LAYER_RE = re.compile(r"^vpm\.encoder\.layers\.(\d+)\.(.+)$")

TENSOR_IDS = (
    tuple(_VPM_GLOBAL.values())
    + tuple(_LAYER_TENSORS.values())
    + tuple(_VPM_POST.values())
    + ("RS_QUERY", "RS_KV")
    + tuple(i for pair in _RS_IN_PROJ for i in pair)
    + tuple(_RS_COPIES.values())
    + ("RS_PROJ", "RS_POS_EMBED_K")
)
KEY_IDS = (
    "CLIP_HAS_TEXT",
    "CLIP_HAS_VISION",
    "CLIP_HAS_MINICPMV_PROJ",
    "CLIP_PROJECTOR_TYPE",
    "CLIP_MINICPMV_VERSION",
    "CLIP_MINICPMV_QUERY_NUM",
    "CLIP_USE_GELU",
    "CLIP_V_IMAGE_SIZE",
    "CLIP_V_PATCH_SIZE",
    "CLIP_V_EMBEDDING_LENGTH",
    "CLIP_V_FEED_FORWARD_LENGTH",
    "CLIP_V_PROJECTION_DIM",
    "CLIP_V_HEAD_COUNT",
    "CLIP_V_LN_EPS",
    "CLIP_V_BLOCK_COUNT",
    "CLIP_V_IMAGE_MEAN",
    "CLIP_V_IMAGE_STD",
    "MINICPM_V_MAX_SLICE_NUMS",
    "MINICPM_V_SCALE_RESOLUTION",
    "MINICPM_V_USE_IMAGE_ID",
    "MINICPM_V_SLICE_MODE",
    "MINICPM_RS_HEAD_COUNT",
    "MINICPM_RS_LN_EPS",
    "MINICPM_RS_KIND",
)


@dataclass
class VisionSpec:
    flavour: str  # "v" | "o"
    version: str  # "2.6", "4.0", "4.5"
    minicpmv_version: int  # clip.minicpmv_version
    n_embd: int  # Dv
    n_ff: int
    n_head: int
    n_layer_stored: int  # vision_config.num_hidden_layers
    n_layer: int  # effective depth, exported
    patch_size: int
    n_positions: int  # rows of the position table ((vit image_size / patch)^2)
    eps: float
    rs_embd: int  # D, the LLM hidden size
    rs_heads: int
    rs_eps: float
    query_num: int
    image_size: int  # slice side (config image_size, 448)
    max_slice_nums: int
    scale_resolution: int
    use_image_id: bool
    kind: str  # "2d" | "3d"
    image_mean: List[float]
    image_std: List[float]
    notices: List[str] = field(default_factory=list)


@dataclass
class VisionTensor(PlannedTensor):
    """A planned vision tensor: its fixed ggml type and how to read its rows as float32."""

    qtype: Optional[GGMLQuantizationType] = None
    # (ckpt, start, stop) -> float32 rows [start:stop] of the array as written (numpy order);
    # start/stop are None for tensors read whole (1-D, 4-D).
    source: Optional[Callable[[Checkpoint, Optional[int], Optional[int]], np.ndarray]] = None

    def read_rows(self, ckpt: Checkpoint, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        if self.source is None:
            return ckpt.read(self.hf_name, start, stop)
        return self.source(ckpt, start, stop)


def sincos_2d_table(embed_dim: int, side: int = POS_EMBED_K_SIDE) -> np.ndarray:
    """The [side * side, embed_dim] float32 table of ``get_2d_sincos_pos_embed(D, (side, side))``."""
    if embed_dim % 4:
        raise ConvertError(f"the resampler width {embed_dim} is not a multiple of 4 (2D sin-cos table)")
    quarter = embed_dim // 4
    omega = np.arange(quarter, dtype=np.float32)
    omega /= np.float32(quarter)
    omega = (1.0 / 10000**omega).astype(np.float32)
    coord = np.arange(side, dtype=np.float32)
    ang = np.outer(coord, omega).astype(np.float32)  # [side, D/4]
    e1 = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)  # [side, D/2]: sines, then cosines
    rows = np.repeat(e1, side, axis=0)  # row index r of entry r * side + c
    cols = np.tile(e1, (side, 1))  # column index c
    return np.ascontiguousarray(np.concatenate([cols, rows], axis=1), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# detection


def _pos_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ConvertError(f"config.json: {what} = {value!r} is not a positive integer")
    return int(value)


def _pos_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConvertError(f"config.json: {what} = {value!r} is not a positive number")
    return float(value)


def _read_preprocessor(hf_dir: Path) -> Dict[str, Any]:
    path = hf_dir / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def _mean_std(pre: Dict[str, Any], key: str) -> List[float]:
    value = pre.get(key, _DEFAULT_MEAN_STD)
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
        raise ConvertError(f"preprocessor_config.json: {key} = {value!r} is not a list of 3 numbers")
    return [float(v) for v in value]


def has_vision(config: Dict[str, Any], names: Optional[Sequence[str]]) -> bool:
    """Whether a MiniCPM checkpoint carries a vision tower to convert.

    ``init_vision: false`` (MiniCPM-o's switch, honoured for every model) means no tower; so does
    a checkpoint without any ``vpm.`` tensor.
    """
    if config.get("init_vision", True) is False:
        return False
    if names is None:
        return True
    return any(n.startswith("vpm.") for n in names)


def detect_vision(config: Dict[str, Any], llm: LlmSpec, hf_dir: Path) -> VisionSpec:
    """The vision hyperparameters of a MiniCPM checkpoint, from config.json (and
    preprocessor_config.json, which the reference processor reads for slicing and image ids)."""
    notices: List[str] = []
    arch_names = config.get("architectures") or []
    if isinstance(arch_names, str):
        arch_names = [arch_names]
    first = str(arch_names[0]) if arch_names else ""
    model_type = str(config.get("model_type", ""))
    flavour = "o" if first == "MiniCPMO" or (not first and model_type == "minicpmo") else "v"

    version_raw = config.get("version")
    version: Optional[str]
    try:
        version = None if version_raw is None or isinstance(version_raw, bool) else f"{float(version_raw):.1f}"
    except (TypeError, ValueError):
        version = None
    if version is None:
        version = _VERSION_BY_LLM.get(llm.arch)
        notices.append(f"config.json has no version; taking MiniCPM {version} from the {llm.arch} LLM")
    code = MINICPMV_VERSIONS.get((flavour, version or ""))
    if code is None:
        known = ", ".join(f"MiniCPM-{f.upper()} {v}" for f, v in MINICPMV_VERSIONS)
        raise ConvertError(
            f"vision: MiniCPM-{flavour.upper()} version {version_raw!r} has no known {key_name('CLIP_MINICPMV_VERSION')} "
            f"(known: {known}); pass --llm-only to convert the language model alone"
        )

    vc = config.get("vision_config")
    if not isinstance(vc, dict):
        raise ConvertError("config.json lacks vision_config (an object), needed for the vision tower")
    act = vc.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ConvertError(f"config.json: vision_config.hidden_act {act!r} is not supported (expected gelu_pytorch_tanh)")
    n_embd = _pos_int(vc.get("hidden_size", 1152), "vision_config.hidden_size")
    n_head = _pos_int(vc.get("num_attention_heads", 16), "vision_config.num_attention_heads")
    if n_embd % n_head:
        raise ConvertError(f"config.json: vision hidden_size {n_embd} is not divisible by {n_head} heads")
    n_stored = _pos_int(vc.get("num_hidden_layers", 27), "vision_config.num_hidden_layers")
    drop = bool(config.get("drop_vision_last_layer", True))
    n_layer = n_stored - (1 if drop else 0)
    if n_layer <= 0:
        raise ConvertError(f"config.json: {n_stored} vision layer(s) with drop_vision_last_layer leaves none")
    patch = _pos_int(vc.get("patch_size", 14), "vision_config.patch_size")
    vit_size = _pos_int(vc.get("image_size", 980), "vision_config.image_size")
    side = vit_size // patch
    rs_embd = llm.hparams.n_embd
    if rs_embd % RESAMPLER_HEAD_DIM:
        raise ConvertError(
            f"the resampler width (LLM hidden_size {rs_embd}) is not a multiple of {RESAMPLER_HEAD_DIM}: "
            "its heads are hidden_size // 128"
        )

    pre = _read_preprocessor(hf_dir)
    sc = config.get("slice_config")
    sc = sc if isinstance(sc, dict) else {}
    max_slice = pre.get("max_slice_nums", sc.get("max_slice_nums", 9))
    scale_res = pre.get("scale_resolution", sc.get("scale_resolution", 448))
    use_image_id = pre.get("use_image_id", config.get("use_image_id", True))
    if not isinstance(use_image_id, bool):
        raise ConvertError(f"use_image_id = {use_image_id!r} is not a boolean")

    return VisionSpec(
        flavour=flavour,
        version=str(version),
        minicpmv_version=code,
        n_embd=n_embd,
        n_ff=_pos_int(vc.get("intermediate_size", 4304), "vision_config.intermediate_size"),
        n_head=n_head,
        n_layer_stored=n_stored,
        n_layer=n_layer,
        patch_size=patch,
        n_positions=side * side,
        eps=_pos_float(vc.get("layer_norm_eps", 1e-6), "vision_config.layer_norm_eps"),
        rs_embd=rs_embd,
        rs_heads=rs_embd // RESAMPLER_HEAD_DIM,
        rs_eps=1e-6,  # partial(nn.LayerNorm, eps=1e-6) in every Resampler
        query_num=_pos_int(config.get("query_num", 64), "query_num"),
        image_size=_pos_int(config.get("image_size", 448), "image_size"),
        max_slice_nums=_pos_int(max_slice, "max_slice_nums"),
        scale_resolution=_pos_int(scale_res, "scale_resolution"),
        use_image_id=use_image_id,
        kind="3d" if (flavour, version) == ("v", "4.5") else "2d",
        image_mean=_mean_std(pre, "norm_mean"),
        image_std=_mean_std(pre, "norm_std"),
        notices=notices,
    )


# ----------------------------------------------------------------------------------------------
# tensor plan


def vision_qtypes(outtype: str, vision_outtype: str = "auto") -> Tuple[GGMLQuantizationType, GGMLQuantizationType]:
    """(type of the linear matrices, type of the other matrices: patch/position embeddings)."""
    if vision_outtype not in VISION_OUTTYPES:
        raise ConvertError(f"unknown vision output type {vision_outtype!r}; choose one of {', '.join(VISION_OUTTYPES)}")
    if vision_outtype == "auto":
        weight = OUTTYPES[outtype].weight_type
        if ENCODINGS[weight].quantized:
            weight = Q.F16
    else:
        weight = OUTTYPES[vision_outtype].weight_type
    plain = weight if not ENCODINGS[weight].quantized else Q.F16
    return weight, plain


def _whole(hf: str, transform: Callable[[np.ndarray], np.ndarray]):
    """A source reading ``hf`` whole, transforming it, then cutting the requested rows."""

    def read(ckpt: Checkpoint, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        data = np.ascontiguousarray(transform(ckpt.read(hf)), dtype=np.float32)
        return data if start is None else data[start:stop]

    return read


def _row_block(hf: str, first: int, count: int):
    """A source reading rows [first, first + count) of ``hf`` (a block of in_proj)."""

    def read(ckpt: Checkpoint, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        if start is None:
            return ckpt.read(hf)[first : first + count]
        stop = count if stop is None else min(stop, count)
        return ckpt.read(hf, first + start, first + stop)

    return read


def _table(embed_dim: int):
    def read(ckpt: Checkpoint, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        data = sincos_2d_table(embed_dim)
        return data if start is None else data[start:stop]

    return read


def plan_vision(
    spec: VisionSpec, ckpt: Checkpoint, outtype: str, vision_outtype: str = "auto"
) -> Tuple[List[VisionTensor], List[str]]:
    """Map and check every vision/resampler tensor; returns (plan in GGUF order, notices).

    Raises ConvertError for a missing tensor, a shape that disagrees with config.json, or an
    unknown ``vpm.`` / ``resampler.`` tensor.
    """
    notices: List[str] = []
    weight_t, plain_t = vision_qtypes(outtype, vision_outtype)
    dv, ff, d = spec.n_embd, spec.n_ff, spec.rs_embd
    p = spec.patch_size
    plan: List[VisionTensor] = []
    f32 = Q.F32

    def linear_type(shape: Tuple[int, ...]) -> GGMLQuantizationType:
        enc = ENCODINGS[weight_t]
        if enc.quantized and shape[-1] % enc.block_size:
            notices.append(
                f"vision: row length {shape[-1]} is not a multiple of the {weight_t.name} block size; written as F16"
            )
            return Q.F16
        return weight_t

    def add(hf: str, tid: str, expected: Tuple[int, ...], qtype, layer: Optional[int] = None, source=None,
            shape: Optional[Tuple[int, ...]] = None) -> None:
        if hf not in ckpt:
            raise ConvertError(f"{hf} not found in checkpoint {ckpt.dir} (needed for the vision tower)")
        got = tuple(ckpt.shape(hf))
        if got != expected:
            raise ConvertError(f"tensor {hf}: shape {list(got)} does not match config.json (expected {list(expected)})")
        out_shape = shape if shape is not None else got
        if qtype is None:
            qtype = f32 if len(out_shape) == 1 else linear_type(out_shape)
        plan.append(VisionTensor(tid, tensor_name(tid, layer), hf, out_shape, qtype=qtype, source=source))

    # -- vision tower
    patch_t = f32 if plain_t == f32 else Q.F16
    add("vpm.embeddings.patch_embedding.weight", "V_PATCH_EMBD", (dv, 3, p, p), patch_t)
    add("vpm.embeddings.patch_embedding.bias", "V_PATCH_EMBD_BIAS", (dv,), f32)
    add("vpm.embeddings.position_embedding.weight", "V_POS_EMBD", (spec.n_positions, dv), plain_t)
    layer_shapes = {
        "self_attn.q_proj.weight": (dv, dv),
        "self_attn.k_proj.weight": (dv, dv),
        "self_attn.v_proj.weight": (dv, dv),
        "self_attn.out_proj.weight": (dv, dv),
        "mlp.fc1.weight": (ff, dv),
        "mlp.fc1.bias": (ff,),
        "mlp.fc2.weight": (dv, ff),
    }
    for il in range(spec.n_layer):
        for suffix, tid in _LAYER_TENSORS.items():
            add(f"vpm.encoder.layers.{il}.{suffix}", tid, layer_shapes.get(suffix, (dv,)), None, layer=il)
    for hf, tid in _VPM_POST.items():
        add(hf, tid, (dv,), f32)

    # -- resampler
    add(_RS + "query", "RS_QUERY", (spec.query_num, d), f32)
    add(_RS + "kv_proj.weight", "RS_KV", (d, dv), None)
    w_in, b_in = _RS + "attn.in_proj_weight", _RS + "attn.in_proj_bias"
    for i, (wid, bid) in enumerate(_RS_IN_PROJ):
        add(w_in, wid, (3 * d, d), None, source=_row_block(w_in, i * d, d), shape=(d, d))
        add(b_in, bid, (3 * d,), f32, source=_row_block(b_in, i * d, d), shape=(d,))
    for hf, tid in _RS_COPIES.items():
        add(hf, tid, (d, d) if hf.endswith("out_proj.weight") else (d,), None)
    add(_RS + "proj", "RS_PROJ", (d, d), None, source=_whole(_RS + "proj", lambda a: a.T))
    side = POS_EMBED_K_SIDE
    plan.append(
        VisionTensor("RS_POS_EMBED_K", tensor_name("RS_POS_EMBED_K"), "(computed 2D sin-cos table)",
                     (side * side, d), qtype=f32, source=_table(d))
    )

    # -- everything else under vpm. / resampler.
    used = {t.hf_name for t in plan}
    dropped, ignored = 0, []
    for name in ckpt.names():
        if name in used or not name.startswith(("vpm.", _RS)):
            continue
        if _IGNORED.match(name):
            ignored.append(name)
            continue
        m = _VPM_LAYER_RE.match(name)
        if m and m.group(2) in _LAYER_TENSORS:
            il = int(m.group(1))
            if spec.n_layer <= il < spec.n_layer_stored:
                dropped += 1
                continue
            raise ConvertError(
                f"checkpoint has {name} but config.json says vision_config.num_hidden_layers = {spec.n_layer_stored}"
            )
        raise ConvertError(f"unexpected vision tensor {name}: the converter does not know it")
    if dropped:
        notices.append(
            f"vision: drop_vision_last_layer is true: layer {spec.n_layer} ({dropped} tensors) is stored but not run "
            f"by the reference, so not exported ({spec.n_layer} layers written)"
        )
    if ignored:
        notices.append(f"vision: ignored buffer tensor(s) {', '.join(sorted(ignored))} (recomputed at run time)")
    return plan, notices


# ----------------------------------------------------------------------------------------------
# metadata


def write_vision_metadata(writer: Any, spec: VisionSpec) -> None:
    """clip.cpp's MiniCPM-V keys (as in a llama.cpp mmproj) and minicpm.cpp's vision keys."""
    writer.add_bool(key_name("CLIP_HAS_TEXT"), False)
    writer.add_bool(key_name("CLIP_HAS_VISION"), True)
    writer.add_bool(key_name("CLIP_HAS_MINICPMV_PROJ"), True)
    writer.add_string(key_name("CLIP_PROJECTOR_TYPE"), "resampler")
    writer.add_int32(key_name("CLIP_MINICPMV_VERSION"), spec.minicpmv_version)
    writer.add_uint32(key_name("CLIP_MINICPMV_QUERY_NUM"), spec.query_num)
    writer.add_bool(key_name("CLIP_USE_GELU"), True)
    writer.add_uint32(key_name("CLIP_V_IMAGE_SIZE"), spec.image_size)
    writer.add_uint32(key_name("CLIP_V_PATCH_SIZE"), spec.patch_size)
    writer.add_uint32(key_name("CLIP_V_EMBEDDING_LENGTH"), spec.n_embd)
    writer.add_uint32(key_name("CLIP_V_FEED_FORWARD_LENGTH"), spec.n_ff)
    writer.add_uint32(key_name("CLIP_V_PROJECTION_DIM"), 0)
    writer.add_uint32(key_name("CLIP_V_HEAD_COUNT"), spec.n_head)
    writer.add_float32(key_name("CLIP_V_LN_EPS"), spec.eps)
    writer.add_uint32(key_name("CLIP_V_BLOCK_COUNT"), spec.n_layer)
    writer.add_array(key_name("CLIP_V_IMAGE_MEAN"), list(spec.image_mean))
    writer.add_array(key_name("CLIP_V_IMAGE_STD"), list(spec.image_std))
    writer.add_uint32(key_name("MINICPM_V_MAX_SLICE_NUMS"), spec.max_slice_nums)
    writer.add_uint32(key_name("MINICPM_V_SCALE_RESOLUTION"), spec.scale_resolution)
    writer.add_bool(key_name("MINICPM_V_USE_IMAGE_ID"), spec.use_image_id)
    # Every supported version (2.6 and later) uses the MiniCPM-V 2.6 placeholder layout.
    writer.add_string(key_name("MINICPM_V_SLICE_MODE"), "minicpmv-2.6")
    writer.add_uint32(key_name("MINICPM_RS_HEAD_COUNT"), spec.rs_heads)
    writer.add_float32(key_name("MINICPM_RS_LN_EPS"), spec.rs_eps)
    writer.add_string(key_name("MINICPM_RS_KIND"), spec.kind)
