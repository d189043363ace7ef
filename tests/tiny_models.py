"""Tiny random checkpoints for tests: Qwen3 / Qwen2, plain or in the MiniCPM layout.

Every checkpoint has the real MiniCPM-o 4.5 tokenizer (copied from ``tests/assets/``) and a
vocabulary of 151748 rows, so tokenizer and chat-template code runs on real data while the
network stays a few hundred thousand parameters besides the embeddings. Weights are random
with a fixed seed and scaled so activations and logits are well spread: norm weights around
1, non-zero q/k/v biases, logits with a standard deviation of a few units. A layout or
scaling bug therefore shows as a large error instead of hiding in near-zero values.

Loading the reference: plain layouts load with ``AutoModelForCausalLM.from_pretrained``; the
MiniCPM layouts with :func:`load_reference_llm` (the ``llm.`` part only).

Vision: with ``vision=True`` (or a dict of sizes) the MiniCPM layouts carry a real, tiny SigLIP
NaViT tower (``vpm.*``) and resampler (``resampler.*``) instead of the dummy stand-ins: vision
hidden 64, 4 heads, FFN 128, 3 layers stored with ``drop_vision_last_layer: true`` (2 run), the
real 70x70 position table (``vision_config.image_size`` 980, patch 14), 64 queries. The LLM
hidden size must be a multiple of 128 (resampler heads = hidden // 128).
:func:`make_minicpmv45` / :func:`make_minicpmv26` (and ``make_minicpm(model=...)``) build the
usual shapes; :func:`load_reference_vision` returns the PyTorch reference of
``ref_minicpmv_vision.py`` with the weights loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Union

VOCAB_SIZE = 151748
REPO_DIR = Path(__file__).resolve().parents[1]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_SUBDIR = Path("tokenizer") / "minicpm-o-4_5"

# Token ids of the MiniCPM-o 4.5 tokenizer written into configs, as the real ones have them.
_BOS_ID, _EOS_ID = 151643, 151645

# The LLM fields of a MiniCPM config (Qwen2/Qwen3 fields at the top level).
LLM_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "attention_dropout",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "bos_token_id",
    "eos_token_id",
)

PathLike = Union[str, "os.PathLike[str]"]


def load_benchmark(name: str):
    """A script of benchmarks/ (``bench_speech``, ``make_random_audio``, ...) imported as a module,
    with benchmarks/ on sys.path for the scripts' own imports of each other."""
    import importlib.util
    import sys

    bench_dir = REPO_DIR / "benchmarks"
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod



def assets_dir() -> Path:
    """The test assets that are part of the repository: ``tests/assets/`` (see its README.md)."""
    if not (ASSETS_DIR / TOKENIZER_SUBDIR).is_dir():
        raise FileNotFoundError(f"test assets missing: {ASSETS_DIR / TOKENIZER_SUBDIR} (incomplete checkout?)")
    return ASSETS_DIR


def tokenizer_dir() -> Path:
    return assets_dir() / TOKENIZER_SUBDIR


def copy_tokenizer(dst: PathLike) -> None:
    """Copy the real tokenizer files into ``dst`` (contents only, not the read-only mode)."""
    for f in sorted(tokenizer_dir().iterdir()):
        if f.is_file():
            shutil.copyfile(f, Path(dst) / f.name)


def _init_tensor(name: str, shape, gen, torch):
    """Random values for one parameter, by its role."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return 0.75 + 0.5 * torch.rand(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.5 * torch.randn(shape, generator=gen)
    if "embed_tokens" in name or "lm_head" in name:
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = shape[-1] if len(shape) > 1 else 1
    scale = 0.5 if ("o_proj" in name or "down_proj" in name) else 1.0
    return (scale / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)


def _dummy_components(hidden: int, flavour: str, vision: bool = False) -> Dict[str, tuple]:
    """Small stand-ins for the non-LLM parts of a MiniCPM checkpoint (the vision ones unless
    ``vision``, when :func:`_vision_components` supplies the real tensors)."""
    parts: Dict[str, tuple] = {}
    if not vision:
        parts.update(
            {
                "vpm.embeddings.patch_embedding.weight": (16, 3, 14, 14),
                "vpm.embeddings.patch_embedding.bias": (16,),
                "vpm.encoder.layers.0.self_attn.q_proj.weight": (16, 16),
                "vpm.post_layernorm.weight": (16,),
                "resampler.query": (64, hidden),
                "resampler.kv_proj.weight": (hidden, 16),
                "resampler.ln_post.weight": (hidden,),
            }
        )
    if flavour == "o":
        parts.update(
            {
                "apm.layers.0.fc1.weight": (32, 16),
                "apm.layer_norm.weight": (16,),
                "audio_projection_layer.linear1.weight": (hidden, 16),
                "tts.emb_text.weight": (8, 16),
            }
        )
    return parts


# The tiny vision tower of vision=True: the real geometry (patch 14, 70x70 position buckets,
# 64 queries), small widths.
DEFAULT_VISION = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_hidden_layers": 3,  # stored; drop_vision_last_layer removes the last one
    "drop_vision_last_layer": True,
    "image_size": 980,
    "patch_size": 14,
}


def _vision_sizes(vision: Union[bool, Dict[str, object]]) -> Dict[str, object]:
    sizes = dict(DEFAULT_VISION)
    if isinstance(vision, dict):
        unknown = set(vision) - set(DEFAULT_VISION)
        if unknown:
            raise ValueError(f"unknown vision sizes {sorted(unknown)}; known: {sorted(DEFAULT_VISION)}")
        sizes.update(vision)
    return sizes


def _vision_components(hidden: int, sizes: Dict[str, object], query_num: int = 64) -> Dict[str, tuple]:
    """Every vpm.* / resampler.* tensor of a MiniCPM checkpoint, with its shape (PyTorch order)."""
    if hidden % 128:
        raise ValueError(f"the resampler needs the LLM hidden size to be a multiple of 128, got {hidden}")
    dv, ffn = int(sizes["hidden_size"]), int(sizes["intermediate_size"])
    p = int(sizes["patch_size"])
    n_pos = (int(sizes["image_size"]) // p) ** 2
    parts: Dict[str, tuple] = {
        "vpm.embeddings.patch_embedding.weight": (dv, 3, p, p),
        "vpm.embeddings.patch_embedding.bias": (dv,),
        "vpm.embeddings.position_embedding.weight": (n_pos, dv),
    }
    for i in range(int(sizes["num_hidden_layers"])):
        pre = f"vpm.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            parts[pre + norm + ".weight"] = (dv,)
            parts[pre + norm + ".bias"] = (dv,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            parts[pre + f"self_attn.{proj}.weight"] = (dv, dv)
            parts[pre + f"self_attn.{proj}.bias"] = (dv,)
        parts[pre + "mlp.fc1.weight"] = (ffn, dv)
        parts[pre + "mlp.fc1.bias"] = (ffn,)
        parts[pre + "mlp.fc2.weight"] = (dv, ffn)
        parts[pre + "mlp.fc2.bias"] = (dv,)
    parts["vpm.post_layernorm.weight"] = (dv,)
    parts["vpm.post_layernorm.bias"] = (dv,)
    parts.update(
        {
            "resampler.query": (query_num, hidden),
            "resampler.proj": (hidden, hidden),
            "resampler.kv_proj.weight": (hidden, dv),
            "resampler.attn.in_proj_weight": (3 * hidden, hidden),
            "resampler.attn.in_proj_bias": (3 * hidden,),
            "resampler.attn.out_proj.weight": (hidden, hidden),
            "resampler.attn.out_proj.bias": (hidden,),
        }
    )
    for norm in ("ln_q", "ln_kv", "ln_post"):
        parts[f"resampler.{norm}.weight"] = (hidden,)
        parts[f"resampler.{norm}.bias"] = (hidden,)
    return parts


def _init_vision_tensor(name: str, shape, gen, torch):
    """Random values for a vision/resampler parameter: unit-scale activations at every stage."""
    if name.endswith("patch_embedding.weight"):
        fan_in = shape[1] * shape[2] * shape[3]
        return (2.0 / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)
    if name.endswith("position_embedding.weight") or name == "resampler.query":
        return 0.5 * torch.randn(shape, generator=gen)
    if ("norm" in name or ".ln_" in name) and name.endswith(".weight"):
        return 0.75 + 0.5 * torch.rand(shape, generator=gen)
    if name.endswith("bias"):
        return 0.2 * torch.randn(shape, generator=gen)
    fan_in = shape[-1]
    scale = 0.5 if ("out_proj" in name or "fc2" in name) else 1.0
    return (scale / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)


def _save_weights(path: Path, state: Dict[str, object], shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    if shards <= 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    if shards > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {shards} shards")
    weight_map: Dict[str, str] = {}
    total = 0
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        group = {n: state[n] for n in names[i::shards]}
        save_file(group, str(path / fname), metadata={"format": "pt"})
        for n, t in group.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# model name -> (LLM architecture, class, model_type, version)
MINICPM_MODELS = {
    "v4.5": ("qwen3", "MiniCPMV", "minicpmv", 4.5),
    "o4.5": ("qwen3", "MiniCPMO", "minicpmo", 4.5),
    "v2.6": ("qwen2", "MiniCPMV", "minicpmv", 2.6),
    "o2.6": ("qwen2", "MiniCPMO", "minicpmo", 2.6),
}


def _minicpm_config(
    arch: str,
    fields: Dict[str, object],
    hidden: int,
    dtype: str,
    model: Optional[str] = None,
    vision: Optional[Dict[str, object]] = None,
) -> Dict[str, object]:
    """A MiniCPM-V 4.5 (qwen3) or MiniCPM-o 2.6 (qwen2) style config.json (or ``model``'s)."""
    if model is None:
        model = "v4.5" if arch == "qwen3" else "o2.6"
    m_arch, cls, model_type, version = MINICPM_MODELS[model]
    if m_arch != arch:
        raise ValueError(f"{model} has a {m_arch} LLM, not {arch}")
    head = {"architectures": [cls], "model_type": model_type, "version": version}
    cfg: Dict[str, object] = dict(head)
    cfg.update(fields)
    cfg.update(
        {
            "torch_dtype": dtype,
            "use_cache": True,
            "query_num": 64,
            "image_size": 448,
            "patch_size": 14,
            "batch_vision_input": True,
            "drop_vision_last_layer": False,
            "slice_mode": True,
            "slice_config": {"max_slice_nums": 9, "patch_size": 14, "scale_resolution": 448},
            "vision_config": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "image_size": 980,
                "patch_size": 14,
                "model_type": "siglip_vision_model",
            },
        }
    )
    if vision is not None:
        cfg["drop_vision_last_layer"] = bool(vision["drop_vision_last_layer"])
        cfg["use_image_id"] = True
        cfg["vision_config"] = {
            "hidden_size": int(vision["hidden_size"]),
            "intermediate_size": int(vision["intermediate_size"]),
            "num_attention_heads": int(vision["num_attention_heads"]),
            "num_hidden_layers": int(vision["num_hidden_layers"]),
            "image_size": int(vision["image_size"]),
            "patch_size": int(vision["patch_size"]),
            "model_type": "siglip_vision_model",
        }
    if model_type == "minicpmo":
        cfg.update({"init_audio": True, "init_tts": True})
    # The dummy vision stand-ins are not a tower: say so with MiniCPM-o's init_vision switch,
    # which the converter honours (it then skips vpm.* / resampler.* with a notice).
    cfg["init_vision"] = vision is not None
    return cfg


def _make(
    arch: str,
    path: PathLike,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: Optional[int],
    ffn: int,
    tie: bool,
    seed: int,
    minicpm_prefix: bool,
    shards: int,
    dtype: str,
    vision: Union[bool, Dict[str, object]] = False,
    model: Optional[str] = None,
) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

    # The LLM fields as a real checkpoint writes them (rope_theta / rope_scaling style).
    fields: Dict[str, object] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": ffn,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 40960 if arch == "qwen3" else 32768,
        "tie_word_embeddings": tie,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": layers,
        "bos_token_id": _BOS_ID,
        "eos_token_id": _EOS_ID,
    }
    if arch == "qwen3":
        fields["head_dim"] = head_dim if head_dim is not None else hidden // heads
        fields["attention_bias"] = False
    elif head_dim is not None and head_dim != hidden // heads:
        # Qwen2 configs usually omit head_dim (= hidden_size / num_attention_heads).
        fields["head_dim"] = head_dim

    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (Qwen2Config, Qwen2ForCausalLM)
    hf_config = config_cls(**fields)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in model_cls(hf_config).state_dict().items()}
    if tie:
        shapes.pop("lm_head.weight", None)

    gen = torch.Generator().manual_seed(seed)
    prefix = "llm." if minicpm_prefix else ""
    state = {prefix + k: _init_tensor(k, s, gen, torch).to(torch_dtype).contiguous() for k, s in shapes.items()}

    if vision and not minicpm_prefix:
        raise ValueError("vision=True needs minicpm_prefix=True (the MiniCPM layout)")
    if minicpm_prefix:
        if model is None:
            model = "v4.5" if arch == "qwen3" else "o2.6"
        flavour = MINICPM_MODELS[model][2][-1]  # "v" | "o"
        for k, s in _dummy_components(hidden, flavour, vision=bool(vision)).items():
            state[k] = (0.02 * torch.randn(s, generator=gen)).to(torch_dtype)
        sizes = _vision_sizes(vision) if vision else None
        if sizes is not None:
            vgen = torch.Generator().manual_seed(seed + 1000)
            for k, s in _vision_components(hidden, sizes).items():
                state[k] = _init_vision_tensor(k, s, vgen, torch).to(torch_dtype).contiguous()
        cfg = _minicpm_config(arch, fields, hidden, dtype, model, sizes)
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    else:
        hf_config.architectures = [model_cls.__name__]
        hf_config.dtype = dtype
        hf_config.save_pretrained(str(path))

    _save_weights(path, state, shards)
    copy_tokenizer(path)
    return path


def make_qwen3(
    path: PathLike,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    ffn: int = 256,
    tie: bool = False,
    seed: int = 0,
    minicpm_prefix: bool = False,
    shards: int = 1,
    dtype: str = "float32",
    vision: Union[bool, Dict[str, object]] = False,
    model: Optional[str] = None,
) -> Path:
    """A tiny Qwen3ForCausalLM checkpoint; with ``minicpm_prefix`` in the MiniCPM-V 4.5 layout.

    ``vision`` (True or a dict overriding :data:`DEFAULT_VISION`) writes a real random vision
    tower and resampler; ``model`` ("v4.5" or "o4.5") picks the MiniCPM config flavour.
    """
    return _make(
        "qwen3", path, layers, hidden, heads, kv_heads, head_dim, ffn, tie, seed, minicpm_prefix, shards, dtype, vision, model
    )


def make_qwen2(
    path: PathLike,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: Optional[int] = None,
    ffn: int = 256,
    tie: bool = False,
    seed: int = 0,
    minicpm_prefix: bool = False,
    shards: int = 1,
    dtype: str = "float32",
    vision: Union[bool, Dict[str, object]] = False,
    model: Optional[str] = None,
) -> Path:
    """A tiny Qwen2ForCausalLM checkpoint (q/k/v biases); with ``minicpm_prefix`` in the MiniCPM-o 2.6 layout.

    ``vision`` (True or a dict overriding :data:`DEFAULT_VISION`) writes a real random vision
    tower and resampler; ``model`` ("o2.6" or "v2.6") picks the MiniCPM config flavour.
    """
    return _make(
        "qwen2", path, layers, hidden, heads, kv_heads, head_dim, ffn, tie, seed, minicpm_prefix, shards, dtype, vision, model
    )


def make_minicpm(path: PathLike, model: str = "v4.5", **kw) -> Path:
    """A tiny MiniCPM checkpoint with a real vision tower: ``model`` one of :data:`MINICPM_MODELS`.

    Keyword arguments go to :func:`make_qwen3` / :func:`make_qwen2` (``minicpm_prefix`` and
    ``vision`` are set here; pass ``vision={...}`` to change the vision sizes).
    """
    if model not in MINICPM_MODELS:
        raise ValueError(f"unknown MiniCPM model {model!r}; choose one of {sorted(MINICPM_MODELS)}")
    kw.setdefault("vision", True)
    make = make_qwen3 if MINICPM_MODELS[model][0] == "qwen3" else make_qwen2
    return make(path, minicpm_prefix=True, model=model, **kw)


def make_minicpmv45(path: PathLike, **kw) -> Path:
    """MiniCPM-V 4.5 shape: Qwen3 LLM (hidden 256, so 2 resampler heads), bfloat16 weights as
    the real checkpoints, vision hidden 64 / 4 heads / FFN 128, 3 layers stored with
    ``drop_vision_last_layer: true`` (2 run)."""
    for k, v in {"hidden": 256, "heads": 4, "kv_heads": 2, "head_dim": 64, "ffn": 512, "dtype": "bfloat16"}.items():
        kw.setdefault(k, v)
    return make_minicpm(path, "v4.5", **kw)


def make_minicpmv26(path: PathLike, **kw) -> Path:
    """MiniCPM-V 2.6 shape: Qwen2 LLM with q/k/v biases (hidden 128, so 1 resampler head),
    float32 weights, vision hidden 96 / 4 heads / FFN 128, 2 layers stored with
    ``drop_vision_last_layer: false`` (both run)."""
    kw.setdefault(
        "vision",
        {"hidden_size": 96, "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2, "drop_vision_last_layer": False},
    )
    return make_minicpm(path, "v2.6", **kw)


def load_state_dict(path: PathLike) -> Dict[str, object]:
    """Every tensor of a checkpoint directory (single or sharded safetensors), as torch tensors."""
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: Dict[str, object] = {}
    for f in files:
        state.update(load_file(str(path / f)))
    return state


def is_minicpm_layout(path: PathLike) -> bool:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return cfg.get("model_type") in ("minicpmv", "minicpmo")


def load_reference_llm(path: PathLike):
    """The Hugging Face Qwen3/Qwen2 model (float32, eval mode) for the LLM of a tiny checkpoint.

    Plain layouts load with ``AutoModelForCausalLM.from_pretrained``. MiniCPM layouts build the
    Qwen model from the top-level LLM fields of config.json and load the ``llm.`` tensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    if not is_minicpm_layout(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    cfg = json.loads((path / "config.json").read_text())
    llm = {k[len("llm.") :]: v.float() for k, v in load_state_dict(path).items() if k.startswith("llm.")}
    qwen3 = any(k.endswith("self_attn.q_norm.weight") for k in llm)
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if qwen3 else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**{k: cfg[k] for k in LLM_CONFIG_FIELDS if k in cfg})
    model = model_cls(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(llm, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or not set(missing) <= allowed_missing:
        raise RuntimeError(f"reference LLM: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def load_reference_vision(path: PathLike):
    """The PyTorch reference vision tower + resampler (``ref_minicpmv_vision.VisionParts``,
    float32, eval mode) of a MiniCPM checkpoint, with its ``vpm.`` / ``resampler.`` weights."""
    import ref_minicpmv_vision

    return ref_minicpmv_vision.load_from_dir(path)


# ---------------------------------------------------------------------------------------------
# MiniCPM-o with a real (tiny, random) audio encoder
# ---------------------------------------------------------------------------------------------

# The tiny Whisper encoder of make_minicpmo45 / make_minicpmo26: real geometry (80 mel bins,
# 1500 positions = 30 s), small widths. The FFN must be 4 * d_model: the official projector's
# input size is encoder_ffn_dim // 4.
DEFAULT_AUDIO = {
    "d_model": 64,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "encoder_layers": 2,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
}


def _audio_sizes(audio: Optional[Dict[str, object]]) -> Dict[str, int]:
    sizes = dict(DEFAULT_AUDIO)
    if audio:
        unknown = set(audio) - set(DEFAULT_AUDIO)
        if unknown:
            raise ValueError(f"unknown audio sizes {sorted(unknown)}; known: {sorted(DEFAULT_AUDIO)}")
        sizes.update(audio)
    sizes = {k: int(v) for k, v in sizes.items()}
    if sizes["encoder_ffn_dim"] != 4 * sizes["d_model"]:
        raise ValueError("encoder_ffn_dim must be 4 * d_model (the projector input is encoder_ffn_dim // 4)")
    return sizes


def _audio_components(hidden: int, sizes: Dict[str, int]) -> Dict[str, tuple]:
    """Every apm.* / audio_projection_layer.* tensor, with the names and shapes of transformers'
    WhisperEncoder (built on the meta device) under ``apm.``, plus the projector."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(**sizes)
    with torch.device("meta"):
        shapes = {"apm." + k: tuple(v.shape) for k, v in WhisperEncoder(cfg).state_dict().items()}
    d = sizes["d_model"]
    shapes.update(
        {
            "audio_projection_layer.linear1.weight": (hidden, sizes["encoder_ffn_dim"] // 4),
            "audio_projection_layer.linear1.bias": (hidden,),
            "audio_projection_layer.linear2.weight": (hidden, hidden),
            "audio_projection_layer.linear2.bias": (hidden,),
        }
    )
    assert shapes["apm.conv1.weight"] == (d, sizes["num_mel_bins"], 3)
    return shapes


def _init_audio_tensor(name: str, shape, gen, torch):
    """Random values for an audio parameter: O(1) activations through convs, layers, projector.

    Log-mel inputs are about [-1, 1.5]; q/k are scaled up so that attention is far from uniform
    (masks and cache offsets then change the result visibly)."""
    if name.endswith("embed_positions.weight"):
        return 0.5 * torch.randn(shape, generator=gen)
    if "layer_norm" in name and name.endswith(".weight"):
        return 0.75 + 0.5 * torch.rand(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.2 * torch.randn(shape, generator=gen)
    if name.endswith("conv1.weight") or name.endswith("conv2.weight"):
        fan_in = shape[1] * shape[2]
        return (1.5 / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)
    fan_in = shape[-1]
    if "q_proj" in name or "k_proj" in name:
        scale = 1.5
    elif "out_proj" in name or "fc2" in name:
        scale = 0.5
    else:
        scale = 1.0
    return (scale / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)


def _audio_config_json(sizes: Dict[str, int], dtype: str) -> Dict[str, object]:
    """config.json ``audio_config``: the Whisper fields as released MiniCPM-o configs carry them
    (decoder fields included, ``num_hidden_layers`` too: llama.cpp-omni's convert_apm.py reads it)."""
    return {
        "model_type": "whisper",
        "architectures": ["MiniCPMWhisperEncoder"],
        "d_model": sizes["d_model"],
        "encoder_attention_heads": sizes["encoder_attention_heads"],
        "encoder_ffn_dim": sizes["encoder_ffn_dim"],
        "encoder_layers": sizes["encoder_layers"],
        "num_hidden_layers": sizes["encoder_layers"],
        "decoder_attention_heads": sizes["encoder_attention_heads"],
        "decoder_ffn_dim": sizes["encoder_ffn_dim"],
        "decoder_layers": sizes["encoder_layers"],
        "num_mel_bins": sizes["num_mel_bins"],
        "max_source_positions": sizes["max_source_positions"],
        "max_target_positions": 448,
        "vocab_size": 51865,
        "activation_function": "gelu",
        "scale_embedding": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "torch_dtype": dtype,
    }


def _add_audio(path: Path, audio: Optional[Dict[str, object]], extra_config: Dict[str, object], seed: int) -> Path:
    """Replace the dummy apm.* / audio_projection_layer.* stand-ins of a MiniCPM-o checkpoint by
    a real random encoder and projector, and write the audio fields into config.json."""
    import torch

    cfg = json.loads((path / "config.json").read_text())
    dtype = str(cfg["torch_dtype"])
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    sizes = _audio_sizes(audio)

    state = load_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(("apm.", "audio_projection_layer."))}
    gen = torch.Generator().manual_seed(seed + 2000)
    for k, s in _audio_components(int(cfg["hidden_size"]), sizes).items():
        state[k] = _init_audio_tensor(k, s, gen, torch).to(torch_dtype).contiguous()

    index = path / "model.safetensors.index.json"
    shards = len(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else 1
    for f in list(path.glob("model*.safetensors")) + ([index] if index.is_file() else []):
        f.unlink()
    _save_weights(path, state, shards)

    cfg["audio_config"] = _audio_config_json(sizes, dtype)
    cfg.update({"init_audio": True, "audio_chunk_length": 1.0})
    cfg.update(extra_config)
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def make_minicpmo45(
    path: PathLike, audio: Optional[Dict[str, object]] = None, tts: Union[bool, Dict[str, object], None] = None, **kw
) -> Path:
    """MiniCPM-o 4.5 shape: the Qwen3 LLM and vision tower of :func:`make_minicpmv45` (hidden
    256, 4 heads, 2 KV heads, head_dim 64, FFN 512; bfloat16 unless ``dtype="float32"``), a real
    random Whisper encoder ``apm.*`` (:data:`DEFAULT_AUDIO`: d_model 64, 4 heads, FFN 256, 2
    layers, 80 mel bins, 1500 positions), ``audio_projection_layer.linear1/linear2``
    ([256, 64] / [256, 256] with biases), ``audio_pool_step`` 5, ``audio_chunk_length`` 1.0, the
    dummy ``tts.*`` stand-in replaced by a real random TTS talker (:data:`DEFAULT_TTS`; ``tts``
    overrides its sizes, ``tts=False`` keeps the stand-in). ``audio`` overrides encoder sizes."""
    for k, v in {"hidden": 256, "heads": 4, "kv_heads": 2, "head_dim": 64, "ffn": 512, "dtype": "bfloat16"}.items():
        kw.setdefault(k, v)
    seed = int(kw.get("seed", 0))
    path = make_minicpm(path, "o4.5", **kw)
    extra = {
        "audio_pool_step": 5,
        "stream_input": False,
        "listen_speak_type": "asr",
        "vision_batch_size": 16,
        "use_image_id": True,
    }
    path = _add_audio(Path(path), audio, extra, seed)
    return path if tts is False else _add_tts(path, None if tts is True else tts, seed)


def make_minicpmo26(path: PathLike, audio: Optional[Dict[str, object]] = None, **kw) -> Path:
    """MiniCPM-o 2.6 shape: the Qwen2 LLM (q/k/v biases, hidden 128) and vision tower of
    :func:`make_minicpmv26` (float32 unless ``dtype`` says otherwise), the audio encoder of
    :func:`make_minicpmo45` with ``audio_pool_step`` 2 (25 tokens/s) and ``chunk_input`` true
    (o2.6's get_omni_embedding then fills all audio groups from the concatenated embeddings)."""
    kw.setdefault(
        "vision",
        {"hidden_size": 96, "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2, "drop_vision_last_layer": False},
    )
    seed = int(kw.get("seed", 0))
    path = make_minicpm(path, "o2.6", **kw)
    extra = {"audio_pool_step": 2, "stream_input": False, "chunk_input": True, "use_image_id": True}
    return _add_audio(Path(path), audio, extra, seed)


# ---------------------------------------------------------------------------------------------

# The tiny TTS talker of make_minicpmo45 (MiniCPMTTS): the real structure (20 -> 2 Llama layers,
# emb_text over the LLM's 152064-row id space, 6562 audio codes with EOS 6561, the real special
# rows, weight-normed head), small widths. llm_dim is the LLM hidden size.
DEFAULT_TTS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 4096,
    "num_text_tokens": 152064,
    "num_audio_tokens": 6562,
    "audio_bos_token_id": 151687,
    "text_eos_token_id": 151692,
    "normalize_projected_hidden": True,
    "attention_type": "full_attention",
}


def _tts_sizes(tts: Optional[Dict[str, object]]) -> Dict[str, object]:
    sizes = dict(DEFAULT_TTS)
    if tts:
        unknown = set(tts) - set(DEFAULT_TTS)
        if unknown:
            raise ValueError(f"unknown TTS sizes {sorted(unknown)}; known: {sorted(DEFAULT_TTS)}")
        sizes.update(tts)
    return sizes


def tts_config_json(sizes: Dict[str, object], llm_dim: int) -> Dict[str, object]:
    """config.json ``tts_config`` as the released o4.5 config writes it (the fields the talker reads)."""
    cfg: Dict[str, object] = {
        "model_type": "minicpmtts",
        "llm_dim": llm_dim,
        "llm_intermediate_size": 768,
        "projector_type": "mlp",
        "hidden_act": "silu",
        "num_vq": 1,
        "num_mel_bins": 100,
        "use_llm_hidden_state": False,
        "use_text": True,
        "streaming": False,
        "condition_type": "hidden_text_merge",
        "backbone_model": "llama",
        "attn_implementation": "sdpa",
        "interleaved": False,
        "recomputed_chunks": 1,
        "window_size": 2,
        "streaming_sliding_window_audio_window_size": 300,
    }
    cfg.update(sizes)
    return cfg


def _tts_components(sizes: Dict[str, object], llm_dim: int) -> Dict[str, tuple]:
    """Every tts.* tensor of the official MiniCPMTTS with its shape: the LlamaModel's names from
    transformers (built on the meta device) under ``tts.model.``, the parametrized weight norm of
    head_code.0 (original0 = g [N, 1], original1 = v [N, H]) and the unused embed_tokens /
    projector_spk."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    h, n_audio = int(sizes["hidden_size"]), int(sizes["num_audio_tokens"])
    cfg = LlamaConfig(
        hidden_size=h,
        intermediate_size=int(sizes["intermediate_size"]),
        num_attention_heads=int(sizes["num_attention_heads"]),
        num_key_value_heads=int(sizes["num_key_value_heads"]),
        num_hidden_layers=int(sizes["num_hidden_layers"]),
        max_position_embeddings=int(sizes["max_position_embeddings"]),
        vocab_size=256,  # embed_tokens: unused at inference (32000 rows in the release)
    )
    with torch.device("meta"):
        shapes = {"tts.model." + k: tuple(v.shape) for k, v in LlamaModel(cfg).state_dict().items()}
    shapes["tts.emb_text.weight"] = (int(sizes["num_text_tokens"]), h)
    for proj in ("projector_spk", "projector_semantic"):
        shapes[f"tts.{proj}.linear1.weight"] = (h, llm_dim)
        shapes[f"tts.{proj}.linear1.bias"] = (h,)
        shapes[f"tts.{proj}.linear2.weight"] = (h, h)
        shapes[f"tts.{proj}.linear2.bias"] = (h,)
    shapes["tts.emb_code.0.weight"] = (n_audio, h)
    shapes["tts.head_code.0.parametrizations.weight.original0"] = (n_audio, 1)
    shapes["tts.head_code.0.parametrizations.weight.original1"] = (n_audio, h)
    return shapes


def _init_tts_tensor(name: str, shape, gen, torch):
    """Random values for a talker parameter: unit-scale states, logits spread over a few units
    (so that sampling has several candidates), a projection comparable to the text rows."""
    if name.endswith("norm.weight"):
        return 0.75 + 0.5 * torch.rand(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.2 * torch.randn(shape, generator=gen)
    if "emb_text" in name or "emb_code" in name or "embed_tokens" in name:
        return 0.5 * torch.randn(shape, generator=gen)
    if name.endswith("original0"):  # g: the row norms of the folded head
        g = 1.0 + 0.5 * torch.rand(shape, generator=gen)
        g[-1] = 4.0  # the EOS row: a tiny talker that ends its chunks now and then
        return g
    fan_in = shape[-1]
    scale = 1.5 if ("q_proj" in name or "k_proj" in name) else 0.5 if ("o_proj" in name or "down_proj" in name) else 1.0
    return (scale / math.sqrt(fan_in)) * torch.randn(shape, generator=gen)


def _add_tts(path: Path, tts: Optional[Dict[str, object]], seed: int) -> Path:
    """Replace the dummy tts.* stand-in of a MiniCPM-o 4.5 checkpoint by a real random talker and
    write ``tts_config`` into config.json."""
    import torch

    cfg = json.loads((path / "config.json").read_text())
    dtype = str(cfg["torch_dtype"])
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    sizes = _tts_sizes(tts)
    llm_dim = int(cfg["hidden_size"])

    state = load_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith("tts.")}
    gen = torch.Generator().manual_seed(seed + 3000)
    for k, s in _tts_components(sizes, llm_dim).items():
        state[k] = _init_tts_tensor(k, s, gen, torch).to(torch_dtype).contiguous()

    index = path / "model.safetensors.index.json"
    shards = len(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else 1
    for f in list(path.glob("model*.safetensors")) + ([index] if index.is_file() else []):
        f.unlink()
    _save_weights(path, state, shards)

    cfg["tts_config"] = tts_config_json(sizes, llm_dim)
    cfg["init_tts"] = True
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path

