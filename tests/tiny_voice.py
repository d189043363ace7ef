"""Tiny random-weight voice-cloning models in the layout of MiniCPM-o 4.5's ``assets/token2wav``.

* ``speech_tokenizer_v2_25hz.onnx``: an S3Tokenizer v2 written with ``onnx.helper`` so that
  ``s3tokenizer.utils.onnx2torch`` (what ``S3TokenizerV2.init_from_onnx`` loads, strict) reads it:
  the real file's four fixed initializer names (``onnx::Conv_2216`` .. ``onnx::Conv_2219`` for the
  two convolutions, ``onnx::MatMul_2536`` / ``quantizer.project_in.bias`` for the FSQ projection),
  LayerNormalization nodes named ``/blocks.N/attn_ln/LayerNormalization``, every other weight
  consumed by a node named after its module (``/blocks.N/attn/query/MatMul``, ``.../Add``,
  ``/blocks.N/attn/fsmn_block/Conv``, ``/blocks.N/mlp/mlp.0/MatMul``), MatMul weights stored
  [in, out]. The graph is a plain weight container (the reference never runs it).
* ``campplus.onnx``: a small runnable conv net [1, T, 80] fbank -> [1, 192] (Conv1d, ReLU,
  dilated Conv1d, ReLU, mean over time, Linear), like CAM++'s interface.

Real geometry where the reference fixes it (128 mel bins, 64-wide rotary heads, FSMN kernel 31,
FSQ to 8 dimensions); width 128 (2 heads), 2 blocks: about 2 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

PathLike = Union[str, Path]

S3_SIZES = {"n_mels": 128, "n_state": 128, "n_head": 2, "n_layer": 2, "kernel": 31, "fsq_dim": 8}


def s3_state(sizes: Optional[Dict[str, int]] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """A random S3TokenizerV2 state dict (torch names and layouts)."""
    s = dict(S3_SIZES, **(sizes or {}))
    g = np.random.default_rng(seed)
    E, M, K, F = s["n_state"], s["n_mels"], s["kernel"], 4 * s["n_state"]

    def w(*shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (g.standard_normal(shape) * (scale if scale is not None else 1.0 / np.sqrt(fan_in))).astype(np.float32)

    st = {
        "encoder.conv1.weight": w(E, M, 3),
        "encoder.conv1.bias": w(E, scale=0.1),
        "encoder.conv2.weight": w(E, E, 3),
        "encoder.conv2.bias": w(E, scale=0.1),
    }
    for i in range(s["n_layer"]):
        p = f"encoder.blocks.{i}."
        st.update({
            p + "attn.query.weight": w(E, E), p + "attn.query.bias": w(E, scale=0.1),
            p + "attn.key.weight": w(E, E),
            p + "attn.value.weight": w(E, E), p + "attn.value.bias": w(E, scale=0.1),
            p + "attn.out.weight": w(E, E), p + "attn.out.bias": w(E, scale=0.1),
            p + "attn.fsmn_block.weight": w(E, 1, K, scale=0.2),
            p + "attn_ln.weight": (1.0 + 0.1 * g.standard_normal(E)).astype(np.float32),
            p + "attn_ln.bias": w(E, scale=0.1),
            p + "mlp.0.weight": w(F, E), p + "mlp.0.bias": w(F, scale=0.1),
            p + "mlp.2.weight": w(E, F), p + "mlp.2.bias": w(E, scale=0.1),
            p + "mlp_ln.weight": (1.0 + 0.1 * g.standard_normal(E)).astype(np.float32),
            p + "mlp_ln.bias": w(E, scale=0.1),
        })
    # Large enough that tanh spreads over all three levels.
    st["quantizer._codebook.project_down.weight"] = w(s["fsq_dim"], E, scale=3.0 / np.sqrt(E))
    st["quantizer._codebook.project_down.bias"] = w(s["fsq_dim"], scale=0.1)
    return st


def write_s3_onnx(path: PathLike, state: Dict[str, np.ndarray]) -> Path:
    """``state`` as the real file's ONNX initializers and node names (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []
    counter = [3000]

    def init(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name))
        return name

    def anon(a: np.ndarray, op: str) -> str:
        counter[0] += 1
        return init(f"onnx::{op}_{counter[0]}", a)

    x = "mel"
    nodes.append(helper.make_node("Conv", [x, init("onnx::Conv_2216", state["encoder.conv1.weight"]),
                                            init("onnx::Conv_2217", state["encoder.conv1.bias"])], ["/conv1/Conv_out"],
                                  name="/conv1/Conv", pads=[1, 1], strides=[2], kernel_shape=[3]))
    nodes.append(helper.make_node("Gelu", ["/conv1/Conv_out"], ["/gelu1"], name="/Gelu"))
    nodes.append(helper.make_node("Conv", ["/gelu1", init("onnx::Conv_2218", state["encoder.conv2.weight"]),
                                           init("onnx::Conv_2219", state["encoder.conv2.bias"])], ["/conv2/Conv_out"],
                                  name="/conv2/Conv", pads=[1, 1], strides=[2], kernel_shape=[3]))
    x = "/conv2/Conv_out"
    i = 0
    while f"encoder.blocks.{i}.attn.query.weight" in state:
        p, b = f"encoder.blocks.{i}.", f"/blocks.{i}"

        def ln(mod: str, inp: str) -> str:
            out = f"{b}/{mod}/LayerNormalization_out"
            nodes.append(helper.make_node("LayerNormalization", [inp, init(f"encoders.blocks.{i}.{mod}.weight", state[p + mod + ".weight"]),
                                                                 init(f"encoders.blocks.{i}.{mod}.bias", state[p + mod + ".bias"])],
                                          [out], name=f"{b}/{mod}/LayerNormalization"))
            return out

        def linear(mod: str, key: str, inp: str) -> str:
            out = f"{b}/{mod}/MatMul_out"
            nodes.append(helper.make_node("MatMul", [inp, anon(state[p + key + ".weight"].T, "MatMul")], [out],
                                          name=f"{b}/{mod}/MatMul"))
            if p + key + ".bias" in state:
                nodes.append(helper.make_node("Add", [init(f"encoders.blocks.{i}.{key}.bias", state[p + key + ".bias"]), out],
                                              [f"{b}/{mod}/Add_out"], name=f"{b}/{mod}/Add"))
                out = f"{b}/{mod}/Add_out"
            return out

        h = ln("attn_ln", x)
        q = linear("attn/query", "attn.query", h)
        k = linear("attn/key", "attn.key", h)
        v = linear("attn/value", "attn.value", h)
        nodes.append(helper.make_node("Conv", [v, anon(state[p + "attn.fsmn_block.weight"], "Conv")], [f"{b}/fsmn_out"],
                                      name=f"{b}/attn/fsmn_block/Conv", group=state[p + "attn.fsmn_block.weight"].shape[0]))
        nodes.append(helper.make_node("MatMul", [q, k], [f"{b}/qk"], name=f"{b}/attn/MatMul_qk"))
        o = linear("attn/out", "attn.out", f"{b}/qk")
        nodes.append(helper.make_node("Sum", [x, o, f"{b}/fsmn_out"], [f"{b}/res1"], name=f"{b}/Sum"))
        h = ln("mlp_ln", f"{b}/res1")
        h = linear("mlp/mlp.0", "mlp.0", h)
        nodes.append(helper.make_node("Gelu", [h], [f"{b}/gelu"], name=f"{b}/mlp/mlp.1/Gelu"))
        h = linear("mlp/mlp.2", "mlp.2", f"{b}/gelu")
        nodes.append(helper.make_node("Add", [f"{b}/res1", h], [f"{b}/res2"], name=f"{b}/Add_res"))
        x = f"{b}/res2"
        i += 1
    nodes.append(helper.make_node("MatMul", [x, init("onnx::MatMul_2536", state["quantizer._codebook.project_down.weight"].T)],
                                  ["/quantizer/MatMul_out"], name="/quantizer/project_down/MatMul"))
    nodes.append(helper.make_node("Add", ["/quantizer/MatMul_out", init("quantizer.project_in.bias",
                                                                         state["quantizer._codebook.project_down.bias"])],
                                  ["indices"], name="/quantizer/project_down/Add"))
    graph = helper.make_graph(nodes, "s3tokenizer_v2_tiny",
                              [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 128, None])],
                              [helper.make_tensor_value_info("indices", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_campplus_onnx(path: PathLike, seed: int = 1, n_bins: int = 80, hidden: int = 32, dim: int = 192) -> Path:
    """A runnable CAM++ stand-in: input ``feats`` [1, T, n_bins] -> ``embs`` [1, dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(seed)

    def w(*shape):
        return numpy_helper.from_array((g.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))

    inits = []
    for name, a in [("c1.w", w(hidden, n_bins, 3)), ("c1.b", w(hidden)), ("c2.w", w(hidden, hidden, 3)), ("c2.b", w(hidden)),
                    ("fc.w", w(hidden, dim)), ("fc.b", w(dim))]:
        a.name = name
        inits.append(a)
    nodes = [
        helper.make_node("Transpose", ["feats"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["t", "c1.w", "c1.b"], ["h1"], pads=[1, 1], kernel_shape=[3]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["h2"], pads=[2, 2], dilations=[2], kernel_shape=[3]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc.w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.b"], ["embs"]),
    ]
    graph = helper.make_graph(nodes, "campplus_tiny", [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, None, n_bins])],
                              [helper.make_tensor_value_info("embs", TensorProto.FLOAT, [1, dim])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def add_voice_assets(ckpt_dir: PathLike, seed: int = 0, s3: bool = True, campplus: bool = True,
                     sizes: Optional[Dict[str, int]] = None) -> Path:
    """Write ``assets/token2wav/{speech_tokenizer_v2_25hz,campplus}.onnx`` into a checkpoint."""
    root = Path(ckpt_dir) / "assets" / "token2wav"
    root.mkdir(parents=True, exist_ok=True)
    if s3:
        write_s3_onnx(root / "speech_tokenizer_v2_25hz.onnx", s3_state(sizes, seed))
    if campplus:
        write_campplus_onnx(root / "campplus.onnx", seed + 1)
    return root


def tone(seconds: float, f0: float = 180.0, seed: int = 0) -> np.ndarray:
    """A voiced test recording at 16 kHz: a tone with a slow tremolo and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)

