"""The spoken turn of the C++ core (minicpm/speech.h: SpeechTurn, Session::speak), which
Session.chat(generate_audio=True) runs, against the reference-tested stages composed here.

The composition below is the reference's streaming_generate layout written out with the stages
that have their own parity tests: the LLM's hidden states from transformers, the codes of the
reference talker (tests/ref_minicpmo_tts.py, the same seeded generator) fed in chunks of 10 with
E after the last one, then Token2Wav: the whole answer (flow_mel + the original HiFT) or
Token2wav.stream's windows ([4218] * 3 + codes, 28 that advance by 25, flow push + the streaming
vocoder). The C++ turn must give exactly those codes and (<= 1e-5) that audio, in both modes;
its text pieces come in order, before the audio they make. The C++ example program's --speak is
in test_cpp_example.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minicpm_cpp
from minicpm_cpp import _core
import tiny_models
from tiny_voice import tone

MSGS = [{"role": "user", "content": "Tell me something."}]
ATOL_REL = 1e-5


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def gguf(tiny_speech_dir, converted):
    return converted(tiny_speech_dir, "f32")


@pytest.fixture(scope="module")
def model(gguf):
    return minicpm_cpp.Model(str(gguf), device="cpu", n_threads=2)


@pytest.fixture(scope="module")
def voice(model):
    return model.voice(tone(2.0))


@pytest.fixture(scope="module")
def ref_llm(tiny_speech_dir):
    return tiny_models.load_reference_llm(tiny_speech_dir)


@pytest.fixture(scope="module")
def ref_tts(tiny_speech_dir):
    import ref_minicpmo_tts

    return ref_minicpmo_tts.load_ref_tts(tiny_speech_dir)


def _events(model, voice, whole, seed, max_tokens, steps=10):
    s = minicpm_cpp.Session(model, n_ctx=1024, seed=11)
    it = s.chat(MSGS, generate_audio=True, voice=voice, max_tokens=max_tokens, tts_seed=seed, whole_audio=whole,
                tts_steps=steps, stream=True, temperature=0)
    evs = list(it)
    return s, evs, it.codes


def _reference(model, voice, s, ref_llm, ref_tts, seed, whole, steps=10):
    """(answer tokens, reference codes, audio chunks) for the answer in `s`."""
    import ref_minicpmo_tts

    prompt = s.chat_prompt(MSGS, use_tts_template=True)
    n_prompt = sum(len(seg) for seg in prompt["segments"])
    ctx = s.tokens
    answer = ctx[n_prompt:]
    finished = s.last_stop_reason == "end_of_turn"
    n = len(answer) - 1          # the last token (terminator, or drawn at the limit) is never evaluated
    assert n >= 1
    with torch.no_grad():
        out = ref_llm(torch.tensor([ctx[:-1]]), output_hidden_states=True)
    hidden = out.hidden_states[-1][0, n_prompt: n_prompt + n].float()
    ref_tts.stream_begin()
    rng = ref_minicpmo_tts.SplitMix(seed)
    codes = []
    chunks = [(i, min(i + 10, n)) for i in range(0, n, 10)]
    for k, (a, b) in enumerate(chunks):
        last = k == len(chunks) - 1
        codes += list(ref_tts.stream_push(ref_tts.condition(answer[a:b], hidden[a:b]), last and finished, rng=rng))
    v = {"prompt_tokens": voice.tokens, "prompt_mel": voice.prompt_mel, "spk": voice.speaker}
    from minicpm_cpp.causal_vocoder import CausalVocoder
    from minicpm_cpp.token2wav import Token2Wav
    from minicpm_cpp.vocoder import Vocoder

    flow = Token2Wav(model._m)
    if whole:
        mel = flow.flow_mel(codes, v, n_timesteps=steps, seed=seed)
        return answer, codes, [Vocoder(model._m).vocode(mel, seed=seed)]
    buf, windows = [4218] * 3 + codes, []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))
    flow.set_prompt(v, n_timesteps=steps, seed=seed)
    vs = CausalVocoder(model._m).stream(seed=seed)
    return answer, codes, [vs.push(flow.push(c, last=last), last=last) for c, last in windows]


# the whole answer with the reference's 10 steps; the windows (one flow call per window) with 3
@pytest.mark.parametrize("whole,steps", [(True, 10), (False, 3)], ids=["whole", "windows"])
def test_cpp_turn_equals_the_reference_stages(model, voice, ref_llm, ref_tts, whole, steps):
    s, evs, codes = _events(model, voice, whole, seed=5, max_tokens=40, steps=steps)
    tokens, want_codes, want_chunks = _reference(model, voice, s, ref_llm, ref_tts, 5, whole, steps)
    assert codes == want_codes and len(codes) > 0
    chunks = [e for e in evs if isinstance(e, minicpm_cpp.AudioChunk)]
    assert len(chunks) == len(want_chunks) and chunks[-1].last and not any(c.last for c in chunks[:-1])
    err = 0.0
    for got, want in zip(chunks, want_chunks):
        assert got.sample_rate == 24000 and got.audio.dtype == np.float32 and got.audio.shape == want.shape
        err = max(err, rel(got.audio, want) if want.size else 0.0)
    print(f"{'whole' if whole else 'windows'}: {len(codes)} codes, {len(chunks)} chunks, max rel err {err:.2e}")
    assert err <= ATOL_REL
    # the text pieces, in order, are the answer, and come before the audio made from them
    texts = [e for e in evs if isinstance(e, str)]
    assert "".join(texts) == model.detokenize(tokens, skip_special=True)
    assert isinstance(evs[0], str)


def test_cpp_turn_whole_audio_is_the_concatenated_events(model, voice):
    s = minicpm_cpp.Session(model, n_ctx=1024, seed=11)
    r = s.chat(MSGS, generate_audio=True, voice=voice, max_tokens=20, tts_seed=9, whole_audio=False, temperature=0,
               tts_steps=2)
    _s, evs, codes = _events(model, voice, False, seed=9, max_tokens=20, steps=2)
    assert r.codes == codes
    assert np.array_equal(r.audio, np.concatenate([e.audio for e in evs if isinstance(e, minicpm_cpp.AudioChunk)]))
    assert r.text == "".join(e for e in evs if isinstance(e, str))


def test_cpp_turn_default_seed_follows_the_session_seed(model, voice):
    # Python derives tts_seed from Session(seed=...); the C++ turn derives the same one when unset.
    s = minicpm_cpp.Session(model, n_ctx=1024, seed=3)
    py_seed = s._tts_seed(None)
    s2 = minicpm_cpp.Session(model, n_ctx=1024, seed=3)
    t = _core.SpeechTurn(s2._s, voice.tokens, voice.speaker, voice.prompt_mel, 10, py_seed, True)
    assert t.seed == py_seed and t.whole


def test_cpp_turn_errors(model, voice, converted, tiny_qwen3_dir):
    s = minicpm_cpp.Session(model, n_ctx=1024)
    V = (voice.tokens, voice.speaker, voice.prompt_mel)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="n_timesteps"):
        _core.SpeechTurn(s._s, *V, 0, 1, None)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no default voice"):
        _core.SpeechTurn(s._s, None, None, None, 10, 1, None)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="speaker vector"):
        _core.SpeechTurn(s._s, voice.tokens, voice.speaker[:10], voice.prompt_mel, 10, 1, None)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="out of range"):
        _core.SpeechTurn(s._s, np.full_like(voice.tokens, 10**6), voice.speaker, voice.prompt_mel, 10, 1, None)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="prompt mel"):
        _core.SpeechTurn(s._s, voice.tokens, voice.speaker, voice.prompt_mel[:-2], 10, 1, None)
    bad = voice.prompt_mel.copy()
    bad[0, 0] = np.nan
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="not finite"):
        _core.SpeechTurn(s._s, voice.tokens, voice.speaker, bad, 10, 1, None)
    # next() before start(); a newer turn on the session ends the older one
    t1 = _core.SpeechTurn(s._s, *V, 3, 1, True)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="start"):
        t1.next()
    t1.start_begun("")
    t2 = _core.SpeechTurn(s._s, *V, 3, 1, True)
    t2.start_begun("")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="newer"):
        t1.next()
    # a model without the speech parts
    text_only = minicpm_cpp.Model(str(converted(tiny_qwen3_dir, "f32")), device="cpu")
    with pytest.raises(minicpm_cpp.UnsupportedError, match="cannot speak"):
        _core.SpeechTurn(minicpm_cpp.Session(text_only, n_ctx=256)._s, *V, 10, 1, None)
    assert not _core.can_speak(text_only._m) and _core.can_speak(model._m)


def test_cpp_voice_load_equals_python(voice, tmp_path):
    # Voice::load reads what Voice.save writes, and the voice tensors embedded in another GGUF
    p = tmp_path / "v.voice.gguf"
    voice.save(p)
    tok, spk, mel, sr, audio = _core.voice_load(str(p))
    assert np.array_equal(tok, voice.tokens) and np.array_equal(spk, voice.speaker)
    assert np.array_equal(mel, voice.prompt_mel) and sr == voice.source_sample_rate
    assert np.array_equal(audio, voice.audio_16k)
    from gguf import GGUFWriter

    e = tmp_path / "model-with-voice.gguf"
    w = GGUFWriter(str(e), "qwen3")
    for k, val in (("voice.version", 1), ("voice.n_tokens", len(voice.tokens)), ("voice.speaker_dim", len(voice.speaker)),
                   ("voice.mel_bins", voice.prompt_mel.shape[1]), ("voice.source_sample_rate", 16000)):
        w.add_uint32(k, val)
    w.add_tensor("voice.tokens", voice.tokens)
    w.add_tensor("voice.speaker", voice.speaker)
    w.add_tensor("voice.prompt_mel", voice.prompt_mel)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(minicpm_cpp.FormatError, match="not a voice file"):
        _core.voice_load(str(e))
    tok, spk, mel, _sr, audio = _core.voice_load(str(e), True)
    want = minicpm_cpp.Voice.load(e, embedded=True)
    assert np.array_equal(tok, want.tokens) and np.array_equal(spk, want.speaker) and np.array_equal(mel, want.prompt_mel)
    assert audio is None
    with pytest.raises(minicpm_cpp.FileError):
        _core.voice_load(str(tmp_path / "missing.gguf"))
