"""Writer of llama.cpp-omni's Token2Wav GGUF files (``token2wav-gguf/{encoder,flow_matching,
flow_extra,hifigan2}.gguf``) from a MiniCPM-o 4.5 ``assets/token2wav`` folder, so that our loader
can be tested on that layout with tiny random weights.

llama.cpp-omni does not ship the converter of these files (``convert/convert.sh``: "Token2Wav
models need a separate conversion"); the layout is the one its loader reads
(``tools/omni/token2wav/token2wav-impl.cpp``; spec-audio-speech §5.5):

* ``flow_extra.gguf``: the top-level tensors of ``flow.pt`` -- ``input_embedding.weight``,
  ``spk_embed_affine_layer.{weight,bias}``, ``encoder_proj.{weight,bias}``
  (``bind_flow_extra_weights``);
* ``encoder.gguf``: ``encoder.*`` without the ``encoder.`` prefix (``embed.out.{0,1}.*``,
  ``pre_lookahead_layer.conv{1,2}.*``, ``encoders.{i}.*``, ``up_layer.conv.*``, ``up_embed.out.*``,
  ``up_encoders.{i}.*``, ``after_norm.*``; ``ue_loader_bind_all_weights``);
* ``flow_matching.gguf``: ``decoder.estimator.*`` as ``estimator.*`` (``bind_flow_matching_weights``);
* ``hifigan2.gguf``: ``hift_original.pt`` (the original HiFT: its ``hg2_*`` graph is
  HiFTGenerator's, non-causal conv_pre k7/p3, ConvTranspose1d upsampling 8/5/3, source_downs),
  the ``generator.`` prefix stripped and the weight norms folded into plain ``.weight``
  (``hg_model_bind_from_loader`` reads ``conv_pre.weight``, ``ups.{i}.weight``,
  ``resblocks.{i}.convs1.{j}.weight``, ``...activations1.{j}.alpha``).

Every tensor is the torch tensor as numpy writes it (ggml ``ne`` = the torch shape reversed:
Linear ``[in, out]``, Conv1d ``[k, in, out]`` -- the ``w_kic_oc`` of its loader --,
ConvTranspose1d ``[k, out, in]``, ``pos_bias_u`` ``[d_k, heads]``), F32 (the loader's HiFT ops
require F32; the release sizes match F32 storage). No metadata besides what ``GGUFWriter`` adds:
the loader reads none (it hard-codes the hyperparameters and takes ``pre_lookahead_len`` from the
``pre_lookahead_layer.conv1`` kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

PathLike = Union[str, Path]

EXTRA_KEYS = ("input_embedding.weight", "spk_embed_affine_layer.weight", "spk_embed_affine_layer.bias",
              "encoder_proj.weight", "encoder_proj.bias")


def _write(path: Path, arch: str, tensors: Dict[str, np.ndarray]) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for name, a in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def flow_parts(flow_pt: PathLike) -> Dict[str, Dict[str, np.ndarray]]:
    """``flow.pt`` split into the three files' tensors (F32 numpy, torch shapes)."""
    import torch

    sd = torch.load(str(flow_pt), map_location="cpu", weights_only=True)
    parts: Dict[str, Dict[str, np.ndarray]] = {"encoder": {}, "flow_matching": {}, "flow_extra": {}}
    for k, v in sd.items():
        a = v.detach().float().numpy()
        if k in EXTRA_KEYS:
            parts["flow_extra"][k] = a
        elif k.startswith("encoder."):
            parts["encoder"][k[len("encoder."):]] = a
        elif k.startswith("decoder.estimator."):
            parts["flow_matching"][k[len("decoder."):]] = a
        else:
            raise ValueError(f"{flow_pt}: tensor {k} has no place in llama.cpp-omni's files")
    return parts


def hift_tensors(hift_pt: PathLike) -> Dict[str, np.ndarray]:
    """``hift_original.pt`` as hifigan2.gguf holds it: prefix stripped, weight norms folded
    (``w = g * v / ||v||`` over every dim but 0, torch's ``weight_norm(dim=0)``)."""
    import torch

    sd = {k: v.detach().double().numpy() for k, v in torch.load(str(hift_pt), map_location="cpu",
                                                                     weights_only=True).items()}
    sd = {k[len("generator."):] if k.startswith("generator.") else k: v for k, v in sd.items()}
    out: Dict[str, np.ndarray] = {}
    for k, v in sd.items():
        for g_suf, v_suf in ((".parametrizations.weight.original0", ".parametrizations.weight.original1"),
                             (".weight_g", ".weight_v")):
            if k.endswith(g_suf):
                base = k[: -len(g_suf)]
                d = sd[base + v_suf]
                norm = np.sqrt((d * d).reshape(d.shape[0], -1).sum(axis=1)).reshape((-1,) + (1,) * (d.ndim - 1))
                out[base + ".weight"] = (v * d / norm).astype(np.float32)
                break
            if k.endswith(v_suf):
                break
        else:
            out[k] = v.astype(np.float32)
    return out


def write_omni_t2w(token2wav_dir: PathLike, out_dir: PathLike,
                   edit: Optional[Callable[[str, Dict[str, np.ndarray]], None]] = None) -> Path:
    """Writes ``encoder.gguf``, ``flow_matching.gguf``, ``flow_extra.gguf`` and ``hifigan2.gguf``
    from ``token2wav_dir`` (``flow.pt``, ``hift_original.pt``) into ``out_dir`` (created).
    ``edit(file_stem, tensors)`` may change a file's tensors before it is written (bad-file
    tests). Returns ``out_dir``."""
    src, out = Path(token2wav_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = flow_parts(src / "flow.pt")
    files["hifigan2"] = hift_tensors(src / "hift_original.pt")
    for stem, tensors in files.items():
        if edit is not None:
            edit(stem, tensors)
        _write(out / f"{stem}.gguf", stem, tensors)
    return out
