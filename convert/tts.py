"""The TTS talker of MiniCPM-o 4.5 (``tts.*``, the official ``MiniCPMTTS``).

What the reference builds (modeling_minicpmo.py ``MiniCPMTTS.__init__``) and so what is written:

* ``emb_text``: ``nn.Embedding(num_text_tokens, hidden_size)``, indexed with LLM token ids.
* ``model``: ``LlamaModel(LlamaConfig(hidden_size, intermediate_size, num_attention_heads,
  num_hidden_layers, num_key_value_heads, max_position_embeddings))``: every other Llama field is
  LlamaConfig's default (``rms_norm_eps`` 1e-6, ``rope_theta`` 10000, SiLU, no biases), whatever
  ``tts_config`` says, so those two are written from LlamaConfig's defaults. ``model.embed_tokens``
  is never used (the talker always runs on ``inputs_embeds``) and is not written.
* ``projector_semantic``: ``MultiModalProjector(llm_dim, hidden_size)`` (Linear -> ReLU -> Linear,
  with biases) for ``projector_type = "mlp"``; ``projector_spk`` is unused in o4.5 inference and
  not written.
* ``emb_code.0`` / ``head_code.0`` (``num_vq = 1``): the head is a weight-normed Linear without
  bias; its weight ``W = g * v / |v|`` (norm of each output row, ``weight_norm``'s dim 0) is folded
  here in float64.
* Every ``tts_config`` field the inference paths read becomes metadata (``minicpm.tts.*``), with
  ``MiniCPMTTSConfig``'s defaults where the config lacks it (as the reference gets them), and the
  ``TTSSamplingParams`` defaults as the sampling defaults.

Types: norms and biases F32; ``emb_code`` and the folded head F32 (small; the head's rows are
computed here); ``emb_text`` (152064 rows) and the Llama and projector matrices take the TTS type
(``--outtype``, but F16 for a quantized outtype; a bfloat16 checkpoint's values are exact in F16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gguf import GGMLQuantizationType

from .checkpoint import Checkpoint, ConvertError
from .llm import LlmSpec
from .names import key_name, tensor_name
from .quant import ENCODINGS, OUTTYPES
from .vision import VisionTensor

__all__ = ["TtsSpec", "has_tts", "detect_tts", "plan_tts", "write_tts_metadata", "TENSOR_IDS", "KEY_IDS", "TTS_PREFIX"]

Q = GGMLQuantizationType

TTS_PREFIX = "tts."

# MiniCPMTTSConfig.__init__ defaults (configuration_minicpmo.py), for fields tts_config lacks.
CONFIG_DEFAULTS: Dict[str, Any] = {
    "llm_dim": 2560,
    "projector_type": "mlp",
    "hidden_act": "silu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 20,
    "num_key_value_heads": 12,
    "max_position_embeddings": 4096,
    "num_audio_tokens": 4097,
    "num_text_tokens": 21178,
    "num_vq": 1,
    "audio_bos_token_id": 21132,
    "text_eos_token_id": 21133,
    "condition_type": "llm_hidden",
    "backbone_model": "llama",
    "normalize_projected_hidden": False,
    "interleaved": False,
    "attention_type": "sliding_recompute",
    "recomputed_chunks": 1,
    "window_size": 2,
    "streaming_sliding_window_audio_window_size": 300,
}
# transformers.LlamaConfig defaults that LlamaModel gets (MiniCPMTTS passes neither).
LLAMA_RMS_EPS = 1e-6
LLAMA_ROPE_THETA = 10000.0
# TTSSamplingParams (utils.py) and gen_logits' repetition window.
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 0.85, "top_k": 25, "repetition_penalty": 1.05}
PENALTY_WINDOW = 16

ATTENTION_TYPES = ("full_attention", "sliding_window", "sliding_recompute", "reindex")

_P = TTS_PREFIX
_EMB_TEXT = _P + "emb_text.weight"
_EMB_CODE = _P + "emb_code.0.weight"
_HEAD = _P + "head_code.0."
_HEAD_G = (_HEAD + "parametrizations.weight.original0", _HEAD + "weight_g")
_HEAD_V = (_HEAD + "parametrizations.weight.original1", _HEAD + "weight_v")
_HEAD_W = _HEAD + "weight"
_NORM = _P + "model.norm.weight"
_PROJ = {
    _P + "projector_semantic.linear1.weight": "TTS_PROJ_1",
    _P + "projector_semantic.linear1.bias": "TTS_PROJ_1_BIAS",
    _P + "projector_semantic.linear2.weight": "TTS_PROJ_2",
    _P + "projector_semantic.linear2.bias": "TTS_PROJ_2_BIAS",
}
_LAYER_TENSORS = {
    "input_layernorm.weight": "TTS_ATTN_NORM",
    "self_attn.q_proj.weight": "TTS_ATTN_Q",
    "self_attn.k_proj.weight": "TTS_ATTN_K",
    "self_attn.v_proj.weight": "TTS_ATTN_V",
    "self_attn.o_proj.weight": "TTS_ATTN_OUT",
    "post_attention_layernorm.weight": "TTS_FFN_NORM",
    "mlp.gate_proj.weight": "TTS_FFN_GATE",
    "mlp.up_proj.weight": "TTS_FFN_UP",
    "mlp.down_proj.weight": "TTS_FFN_DOWN",
}
_LAYER_RE = re.compile(r"^tts\.model\.layers\.(\d+)\.(.+)$")
# Parameters the inference paths never use (skipped with a notice).
_UNUSED = re.compile(r"^tts\.(model\.embed_tokens\.|projector_spk\.|model\.rotary_emb\.)")

TENSOR_IDS = ("TTS_EMB_TEXT", "TTS_EMB_CODE", "TTS_HEAD_CODE", "TTS_OUTPUT_NORM") + tuple(_PROJ.values()) + tuple(
    _LAYER_TENSORS.values()
)
KEY_IDS = (
    "MINICPM_TTS_HAS_TTS",
    "MINICPM_TTS_EMBEDDING_LENGTH",
    "MINICPM_TTS_BLOCK_COUNT",
    "MINICPM_TTS_FEED_FORWARD_LENGTH",
    "MINICPM_TTS_HEAD_COUNT",
    "MINICPM_TTS_HEAD_COUNT_KV",
    "MINICPM_TTS_RMS_EPS",
    "MINICPM_TTS_ROPE_FREQ_BASE",
    "MINICPM_TTS_CONTEXT_LENGTH",
    "MINICPM_TTS_LLM_DIM",
    "MINICPM_TTS_NUM_TEXT_TOKENS",
    "MINICPM_TTS_NUM_AUDIO_TOKENS",
    "MINICPM_TTS_AUDIO_BOS_ID",
    "MINICPM_TTS_TEXT_EOS_ID",
    "MINICPM_TTS_NORMALIZE_HIDDEN",
    "MINICPM_TTS_CONDITION_TYPE",
    "MINICPM_TTS_ATTENTION_TYPE",
    "MINICPM_TTS_WINDOW_SIZE",
    "MINICPM_TTS_RECOMPUTED_CHUNKS",
    "MINICPM_TTS_SLIDING_WINDOW",
    "MINICPM_TTS_INTERLEAVED",
    "MINICPM_TTS_TEMP",
    "MINICPM_TTS_TOP_P",
    "MINICPM_TTS_TOP_K",
    "MINICPM_TTS_PENALTY_REPEAT",
    "MINICPM_TTS_PENALTY_WINDOW",
)


@dataclass
class TtsSpec:
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_layer: int
    n_ctx: int
    llm_dim: int
    num_text_tokens: int
    num_audio_tokens: int
    audio_bos_token_id: int
    text_eos_token_id: int
    normalize_projected_hidden: bool
    condition_type: str
    attention_type: str
    window_size: int
    recomputed_chunks: int
    sliding_window: int
    interleaved: bool
    eps: float = LLAMA_RMS_EPS
    rope_theta: float = LLAMA_ROPE_THETA
    notices: List[str] = field(default_factory=list)


def _head_names(ckpt_names: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """The head's tensors: (g, v) of a weight norm, or (weight,) when stored folded."""
    names = set(ckpt_names)
    for g, v in zip(_HEAD_G, _HEAD_V):
        if g in names and v in names:
            return (g, v)
    if _HEAD_W in names:
        return (_HEAD_W,)
    return None


# The model whose talker this module converts (o2.6's ConditionalChatTTS is another network).
TTS_MODEL_TYPE = "minicpm-o-4.5"


def has_tts(config: Dict[str, Any], names: Optional[Sequence[str]], llm: LlmSpec) -> bool:
    """Whether a MiniCPM-o 4.5 checkpoint carries a TTS talker: ``init_tts`` is not false and the
    talker's layers, code embedding and head are there (stray ``tts.*`` tensors without them, and
    other models' TTS, are reported as skipped)."""
    if llm.model_type != TTS_MODEL_TYPE or config.get("init_tts", True) is False or names is None:
        return False
    s = set(names)
    return _EMB_CODE in s and _head_names(names) is not None and (_P + "model.layers.0.self_attn.q_proj.weight") in s


def _int(tc: Dict[str, Any], key: str, lo: int = 1) -> int:
    value = tc.get(key, CONFIG_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < lo:
        raise ConvertError(f"config.json: tts_config.{key} = {value!r} is not an integer >= {lo}")
    return int(value)


def _bool(tc: Dict[str, Any], key: str) -> bool:
    value = tc.get(key, CONFIG_DEFAULTS[key])
    if not isinstance(value, bool):
        raise ConvertError(f"config.json: tts_config.{key} = {value!r} is not a boolean")
    return value


def _str(tc: Dict[str, Any], key: str) -> str:
    value = tc.get(key, CONFIG_DEFAULTS[key])
    if not isinstance(value, str):
        raise ConvertError(f"config.json: tts_config.{key} = {value!r} is not a string")
    return value


def detect_tts(config: Dict[str, Any], llm: LlmSpec) -> TtsSpec:
    tc = config.get("tts_config")
    if tc is None:
        tc = {}
    if not isinstance(tc, dict):
        raise ConvertError("config.json: tts_config must be an object")
    notices: List[str] = []
    missing = sorted(k for k in ("audio_bos_token_id", "text_eos_token_id", "num_audio_tokens", "num_text_tokens",
                                 "normalize_projected_hidden", "attention_type", "llm_dim", "condition_type") if k not in tc)
    if missing:
        notices.append(f"tts: tts_config lacks {', '.join(missing)}; using MiniCPMTTSConfig's defaults as the reference does")
    for key in ("rms_norm_eps", "rope_theta"):
        if key in tc:
            notices.append(f"tts: tts_config.{key} is ignored (MiniCPMTTS builds its LlamaConfig without it; "
                           f"the talker uses LlamaConfig's default)")
    if _str(tc, "backbone_model") != "llama":
        raise ConvertError(f"config.json: tts_config.backbone_model {tc.get('backbone_model')!r} is not supported (llama)")
    if _str(tc, "projector_type") != "mlp":
        raise ConvertError(f"config.json: tts_config.projector_type {tc.get('projector_type')!r} is not supported (mlp)")
    if _str(tc, "hidden_act") != "silu":
        raise ConvertError(f"config.json: tts_config.hidden_act is not used by the talker's Llama (SiLU); got "
                           f"{tc.get('hidden_act')!r}")
    if _int(tc, "num_vq") != 1:
        raise ConvertError(f"config.json: tts_config.num_vq = {tc.get('num_vq')} is not supported (MiniCPM-o 4.5 has 1)")
    attn = _str(tc, "attention_type")
    if attn not in ATTENTION_TYPES:
        raise ConvertError(f"config.json: tts_config.attention_type {attn!r} is not one of {', '.join(ATTENTION_TYPES)}")
    n_embd, n_head = _int(tc, "hidden_size"), _int(tc, "num_attention_heads")
    n_head_kv = _int(tc, "num_key_value_heads")
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ConvertError(f"config.json: tts hidden_size {n_embd} does not split into {n_head} heads of even size")
    if n_head % n_head_kv:
        raise ConvertError(f"config.json: tts num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}")
    spec = TtsSpec(
        n_embd=n_embd,
        n_ff=_int(tc, "intermediate_size"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_layer=_int(tc, "num_hidden_layers"),
        n_ctx=_int(tc, "max_position_embeddings"),
        llm_dim=_int(tc, "llm_dim"),
        num_text_tokens=_int(tc, "num_text_tokens"),
        num_audio_tokens=_int(tc, "num_audio_tokens", 2),
        audio_bos_token_id=_int(tc, "audio_bos_token_id", 0),
        text_eos_token_id=_int(tc, "text_eos_token_id", 0),
        normalize_projected_hidden=_bool(tc, "normalize_projected_hidden"),
        condition_type=_str(tc, "condition_type"),
        attention_type=attn,
        window_size=_int(tc, "window_size"),
        recomputed_chunks=_int(tc, "recomputed_chunks", 0),
        sliding_window=_int(tc, "streaming_sliding_window_audio_window_size"),
        interleaved=_bool(tc, "interleaved"),
        notices=notices,
    )
    for key in ("audio_bos_token_id", "text_eos_token_id"):
        if getattr(spec, key) >= spec.num_text_tokens:
            raise ConvertError(f"config.json: tts_config.{key} = {getattr(spec, key)} is outside emb_text's "
                               f"{spec.num_text_tokens} rows")
    if attn == "sliding_recompute" and spec.window_size <= spec.recomputed_chunks:
        raise ConvertError("config.json: tts_config: sliding_recompute needs window_size > recomputed_chunks (as "
                           "MiniCPMTTS checks)")
    if spec.llm_dim != llm.hparams.n_embd:
        raise ConvertError(f"config.json: tts_config.llm_dim {spec.llm_dim} differs from the LLM hidden size "
                           f"{llm.hparams.n_embd} (the projector reads the LLM's hidden states)")
    if spec.condition_type != "hidden_text_merge":
        notices.append(f"tts: condition_type {spec.condition_type!r}: the o4.5 speech paths implement hidden_text_merge "
                       "only (emb_text + projected hidden states), which the runtime uses")
    return spec


def tts_weight_type(outtype: str) -> GGMLQuantizationType:
    weight = OUTTYPES[outtype].weight_type if outtype in OUTTYPES else Q.F16
    return Q.F16 if ENCODINGS[weight].quantized else weight


def _folded_head(ckpt: Checkpoint, names: Tuple[str, ...]):
    """A row source for head_code.0: g * v / |v| per output row, in float64."""

    def source(ck: Checkpoint, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        if len(names) == 1:
            return ck.read(names[0], start, stop)
        g = ck.read(names[0], start, stop).astype(np.float64).reshape(-1, 1)
        v = ck.read(names[1], start, stop).astype(np.float64)
        norm = np.sqrt((v * v).sum(axis=1, keepdims=True))
        return (v * (g / norm)).astype(np.float32)

    return source


def plan_tts(spec: TtsSpec, ckpt: Checkpoint, outtype: str) -> Tuple[List[VisionTensor], List[str]]:
    """Map and check every TTS tensor; returns (plan in GGUF order, notices)."""
    notices: List[str] = []
    weight_t = tts_weight_type(outtype)
    e, ff, kv = spec.n_embd, spec.n_ff, spec.n_embd // spec.n_head * spec.n_head_kv
    plan: List[VisionTensor] = []

    def check(hf: str, expected: Tuple[int, ...]) -> Tuple[int, ...]:
        if hf not in ckpt:
            raise ConvertError(f"{hf} not found in checkpoint {ckpt.dir} (needed for the TTS talker)")
        got = tuple(ckpt.shape(hf))
        if got != expected:
            raise ConvertError(f"tensor {hf}: shape {list(got)} does not match config.json tts_config "
                               f"(expected {list(expected)})")
        return got

    def add(hf: str, tid: str, expected: Tuple[int, ...], qtype=None, layer: Optional[int] = None) -> None:
        got = check(hf, expected)
        if qtype is None:
            qtype = Q.F32 if len(got) == 1 else weight_t
        plan.append(VisionTensor(tid, tensor_name(tid, layer), hf, got, qtype=qtype))

    add(_EMB_TEXT, "TTS_EMB_TEXT", (spec.num_text_tokens, e), weight_t)
    add(_EMB_CODE, "TTS_EMB_CODE", (spec.num_audio_tokens, e), Q.F32)
    head = _head_names(ckpt.names())
    if head is None:
        raise ConvertError(f"the TTS head {_HEAD}* (weight norm g/v or weight) is not in checkpoint {ckpt.dir}")
    if len(head) == 2:
        check(head[0], (spec.num_audio_tokens, 1))
    check(head[-1], (spec.num_audio_tokens, e))
    plan.append(VisionTensor("TTS_HEAD_CODE", tensor_name("TTS_HEAD_CODE"), head[-1], (spec.num_audio_tokens, e),
                             qtype=Q.F32, source=_folded_head(ckpt, head)))
    for hf, tid in _PROJ.items():
        shape = {"TTS_PROJ_1": (e, spec.llm_dim), "TTS_PROJ_2": (e, e)}.get(tid, (e,))
        add(hf, tid, shape)
    shapes = {
        "self_attn.q_proj.weight": (e, e),
        "self_attn.k_proj.weight": (kv, e),
        "self_attn.v_proj.weight": (kv, e),
        "self_attn.o_proj.weight": (e, e),
        "mlp.gate_proj.weight": (ff, e),
        "mlp.up_proj.weight": (ff, e),
        "mlp.down_proj.weight": (e, ff),
    }
    for il in range(spec.n_layer):
        for suffix, tid in _LAYER_TENSORS.items():
            add(f"{_P}model.layers.{il}.{suffix}", tid, shapes.get(suffix, (e,)), layer=il)
    add(_NORM, "TTS_OUTPUT_NORM", (e,))

    used = {t.hf_name for t in plan} | set(head)
    unused: List[str] = []
    for name in ckpt.names():
        if name in used or not name.startswith(_P):
            continue
        if _UNUSED.match(name):
            unused.append(name)
            continue
        lm = _LAYER_RE.match(name)
        if lm and int(lm.group(1)) >= spec.n_layer:
            raise ConvertError(f"checkpoint has {name} but config.json says tts_config.num_hidden_layers = {spec.n_layer}")
        raise ConvertError(f"unexpected TTS tensor {name}: the converter does not know it")
    if unused:
        groups = sorted({".".join(n.split(".")[: 3 if n.startswith(_P + "model.") else 2]) for n in unused})
        notices.append(f"tts: {len(unused)} tensors unused at inference not written ({', '.join(g + '.*' for g in groups)})")
    return plan, notices


def write_tts_metadata(writer: Any, spec: TtsSpec) -> None:
    writer.add_bool(key_name("MINICPM_TTS_HAS_TTS"), True)
    writer.add_uint32(key_name("MINICPM_TTS_EMBEDDING_LENGTH"), spec.n_embd)
    writer.add_uint32(key_name("MINICPM_TTS_BLOCK_COUNT"), spec.n_layer)
    writer.add_uint32(key_name("MINICPM_TTS_FEED_FORWARD_LENGTH"), spec.n_ff)
    writer.add_uint32(key_name("MINICPM_TTS_HEAD_COUNT"), spec.n_head)
    writer.add_uint32(key_name("MINICPM_TTS_HEAD_COUNT_KV"), spec.n_head_kv)
    writer.add_float32(key_name("MINICPM_TTS_RMS_EPS"), spec.eps)
    writer.add_float32(key_name("MINICPM_TTS_ROPE_FREQ_BASE"), spec.rope_theta)
    writer.add_uint32(key_name("MINICPM_TTS_CONTEXT_LENGTH"), spec.n_ctx)
    writer.add_uint32(key_name("MINICPM_TTS_LLM_DIM"), spec.llm_dim)
    writer.add_uint32(key_name("MINICPM_TTS_NUM_TEXT_TOKENS"), spec.num_text_tokens)
    writer.add_uint32(key_name("MINICPM_TTS_NUM_AUDIO_TOKENS"), spec.num_audio_tokens)
    writer.add_uint32(key_name("MINICPM_TTS_AUDIO_BOS_ID"), spec.audio_bos_token_id)
    writer.add_uint32(key_name("MINICPM_TTS_TEXT_EOS_ID"), spec.text_eos_token_id)
    writer.add_bool(key_name("MINICPM_TTS_NORMALIZE_HIDDEN"), spec.normalize_projected_hidden)
    writer.add_string(key_name("MINICPM_TTS_CONDITION_TYPE"), spec.condition_type)
    writer.add_string(key_name("MINICPM_TTS_ATTENTION_TYPE"), spec.attention_type)
    writer.add_uint32(key_name("MINICPM_TTS_WINDOW_SIZE"), spec.window_size)
    writer.add_uint32(key_name("MINICPM_TTS_RECOMPUTED_CHUNKS"), spec.recomputed_chunks)
    writer.add_uint32(key_name("MINICPM_TTS_SLIDING_WINDOW"), spec.sliding_window)
    writer.add_bool(key_name("MINICPM_TTS_INTERLEAVED"), spec.interleaved)
    writer.add_float32(key_name("MINICPM_TTS_TEMP"), SAMPLING_DEFAULTS["temperature"])
    writer.add_float32(key_name("MINICPM_TTS_TOP_P"), SAMPLING_DEFAULTS["top_p"])
    writer.add_int32(key_name("MINICPM_TTS_TOP_K"), SAMPLING_DEFAULTS["top_k"])
    writer.add_float32(key_name("MINICPM_TTS_PENALTY_REPEAT"), SAMPLING_DEFAULTS["repetition_penalty"])
    writer.add_uint32(key_name("MINICPM_TTS_PENALTY_WINDOW"), PENALTY_WINDOW)
