"""The Hugging Face -> GGUF converter (LLM part), checked against the checkpoints it reads.

Each converted file is read back with gguf.GGUFReader: every tensor is compared with the
Hugging Face weight (exact for F32, F16 and BF16 against an independent rounding, Q8_0
within its quantization bound), shapes in ggml order, every metadata value against
config.json, and the tensor names against llama.cpp's (spelled out here independently of the
name table, since the file must load in llama.cpp). Then the layouts (sharded, BF16 source,
pytorch_model.bin, tied embeddings, --vocab-only) and every error case: a clear message and
no output or temporary file left behind.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import tiny_models  # noqa: E402
from minicpm_cpp.convert import ConvertError, convert  # noqa: E402
from minicpm_cpp.convert import hf_to_gguf, llm, names  # noqa: E402

N_VOCAB = tiny_models.VOCAB_SIZE
CONVERT_DIR = Path(hf_to_gguf.__file__).resolve().parent

# llama.cpp's tensor names (src/llama-arch.cpp), the reference the file must match.
LLAMA_CPP_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LLAMA_CPP_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# llama.cpp's LlamaFileType numbering.
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
WEIGHT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class Gguf:
    """A converted file read back: metadata values and tensors by name.

    gguf.GGUFReader takes several seconds per file on the 151748-entry vocabulary arrays, so
    most tests use this small parser of the GGUF v3 layout; test_reader_agrees_with_gguf_reader
    checks that both readers see the same file.
    """

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, path: Path):
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        self.pos = 0
        assert bytes(self.buf[:4]) == b"GGUF"
        self.pos = 4
        version, n_tensors, n_kv = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
        assert version == 3
        self.fields = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            ne = [self._unpack("<Q") for _ in range(self._unpack("<I"))]
            infos.append((name, ne, Q(self._unpack("<I")), self._unpack("<Q")))
        align = self.fields.get("general.alignment", 32)
        data_start = self.pos + (-self.pos % align)
        self.tensors = {}
        for name, ne, qtype, offset in infos:
            assert offset % align == 0, name
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            n_bytes = int(np.prod(ne)) // block * size
            raw = self.buf[data_start + offset : data_start + offset + n_bytes]
            rows = list(reversed(ne))
            if qtype == Q.F32:
                data = raw.view(np.float32).reshape(rows)
            elif qtype == Q.F16:
                data = raw.view(np.float16).reshape(rows)
            else:
                data = raw.reshape(rows[:-1] + [ne[0] // block * size])
            self.tensors[name] = GgufTensor(name, ne, qtype, data)

    def _unpack(self, fmt):
        import struct

        n = struct.calcsize(fmt)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def _string(self):
        n = self._unpack("<Q")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def _value(self, vtype):
        if vtype == 8:
            return self._string()
        if vtype == 9:
            sub, n = self._unpack("<I"), self._unpack("<Q")
            if sub == 8:
                return [self._string() for _ in range(n)]
            fmt = self._SCALARS[sub]
            arr = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=n, offset=self.pos)
            self.pos += arr.nbytes
            return arr.tolist()
        return self._unpack(self._SCALARS[vtype])

    def __getitem__(self, key):
        return self.fields[key]


class GgufTensor:
    def __init__(self, name, ne, tensor_type, data):
        self.name, self.shape, self.tensor_type, self.data = name, ne, tensor_type, data


_READ_CACHE = {}


def read_gguf(path: Path) -> Gguf:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _READ_CACHE:
        _READ_CACHE[key] = Gguf(path)
    return _READ_CACHE[key]


def hf_weights(hf_dir: Path):
    """The LLM tensors of a checkpoint as float32 numpy, keyed by the prefix-free HF name."""
    state = tiny_models.load_state_dict(hf_dir)
    prefix = "llm." if tiny_models.is_minicpm_layout(hf_dir) else ""
    out = {}
    for k, v in state.items():
        if prefix and not k.startswith(prefix):
            continue
        out[k[len(prefix):]] = v.float().numpy()
    return out


def llama_cpp_name(hf_name: str) -> str:
    if hf_name in LLAMA_CPP_GLOBAL:
        return LLAMA_CPP_GLOBAL[hf_name]
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", hf_name)
    assert m, hf_name
    return f"blk.{m.group(1)}.{LLAMA_CPP_LAYER[m.group(2)]}"


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even), returned as float32."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def check_tensor(t, ref: np.ndarray, outtype: str, name: str) -> None:
    assert [int(d) for d in t.shape] == list(reversed(ref.shape)), f"{name}: ggml shape"
    want_type = Q.F32 if ref.ndim == 1 else WEIGHT_TYPES[outtype]
    assert t.tensor_type == want_type, f"{name}: type {t.tensor_type.name}, expected {want_type.name}"
    if want_type == Q.F32:
        got = np.asarray(t.data, dtype=np.float32).reshape(ref.shape)
        np.testing.assert_array_equal(got, ref, err_msg=name)
    elif want_type == Q.F16:
        got = np.asarray(t.data).view(np.float16).reshape(ref.shape)
        np.testing.assert_array_equal(got, ref.astype(np.float16), err_msg=name)
    elif want_type == Q.BF16:
        got = dequantize(np.asarray(t.data), Q.BF16).reshape(ref.shape)
        np.testing.assert_array_equal(got, bf16_round(ref), err_msg=name)
    elif want_type == Q.Q8_0:
        got = dequantize(np.asarray(t.data), Q.Q8_0).reshape(ref.shape)
        blocks = ref.reshape(-1, 32)
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        # half a quantization step, plus the f16 rounding of the block scale
        bound = amax * (0.5 / 127 + 1.0 / 2048) * 1.01 + 1e-12
        err = np.abs(got.reshape(-1, 32) - blocks)
        assert (err <= bound).all(), f"{name}: Q8_0 error {err.max()} beyond bound"
        assert err.max() > 0, f"{name}: Q8_0 data equal to the input, not quantized?"
    else:
        raise AssertionError(want_type)


def rope_theta(cfg) -> float:
    if "rope_theta" in cfg:
        return cfg["rope_theta"]
    return cfg["rope_parameters"]["rope_theta"]


def link_copy(src: Path, dst: Path, skip=()) -> Path:
    """A checkpoint directory whose files are symlinks to ``src``'s, except those in ``skip``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def edit_config(src: Path, dst: Path, **changes) -> Path:
    link_copy(src, dst, skip={"config.json"})
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def rewrite_weights(src: Path, dst: Path, edit) -> Path:
    """Copy a single-file checkpoint with its state dict passed through ``edit(state)``."""
    link_copy(src, dst, skip={"model.safetensors"})
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def quiet(msg: str) -> None:
    pass


def convert_logged(hf_dir, out, outtype="f16", **kw):
    """Convert, returning (path, notices)."""
    notices = []
    path = convert(hf_dir, out, outtype, progress=False, log=notices.append, **kw)
    return path, notices


# ---------------------------------------------------------------------------------------------
# The name table
# ---------------------------------------------------------------------------------------------


def test_name_table_parses():
    assert names.tensor_name("LLM_TOKEN_EMBD") == "token_embd.weight"
    assert names.tensor_name("LLM_ATTN_Q", 3) == "blk.3.attn_q.weight"
    assert names.key_name("LLM_RMS_EPS", "qwen3") == "qwen3.attention.layer_norm_rms_epsilon"
    assert names.key_name("GENERAL_ARCHITECTURE") == "general.architecture"
    with pytest.raises(ValueError):
        names.tensor_name("LLM_ATTN_Q")
    with pytest.raises(ValueError):
        names.tensor_name("LLM_TOKEN_EMBD", 0)
    with pytest.raises(ValueError):
        names.key_name("LLM_BLOCK_COUNT")
    with pytest.raises(KeyError, match="NO_SUCH_ID"):
        names.tensor_name("NO_SUCH_ID")


def test_name_table_parser_rejects_duplicates():
    text = (
        'MINICPM_COMPONENT(A, "a")\nMINICPM_TENSOR(A_X, "a")\n// MINICPM_TENSOR(COMMENT, "x")\n'
        'MINICPM_KEY(K, "k.%s")\nMINICPM_TENSOR(A_X, "b")\n'
    )
    with pytest.raises(RuntimeError, match="duplicate tensor id A_X"):
        names.parse_table(text)
    tensors, keys, components = names.parse_table(text.rsplit("\n", 2)[0])
    assert tensors == {"A_X": "a"} and keys == {"K": "k.%s"} and components == {"A": "a"}


def test_name_table_tensor_ids_carry_a_component_prefix():
    with pytest.raises(RuntimeError, match="component prefix"):
        names.parse_table('MINICPM_COMPONENT(LLM, "llm")\nMINICPM_TENSOR(ATTN_Q, "blk.%d.attn_q.weight")\n')
    assert names.tensor_component("LLM_ATTN_Q") == "llm"
    assert names.tensor_component("V_PATCH_EMBD") == "vision"
    assert names.tensor_component("RS_QUERY") == "vision"
    # Two components never share a tensor ID; every ID maps to exactly one component.
    assert {names.tensor_component(t) for t in names.TENSORS} <= set(names.COMPONENTS.values())


def _converter_sources():
    return sorted(p for p in CONVERT_DIR.glob("*.py"))


def test_every_id_used_by_the_converter_is_in_the_table():
    used_tensors = set(llm.TENSOR_IDS)
    used_keys = set(llm.KEY_IDS) | set(hf_to_gguf.KEY_IDS)
    for path in _converter_sources():
        text = path.read_text()
        used_tensors |= set(re.findall(r"tensor_name\(\s*['\"]([A-Za-z0-9_]+)['\"]", text))
        used_keys |= set(re.findall(r"key_name\(\s*['\"]([A-Za-z0-9_]+)['\"]", text))
    assert "LLM_ATTN_Q" in used_tensors and "MINICPM_STOP_TOKENS" in used_keys
    assert used_tensors - set(names.TENSORS) == set()
    assert used_keys - set(names.KEYS) == set()


def test_converter_spells_no_gguf_name_itself():
    """Names come from the table only: no string literal in the converter holds a fragment of one."""
    fragments = set()
    for pattern in list(names.TENSORS.values()) + list(names.KEYS.values()):
        for part in re.split(r"%[ds]", pattern):
            if len(part.strip(".")) >= 4:
                fragments.add(part)
    own = [p for p in _converter_sources() if p.name not in ("names.py", "tokenizer.py")]
    assert {p.name for p in own} >= {"hf_to_gguf.py", "llm.py", "quant.py", "checkpoint.py"}
    for path in own:
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [f for f in fragments if f in node.value]
                assert not hits, f"{path.name}:{node.lineno}: literal {node.value!r} spells {hits}"


def _sibling_imports(path: Path, modules) -> set:
    """The converter modules ``path`` imports (at the top or inside a function): relative imports
    and absolute ones through ``minicpm_cpp.convert`` or the source tree's ``convert``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
            elif node.level == 0 and node.module and node.module.split(".")[0] in ("minicpm_cpp", "convert"):
                parts = node.module.split(".")
                parts = parts[2:] if parts[:2] == ["minicpm_cpp", "convert"] else parts[1:] if parts[0] == "convert" else None
                if parts is None:
                    continue
                base = ".".join(parts)
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # from . import x, y
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[:2] == ["minicpm_cpp", "convert"] and len(parts) > 2:
                    found.add(parts[2])
                elif parts[0] == "convert" and len(parts) > 1:
                    found.add(parts[1])
    return found & set(modules)


def _import_graph():
    modules = {p.stem: p for p in _converter_sources() if p.stem not in ("__init__", "__main__")}
    return {m: _sibling_imports(p, modules) - {m} for m, p in modules.items()}


def _find_cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_converter_imports_have_no_cycle():
    """One direction between the converter's modules: hf_to_gguf may use quantize (for --outtype
    q4_k_m), quantize never imports hf_to_gguf; both write through writer, which imports neither."""
    graph = _import_graph()
    assert {"hf_to_gguf", "quantize", "writer", "llm", "names"} <= set(graph)
    assert "hf_to_gguf" not in graph["quantize"]
    assert {"writer", "quantize"} <= graph["hf_to_gguf"] and "writer" in graph["quantize"]
    assert graph["writer"] == set()
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"
    # The checker itself sees a cycle when there is one, lazy imports included.
    assert _find_cycle({**graph, "writer": {"quantize"}}) == ["quantize", "writer", "quantize"]


# ---------------------------------------------------------------------------------------------
# Tensors and metadata, per layout and output type
# ---------------------------------------------------------------------------------------------

CASES = [
    ("tiny_qwen3_dir", "f32"),
    ("tiny_qwen3_dir", "f16"),
    ("tiny_qwen3_dir", "bf16"),
    ("tiny_qwen3_dir", "q8_0"),
    ("tiny_qwen2_dir", "f32"),
    ("tiny_qwen2_dir", "q8_0"),
    ("tiny_minicpmv45_dir", "f16"),
    ("tiny_minicpmo26_dir", "f32"),
]


@pytest.mark.parametrize("fixture, outtype", CASES)
def test_tensors_match_hf(request, converted, fixture, outtype):
    hf_dir = request.getfixturevalue(fixture)
    g = read_gguf(converted(hf_dir, outtype))
    ref = hf_weights(hf_dir)
    expected = {llama_cpp_name(k): k for k in ref}
    assert sorted(g.tensors) == sorted(expected)
    for gguf_name, hf_name in expected.items():
        check_tensor(g.tensors[gguf_name], ref[hf_name], outtype, gguf_name)


@pytest.mark.parametrize("fixture, outtype", CASES)
def test_metadata_matches_config(request, converted, fixture, outtype):
    hf_dir = request.getfixturevalue(fixture)
    g = read_gguf(converted(hf_dir, outtype))
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = "qwen3" if cfg["model_type"] in ("qwen3", "minicpmv") else "qwen2"
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    model_type = {"qwen3": "qwen3", "qwen2": "qwen2", "minicpmv": "minicpm-v-4.5", "minicpmo": "minicpm-o-2.6"}
    assert g["general.architecture"] == arch
    assert g["general.name"] == hf_dir.name
    assert g["general.file_type"] == FILE_TYPES[outtype]
    if outtype == "q8_0":
        assert g["general.quantization_version"] == 2
    else:
        assert "general.quantization_version" not in g.fields
    assert g[f"{arch}.context_length"] == cfg["max_position_embeddings"]
    assert g[f"{arch}.embedding_length"] == cfg["hidden_size"]
    assert g[f"{arch}.block_count"] == cfg["num_hidden_layers"]
    assert g[f"{arch}.feed_forward_length"] == cfg["intermediate_size"]
    assert g[f"{arch}.attention.head_count"] == cfg["num_attention_heads"]
    assert g[f"{arch}.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert g[f"{arch}.attention.key_length"] == head_dim
    assert g[f"{arch}.attention.value_length"] == head_dim
    assert g[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    assert g[f"{arch}.rope.freq_base"] == pytest.approx(rope_theta(cfg), rel=1e-6)
    assert g[f"{arch}.rope.freq_base"] == pytest.approx(1e6)
    assert g["minicpm.model_type"] == model_type[cfg["model_type"]]
    assert g["minicpm.stop_tokens"] == ["<|im_end|>", "<|endoftext|>"]
    assert len(g["tokenizer.ggml.tokens"]) == N_VOCAB
    assert g["tokenizer.ggml.tokens"][151645] == "<|im_end|>"
    assert len(g["tokenizer.ggml.token_type"]) == N_VOCAB


def test_reader_agrees_with_gguf_reader(converted, tiny_qwen2_dir):
    """gguf.GGUFReader, the reference parser, sees the same metadata and tensors."""
    path = converted(tiny_qwen2_dir, "q8_0")
    ours = read_gguf(path)
    reader = GGUFReader(str(path))
    theirs = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert list(theirs) == list(ours.fields)
    for key, value in theirs.items():
        assert ours.fields[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert [t.name for t in reader.tensors] == list(ours.tensors)
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert [int(d) for d in t.shape] == mine.shape and t.tensor_type == mine.tensor_type
        np.testing.assert_array_equal(np.asarray(t.data), np.asarray(mine.data))


def test_minicpm_layout_converts_like_the_plain_one(converted, tiny_qwen3_dir, tiny_minicpmv45_dir):
    """Same seed, same LLM: the llm.* layout gives the same tensors as the plain one."""
    a = read_gguf(converted(tiny_qwen3_dir, "f16"))
    b = read_gguf(converted(tiny_minicpmv45_dir, "f16"))
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        np.testing.assert_array_equal(np.asarray(a.tensors[name].data), np.asarray(b.tensors[name].data))


def test_reference_loader_matches_plain_model(tiny_qwen3_dir, tiny_minicpmv45_dir):
    ids = torch.tensor([[151644, 872, 198, 9707, 151645]])
    with torch.no_grad():
        a = tiny_models.load_reference_llm(tiny_qwen3_dir)(ids).logits
        b = tiny_models.load_reference_llm(tiny_minicpmv45_dir)(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.std() > 1.0, "tiny model logits should be well spread"


def test_skipped_components_give_one_notice(tiny_minicpmv45_dir, tiny_minicpmo26_dir, tiny_qwen3_dir, tmp_path):
    _, notes = convert_logged(tiny_minicpmv45_dir, tmp_path / "v.gguf", "f16")
    skipped = [n for n in notes if n.startswith("skipped")]
    assert len(skipped) == 1
    assert "vpm.* (4)" in skipped[0] and "resampler.* (3)" in skipped[0] and "7 tensors" in skipped[0]

    _, notes = convert_logged(tiny_minicpmo26_dir, tmp_path / "o.gguf", "f16")
    skipped = [n for n in notes if n.startswith("skipped")]
    assert len(skipped) == 1
    for part in ("apm.* (2)", "audio_projection_layer.* (1)", "tts.* (1)", "vpm.* (4)", "resampler.* (3)"):
        assert part in skipped[0]

    _, notes = convert_logged(tiny_qwen3_dir, tmp_path / "q.gguf", "f16")
    assert not [n for n in notes if n.startswith("skipped")]


def test_sharded_equals_single_file(tiny_qwen3_dir, tmp_path):
    sharded = tiny_models.make_qwen3(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    a = convert(tiny_qwen3_dir, tmp_path / "a.gguf", "f16", name="tiny", progress=False, log=quiet)
    b = convert(sharded, tmp_path / "b.gguf", "f16", name="tiny", progress=False, log=quiet)
    assert a.read_bytes() == b.read_bytes()


def test_bf16_checkpoint_is_kept_bit_exact(tmp_path):
    hf_dir = tiny_models.make_qwen3(tmp_path / "bf16", layers=1, dtype="bfloat16")
    state = load_file(str(hf_dir / "model.safetensors"))
    out = convert(hf_dir, tmp_path / "bf16.gguf", "bf16", progress=False, log=quiet)
    g = read_gguf(out)
    for hf_name, t in state.items():
        raw = t.view(torch.int16).numpy().view(np.uint16)
        stored = np.asarray(g.tensors[llama_cpp_name(hf_name)].data)
        if t.dim() == 1:
            np.testing.assert_array_equal(stored.view(np.uint32) >> 16, raw.astype(np.uint32))
        else:
            np.testing.assert_array_equal(stored.view(np.uint16).reshape(raw.shape), raw)


def test_pytorch_bin_checkpoint(tiny_qwen2_dir, converted, tmp_path):
    hf_dir = link_copy(tiny_qwen2_dir, tmp_path / "bin", skip={"model.safetensors"})
    torch.save(load_file(str(tiny_qwen2_dir / "model.safetensors")), hf_dir / "pytorch_model.bin")
    out = convert(hf_dir, tmp_path / "bin.gguf", "f32", name=tiny_qwen2_dir.name, progress=False, log=quiet)
    assert out.read_bytes() == converted(tiny_qwen2_dir, "f32").read_bytes()


def test_head_dim_other_than_hidden_over_heads(tmp_path):
    hf_dir = tiny_models.make_qwen3(tmp_path / "hd", layers=1, head_dim=48)
    g = read_gguf(convert(hf_dir, tmp_path / "hd.gguf", "f32", progress=False, log=quiet))
    assert g["qwen3.attention.key_length"] == 48 and g["qwen3.attention.value_length"] == 48
    assert [int(d) for d in g.tensors["blk.0.attn_q.weight"].shape] == [128, 4 * 48]
    assert [int(d) for d in g.tensors["blk.0.attn_output.weight"].shape] == [4 * 48, 128]
    assert [int(d) for d in g.tensors["blk.0.attn_q_norm.weight"].shape] == [48]


def test_q8_0_falls_back_to_f16_for_odd_rows(tmp_path):
    hf_dir = tiny_models.make_qwen3(tmp_path / "odd", layers=1, ffn=200)
    out, notes = convert_logged(hf_dir, tmp_path / "odd.gguf", "q8_0")
    g = read_gguf(out)
    ref = hf_weights(hf_dir)
    check_tensor(g.tensors["blk.0.ffn_down.weight"], ref["model.layers.0.mlp.down_proj.weight"], "f16", "ffn_down")
    check_tensor(g.tensors["blk.0.ffn_up.weight"], ref["model.layers.0.mlp.up_proj.weight"], "q8_0", "ffn_up")
    assert any("blk.0.ffn_down.weight" in n and "block size 32" in n and "F16" in n for n in notes)
    assert g["general.file_type"] == FILE_TYPES["q8_0"]


@pytest.mark.parametrize("case", ["absent", "identical", "different"])
def test_tied_embeddings(tmp_path, case):
    hf_dir = tiny_models.make_qwen2(tmp_path / "tied", layers=1, tie=True)
    if case != "absent":
        def add_lm_head(state):
            embed = state["model.embed_tokens.weight"]
            state["lm_head.weight"] = embed.clone() if case == "identical" else embed.flip(0).contiguous()

        hf_dir = rewrite_weights(hf_dir, tmp_path / case, add_lm_head)
    out, notes = convert_logged(hf_dir, tmp_path / "tied.gguf", "f32")
    g = read_gguf(out)
    assert "token_embd.weight" in g.tensors
    if case == "different":
        assert "output.weight" in g.tensors
        assert any("differs" in n for n in notes)
        with torch.no_grad():
            model = tiny_models.load_reference_llm(hf_dir)
        check_tensor(g.tensors["output.weight"], model.lm_head.weight.detach().numpy(), "f32", "output")
    else:
        assert "output.weight" not in g.tensors
        assert any("omitted" in n for n in notes) == (case == "identical")


def test_memory_is_bounded_by_the_chunk(tiny_qwen3_dir, converted, tmp_path, monkeypatch):
    """With 4 MiB chunks no tensor is ever whole in memory (token_embd alone is 74 MiB in f32)."""
    monkeypatch.setattr(hf_to_gguf, "_CHUNK_BYTES", 4 << 20)
    tracemalloc.start()
    try:
        out = convert(tiny_qwen3_dir, tmp_path / f"{tiny_qwen3_dir.name}.gguf", "q8_0", progress=False, log=quiet)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * N_VOCAB * 128 * 4
    assert out.read_bytes() == converted(tiny_qwen3_dir, "q8_0").read_bytes()


def test_vocab_only(tiny_minicpmv45_dir, tmp_path):
    g = read_gguf(convert(tiny_minicpmv45_dir, tmp_path / "v.gguf", vocab_only=True, progress=False, log=quiet))
    assert g.tensors == {}
    assert g["general.architecture"] == "qwen3"
    assert "general.file_type" not in g.fields
    assert len(g["tokenizer.ggml.tokens"]) == N_VOCAB
    assert g["qwen3.block_count"] == 2

    # Without any weights, the MiniCPM version tells the LLM type.
    bare = link_copy(tiny_minicpmv45_dir, tmp_path / "bare", skip={"model.safetensors"})
    g = read_gguf(convert(bare, tmp_path / "bare.gguf", vocab_only=True, progress=False, log=quiet))
    assert g["general.architecture"] == "qwen3" and len(g["tokenizer.ggml.tokens"]) == N_VOCAB


def test_default_output_name_and_force(tiny_qwen2_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = convert(tiny_qwen2_dir, outtype="bf16", progress=False, log=quiet)
    assert out == tmp_path / f"{tiny_qwen2_dir.name}-bf16.gguf" and out.is_file()
    before = out.read_bytes()
    with pytest.raises(ConvertError, match="already exists.*--force"):
        convert(tiny_qwen2_dir, outtype="bf16", progress=False, log=quiet)
    assert out.read_bytes() == before
    convert(tiny_qwen2_dir, out, "bf16", force=True, progress=False, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "minicpm_cpp.convert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_converts(tiny_minicpmv45_dir, converted, tmp_path):
    out = tmp_path / "cli.gguf"
    r = run_cli(tiny_minicpmv45_dir, "-o", out, "--outtype", "f16", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "skipped 7 tensors" in r.stderr and f"wrote {out}" in r.stderr
    assert out.read_bytes() == converted(tiny_minicpmv45_dir, "f16").read_bytes()


def test_cli_help_and_errors(tmp_path):
    r = run_cli("--help")
    assert r.returncode == 0
    for option in ("--outfile", "--outtype", "--force", "--vocab-only", "q8_0", "bf16"):
        assert option in r.stdout
    r = run_cli(tmp_path / "missing", "-o", tmp_path / "x.gguf")
    assert r.returncode == 1
    assert "minicpm-convert: error: model directory not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(tmp_path, "--outtype", "q4_k")
    assert r.returncode == 2 and "invalid choice" in r.stderr


# ---------------------------------------------------------------------------------------------
# Errors: a clear message, nothing left behind
# ---------------------------------------------------------------------------------------------


def _drop(*names_to_drop):
    def edit(state):
        for n in names_to_drop:
            del state[n]

    return edit


def _case_missing_dir(src, tmp):
    return tmp / "nope"


def _case_not_a_dir(src, tmp):
    (tmp / "file").write_text("x")
    return tmp / "file"


def _case_no_config(src, tmp):
    return link_copy(src, tmp / "ckpt", skip={"config.json"})


def _case_bad_config(src, tmp):
    d = link_copy(src, tmp / "ckpt", skip={"config.json"})
    (d / "config.json").write_text("{not json")
    return d


def _case_no_weights(src, tmp):
    return link_copy(src, tmp / "ckpt", skip={"model.safetensors"})


def _case_truncated(src, tmp):
    d = link_copy(src, tmp / "ckpt", skip={"model.safetensors"})
    with open(src / "model.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(0)
        head = f.read(8 + n + 1000)
    (d / "model.safetensors").write_bytes(head)
    return d


def _case_missing_shard(src, tmp):
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    return link_copy(src, tmp / "ckpt", skip={shard})


def _case_missing_tensor(src, tmp):
    return rewrite_weights(src, tmp / "ckpt", _drop("llm.model.layers.1.mlp.up_proj.weight"))


def _case_shape_mismatch(src, tmp):
    return edit_config(src, tmp / "ckpt", intermediate_size=512)


def _case_too_many_layers(src, tmp):
    return edit_config(src, tmp / "ckpt", num_hidden_layers=1)


def _case_llama(src, tmp):
    return edit_config(src, tmp / "ckpt", architectures=["LlamaForCausalLM"], model_type="llama")


def _case_rope_scaling(src, tmp):
    return edit_config(src, tmp / "ckpt", rope_scaling={"rope_type": "yarn", "factor": 4.0})


def _case_llama_llm_in_minicpm(src, tmp):
    return rewrite_weights(
        src,
        tmp / "ckpt",
        _drop(*(f"llm.model.layers.{i}.self_attn.{n}_norm.weight" for i in range(2) for n in "qk")),
    )


def _case_unknown_llm_tensor(src, tmp):
    def edit(state):
        state["llm.model.layers.0.mlp.extra.weight"] = torch.zeros(4, 4)

    return rewrite_weights(src, tmp / "ckpt", edit)


def _case_f16_overflow(src, tmp):
    def edit(state):
        state["llm.model.layers.1.self_attn.o_proj.weight"][0, 0] = 1e6

    return rewrite_weights(src, tmp / "ckpt", edit)


def _case_no_tokenizer(src, tmp):
    return link_copy(src, tmp / "ckpt", skip={"vocab.json"})


ERROR_CASES = {
    "no_tokenizer": (_case_no_tokenizer, "tokenizer: .*vocab.json"),
    "missing_dir": (_case_missing_dir, "model directory not found"),
    "not_a_dir": (_case_not_a_dir, "not a directory"),
    "no_config": (_case_no_config, "config.json not found"),
    "bad_config": (_case_bad_config, "cannot parse .*config.json"),
    "no_weights": (_case_no_weights, "no weights in .*expected model.safetensors"),
    "truncated": (_case_truncated, "outside the file|not a safetensors file"),
    "missing_shard": (_case_missing_shard, "points to a missing shard: model-00002-of-00002.safetensors"),
    "missing_tensor": (_case_missing_tensor, r"llm\.model\.layers\.1\.mlp\.up_proj\.weight not found in checkpoint"),
    "shape_mismatch": (_case_shape_mismatch, r"gate_proj\.weight: shape \[256, 128\] does not match config.json \(expected \[512, 128\]\)"),
    "too_many_layers": (_case_too_many_layers, "layers.1.* num_hidden_layers = 1"),
    "llama": (_case_llama, "unsupported architecture 'LlamaForCausalLM'.*supported: .*Qwen3ForCausalLM"),
    "rope_scaling": (_case_rope_scaling, "rope_scaling type 'yarn' is not supported"),
    "llama_llm_in_minicpm": (_case_llama_llm_in_minicpm, "neither Qwen3 .* nor Qwen2.*supported"),
    "unknown_llm_tensor": (_case_unknown_llm_tensor, r"unexpected LLM tensor llm\.model\.layers\.0\.mlp\.extra\.weight"),
    "f16_overflow": (_case_f16_overflow, r"o_proj\.weight: values beyond the f16 range"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_clear_and_leave_nothing(case, tiny_minicpmv45_dir, tiny_minicpmo26_dir, tmp_path):
    make, message = ERROR_CASES[case]
    src = tiny_minicpmo26_dir if case == "missing_shard" else tiny_minicpmv45_dir
    hf_dir = make(src, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConvertError, match=message):
        convert(hf_dir, out_dir / "model.gguf", "f16", progress=False, log=quiet)
    assert list(out_dir.iterdir()) == []
    # The command line says the same, without a traceback, and exits non-zero.
    with pytest.raises(SystemExit) as exc:
        hf_to_gguf.main([str(hf_dir), "-o", str(out_dir / "model.gguf"), "--no-progress"])
    assert exc.value.code not in (0, None)
    assert re.search(message, str(exc.value.code)) and str(exc.value.code).startswith("minicpm-convert: error: ")
    assert list(out_dir.iterdir()) == []


def test_bad_output_paths(tiny_qwen3_dir, tmp_path):
    with pytest.raises(ConvertError, match="output directory .* does not exist"):
        convert(tiny_qwen3_dir, tmp_path / "no" / "x.gguf", progress=False, log=quiet)
    with pytest.raises(ConvertError, match="is a directory"):
        convert(tiny_qwen3_dir, tmp_path, progress=False, log=quiet)
    with pytest.raises(ConvertError, match="unknown output type 'q4_k'"):
        convert(tiny_qwen3_dir, tmp_path / "x.gguf", "q4_k", progress=False, log=quiet)


def _interrupt_after(monkeypatch, n_calls, exc):
    real = hf_to_gguf.encode_rows
    calls = {"n": 0}

    def encode(qtype, rows):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise exc
        return real(qtype, rows)

    monkeypatch.setattr(hf_to_gguf, "encode_rows", encode)
    return calls


def test_interrupt_leaves_nothing(tiny_qwen3_dir, tmp_path, monkeypatch):
    calls = _interrupt_after(monkeypatch, 5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_qwen3_dir, tmp_path / "x.gguf", progress=False, log=quiet)
    assert calls["n"] == 6
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exc:
        hf_to_gguf.main([str(tiny_qwen3_dir), "-o", str(tmp_path / "x.gguf"), "--no-progress"])
    assert exc.value.code == 130
    assert list(tmp_path.iterdir()) == []


def test_write_error_leaves_nothing(tiny_qwen3_dir, tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 3, OSError(28, "No space left on device"))
    with pytest.raises(SystemExit) as exc:
        hf_to_gguf.main([str(tiny_qwen3_dir), "-o", str(tmp_path / "x.gguf"), "--no-progress"])
    assert "No space left on device" in str(exc.value.code)
    assert list(tmp_path.iterdir()) == []


def test_progress_counter_without_tqdm(tiny_qwen3_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    convert(tiny_qwen3_dir, tmp_path / "p.gguf", "f32", progress=True, log=quiet)
    err = capsys.readouterr().err
    assert "[25/25] output.weight" in err
