"""The audio part of MiniCPM-o: the Whisper encoder (``apm.*``), its projector
(``audio_projection_layer.*``) and the pooling step.

Tensor names are llama.cpp mtmd's audio names (``a.*`` encoder, ``mm.a.*`` projector) from the
name table; metadata uses mtmd's ``clip.audio.*`` keys where it has one and ``minicpm.audio.*``
for the pooling step and the block-causal mask's chunk length, which mtmd has no key for.
What the reference does, and so what is written:

* The encoder is ``MiniCPMWhisperEncoder(WhisperConfig(**audio_config))``: missing
  ``audio_config`` fields take transformers' ``WhisperConfig`` defaults, as in the reference.
  Its features are the states after the final ``layer_norm`` (``audio_encoder_layer = -1``).
* ``audio_projection_layer`` is ``MultiModalProjector(encoder_ffn_dim // 4, hidden_size)``:
  Linear -> ReLU -> Linear, applied before ``AvgPool1d(audio_pool_step)``.
* ``audio_chunk_length`` (seconds, default 1.0) sets the block-causal mask of the offline path
  (``generate`` passes ``config.audio_chunk_length`` to ``get_audio_embedding``).

Types: norms, biases and the position table are F32. The two convolution kernels are F16 (F32
with an f32 audio type). The other matrices take the audio type, which follows ``--outtype``
except that a quantized outtype keeps the encoder F16 unless a type is asked for explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from gguf import GGMLQuantizationType

from .checkpoint import Checkpoint, ConvertError
from .llm import LlmSpec
from .names import key_name, tensor_name
from .quant import ENCODINGS, OUTTYPES
from .vision import VisionTensor

__all__ = [
    "AudioSpec",
    "AUDIO_OUTTYPES",
    "has_audio",
    "detect_audio",
    "plan_audio",
    "write_audio_metadata",
    "audio_qtypes",
    "TENSOR_IDS",
    "KEY_IDS",
]

Q = GGMLQuantizationType

AUDIO_OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")

# transformers.WhisperConfig() defaults, which the reference gets for fields audio_config lacks.
_WHISPER_DEFAULTS = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "activation_function": "gelu",
}
# nn.LayerNorm's default: WhisperEncoder's norms take no eps argument.
_LN_EPS = 1e-5

_LAYER_TENSORS = {
    "self_attn.q_proj.weight": "A_ATTN_Q",
    "self_attn.q_proj.bias": "A_ATTN_Q_BIAS",
    "self_attn.k_proj.weight": "A_ATTN_K",
    "self_attn.v_proj.weight": "A_ATTN_V",
    "self_attn.v_proj.bias": "A_ATTN_V_BIAS",
    "self_attn.out_proj.weight": "A_ATTN_OUT",
    "self_attn.out_proj.bias": "A_ATTN_OUT_BIAS",
    "self_attn_layer_norm.weight": "A_LN1",
    "self_attn_layer_norm.bias": "A_LN1_BIAS",
    "final_layer_norm.weight": "A_LN2",
    "final_layer_norm.bias": "A_LN2_BIAS",
    "fc1.weight": "A_FFN_UP",
    "fc1.bias": "A_FFN_UP_BIAS",
    "fc2.weight": "A_FFN_DOWN",
    "fc2.bias": "A_FFN_DOWN_BIAS",
}
_GLOBAL = {
    "apm.conv1.weight": "A_CONV1",
    "apm.conv1.bias": "A_CONV1_BIAS",
    "apm.conv2.weight": "A_CONV2",
    "apm.conv2.bias": "A_CONV2_BIAS",
    "apm.embed_positions.weight": "A_POS_EMBD",
}
_POST = {
    "apm.layer_norm.weight": "A_POST_LN",
    "apm.layer_norm.bias": "A_POST_LN_BIAS",
}
_PROJ = {
    "audio_projection_layer.linear1.weight": "A_MM_1",
    "audio_projection_layer.linear1.bias": "A_MM_1_BIAS",
    "audio_projection_layer.linear2.weight": "A_MM_2",
    "audio_projection_layer.linear2.bias": "A_MM_2_BIAS",
}
_LAYER_RE = re.compile(r"^apm\.layers\.(\d+)\.(.+)$")
# Parameters of the reference's Whisper module that the encoder forward never uses.
_UNUSED = re.compile(r"^apm\.(embed_positions\.position_ids)$")

TENSOR_IDS = tuple(_GLOBAL.values()) + tuple(_LAYER_TENSORS.values()) + tuple(_POST.values()) + tuple(_PROJ.values())
KEY_IDS = (
    "CLIP_HAS_AUDIO",
    "CLIP_A_PROJECTOR_TYPE",
    "CLIP_A_EMBEDDING_LENGTH",
    "CLIP_A_FEED_FORWARD_LENGTH",
    "CLIP_A_BLOCK_COUNT",
    "CLIP_A_HEAD_COUNT",
    "CLIP_A_LN_EPS",
    "CLIP_A_NUM_MEL_BINS",
    "CLIP_A_PROJECTION_DIM",
    "MINICPM_A_POOL_STEP",
    "MINICPM_A_CHUNK_LENGTH",
)


@dataclass
class AudioSpec:
    n_embd: int  # d_model (1024)
    n_ff: int  # encoder_ffn_dim (4096)
    n_head: int
    n_layer: int
    n_mel: int
    n_pos: int  # max_source_positions (1500 = 30 s)
    proj_in: int  # encoder_ffn_dim // 4
    proj_dim: int  # LLM hidden size
    pool_step: int
    chunk_length: float
    eps: float = _LN_EPS
    notices: List[str] = field(default_factory=list)


def _int_field(cfg: Dict[str, Any], key: str, where: str) -> int:
    value = cfg.get(key, _WHISPER_DEFAULTS.get(key))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ConvertError(f"config.json: {where}{key} = {value!r} is not a positive integer")
    return int(value)


def has_audio(config: Dict[str, Any], names: Optional[Sequence[str]]) -> bool:
    """Whether a MiniCPM-o checkpoint carries an audio encoder: ``init_audio`` is not false and
    the encoder's first convolution is there (a checkpoint with only stray ``apm.*`` tensors
    has no encoder to run: they are reported as skipped)."""
    if config.get("init_audio", True) is False:
        return False
    if names is None:
        return False
    return "apm.conv1.weight" in set(names)


def detect_audio(config: Dict[str, Any], llm: LlmSpec) -> AudioSpec:
    ac = config.get("audio_config")
    if ac is None:
        ac = {}
    if not isinstance(ac, dict):
        raise ConvertError("config.json: audio_config must be an object")
    notices: List[str] = []
    missing = [k for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim") if k not in ac]
    if missing:
        notices.append(f"audio: audio_config lacks {', '.join(missing)}; using transformers' WhisperConfig defaults "
                       "as the reference does")
    act = ac.get("activation_function", "gelu")
    if act != "gelu":
        raise ConvertError(f"config.json: audio_config.activation_function {act!r} is not supported (expected gelu)")
    n_embd = _int_field(ac, "d_model", "audio_config.")
    n_head = _int_field(ac, "encoder_attention_heads", "audio_config.")
    if n_embd % n_head:
        raise ConvertError(f"config.json: audio d_model {n_embd} is not divisible by {n_head} heads")
    n_ff = _int_field(ac, "encoder_ffn_dim", "audio_config.")
    pool = config.get("audio_pool_step", 2)
    if isinstance(pool, bool) or not isinstance(pool, int) or pool <= 0:
        raise ConvertError(f"config.json: audio_pool_step = {pool!r} is not a positive integer")
    chunk = config.get("audio_chunk_length", 1.0)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, float)):
        raise ConvertError(f"config.json: audio_chunk_length = {chunk!r} is not a number")
    return AudioSpec(
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_layer=_int_field(ac, "encoder_layers", "audio_config."),
        n_mel=_int_field(ac, "num_mel_bins", "audio_config."),
        n_pos=_int_field(ac, "max_source_positions", "audio_config."),
        proj_in=n_ff // 4,
        proj_dim=llm.hparams.n_embd,
        pool_step=int(pool),
        chunk_length=float(chunk),
        notices=notices,
    )


def audio_qtypes(outtype: str, audio_outtype: str = "auto") -> Tuple[GGMLQuantizationType, GGMLQuantizationType]:
    """(type of the linear matrices, type of the convolution kernels)."""
    if audio_outtype not in AUDIO_OUTTYPES:
        raise ConvertError(f"unknown audio output type {audio_outtype!r}; choose one of {', '.join(AUDIO_OUTTYPES)}")
    if audio_outtype == "auto":
        weight = OUTTYPES[outtype].weight_type
        if ENCODINGS[weight].quantized:
            weight = Q.F16
    else:
        weight = OUTTYPES[audio_outtype].weight_type
    conv = Q.F32 if weight == Q.F32 else Q.F16
    return weight, conv


def plan_audio(
    spec: AudioSpec, ckpt: Checkpoint, outtype: str, audio_outtype: str = "auto"
) -> Tuple[List[VisionTensor], List[str]]:
    """Map and check every audio tensor; returns (plan in GGUF order, notices)."""
    notices: List[str] = []
    weight_t, conv_t = audio_qtypes(outtype, audio_outtype)
    d, ff, m = spec.n_embd, spec.n_ff, spec.n_mel
    plan: List[VisionTensor] = []

    def linear_type(shape: Tuple[int, ...]) -> GGMLQuantizationType:
        enc = ENCODINGS[weight_t]
        if enc.quantized and shape[-1] % enc.block_size:
            notices.append(f"audio: row length {shape[-1]} is not a multiple of the {weight_t.name} block size; "
                           "written as F16")
            return Q.F16
        return weight_t

    def add(hf: str, tid: str, expected: Tuple[int, ...], qtype=None, layer: Optional[int] = None) -> None:
        if hf not in ckpt:
            raise ConvertError(f"{hf} not found in checkpoint {ckpt.dir} (needed for the audio encoder)")
        got = tuple(ckpt.shape(hf))
        if got != expected:
            raise ConvertError(f"tensor {hf}: shape {list(got)} does not match config.json (expected {list(expected)})")
        if qtype is None:
            qtype = Q.F32 if len(got) == 1 else linear_type(got)
        plan.append(VisionTensor(tid, tensor_name(tid, layer), hf, got, qtype=qtype))

    add("apm.conv1.weight", "A_CONV1", (d, m, 3), conv_t)
    add("apm.conv1.bias", "A_CONV1_BIAS", (d,))
    add("apm.conv2.weight", "A_CONV2", (d, d, 3), conv_t)
    add("apm.conv2.bias", "A_CONV2_BIAS", (d,))
    add("apm.embed_positions.weight", "A_POS_EMBD", (spec.n_pos, d), Q.F32)
    shapes = {
        "self_attn.q_proj.weight": (d, d),
        "self_attn.k_proj.weight": (d, d),
        "self_attn.v_proj.weight": (d, d),
        "self_attn.out_proj.weight": (d, d),
        "fc1.weight": (ff, d),
        "fc1.bias": (ff,),
        "fc2.weight": (d, ff),
    }
    for il in range(spec.n_layer):
        for suffix, tid in _LAYER_TENSORS.items():
            add(f"apm.layers.{il}.{suffix}", tid, shapes.get(suffix, (d,)), layer=il)
    for hf, tid in _POST.items():
        add(hf, tid, (d,))
    if spec.proj_in != d:
        raise ConvertError(
            f"audio: the projector's input width is encoder_ffn_dim // 4 = {spec.proj_in} in the reference, but the "
            f"encoder is {d} wide"
        )
    add("audio_projection_layer.linear1.weight", "A_MM_1", (spec.proj_dim, spec.proj_in))
    add("audio_projection_layer.linear1.bias", "A_MM_1_BIAS", (spec.proj_dim,))
    add("audio_projection_layer.linear2.weight", "A_MM_2", (spec.proj_dim, spec.proj_dim))
    add("audio_projection_layer.linear2.bias", "A_MM_2_BIAS", (spec.proj_dim,))

    used = {t.hf_name for t in plan}
    for name in ckpt.names():
        if name in used or not name.startswith(("apm.", "audio_projection_layer.", "audio_avg_pooler.")):
            continue
        if _UNUSED.match(name):
            continue
        lm = _LAYER_RE.match(name)
        if lm and int(lm.group(1)) >= spec.n_layer:
            raise ConvertError(f"checkpoint has {name} but config.json says audio_config.encoder_layers = {spec.n_layer}")
        raise ConvertError(f"unexpected audio tensor {name}: the converter does not know it")
    return plan, notices


def write_audio_metadata(writer: Any, spec: AudioSpec) -> None:
    writer.add_bool(key_name("CLIP_HAS_AUDIO"), True)
    writer.add_string(key_name("CLIP_A_PROJECTOR_TYPE"), "minicpmo")
    writer.add_uint32(key_name("CLIP_A_EMBEDDING_LENGTH"), spec.n_embd)
    writer.add_uint32(key_name("CLIP_A_FEED_FORWARD_LENGTH"), spec.n_ff)
    writer.add_uint32(key_name("CLIP_A_BLOCK_COUNT"), spec.n_layer)
    writer.add_uint32(key_name("CLIP_A_HEAD_COUNT"), spec.n_head)
    writer.add_float32(key_name("CLIP_A_LN_EPS"), spec.eps)
    writer.add_uint32(key_name("CLIP_A_NUM_MEL_BINS"), spec.n_mel)
    writer.add_uint32(key_name("CLIP_A_PROJECTION_DIM"), spec.proj_dim)
    writer.add_uint32(key_name("MINICPM_A_POOL_STEP"), spec.pool_step)
    writer.add_float32(key_name("MINICPM_A_CHUNK_LENGTH"), spec.chunk_length)
