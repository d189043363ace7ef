"""The streaming Token2Wav vocoder of MiniCPM-o 4.5: CosyVoice3's ``CausalHiFTGenerator``.

Source: ``<checkpoint>/assets/token2wav/hift.pt`` (a plain state dict) and ``config.yaml``
beside it, which minicpmo-utils 1.0.7 (``stepaudio2/token2wav.py``, ``load_causal_vocoder``)
loads with hyperpyyaml: its ``hift`` entry builds ``CausalHiFTGenerator`` (with a
``CausalConvRNNF0Predictor``), and ``BoundedVocoder`` streams it.

What is written:

* every tensor under the ``cvoc.*`` names of the name table (``CV_*`` ids), F32, weight norms
  folded as for the original HiFT (:mod:`.t2w_hift`), except the F0 predictor's: the reference
  runs it in float64 (``BoundedVocoder`` calls ``f0_predictor.double()``), so its weights are the
  float64 products ``g * v / ||v||`` of float32 ``g`` and ``v``, which float32 cannot hold; their
  ``v`` and ``g`` are written apart and folded in float64 at load time;
* the hyperparameters as ``minicpm.cvoc.*`` metadata: those ``config.yaml`` gives for ``hift``
  (simple ``!ref <key>`` references resolved), the class defaults of
  ``CausalHiFTGenerator.__init__`` where it gives none, and the literals of the code
  (``CVOC_LITERALS``). Kernel sizes are read back from the tensors at load time.

``config.yaml`` is read with PyYAML's node composer only (its ``!new:`` / ``!name:`` tags are not
executed); reading the ``.pt`` file needs PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .checkpoint import ConvertError
from .names import key_name, tensor_name
from .t2w_hift import _flat, _fold, _load_state, _take

__all__ = ["CVOC_DEFAULTS", "CVOC_LITERALS", "CvocSpec", "find_cvoc", "load_cvoc", "plan_cvoc", "write_cvoc_metadata",
           "read_cvoc_config"]

CVOC_DIR = Path("assets") / "token2wav"
CVOC_WEIGHTS = "hift.pt"
CVOC_CONFIG = "config.yaml"

# CausalHiFTGenerator.__init__ defaults (stepaudio2/causal_vocoder/generator.py).
CVOC_DEFAULTS: Dict[str, Any] = {
    "in_channels": 80,
    "base_channels": 512,
    "nb_harmonics": 8,
    "sampling_rate": 22050,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "nsf_voiced_threshold": 10.0,
    "upsample_rates": [8, 8],
    "upsample_kernel_sizes": [16, 16],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
    "conv_pre_look_right": 4,
}
# CausalConvRNNF0Predictor.__init__ defaults (causal_vocoder/f0_predictor.py).
F0_DEFAULTS: Dict[str, Any] = {"num_class": 1, "in_channels": 80, "cond_channels": 512}

# Literals of the code the metadata carries.
CVOC_LITERALS: Dict[str, Any] = {
    "post_lrelu_slope": 0.01,        # decode(): F.leaky_relu(x), torch's default slope
    "magnitude_clip": 100.0,         # _istft(): torch.clip(magnitude, max=1e2)
    "snake_eps": 1e-9,               # Snake.no_div_by_zero
    "unvoiced_noise_div": 3.0,       # BoundedVocoder._source: sine_amp / 3 where unvoiced
    "reflect_pad": 1,                # nn.ReflectionPad1d((1, 0)) before the last stage's fusion
    "window": "hann",                # scipy get_window("hann", n_fft, fftbins=True): periodic
    "noise_table_samples": 300 * 24000,   # SineGen2(causal).sine_waves = torch.rand(1, 300 * 24000, 9)
    "block_frames": 16,              # BoundedVocoder(model) default, as Token2wav builds it
}


@dataclass
class CvocSpec:
    path: Path
    config: Path
    tensors: Dict[str, np.ndarray]
    ids: List[Tuple[str, str, Optional[int]]]
    meta: Dict[str, Any] = field(default_factory=dict)


def find_cvoc(hf_dir: Path) -> Optional[Tuple[Path, Path]]:
    """(``hift.pt``, ``config.yaml``) of ``assets/token2wav``, or None when either is absent."""
    d = Path(hf_dir) / CVOC_DIR
    w, c = d / CVOC_WEIGHTS, d / CVOC_CONFIG
    return (w, c) if w.is_file() and c.is_file() else None


def _node_value(node: Any, top: Dict[str, Any], path: Path, depth: int = 0) -> Any:
    import yaml

    if depth > 16:
        raise ConvertError(f"{path}: references nest too deeply")
    tag = node.tag or ""
    if isinstance(node, yaml.ScalarNode):
        if tag == "!ref":
            ref = str(node.value).strip()
            if not (ref.startswith("<") and ref.endswith(">")) or ref[1:-1] not in top:
                raise ConvertError(f"{path}: unsupported reference {ref!r} (only <top-level key>)")
            return _node_value(top[ref[1:-1]], top, path, depth + 1)
        if tag.startswith("!"):
            raise ConvertError(f"{path}: unsupported tag {tag} on a value")
        return yaml.safe_load(yaml.serialize(node))
    if isinstance(node, yaml.SequenceNode):
        return [_node_value(n, top, path, depth + 1) for n in node.value]
    if isinstance(node, yaml.MappingNode):
        out = {_node_value(k, top, path, depth + 1): _node_value(v, top, path, depth + 1) for k, v in node.value}
        if tag.startswith("!new:") or tag.startswith("!name:"):
            out["__class__"] = tag.split(":", 1)[1]
        return out
    raise ConvertError(f"{path}: unreadable YAML node")


def read_cvoc_config(path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The ``hift`` arguments of ``config.yaml`` and those of its ``f0_predictor``, class defaults
    filled in."""
    try:
        import yaml
    except ImportError:
        raise ConvertError(f"{path}: reading the vocoder configuration needs PyYAML (pip install pyyaml)") from None

    try:
        root = yaml.compose(Path(path).read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: cannot read the vocoder configuration: {e}") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConvertError(f"{path}: not a YAML mapping")
    top = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    if "hift" not in top:
        raise ConvertError(f"{path}: no hift entry")
    hift = _node_value(top["hift"], top, path)
    if not isinstance(hift, dict) or not str(hift.get("__class__", "")).endswith("CausalHiFTGenerator"):
        raise ConvertError(f"{path}: hift is not a CausalHiFTGenerator")
    f0 = hift.pop("f0_predictor", None)
    if not isinstance(f0, dict) or not str(f0.get("__class__", "")).endswith("CausalConvRNNF0Predictor"):
        raise ConvertError(f"{path}: hift.f0_predictor is not a CausalConvRNNF0Predictor")
    hift.pop("__class__")
    f0.pop("__class__")
    unknown = sorted(set(hift) - set(CVOC_DEFAULTS)) + sorted(set(f0) - set(F0_DEFAULTS))
    if unknown:
        raise ConvertError(f"{path}: unknown vocoder arguments {unknown}")
    args = dict(CVOC_DEFAULTS, **hift)
    args["istft_params"] = dict(CVOC_DEFAULTS["istft_params"], **(hift.get("istft_params") or {}))
    return args, dict(F0_DEFAULTS, **f0)


def load_cvoc(weights: Path, config: Path) -> CvocSpec:
    """Read, fold and check ``hift.pt`` against ``config.yaml``."""
    weights, config = Path(weights), Path(config)
    args, f0a = read_cvoc_config(config)
    state = _load_state(weights)
    path = weights
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
        put(tid, w, idx)
        put(tid + "_BIAS", _take(state, base + ".bias", path), idx)
        return w

    n_f0 = 0
    while any(k.startswith(f"f0_predictor.condnet.{2 * n_f0}.") for k in state):
        n_f0 += 1
    if n_f0 == 0:
        raise ConvertError(f"{path}: no f0_predictor.condnet convolutions")
    def f0_conv(i: int) -> Tuple[int, ...]:
        base = f"f0_predictor.condnet.{2 * i}."
        pairs = [(base + "parametrizations.weight.original0", base + "parametrizations.weight.original1"),
                 (base + "weight_g", base + "weight_v")]
        for gk, vk in pairs:
            if gk in state and vk in state:
                g, v = state.pop(gk), state.pop(vk)
                break
        else:   # already folded: v = w, g = ||w|| per output channel
            v = _take(state, base + "weight", path)
            g = np.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(axis=1))
        if v.ndim != 3 or g.size != v.shape[0] or not np.all((v.reshape(v.shape[0], -1) ** 2).sum(axis=1) > 0):
            raise ConvertError(f"{path}: {base}weight: bad weight norm ({list(v.shape)}, {g.size} magnitudes)")
        put("CV_F0_CONV", v, i)
        put("CV_F0_CONV_MAG", g.reshape(-1), i)
        put("CV_F0_CONV_BIAS", _take(state, base + "bias", path), i)
        return tuple(v.shape)

    f0_shapes = [f0_conv(i) for i in range(n_f0)]
    cls = _take(state, "f0_predictor.classifier.weight", path)
    put("CV_F0_CLS", cls)
    put("CV_F0_CLS_BIAS", _take(state, "f0_predictor.classifier.bias", path))
    lin = _take(state, "m_source.l_linear.weight", path)
    put("CV_SRC_LINEAR", lin)
    put("CV_SRC_LINEAR_BIAS", _take(state, "m_source.l_linear.bias", path))
    pre = conv("CV_CONV_PRE", "conv_pre")
    rates = [int(u) for u in args["upsample_rates"]]
    n_up = len(rates)
    ups = [conv("CV_UP", f"ups.{i}", i) for i in range(n_up)]
    downs = [conv("CV_SRC_DOWN", f"source_downs.{i}", i, norm=False) for i in range(n_up)]
    rbk = [int(k) for k in args["resblock_kernel_sizes"]]
    rbd = [[int(d) for d in row] for row in args["resblock_dilation_sizes"]]
    srbk = [int(k) for k in args["source_resblock_kernel_sizes"]]
    srbd = [[int(d) for d in row] for row in args["source_resblock_dilation_sizes"]]
    if len(srbk) < n_up or len(srbd) < n_up or len(rbd) < len(rbk):
        raise ConvertError(f"{config}: fewer source resblock kernels / dilations than upsampling stages")
    srbk, srbd, rbd = srbk[:n_up], srbd[:n_up], rbd[:len(rbk)]   # zip() in the constructor
    if len({len(r) for r in rbd}) != 1 or len({len(r) for r in srbd}) != 1:
        raise ConvertError(f"{config}: resblock dilation lists of different lengths")

    def resblock(prefix: str, base: str, flat0: int, dil: List[int], kernel: int) -> None:
        for j in range(len(dil)):
            w = conv(prefix + "_CONV1", f"{base}.convs1.{j}", flat0 + j)
            conv(prefix + "_CONV2", f"{base}.convs2.{j}", flat0 + j)
            put(prefix + "_ALPHA1", _take(state, f"{base}.activations1.{j}.alpha", path), flat0 + j)
            put(prefix + "_ALPHA2", _take(state, f"{base}.activations2.{j}.alpha", path), flat0 + j)
            if int(w.shape[2]) != kernel:
                raise ConvertError(f"{path}: {base} has kernel {w.shape[2]}, the configuration {kernel}")

    n_sd = len(srbd[0])
    for i in range(n_up):
        resblock("CV_SRB", f"source_resblocks.{i}", i * n_sd, srbd[i], srbk[i])
    flat = 0
    for i in range(n_up):
        for j, k in enumerate(rbk):
            resblock("CV_RB", f"resblocks.{i * len(rbk) + j}", flat, rbd[j], k)
            flat += len(rbd[j])
    post = conv("CV_CONV_POST", "conv_post")
    if state:
        left = sorted(state)
        raise ConvertError(f"{path}: {len(left)} tensors the vocoder does not know: {', '.join(left[:5])}")

    base, n_mel = int(args["base_channels"]), int(args["in_channels"])
    n_fft, hop = int(args["istft_params"]["n_fft"]), int(args["istft_params"]["hop_len"])
    look = int(args["conv_pre_look_right"])
    strides = [int(u) for u in np.cumprod([1] + rates[::-1][:-1])[::-1]]
    checks = [
        (tuple(pre.shape) == (base, n_mel, look + 1), f"conv_pre is {list(pre.shape)}"),
        (int(post.shape[0]) == n_fft + 2, f"conv_post has {post.shape[0]} outputs, expected n_fft + 2"),
        (tuple(lin.shape) == (1, int(args["nb_harmonics"]) + 1), f"m_source.l_linear is {list(lin.shape)}"),
        (tuple(cls.shape) == (int(f0a["num_class"]), int(f0a["cond_channels"])) and int(f0a["num_class"]) == 1,
         f"f0 classifier is {list(cls.shape)}"),
        (f0_shapes[0][1] == int(f0a["in_channels"]) == n_mel, "the F0 predictor and conv_pre take different mel bins"),
    ]
    for i, (u, k) in enumerate(zip(ups, args["upsample_kernel_sizes"])):
        checks.append((tuple(u.shape) == (base >> (i + 1), base >> i, int(k)), f"ups.{i} is {list(u.shape)}"))
    for i, (d, u) in enumerate(zip(downs, strides)):
        want = 1 if u == 1 else 2 * u
        checks.append((tuple(d.shape) == (base >> (i + 1), n_fft + 2, want), f"source_downs.{i} is {list(d.shape)}"))
    for ok, why in checks:
        if not ok:
            raise ConvertError(f"{path}: does not match {config.name}: {why}")
    meta = dict(CVOC_LITERALS)
    meta.update(
        sampling_rate=int(args["sampling_rate"]),
        in_channels=n_mel,
        base_channels=base,
        nb_harmonics=int(args["nb_harmonics"]),
        nsf_alpha=float(args["nsf_alpha"]),
        nsf_sigma=float(args["nsf_sigma"]),
        nsf_voiced_threshold=float(args["nsf_voiced_threshold"]),
        upsample_rates=rates,
        n_fft=n_fft,
        hop_len=hop,
        resblocks_per_stage=len(rbk),
        resblock_dilation_sizes=rbd,
        source_resblock_dilation_sizes=srbd,
        source_down_strides=strides,
        conv_pre_look_right=look,
        f0_layers=n_f0,
        lrelu_slope=float(args["lrelu_slope"]),
        audio_limit=float(args["audio_limit"]),
    )
    return CvocSpec(path=weights, config=config, tensors=tensors, ids=ids, meta=meta)


def plan_cvoc(spec: CvocSpec) -> List[Any]:
    """The planned tensors (fixed F32) reading from the folded arrays."""
    from gguf import GGMLQuantizationType

    from .vision import VisionTensor

    plan: List[Any] = []
    for tid, name, _ in spec.ids:
        arr = spec.tensors[name]

        def src(_ckpt, start, stop, arr=arr):
            return arr if start is None else arr[start:stop]

        plan.append(VisionTensor(tid, name, f"{spec.path.name}:{name}", tuple(arr.shape),
                                 qtype=GGMLQuantizationType.F32, source=src))
    return plan


def write_cvoc_metadata(writer: Any, spec: CvocSpec) -> None:
    m = spec.meta
    writer.add_string(key_name("MINICPM_CVOC_SOURCE"),
                      f"minicpmo-utils 1.0.7 causal_vocoder CausalHiFTGenerator ({(CVOC_DIR / CVOC_WEIGHTS).as_posix()})")
    u32 = [("MINICPM_CVOC_SAMPLE_RATE", "sampling_rate"), ("MINICPM_CVOC_IN_CHANNELS", "in_channels"),
           ("MINICPM_CVOC_BASE_CHANNELS", "base_channels"), ("MINICPM_CVOC_NB_HARMONICS", "nb_harmonics"),
           ("MINICPM_CVOC_N_FFT", "n_fft"), ("MINICPM_CVOC_HOP", "hop_len"),
           ("MINICPM_CVOC_RB_COUNT", "resblocks_per_stage"), ("MINICPM_CVOC_LOOK_RIGHT", "conv_pre_look_right"),
           ("MINICPM_CVOC_F0_LAYERS", "f0_layers"), ("MINICPM_CVOC_REFLECT_PAD", "reflect_pad"),
           ("MINICPM_CVOC_NOISE_TABLE", "noise_table_samples"), ("MINICPM_CVOC_BLOCK_FRAMES", "block_frames")]
    for k, v in u32:
        writer.add_uint32(key_name(k), int(m[v]))
    f32 = [("MINICPM_CVOC_SINE_AMP", "nsf_alpha"), ("MINICPM_CVOC_NOISE_STD", "nsf_sigma"),
           ("MINICPM_CVOC_UNVOICED_NOISE_DIV", "unvoiced_noise_div"),
           ("MINICPM_CVOC_VOICED_THRESHOLD", "nsf_voiced_threshold"), ("MINICPM_CVOC_LRELU_SLOPE", "lrelu_slope"),
           ("MINICPM_CVOC_POST_LRELU_SLOPE", "post_lrelu_slope"), ("MINICPM_CVOC_AUDIO_LIMIT", "audio_limit"),
           ("MINICPM_CVOC_MAG_CLIP", "magnitude_clip"), ("MINICPM_CVOC_SNAKE_EPS", "snake_eps")]
    for k, v in f32:
        writer.add_float32(key_name(k), float(m[v]))
    writer.add_array(key_name("MINICPM_CVOC_UPSAMPLE_RATES"), [int(x) for x in m["upsample_rates"]])
    writer.add_array(key_name("MINICPM_CVOC_SRC_DOWN_STRIDES"), [int(x) for x in m["source_down_strides"]])
    writer.add_array(key_name("MINICPM_CVOC_RB_DILATIONS"), _flat(m["resblock_dilation_sizes"]))
    writer.add_array(key_name("MINICPM_CVOC_SRB_DILATIONS"), _flat(m["source_resblock_dilation_sizes"]))
    writer.add_string(key_name("MINICPM_CVOC_WINDOW"), str(m["window"]))
