"""Hostile values in model files give a clear minicpm_cpp.Error subclass before ggml sees them:
never an abort, a hang, minutes of work or NaN logits.

Files are tiny conversions (tests/tiny_models.py) rewritten with tests/gguf_edit.py. Cases that
used to abort the process (a GGML_ASSERT) load in a child process, so that a regression shows as
a failed test rather than a dead pytest: the child must exit 0 and print the error class.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gguf
import minicpm_cpp
from gguf_edit import rewrite

U32 = gguf.GGUFValueType.UINT32
F32 = gguf.GGUFValueType.FLOAT32
ARRAY = gguf.GGUFValueType.ARRAY


# ---- files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_file(tiny_qwen3_dir, converted) -> Path:
    return converted(tiny_qwen3_dir, "f32")


@pytest.fixture(scope="module")
def llm_f16_file(tiny_qwen3_dir, converted) -> Path:
    return converted(tiny_qwen3_dir, "f16")


@pytest.fixture(scope="module")
def omni_files(tiny_minicpmo26_dir_audio, tmp_path_factory):
    """(LLM, mmproj, audio) files of the tiny MiniCPM-o 2.6, all F32: the vision and audio files
    are small and quick to rewrite."""
    from minicpm_cpp.convert import convert

    d = tmp_path_factory.mktemp("hard-omni")
    llm, mmproj, audio = d / "llm.gguf", d / "mmproj.gguf", d / "audio.gguf"
    convert(tiny_minicpmo26_dir_audio, llm, "f32", force=True, progress=False, log=lambda m: None, llm_only=True,
            mmproj=mmproj, audio_out=audio, vision_outtype="f32", audio_outtype="f32")
    return llm, mmproj, audio


def _tensor(path: Path, name: str) -> np.ndarray:
    return next(np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors if t.name == name)


# ---- a child process for what used to abort ---------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import minicpm_cpp
    llm, mmproj, audio, action = sys.argv[1:5]
    try:
        m = minicpm_cpp.Model(llm, device="cpu", mmproj=mmproj or None, audio=audio or None)
        if action == "prefill":
            s = minicpm_cpp.Session(m, n_ctx=32)
            s.prefill(tokens=[1, 2, 3])
            logits = s.logits()
            assert np.isfinite(logits).all(), "non-finite logits"
        elif action == "image":
            m.encode_image(np.full((20, 30, 3), 128, np.uint8))
        elif action == "audio":
            s = minicpm_cpp.Session(m, n_ctx=256)
            s.encode_audio(np.zeros(16000, np.float32))
        print("OK")
    except minicpm_cpp.Error as e:
        print(type(e).__name__ + ": " + str(e))
    """
)


def _isolated(llm: Path, action: str = "load", mmproj: Path = None, audio: Path = None, timeout: float = 60) -> str:
    """Runs the load (and `action`) in a child process; returns what it printed."""
    args = [sys.executable, "-c", _CHILD, str(llm), str(mmproj or ""), str(audio or ""), action]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{action} did not finish in {timeout} s")
    assert r.returncode == 0, f"the child process died with code {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout.strip().splitlines()[-1]


def _expect(out: str, cls: str, pattern: str) -> None:
    import re

    assert out.startswith(cls + ": "), out
    assert re.search(pattern, out, re.IGNORECASE), out   # ggml spells types in lower case


# ---- 1. layer counts --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10**6])
def test_llm_block_count_bounded_by_tensors(llm_file, tmp_path, n):
    p = rewrite(llm_file, tmp_path / "blocks.gguf", set_keys={"qwen3.block_count": (n, U32)})
    _expect(_isolated(p), "FormatError", rf"qwen3\.block_count.*{n}")


@pytest.mark.parametrize("key", ["clip.vision.block_count", "clip.audio.block_count"])
@pytest.mark.parametrize("n", [3, 10**6])
def test_encoder_block_count_bounded_by_tensors(omni_files, tmp_path, key, n):
    llm, mmproj, audio = omni_files
    if key.startswith("clip.vision"):
        mmproj = rewrite(mmproj, tmp_path / "mmproj.gguf", set_keys={key: (n, U32)})
    else:
        audio = rewrite(audio, tmp_path / "audio.gguf", set_keys={key: (n, U32)})
    _expect(_isolated(llm, mmproj=mmproj, audio=audio), "FormatError", rf"{key}.*{n}")


# ---- 2. vision sizes --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**32 - 448, 2**20, 10**9, 10000, 1000])
def test_scale_resolution_bounded(omni_files, tmp_path, value):
    """-448 written through a u32, huge sides, and 10000 (minutes and ~5 GB for a tiny image
    before); 1000 is more than the 70 x 70 position table holds at patch 14."""
    llm, mmproj, _ = omni_files
    p = rewrite(mmproj, tmp_path / "scale.gguf", set_keys={"minicpm.vision.scale_resolution": (value, U32)})
    _expect(_isolated(llm, "image", mmproj=p, timeout=30), "FormatError",
            rf"minicpm\.vision\.scale_resolution.*{value}")


@pytest.mark.parametrize(
    "key,value",
    [
        ("clip.vision.image_size", 2**31),
        ("clip.vision.image_size", 5000),
        ("clip.vision.patch_size", 10**6),
        ("minicpm.vision.max_slice_nums", 10**6),
        ("clip.minicpmv_version", 2**32 - 1),
    ],
)
def test_vision_integer_keys_bounded(omni_files, tmp_path, key, value):
    llm, mmproj, _ = omni_files
    drop = ["minicpm.vision.scale_resolution"] if key == "clip.vision.image_size" else []
    p = rewrite(mmproj, tmp_path / "v.gguf", drop_keys=drop, set_keys={key: (value, U32)})
    _expect(_isolated(llm, "image", mmproj=p, timeout=30), "FormatError", rf"{key}.*{value}")


def test_vision_defaults_still_load(omni_files):
    llm, mmproj, audio = omni_files
    assert _isolated(llm, "image", mmproj=mmproj) == "OK"
    assert _isolated(llm, "audio", audio=audio) == "OK"


# ---- 3. tensor types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,action",
    [
        ("blk.0.attn_q.weight", "prefill"),      # a product's matrix
        ("blk.0.attn_norm.weight", "prefill"),   # a norm
        ("token_embd.weight", "prefill"),        # get_rows
    ],
)
def test_integer_type_switch_llm(llm_file, tmp_path, name, action):
    """F32 -> I32 keeps every byte size: accepted before, then a crash at the first prefill."""
    bad = _tensor(llm_file, name).view(np.int32)
    p = rewrite(llm_file, tmp_path / "i32.gguf", replace_tensors={name: bad})
    _expect(_isolated(p, action), "FormatError", rf"{name}.*type I32.*allowed.*F32, F16, BF16")


@pytest.mark.parametrize("name", ["blk.1.ffn_down.weight"])
def test_f16_to_i16_switch(llm_f16_file, tmp_path, name):
    t = _tensor(llm_f16_file, name)
    bad = t.view(np.int16) if t.dtype == np.float16 else t.astype(np.float32).view(np.int32)
    p = rewrite(llm_f16_file, tmp_path / "i16.gguf", replace_tensors={name: bad})
    _expect(_isolated(p, "prefill"), "FormatError", rf"{name}.*type I(16|32).*allowed")


@pytest.mark.parametrize(
    "name",
    ["v.blk.0.attn_q.weight", "v.blk.0.ln1.bias", "v.position_embd.weight", "v.patch_embd.weight", "resampler.query",
     "resampler.proj.weight"],
)
def test_integer_type_switch_vision(omni_files, tmp_path, name):
    llm, mmproj, _ = omni_files
    bad = _tensor(mmproj, name).view(np.int32)
    p = rewrite(mmproj, tmp_path / "vi32.gguf", replace_tensors={name: bad})
    _expect(_isolated(llm, "image", mmproj=p), "FormatError", rf"{name}.*type I32.*allowed")


@pytest.mark.parametrize("name", ["a.blk.0.ffn_up.weight", "a.conv1d.1.weight", "a.position_embd.weight", "mm.a.mlp.2.weight"])
def test_integer_type_switch_audio(omni_files, tmp_path, name):
    llm, _, audio = omni_files
    bad = _tensor(audio, name).view(np.int32)
    p = rewrite(audio, tmp_path / "ai32.gguf", replace_tensors={name: bad})
    _expect(_isolated(llm, "audio", audio=p), "FormatError", rf"{name}.*type I32.*allowed")


# ---- 4. float hyperparameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("qwen3.rope.freq_base", 1e-45),
        ("qwen3.rope.freq_base", float("inf")),
        ("qwen3.rope.freq_base", float("nan")),
        ("qwen3.attention.layer_norm_rms_epsilon", float("inf")),
        ("qwen3.attention.layer_norm_rms_epsilon", 0.0),
        ("qwen3.attention.layer_norm_rms_epsilon", 1.0),
    ],
)
def test_llm_float_keys(llm_file, tmp_path, key, value):
    p = rewrite(llm_file, tmp_path / "f.gguf", set_keys={key: (value, F32)})
    with pytest.raises(minicpm_cpp.FormatError, match=rf"{key}.*out of range"):
        minicpm_cpp.Model(p, device="cpu")


@pytest.mark.parametrize(
    "key,value",
    [
        ("clip.vision.image_std", [1e-45, 0.5, 0.5]),
        ("clip.vision.image_std", [0.5, 0.5, 1e30]),
        ("clip.vision.image_mean", [1e30, 0.5, 0.5]),
        ("clip.vision.image_mean", [0.5, float("nan"), 0.5]),
        ("clip.vision.attention.layer_norm_epsilon", float("inf")),
        ("clip.vision.attention.layer_norm_epsilon", 10.0),
        ("minicpm.resampler.layer_norm_epsilon", float("inf")),
    ],
)
def test_vision_float_keys(omni_files, tmp_path, key, value):
    llm, mmproj, _ = omni_files
    if isinstance(value, list):
        # gguf_edit writes an int array; rewrite the float array through the writer directly
        p = _with_float_array(mmproj, tmp_path / "va.gguf", key, value)
    else:
        p = rewrite(mmproj, tmp_path / "vf.gguf", set_keys={key: (value, F32)})
    with pytest.raises(minicpm_cpp.FormatError, match=rf"{key}.*out of range"):
        minicpm_cpp.Model(llm, device="cpu", mmproj=p)


@pytest.mark.parametrize(
    "key,value",
    [
        ("clip.audio.attention.layer_norm_epsilon", float("inf")),
        ("clip.audio.attention.layer_norm_epsilon", 0.0),
        ("minicpm.audio.chunk_length", float("nan")),
        ("minicpm.audio.chunk_length", 1e9),
    ],
)
def test_audio_float_keys(omni_files, tmp_path, key, value):
    llm, _, audio = omni_files
    p = rewrite(audio, tmp_path / "af.gguf", set_keys={key: (value, F32)})
    with pytest.raises(minicpm_cpp.FormatError, match=rf"{key}.*out of range"):
        minicpm_cpp.Model(llm, device="cpu", audio=p)


def _with_float_array(src: Path, dst: Path, key: str, values) -> Path:
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == ARRAY else None
        if name == key:
            writer.add_key_value(name, [float(v) for v in values], ARRAY, sub_type=F32)
        else:
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        data = np.array(t.data)
        writer.add_tensor(t.name, data) if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
            else writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# ---- 5. integer hyperparameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("qwen3.embedding_length", 2**31, r"qwen3\.embedding_length.*out of range"),
        ("qwen3.attention.head_count", 10**6, r"qwen3\.attention\.head_count.*out of range"),
        ("qwen3.attention.head_count_kv", 8, r"head_count_kv.*out of range"),
        ("qwen3.context_length", 2**31, r"context_length.*out of range"),
    ],
)
def test_llm_integer_keys(llm_file, tmp_path, key, value, pattern):
    p = rewrite(llm_file, tmp_path / "i.gguf", set_keys={key: (value, U32)})
    _expect(_isolated(p, "prefill"), "FormatError", pattern)


@pytest.mark.parametrize("value", [0, 2, 10**6])
def test_llm_partial_rotary_refused(llm_file, tmp_path, value):
    # The key was written but not read: a partial-rotary (or oversized) count gave wrong logits.
    p = rewrite(llm_file, tmp_path / "rd.gguf", set_keys={"qwen3.rope.dimension_count": (value, U32)})
    with pytest.raises(minicpm_cpp.UnsupportedError, match=r"rope\.dimension_count = %d.*full rotary" % value):
        minicpm_cpp.Model(p, device="cpu")


def test_llm_rope_dimension_count_of_the_head_loads(llm_file, tmp_path):
    # (rewritten with its own value: the rewrite itself must not be what makes the cases above fail)
    import gguf as g
    head = g.GGUFReader(str(llm_file)).fields["qwen3.rope.dimension_count"].contents()   # the converter writes head_dim
    p = rewrite(llm_file, tmp_path / "rd-ok.gguf", set_keys={"qwen3.rope.dimension_count": (head, U32)})
    minicpm_cpp.Model(p, device="cpu")


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("minicpm.audio.pool_step", 10**6, r"minicpm\.audio\.pool_step.*out of range"),
        ("clip.audio.embedding_length", 2**31, r"clip\.audio\.embedding_length.*out of range"),
        ("clip.audio.attention.head_count", 2**20, r"clip\.audio\.attention\.head_count.*out of range"),
    ],
)
def test_audio_integer_keys(omni_files, tmp_path, key, value, pattern):
    llm, _, audio = omni_files
    p = rewrite(audio, tmp_path / "ai.gguf", set_keys={key: (value, U32)})
    _expect(_isolated(llm, "audio", audio=p), "FormatError", pattern)


def test_audio_position_table_too_small(omni_files, tmp_path):
    llm, _, audio = omni_files
    pos = _tensor(audio, "a.position_embd.weight")
    p = rewrite(audio, tmp_path / "apos.gguf", replace_tensors={"a.position_embd.weight": np.ascontiguousarray(pos[:8])})
    _expect(_isolated(llm, "audio", audio=p), "FormatError", r"a\.position_embd\.weight.*n_pos")


# ---- tokenizer token types (fuzz: values out of llama.cpp's enum; markers no longer special) ----


def test_token_type_out_of_range(llm_file, tmp_path):
    types = list(gguf.GGUFReader(str(llm_file)).fields["tokenizer.ggml.token_type"].contents())
    types[5] = 7
    p = rewrite(llm_file, tmp_path / "tt.gguf", set_keys={"tokenizer.ggml.token_type": (types, ARRAY)})
    with pytest.raises(minicpm_cpp.FormatError, match=r"token type 7 of token 5"):
        minicpm_cpp.Model(p, device="cpu")


def test_image_markers_not_special(omni_files, tmp_path):
    # Without token types every marker is a normal token: "<image>" splits into pieces and the
    # image slots cannot be found. A FormatError naming the key, not an internal error.
    llm, mmproj, _ = omni_files
    p = rewrite(llm, tmp_path / "nott.gguf", drop_keys=["tokenizer.ggml.token_type"])
    m = minicpm_cpp.Model(p, device="cpu", mmproj=mmproj)
    s = minicpm_cpp.Session(m, n_ctx=512)
    img = np.full((20, 30, 3), 128, np.uint8)
    with pytest.raises(minicpm_cpp.FormatError, match=r"tokenizer\.ggml\.token_type"):
        s.chat([{"role": "user", "content": [img, "hi"]}], max_tokens=1)
