"""MiniCPM-o 4.5 TTS talker: converter, condition, teacher-forced logits, sampler, generation
and the streaming form, against tests/ref_minicpmo_tts.py (written from the official
MiniCPMTTS / TTSStreamingGenerator code) on the tiny random checkpoint of tiny_models."""

from __future__ import annotations

import copy
import json
import shutil
import types
from pathlib import Path

import struct

import numpy as np
import pytest
import torch

import minicpm_cpp as mc
import tiny_models
from minicpm_cpp import tts as mtts
from minicpm_cpp.convert import ConvertError, convert
from minicpm_cpp.convert.gguf_raw import RawGGUF, RawKV, write_header
from ref_minicpmo_tts import SplitMix, load_ref_tts, ref_probs

RTOL = 1e-4


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_f32(tiny_minicpmo45_dir, converted) -> Path:
    return converted(tiny_minicpmo45_dir, "f32")


@pytest.fixture(scope="module")
def model(gguf_f32):
    # One thread: the tiny talker's graphs are ~100 small nodes, where a thread pool's barriers
    # only cost time (on a loaded 2-core machine, seconds per step).
    return mc.Model(gguf_f32, device="cpu", n_threads=1)


@pytest.fixture(scope="module")
def ref(tiny_minicpmo45_dir):
    return load_ref_tts(tiny_minicpmo45_dir)


# GGUF value types (gguf_raw's ids)
U32, F32T, BOOL, STR = 4, 6, 7, 8
_TYPE_NBYTES = {0: 4, 1: 2}  # F32, F16 element sizes


def kv(key, vtype, value) -> RawKV:
    if vtype == STR:
        b = value.encode()
        return RawKV(key, STR, struct.pack("<Q", len(b)) + b)
    fmt = {U32: "<I", F32T: "<f", BOOL: "<?"}[vtype]
    return RawKV(key, vtype, struct.pack(fmt, value))


def tts_file(src: Path, dst: Path, set_keys=(), drop_keys=(), drop=(), replace=None, talker=True) -> Path:
    """A GGUF of the talker alone (general.architecture and minicpm.tts.* keys, tts.* tensors)
    copied from ``src`` as raw bytes, with keys set / dropped and tensors dropped / replaced
    (float32 arrays in numpy order; F32 / F16 files only). ``talker=False``: everything but the
    talker instead."""
    raw = RawGGUF(src)
    replace = dict(replace or {})
    if talker:
        keys = {k: v for k, v in raw.kv.items() if k == "general.architecture" or k.startswith("minicpm.tts.")}
    else:
        keys = {k: v for k, v in raw.kv.items() if not k.startswith("minicpm.tts.")}
    for k in drop_keys:
        keys.pop(k)
    for k in set_keys:
        keys[k.key] = k
    tensors, blobs = [], []
    for t in raw.tensors:
        if t.name.startswith("tts.") != talker or t.name in drop:
            continue
        if t.name in replace:
            a = np.ascontiguousarray(replace[t.name], dtype=np.float32)
            tensors.append((t.name, tuple(reversed(a.shape)), 0, a.nbytes))
            blobs.append(a.tobytes())
            continue
        n = _TYPE_NBYTES[t.ggml_type] * int(np.prod(t.ne))
        tensors.append((t.name, t.ne, t.ggml_type, n))
        blobs.append(raw.data(t, n))
    with open(dst, "wb") as f:
        write_header(f, list(keys.values()), tensors, 32)
        for b in blobs:
            f.write(memoryview(b))
            f.write(b"\0" * (-len(b) % 32))
    raw.close()
    return dst


def ref_with(ref, **over):
    """The reference with other tts_config values (the same weights)."""
    r = copy.copy(ref)
    r.cfg = {**ref.cfg, **over}
    return r


def variant(base: Path, tmp_path: Path, name: str = "v.gguf", **kw) -> Path:
    return tts_file(base, tmp_path / name, **kw)


def inputs(seed: int, n: int, llm_dim: int = 256):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, tiny_models.VOCAB_SIZE, n)
    tokens[0] = 151687  # a special row too
    hidden = rng.standard_normal((n, llm_dim)).astype(np.float32)
    return tokens, hidden


# ---- converter -----------------------------------------------------------------------------------


def _fields(path: Path):
    r = RawGGUF(path)
    return {k: v.decode() for k, v in r.kv.items()}, {t.name: t for t in r.tensors}, r


def test_converter_metadata_and_tensors(gguf_f32, tiny_minicpmo45_dir):
    keys, tensors, raw = _fields(gguf_f32)
    tc = json.loads((tiny_minicpmo45_dir / "config.json").read_text())["tts_config"]
    want = {
        "minicpm.tts.has_tts": True,
        "minicpm.tts.embedding_length": tc["hidden_size"],
        "minicpm.tts.block_count": tc["num_hidden_layers"],
        "minicpm.tts.feed_forward_length": tc["intermediate_size"],
        "minicpm.tts.attention.head_count": tc["num_attention_heads"],
        "minicpm.tts.attention.head_count_kv": tc["num_key_value_heads"],
        "minicpm.tts.context_length": tc["max_position_embeddings"],
        "minicpm.tts.llm_dim": 256,
        "minicpm.tts.num_text_tokens": 152064,
        "minicpm.tts.num_audio_tokens": 6562,
        "minicpm.tts.audio_bos_token_id": 151687,
        "minicpm.tts.text_eos_token_id": 151692,
        "minicpm.tts.normalize_projected_hidden": True,
        "minicpm.tts.condition_type": "hidden_text_merge",
        "minicpm.tts.attention_type": "full_attention",
        "minicpm.tts.window_size": 2,
        "minicpm.tts.recomputed_chunks": 1,
        "minicpm.tts.sliding_window_size": 300,
        "minicpm.tts.interleaved": False,
        "minicpm.tts.sampling.top_k": 25,
        "minicpm.tts.sampling.penalty_window": 16,
    }
    for k, v in want.items():
        assert keys[k] == v, k
    for k, v in {"minicpm.tts.attention.layer_norm_rms_epsilon": 1e-6, "minicpm.tts.rope.freq_base": 10000.0,
                 "minicpm.tts.sampling.temp": 0.8, "minicpm.tts.sampling.top_p": 0.85,
                 "minicpm.tts.sampling.penalty_repeat": 1.05}.items():
        assert keys[k] == pytest.approx(v, rel=1e-6), k
    tts_names = sorted(n for n in tensors if n.startswith("tts."))
    assert len(tts_names) == 8 + 9 * 2
    assert not [n for n in tensors if "embed_tokens" in n or "spk" in n]
    assert tensors["tts.text_embd.weight"].ne == (64, 152064)
    assert tensors["tts.code_head.weight"].ne == (64, 6562)
    assert tensors["tts.blk.1.attn_k.weight"].ne == (64, 32)
    assert {t.ggml_type for n, t in tensors.items() if n.startswith("tts.")} == {0}  # all F32 at f32
    # the head's weight norm folded: W = g * v / |v| (rows), from the checkpoint's g and v
    from safetensors import safe_open

    with safe_open(str(tiny_minicpmo45_dir / "model.safetensors"), "pt") as st:
        g = st.get_tensor("tts.head_code.0.parametrizations.weight.original0").double()
        v = st.get_tensor("tts.head_code.0.parametrizations.weight.original1").double()
    w = (g * v / v.norm(dim=1, keepdim=True)).numpy()
    got = np.frombuffer(raw.data(tensors["tts.code_head.weight"], 6562 * 64 * 4), dtype=np.float32).reshape(6562, 64)
    assert rel(got, w) < 1e-6
    # ... which is what torch's parametrization computes
    lin = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(64, 6562, bias=False))
    with torch.no_grad():
        lin.parametrizations.weight.original0.copy_(g.float())
        lin.parametrizations.weight.original1.copy_(v.float())
    assert rel(got, lin.weight.detach().numpy()) < 1e-6


def test_converter_defaults_from_minicpmtts_config():
    from minicpm_cpp.convert import tts as ctts

    llm = types.SimpleNamespace(hparams=types.SimpleNamespace(n_embd=2560), model_type="minicpm-o-4.5")
    spec = ctts.detect_tts({"tts_config": {"condition_type": "hidden_text_merge"}}, llm)
    assert (spec.n_embd, spec.n_layer, spec.n_head, spec.n_head_kv, spec.n_ff, spec.n_ctx) == (768, 20, 12, 12, 3072, 4096)
    assert (spec.audio_bos_token_id, spec.text_eos_token_id, spec.num_audio_tokens) == (21132, 21133, 4097)
    assert spec.num_text_tokens == 21178 and spec.llm_dim == 2560
    assert spec.normalize_projected_hidden is False and spec.attention_type == "sliding_recompute"
    assert (spec.eps, spec.rope_theta) == (1e-6, 10000.0)
    assert any("lacks" in n for n in spec.notices)
    with pytest.raises(ConvertError, match="llm_dim"):
        ctts.detect_tts({"tts_config": {"llm_dim": 256}}, llm)
    with pytest.raises(ConvertError, match="attention_type"):
        ctts.detect_tts({"tts_config": {"attention_type": "bogus"}}, llm)
    with pytest.raises(ConvertError, match="num_vq"):
        ctts.detect_tts({"tts_config": {"num_vq": 4}}, llm)
    assert not ctts.has_tts({}, ["tts.emb_text.weight"], llm)  # a stray stand-in is no talker
    o26 = types.SimpleNamespace(hparams=llm.hparams, model_type="minicpm-o-2.6")
    assert not ctts.has_tts({}, ["tts.emb_code.0.weight", "tts.head_code.0.weight",
                                 "tts.model.layers.0.self_attn.q_proj.weight"], o26)


def _checkpoint_copy(src: Path, dst: Path, tts_config_changes) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["tts_config"].update(tts_config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_converter_refuses_wrong_shapes(tiny_minicpmo45_dir, tmp_path):
    bad = _checkpoint_copy(tiny_minicpmo45_dir, tmp_path / "bad", {"num_audio_tokens": 6000})
    with pytest.raises(ConvertError, match=r"tts\.emb_code\.0\.weight: shape"):
        convert(bad, tmp_path / "bad.gguf", "f32", progress=False, log=lambda m: None)
    bad2 = _checkpoint_copy(tiny_minicpmo45_dir, tmp_path / "bad2", {"num_hidden_layers": 1})
    with pytest.raises(ConvertError, match="num_hidden_layers"):
        convert(bad2, tmp_path / "bad2.gguf", "f32", progress=False, log=lambda m: None)


# ---- condition and teacher-forced logits --------------------------------------------------------


def test_condition_parity(model, ref):
    tokens, hidden = inputs(1, 13)
    got = model.tts.condition(tokens, hidden)
    want = ref.condition(tokens.tolist(), torch.from_numpy(hidden)).numpy()
    assert got.shape == (13, 64)
    assert rel(got, want) <= RTOL
    # the special rows
    rows = model.tts.text_embeddings([151687, 151692])
    assert rel(rows, ref.emb_text.weight[[151687, 151692]].detach().numpy()) == 0.0


def test_condition_without_normalisation(gguf_f32, ref, tmp_path):
    path = variant(gguf_f32, tmp_path, set_keys=[kv("minicpm.tts.normalize_projected_hidden", BOOL, False)])
    t = mtts.Tts(path, device="cpu", n_threads=1)
    assert t.hparams["normalize_projected_hidden"] is False
    r = ref_with(ref, normalize_projected_hidden=False)
    tokens, hidden = inputs(2, 7)
    got = t.condition(tokens, hidden)
    assert rel(got, r.condition(tokens.tolist(), torch.from_numpy(hidden)).numpy()) <= RTOL
    normed = ref.condition(tokens.tolist(), torch.from_numpy(hidden)).numpy()
    assert rel(got, normed) > 1e-2


def test_teacher_forced_logits_parity(model, ref):
    tokens, hidden = inputs(3, 11)
    cond = model.tts.condition(tokens, hidden)
    audio = np.random.default_rng(3).integers(0, 6561, 40)
    got = model.tts.logits(cond, audio)
    want = ref.logits(torch.from_numpy(cond), audio.tolist()).numpy()
    assert got.shape == (51, 6562)
    assert rel(got, want) <= RTOL
    assert want.std() > 0.5
    # the condition alone, and a second call from a fresh cache
    assert rel(model.tts.logits(cond), want[:11]) <= RTOL
    assert rel(model.tts.logits(cond, audio), got) == 0.0


# ---- sampler ------------------------------------------------------------------------------------


SAMPLER_CASES = [
    dict(),
    dict(bos_step=True),
    dict(mask_eos=True),
    dict(temperature=0.3, top_p=0.5, top_k=7),
    dict(temperature=1.3, top_p=1.0, top_k=0, repetition_penalty=1.3),
    dict(top_p=0.01, top_k=1),  # both warpers keep 3
    dict(repetition_penalty=1.0, penalty_window=4),
]


@pytest.mark.parametrize("case", SAMPLER_CASES, ids=[str(i) for i in range(len(SAMPLER_CASES))])
def test_sampler_probs_equal_the_reference_processors(case):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(6562) * 2.5).astype(np.float32)
    history = list(rng.integers(0, 40, 30))  # repeats, some logits negative
    logits[:40] = np.abs(logits[:40]) * np.where(np.arange(40) % 2, 1, -1) + 3.0 * (np.arange(40) % 3 == 0)
    kw = dict(temperature=0.8, top_p=0.85, top_k=25, repetition_penalty=1.05, penalty_window=16)
    kw.update({k: v for k, v in case.items() if k in kw})
    flags = dict(bos_step=case.get("bos_step", False), eos=6561, mask_eos=case.get("mask_eos", False))
    got = mtts.tts_probs(logits, history, **kw, **flags)
    want = ref_probs(torch.from_numpy(logits), history, kw["temperature"], kw["top_p"], kw["top_k"] or None,
                     kw["repetition_penalty"], kw["penalty_window"], **flags).numpy()
    assert np.abs(got - want).max() < 1e-6
    assert ((got > 0) == (want > 0)).all()
    if not flags["bos_step"]:
        assert (got > 0).sum() >= 3
    if flags["mask_eos"]:
        assert got[6561] == 0


def test_rng_and_draws():
    u = mc._core.tts_uniforms(123, 1000)
    r = SplitMix(123)
    assert u == [r.uniform() for _ in range(1000)]
    p = mtts.tts_probs(np.random.default_rng(0).standard_normal(500).astype(np.float32) * 3, [])
    ids = mtts.tts_draw(p, 99, 200)
    r = SplitMix(99)
    assert ids == [r.draw(p) for _ in range(200)]
    assert len(set(ids)) > 3 and all(p[i] > 0 for i in ids)


# ---- generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_generate_equals_the_reference_with_our_rng(model, ref, seed):
    tokens, hidden = inputs(10 + seed, 9)
    cond = model.tts.condition(tokens, hidden)
    got = model.tts.generate(cond, seed=seed, min_new_tokens=4, max_new_tokens=80)
    want = ref.generate(torch.from_numpy(cond), SplitMix(seed), min_new_token=4, max_new_token=80)
    assert got == want
    assert len(got) >= 4 and all(0 <= t < 6561 for t in got)


def test_generate_limits(model, ref):
    tokens, hidden = inputs(20, 5)
    cond = model.tts.condition(tokens, hidden)
    # EOS masked for all 30 steps: the reference returns the first 29 codes
    got = model.tts.generate(cond, seed=3, min_new_tokens=30, max_new_tokens=30)
    assert len(got) == 29
    assert got == ref.generate(torch.from_numpy(cond), SplitMix(3), min_new_token=30, max_new_token=30)
    # other sampling parameters go through
    got = model.tts.generate(cond, seed=4, temperature=0.5, top_k=5, top_p=0.9, repetition_penalty=1.2,
                             min_new_tokens=2, max_new_tokens=25)
    assert got == ref.generate(torch.from_numpy(cond), SplitMix(4), 0.5, 0.9, 5, 1.2, 2, 25)


def _stream_both(tts, ref, cond, chunk, seed, max_new):
    s = tts.stream(seed=seed)
    ref.stream_begin()
    r = SplitMix(seed)
    out = []
    n = cond.shape[0]
    for i, a in enumerate(range(0, n, chunk)):
        last = a + chunk >= n
        got = s.push(cond[a:a + chunk], last=last, max_new_tokens=max_new)
        want = ref.stream_push(torch.from_numpy(cond[a:a + chunk]), last, r, max_new_token=max_new)
        assert got == want, f"chunk {i}"
        assert s.position == ref.text_start_pos
        out.append(got)
    assert s.tokens == ref.all_tokens
    return s, out


def test_stream_equals_the_reference_and_its_sequence_layout(model, ref):
    tokens, hidden = inputs(30, 30)
    cond = model.tts.condition(tokens, hidden)
    s, chunks = _stream_both(model.tts, ref, cond, 10, seed=5, max_new=500)
    assert sum(map(len, chunks)) > 10
    # Full attention: the turn is one causal sequence c1..c10 B a.. c11..c20 B a.. c21..c30 E B a..
    # (EOS never fed): teacher-forced logits of that layout equal every streamed step's logits.
    tts = model.tts
    bos, eos = tts.text_embeddings([151687]), tts.text_embeddings([151692])
    seq, rows = [], []
    off = 0
    for i, toks in enumerate(chunks):
        part = [cond[i * 10:(i + 1) * 10]] + ([eos] if i == len(chunks) - 1 else []) + [bos]
        L = sum(p.shape[0] for p in part)
        seq += part
        rows += [off + L - 1] + [off + L + t for t in range(len(toks))]
        if toks:
            seq.append(tts.code_embeddings(toks))
        off += L + len(toks)
    full = tts.logits(np.concatenate(seq), [])
    ref_steps = torch.stack(ref.step_logits).numpy()
    assert len(rows) == len(ref_steps)
    assert rel(full[rows], ref_steps) <= RTOL
    # a new turn starts again from position 0 with the same seed: the same codes
    s.reset()
    assert s.position == 0 and s.tokens == []
    assert s.push(cond[:10], max_new_tokens=500) == chunks[0]


@pytest.mark.parametrize("attention,extra", [("sliding_recompute", {}), ("sliding_window", {"window": 12}),
                                             ("reindex", {})])
def test_stream_attention_types(gguf_f32, ref, tmp_path, attention, extra):
    keys = [kv("minicpm.tts.attention_type", STR, attention)]
    over = {"attention_type": attention}
    if "window" in extra:
        keys.append(kv("minicpm.tts.sliding_window_size", U32, extra["window"]))
        over["streaming_sliding_window_audio_window_size"] = extra["window"]
    t = mtts.Tts(variant(gguf_f32, tmp_path, set_keys=keys), device="cpu", n_threads=1)
    assert t.hparams["attention_type"] == attention
    r = ref_with(ref, **over)
    tokens, hidden = inputs(40, 24)
    cond = t.condition(tokens, hidden)
    _, chunks = _stream_both(t, r, cond, 4 if attention == "reindex" else 8, seed=11, max_new=40)
    assert sum(map(len, chunks)) > 8
    if attention == "reindex":   # the cache was cut and turned at least twice
        assert getattr(r, "n_reindex", 0) >= 2


# ---- errors ---------------------------------------------------------------------------------------


def test_no_tts_weights(gguf_f32, tmp_path):
    path = tts_file(gguf_f32, tmp_path / "no-tts.gguf", talker=False)
    m = mc.Model(path, device="cpu", n_threads=1)
    assert not m._m.has_component("tts") and m.has_audio
    with pytest.raises(mc.UnsupportedError, match="no TTS talker"):
        m.tts
    with pytest.raises(mc.UnsupportedError, match="no TTS talker"):
        mtts.Tts(path, device="cpu", n_threads=1)


def test_bad_files(gguf_f32, tmp_path):
    wrong = np.zeros((64, 64), np.float32)  # numpy [32, 64] expected (2 KV heads of 16)
    cases = {
        "shape": (dict(replace={"tts.blk.0.attn_k.weight": wrong}), "tts.blk.0.attn_k.weight"),
        "missing": (dict(drop=["tts.code_head.weight"]), "tts.code_head.weight"),
        "heads": (dict(set_keys=[kv("minicpm.tts.attention.head_count", U32, 3)]), "heads"),
        "bos": (dict(set_keys=[kv("minicpm.tts.audio_bos_token_id", U32, 152064)]), "audio_bos_token_id"),
        "attention": (dict(set_keys=[kv("minicpm.tts.attention_type", STR, "bogus")]), "bogus"),
        "layers": (dict(set_keys=[kv("minicpm.tts.block_count", U32, 5)]), "block_count"),
        "eps": (dict(set_keys=[kv("minicpm.tts.attention.layer_norm_rms_epsilon", F32T, float("nan"))]), "epsilon"),
        "no keys": (dict(drop_keys=["minicpm.tts.embedding_length"]), "embedding_length"),
    }
    ok = variant(gguf_f32, tmp_path, "ok.gguf")
    assert mtts.Tts(ok, device="cpu", n_threads=1).hparams["n_layer"] == 2  # the unchanged copy loads
    for name, (kw, what) in cases.items():
        path = variant(gguf_f32, tmp_path, f"{name.replace(' ', '_')}.gguf", **kw)
        with pytest.raises(mc.FormatError, match=what):
            mtts.Tts(path, device="cpu", n_threads=1)


def test_bad_arguments(model):
    tts = model.tts
    tokens, hidden = inputs(50, 4)
    cond = tts.condition(tokens, hidden)
    with pytest.raises(mc.InvalidArgumentError):
        tts.condition(tokens, hidden[:, :100])
    with pytest.raises(mc.InvalidArgumentError):
        tts.condition(tokens, hidden[:3])
    with pytest.raises(mc.InvalidArgumentError, match="outside emb_text"):
        tts.condition([152064, 1, 2, 3], hidden)
    with pytest.raises(mc.InvalidArgumentError, match="audio token"):
        tts.logits(cond, [6562])
    with pytest.raises(mc.InvalidArgumentError):
        tts.logits(cond[:, :10])
    bad = cond.copy()
    bad[0, 0] = np.nan
    with pytest.raises(mc.InvalidArgumentError, match="non-finite"):
        tts.logits(bad)
    with pytest.raises(mc.InvalidArgumentError):
        tts.generate(cond, temperature=0)
    with pytest.raises(mc.InvalidArgumentError):
        tts.generate(cond, top_p=1.5)
    with pytest.raises(mc.InvalidArgumentError):
        tts.generate(cond, max_new_tokens=0)
    with pytest.raises(mc.InvalidArgumentError):
        tts.generate(cond, seed="1")
    s = tts.stream()
    s.push(cond, last=True, max_new_tokens=3)
    with pytest.raises(mc.InvalidArgumentError, match="ended"):
        s.push(cond)
    s2 = tts.stream()
    with pytest.raises(mc.InvalidArgumentError, match="newer"):
        s.reset()
    s2.push(cond, max_new_tokens=2)
    with pytest.raises(mc.ContextFullError):
        mtts.Tts(model, n_ctx=16, n_threads=1).logits(np.zeros((17, 64), np.float32))


# ---- llama.cpp-omni's files ---------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's Q/K row permutation (LlamaModel.permute) for its adjacent-pair RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_omni_files(hf_dir: Path, out_dir: Path):
    """llama.cpp-omni's tts/<name>-tts-F16.gguf and -projector-F16.gguf layouts (spec §5.2-5.3:
    convert_hf_to_gguf.py on surgery.py's tts/ dir, convert_projector.py), written here from the
    tiny checkpoint in F32 as its convert.sh does."""
    import gguf
    from safetensors import safe_open

    tc = json.loads((hf_dir / "config.json").read_text())["tts_config"]
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as st:
        sd = {k[4:]: st.get_tensor(k).float().numpy() for k in st.keys() if k.startswith("tts.")}
    h, n_head, n_kv = tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"]
    w = gguf.GGUFWriter(str(out_dir / "tiny-tts-F32.gguf"), "llama")
    w.add_block_count(tc["num_hidden_layers"])
    w.add_context_length(tc["max_position_embeddings"])
    w.add_embedding_length(h)
    w.add_feed_forward_length(tc["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for il in range(tc["num_hidden_layers"]):
        for hf, gg in names.items():
            t = sd[f"model.layers.{il}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, n_head)
            if gg == "attn_k":
                t = _permute(t, n_kv)
            w.add_tensor(f"blk.{il}.{gg}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for k in ("emb_text.weight", "emb_code.0.weight"):
        w.add_tensor(k, sd[k])
    for proj in ("projector_semantic", "projector_spk"):
        for part in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
            w.add_tensor(f"{proj}.{part}", sd[f"{proj}.{part}"])
    g = sd["head_code.0.parametrizations.weight.original0"].astype(np.float64)
    v = sd["head_code.0.parametrizations.weight.original1"].astype(np.float64)
    head = (g * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    w.add_tensor("head_code.0.weight", np.ascontiguousarray(head.T))  # stored transposed
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = gguf.GGUFWriter(str(out_dir / "tiny-projector-F32.gguf"), "projector")
    for part in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
        p.add_tensor(part, sd[f"projector_semantic.{part}"])
    p.write_header_to_file()
    p.write_kv_data_to_file()
    p.write_tensors_to_file()
    p.close()
    return out_dir / "tiny-tts-F32.gguf", out_dir / "tiny-projector-F32.gguf"


def test_llama_cpp_omni_files(tiny_minicpmo45_dir, model, ref, tmp_path):
    tts_path, proj_path = write_omni_files(tiny_minicpmo45_dir, tmp_path)
    t = mtts.Tts(tts_path, projector=proj_path, device="cpu", n_threads=1)
    hp = t.hparams
    assert hp["omni_layout"] and hp["attention_type"] == "full_attention" and hp["normalize_projected_hidden"]
    assert (hp["n_layer"], hp["n_embd"], hp["n_head_kv"], hp["llm_dim"], hp["num_audio_tokens"]) == (2, 64, 2, 256, 6562)
    assert (hp["audio_bos_token_id"], hp["text_eos_token_id"]) == (151687, 151692)
    tokens, hidden = inputs(60, 12)
    cond = t.condition(tokens, hidden)
    want = ref.condition(tokens.tolist(), torch.from_numpy(hidden)).numpy()
    assert rel(cond, want) <= RTOL
    audio = np.random.default_rng(60).integers(0, 6561, 30)
    assert rel(t.logits(cond, audio), ref.logits(torch.from_numpy(cond), audio.tolist()).numpy()) <= RTOL
    ours = model.tts.generate(cond, seed=8, min_new_tokens=3, max_new_tokens=40)
    assert t.generate(cond, seed=8, min_new_tokens=3, max_new_tokens=40) == ours
    with pytest.raises(mc.InvalidArgumentError, match="projector"):
        mtts.Tts(tts_path, device="cpu", n_threads=1)
    with pytest.raises(mc.FormatError, match="projector"):
        mtts.Tts(tts_path, projector=tts_path, device="cpu", n_threads=1)


def test_f16_file(tiny_minicpmo45_dir, converted, ref):
    path = converted(tiny_minicpmo45_dir, "f16")
    _, tensors, _ = _fields(path)
    assert tensors["tts.text_embd.weight"].ggml_type == 1 and tensors["tts.blk.0.attn_q.weight"].ggml_type == 1
    assert tensors["tts.code_head.weight"].ggml_type == 0 and tensors["tts.code_embd.weight"].ggml_type == 0
    t = mtts.Tts(path, device="cpu", n_threads=1)
    assert not t.hparams["exact"]
    tokens, hidden = inputs(70, 8)
    cond = t.condition(tokens, hidden)
    # bfloat16 checkpoint values are exact in F16: the text rows match, the projection nearly
    assert rel(t.text_embeddings(tokens), ref.emb_text.weight[tokens].detach().numpy()) == 0.0
    want = ref.condition(tokens.tolist(), torch.from_numpy(hidden)).numpy()
    assert rel(cond, want) < 5e-3
    audio = np.random.default_rng(70).integers(0, 6561, 20)
    assert rel(t.logits(cond, audio), ref.logits(torch.from_numpy(cond), audio.tolist()).numpy()) < 2e-2
