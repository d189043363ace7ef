"""Bad input gives a clear minicpm_cpp.Error subclass, never a crash."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gguf
import minicpm_cpp
from gguf_edit import rewrite


@pytest.fixture(scope="module")
def good(tiny_qwen3_dir, converted):
    return converted(tiny_qwen3_dir, "f32")


@pytest.fixture(scope="module")
def model(good):
    return minicpm_cpp.Model(good, device="cpu")


def test_missing_file(tmp_path):
    with pytest.raises(minicpm_cpp.FileError, match="not found"):
        minicpm_cpp.Model(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError):   # also a builtin FileNotFoundError
        minicpm_cpp.Session(str(tmp_path / "nope.gguf"))
    with pytest.raises(minicpm_cpp.FileError, match="directory"):
        minicpm_cpp.Model(tmp_path)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model\n" * 10)
    with pytest.raises(minicpm_cpp.FormatError, match="not a GGUF"):
        minicpm_cpp.Model(p)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(minicpm_cpp.FormatError):
        minicpm_cpp.Model(empty)


@pytest.mark.parametrize("keep", [4, 24, 200, 5000, 0.5, 0.999])
def test_truncated_gguf(good, tmp_path, keep):
    data = good.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:n])
    with pytest.raises(minicpm_cpp.FormatError, match="truncated|not a valid GGUF|not a GGUF"):
        minicpm_cpp.Model(p)


def test_unknown_architecture(good, tmp_path):
    p = rewrite(good, tmp_path / "arch.gguf", set_keys={"general.architecture": ("gpt-neo", gguf.GGUFValueType.STRING)})
    with pytest.raises(minicpm_cpp.UnsupportedError, match="gpt-neo"):
        minicpm_cpp.Model(p)


def test_missing_tensor(good, tmp_path):
    p = rewrite(good, tmp_path / "missing.gguf", drop_tensors={"blk.1.ffn_up.weight"})
    with pytest.raises(minicpm_cpp.FormatError, match=r"blk\.1\.ffn_up\.weight not found"):
        minicpm_cpp.Model(p)


def test_wrong_tensor_shape(good, tmp_path):
    bad = np.zeros((64, 128), dtype=np.float32)   # attn_q should be [out 128, in 128]
    p = rewrite(good, tmp_path / "shape.gguf", replace_tensors={"blk.0.attn_q.weight": bad})
    with pytest.raises(minicpm_cpp.FormatError, match=r"blk\.0\.attn_q\.weight: expected shape \[128, 128\], got \[128, 64\]"):
        minicpm_cpp.Model(p)


def test_missing_and_mistyped_metadata(good, tmp_path):
    p = rewrite(good, tmp_path / "nokey.gguf", drop_keys={"qwen3.block_count"})
    with pytest.raises(minicpm_cpp.FormatError, match="qwen3.block_count"):
        minicpm_cpp.Model(p)
    p = rewrite(good, tmp_path / "typed.gguf", set_keys={"qwen3.block_count": ("two", gguf.GGUFValueType.STRING)})
    with pytest.raises(minicpm_cpp.FormatError, match="qwen3.block_count.*expected an integer"):
        minicpm_cpp.Model(p)
    p = rewrite(good, tmp_path / "heads.gguf", set_keys={"qwen3.attention.head_count_kv": (3, gguf.GGUFValueType.UINT32)})
    with pytest.raises(minicpm_cpp.FormatError, match="multiple"):
        minicpm_cpp.Model(p)


def test_missing_tokenizer(good, tmp_path):
    p = rewrite(good, tmp_path / "notok.gguf", drop_keys={"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"})
    with pytest.raises(minicpm_cpp.FormatError, match="tokenizer"):
        minicpm_cpp.Model(p)


def test_prompt_longer_than_context(model):
    s = minicpm_cpp.Session(model, n_ctx=32)
    s.prefill(tokens=list(range(1, 21)))
    with pytest.raises(minicpm_cpp.ContextFullError, match="does not fit"):
        s.prefill(tokens=list(range(1, 21)))
    # The session is unchanged and still usable.
    assert s.n_past == 20
    s.prefill(tokens=[5, 6])
    assert s.n_past == 22
    with pytest.raises(minicpm_cpp.ContextFullError):
        s.chat([{"role": "user", "content": "word " * 100}])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1.0),
        dict(temperature=math.nan),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(min_p=2.0),
        dict(repeat_penalty=0.0),
        dict(repeat_last_n=-5),
        dict(presence_penalty=math.inf),
        dict(top_k="ten"),
        dict(temperature="hot"),
    ],
)
def test_invalid_sampling_values(model, kwargs):
    s = minicpm_cpp.Session(model, n_ctx=32)
    s.prefill(tokens=[1, 2])
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.generate(max_tokens=2, **kwargs)
    with pytest.raises(ValueError):   # also a builtin ValueError
        s.sample(**kwargs)


def test_generate_on_empty_context(model):
    s = minicpm_cpp.Session(model, n_ctx=32)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="empty context"):
        s.generate(max_tokens=4)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="empty"):
        s.logits()


def test_bad_tokens_and_parameters(model):
    s = minicpm_cpp.Session(model, n_ctx=32)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="out of range"):
        s.prefill(tokens=[1, 10**7])
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="out of range"):
        s.prefill(tokens=[-1])
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.prefill(tokens=["a"])
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.prefill()
    assert s.n_past == 0
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="n_ctx"):
        minicpm_cpp.Session(model, n_ctx=0)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="kv_type"):
        minicpm_cpp.Session(model, kv_type="q4")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="stop"):
        s.prefill(tokens=[1])
        s.generate(stop=[""])
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="role"):
        s.chat([{"content": "no role"}])


def test_unknown_device(good):
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="available devices"):
        minicpm_cpp.Model(good, device="tpu7")
