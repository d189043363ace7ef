"""Writer of llama.cpp-omni's audio-encoder GGUF (``minicpmo-apm.gguf`` /
``MiniCPM-o-4_5-audio-F16.gguf``) from a MiniCPM-o checkpoint directory, so that our loader can
be tested on that layout with tiny random weights.

It reproduces the two steps of llama.cpp-omni's conversion (``tools/omni/convert/``):
``surgery.py`` takes every tensor whose name starts with ``apm`` and then every
``audio_projection_layer*`` tensor, in the sorted order of ``safe_open(...).keys()``, as float32;
``convert_apm.py`` renames and writes them. The layout, checked against ``convert_apm.py`` and
the loader ``tools/omni/audition.cpp`` (``load_hparams``, ``load_tensors``):

Metadata (in this order; the GGUFWriter adds ``general.architecture`` first)::

    general.architecture     str     "whisper"
    general.file_type        uint32  1
    general.description      str     "audio encoder for MiniCPM-omni"
    encoder_attention_heads  uint32  audio_config.encoder_attention_heads
    encoder_ffn_dim          uint32  audio_config.encoder_ffn_dim
    encoder_layers           uint32  audio_config.encoder_layers
    num_hidden_layers        uint32  audio_config.num_hidden_layers (must be in config.json)
    d_model                  uint32  audio_config.d_model
    audio_pool_step          uint32  top-level audio_pool_step
    use_f16                  uint32  1
    n_mel                    uint32  80
    n_fft                    uint32  201  (the filter width, 1 + 400 // 2, not the FFT size)
    filters                  [float32] 80 * 201, mel-major: librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)

The loader requires ``d_model``, ``encoder_attention_heads``, ``encoder_layers``; reads ``n_mel``,
``n_fft``, ``patch_size``, ``max_source_positions`` (default 1500) if present and the ``filters``
array; it ignores ``encoder_ffn_dim`` (FFN = 4 * d_model), ``audio_pool_step`` (its graph pools by
a literal 5) and ``use_f16``; LayerNorm eps is a literal 1e-5.

Tensors (names after ``apm.`` -> ``encoder.``, ``layers.`` -> ``blocks.`` and the whisper.cpp
table; shapes in ggml order, ``ne[0]`` first)::

    encoder.conv1.weight                [3, n_mels, d]   F16
    encoder.conv1.bias                  [1, d]           F32   (numpy [d, 1])
    encoder.conv2.weight                [3, d, d]        F16
    encoder.conv2.bias                  [1, d]           F32
    encoder.positional_embedding        [d, 1500]        F32
    encoder.blocks.{i}.attn.query.{weight [d, d] F16, bias [d] F32}
    encoder.blocks.{i}.attn.key.weight  [d, d]           F16   (no key bias)
    encoder.blocks.{i}.attn.value.{weight, bias}, .attn.out.{weight, bias}
    encoder.blocks.{i}.attn_ln.{weight, bias}            [d]   F32
    encoder.blocks.{i}.mlp.0.{weight [d, ffn] F16, bias [ffn] F32}
    encoder.blocks.{i}.mlp.2.{weight [ffn, d] F16, bias [d] F32}
    encoder.blocks.{i}.mlp_ln.{weight, bias}             [d]   F32
    encoder.ln_post.{weight, bias}                        [d]   F32
    audio_projector.linear1.{weight [ffn // 4, D] F16, bias [D] F32}
    audio_projector.linear2.{weight [D, D] F16, bias [D] F32}

Every tensor is ``squeeze()``d and rounded to float16 first; the ones kept in F32 (1-D, the conv
biases, the positional table) are converted back, so they hold float16-rounded values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

# convert_apm.py's name table (encoder part; applied in this order with str.replace, after
# "apm." -> "encoder." and "layers." -> "blocks.").
_NAME_TABLE = (
    ("self_attn.k_proj", "attn.key"),
    ("self_attn.q_proj", "attn.query"),
    ("self_attn.v_proj", "attn.value"),
    ("self_attn.out_proj", "attn.out"),
    ("self_attn_layer_norm", "attn_ln"),
    ("fc1", "mlp.0"),
    ("fc2", "mlp.2"),
    ("final_layer_norm", "mlp_ln"),
    ("encoder.layer_norm.bias", "encoder.ln_post.bias"),
    ("encoder.layer_norm.weight", "encoder.ln_post.weight"),
    ("encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("audio_projection_layer", "audio_projector"),
)
_F32_NAMES = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding"}
DESCRIPTION = "audio encoder for MiniCPM-omni"


def omni_tensor_name(hf_name: str) -> str:
    """The GGUF name convert_apm.py gives a checkpoint tensor."""
    name = hf_name.replace("apm.", "encoder.") if hf_name.startswith("apm.") else hf_name
    name = name.replace("layers.", "blocks.")
    for old, new in _NAME_TABLE:
        name = name.replace(old, new)
    return name


def slaney_mel_filters(sr: int = 16000, n_fft: int = 400, n_mels: int = 80) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (Slaney scale, Slaney area
    norm, 0 .. sr/2), float32 [n_mels, 1 + n_fft // 2], computed in the same order."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
        mel = f / f_sp
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2)
    mel_f = mel_to_hz(mels)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def mel_filters() -> np.ndarray:
    """The ``filters`` array: librosa's when installed (what convert_apm.py calls), else the
    same matrix from :func:`slaney_mel_filters`."""
    try:
        import librosa
    except ImportError:
        return slaney_mel_filters()
    return librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)


def _checkpoint_audio_tensors(ckpt_dir: PathLike) -> List[Tuple[str, np.ndarray]]:
    """surgery.py's ``minicpmo.whisper``: apm* then audio_projection_layer*, sorted, float32."""
    from safetensors.torch import load_file

    path = Path(ckpt_dir)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: Dict[str, object] = {}
    for f in files:
        state.update(load_file(str(path / f)))
    names = sorted(state)
    order = [k for k in names if k.startswith("apm")] + [k for k in names if k.startswith("audio_projection_layer")]
    return [(k, state[k].float().numpy()) for k in order]


def omni_audio_tensors(ckpt_dir: PathLike) -> List[Tuple[str, np.ndarray]]:
    """(GGUF name, array as written) in file order; arrays in numpy (PyTorch) order."""
    out = []
    for hf_name, v in _checkpoint_audio_tensors(ckpt_dir):
        name = omni_tensor_name(hf_name)
        data = np.squeeze(v).astype(np.float16)
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            data = data.reshape(data.shape[0], 1)
        if data.ndim < 2 or name in _F32_NAMES or name == "decoder.positional_embedding":
            data = data.astype(np.float32)
        out.append((name, data))
    return out


def write_omni_audio_gguf(ckpt_dir: PathLike, out_path: PathLike) -> Path:
    """Write the audio GGUF of ``ckpt_dir`` as llama.cpp-omni's convert_apm.py does."""
    from gguf import GGUFWriter

    ckpt_dir, out_path = Path(ckpt_dir), Path(out_path)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    a = cfg["audio_config"]
    w = GGUFWriter(path=str(out_path), arch="whisper")
    w.add_file_type(1)
    w.add_description(DESCRIPTION)
    for key in ("encoder_attention_heads", "encoder_ffn_dim", "encoder_layers", "num_hidden_layers", "d_model"):
        w.add_uint32(key, int(a[key]))
    w.add_uint32("audio_pool_step", int(cfg["audio_pool_step"]))
    w.add_uint32("use_f16", 1)
    filters = mel_filters()
    w.add_uint32("n_mel", int(filters.shape[0]))
    w.add_uint32("n_fft", int(filters.shape[1]))
    w.add_array("filters", filters.flatten().tolist())
    for name, data in omni_audio_tensors(ckpt_dir):
        w.add_tensor(name=name, tensor=data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path
