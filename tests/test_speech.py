"""Spoken answers end to end (MiniCPM-o 4.5 on a tiny random checkpoint with every speech part).

The stages have their own parity tests (test_tts.py, test_t2w_flow.py, test_hift.py,
test_voice.py). Here the turn itself is checked against the reference's layout
(``streaming_generate``): the answer tokens are the speech-template chat's, their hidden states
are transformers' last layer at the positions where each token is the input, the talker gets
them in chunks of 10 with ``E`` only after the last, and the codes drawn equal the reference
talker's (tests/ref_minicpmo_tts.py, same seeded generator) fed the same chunks. Then the audio
is the flow and vocoder of those codes, the WAV the CLI writes plays, and the errors are clear.
"""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import minicpm_cpp
import tiny_models
from tiny_voice import tone

RTOL = 1e-4


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def speech_ckpt(tiny_speech_dir) -> Path:
    return tiny_speech_dir   # conftest: every speech part, float32


@pytest.fixture(scope="module")
def speech_gguf(tiny_speech_dir, converted) -> Path:
    return converted(tiny_speech_dir, "f32")


@pytest.fixture(scope="module")
def model(speech_gguf):
    return minicpm_cpp.Model(str(speech_gguf), device="cpu", n_threads=2)


@pytest.fixture(scope="module")
def voice(model):
    return model.voice(tone(2.0))


def test_model_can_speak(model):
    assert model.can_speak


MSGS = [{"role": "user", "content": "Tell me something."}]


def _answer(model, voice, whole=True, seed=5, max_tokens=23):
    s = minicpm_cpp.Session(model, n_ctx=1024, seed=11)
    r = s.chat(MSGS, generate_audio=True, voice=voice, max_tokens=max_tokens, tts_seed=seed, whole_audio=whole,
               temperature=0)
    return s, r


def test_spoken_answer_matches_the_reference_layout(model, voice, speech_ckpt):
    import ref_minicpmo_tts

    s, r = _answer(model, voice)
    assert isinstance(r, minicpm_cpp.speech.SpeechResult)
    assert r.sample_rate == 24000 and r.audio.dtype == np.float32 and np.isfinite(r.audio).all()
    prompt = s.chat_prompt(MSGS, use_tts_template=True)
    ids = [t for seg in prompt["segments"] for t in seg]
    assert prompt["text"].endswith("<|tts_bos|>")
    ctx = s.tokens
    answer = ctx[len(ids):]
    # the greedy answer: tokens with hidden states are the evaluated ones (all but a terminator or
    # a token drawn at the limit)
    n = len(answer) - 1
    assert n >= 1
    ref_llm = tiny_models.load_reference_llm(speech_ckpt)
    with torch.no_grad():
        out = ref_llm(torch.tensor([ctx[:-1]]), output_hidden_states=True)
    ref_hidden = out.hidden_states[-1][0, len(ids): len(ids) + n].float().numpy()
    ours = s.hidden_states(len(ids), len(ids) + n)
    assert rel(ours, ref_hidden) <= RTOL
    # the talker fed in chunks of 10, E after the last one only when a terminator ended the text
    finished = s.last_stop_reason == "end_of_turn"
    ref = ref_minicpmo_tts.load_ref_tts(speech_ckpt)
    tokens = answer[:n]
    hid = torch.from_numpy(ref_hidden)
    ref.stream_begin()
    codes = []
    rng = ref_minicpmo_tts.SplitMix(5)
    chunks = [(i, min(i + 10, n)) for i in range(0, n, 10)] or [(0, 0)]
    for k, (a, b) in enumerate(chunks):
        last = k == len(chunks) - 1
        cond = ref.condition(tokens[a:b], hid[a:b])
        codes += list(ref.stream_push(cond, last and finished, rng=rng))
    assert r.codes == codes
    # the whole-utterance audio is the flow and the vocoder of those codes
    if codes:
        v = {"prompt_tokens": voice.tokens, "prompt_mel": voice.prompt_mel, "spk": voice.speaker}
        mel = model.token2wav.flow_mel(codes, v, n_timesteps=10, seed=5)
        pcm = model.vocoder.vocode(mel, seed=5)
        assert len(r.audio) == 960 * len(codes)
        assert rel(r.audio, pcm) <= 1e-6


def test_stream_yields_text_then_audio(model, voice):
    s = minicpm_cpp.Session(model, n_ctx=1024, seed=11)
    evs = list(s.chat(MSGS, generate_audio=True, voice=voice, max_tokens=12, tts_seed=5, whole_audio=True,
                      stream=True, temperature=0))
    texts = [e for e in evs if isinstance(e, str)]
    audio = [e for e in evs if isinstance(e, minicpm_cpp.AudioChunk)]
    assert audio and audio[-1].last and audio[-1].sample_rate == 24000
    _s2, r = _answer(model, voice, max_tokens=12)
    assert "".join(texts) == r.text
    assert np.array_equal(np.concatenate([a.audio for a in audio]), r.audio)


def test_seeded_answers_repeat(model, voice):
    _, a = _answer(model, voice, seed=7)
    _, b = _answer(model, voice, seed=7)
    assert a.codes == b.codes and np.array_equal(a.audio, b.audio)


def test_voice_changes_the_audio(model, voice):
    other = model.voice(tone(2.0, f0=320.0, seed=4))
    assert not np.array_equal(other.speaker, voice.speaker)
    _, a = _answer(model, voice)
    _, b = _answer(model, other)
    assert a.codes == b.codes            # the talker does not see the voice
    assert not np.array_equal(a.audio, b.audio)


def test_voice_save_load_and_system_prompt(model, voice, tmp_path):
    p = tmp_path / "v.voice.gguf"
    voice.save(p)
    v2 = minicpm_cpp.Voice.load(p)
    assert v2 == voice and np.array_equal(v2.audio_16k, voice.audio_16k)
    msg = minicpm_cpp.system_prompt(v2, mode="audio_assistant")
    assert msg["content"][0] == "Use the voice in the audio prompt to synthesize new content."
    assert np.array_equal(msg["content"][1], voice.audio_16k)
    s = minicpm_cpp.Session(model, n_ctx=2048, seed=1)
    r = s.chat([msg] + MSGS, generate_audio=True, voice=v2, max_tokens=4, tts_seed=1, whole_audio=True)
    assert isinstance(r.text, str) and np.isfinite(r.audio).all()


def test_errors(model, speech_ckpt, tmp_path, converted, tiny_qwen3_dir):
    s = minicpm_cpp.Session(model, n_ctx=1024)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="tts_steps"):
        s.chat(MSGS, generate_audio=True, voice=model.voice(tone(1.0)), tts_steps=0)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no default voice"):
        s.chat(MSGS, generate_audio=True, max_tokens=2)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="voice"):
        model.voice(np.zeros(100, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="must be a minicpm_cpp.Voice"):
        s.chat(MSGS, generate_audio=True, voice="me.wav", max_tokens=2)
    text_only = minicpm_cpp.Model(str(converted(tiny_qwen3_dir, "f32")), device="cpu")
    assert not text_only.can_speak
    with pytest.raises(minicpm_cpp.UnsupportedError, match="cannot speak|no TTS"):
        minicpm_cpp.Session(text_only, n_ctx=256).chat(MSGS, generate_audio=True, voice=None, max_tokens=2)


def test_cli_speak_writes_a_wav(speech_gguf, tmp_path):
    ref = tmp_path / "me.wav"
    minicpm_cpp.write_wav(ref, tone(2.0), sample_rate=16000)
    out = tmp_path / "answer.wav"
    r = subprocess.run([sys.executable, "-m", "minicpm_cpp.cli", "-m", str(speech_gguf), "-p", "Hi", "--speak",
                        "-o", str(out), "--ref-audio", str(ref), "-n", "12", "--seed", "3", "--tts-steps", "3",
                        "--no-timings"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert frames.size > 0 and np.abs(frames).max() > 0
    bad = subprocess.run([sys.executable, "-m", "minicpm_cpp.cli", "-m", str(speech_gguf), "-p", "Hi", "--speak"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "needs -o" in bad.stderr and "Traceback" not in bad.stderr


# ---- windows: the reference's streaming synthesis (flow push + the streaming vocoder) ----------


def test_windows_follow_the_reference_buffer(model, voice):
    # The same answer and codes as the whole-answer path (the talker does not depend on the
    # synthesis); the audio is Token2wav.stream's: [4218]*3 + codes, windows of 28 that advance
    # 25, the rest with last=True; flow.push then the streaming vocoder, per window.
    s, whole = _answer(model, voice, whole=True, max_tokens=40)
    s2 = minicpm_cpp.Session(model, n_ctx=1024, seed=11)
    evs = list(s2.chat(MSGS, generate_audio=True, voice=voice, max_tokens=40, tts_seed=5, whole_audio=False,
                       stream=True, temperature=0))
    chunks = [e for e in evs if isinstance(e, minicpm_cpp.AudioChunk)]
    assert "".join(e for e in evs if isinstance(e, str)) == whole.text
    assert chunks and chunks[-1].last and not any(c.last for c in chunks[:-1])
    buf = [4218] * 3 + list(whole.codes)
    windows = []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))
    print(f"windowed: {len(whole.codes)} codes, {len(windows)} windows, text {whole.text!r}")
    assert len(chunks) == len(windows)
    from minicpm_cpp.causal_vocoder import CausalVocoder
    from minicpm_cpp.token2wav import Token2Wav

    flow = Token2Wav(model._m)
    flow.set_prompt({"prompt_tokens": voice.tokens, "prompt_mel": voice.prompt_mel, "spk": voice.speaker},
                    n_timesteps=10, seed=5)
    vs = CausalVocoder(model._m).stream(seed=5)
    for (codes, last), got in zip(windows, chunks):
        want = vs.push(flow.push(codes, last=last), last=last)
        assert np.array_equal(got.audio, want)


def test_default_voice_from_the_converter(speech_ckpt, model, tmp_path):
    """A recording in the checkpoint folder (assets/demo.wav, as the remote code's get_sys_prompt
    names it) becomes the file's default voice: the same Voice as model.voice(that recording),
    and a turn without a voice speaks exactly as one given that voice."""
    import shutil

    from minicpm_cpp.convert import convert
    from minicpm_cpp.convert.checkpoint import ConvertError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(speech_ckpt, ckpt)
    wav = ckpt / "assets" / "demo.wav"
    minicpm_cpp.write_wav(wav, tone(1.5, f0=240.0, seed=9), 16000)
    notes = []
    out = convert(ckpt, tmp_path / "dv.gguf", "f32", force=True, progress=False, log=notes.append)
    assert any("default voice: " in n and "demo.wav" in n for n in notes), notes
    m = minicpm_cpp.Model(str(out), device="cpu", n_threads=2)
    dv = m.default_voice()
    assert dv == m.voice(str(wav)) and dv is m.default_voice()
    _, a = _answer(m, None)
    _, b = _answer(m, m.voice(str(wav)))
    assert a.codes == b.codes and np.array_equal(a.audio, b.audio) and np.abs(a.audio).max() > 0
    # the default is a real voice: another one changes the audio
    _, c = _answer(m, m.voice(tone(1.5, f0=330.0, seed=2)))
    assert not np.array_equal(a.audio, c.audio)
    # the option, and its errors
    other = tmp_path / "other.wav"
    minicpm_cpp.write_wav(other, tone(1.0, f0=200.0), 16000)
    out2 = convert(ckpt, tmp_path / "dv2.gguf", "f32", force=True, progress=False, log=lambda m: None,
                   default_voice=other)
    m2 = minicpm_cpp.Model(str(out2), device="cpu", n_threads=2)
    assert m2.default_voice() == m2.voice(str(other))
    out3 = convert(ckpt, tmp_path / "dv3.gguf", "f32", force=True, progress=False, log=lambda m: None,
                   no_default_voice=True)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no default voice"):
        minicpm_cpp.Model(str(out3), device="cpu").default_voice()
    short = tmp_path / "short.wav"
    minicpm_cpp.write_wav(short, tone(0.2), 16000)
    for kw, match in ((dict(default_voice=tmp_path / "missing.wav"), "no such file"),
                      (dict(default_voice=short), "at least"),
                      (dict(default_voice=other, no_default_voice=True), "contradict")):
        with pytest.raises(ConvertError, match=match):
            convert(ckpt, tmp_path / "bad.gguf", "f32", force=True, progress=False, log=lambda m: None, **kw)
