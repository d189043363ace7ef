"""minicpm-quantize: per-tensor types, values, file layout, logits and errors.

A tiny Qwen3 checkpoint whose every row length is a multiple of 256 (hidden 256, FFN 768,
head_dim 64, 8 layers, untied output) is converted to F32 and quantized to every TYPE:

* the type of every tensor equals the table llama.cpp's llama-quantize produces (written out
  here by hand, not computed by the module under test);
* every tensor, dequantized by gguf-py (``gguf.quants.dequantize``, an implementation
  independent of ggml), is within a per-type relative RMS bound of the F32 original, and the
  tensors copied unchanged are byte-identical;
* the file size is the header plus the tensors' bytes computed from shapes and types;
* our runtime loads the file and its logits over a small prompt set are within a per-type
  bound of the transformers F32 logits; the mean KL divergence from the F32 distribution is
  printed and bounded.

A second tiny model (hidden 128, tied embeddings, 2 layers) exercises the fallbacks of rows
that 256 does not divide, F16 / BF16 inputs and requantization; a MiniCPM-V 4.5 layout with a
real vision tower checks that encoder tensors stay F16 unless ``encoder_type`` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as Q

import minicpm_cpp
import tiny_models
from minicpm_cpp import _core
from minicpm_cpp.convert import gguf_raw
from minicpm_cpp.convert.quantize import QUANT_TYPES, fallback_type, plan_types, quantize
from minicpm_cpp.errors import FileError, FormatError, InvalidArgumentError

# A few short prompts (chat format, CJK, code, digits); ids from the Hugging Face tokenizer.
PROMPTS = [
    "<|im_start|>user\nWhy is the sky blue? 天空为什么是蓝色的<|im_end|>\n<|im_start|>assistant\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "The 3 largest cities are 1) Tokyo, 2) Delhi and 3) Shanghai; population 37,400,068.",
]

BIG_LAYERS = 8
# llama.cpp's use_more_bits for 8 layers: the first and last eighth (0, 7) and every third
# layer from n/8 on, (i - 1) % 3 == 2 (3, 6).
BIG_MORE_BITS = {0, 3, 6, 7}

# Relative RMS error bound of one dequantized tensor, by the tensor's type (random Gaussian-like
# weights; observed values are about 2/3 of these).
RMS_BOUND = {
    Q.F32: 0.0,
    Q.F16: 5e-4,
    Q.BF16: 4e-3,
    Q.Q8_0: 8e-3,
    Q.Q6_K: 2.5e-2,
    Q.Q5_1: 5.5e-2,
    Q.Q5_0: 6.5e-2,
    Q.Q5_K: 4.5e-2,
    Q.Q4_1: 1.1e-1,
    Q.Q4_0: 1.3e-1,
    Q.Q4_K: 9e-2,
}

# Bounds on the logits against the F32 transformers reference, per TYPE: max|dlogit| / max|logit|
# over every position of every prompt, and the mean KL divergence KL(P_f32 || P_quantized) over
# those positions. A random 8-layer model is far more sensitive to weight noise than a trained
# one (its logits spread over several units and nothing averages the noise out), so the
# quantized figures are large in absolute terms; they are bounds at about 1.5x what we observe
# (see the printed figures), and their order by bits per weight is checked too.
LOGIT_BOUND = {
    "F32": 1e-4, "F16": 3e-3, "BF16": 2e-2, "Q8_0": 6e-2, "Q6_K": 0.15, "Q5_K_M": 0.25, "Q5_1": 0.28,
    "Q5_0": 0.3, "Q4_K_M": 0.45, "Q4_1": 0.55, "Q4_0": 0.6,
}
KL_BOUND = {
    "F32": 1e-9, "F16": 5e-5, "BF16": 2.5e-3, "Q8_0": 3e-2, "Q6_K": 0.2, "Q5_K_M": 0.5, "Q5_1": 0.5,
    "Q5_0": 0.6, "Q4_K_M": 1.5, "Q4_1": 2.0, "Q4_0": 2.2,
}

# Figures of test_round_trip, by TYPE: (bits per weight, logit error, mean KL).
FIGURES = {}

ALL_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16", "BF16", "F32"]

FILE_TYPE = {  # llama.cpp's LLAMA_FTYPE numbers
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_M": 15, "Q5_K_M": 17,
    "Q6_K": 18, "BF16": 32,
}


# ----------------------------------------------------------------------------------------------
# expected types, written out by hand


def _llm_names(n_layers: int, tied: bool):
    """(name, is_matrix) of every tensor of a converted Qwen3 LLM."""
    names = [("token_embd.weight", True), ("output_norm.weight", False)]
    if not tied:
        names.append(("output.weight", True))
    for i in range(n_layers):
        for suffix, matrix in (
            ("attn_norm", False), ("attn_q", True), ("attn_k", True), ("attn_v", True), ("attn_q_norm", False),
            ("attn_k_norm", False), ("attn_output", True), ("ffn_norm", False), ("ffn_gate", True),
            ("ffn_up", True), ("ffn_down", True),
        ):
            names.append((f"blk.{i}.{suffix}.weight", matrix))
    return names


def expected_big(qtype: str):
    """Types in the 8-layer model, whose every row length is a multiple of 256."""
    plain = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "Q8_0": Q.Q8_0, "Q6_K": Q.Q6_K,
             "F16": Q.F16, "BF16": Q.BF16, "F32": Q.F32}
    out = {}
    for name, matrix in _llm_names(BIG_LAYERS, tied=False):
        if not matrix:
            out[name] = Q.F32
        elif qtype in ("Q4_K_M", "Q5_K_M"):
            layer = int(name.split(".")[1]) if name.startswith("blk.") else None
            more = layer in BIG_MORE_BITS and (".attn_v." in name or ".ffn_down." in name)
            out[name] = Q.Q6_K if (name == "output.weight" or more) else (Q.Q4_K if qtype == "Q4_K_M" else Q.Q5_K)
        elif name == "output.weight" and qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
            out[name] = Q.Q6_K
        else:
            out[name] = plain[qtype]
    return out


def expected_small(qtype: str):
    """Types in the 2-layer model: hidden 128 (rows of 128 do not split into 256-blocks), FFN 256,
    tied embeddings (token_embd plays output.weight: Q6_K, or Q8_0 when 256 does not divide)."""
    out = {}
    for name, matrix in _llm_names(2, tied=True):
        if not matrix:
            out[name] = Q.F32
            continue
        row = 256 if ".ffn_down." in name else 128
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        if qtype == "Q4_K_M":
            if name == "token_embd.weight":
                out[name] = Q.Q8_0  # 128 % 256: output rule gives Q8_0
            elif ".attn_v." in name:
                out[name] = Q.Q8_0 if layer == 1 else Q.Q5_0  # Q6_K -> Q8_0, Q4_K -> Q5_0
            elif ".ffn_down." in name:
                out[name] = Q.Q6_K if layer == 1 else Q.Q4_K  # use_more_bits(1, 2)
            else:
                out[name] = Q.Q5_0  # Q4_K -> Q5_0
        elif qtype == "Q6_K":
            out[name] = Q.Q6_K if row == 256 else Q.Q8_0
        elif qtype == "Q4_0":
            out[name] = Q.Q8_0 if name == "token_embd.weight" else Q.Q4_0  # Q6_K -> Q8_0
        else:
            raise KeyError(qtype)
    return out


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    return tiny_models.make_qwen3(
        tmp_path_factory.mktemp("q-big"), layers=BIG_LAYERS, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=768
    )


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return tiny_models.make_qwen3(tmp_path_factory.mktemp("q-small"), tie=True, seed=3)


@pytest.fixture(scope="module")
def big_f32(big_dir, converted):
    return converted(big_dir, "f32")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("quantized")


@pytest.fixture(scope="module")
def prompt_ids(big_dir):
    from transformers import Qwen2TokenizerFast

    tok = Qwen2TokenizerFast.from_pretrained(str(big_dir))
    return [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]


@pytest.fixture(scope="module")
def reference_logits():
    """``get(hf_dir, prompt_ids)``: F32 transformers logits [n_tokens, n_vocab] per prompt."""
    cache = {}

    def get(hf_dir, prompts):
        import torch

        key = str(hf_dir)
        if key not in cache:
            model = tiny_models.load_reference_llm(hf_dir)
            with torch.no_grad():
                cache[key] = [model(torch.tensor([ids])).logits[0].double().numpy() for ids in prompts]
        return cache[key]

    return get


def _quiet(msg: str) -> None:
    pass


def _quantize(src, dst, qtype, **kw):
    kw.setdefault("threads", 2)
    return quantize(src, dst, qtype, force=True, progress=False, log=_quiet, **kw)


def _tensors(path):
    """name -> (ne, ggml type, raw bytes as a uint8 view) of a GGUF file."""
    g = gguf_raw.RawGGUF(Path(path))
    out = {}
    for t in g.tensors:
        qt = Q(t.ggml_type)
        block, size = gguf.GGML_QUANT_SIZES[qt]
        rows = int(np.prod(t.ne[1:], dtype=np.int64))
        nbytes = rows * t.ne[0] // block * size
        out[t.name] = (t.ne, qt, g.map[g.data_start + t.offset : g.data_start + t.offset + nbytes].reshape(rows, -1))
    return g, out


def _as_f32(ne, qt, raw) -> np.ndarray:
    if qt == Q.F32:
        return raw.view(np.float32).reshape(-1, ne[0])
    if qt == Q.F16:
        return raw.view(np.float16).astype(np.float32).reshape(-1, ne[0])
    return gguf.quants.dequantize(np.asarray(raw), qt).reshape(-1, ne[0])


def _rel_rms(ne, qt, raw, ref_qt, ref_raw, rows_per_chunk: int = 8192) -> float:
    """||dequantized - reference|| / ||reference|| over all rows (in row chunks)."""
    err = ref = 0.0
    for a in range(0, raw.shape[0], rows_per_chunk):
        r = _as_f32(ne, ref_qt, ref_raw[a : a + rows_per_chunk])
        g = _as_f32(ne, qt, raw[a : a + rows_per_chunk])
        err += float(np.square(g - r, dtype=np.float64).sum())
        ref += float(np.square(r, dtype=np.float64).sum())
    return (err / ref) ** 0.5 if ref else err**0.5


def _check_values(src_path, out_path, expected_types):
    """Every tensor of ``out_path`` against ``src_path`` (F32): relative RMS error per type."""
    _, src = _tensors(src_path)
    _, out = _tensors(out_path)
    assert set(out) == set(src)
    worst = {}
    for name, (ne, qt, raw) in out.items():
        sne, sqt, sraw = src[name]
        assert ne == sne, name
        assert qt == expected_types.get(name, qt), name
        if qt == sqt:
            assert np.array_equal(raw, sraw), f"{name}: copied tensor differs"
            continue
        rel = _rel_rms(ne, qt, raw, sqt, sraw)
        worst[qt] = max(worst.get(qt, 0.0), rel)
        assert rel <= RMS_BOUND[qt], f"{name} ({qt.name}): relative RMS error {rel:.3g} > {RMS_BOUND[qt]}"
    return worst


def _expected_size(path, types_and_shapes):
    """Header (from the file's tensor-info table) plus every tensor's bytes, each aligned."""
    g = gguf_raw.RawGGUF(Path(path))
    total = 0
    for ne, qt in types_and_shapes:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        n = int(np.prod(ne[1:], dtype=np.int64)) * ne[0] // block * size
        total += n + (-n % g.alignment)
    assert g.data_start % g.alignment == 0
    return g.data_start + total


def _our_logits(path, prompts):
    # one thread: on a loaded 2-core machine ggml's thread barrier makes 2 threads far slower
    model = minicpm_cpp.Model(path, device="cpu", n_threads=1)
    out = []
    for ids in prompts:
        s = minicpm_cpp.Session(model, n_ctx=128, n_batch=512)
        rows = []
        for t in ids:
            s.prefill(tokens=[t])
            rows.append(s.logits().astype(np.float64))
        out.append(np.stack(rows))
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _logit_stats(ours, ref):
    rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, ref))
    kls = []
    for a, b in zip(ours, ref):
        lp, lq = _log_softmax(b), _log_softmax(a)
        kls.extend((np.exp(lp) * (lp - lq)).sum(axis=-1).tolist())
    return rel, float(np.mean(kls))


# ----------------------------------------------------------------------------------------------
# the main round trip


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_round_trip(qtype, big_dir, big_f32, out_dir, prompt_ids, reference_logits):
    dst = out_dir / f"big-{qtype}.gguf"
    res = _quantize(big_f32, dst, qtype.lower() if qtype == "Q4_K_M" else qtype)
    expected = expected_big(qtype)
    assert {k: v for k, v in res.types.items()} == expected

    worst = _check_values(big_f32, dst, expected)

    _, out = _tensors(dst)
    assert dst.stat().st_size == _expected_size(dst, [(out[n][0], expected[n]) for n in out])
    g = gguf_raw.RawGGUF(dst)
    assert g.get("general.file_type") == FILE_TYPE[qtype]
    assert g.get("general.quantization_version") == 2
    src = gguf_raw.RawGGUF(big_f32)
    assert {k: v for k, v in g.kv.items() if k not in ("general.file_type", "general.quantization_version")} == {
        k: v for k, v in src.kv.items() if k not in ("general.file_type", "general.quantization_version")
    }

    ours = _our_logits(dst, prompt_ids)
    rel, kl = _logit_stats(ours, reference_logits(big_dir, prompt_ids))
    errs = ", ".join(f"{q.name} {e:.2e}" for q, e in sorted(worst.items(), key=lambda kv: kv[0].name)) or "none (all copied)"
    print(
        f"\n{qtype}: {res.bpw_out:.2f} bpw, logits max|d|/max = {rel:.3e}, mean KL = {kl:.3e}; "
        f"worst tensor rel RMS: {errs}"
    )
    FIGURES[qtype] = (res.bpw_out, rel, kl)
    assert rel <= LOGIT_BOUND[qtype]
    assert kl <= KL_BOUND[qtype]


def test_figures_follow_bits_per_weight():
    """More bits, smaller divergence: the K mixes sit where their size says."""
    if set(FIGURES) != set(ALL_TYPES):
        pytest.skip("needs every test_round_trip case in this run")
    print("\nTYPE     bpw    max|dlogit|/max  mean KL")
    for q, (bpw, rel, kl) in sorted(FIGURES.items(), key=lambda kv: kv[1][0]):
        print(f"{q:<7} {bpw:6.2f}  {rel:.3e}        {kl:.3e}")
    kl = {q: f[2] for q, f in FIGURES.items()}
    assert kl["F32"] < kl["F16"] < kl["BF16"] < kl["Q8_0"] < kl["Q6_K"] < kl["Q5_K_M"] < kl["Q4_K_M"] < kl["Q4_0"]
    assert kl["Q4_K_M"] < kl["Q4_1"] and kl["Q5_K_M"] < kl["Q5_0"]


def test_gguf_py_reads_the_output(big_f32, out_dir):
    """gguf-py's own reader agrees on the metadata, the tensor table and the data offsets."""
    dst = out_dir / "big-Q4_K_M.gguf"  # written by test_round_trip, unless run alone
    if not dst.exists():
        _quantize(big_f32, dst, "Q4_K_M")
    r = gguf.GGUFReader(str(dst))
    assert r.fields["general.file_type"].contents() == 15
    assert r.fields["general.quantization_version"].contents() == 2
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == tiny_models.VOCAB_SIZE
    expected = expected_big("Q4_K_M")
    assert {t.name: Q(int(t.tensor_type)) for t in r.tensors} == expected
    g = gguf_raw.RawGGUF(dst)
    assert [t.data_offset for t in r.tensors] == [g.data_start + t.offset for t in g.tensors]


# ----------------------------------------------------------------------------------------------
# fallbacks, inputs of other types, requantization


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q6_K", "Q4_0"])
def test_fallbacks_and_tied_embeddings(qtype, small_dir, converted, out_dir):
    src = converted(small_dir, "f32")
    dst = out_dir / f"small-{qtype}.gguf"
    res = _quantize(src, dst, qtype)
    assert res.types == expected_small(qtype)
    _check_values(src, dst, expected_small(qtype))


def test_small_model_logits(small_dir, converted, out_dir, reference_logits):
    from transformers import Qwen2TokenizerFast

    tok = Qwen2TokenizerFast.from_pretrained(str(small_dir))
    prompts = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS[:2]]
    dst = out_dir / "small-logits-Q4_K_M.gguf"
    _quantize(converted(small_dir, "f32"), dst, "Q4_K_M")
    rel, kl = _logit_stats(_our_logits(dst, prompts), reference_logits(small_dir, prompts))
    print(f"\nsmall Q4_K_M (fallback mix): logits max|d|/max = {rel:.3e}, mean KL = {kl:.3e}")
    assert rel <= LOGIT_BOUND["Q4_K_M"] and kl <= KL_BOUND["Q4_K_M"]


@pytest.mark.parametrize("intype", ["f16", "bf16"])
def test_f16_and_bf16_inputs(intype, small_dir, converted, out_dir):
    src = converted(small_dir, intype)
    dst = out_dir / f"small-from-{intype}.gguf"
    _quantize(src, dst, "Q8_0")
    _, out = _tensors(dst)
    _, orig = _tensors(converted(small_dir, "f32"))
    for name, (ne, qt, raw) in out.items():
        rel = _rel_rms(ne, qt, raw, orig[name][1], orig[name][2])
        bound = 0.0 if qt == Q.F32 else RMS_BOUND[Q.Q8_0] + (RMS_BOUND[Q.BF16] if intype == "bf16" else RMS_BOUND[Q.F16])
        assert rel <= bound, name


def test_requantize(small_dir, converted, out_dir):
    q8 = out_dir / "small-q8.gguf"
    _quantize(converted(small_dir, "f32"), q8, "Q8_0")
    with pytest.raises(InvalidArgumentError, match="already quantized.*allow-requantize"):
        _quantize(q8, out_dir / "small-rq.gguf", "Q4_0")
    assert not (out_dir / "small-rq.gguf").exists()
    res = _quantize(q8, out_dir / "small-rq.gguf", "Q4_0", allow_requantize=True)
    assert res.types == expected_small("Q4_0")
    # Same type: copied byte for byte, no requantization needed.
    same = _quantize(q8, out_dir / "small-same.gguf", "Q8_0")
    _, a = _tensors(q8)
    _, b = _tensors(same.path)
    assert all(np.array_equal(a[n][2], b[n][2]) for n in a)


# ----------------------------------------------------------------------------------------------
# encoders


def test_vision_tensors_stay_f16_unless_asked(tiny_minicpmv45_vision_dir, converted, out_dir):
    src = converted(tiny_minicpmv45_vision_dir, "f16")
    _, orig = _tensors(src)
    enc = [n for n in orig if n.startswith(("v.", "resampler."))]
    assert len(enc) > 20

    dst = out_dir / "v45-q4km.gguf"
    res = _quantize(src, dst, "Q4_K_M")
    for n in enc:
        assert res.types[n] == orig[n][1], n  # unchanged: F16 matrices, F32 vectors
    assert res.types["output.weight"] == Q.Q6_K and res.types["blk.0.attn_q.weight"] == Q.Q4_K
    _, out = _tensors(dst)
    for n in enc:
        assert np.array_equal(out[n][2], orig[n][2]), n

    dst8 = out_dir / "v45-q4km-enc-q8.gguf"
    res8 = _quantize(src, dst8, "Q4_K_M", encoder_type="q8_0")
    keep = ("v.patch_embd.weight", "v.position_embd.weight", "resampler.query", "resampler.pos_embed_k")
    for n in enc:
        ne = orig[n][0]
        if n in keep or len(ne) < 2:
            assert res8.types[n] == orig[n][1], n
        else:
            assert res8.types[n] == Q.Q8_0, n
    assert res8.types["v.blk.0.attn_q.weight"] == Q.Q8_0 and res8.types["resampler.kv.weight"] == Q.Q8_0

    # The vision tower runs from both files; Q8_0 stays close to F16.
    rng = np.random.default_rng(0)
    px = rng.uniform(-1, 1, size=(3, 112, 126)).astype(np.float32)
    ref = _core.VisionModel(str(src), "cpu").encode([px])
    same = _core.VisionModel(str(dst), "cpu").encode([px])
    np.testing.assert_array_equal(same, ref)
    q8 = _core.VisionModel(str(dst8), "cpu").encode([px])
    rel = float(np.abs(q8 - ref).max() / np.abs(ref).max())
    print(f"\nvision encoder Q8_0 vs F16: max|d|/max = {rel:.2e}")
    assert rel < 5e-2


def test_audio_tensors_stay_f16(tiny_minicpmo45_dir, converted, out_dir):
    """The Whisper encoder and projector of MiniCPM-o (a.*, mm.a.*) are encoder matrices: F16 in a
    quantized file unless --encoder-type says otherwise, as the vision tower."""
    src = converted(tiny_minicpmo45_dir, "f16")
    _, orig = _tensors(src)
    enc = [n for n in orig if n.startswith(("a.", "mm.a."))]
    assert len(enc) > 10
    res = _quantize(src, out_dir / "o45-q4km.gguf", "Q4_K_M")
    for n in enc:
        assert res.types[n] == orig[n][1], n
    assert res.types["blk.0.attn_q.weight"] not in (Q.F16, Q.F32)


def test_encoder_k_quant_falls_back(tiny_minicpmv45_vision_dir, converted):
    """Vision rows (64, 128) do not split into 256-blocks: Q4_K becomes Q5_0 there."""
    types = plan_types(converted(tiny_minicpmv45_vision_dir, "f16"), "Q4_K_M", encoder_type="Q4_K")
    assert types["v.blk.0.attn_q.weight"] == Q.Q5_0  # row 64
    assert types["v.blk.0.ffn_down.weight"] == Q.Q5_0  # row 128
    assert types["resampler.kv.weight"] == Q.Q5_0  # row 64 (vision hidden)
    assert types["resampler.attn.q.weight"] == Q.Q4_K  # row 256 (LLM hidden)


# ----------------------------------------------------------------------------------------------
# rules without files


def test_fallback_table():
    assert fallback_type(Q.Q4_K, 512) == (Q.Q4_K, None)
    assert fallback_type(Q.Q4_K, 96)[0] == Q.Q5_0
    assert fallback_type(Q.Q5_K, 96)[0] == Q.Q5_1
    assert fallback_type(Q.Q6_K, 96)[0] == Q.Q8_0
    assert fallback_type(Q.Q4_K, 48)[0] == Q.F16  # not even 32 divides
    assert fallback_type(Q.Q4_0, 48)[0] == Q.F16
    assert fallback_type(Q.Q8_0, 64) == (Q.Q8_0, None)


def test_type_names_and_file_types():
    assert set(QUANT_TYPES) == set(ALL_TYPES)
    for name, ft in FILE_TYPE.items():
        assert QUANT_TYPES[name].file_type == ft


# ----------------------------------------------------------------------------------------------
# the binding


def test_binding_matches_reference_and_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    # Q8_0: gguf-py's reference quantizer gives the same bytes.
    np.testing.assert_array_equal(_core.quantize_rows(int(Q.Q8_0), x), gguf.quants.quantize(x, Q.Q8_0))
    for qt in (Q.Q4_K, Q.Q6_K, Q.Q5_0):
        whole = _core.quantize_rows(int(qt), x)
        assert whole.shape == (64, _core.quant_row_size(int(qt), 512))
        parts = np.empty_like(whole)
        _core.quantize_rows(int(qt), x[:20], parts[:20])
        _core.quantize_rows(int(qt), x[20:], parts[20:])
        np.testing.assert_array_equal(parts, whole)
    assert _core.quant_row_size(int(Q.Q4_K), 256) == 144
    assert not _core.quant_requires_imatrix(int(Q.Q4_K))
    assert _core.quant_requires_imatrix(int(Q.IQ2_XXS))


def test_binding_checks_its_arguments():
    x = np.zeros((4, 256), dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="float32"):
        _core.quantize_rows(int(Q.Q8_0), x.astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        _core.quantize_rows(int(Q.Q8_0), np.zeros((256, 4), dtype=np.float32).T)
    with pytest.raises(InvalidArgumentError, match="block size"):
        _core.quantize_rows(int(Q.Q4_K), np.zeros((4, 96), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        _core.quantize_rows(int(Q.Q8_0), np.zeros((2, 2, 32), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="bytes"):
        _core.quantize_rows(int(Q.Q8_0), x, np.zeros(10, dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match="importance matrix"):
        _core.quantize_rows(int(Q.IQ2_XXS), x)
    with pytest.raises(InvalidArgumentError, match="unknown ggml type"):
        _core.quantize_rows(999, x)


# ----------------------------------------------------------------------------------------------
# errors and the command line


def test_errors(small_dir, converted, tmp_path):
    src = converted(small_dir, "f32")
    with pytest.raises(FileError, match="not found"):
        _quantize(tmp_path / "missing.gguf", tmp_path / "o.gguf", "Q4_0")
    with pytest.raises(InvalidArgumentError, match="Q4_K_M"):
        _quantize(src, tmp_path / "o.gguf", "Q3_XYZ")
    with pytest.raises(InvalidArgumentError, match="encoder type"):
        _quantize(src, tmp_path / "o.gguf", "Q4_0", encoder_type="Q4_K_M")
    with pytest.raises(InvalidArgumentError, match="is the input"):
        _quantize(src, src, "Q4_0")
    text = tmp_path / "text.gguf"
    text.write_text("hello, not a model\n")
    with pytest.raises(FormatError, match="not a GGUF"):
        _quantize(text, tmp_path / "o.gguf", "Q4_0")
    trunc = tmp_path / "trunc.gguf"
    with open(src, "rb") as f, open(trunc, "wb") as g:
        g.write(f.read(src.stat().st_size // 2))
    with pytest.raises(FormatError, match="truncated"):
        _quantize(trunc, tmp_path / "o.gguf", "Q4_0")
    with open(src, "rb") as f, open(trunc, "wb") as g:
        g.write(f.read(4000))  # inside the tokenizer metadata
    with pytest.raises(FormatError, match="truncated"):
        _quantize(trunc, tmp_path / "o.gguf", "Q4_0")
    exists = tmp_path / "exists.gguf"
    exists.write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        quantize(src, exists, "Q4_0", progress=False, log=_quiet)
    with pytest.raises(InvalidArgumentError, match="threads"):
        _quantize(src, tmp_path / "o.gguf", "Q4_0", threads=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf", "text.gguf", "trunc.gguf"]


def _run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-m", "minicpm_cpp.quantize", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_cli(small_dir, converted, tmp_path):
    src = converted(small_dir, "f32")
    out = tmp_path / "cli.gguf"
    r = _run_cli(src, out, "q6_k", "--threads", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Q6_K" in r.stderr and "bits/weight" in r.stderr and "MiB" in r.stderr
    assert gguf_raw.RawGGUF(out).get("general.file_type") == 18

    r = _run_cli(src, tmp_path / "x.gguf", "Q9_9")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicpm-quantize: error:") and "Q4_K_M" in lines[0]

    r = _run_cli(tmp_path / "nope.gguf", tmp_path / "x.gguf", "Q4_0")
    assert r.returncode != 0 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = _run_cli(src, out, "Q4_0")  # exists, no --force
    assert r.returncode != 0 and "--force" in r.stderr


def test_convert_with_a_quantized_outtype(small_dir, converted, out_dir, tmp_path):
    """minicpm-convert --outtype q4_k_m: the same file as converting, then quantizing."""
    from minicpm_cpp.convert import convert

    direct = convert(small_dir, tmp_path / "direct.gguf", "q4_k_m", progress=False, log=_quiet)
    two_step = out_dir / "small-two-step-Q4_K_M.gguf"
    _quantize(converted(small_dir, "f32"), two_step, "Q4_K_M")
    assert direct.read_bytes() == two_step.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.gguf"]  # no intermediate left


def test_binding_releases_the_gil():
    """Python keeps running while another thread quantizes (so a thread pool runs in parallel):
    the longest pause of the main thread stays far below the duration of the call."""
    import threading
    import time

    x = np.random.default_rng(2).standard_normal((8192, 1024)).astype(np.float32)
    span = {}

    def work():
        t0 = time.perf_counter()
        _core.quantize_rows(int(Q.Q4_K), x)
        span["call"] = (t0, time.perf_counter())

    worker = threading.Thread(target=work)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    t0, t1 = span["call"]
    inside = np.array([t0] + [t for t in stamps if t0 <= t <= t1] + [t1])
    longest = float(np.diff(inside).max())
    assert longest < (t1 - t0) / 3, f"main thread paused {longest:.3f} s of a {t1 - t0:.3f} s call"


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K_M"])
def test_cpu_repack_matches_mapped_weights(qtype, big_dir, big_f32, out_dir, prompt_ids, reference_logits):
    """The CPU's repacked (interleaved) copies of quantized matrices give the logits of the
    mapped weights, for a whole-prompt batch (matrix-matrix kernels) and token by token
    (matrix-vector kernels), within the quantized type's bound of the reference."""
    dst = out_dir / f"repack-{qtype}.gguf"
    _quantize(big_f32, dst, qtype.lower() if qtype == "Q4_K_M" else qtype)
    packed = minicpm_cpp.Model(dst, device="cpu", n_threads=1, cpu_repack=True)
    mapped = minicpm_cpp.Model(dst, device="cpu", n_threads=1, cpu_repack=False)
    assert mapped.info["repacked_bytes"] == 0
    if packed.info["repacked_bytes"] == 0:
        pytest.skip("this ggml CPU build repacks none of this file's types")
    assert packed.info["repacked_bytes"] < packed.info["weight_bytes"]
    ids = prompt_ids[0]
    ref = reference_logits(big_dir, prompt_ids)[0]
    diffs = []
    for mode in ("batch", "tokens"):
        got = {}
        for name, model in (("packed", packed), ("mapped", mapped)):
            s = minicpm_cpp.Session(model, n_ctx=128, n_batch=512)
            if mode == "batch":
                s.prefill(tokens=ids)
                got[name] = s.logits().astype(np.float64)
            else:
                for t in ids[:8]:
                    s.prefill(tokens=[t])
                got[name] = s.logits().astype(np.float64)
        row = ref[-1] if mode == "batch" else ref[7]
        d = np.abs(got["packed"] - got["mapped"]).max() / np.abs(got["mapped"]).max()
        diffs.append(d)
        assert np.abs(got["packed"] - row).max() / np.abs(row).max() <= LOGIT_BOUND[qtype]
    print(f"\n{qtype}: {packed.info['repacked_bytes']} bytes repacked; packed vs mapped logits {diffs}")
    # The two paths round differently (interleaved blocks, another accumulation order): on this
    # random model 1-2% of the largest logit, an order of magnitude below the quantization error.
    assert max(diffs) <= 5e-2
