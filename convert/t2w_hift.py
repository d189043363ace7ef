"""The Token2Wav vocoder of MiniCPM-o 4.5: the original HiFT (mel at 50 Hz -> 24 kHz PCM).

Source: ``<checkpoint>/assets/token2wav/hift_original.pt``, which minicpmo-utils 1.0.7
(``stepaudio2/token2wav.py``, ``Token2wav._get_original_vocoder``) loads into
``HiFTGenerator()`` built with its class defaults, after stripping a ``generator.`` key prefix;
the class is ``stepaudio2/flashcosyvoice/modules/hifigan.py`` with the layers of
``hifigan_components/layers.py`` (``SourceModuleHnNSF2`` / ``SineGen2`` at 24 kHz).

What is written:

* every tensor under the ``hift.*`` names of the name table (``HIFT_*`` ids), F32, with the
  weight norms folded: ``w = g * v / ||v||`` over every dim but 0 (``weight_norm``'s default
  ``dim=0``: output channels of a Conv1d, input channels of a ConvTranspose1d), from either
  ``parametrizations.weight.original0/1`` (torch's parametrized ``weight_norm``) or
  ``weight_g``/``weight_v`` (the older hook), or a plain ``weight`` (already folded);
* every hyperparameter as ``minicpm.hift.*`` metadata: channel counts and kernel sizes from
  the tensor shapes (checked against the class defaults the reference constructor uses), and
  the values only the code holds (rates, dilations, paddings, the source module's constants,
  clip values, LeakyReLU slopes, the Snake epsilon) from ``HIFT_DEFAULTS`` below, which copies
  the class defaults of ``HiFTGenerator.__init__`` and the literals of its methods.

Reading a ``.pt`` file needs PyTorch (imported only when a checkpoint has the file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from gguf import GGMLQuantizationType

from .checkpoint import ConvertError
from .names import key_name, tensor_name
from .vision import VisionTensor

__all__ = ["HIFT_DEFAULTS", "HiftSpec", "find_hift", "load_hift", "plan_hift", "write_hift_metadata", "hift_state_prefixes"]

Q = GGMLQuantizationType

HIFT_FILE = Path("assets") / "token2wav" / "hift_original.pt"

# HiFTGenerator.__init__ defaults (flashcosyvoice/modules/hifigan.py) and the literals of its
# code, which Token2wav._get_original_vocoder relies on (it calls HiFTGenerator() bare).
HIFT_DEFAULTS: Dict[str, Any] = {
    "in_channels": 80,
    "base_channels": 512,
    "nb_harmonics": 8,
    "sampling_rate": 24000,
    "nsf_alpha": 0.1,             # sine_amp
    "nsf_sigma": 0.003,           # noise_std
    "nsf_voiced_threshold": 10.0,
    "upsample_rates": [8, 5, 3],
    "upsample_kernel_sizes": [16, 11, 7],
    "n_fft": 16,                  # istft_params
    "hop_len": 4,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
    # literals in the code
    "post_lrelu_slope": 0.01,     # decode(): F.leaky_relu(x) with torch's default slope
    "magnitude_clip": 100.0,      # _istft(): torch.clip(magnitude, max=1e2)
    "snake_eps": 1e-9,            # Snake.no_div_by_zero
    "unvoiced_noise_div": 3.0,    # SineGen2: noise_amp = uv * noise_std + (1 - uv) * sine_amp / 3
    "conv_pre_padding": 3,        # Conv1d(in, base, 7, 1, padding=3)
    "conv_post_padding": 3,       # Conv1d(ch, n_fft + 2, 7, 1, padding=3)
    "f0_padding": 1,              # ConvRNNF0Predictor: Conv1d(..., kernel_size=3, padding=1)
    "reflect_pad": 1,             # nn.ReflectionPad1d((1, 0)) before the last stage's fusion
    "window": "hann",             # scipy get_window("hann", n_fft, fftbins=True): periodic
}


@dataclass
class HiftSpec:
    path: Path
    prefix: str                                   # "generator." or ""
    tensors: Dict[str, np.ndarray]                # GGUF name -> float32 array (numpy order)
    ids: List[Tuple[str, str, Optional[int]]]     # (tensor id, GGUF name, index) in file order
    meta: Dict[str, Any] = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)


def find_hift(hf_dir: Path) -> Optional[Path]:
    """``assets/token2wav/hift_original.pt`` of a checkpoint, or None."""
    p = Path(hf_dir) / HIFT_FILE
    return p if p.is_file() else None


def hift_state_prefixes() -> Tuple[str, ...]:
    return ("generator.", "")


def _load_state(path: Path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{path}: reading the Token2Wav vocoder (.pt) needs PyTorch (pip install torch)") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConvertError(f"{path}: cannot read the vocoder state dict: {e}") from None
    if isinstance(state, dict) and "generator" in state and isinstance(state["generator"], dict):
        state = state["generator"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConvertError(f"{path}: not a state dict")
    out: Dict[str, np.ndarray] = {}
    for k, v in state.items():
        if not hasattr(v, "detach"):
            raise ConvertError(f"{path}: entry {k} is not a tensor")
        out[k] = v.detach().to(torch.float64).cpu().numpy()
    return out


def _fold(state: Dict[str, np.ndarray], base: str, path: Path) -> np.ndarray:
    """The weight of module ``base`` with its weight norm folded (dim 0)."""
    pairs = [(base + "parametrizations.weight.original0", base + "parametrizations.weight.original1"),
             (base + "weight_g", base + "weight_v")]
    for gk, vk in pairs:
        if gk in state or vk in state:
            if gk not in state or vk not in state:
                raise ConvertError(f"{path}: weight norm of {base[:-1]} is incomplete ({gk} / {vk})")
            g, v = state.pop(gk), state.pop(vk)
            norm = np.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(axis=1))
            if g.size != v.shape[0]:
                raise ConvertError(f"{path}: {gk} has {g.size} values for {v.shape[0]} rows")
            if not np.all(norm > 0):
                raise ConvertError(f"{path}: weight norm of {base[:-1]} has a zero direction vector")
            scale = g.reshape(-1) / norm
            return v * scale.reshape((-1,) + (1,) * (v.ndim - 1))
    if base + "weight" in state:
        return state.pop(base + "weight")
    raise ConvertError(f"{path}: tensor {base}weight not found (needed for the vocoder)")


def _take(state: Dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in state:
        raise ConvertError(f"{path}: tensor {key} not found (needed for the vocoder)")
    return state.pop(key)


def load_hift(path: Path) -> HiftSpec:
    """Read, fold and check ``hift_original.pt``: the tensors to write and the metadata."""
    path = Path(path)
    raw = _load_state(path)
    prefix = "generator." if any(k.startswith("generator.") for k in raw) else ""
    state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    D = HIFT_DEFAULTS
    tensors: Dict[str, np.ndarray] = {}
    ids: List[Tuple[str, str, Optional[int]]] = []

    def put(tid: str, arr: np.ndarray, idx: Optional[int] = None) -> None:
        name = tensor_name(tid, idx)
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise ConvertError(f"{path}: tensor for {name} holds NaN or infinite values")
        tensors[name] = a
        ids.append((tid, name, idx))

    def conv(tid: str, base: str, idx: Optional[int] = None, norm: bool = True) -> np.ndarray:
        w = _fold(state, base + ".", path) if norm else _take(state, base + ".weight", path)
        if w.ndim != 3:
            raise ConvertError(f"{path}: {base}.weight has shape {list(w.shape)}, expected a 1-D convolution kernel")
        b = _take(state, base + ".bias", path)
        put(tid, w, idx)
        put(tid + "_BIAS", b, idx)
        return w

    # F0 predictor: condnet = [conv, ELU] * n (Sequential indices 0, 2, 4, ...), classifier
    n_f0 = 0
    while any(k.startswith(f"f0_predictor.condnet.{2 * n_f0}.") for k in state):
        n_f0 += 1
    if n_f0 == 0:
        raise ConvertError(f"{path}: no f0_predictor.condnet convolutions")
    f0_shapes = [conv("HIFT_F0_CONV", f"f0_predictor.condnet.{2 * i}", i).shape for i in range(n_f0)]
    cls = _take(state, "f0_predictor.classifier.weight", path)
    put("HIFT_F0_CLS", cls)
    put("HIFT_F0_CLS_BIAS", _take(state, "f0_predictor.classifier.bias", path))
    lin = _take(state, "m_source.l_linear.weight", path)
    put("HIFT_SRC_LINEAR", lin)
    put("HIFT_SRC_LINEAR_BIAS", _take(state, "m_source.l_linear.bias", path))
    pre = conv("HIFT_CONV_PRE", "conv_pre")
    n_up = 0
    while any(k.startswith(f"ups.{n_up}.") for k in state):
        n_up += 1
    ups = [conv("HIFT_UP", f"ups.{i}", i) for i in range(n_up)]
    downs = [conv("HIFT_SRC_DOWN", f"source_downs.{i}", i, norm=False) for i in range(n_up)]
    n_dil = len(D["resblock_dilation_sizes"][0])
    n_sdil = len(D["source_resblock_dilation_sizes"][0])
    n_k = len(D["resblock_kernel_sizes"])

    def resblock(prefix: str, base: str, flat0: int, n: int) -> int:
        k = None
        for j in range(n):
            w = conv(prefix + "_CONV1", f"{base}.convs1.{j}", flat0 + j)
            conv(prefix + "_CONV2", f"{base}.convs2.{j}", flat0 + j)
            put(prefix + "_ALPHA1", _take(state, f"{base}.activations1.{j}.alpha", path), flat0 + j)
            put(prefix + "_ALPHA2", _take(state, f"{base}.activations2.{j}.alpha", path), flat0 + j)
            k = w.shape[2]
        return int(k)

    srb_kernels = [resblock("HIFT_SRB", f"source_resblocks.{i}", i * n_sdil, n_sdil) for i in range(n_up)]
    rb_kernels = [resblock("HIFT_RB", f"resblocks.{i}", i * n_dil, n_dil) for i in range(n_up * n_k)]
    post = conv("HIFT_CONV_POST", "conv_post")
    if state:
        left = sorted(state)
        raise ConvertError(f"{path}: {len(left)} tensors the vocoder does not know: {', '.join(left[:5])}")

    # Shapes against the reference's construction (strict load_state_dict would refuse others).
    base, n_mel = int(pre.shape[0]), int(pre.shape[1])
    n_fft = D["n_fft"]
    up_kernels = [int(u.shape[2]) for u in ups]
    checks = [
        (n_up == len(D["upsample_rates"]), f"{n_up} upsampling stages, the class builds {len(D['upsample_rates'])}"),
        (up_kernels == D["upsample_kernel_sizes"], f"upsample kernels {up_kernels}, expected {D['upsample_kernel_sizes']}"),
        (srb_kernels == D["source_resblock_kernel_sizes"],
         f"source resblock kernels {srb_kernels}, expected {D['source_resblock_kernel_sizes']}"),
        (rb_kernels == D["resblock_kernel_sizes"] * n_up, f"resblock kernels {rb_kernels}"),
        (int(post.shape[0]) == n_fft + 2, f"conv_post has {post.shape[0]} outputs, expected n_fft + 2 = {n_fft + 2}"),
        (tuple(lin.shape) == (1, D["nb_harmonics"] + 1), f"m_source.l_linear is {list(lin.shape)}"),
        (tuple(cls.shape) == (1, f0_shapes[-1][0]), f"f0 classifier is {list(cls.shape)}"),
        (f0_shapes[0][1] == n_mel, "the F0 predictor and conv_pre take different mel bins"),
    ]
    for i, u in enumerate(ups):
        checks.append((tuple(u.shape[:2]) == (base >> i, base >> (i + 1)), f"ups.{i} is {list(u.shape)}"))
    for ok, why in checks:
        if not ok:
            raise ConvertError(f"{path}: not the HiFTGenerator() of minicpmo-utils: {why}")

    rates = list(D["upsample_rates"])
    down_rates = np.cumprod([1] + rates[::-1][:-1])[::-1]
    strides = [int(u) for u in down_rates]
    down_pad = [0 if u == 1 else u // 2 for u in strides]
    for i, (d, u) in enumerate(zip(downs, strides)):
        want = 1 if u == 1 else 2 * u
        if int(d.shape[2]) != want or int(d.shape[1]) != n_fft + 2:
            raise ConvertError(f"{path}: source_downs.{i} is {list(d.shape)}, expected kernel {want} over {n_fft + 2}")
    meta = dict(D)
    meta.update(
        in_channels=n_mel,
        base_channels=base,
        f0_layers=n_f0,
        f0_channels=int(f0_shapes[0][0]),
        upsample_padding=[(k - u) // 2 for k, u in zip(up_kernels, rates)],
        source_down_strides=strides,
        source_down_padding=down_pad,
    )
    return HiftSpec(path=path, prefix=prefix, tensors=tensors, ids=ids, meta=meta)


def plan_hift(spec: HiftSpec) -> List[VisionTensor]:
    """The planned tensors (fixed F32) reading from the folded arrays."""
    plan: List[VisionTensor] = []
    for tid, name, _ in spec.ids:
        arr = spec.tensors[name]

        def src(_ckpt, start, stop, arr=arr):
            return arr if start is None else arr[start:stop]

        plan.append(VisionTensor(tid, name, f"{spec.path.name}:{name}", tuple(arr.shape), qtype=Q.F32, source=src))
    return plan


def _flat(lists: Sequence[Sequence[int]]) -> List[int]:
    return [int(x) for row in lists for x in row]


def write_hift_metadata(writer: Any, spec: HiftSpec) -> None:
    m = spec.meta
    writer.add_string(key_name("MINICPM_HIFT_SOURCE"),
                      f"minicpmo-utils 1.0.7 flashcosyvoice HiFTGenerator ({HIFT_FILE.as_posix()})")
    writer.add_uint32(key_name("MINICPM_HIFT_SAMPLE_RATE"), int(m["sampling_rate"]))
    writer.add_uint32(key_name("MINICPM_HIFT_IN_CHANNELS"), int(m["in_channels"]))
    writer.add_uint32(key_name("MINICPM_HIFT_BASE_CHANNELS"), int(m["base_channels"]))
    writer.add_uint32(key_name("MINICPM_HIFT_NB_HARMONICS"), int(m["nb_harmonics"]))
    writer.add_float32(key_name("MINICPM_HIFT_SINE_AMP"), float(m["nsf_alpha"]))
    writer.add_float32(key_name("MINICPM_HIFT_NOISE_STD"), float(m["nsf_sigma"]))
    writer.add_float32(key_name("MINICPM_HIFT_UNVOICED_NOISE_DIV"), float(m["unvoiced_noise_div"]))
    writer.add_float32(key_name("MINICPM_HIFT_VOICED_THRESHOLD"), float(m["nsf_voiced_threshold"]))
    writer.add_array(key_name("MINICPM_HIFT_UPSAMPLE_RATES"), [int(x) for x in m["upsample_rates"]])
    writer.add_array(key_name("MINICPM_HIFT_UPSAMPLE_KERNELS"), [int(x) for x in m["upsample_kernel_sizes"]])
    writer.add_array(key_name("MINICPM_HIFT_UPSAMPLE_PADDING"), [int(x) for x in m["upsample_padding"]])
    writer.add_uint32(key_name("MINICPM_HIFT_N_FFT"), int(m["n_fft"]))
    writer.add_uint32(key_name("MINICPM_HIFT_HOP"), int(m["hop_len"]))
    writer.add_string(key_name("MINICPM_HIFT_WINDOW"), str(m["window"]))
    writer.add_array(key_name("MINICPM_HIFT_RB_KERNELS"), [int(x) for x in m["resblock_kernel_sizes"]])
    writer.add_array(key_name("MINICPM_HIFT_RB_DILATIONS"), _flat(m["resblock_dilation_sizes"]))
    writer.add_array(key_name("MINICPM_HIFT_SRB_KERNELS"), [int(x) for x in m["source_resblock_kernel_sizes"]])
    writer.add_array(key_name("MINICPM_HIFT_SRB_DILATIONS"), _flat(m["source_resblock_dilation_sizes"]))
    writer.add_array(key_name("MINICPM_HIFT_SRC_DOWN_STRIDES"), [int(x) for x in m["source_down_strides"]])
    writer.add_array(key_name("MINICPM_HIFT_SRC_DOWN_PADDING"), [int(x) for x in m["source_down_padding"]])
    writer.add_uint32(key_name("MINICPM_HIFT_CONV_PRE_PADDING"), int(m["conv_pre_padding"]))
    writer.add_uint32(key_name("MINICPM_HIFT_CONV_POST_PADDING"), int(m["conv_post_padding"]))
    writer.add_uint32(key_name("MINICPM_HIFT_F0_LAYERS"), int(m["f0_layers"]))
    writer.add_uint32(key_name("MINICPM_HIFT_F0_PADDING"), int(m["f0_padding"]))
    writer.add_uint32(key_name("MINICPM_HIFT_REFLECT_PAD"), int(m["reflect_pad"]))
    writer.add_float32(key_name("MINICPM_HIFT_LRELU_SLOPE"), float(m["lrelu_slope"]))
    writer.add_float32(key_name("MINICPM_HIFT_POST_LRELU_SLOPE"), float(m["post_lrelu_slope"]))
    writer.add_float32(key_name("MINICPM_HIFT_AUDIO_LIMIT"), float(m["audio_limit"]))
    writer.add_float32(key_name("MINICPM_HIFT_MAG_CLIP"), float(m["magnitude_clip"]))
    writer.add_float32(key_name("MINICPM_HIFT_SNAKE_EPS"), float(m["snake_eps"]))
