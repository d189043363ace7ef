"""The reference chat() defaults the converter records, and what the runtime reads from them.

For each family the tiny checkpoints can build, the file is converted, the keys are read back
with gguf-py (values and GGUF types), and compared with the reference facts written out below
(each with the function it was read from, independently of convert/defaults.py). Then the
runtime: ``Model(path).defaults`` and ``_core.model_defaults(path)`` must give the same values.
Also: a file without any of the keys gives the library's documented fallback, a file with only
llama.cpp's ``general.sampling.*`` keys uses those, the quantizer keeps the keys, the
``--llm-only`` file carries them and the mmproj file does not.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from gguf import GGUFReader, GGUFValueType  # noqa: E402

import gguf_edit  # noqa: E402
import minicpm_cpp  # noqa: E402
import tiny_models  # noqa: E402
from minicpm_cpp import _core  # noqa: E402
from minicpm_cpp.convert import ConvertError, convert  # noqa: E402
from minicpm_cpp.convert.quantize import quantize  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The reference facts: (temperature, top_p, top_k, repetition_penalty); min_p is 0 everywhere
# (no chat() sets it).
# ---------------------------------------------------------------------------------------------

# MiniCPM-V 4.5: MiniCPMV.chat in modeling_minicpmv.py of the official V4.5 remote code (copy:
# GitHub PcOffeeP/FineTune_MLLM, Model/MiniCPM-VL-4.5/): enable_thinking=False, max_new_tokens=2048;
# without thinking temperature 0.7, top_p 0.8, top_k 100, repetition_penalty 1.03; with thinking
# temperature 0.7, the rest generate()'s: generation_config.json (released: top_p 0.95, top_k 20,
# no repetition_penalty -> transformers' 1.0).
V45 = dict(
    source="MiniCPM-V 4.5 chat() (modeling_minicpmv.py)",
    enable_thinking=False,
    max_new_tokens=2048,
    sampling=(0.7, 0.8, 100, 1.03),
    sampling_think=(0.7, 0.95, 20, 1.0),
)
# MiniCPM-o 4.5: MiniCPMO.chat / prepare_generation_config in OpenBMB/MiniCPM-o-Demo
# MiniCPMO45/modeling_minicpmo.py: enable_thinking=False, max_new_tokens=4096, temperature 0.7,
# top_p 0.8, top_k 100, repetition_penalty 1.02 in both modes.
O45 = dict(
    source="MiniCPM-o 4.5 chat() (modeling_minicpmo.py)",
    enable_thinking=False,
    max_new_tokens=4096,
    sampling=(0.7, 0.8, 100, 1.02),
    sampling_think=(0.7, 0.8, 100, 1.02),
)
# MiniCPM-V 2.6 / MiniCPM-o 2.6: chat() of their remote code (copies: GitHub
# 404805854/minicpmv2.6-onnx modeling_minicpmv.py, jack139/minicpmo-backend modeling_minicpmo.py):
# no thinking switch, max_new_tokens=2048, temperature 0.7, top_p 0.8, top_k 100,
# repetition_penalty 1.05.
V26 = dict(
    source="MiniCPM-V 2.6 chat() (modeling_minicpmv.py)",
    enable_thinking=None,
    max_new_tokens=2048,
    sampling=(0.7, 0.8, 100, 1.05),
    sampling_think=None,
)
O26 = dict(V26, source="MiniCPM-o 2.6 chat() (modeling_minicpmo.py)")

# The library's fallback (csrc/runtime/defaults.cpp, README): llama.cpp's MiniCPM-V values.
FALLBACK = dict(
    source="library fallback (llama.cpp's MiniCPM-V values)",
    enable_thinking=None,
    max_new_tokens=2048,
    sampling=(0.7, 0.8, 100, 1.05),
    sampling_think=(0.7, 0.8, 100, 1.05),
)

CHAT = "minicpm.chat."
SAMPLING_FIELDS = ("temp", "top_p", "top_k", "penalty_repeat")  # in the order of the tuples above
DEFAULT_KEYS_PREFIXES = (CHAT, "general.sampling.")


def _quiet(msg: str) -> None:
    pass


def read_keys_gguf_py(path: Path):
    """Every generation-default key of ``path``: key -> (value, GGUF type), through gguf-py."""
    reader = GGUFReader(str(path))
    return {name: (f.contents(), f.types[0]) for name, f in reader.fields.items() if name.startswith(DEFAULT_KEYS_PREFIXES)}


_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


def read_keys(path: Path, prefixes=DEFAULT_KEYS_PREFIXES):
    """As read_keys_gguf_py, from the metadata section alone: gguf.GGUFReader takes many seconds
    on the 151748-entry vocabulary arrays, which this walks by their length prefixes only.
    test_family_defaults checks that both readers agree."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n : pos].decode("utf-8")

    assert data[:4] == b"GGUF"
    pos = 4
    assert take("<I") == 3
    take("<Q")  # tensors
    out = {}
    for _ in range(take("<Q")):
        key, vtype = string(), GGUFValueType(take("<I"))
        if vtype == GGUFValueType.ARRAY:
            sub, n = GGUFValueType(take("<I")), take("<Q")
            if sub == GGUFValueType.STRING:
                for _ in range(n):
                    pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            else:
                pos += n * struct.calcsize(_SCALARS[sub])
            value = None
        elif vtype == GGUFValueType.STRING:
            value = string()
        else:
            value = take(_SCALARS[vtype])
        if key.startswith(prefixes):
            out[key] = (value, vtype)
    return out


def expected_keys(facts):
    """The keys and GGUF types the converter must write for ``facts``."""
    want = {CHAT + "source": (facts["source"], GGUFValueType.STRING)}
    if facts["enable_thinking"] is not None:
        want[CHAT + "enable_thinking"] = (facts["enable_thinking"], GGUFValueType.BOOL)
    if facts["max_new_tokens"] is not None:
        want[CHAT + "max_new_tokens"] = (facts["max_new_tokens"], GGUFValueType.UINT32)
    groups = [(CHAT + "sampling.", facts["sampling"]), ("general.sampling.", facts["sampling"])]
    if facts["sampling_think"] is not None:
        groups.append((CHAT + "sampling_think.", facts["sampling_think"]))
    for prefix, values in groups:
        for name, value in zip(SAMPLING_FIELDS, values):
            want[prefix + name] = (value, GGUFValueType.INT32 if name == "top_k" else GGUFValueType.FLOAT32)
        want[prefix + "min_p"] = (0.0, GGUFValueType.FLOAT32)
    return want


def check_keys(path: Path, facts) -> None:
    got = read_keys(path)
    want = expected_keys(facts)
    assert sorted(got) == sorted(want)
    for key, (value, vtype) in want.items():
        gv, gt = got[key]
        assert gt == vtype, f"{key}: GGUF type {gt.name}, expected {vtype.name}"
        if vtype == GGUFValueType.FLOAT32:
            assert gv == pytest.approx(value, rel=1e-6, abs=1e-7), key
        else:
            assert gv == value, key


def runtime_view(facts):
    """What Model.defaults / _core.model_defaults must say for a file recording ``facts``."""

    def sampler(values):
        temp, top_p, top_k, rep = values
        return {"temperature": temp, "top_p": top_p, "top_k": top_k, "repeat_penalty": rep, "min_p": 0.0}

    think = facts["sampling_think"] if facts["sampling_think"] is not None else facts["sampling"]
    return {
        "source": facts["source"],
        "enable_thinking": facts["enable_thinking"],
        "max_tokens": facts["max_new_tokens"] if facts["max_new_tokens"] is not None else 2048,
        "sampling": sampler(facts["sampling"]),
        "sampling_think": sampler(think),
    }


def check_runtime(path: Path, facts, load_model: bool = True) -> None:
    want = runtime_view(facts)
    views = [("_core.model_defaults", _core.model_defaults(str(path)))]
    if load_model:
        views.append(("Model.defaults", minicpm_cpp.Model(path, device="cpu", n_threads=1, warmup=False).defaults))
    for what, d in views:
        for key in ("source", "enable_thinking", "max_tokens"):
            assert d[key] == want[key], f"{what}: {key}"
        for mode in ("sampling", "sampling_think"):
            for key, value in want[mode].items():
                got = d[mode][key]
                assert got == (pytest.approx(value, rel=1e-6, abs=1e-7) if isinstance(value, float) else value), (
                    f"{what}: {mode}.{key}"
                )
            # Not recorded by the converter: the library's own defaults.
            assert d[mode]["presence_penalty"] == 0.0 and d[mode]["repeat_last_n"] == -1, f"{what}: {mode}"


def with_generation_config(src: Path, dst: Path, gc) -> Path:
    """A copy of checkpoint ``src`` (symlinked files) with ``gc`` as its generation_config.json."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "generation_config.json":
            (dst / f.name).symlink_to(f)
    if gc is not None:
        (dst / "generation_config.json").write_text(gc if isinstance(gc, str) else json.dumps(gc))
    return dst


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_minicpmo45_dir(tmp_path_factory, assets_dir) -> Path:
    """MiniCPM-o 4.5 layout: architectures MiniCPMO, version 4.5, Qwen3 LLM (1 layer)."""
    return tiny_models.make_qwen3(tmp_path_factory.mktemp("tiny-minicpmo45"), layers=1, minicpm_prefix=True, model="o4.5")


@pytest.fixture(scope="module")
def tiny_minicpmv26_dir(tmp_path_factory, assets_dir) -> Path:
    """MiniCPM-V 2.6 layout: architectures MiniCPMV, version 2.6, Qwen2 LLM (1 layer)."""
    return tiny_models.make_qwen2(tmp_path_factory.mktemp("tiny-minicpmv26"), layers=1, minicpm_prefix=True, model="v2.6")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("defaults")


def _convert(hf_dir, out, outtype="f16", **kw):
    notices = []
    path = convert(hf_dir, out, outtype, force=True, progress=False, log=notices.append, **kw)
    return path, notices


# ---------------------------------------------------------------------------------------------
# Per family
# ---------------------------------------------------------------------------------------------

FAMILIES = {
    "v4.5": ("tiny_minicpmv45_dir", V45, "minicpm-v-4.5"),
    "o4.5": ("tiny_minicpmo45_dir", O45, "minicpm-o-4.5"),
    "v2.6": ("tiny_minicpmv26_dir", V26, "minicpm-v-2.6"),
    "o2.6": ("tiny_minicpmo26_dir", O26, "minicpm-o-2.6"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_defaults(request, converted, family):
    fixture, facts, model_type = FAMILIES[family]
    hf_dir = request.getfixturevalue(fixture)
    # The tiny checkpoints carry the generation_config.json of the MiniCPM-o 4.5 test assets
    # (top_p 0.95, top_k 20: the values of MiniCPM-V 4.5's released file too).
    assert json.loads((hf_dir / "generation_config.json").read_text())["top_k"] == 20
    path = converted(hf_dir, "f16")
    assert read_keys(path, ("minicpm.model_type",)) == {"minicpm.model_type": (model_type, GGUFValueType.STRING)}
    check_keys(path, facts)
    # gguf-py, the reference reader, sees the same keys with the same types.
    theirs = read_keys_gguf_py(path)
    ours = read_keys(path)
    assert sorted(theirs) == sorted(ours)
    for key, (value, vtype) in theirs.items():
        assert ours[key][1] == vtype, key
        assert ours[key][0] == (pytest.approx(value) if isinstance(value, float) else value), key
    check_runtime(path, facts)


def test_v45_reads_thinking_values_from_generation_config(tiny_minicpmv45_dir, tmp_path):
    # Without the file: the released file's values.
    hf_dir = with_generation_config(tiny_minicpmv45_dir, tmp_path / "none", None)
    path, _ = _convert(hf_dir, tmp_path / "none.gguf", vocab_only=True)
    check_keys(path, V45)
    check_runtime(path, V45, load_model=False)
    # Other values in the file change the thinking mode only (chat() keeps temperature 0.7);
    # a field the file does not set is transformers' default (top_k 50).
    edited = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1}
    hf_dir = with_generation_config(tiny_minicpmv45_dir, tmp_path / "edited", edited)
    path, _ = _convert(hf_dir, tmp_path / "edited.gguf", vocab_only=True)
    facts = dict(V45, sampling_think=(0.7, 0.9, 50, 1.1))
    check_keys(path, facts)
    check_runtime(path, facts, load_model=False)


def test_plain_checkpoint_without_generation_config_records_nothing(tiny_qwen3_dir, tiny_qwen2_dir, tmp_path):
    for hf_dir in (tiny_qwen3_dir, tiny_qwen2_dir):
        bare = with_generation_config(hf_dir, tmp_path / hf_dir.name, None)
        path, _ = _convert(bare, tmp_path / f"{hf_dir.name}.gguf")
        assert read_keys(path) == {}
        # No key at all: the library's documented fallback.
        check_runtime(path, FALLBACK)


def test_plain_tiny_checkpoints_take_their_generation_config(tiny_qwen3_dir, tiny_qwen2_dir, converted):
    """The test assets' generation_config.json (Qwen3's released values: do_sample, temperature 0.6,
    top_k 20, top_p 0.95; no repetition_penalty, so transformers' 1.0)."""
    facts = dict(source="generation_config.json", enable_thinking=None, max_new_tokens=None,
                 sampling=(0.6, 0.95, 20, 1.0), sampling_think=None)
    for hf_dir in (tiny_qwen3_dir, tiny_qwen2_dir):
        path = converted(hf_dir, "f16")
        check_keys(path, facts)
        check_runtime(path, facts)


# generation_config.json files of plain checkpoints -> (temperature, top_p, top_k, repetition_penalty)
# that transformers' generate() uses (a field the file leaves out: GenerationConfig's default,
# temperature 1.0, top_p 1.0, top_k 50, repetition_penalty 1.0).
PLAIN_CASES = {
    # Qwen3's released generation_config.json
    "qwen3": ("make_qwen3", {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}, (0.6, 0.95, 20, 1.0)),
    # Qwen2.5 instruct's released generation_config.json
    "qwen2": (
        "make_qwen2",
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
        (0.7, 0.8, 20, 1.05),
    ),
    # do_sample not set: generate() decodes greedily
    "greedy": ("make_qwen3", {"temperature": 0.6, "top_p": 0.95}, (0.0, 0.95, 50, 1.0)),
}


@pytest.mark.parametrize("case", sorted(PLAIN_CASES))
def test_plain_checkpoint_takes_generation_config(case, tmp_path):
    make, gc, values = PLAIN_CASES[case]
    hf_dir = getattr(tiny_models, make)(tmp_path / "ckpt", layers=1)
    (hf_dir / "generation_config.json").write_text(json.dumps(dict(gc, bos_token_id=151643, eos_token_id=151645)))
    path, notices = _convert(hf_dir, tmp_path / "plain.gguf")
    facts = dict(source="generation_config.json", enable_thinking=None, max_new_tokens=None, sampling=values, sampling_think=None)
    check_keys(path, facts)
    check_runtime(path, facts)
    assert any("greedy" in n for n in notices) == (case == "greedy")


def test_generation_config_without_sampling_fields_records_nothing(tiny_qwen3_dir, tmp_path):
    hf_dir = with_generation_config(tiny_qwen3_dir, tmp_path / "ckpt", {"bos_token_id": 151643, "max_new_tokens": 2048})
    path, _ = _convert(hf_dir, tmp_path / "x.gguf", vocab_only=True)
    assert read_keys(path) == {}


@pytest.mark.parametrize(
    "gc, message",
    [
        ("{not json", "cannot parse .*generation_config.json"),
        ({"do_sample": True, "top_p": 0.0}, r"top_p 0.0 \(expected \(0, 1\]\)"),
        ({"do_sample": True, "top_k": "20"}, "top_k = '20' is not a number"),
        ({"do_sample": True, "top_k": 2.5}, "top_k = 2.5 is not an integer"),
    ],
)
def test_bad_generation_config(tiny_qwen3_dir, tmp_path, gc, message):
    hf_dir = with_generation_config(tiny_qwen3_dir, tmp_path / "ckpt", gc)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match=message):
        _convert(hf_dir, out / "x.gguf", vocab_only=True)
    assert list(out.iterdir()) == []


def test_unknown_minicpm_version_uses_generation_config(tiny_minicpmv45_dir, tmp_path):
    hf_dir = tmp_path / "ckpt"
    hf_dir.mkdir()
    for f in tiny_minicpmv45_dir.iterdir():
        if f.name != "config.json":
            (hf_dir / f.name).symlink_to(f)
    cfg = json.loads((tiny_minicpmv45_dir / "config.json").read_text())
    del cfg["version"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    path, notices = _convert(hf_dir, tmp_path / "x.gguf", vocab_only=True)
    assert any("no reference chat() defaults are known for minicpmv" in n for n in notices)
    # Its generation_config.json is all there is to go by.
    check_keys(path, dict(source="generation_config.json", enable_thinking=None, max_new_tokens=None,
                          sampling=(0.6, 0.95, 20, 1.0), sampling_think=None))


# ---------------------------------------------------------------------------------------------
# The runtime's other sources, the quantizer, --llm-only / --mmproj
# ---------------------------------------------------------------------------------------------


def test_general_sampling_keys_alone_are_used(tiny_qwen3_dir, out_dir):
    """A file with llama.cpp's keys only (as llama.cpp's converter may write them)."""
    bare = with_generation_config(tiny_qwen3_dir, out_dir / "qwen3-bare", None)
    src, _ = _convert(bare, out_dir / "qwen3-bare.gguf")
    assert read_keys(src) == {}
    dst = out_dir / "general-only.gguf"
    F, I = GGUFValueType.FLOAT32, GGUFValueType.INT32
    gguf_edit.rewrite(
        src,
        dst,
        set_keys={
            "general.sampling.temp": (0.6, F),
            "general.sampling.top_k": (20, I),
            "general.sampling.top_p": (0.95, F),
            "general.sampling.min_p": (0.05, F),
            "general.sampling.penalty_repeat": (1.1, F),
        },
    )
    want = runtime_view(FALLBACK)
    sampler = {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.1}
    for d in (_core.model_defaults(str(dst)), minicpm_cpp.Model(dst, device="cpu", n_threads=1, warmup=False).defaults):
        assert d["source"] == "general.sampling.* of the file"
        assert d["max_tokens"] == want["max_tokens"] and d["enable_thinking"] is None
        for mode in ("sampling", "sampling_think"):
            for key, value in sampler.items():
                assert d[mode][key] == pytest.approx(value, rel=1e-6), f"{mode}.{key}"


def test_quantizer_keeps_the_keys(tiny_minicpmv45_dir, converted, out_dir):
    src = converted(tiny_minicpmv45_dir, "f16")
    dst = out_dir / "v45-q8_0.gguf"
    quantize(src, dst, "Q8_0", force=True, progress=False, log=_quiet)
    assert read_keys(dst) == read_keys(src)
    check_keys(dst, V45)
    check_runtime(dst, V45)


def test_convert_then_quantize_keeps_the_keys(tiny_minicpmo26_dir, out_dir):
    path, _ = _convert(tiny_minicpmo26_dir, out_dir / "o26-q4_0.gguf", "q4_0")
    check_keys(path, O26)


def test_llm_only_file_has_the_keys_and_mmproj_none(tiny_minicpmv45_vision_dir, out_dir):
    main = out_dir / "v45-llm.gguf"
    mmproj = out_dir / "v45-mmproj.gguf"
    _convert(tiny_minicpmv45_vision_dir, main, llm_only=True, mmproj=mmproj)
    check_keys(main, V45)
    assert read_keys(mmproj) == {}
    # The whole-model file carries them too.
    full, _ = _convert(tiny_minicpmv45_vision_dir, out_dir / "v45-full.gguf")
    check_keys(full, V45)


def test_cli_help_shows_the_defaults(converted, tiny_minicpmo45_dir):
    from minicpm_cpp import cli

    path = converted(tiny_minicpmo45_dir, "f16")
    text = cli.build_parser(str(path)).epilog  # what --help prints after the options
    assert O45["source"] in text
    assert "temperature 0.7, top-p 0.8, top-k 100, min-p 0, repetition penalty 1.02" in text
    assert "reasoning off" in text and "up to 4096 new tokens" in text
