"""The converter's vision part (SigLIP tower + resampler), checked against the checkpoints it reads.

The tiny vision checkpoints (tiny_models.make_minicpmv45 / make_minicpmv26) are converted and read
back with gguf.GGUFReader: every vision/resampler tensor is compared with the Hugging Face weight
(the q/k/v split of in_proj, the transposed resampler.proj, the 2D sin-cos table, F16/F32
rounding), the dropped last layer must be absent, every metadata key is checked against
config.json, and the --mmproj and --llm-only outputs are checked. A functional check rebuilds the
PyTorch reference from the GGUF tensors alone and compares its embeddings with the reference
loaded from the checkpoint, so a layout mistake that a per-tensor check could share with the
converter still shows. The reference itself is checked against the official code's facts
(batched == per-slice, NaViT buckets, sin-cos layout).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFReader  # noqa: E402

import ref_minicpmv_vision as ref  # noqa: E402
import tiny_models  # noqa: E402
from minicpm_cpp.convert import ConvertError, convert  # noqa: E402
from minicpm_cpp.convert import hf_to_gguf, names, vision  # noqa: E402
from minicpm_cpp.convert.checkpoint import open_checkpoint  # noqa: E402

T = names.tensor_name
K = names.key_name


def quiet(msg: str) -> None:
    pass


class Notes(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


def read(path: Path):
    """(fields name -> python value, tensors name -> ReaderTensor)."""
    r = GGUFReader(str(path))
    fields = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        fields[f.name] = f.contents()
    return fields, {t.name: t for t in r.tensors}


def hf_state(hf_dir: Path):
    return {k: v.float().numpy() for k, v in tiny_models.load_state_dict(hf_dir).items()}


def config(hf_dir: Path):
    return json.loads((Path(hf_dir) / "config.json").read_text())


def as_written(t) -> np.ndarray:
    """The tensor's values as float32, numpy order (= reversed ggml ne)."""
    assert t.tensor_type in (Q.F32, Q.F16), t.tensor_type
    return np.asarray(t.data).astype(np.float32).reshape([int(d) for d in reversed(list(t.shape))])


def rounded(x: np.ndarray, qtype) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32) if qtype == Q.F16 else x.astype(np.float32)


def expected_vision(hf_dir: Path):
    """GGUF name -> (numpy array as it must be written, ggml ne) from the HF weights."""
    cfg = config(hf_dir)
    st = hf_state(hf_dir)
    vc = cfg["vision_config"]
    n_layer = vc["num_hidden_layers"] - (1 if cfg["drop_vision_last_layer"] else 0)
    d = cfg["hidden_size"]
    exp = {
        T("V_PATCH_EMBD"): st["vpm.embeddings.patch_embedding.weight"],
        T("V_PATCH_EMBD_BIAS"): st["vpm.embeddings.patch_embedding.bias"],
        T("V_POS_EMBD"): st["vpm.embeddings.position_embedding.weight"],
        T("V_POST_LN"): st["vpm.post_layernorm.weight"],
        T("V_POST_LN_BIAS"): st["vpm.post_layernorm.bias"],
    }
    per_layer = {
        "layer_norm1": "V_LN1",
        "layer_norm2": "V_LN2",
        "self_attn.q_proj": "V_ATTN_Q",
        "self_attn.k_proj": "V_ATTN_K",
        "self_attn.v_proj": "V_ATTN_V",
        "self_attn.out_proj": "V_ATTN_OUT",
        "mlp.fc1": "V_FFN_UP",  # Dv -> FFN: the up projection
        "mlp.fc2": "V_FFN_DOWN",
    }
    for il in range(n_layer):
        for hf, tid in per_layer.items():
            exp[T(tid, il)] = st[f"vpm.encoder.layers.{il}.{hf}.weight"]
            exp[T(tid + "_BIAS", il)] = st[f"vpm.encoder.layers.{il}.{hf}.bias"]
    w, b = st["resampler.attn.in_proj_weight"], st["resampler.attn.in_proj_bias"]
    for i, tid in enumerate(("RS_ATTN_Q", "RS_ATTN_K", "RS_ATTN_V")):
        exp[T(tid)] = w[i * d : (i + 1) * d]
        exp[T(tid + "_BIAS")] = b[i * d : (i + 1) * d]
    exp[T("RS_QUERY")] = st["resampler.query"]
    exp[T("RS_KV")] = st["resampler.kv_proj.weight"]
    exp[T("RS_ATTN_OUT")] = st["resampler.attn.out_proj.weight"]
    exp[T("RS_ATTN_OUT_BIAS")] = st["resampler.attn.out_proj.bias"]
    for norm, tid in (("ln_q", "RS_LN_Q"), ("ln_kv", "RS_LN_KV"), ("ln_post", "RS_LN_POST")):
        exp[T(tid)] = st[f"resampler.{norm}.weight"]
        exp[T(tid + "_BIAS")] = st[f"resampler.{norm}.bias"]
    exp[T("RS_PROJ")] = st["resampler.proj"].T
    exp[T("RS_POS_EMBED_K")] = ref.pos_embed_k_table(d, 70)
    return exp


def expected_type(name: str, arr: np.ndarray, outtype: str):
    if arr.ndim == 1 or name in (T("RS_QUERY"), T("RS_POS_EMBED_K")):
        return Q.F32
    return Q.F32 if outtype == "f32" else Q.F16


def check_vision_tensors(tensors, hf_dir: Path, outtype: str) -> None:
    exp = expected_vision(hf_dir)
    got = {n for n in tensors if n.startswith(("v.", "resampler."))}
    assert got == set(exp), f"extra {sorted(got - set(exp))}, missing {sorted(set(exp) - got)}"
    for name, arr in exp.items():
        t = tensors[name]
        assert [int(x) for x in t.shape] == list(reversed(arr.shape)), name
        qtype = expected_type(name, arr, outtype)
        assert t.tensor_type == qtype, f"{name}: {t.tensor_type.name}, expected {qtype.name}"
        np.testing.assert_array_equal(as_written(t), rounded(arr, qtype), err_msg=name)


def check_vision_metadata(fields, hf_dir: Path) -> None:
    cfg = config(hf_dir)
    vc = cfg["vision_config"]
    v = (cfg["architectures"][0][-1].lower(), f"{float(cfg['version']):.1f}")
    want = {
        K("CLIP_HAS_TEXT"): False,
        K("CLIP_HAS_VISION"): True,
        K("CLIP_HAS_MINICPMV_PROJ"): True,
        K("CLIP_PROJECTOR_TYPE"): "resampler",
        K("CLIP_MINICPMV_VERSION"): {("v", "4.5"): 6, ("v", "2.6"): 3, ("o", "2.6"): 4, ("o", "4.5"): 100045}[v],
        K("CLIP_MINICPMV_QUERY_NUM"): 64,
        K("CLIP_USE_GELU"): True,
        K("CLIP_V_IMAGE_SIZE"): cfg["image_size"],
        K("CLIP_V_PATCH_SIZE"): vc["patch_size"],
        K("CLIP_V_EMBEDDING_LENGTH"): vc["hidden_size"],
        K("CLIP_V_FEED_FORWARD_LENGTH"): vc["intermediate_size"],
        K("CLIP_V_PROJECTION_DIM"): 0,
        K("CLIP_V_HEAD_COUNT"): vc["num_attention_heads"],
        K("CLIP_V_BLOCK_COUNT"): vc["num_hidden_layers"] - (1 if cfg["drop_vision_last_layer"] else 0),
        K("CLIP_V_IMAGE_MEAN"): [0.5, 0.5, 0.5],
        K("CLIP_V_IMAGE_STD"): [0.5, 0.5, 0.5],
        K("MINICPM_V_MAX_SLICE_NUMS"): cfg["slice_config"]["max_slice_nums"],
        K("MINICPM_V_SCALE_RESOLUTION"): cfg["slice_config"]["scale_resolution"],
        K("MINICPM_V_USE_IMAGE_ID"): cfg["use_image_id"],
        K("MINICPM_V_SLICE_MODE"): "minicpmv-2.6",
        K("MINICPM_RS_HEAD_COUNT"): cfg["hidden_size"] // 128,
        K("MINICPM_RS_KIND"): "3d" if v == ("v", "4.5") else "2d",
    }
    for key, value in want.items():
        assert key in fields, key
        assert fields[key] == value, f"{key}: {fields[key]!r}, expected {value!r}"
    assert fields[K("CLIP_V_LN_EPS")] == pytest.approx(1e-6)
    assert fields[K("MINICPM_RS_LN_EPS")] == pytest.approx(1e-6)


# ---------------------------------------------------------------------------------------------
# The reference: facts of the official code
# ---------------------------------------------------------------------------------------------


def test_navit_buckets_are_the_rescaled_grid():
    """bucket = floor(70 k / n) (llama.cpp's formula) except where k/n sits on a bucket edge."""
    for n in (1, 2, 3, 5, 7, 10, 14, 32, 35, 64, 70, 71, 100):
        ids = ref.navit_position_ids(n, 1)
        buckets = (ids // 70).numpy()
        floor = np.floor(70.0 * np.arange(n) / n).astype(np.int64)
        diff = np.nonzero(buckets != floor)[0]
        for k in diff:  # only float32 rounding at an exact edge may differ, by one
            assert abs(int(buckets[k]) - int(floor[k])) == 1 and (70 * k) % n == 0, (n, k)
    ids = ref.navit_position_ids(2, 3)
    assert ids.tolist() == [0, 23, 46, 35 * 70, 35 * 70 + 23, 35 * 70 + 46]


def test_sincos_table_layout():
    d = 16
    table = ref.get_2d_sincos_pos_embed(d, (3, 5))  # [h, w, d]
    omega = 10000.0 ** (-np.arange(d // 4) / (d // 4))
    r, c = 2, 4
    e1 = lambda p: np.concatenate([np.sin(p * omega), np.cos(p * omega)])  # noqa: E731
    np.testing.assert_allclose(table[r, c], np.concatenate([e1(c), e1(r)]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vision.sincos_2d_table(d, 70), ref.pos_embed_k_table(d, 70))


def test_reference_per_slice_equals_padded_batch(tiny_minicpmv45_vision_dir):
    parts = tiny_models.load_reference_vision(tiny_minicpmv45_vision_dir)
    assert len(parts.vpm.encoder.layers) == 2  # 3 stored, drop_vision_last_layer
    g = torch.Generator().manual_seed(1)
    slices = [torch.rand(3, h * 14, w * 14, generator=g) * 2 - 1 for h, w in ((4, 6), (7, 3), (5, 5))]
    a = ref.vision_embeddings(parts, slices)
    b = ref.vision_embeddings_batched(parts, slices)
    assert a.shape == (3, 64, 256)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    stages = ref.resampler_stages(parts, ref.vit_features(parts, slices[0]), (4, 6))
    torch.testing.assert_close(stages["out"], a[0], rtol=1e-5, atol=1e-5)
    assert a.std() > 0.5, "tiny vision outputs should be well spread"


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v45_converted(tiny_minicpmv45_vision_dir, tmp_path_factory):
    """V4.5 checkpoint -> f16 model file + mmproj file, converted once."""
    d = tmp_path_factory.mktemp("vision-gguf")
    notes = Notes()
    out = convert(
        tiny_minicpmv45_vision_dir, d / "v45-f16.gguf", "f16", mmproj=d / "mmproj-v45.gguf", progress=False, log=notes
    )
    return out, d / "mmproj-v45.gguf", notes


@pytest.fixture(scope="module")
def v26_converted(tiny_minicpmv26_vision_dir, converted):
    return converted(tiny_minicpmv26_vision_dir, "f32")


def test_v45_tensors_and_metadata(v45_converted, tiny_minicpmv45_vision_dir):
    out, _, notes = v45_converted
    fields, tensors = read(out)
    assert fields[K("GENERAL_ARCHITECTURE")] == "qwen3"
    check_vision_tensors(tensors, tiny_minicpmv45_vision_dir, "f16")
    check_vision_metadata(fields, tiny_minicpmv45_vision_dir)
    # the third stored layer is dropped, as the reference does
    assert not [n for n in tensors if n.startswith("v.blk.2.")]
    assert any("drop_vision_last_layer" in n and "not exported" in n for n in notes)
    assert not [n for n in notes if n.startswith("skipped")]
    # the LLM part is there and unchanged
    assert T("LLM_TOKEN_EMBD") in tensors and T("LLM_ATTN_Q", 1) in tensors and "tokenizer.ggml.tokens" in fields


def test_v26_tensors_and_metadata(v26_converted, tiny_minicpmv26_vision_dir):
    fields, tensors = read(v26_converted)
    assert fields[K("GENERAL_ARCHITECTURE")] == "qwen2"
    check_vision_tensors(tensors, tiny_minicpmv26_vision_dir, "f32")
    check_vision_metadata(fields, tiny_minicpmv26_vision_dir)
    assert T("V_ATTN_Q", 1) in tensors  # drop_vision_last_layer false: both layers


def test_mmproj_file(v45_converted, tiny_minicpmv45_vision_dir):
    out, mm, _ = v45_converted
    fields, tensors = read(mm)
    main_fields, main_tensors = read(out)
    assert fields[K("GENERAL_ARCHITECTURE")] == "clip"
    assert fields["general.description"].startswith("image encoder for MiniCPM-V")
    assert fields[K("GENERAL_FILE_TYPE")] == 1
    assert not [k for k in fields if k.startswith(("tokenizer.", "qwen3."))]
    check_vision_metadata(fields, tiny_minicpmv45_vision_dir)
    check_vision_tensors(tensors, tiny_minicpmv45_vision_dir, "f16")
    assert len(tensors) == 3 + 2 * 16 + 2 + 18
    for name, t in tensors.items():
        np.testing.assert_array_equal(np.asarray(t.data), np.asarray(main_tensors[name].data))
    for key in fields:
        if key.startswith(("clip.", "minicpm.vision.", "minicpm.resampler.")):
            assert main_fields[key] == fields[key], key


def test_llm_only_with_mmproj_is_the_llama_cpp_pair(tiny_minicpmv26_vision_dir, v26_converted, tmp_path):
    """--llm-only leaves the vision part (tensors and keys) out; --mmproj holds exactly that part."""
    notes = Notes()
    out = convert(
        tiny_minicpmv26_vision_dir, tmp_path / "llm.gguf", "f32", llm_only=True, mmproj=tmp_path / "mm.gguf",
        progress=False, log=notes,
    )
    fields, tensors = read(out)
    mm_fields, mm_tensors = read(tmp_path / "mm.gguf")
    full_fields, full = read(v26_converted)
    assert not [n for n in tensors if n.startswith(("v.", "resampler."))]
    assert not [k for k in fields if k.startswith(("clip.", "minicpm.vision.", "minicpm.resampler."))]
    assert set(tensors) | set(mm_tensors) == set(full) and not set(tensors) & set(mm_tensors)
    for name in (T("LLM_TOKEN_EMBD"), T("LLM_ATTN_Q", 0), T("LLM_ATTN_Q_BIAS", 1), T("LLM_OUTPUT")):
        np.testing.assert_array_equal(np.asarray(tensors[name].data), np.asarray(full[name].data))
    assert {k: v for k, v in fields.items() if k != "general.name"} == {
        k: v for k, v in full_fields.items()
        if k != "general.name" and not k.startswith(("clip.", "minicpm.vision.", "minicpm.resampler."))
    }
    assert mm_fields[K("GENERAL_FILE_TYPE")] == 0  # all F32
    check_vision_tensors(mm_tensors, tiny_minicpmv26_vision_dir, "f32")
    assert any("--llm-only" in n for n in notes)


def test_gguf_tensors_reproduce_the_reference(v26_converted, tiny_minicpmv26_vision_dir):
    """Rebuild the reference from the GGUF alone (inverse mapping) and compare embeddings."""
    fields, tensors = read(v26_converted)
    w = {n: torch.from_numpy(as_written(t).copy()) for n, t in tensors.items()}
    cfg = config(tiny_minicpmv26_vision_dir)
    d = cfg["hidden_size"]
    state = {
        "vpm.embeddings.patch_embedding.weight": w[T("V_PATCH_EMBD")],
        "vpm.embeddings.patch_embedding.bias": w[T("V_PATCH_EMBD_BIAS")],
        "vpm.embeddings.position_embedding.weight": w[T("V_POS_EMBD")],
        "vpm.post_layernorm.weight": w[T("V_POST_LN")],
        "vpm.post_layernorm.bias": w[T("V_POST_LN_BIAS")],
        "resampler.query": w[T("RS_QUERY")],
        "resampler.kv_proj.weight": w[T("RS_KV")],
        "resampler.attn.in_proj_weight": torch.cat([w[T(i)] for i in ("RS_ATTN_Q", "RS_ATTN_K", "RS_ATTN_V")]),
        "resampler.attn.in_proj_bias": torch.cat([w[T(i + "_BIAS")] for i in ("RS_ATTN_Q", "RS_ATTN_K", "RS_ATTN_V")]),
        "resampler.attn.out_proj.weight": w[T("RS_ATTN_OUT")],
        "resampler.attn.out_proj.bias": w[T("RS_ATTN_OUT_BIAS")],
        "resampler.proj": w[T("RS_PROJ")].T,  # stored as proj^T: mul_mat(proj_w, x) = x @ proj
    }
    for norm, tid in (("ln_q", "RS_LN_Q"), ("ln_kv", "RS_LN_KV"), ("ln_post", "RS_LN_POST")):
        state[f"resampler.{norm}.weight"] = w[T(tid)]
        state[f"resampler.{norm}.bias"] = w[T(tid + "_BIAS")]
    names_per_layer = {"layer_norm1": "V_LN1", "layer_norm2": "V_LN2", "self_attn.q_proj": "V_ATTN_Q",
                       "self_attn.k_proj": "V_ATTN_K", "self_attn.v_proj": "V_ATTN_V",
                       "self_attn.out_proj": "V_ATTN_OUT", "mlp.fc1": "V_FFN_UP", "mlp.fc2": "V_FFN_DOWN"}
    for il in range(fields[K("CLIP_V_BLOCK_COUNT")]):
        for hf, tid in names_per_layer.items():
            state[f"vpm.encoder.layers.{il}.{hf}.weight"] = w[T(tid, il)]
            state[f"vpm.encoder.layers.{il}.{hf}.bias"] = w[T(tid + "_BIAS", il)]
    from_gguf = ref.load_parts(cfg, state)
    from_hf = tiny_models.load_reference_vision(tiny_minicpmv26_vision_dir)
    g = torch.Generator().manual_seed(2)
    slices = [torch.rand(3, 56, 84, generator=g) * 2 - 1, torch.rand(3, 98, 42, generator=g) * 2 - 1]
    torch.testing.assert_close(ref.vision_embeddings(from_gguf, slices), ref.vision_embeddings(from_hf, slices),
                               rtol=0, atol=0)
    assert d % 128 == 0


def test_vision_types_per_outtype(tiny_minicpmv45_vision_dir):
    """Quantized outtypes keep the vision matrices F16 unless a vision type is asked for."""
    from minicpm_cpp.convert.checkpoint import load_config
    from minicpm_cpp.convert.llm import detect

    cfg = load_config(tiny_minicpmv45_vision_dir)
    ckpt = open_checkpoint(tiny_minicpmv45_vision_dir)
    try:
        spec = detect(cfg, ckpt.names())
        vspec = vision.detect_vision(cfg, spec, tiny_minicpmv45_vision_dir)
        cases = {
            ("q8_0", "auto"): (Q.F16, Q.F16, Q.F16),
            ("bf16", "auto"): (Q.BF16, Q.F16, Q.BF16),
            ("f32", "auto"): (Q.F32, Q.F32, Q.F32),
            ("f16", "q8_0"): (Q.Q8_0, Q.F16, Q.F16),
        }
        for (outtype, vtype), (linear, patch, pos) in cases.items():
            plan, _ = vision.plan_vision(vspec, ckpt, outtype, vtype)
            by = {p.gguf_name: p.qtype for p in plan}
            assert by[T("V_ATTN_Q", 0)] == linear and by[T("RS_PROJ")] == linear, (outtype, vtype)
            assert by[T("V_PATCH_EMBD")] == patch and by[T("V_POS_EMBD")] == pos, (outtype, vtype)
            assert by[T("RS_QUERY")] == Q.F32 and by[T("RS_POS_EMBED_K")] == Q.F32 and by[T("V_LN1", 0)] == Q.F32
    finally:
        ckpt.close()


def test_cli_help_and_options(tiny_minicpmv26_vision_dir, tmp_path):
    help_text = hf_to_gguf.build_parser().format_help()
    for opt in ("--llm-only", "--mmproj", "--vision-outtype"):
        assert opt in help_text
    r = subprocess.run(
        [sys.executable, "-m", "minicpm_cpp.convert", str(tiny_minicpmv26_vision_dir), "-o", str(tmp_path / "m.gguf"),
         "--outtype", "f32", "--llm-only", "--mmproj", str(tmp_path / "mm.gguf"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    fields, _ = read(tmp_path / "mm.gguf")
    assert fields[K("GENERAL_ARCHITECTURE")] == "clip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "mm.gguf"]


def test_errors_leave_nothing(tiny_qwen3_dir, tiny_minicpmv26_vision_dir, tmp_path):
    with pytest.raises(ConvertError, match="no vision tower"):
        convert(tiny_qwen3_dir, tmp_path / "a.gguf", mmproj=tmp_path / "mm.gguf", progress=False, log=quiet)
    with pytest.raises(ConvertError, match="same file"):
        convert(tiny_minicpmv26_vision_dir, tmp_path / "a.gguf", mmproj=tmp_path / "a.gguf", progress=False, log=quiet)

    # a missing vision tensor
    src = tmp_path / "broken"
    src.mkdir()
    for f in tiny_minicpmv26_vision_dir.iterdir():
        if f.name != "model.safetensors":
            (src / f.name).symlink_to(f)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_minicpmv26_vision_dir / "model.safetensors"))
    state.pop("vpm.encoder.layers.1.mlp.fc2.bias")
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ConvertError, match=r"vpm\.encoder\.layers\.1\.mlp\.fc2\.bias not found"):
        convert(src, tmp_path / "b.gguf", progress=False, log=quiet)
    # an unknown MiniCPM version
    cfg = config(tiny_minicpmv26_vision_dir)
    cfg["version"] = 3.0
    (src / "config.json").unlink()
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="no known clip"):
        convert(src, tmp_path / "c.gguf", progress=False, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
