"""Token2Wav flow matching (t2w.flow.*) against minicpmo-utils 1.0.7's own classes.

A tiny random ``CausalMaskedDiffWithXvec`` (tests/tiny_token2wav.py: width 64, 2 + 2 conformer
layers of 2 heads, DiT depth 2 with 2 heads of 32, the real 80 mel bins / 192-d speaker / 6561
codes) is written as ``assets/token2wav/flow.{yaml,pt}`` into a tiny MiniCPM-o 4.5 checkpoint,
converted to F32, and each stage is compared with the reference module on the CPU: the encoder
(mu), one DiT estimator call on the guidance batch, the CFM solve with injected noise, and
``inference`` end to end. Relative error = max |ours - ref| / max |ref|, at most 1e-4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import speech_ref  # noqa: F401  (stubs torchaudio before the reference imports)
import tiny_models
import tiny_token2wav

torch = pytest.importorskip("torch")

import minicpm_cpp as mc  # noqa: E402
from minicpm_cpp import _core  # noqa: E402
from minicpm_cpp.token2wav import Token2Wav  # noqa: E402

TOL = 1e-4
N_MEL = 80


def rel(ours: np.ndarray, ref) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def t2w_ckpt(tmp_path_factory) -> Path:
    d = tiny_models.make_minicpmo45(tmp_path_factory.mktemp("tiny-o45-t2w"), dtype="float32")
    return tiny_token2wav.add_token2wav_flow(d)


@pytest.fixture(scope="module")
def t2w_gguf(t2w_ckpt, tmp_path_factory) -> Path:
    from minicpm_cpp.convert import convert

    out = tmp_path_factory.mktemp("t2w-gguf") / "o45-t2w-f32.gguf"
    notes = []
    convert(t2w_ckpt, out, "f32", force=True, progress=False, log=notes.append)
    assert any("Token2Wav flow" in n for n in notes), notes
    return out


def write_flow_gguf(ckpt: Path, out: Path, set_keys=None, drop=(), replace=None) -> Path:
    """The flow tensors and keys alone (no LLM, no tokenizer), as the converter writes them,
    with keys overridden / tensors dropped or replaced: small files for the bad-input tests."""
    import gguf
    from minicpm_cpp.convert.t2w_flow import detect_flow, plan_flow, write_flow_metadata

    spec = detect_flow(ckpt)
    plan, _ = plan_flow(spec, "f32")
    calls = []

    class Capture:
        def __getattr__(self, name):
            return lambda key, value: calls.append((name, key, value))

    write_flow_metadata(Capture(), spec)
    w = gguf.GGUFWriter(str(out), "minicpm-t2w")
    for method, key, value in calls:
        getattr(w, method)(key, (set_keys or {}).get(key, value))
    for p in plan:
        if p.gguf_name in drop:
            continue
        data = (replace or {}).get(p.gguf_name, p.read_rows(None, None, None))
        w.add_tensor(p.gguf_name, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def flow_gguf(t2w_ckpt, tmp_path_factory) -> Path:
    return write_flow_gguf(t2w_ckpt, tmp_path_factory.mktemp("flow-only") / "flow.gguf")


@pytest.fixture(scope="module")
def model(t2w_gguf):
    # one thread: tiny graphs, and a loaded test machine makes thread barriers slow
    return mc.Model(str(t2w_gguf), device="cpu", n_threads=1, warmup=False)


@pytest.fixture(scope="module")
def t2w(model):
    return model.token2wav


# The estimator's two graphs: the default (FlowModel::lean: F32 fused Q|K|V, one Q|K LayerNorm,
# flash attention; ggml's GELU on GPUs only) and the file's matrices in the reference's order
# (flow_lean=False). Both are held to TOL.
@pytest.fixture(scope="module")
def exact_model(t2w_gguf):
    return mc.Model(str(t2w_gguf), device="cpu", n_threads=1, warmup=False, flow_lean=False)


@pytest.fixture(scope="module", params=["lean", "exact"])
def graph(request, t2w, exact_model):
    """(token2wav, tolerance) of the default graph and of the exact one."""
    return (t2w, TOL) if request.param == "lean" else (exact_model.token2wav, TOL)


@pytest.fixture(scope="module")
def ref(t2w_ckpt):
    return tiny_token2wav.load_flow(t2w_ckpt / "assets" / "token2wav")


def _tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6561, n).astype(np.int64)


def _ref_spk(ref, spk: np.ndarray):
    with torch.no_grad():
        e = torch.nn.functional.normalize(torch.from_numpy(spk)[None], dim=1)
        return ref.spk_embed_affine_layer(e)


# ---- converter --------------------------------------------------------------------------------


def test_converter_metadata_and_layout(t2w, flow_gguf, ref):
    import gguf

    # the model file has the flow part (read by C++ at load: the model fixture), the flow-only
    # file the same keys and tensors (quick to parse here)
    assert t2w.hparams["dit_depth"] == 2
    r = gguf.GGUFReader(str(flow_gguf))

    def val(key):
        return r.fields[key].contents()

    s = tiny_token2wav.TINY_FLOW
    assert val("t2w.flow.vocab_size") == 6561
    assert val("t2w.flow.output_size") == 80
    assert val("t2w.flow.spk_embed_dim") == 192
    assert val("t2w.flow.encoder.output_size") == s["width"]
    assert val("t2w.flow.encoder.attention_heads") == s["enc_heads"]
    assert val("t2w.flow.encoder.linear_units") == s["enc_ff"]
    assert val("t2w.flow.encoder.num_blocks") == s["num_blocks"]
    assert val("t2w.flow.encoder.num_up_blocks") == s["num_up_blocks"]
    assert val("t2w.flow.encoder.pre_lookahead_len") == 3
    assert val("t2w.flow.encoder.up_stride") == 2
    assert val("t2w.flow.encoder.up_scale_factor") == pytest.approx(2.0)
    assert val("t2w.flow.encoder.key_bias") is True
    assert val("t2w.flow.encoder.embed_eps") == pytest.approx(1e-5)
    assert val("t2w.flow.encoder.layer_eps") == pytest.approx(1e-12)
    assert val("t2w.flow.dit.depth") == s["dit_depth"]
    assert val("t2w.flow.dit.num_heads") == s["dit_heads"]
    assert val("t2w.flow.dit.head_dim") == s["dit_head_dim"]
    assert val("t2w.flow.dit.mlp_hidden") == int(s["width"] * s["mlp_ratio"])
    assert val("t2w.flow.dit.norm_eps") == pytest.approx(1e-6)
    assert val("t2w.flow.dit.t_freq_dim") == 256
    assert val("t2w.flow.dit.t_scale") == pytest.approx(1000.0)
    assert val("t2w.flow.cfm.inference_cfg_rate") == pytest.approx(0.7)
    assert val("t2w.flow.cfm.n_timesteps") == 10
    assert val("t2w.flow.cfm.max_frames") == 30000
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == len(ref.state_dict())   # flow.pt holds parameters only, each written once
    conv = tensors["t2w.flow.dit.blk.1.causal_conv1.weight"]   # conv kernels are [out, kernel, in]
    want = ref.decoder.estimator.blocks[1].conv.block[1].weight.detach().numpy().transpose(0, 2, 1)
    np.testing.assert_array_equal(np.asarray(conv.data).reshape(want.shape), want)
    assert [int(x) for x in tensors["t2w.flow.enc.lookahead.conv1.weight"].shape] == [64, 4, 64]
    # the flow-only file runs as the model's flow does
    alone = Token2Wav(flow_gguf, n_threads=1, device="cpu")
    assert alone.hparams == t2w.hparams
    tokens = _tokens(6, 3)
    voice = {"spk": np.ones(192, np.float32)}
    np.testing.assert_array_equal(alone.flow_mel(tokens, voice, 2), t2w.flow_mel(tokens, voice, 2))


def test_converter_yaml_defaults_and_refs(tmp_path):
    from minicpm_cpp.convert.t2w_flow import load_flow_yaml

    p = tmp_path / "flow.yaml"
    p.write_text(
        "w: 48\n"
        "flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec\n"
        "    input_size: !ref <w>\n"
        "    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2\n"
        "        input_size: !ref <w>\n"
        "    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM\n"
        "        estimator: !new:cosyvoice2.flow.decoder_dit.DiT\n"
        "            in_channels: 320\n"
        "            out_channels: 80\n")
    flow = load_flow_yaml(p)
    assert flow["input_size"] == 48
    assert flow["encoder"]["input_size"] == 48
    assert flow["decoder"]["estimator"]["__class__"].endswith("DiT")


def _copy_assets(t2w_ckpt: Path, dst: Path) -> Path:
    shutil.copytree(t2w_ckpt / "assets", dst / "assets")
    return dst


def test_converter_errors(t2w_ckpt, tmp_path):
    from minicpm_cpp.convert.checkpoint import ConvertError
    from minicpm_cpp.convert.t2w_flow import detect_flow, plan_flow

    notes = []
    assert detect_flow(tmp_path / "nothing", notes.append) is None and notes == []
    d = _copy_assets(t2w_ckpt, tmp_path / "a")
    (d / "assets" / "token2wav" / "flow.pt").unlink()
    assert detect_flow(d, notes.append) is None
    assert any("flow.pt" in n for n in notes)

    d = _copy_assets(t2w_ckpt, tmp_path / "b")
    pt = d / "assets" / "token2wav" / "flow.pt"
    state = torch.load(pt, weights_only=True)
    del state["decoder.estimator.blocks.1.attn.k_norm.bias"]
    torch.save(state, pt)
    with pytest.raises(ConvertError, match="k_norm.bias is missing"):
        plan_flow(detect_flow(d), "f32")

    d = _copy_assets(t2w_ckpt, tmp_path / "c")
    pt = d / "assets" / "token2wav" / "flow.pt"
    state = torch.load(pt, weights_only=True)
    state["encoder.encoders.0.self_attn.pos_bias_u"] = torch.zeros(4, 16)
    torch.save(state, pt)
    with pytest.raises(ConvertError, match="pos_bias_u has shape"):
        plan_flow(detect_flow(d), "f32")

    d = _copy_assets(t2w_ckpt, tmp_path / "e")
    y = d / "assets" / "token2wav" / "flow.yaml"
    y.write_text(y.read_text().replace("attention_heads: 2", "attention_heads: 3"))
    with pytest.raises(ConvertError, match="not divisible"):
        detect_flow(d)


# ---- stages -----------------------------------------------------------------------------------


def test_encoder_matches_reference(t2w, ref):
    for n, seed in ((9, 1), (1, 2), (23, 3), (260, 4)):   # 260: past the reserved graph size
        tokens = _tokens(n, seed)
        spk = np.random.default_rng(seed).standard_normal(192).astype(np.float32)
        mu, spk80 = t2w.encode(tokens, spk)
        with torch.no_grad():
            emb = ref.input_embedding(torch.from_numpy(tokens)[None])
            h, _ = ref.encoder(emb, torch.tensor([n]))
            want = ref.encoder_proj(h)[0].T.numpy()
        assert mu.shape == (N_MEL, 2 * n)
        assert rel(mu, want) <= TOL
        assert rel(spk80, _ref_spk(ref, spk)[0].numpy()) <= TOL


def test_dit_step_matches_reference(graph, ref):
    t2w, tol = graph
    rng = np.random.default_rng(5)
    n = 30
    x, mu, cond = (rng.standard_normal((N_MEL, n)).astype(np.float32) for _ in range(3))
    spk = rng.standard_normal(N_MEL).astype(np.float32)
    for t in (0.0, 0.37, 0.95):
        out = t2w.dit_step(x, mu, spk, cond, t)
        X, MU, C, S = (torch.from_numpy(a)[None] for a in (x, mu, cond, spk))
        with torch.no_grad():
            want = ref.decoder.estimator.forward(
                torch.cat([X, X]), torch.ones(2, 1, n), torch.cat([MU, torch.zeros_like(MU)]),
                torch.tensor([t, t], dtype=torch.float32), torch.cat([S, torch.zeros_like(S)]),
                torch.cat([C, torch.zeros_like(C)])).numpy()
        assert out.shape == (2, N_MEL, n)
        assert rel(out, want) <= tol, t


_LEAN_VS_EXACT = """
import sys, numpy as np, minicpm_cpp as mc, os
path, tol = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(6)
x, mu, cond = (rng.standard_normal((80, 20)).astype(np.float32) for _ in range(3))
spk = rng.standard_normal(80).astype(np.float32)
def step(**kw):
    return mc.Model(path, device="cpu", n_threads=1, warmup=False, **kw).token2wav.dit_step(x, mu, spk, cond, 0.5)
a, b = step(flow_lean=False), step()
r = float(np.abs(b - a).max() / np.abs(a).max())
assert 0 < r <= tol, r
os.environ["MINICPM_FLOW_LEAN"] = "0"
assert np.array_equal(step(), a)
print("ok", r)
"""


def test_lean_graph_is_a_different_graph(t2w, exact_model, t2w_gguf):
    """The two graphs really differ where ggml's own products run (they round differently), and
    the environment's default (benchmarks' A/B runs) picks the exact one: checked in a process
    without the library's CPU kernels. With them (the default on AVX2 CPUs) every product output
    is the same sequence of operations however the matrices are fused, and both graphs attend
    with plain products: the two give the same bits."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, MINICPM_CPU_OPS="0")
    env.pop("MINICPM_FLOW_LEAN", None)
    p = subprocess.run([sys.executable, "-c", _LEAN_VS_EXACT, str(t2w_gguf), str(TOL)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr
    rng = np.random.default_rng(6)
    x, mu, cond = (rng.standard_normal((N_MEL, 20)).astype(np.float32) for _ in range(3))
    spk = rng.standard_normal(N_MEL).astype(np.float32)
    a = exact_model.token2wav.dit_step(x, mu, spk, cond, 0.5)
    b = t2w.dit_step(x, mu, spk, cond, 0.5)
    if _core.cpu_kernels():
        assert np.array_equal(a, b)
    else:
        assert 0 < rel(b, a) <= TOL


def test_cfm_solve_matches_reference(graph, ref):
    t2w, tol = graph
    rng = np.random.default_rng(7)
    n = 26
    mu, cond = (rng.standard_normal((N_MEL, n)).astype(np.float32) for _ in range(2))
    cond[:, 10:] = 0
    spk = rng.standard_normal(N_MEL).astype(np.float32)
    noise = rng.standard_normal((1, N_MEL, 40)).astype(np.float32)
    for steps in (1, 4, 10, 13):   # 13: two solver graphs (10 steps per graph)
        ours = t2w.solve(noise[0, :, :n], mu, spk, cond, steps)
        ref.decoder.rand_noise = torch.from_numpy(noise)
        with torch.no_grad():
            want = ref.decoder.forward(torch.from_numpy(mu)[None], torch.ones(1, 1, n), torch.from_numpy(spk)[None],
                                       torch.from_numpy(cond)[None], n_timesteps=steps)[0].numpy()
        assert rel(ours, want) <= tol, steps


def _ref_inference(ref, tokens, prompt_tokens, prompt_mel, spk, noise, steps):
    ref.decoder.rand_noise = torch.from_numpy(noise)
    t = torch.from_numpy(tokens)[None].to(torch.int32)
    pt = torch.from_numpy(prompt_tokens)[None].to(torch.int32)
    pm = torch.from_numpy(prompt_mel)[None]
    with torch.no_grad():
        return ref.inference(t, torch.tensor([t.shape[1]], dtype=torch.int32), pt,
                             torch.tensor([pt.shape[1]], dtype=torch.int32), pm,
                             torch.tensor([pm.shape[1]], dtype=torch.int32), torch.from_numpy(spk)[None],
                             n_timesteps=steps)[0].numpy()


def test_flow_mel_matches_reference(t2w, ref):
    rng = np.random.default_rng(11)
    tokens, prompt = _tokens(12, 12), _tokens(7, 13)
    prompt_mel = rng.standard_normal((14, N_MEL)).astype(np.float32)   # [frames, 80], 2 per prompt token
    spk = rng.standard_normal(192).astype(np.float32)
    noise = rng.standard_normal((1, N_MEL, 64)).astype(np.float32)
    for steps in (3, 10):
        want = _ref_inference(ref, tokens, prompt, prompt_mel, spk, noise, steps)
        voice = {"prompt_tokens": prompt, "prompt_mel": prompt_mel, "spk": spk}
        got = t2w.flow_mel(tokens, voice, n_timesteps=steps, noise=noise[0])
        assert got.shape == (N_MEL, 24)
        assert rel(got, want) <= TOL, steps
    # a tuple works too, and so does no prompt at all
    got = t2w.flow_mel(tokens, (prompt, prompt_mel, spk), n_timesteps=3, noise=noise)
    assert rel(got, _ref_inference(ref, tokens, prompt, prompt_mel, spk, noise, 3)) <= TOL
    empty = np.zeros((0, N_MEL), np.float32)
    got = t2w.flow_mel(tokens, {"spk": spk}, n_timesteps=2, noise=noise[0])
    want = _ref_inference(ref, tokens, np.zeros(0, np.int64), empty, spk, noise, 2)
    assert rel(got, want) <= TOL


def test_default_noise_is_seeded(t2w):
    tokens = _tokens(5, 21)
    voice = {"spk": np.ones(192, np.float32)}
    a = t2w.flow_mel(tokens, voice, n_timesteps=2)
    b = t2w.flow_mel(tokens, voice, n_timesteps=2)
    c = t2w.flow_mel(tokens, voice, n_timesteps=2, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    z = t2w.default_noise(4000)
    assert z.shape == (N_MEL, 4000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    # indexed by absolute frame: a later window is a slice of the same table
    np.testing.assert_array_equal(t2w.default_noise(50, first=100), z[:, 100:150])
    # the default noise is what flow_mel uses when none is given
    np.testing.assert_array_equal(t2w.flow_mel(tokens, voice, n_timesteps=2, noise=t2w.default_noise(10)), a)


# ---- bad input --------------------------------------------------------------------------------


def test_bad_arguments(t2w):
    voice = {"spk": np.ones(192, np.float32)}
    with pytest.raises(mc.InvalidArgumentError, match="out of range"):
        t2w.flow_mel([1, 6561], voice)
    with pytest.raises(mc.InvalidArgumentError, match="out of range"):
        t2w.flow_mel([-1], voice)
    with pytest.raises(mc.InvalidArgumentError, match="out of range"):
        t2w.flow_mel([3], {"prompt_tokens": [7000], "spk": np.ones(192, np.float32)})
    with pytest.raises(mc.InvalidArgumentError, match="n_timesteps"):
        t2w.flow_mel([1, 2], voice, n_timesteps=0)
    with pytest.raises(mc.InvalidArgumentError, match="empty"):
        t2w.flow_mel([], voice)
    with pytest.raises(mc.InvalidArgumentError, match="ints"):
        t2w.flow_mel([1.5, 2.0], voice)
    with pytest.raises(mc.InvalidArgumentError, match="192"):
        t2w.flow_mel([1, 2], {"spk": np.ones(100, np.float32)})
    with pytest.raises(mc.InvalidArgumentError, match="noise"):
        t2w.flow_mel([1, 2], voice, noise=np.zeros((80, 3), np.float32))
    with pytest.raises(mc.InvalidArgumentError, match="prompt mel has"):
        t2w.flow_mel([1], {"prompt_tokens": [2], "prompt_mel": np.zeros((5, 80), np.float32),
                           "spk": np.ones(192, np.float32)})
    with pytest.raises(mc.InvalidArgumentError, match="mel frames"):
        t2w.flow_mel(np.zeros(15001, np.int64), voice)
    with pytest.raises(mc.InvalidArgumentError, match="voice"):
        t2w.flow_mel([1], 42)
    with pytest.raises(mc.InvalidArgumentError, match="frames"):
        t2w.dit_step(np.zeros((80, 4)), np.zeros((80, 5)), np.zeros(80), np.zeros((80, 4)), 0.5)


def test_model_without_flow(tiny_qwen3_dir, converted):
    m = mc.Model(str(converted(tiny_qwen3_dir, "f32")), device="cpu", n_threads=1, warmup=False)
    with pytest.raises(mc.UnsupportedError, match="Token2Wav"):
        m.token2wav


def test_bad_files(t2w_ckpt, tmp_path):
    import gguf

    def load(path):
        return Token2Wav(path, n_threads=1, device="cpu")

    with pytest.raises(mc.FormatError, match="divisible"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "heads.gguf", set_keys={"t2w.flow.encoder.attention_heads": 3}))
    with pytest.raises(mc.FormatError, match="conv2.weight"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "missing.gguf", drop={"t2w.flow.dit.blk.1.causal_conv2.weight"}))
    with pytest.raises(mc.FormatError, match="attn_pos_u"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "shape.gguf",
                             replace={"t2w.flow.enc.blk.0.attn_pos_u": np.zeros((4, 16), np.float32)}))
    with pytest.raises(mc.FormatError, match="t2w.flow.dit.depth"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "depth.gguf", set_keys={"t2w.flow.dit.depth": 1000}))
    with pytest.raises(mc.FormatError, match="eps"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "eps.gguf", set_keys={"t2w.flow.dit.norm_eps": 0.0}))
    with pytest.raises(mc.FormatError, match="up_scale_factor"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "scale.gguf", set_keys={"t2w.flow.encoder.up_scale_factor": 1.5}))
    with pytest.raises(mc.FormatError, match="channels"):
        load(write_flow_gguf(t2w_ckpt, tmp_path / "chan.gguf", set_keys={"t2w.flow.dit.in_channels": 300}))
    empty = tmp_path / "none.gguf"
    w = gguf.GGUFWriter(str(empty), "minicpm-t2w")
    w.add_uint32("t2w.flow.vocab_size", 6561)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mc.FormatError, match="no Token2Wav"):
        load(empty)


# ---- streaming --------------------------------------------------------------------------------


def _stream_reference(ref):
    """The reference module ready for its streaming functions at tiny sizes: the scratch cache
    buffers of CausalConditionalCFM / DiT have the released model's fixed shapes (16 blocks of 8
    heads), so they are replaced by ones of this model's shapes; the encoder's forward_chunk runs
    without torch.compile's wrapper (backend "eager": the same operations, without tracing)."""
    import types

    from stepaudio2.cosyvoice2.transformer.upsample_encoder_v2 import UpsampleConformerEncoderV2

    est = ref.decoder.estimator
    depth, blk = len(est.blocks), est.blocks[0]
    heads, hd, width = blk.attn.num_heads, blk.attn.head_dim, blk.norm1.normalized_shape[0]
    ref.decoder.cnn_cache_buffer = torch.zeros(16, depth, 2, 2 * width, 2)
    ref.decoder.att_cache_buffer = torch.zeros(16, depth, 2, heads, 1000, 2 * hd)
    est.cnn_cache_buffer = torch.zeros(depth, 2, 2 * width, 2)
    est.att_cache_buffer = torch.zeros(depth, 2, heads, 1000, 2 * hd)
    fn = UpsampleConformerEncoderV2.forward_chunk
    orig = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", None)
    if orig is not None:
        ref.encoder.forward_chunk = types.MethodType(orig, ref.encoder)
    return ref


@pytest.mark.parametrize("steps", [3, 12])   # 12: more steps than one solver graph holds (10)
def test_streaming_matches_reference(graph, ref, steps):
    import types

    t2w, tol = graph
    from stepaudio2.token2wav import Token2wav

    _stream_reference(ref)
    rng = np.random.default_rng(31)
    n_prompt = 10
    prompt = _tokens(n_prompt, 32)
    prompt_mel = rng.standard_normal((2 * n_prompt, N_MEL)).astype(np.float32)
    spk = rng.standard_normal(192).astype(np.float32)
    noise = rng.standard_normal((1, N_MEL, 400)).astype(np.float32)
    ref.decoder.rand_noise = torch.from_numpy(noise)
    with torch.no_grad():
        cache = ref.setup_cache(torch.from_numpy(np.concatenate([prompt, prompt[:3]]))[None],
                                torch.from_numpy(prompt_mel)[None], torch.from_numpy(spk)[None], n_timesteps=steps)
    state = types.SimpleNamespace(stream_cache=cache, flow=ref, CONFORMER_HISTORY_FRAMES=100)
    t2w.set_prompt({"prompt_tokens": prompt, "prompt_mel": prompt_mel, "spk": spk}, n_timesteps=steps,
                   noise=noise[0])
    assert t2w.stream_frames == (n_prompt, 2 * n_prompt)
    # Token2wav.stream's windows: [4218] * 3 first, 28 tokens (25 new + 3 look-ahead), stride 25,
    # then the rest as the last chunk; the caches pass prompt + 100 frames at the third window.
    buf = [4218] * 3 + list(_tokens(110, 33))
    windows = []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))
    assert len(windows) == 5
    for i, (win, last) in enumerate(windows):
        tok = torch.tensor([win], dtype=torch.int32)
        with torch.no_grad():
            mel, state.stream_cache = ref.inference_chunk(tok, torch.from_numpy(spk)[None], state.stream_cache,
                                                          last_chunk=last, n_timesteps=steps)
        Token2wav._trim_estimator_cache(state, 2 * n_prompt)
        Token2wav._trim_conformer_cache(state, 2 * n_prompt)
        got = t2w.push(np.asarray(win), last=last)
        assert got.shape == (N_MEL, 2 * (len(win) if last else len(win) - 3))
        assert rel(got, mel[0].numpy()) <= tol, i
        want_frames = (state.stream_cache["conformer_att_cache"].shape[3] // 2,
                       state.stream_cache["estimator_att_cache"].shape[4])
        assert t2w.stream_frames == want_frames, i


def test_stream_restart_from_the_prompt_snapshot(flow_gguf):
    """A second stream with the same prompt, steps and seed starts from the state saved after
    the first prompt pass (the pass is not run again); it must give the bytes of the first
    stream, after a stream whose windows moved every cache, and after another prompt."""
    rng = np.random.default_rng(41)
    voices = []
    for n in (10, 12):
        voices.append({"prompt_tokens": _tokens(n, 50 + n), "prompt_mel": rng.standard_normal((2 * n, N_MEL)).astype(np.float32),
                       "spk": rng.standard_normal(192).astype(np.float32)})
    buf = [4218] * 3 + list(_tokens(80, 34))
    windows = []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))

    def stream(t, voice, seed):
        t.set_prompt(voice, n_timesteps=3, seed=seed)
        frames = t.stream_frames
        return frames, [t.push(np.asarray(w), last=last) for w, last in windows]

    a = Token2Wav(flow_gguf, n_threads=1, device="cpu")
    f1, first = stream(a, voices[0], 7)
    f2, again = stream(a, voices[0], 7)            # restored from the snapshot
    assert f1 == f2 == (10, 20)
    for x, y in zip(first, again):
        assert x.tobytes() == y.tobytes()
    _, other = stream(a, voices[1], 7)              # another prompt: a new pass
    assert rel(other[0][:, :10], first[0][:, :10]) > 1e-3
    _, back = stream(a, voices[0], 7)
    for x, y in zip(first, back):
        assert x.tobytes() == y.tobytes()
    _, reseeded = stream(a, voices[0], 8)           # the seed is part of the key
    assert rel(reseeded[0], first[0]) > 1e-3
    b = Token2Wav(flow_gguf, n_threads=1, device="cpu")
    _, fresh = stream(b, voices[0], 7)
    for x, y in zip(first, fresh):
        assert x.tobytes() == y.tobytes()


def test_streaming_bad_arguments(flow_gguf):
    t2w = Token2Wav(flow_gguf, n_threads=1, device="cpu")   # no stream started
    voice = {"prompt_tokens": [1, 2, 3, 4], "prompt_mel": np.zeros((8, 80), np.float32), "spk": np.ones(192, np.float32)}
    with pytest.raises(mc.InvalidArgumentError, match="frames"):
        t2w.set_prompt({**voice, "prompt_mel": np.zeros((7, 80), np.float32)})
    with pytest.raises(mc.InvalidArgumentError, match="at least 3"):
        t2w.set_prompt({**voice, "prompt_tokens": [1, 2], "prompt_mel": np.zeros((4, 80), np.float32)})
    with pytest.raises(mc.InvalidArgumentError, match="set_prompt"):
        t2w.push(list(range(28)))
    t2w.set_prompt(voice, n_timesteps=2)
    with pytest.raises(mc.InvalidArgumentError, match="look-ahead"):
        t2w.push([1, 2, 3, 4])
    with pytest.raises(mc.InvalidArgumentError, match="out of range"):
        t2w.push([1] * 27 + [6561])
    with pytest.raises(mc.InvalidArgumentError, match="n_timesteps"):
        t2w.set_prompt(voice, n_timesteps=0)
    assert t2w.push([], last=True).shape == (N_MEL, 0)
    t2w.set_prompt(voice, n_timesteps=2, noise=np.zeros((80, 20), np.float32))
    with pytest.raises(mc.InvalidArgumentError, match="noise table"):
        t2w.push(list(range(28)))
