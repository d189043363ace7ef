"""llama.cpp-omni's Token2Wav files (``token2wav-gguf/{encoder,flow_matching,flow_extra,
hifigan2}.gguf``, spec-audio-speech §5.5) loaded unchanged.

A tiny MiniCPM-o 4.5 checkpoint with a random Token2Wav flow and original HiFT (the fixtures of
test_t2w_flow.py / test_hift.py) is converted by us (the native file) and written in
llama.cpp-omni's layout (tests/omni_t2w_gguf.py); the flow mel, the streaming windows and the
vocoder output from those files equal the native file's (relative 1e-5) and the minicpmo-utils
classes' (the tolerances of the per-stage tests). With the omni TTS pair too
(test_tts.write_omni_files), a session speaks as with the native file. Bad folders and tensors
give minicpm_cpp errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import speech_ref  # noqa: F401  (stubs torchaudio before the reference imports)
import omni_t2w_gguf
import tiny_hift
import tiny_models
import tiny_token2wav

torch = pytest.importorskip("torch")

import minicpm_cpp as mc  # noqa: E402
import test_hift as th  # noqa: E402  (its reference helpers)
import test_t2w_flow as tf  # noqa: E402
from minicpm_cpp.token2wav import Token2Wav  # noqa: E402

SAME = 1e-5      # omni files vs our converted file: the same weights
N_MEL = 80


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tiny_models.make_minicpmo45(tmp_path_factory.mktemp("tiny-o45-omni-t2w"), dtype="float32", vision=False)
    tiny_token2wav.add_token2wav_flow(d)
    tiny_hift.add_hift(d, seed=3)
    return d


@pytest.fixture(scope="module")
def hift_ref(ckpt):
    return tiny_hift.build_reference(seed=3, **tiny_hift.TINY_HIFT)


@pytest.fixture(scope="module")
def flow_ref(ckpt):
    return tiny_token2wav.load_flow(ckpt / "assets" / "token2wav")


@pytest.fixture(scope="module")
def native(ckpt, tmp_path_factory):
    from minicpm_cpp.convert import convert

    out = convert(ckpt, tmp_path_factory.mktemp("native") / "o45-f32.gguf", "f32", force=True, progress=False,
                  log=lambda m: None)
    return mc.Model(str(out), device="cpu", n_threads=1, warmup=False)


@pytest.fixture(scope="module")
def llm_only(ckpt, tmp_path_factory) -> Path:
    from minicpm_cpp.convert import convert

    return convert(ckpt, tmp_path_factory.mktemp("llm") / "llm.gguf", "f32", force=True, progress=False,
                   log=lambda m: None, llm_only=True)


@pytest.fixture(scope="module")
def omni_dir(ckpt, tmp_path_factory) -> Path:
    return omni_t2w_gguf.write_omni_t2w(ckpt / "assets" / "token2wav", tmp_path_factory.mktemp("rel") / "token2wav-gguf")


@pytest.fixture(scope="module")
def omni_model(llm_only, omni_dir):
    return mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[omni_dir])


def _tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 6561, n).astype(np.int64)


# ---- the layout --------------------------------------------------------------------------------


def test_files_have_llama_cpp_omni_layout(omni_dir):
    import gguf

    def read(stem):
        r = gguf.GGUFReader(str(omni_dir / f"{stem}.gguf"))
        return {t.name: ([int(n) for n in t.shape], t.tensor_type.name) for t in r.tensors}, set(r.fields)

    s = tiny_token2wav.TINY_FLOW
    E, H = s["width"], s["enc_heads"]
    extra, _ = read("flow_extra")
    assert set(extra) == set(omni_t2w_gguf.EXTRA_KEYS)
    assert extra["input_embedding.weight"][0] == [E, 6561]            # ne: torch shape reversed
    enc, keys = read("encoder")
    assert enc["pre_lookahead_layer.conv1.weight"][0] == [4, E, E]     # [k, in, out]: w_kic_oc
    assert enc["encoders.0.self_attn.pos_bias_u"][0] == [E // H, H]
    assert enc["up_encoders.1.feed_forward.w_2.weight"][0] == [s["enc_ff"], E]
    assert {"embed.out.0.weight", "up_layer.conv.weight", "after_norm.bias", "up_embed.out.1.bias"} <= set(enc)
    assert not any(k.startswith("encoder.") for k in enc)
    assert {k for k in keys if not k.startswith("GGUF.")} == {"general.architecture"}   # no hyperparameters
    dit, _ = read("flow_matching")
    assert all(k.startswith("estimator.") for k in dit)
    assert dit["estimator.blocks.1.conv.block.6.weight"][0] == [3, E, E]
    voc, _ = read("hifigan2")
    assert voc["ups.0.weight"][0] == [16, 16, 32]                      # ConvTranspose1d [k, out, in]
    assert voc["resblocks.8.activations2.2.alpha"][0] == [4]
    assert "f0_predictor.condnet.8.weight" in voc and "source_resblocks.2.convs2.2.bias" in voc
    assert not any("parametrizations" in k or k.startswith("generator.") for k in voc)
    for t in (extra, enc, dit, voc):
        assert {v[1] for v in t.values()} == {"F32"}


# ---- parity ------------------------------------------------------------------------------------


def test_flow_mel_equals_native_and_reference(native, omni_model, omni_dir, flow_ref):
    ours, nat = omni_model.token2wav, native.token2wav
    hp, want_hp = dict(ours.hparams), dict(nat.hparams)
    assert hp.pop("omni_layout") and not want_hp.pop("omni_layout")
    assert hp == want_hp   # sizes from the shapes, the release's fixed values = the converter's metadata
    alone = mc.Token2Wav(omni_dir, n_threads=1, device="cpu")         # the folder, without a Model
    rng = np.random.default_rng(11)
    tokens, prompt = _tokens(12, 12), _tokens(7, 13)
    prompt_mel = rng.standard_normal((14, N_MEL)).astype(np.float32)
    spk = rng.standard_normal(192).astype(np.float32)
    noise = rng.standard_normal((1, N_MEL, 64)).astype(np.float32)
    voice = {"prompt_tokens": prompt, "prompt_mel": prompt_mel, "spk": spk}
    got = ours.flow_mel(tokens, voice, n_timesteps=3, noise=noise[0])
    assert rel(got, nat.flow_mel(tokens, voice, n_timesteps=3, noise=noise[0])) <= SAME
    assert rel(alone.flow_mel(tokens, voice, n_timesteps=3, noise=noise[0]), got) <= SAME
    want = tf._ref_inference(flow_ref, tokens, prompt, prompt_mel, spk, noise, 3)
    r = rel(got, want)
    assert r <= tf.TOL
    print(f"flow_mel: omni vs reference {r:.2e}")


def test_streaming_windows_equal_native(native, omni_model):
    rng = np.random.default_rng(31)
    n_prompt = 10
    voice = {"prompt_tokens": _tokens(n_prompt, 32),
             "prompt_mel": rng.standard_normal((2 * n_prompt, N_MEL)).astype(np.float32),
             "spk": rng.standard_normal(192).astype(np.float32)}
    noise = rng.standard_normal((N_MEL, 400)).astype(np.float32)
    a, b = omni_model.token2wav, native.token2wav
    for t in (a, b):
        t.set_prompt(voice, n_timesteps=3, noise=noise)
    buf = [4218] * 3 + list(_tokens(85, 33))
    windows = []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))
    worst = 0.0
    for win, last in windows:
        got, want = a.push(np.asarray(win), last=last), b.push(np.asarray(win), last=last)
        worst = max(worst, rel(got, want))
        assert a.stream_frames == b.stream_frames
    assert worst <= SAME
    print(f"streaming windows: omni vs native {worst:.2e}")


def test_vocode_equals_native_and_reference(native, omni_model, omni_dir, hift_ref):
    hp, want_hp = omni_model.vocoder.hparams, native.vocoder.hparams
    assert hp.pop("omni_layout") and not want_hp.pop("omni_layout")
    assert hp == want_hp
    T = 9
    mel = th.mel_input(T, seed=T)
    noise, phases = th.draws(T, seed=T)
    got = omni_model.vocoder.vocode(mel, noise=noise, phases=phases, stages=True)
    want = native.vocoder.vocode(mel, noise=noise, phases=phases, stages=True)
    assert rel(got.f0, want.f0) <= SAME and rel(got.wav, want.wav) <= SAME
    from minicpm_cpp.vocoder import Vocoder

    for alone in (Vocoder(omni_dir, device="cpu", n_threads=1), Vocoder(omni_dir / "hifigan2.gguf", device="cpu")):
        np.testing.assert_array_equal(alone.vocode(mel, noise=noise, phases=phases), got.wav)
    wav_r, f0_r, _ = th.reference(hift_ref, mel, noise, phases)
    assert rel(got.f0, f0_r) <= th.TOL and rel(got.wav, wav_r) <= th.TOL_PHASE
    print(f"vocode: omni vs native {rel(got.wav, want.wav):.2e}, vs reference {rel(got.wav, wav_r):.2e}")


def test_the_files_one_by_one(llm_only, omni_dir, native, tmp_path):
    files = [omni_dir / f for f in ("encoder.gguf", "flow_extra.gguf", "flow_matching.gguf", "hifigan2.gguf")]
    m = mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=files)
    assert m._m.has_component("flow") and m._m.has_component("hift")
    mel = th.mel_input(4, seed=2)
    np.testing.assert_array_equal(m.vocoder.vocode(mel, seed=1), native.vocoder.vocode(mel, seed=1))
    # a flow file alone names its folder; the standalone handle takes any of the three
    t = Token2Wav(omni_dir / "flow_extra.gguf", n_threads=1, device="cpu")
    assert t.hparams["dit_depth"] == tiny_token2wav.TINY_FLOW["dit_depth"]
    m2 = mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[omni_dir / "encoder.gguf"])
    assert m2._m.has_component("flow") and not m2._m.has_component("hift")


def test_session_speaks_from_llama_cpp_omni_files(ckpt, llm_only, omni_dir, native, tmp_path):
    import test_tts

    tts, proj = test_tts.write_omni_files(ckpt, tmp_path)
    m = mc.Model(str(llm_only), device="cpu", n_threads=2, warmup=False, extra_files=[tts, proj, omni_dir])
    assert m.can_speak
    rng = np.random.default_rng(4)
    voice = mc.Voice(rng.integers(0, 6561, 8), rng.standard_normal(192).astype(np.float32),
                     rng.standard_normal((16, N_MEL)).astype(np.float32))
    msgs = [{"role": "user", "content": "Tell me something."}]
    out = []
    for model in (m, native):
        s = mc.Session(model, n_ctx=1024, seed=11)
        out.append(s.chat(msgs, generate_audio=True, voice=voice, max_tokens=6, tts_seed=5, tts_steps=3,
                          temperature=0))
    a, b = out
    assert a.text == b.text and a.codes == b.codes and len(a.codes) > 0
    assert a.sample_rate == 24000 and a.audio.shape == b.audio.shape
    r = rel(a.audio, b.audio)
    assert r <= 1e-4
    print(f"spoken answer ({len(a.codes)} codes): omni files vs native {r:.2e}")
    # the release directory layout: Model(directory) finds tts/ and token2wav-gguf/ itself
    import os

    d = tmp_path / "MiniCPM-o-4_5-gguf"
    (d / "tts").mkdir(parents=True)
    os.link(llm_only, d / "MiniCPM-o-4_5-F32.gguf")
    os.link(tts, d / "tts" / Path(tts).name)
    os.link(proj, d / "tts" / Path(proj).name)
    shutil.copytree(omni_dir, d / "token2wav-gguf")
    found = mc.find_model_files(d)
    assert found["tts"] == str(d / "tts" / Path(tts).name) and found["token2wav"] == str(d / "token2wav-gguf")
    md = mc.Model(d, device="cpu", n_threads=2, warmup=False)
    assert md.can_speak
    c = mc.Session(md, n_ctx=1024, seed=11).chat(msgs, generate_audio=True, voice=voice, max_tokens=6, tts_seed=5,
                                                   tts_steps=3, temperature=0)
    assert c.codes == a.codes and np.array_equal(c.audio, a.audio)


# ---- errors ------------------------------------------------------------------------------------


def test_a_missing_file(llm_only, omni_dir, tmp_path):
    d = tmp_path / "token2wav-gguf"
    shutil.copytree(omni_dir, d)
    (d / "flow_extra.gguf").unlink()
    with pytest.raises(mc.FileError, match="flow_extra.gguf"):
        Token2Wav(d, n_threads=1, device="cpu")
    with pytest.raises(mc.FileError, match="flow_extra.gguf"):
        mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[d])
    # flow_matching.gguf under another name, given to the core directly: its siblings are missing
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(omni_dir / "flow_matching.gguf", lone / "dit.gguf")
    with pytest.raises(mc.FileError, match="encoder.gguf"):
        Token2Wav(lone / "dit.gguf", n_threads=1, device="cpu")
    shutil.copy(omni_dir / "flow_extra.gguf", d / "flow_extra.gguf")
    (d / "hifigan2.gguf").unlink()
    with pytest.raises(mc.FileError, match="hifigan2.gguf"):
        mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[d])


def _bad_dir(ckpt, tmp_path, stem, change):
    def edit(s, tensors):
        if s == stem:
            change(tensors)

    return omni_t2w_gguf.write_omni_t2w(ckpt / "assets" / "token2wav", tmp_path / "bad", edit=edit)


@pytest.mark.parametrize("stem, change, error, match", [
    ("encoder", lambda t: t.update({"encoders.1.self_attn.linear_q.weight": t["encoders.1.self_attn.linear_q.weight"][:, :-1]}),
     "FormatError", "encoders.1.self_attn.linear_q.weight"),
    ("encoder", lambda t: t.pop("up_encoders.0.norm_ff.bias"), "FormatError", "up_encoders.0.norm_ff.bias"),
    ("flow_matching", lambda t: t.update({"estimator.blocks.0.attn.q_norm.weight": np.ones(5, np.float32)}),
     "FormatError", "head size"),
    ("flow_extra", lambda t: t.update({"encoder_proj.weight": t["encoder_proj.weight"][:-1]}),
     "FormatError", "encoder_proj.weight"),
    ("hifigan2", lambda t: t.update({"resblocks.4.convs1.1.weight": t["resblocks.4.convs1.1.weight"][:, :-1]}),
     "FormatError", "resblocks.4.convs1.1.weight"),
    ("hifigan2", lambda t: t.update({"ups.1.weight": t["ups.1.weight"].astype(np.float16)}), "UnsupportedError", "F32"),
    ("flow_extra", lambda t: t.update({"encoder_proj.bias": t["encoder_proj.bias"].astype(np.float16)}),
     "UnsupportedError", "encoder_proj.bias"),
    ("hifigan2", lambda t: t.pop("source_resblocks.1.activations2.0.alpha"), "FormatError",
     "source_resblocks.1.activations2.0.alpha"),
])
def test_bad_tensors(ckpt, llm_only, tmp_path, stem, change, error, match):
    d = _bad_dir(ckpt, tmp_path, stem, change)
    with pytest.raises(getattr(mc, error), match=match.replace(".", r"\.")):
        mc.Model(str(llm_only), device="cpu", n_threads=1, warmup=False, extra_files=[d])


def test_f16_matrices(ckpt, llm_only, native, tmp_path):
    """Matrices and kernels in F16 (the files' dtype is not documented; their loader takes any
    type for the flow): loaded, close to the F32 result."""
    def edit(stem, tensors):
        if stem != "hifigan2":
            for k, a in tensors.items():
                if a.ndim >= 2 and "pos_bias" not in k:
                    tensors[k] = a.astype(np.float16)

    d = omni_t2w_gguf.write_omni_t2w(ckpt / "assets" / "token2wav", tmp_path / "f16", edit=edit)
    t = mc.Token2Wav(d, n_threads=1, device="cpu")
    rng = np.random.default_rng(5)
    voice = {"prompt_tokens": _tokens(4, 6), "prompt_mel": rng.standard_normal((8, N_MEL)).astype(np.float32),
             "spk": rng.standard_normal(192).astype(np.float32)}
    noise = rng.standard_normal((N_MEL, 32)).astype(np.float32)
    tokens = _tokens(8, 7)
    r = rel(t.flow_mel(tokens, voice, n_timesteps=2, noise=noise),
            native.token2wav.flow_mel(tokens, voice, n_timesteps=2, noise=noise))
    assert r <= 2e-2
    print(f"F16 omni files vs native F32: {r:.2e}")
