"""The language model part: which checkpoints are supported, their hyperparameters, how each
Hugging Face tensor maps to a llama.cpp tensor, and the llama.cpp metadata.

Supported now: Qwen3 (MiniCPM-V 4.5, MiniCPM-o 4.5, plain Qwen3ForCausalLM) and Qwen2
(MiniCPM-V 2.6, MiniCPM-o 2.6, plain Qwen2ForCausalLM). Both use NEOX RoPE, so q/k keep the
Hugging Face layout (no permutation, unlike llama.cpp's llama/minicpm converters).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .checkpoint import Checkpoint, ConvertError
from .names import key_name, tensor_name

__all__ = ["LlmSpec", "PlannedTensor", "detect", "plan_tensors", "write_metadata", "SUPPORTED", "TENSOR_IDS", "KEY_IDS"]

SUPPORTED = (
    "MiniCPM-V 4.5 / MiniCPM-o 4.5 (MiniCPMV/MiniCPMO with a Qwen3 LLM)",
    "MiniCPM-V 2.6 / MiniCPM-o 2.6 (MiniCPMV/MiniCPMO with a Qwen2 LLM)",
    "Qwen3ForCausalLM",
    "Qwen2ForCausalLM",
)

_PLAIN_ARCHS = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2"}
# For configs without "architectures".
_PLAIN_BY_MODEL_TYPE = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_MINICPM_ARCHS = {"MiniCPMV": "v", "MiniCPMO": "o"}
_MINICPM_TYPES = {"minicpmv": "v", "minicpmo": "o"}
# The LLM a MiniCPM version carries, for when no weights can be inspected (--vocab-only).
_MINICPM_LLM_BY_VERSION = {"4.5": "qwen3", "2.6": "qwen2"}

# Hugging Face name (after the LLM prefix) -> name-table ID.
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "LLM_TOKEN_EMBD",
    "model.norm.weight": "LLM_OUTPUT_NORM",
    "lm_head.weight": "LLM_OUTPUT",
}
# Per layer, under "model.layers.N.", in the order the GGUF lists them.
_LAYER_TENSORS = {
    "input_layernorm.weight": "LLM_ATTN_NORM",
    "self_attn.q_proj.weight": "LLM_ATTN_Q",
    "self_attn.q_proj.bias": "LLM_ATTN_Q_BIAS",
    "self_attn.k_proj.weight": "LLM_ATTN_K",
    "self_attn.k_proj.bias": "LLM_ATTN_K_BIAS",
    "self_attn.v_proj.weight": "LLM_ATTN_V",
    "self_attn.v_proj.bias": "LLM_ATTN_V_BIAS",
    "self_attn.q_norm.weight": "LLM_ATTN_Q_NORM",
    "self_attn.k_norm.weight": "LLM_ATTN_K_NORM",
    "self_attn.o_proj.weight": "LLM_ATTN_OUT",
    "post_attention_layernorm.weight": "LLM_FFN_NORM",
    "mlp.gate_proj.weight": "LLM_FFN_GATE",
    "mlp.up_proj.weight": "LLM_FFN_UP",
    "mlp.down_proj.weight": "LLM_FFN_DOWN",
}
_QWEN2_ONLY = {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}
_QWEN3_ONLY = {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}
_ARCH_LAYER_TENSORS = {
    "qwen3": [k for k in _LAYER_TENSORS if k not in _QWEN2_ONLY],
    "qwen2": [k for k in _LAYER_TENSORS if k not in _QWEN3_ONLY],
}
# Buffers some checkpoints carry that hold nothing to convert.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

# Every ID this module asks the name table for (checked by the tests).
TENSOR_IDS = tuple(_GLOBAL_TENSORS.values()) + tuple(_LAYER_TENSORS.values())
KEY_IDS = (
    "GENERAL_NAME",
    "GENERAL_FILE_TYPE",
    "GENERAL_QUANT_VERSION",
    "LLM_CONTEXT_LENGTH",
    "LLM_EMBEDDING_LENGTH",
    "LLM_BLOCK_COUNT",
    "LLM_FEED_FORWARD_LENGTH",
    "LLM_HEAD_COUNT",
    "LLM_HEAD_COUNT_KV",
    "LLM_KEY_LENGTH",
    "LLM_VALUE_LENGTH",
    "LLM_RMS_EPS",
    "LLM_ROPE_FREQ_BASE",
    "LLM_ROPE_DIMENSION_COUNT",
    "LLM_VOCAB_SIZE",
    "MINICPM_MODEL_TYPE",
)

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass
class Hparams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_theta: float
    n_ctx: int
    tie_embeddings: bool


@dataclass
class LlmSpec:
    arch: str  # general.architecture: "qwen3" or "qwen2"
    prefix: str  # "llm." for MiniCPM checkpoints, "" for plain ones
    model_type: str  # minicpm.model_type
    source: str  # what the checkpoint is, for messages
    hparams: Hparams
    notices: List[str] = field(default_factory=list)


@dataclass
class PlannedTensor:
    tensor_id: str
    gguf_name: str
    hf_name: str
    shape: Tuple[int, ...]  # numpy order, as in the checkpoint


def _supported_text() -> str:
    return "supported: " + "; ".join(SUPPORTED)


def _version_text(version: Any) -> Optional[str]:
    if version is None or isinstance(version, bool):
        return None
    try:
        return f"{float(version):.1f}"
    except (TypeError, ValueError):
        return None


def _get_int(config: Dict[str, Any], key: str, default: Optional[int] = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise ConvertError(f"config.json lacks {key!r}, needed for the LLM")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ConvertError(f"config.json: {key} = {value!r} is not a positive integer")
    return int(value)


def _get_float(config: Dict[str, Any], key: str, default: Optional[float] = None) -> float:
    value = config.get(key, default)
    if value is None:
        raise ConvertError(f"config.json lacks {key!r}, needed for the LLM")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConvertError(f"config.json: {key} = {value!r} is not a positive number")
    return float(value)


def _rope_theta(config: Dict[str, Any], notices: List[str]) -> float:
    """rope_theta from either config layout (rope_theta/rope_scaling or rope_parameters)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConvertError("config.json: rope_parameters / rope_scaling must be objects")
    for source, block in (("rope_scaling", scaling), ("rope_parameters", params)):
        kind = block.get("rope_type", block.get("type"))
        if kind not in (None, "default"):
            raise ConvertError(
                f"config.json: {source} type {kind!r} is not supported (only plain RoPE is implemented)"
            )
    theta = config.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        notices.append("config.json has no rope_theta; using the transformers default 10000")
        theta = 10000.0
    return _get_float({"rope_theta": theta}, "rope_theta")


def _read_hparams(config: Dict[str, Any], arch: str, notices: List[str]) -> Hparams:
    n_embd = _get_int(config, "hidden_size")
    n_head = _get_int(config, "num_attention_heads")
    head_dim = config.get("head_dim")
    if head_dim is None:
        if n_embd % n_head != 0:
            raise ConvertError(f"config.json: hidden_size {n_embd} is not divisible by num_attention_heads {n_head}")
        head_dim = n_embd // n_head
    head_dim = _get_int({"head_dim": head_dim}, "head_dim")
    n_head_kv = _get_int(config, "num_key_value_heads", n_head)
    if n_head % n_head_kv != 0:
        raise ConvertError(
            f"config.json: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
        )
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ConvertError(f"config.json: hidden_act {act!r} is not supported for {arch} (expected 'silu')")
    if config.get("use_sliding_window"):
        raise ConvertError("config.json: use_sliding_window is true; sliding-window attention is not supported")
    if arch == "qwen3" and config.get("attention_bias"):
        raise ConvertError("config.json: attention_bias is true; llama.cpp's qwen3 has no q/k/v biases")
    ctx = config.get("max_position_embeddings")
    if ctx is None:
        notices.append("config.json has no max_position_embeddings; writing context length 32768")
        ctx = 32768
    return Hparams(
        n_vocab=_get_int(config, "vocab_size"),
        n_embd=n_embd,
        n_layer=_get_int(config, "num_hidden_layers"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=_get_int(config, "intermediate_size"),
        rms_eps=_get_float(config, "rms_norm_eps"),
        rope_theta=_rope_theta(config, notices),
        n_ctx=_get_int({"max_position_embeddings": ctx}, "max_position_embeddings"),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _arch_from_weights(names: Sequence[str], prefix: str) -> Optional[str]:
    """qwen3 if q_norm weights exist, qwen2 if q_proj biases exist, None if neither."""
    layer = f"{prefix}model.layers."
    has_qk_norm = any(n.startswith(layer) and n.endswith(".self_attn.q_norm.weight") for n in names)
    has_bias = any(n.startswith(layer) and n.endswith(".self_attn.q_proj.bias") for n in names)
    if has_qk_norm and has_bias:
        raise ConvertError("the LLM has both q_norm weights and q_proj biases: neither Qwen3 nor Qwen2; " + _supported_text())
    if has_qk_norm:
        return "qwen3"
    if has_bias:
        return "qwen2"
    return None


def detect(config: Dict[str, Any], names: Optional[Sequence[str]]) -> LlmSpec:
    """Decide what the checkpoint is from config.json and (when given) its tensor names."""
    archs = config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    model_type = str(config.get("model_type", ""))
    arch_name = str(archs[0]) if archs else _PLAIN_BY_MODEL_TYPE.get(model_type, model_type or "<none>")
    notices: List[str] = []

    flavour = _MINICPM_ARCHS.get(arch_name) or _MINICPM_TYPES.get(model_type)
    if flavour is not None:
        prefix = "llm."
        version = _version_text(config.get("version"))
        kind = f"minicpm-{flavour}-{version}" if version else model_type or arch_name
        if names is not None:
            arch = _arch_from_weights(names, prefix)
            if arch is None:
                raise ConvertError(
                    f"{arch_name} checkpoint (version {config.get('version', 'unknown')}): its LLM (llm.*) is neither "
                    f"Qwen3 (q_norm) nor Qwen2 (q/k/v biases), e.g. MiniCPM-V 4.0's Llama-type LLM, which is not "
                    f"supported yet; " + _supported_text()
                )
        else:
            arch = _MINICPM_LLM_BY_VERSION.get(version or "")
            if arch is None:
                raise ConvertError(
                    f"{arch_name} checkpoint (version {config.get('version', 'unknown')}): cannot tell its LLM type "
                    "without weights; " + _supported_text()
                )
        source = f"{arch_name} {version or ''}".strip() + f" with a {arch} LLM"
    elif arch_name in _PLAIN_ARCHS:
        prefix = ""
        arch = _PLAIN_ARCHS[arch_name]
        kind = arch
        if names is not None:
            found = _arch_from_weights(names, prefix)
            if found is not None and found != arch:
                raise ConvertError(f"config.json says {arch_name} but the weights look like {found} (q_norm / q_proj bias)")
        source = arch_name
    else:
        raise ConvertError(f"unsupported architecture {arch_name!r} (model_type {model_type!r}); " + _supported_text())

    hparams = _read_hparams(config, arch, notices)
    return LlmSpec(arch=arch, prefix=prefix, model_type=kind, source=source, hparams=hparams, notices=notices)


def _expected_shapes(hp: Hparams) -> Dict[str, Tuple[int, ...]]:
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    return {
        "model.embed_tokens.weight": (hp.n_vocab, hp.n_embd),
        "model.norm.weight": (hp.n_embd,),
        "lm_head.weight": (hp.n_vocab, hp.n_embd),
        "input_layernorm.weight": (hp.n_embd,),
        "self_attn.q_proj.weight": (q, hp.n_embd),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, hp.n_embd),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, hp.n_embd),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (hp.head_dim,),
        "self_attn.k_norm.weight": (hp.head_dim,),
        "self_attn.o_proj.weight": (hp.n_embd, q),
        "post_attention_layernorm.weight": (hp.n_embd,),
        "mlp.gate_proj.weight": (hp.n_ff, hp.n_embd),
        "mlp.up_proj.weight": (hp.n_ff, hp.n_embd),
        "mlp.down_proj.weight": (hp.n_embd, hp.n_ff),
    }


def _is_llm_name(name: str, prefix: str) -> bool:
    if prefix:
        return name.startswith(prefix)
    return name.startswith("model.") or name.startswith("lm_head.")


def _same_tensor(ckpt: Checkpoint, a: str, b: str, chunk_rows: int = 4096) -> bool:
    if ckpt.shape(a) != ckpt.shape(b):
        return False
    n = ckpt.shape(a)[0]
    for start in range(0, n, chunk_rows):
        if not (ckpt.read(a, start, start + chunk_rows) == ckpt.read(b, start, start + chunk_rows)).all():
            return False
    return True


def plan_tensors(spec: LlmSpec, ckpt: Checkpoint) -> Tuple[List[PlannedTensor], List[str]]:
    """Map and check every LLM tensor; returns (plan in GGUF order, notices).

    Raises ConvertError for a missing tensor, a shape that disagrees with config.json, or an
    LLM tensor the converter does not know. Tensors of other components are skipped and
    summarised in one notice.
    """
    hp, prefix = spec.hparams, spec.prefix
    shapes = _expected_shapes(hp)
    notices: List[str] = []

    wanted: List[Tuple[str, str, str]] = [("model.embed_tokens.weight", "LLM_TOKEN_EMBD", tensor_name("LLM_TOKEN_EMBD"))]
    for il in range(hp.n_layer):
        for suffix in _ARCH_LAYER_TENSORS[spec.arch]:
            tid = _LAYER_TENSORS[suffix]
            wanted.append((f"model.layers.{il}.{suffix}", tid, tensor_name(tid, il)))
    wanted.append(("model.norm.weight", "LLM_OUTPUT_NORM", tensor_name("LLM_OUTPUT_NORM")))

    lm_head = prefix + "lm_head.weight"
    embed = prefix + "model.embed_tokens.weight"
    if lm_head in ckpt and hp.tie_embeddings and embed in ckpt and _same_tensor(ckpt, lm_head, embed):
        notices.append(
            f"lm_head equals embed_tokens (tie_word_embeddings): {tensor_name('LLM_OUTPUT')} omitted, "
            f"{tensor_name('LLM_TOKEN_EMBD')} is used"
        )
    elif lm_head in ckpt or not hp.tie_embeddings:
        if hp.tie_embeddings:
            notices.append(
                f"tie_word_embeddings is true but lm_head differs from embed_tokens: written as "
                f"{tensor_name('LLM_OUTPUT')} (transformers uses lm_head in that case too)"
            )
        wanted.append(("lm_head.weight", "LLM_OUTPUT", tensor_name("LLM_OUTPUT")))

    missing = [prefix + hf for hf, _, _ in wanted if prefix + hf not in ckpt]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"{missing[0]} not found in checkpoint {ckpt.dir}{more}")

    plan: List[PlannedTensor] = []
    for hf, tid, gguf_name in wanted:
        full = prefix + hf
        m = _LAYER_RE.match(hf)
        expected = shapes[m.group(2) if m else hf]
        got = tuple(ckpt.shape(full))
        if got != expected:
            raise ConvertError(
                f"tensor {full}: shape {list(got)} does not match config.json (expected {list(expected)})"
            )
        plan.append(PlannedTensor(tid, gguf_name, full, got))

    # Everything else: unknown LLM tensors are errors, other components are skipped.
    used = {p.hf_name for p in plan}
    skipped: Counter = Counter()
    for name in ckpt.names():
        if name in used:
            continue
        if not _is_llm_name(name, prefix):
            skipped[name.split(".", 1)[0]] += 1
            continue
        rel = name[len(prefix):]
        if name.endswith(_IGNORED_SUFFIXES) or rel == "lm_head.weight":
            continue
        m = _LAYER_RE.match(rel)
        if m and int(m.group(1)) >= hp.n_layer:
            raise ConvertError(
                f"checkpoint has {name} but config.json says num_hidden_layers = {hp.n_layer}"
            )
        if m and m.group(2) in _LAYER_TENSORS:
            other = "qwen2" if spec.arch == "qwen3" else "qwen3"
            raise ConvertError(f"tensor {name} belongs to a {other} LLM, not {spec.arch}; the checkpoint is inconsistent")
        raise ConvertError(f"unexpected LLM tensor {name}: the {spec.arch} converter does not know it")
    if skipped:
        total = sum(skipped.values())
        parts = ", ".join(f"{k}.* ({v})" for k, v in sorted(skipped.items()))
        notices.append(f"skipped {total} tensors of other components (LLM only for now): {parts}")
    return plan, notices


def write_metadata(writer: Any, spec: LlmSpec, name: str) -> None:
    """general.name and the llama.cpp hyperparameter keys of ``spec.arch``."""
    hp, arch = spec.hparams, spec.arch
    writer.add_string(key_name("GENERAL_NAME"), name)
    writer.add_uint32(key_name("LLM_CONTEXT_LENGTH", arch), hp.n_ctx)
    writer.add_uint32(key_name("LLM_EMBEDDING_LENGTH", arch), hp.n_embd)
    writer.add_uint32(key_name("LLM_BLOCK_COUNT", arch), hp.n_layer)
    writer.add_uint32(key_name("LLM_FEED_FORWARD_LENGTH", arch), hp.n_ff)
    writer.add_uint32(key_name("LLM_HEAD_COUNT", arch), hp.n_head)
    writer.add_uint32(key_name("LLM_HEAD_COUNT_KV", arch), hp.n_head_kv)
    writer.add_uint32(key_name("LLM_KEY_LENGTH", arch), hp.head_dim)
    writer.add_uint32(key_name("LLM_VALUE_LENGTH", arch), hp.head_dim)
    writer.add_float32(key_name("LLM_RMS_EPS", arch), hp.rms_eps)
    writer.add_float32(key_name("LLM_ROPE_FREQ_BASE", arch), hp.rope_theta)
    writer.add_uint32(key_name("LLM_ROPE_DIMENSION_COUNT", arch), hp.head_dim)
    writer.add_uint32(key_name("LLM_VOCAB_SIZE", arch), hp.n_vocab)
    writer.add_string(key_name("MINICPM_MODEL_TYPE"), spec.model_type)
