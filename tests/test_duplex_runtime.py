"""Full-duplex sessions (minicpm_cpp.DuplexSession, csrc/runtime/duplex.cpp) on the tiny
MiniCPM-o 4.5 speech checkpoint: the prompt and unit layout, the decision rules of
MiniCPMODuplex.streaming_generate (scripted with logit_bias), errors, determinism (seeds,
reset, threads, the async worker, the CLI) and a long session with the window on.

The parity of the numbers with the reference's MiniCPMODuplex is tests/test_duplex.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import minicpm_cpp
from tiny_voice import tone

UNIT = 16000
BIG = 1.0e4


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
def ids(model):
    names = ["<unit>", "</unit>", "<|listen|>", "<|speak|>", "<|tts_bos|>", "<|chunk_eos|>", "<|turn_eos|>"]
    out = {}
    for n in names:
        t = model.tokenize(n)
        assert len(t) == 1
        out[n] = t[0]
    return out


def _audio(k, seed=0):
    rng = np.random.default_rng(1000 * seed + k)
    return (0.1 * rng.standard_normal(UNIT)).astype(np.float32)


def _session(model, voice, **kw):
    kw.setdefault("generate_audio", False)
    kw.setdefault("max_speak_tokens", 3)
    kw.setdefault("tts_steps", 1)
    kw.setdefault("n_ctx", 1024)
    return minicpm_cpp.DuplexSession(model, voice=voice, **kw)


def _summary(r):
    return (r.listening, r.text, r.end_of_turn, list(r.tokens), list(r.unit_tokens), list(r.codes),
            np.asarray(r.audio).tobytes())


def test_prepare_and_unit_layout(model, voice, ids):
    d = _session(model, voice, seed=1)
    prefix = model.tokenize("<|im_start|>system\nYou are a helpful assistant.\n<|audio_start|>")
    suffix = model.tokenize("<|audio_end|><|im_end|>")
    toks = d.tokens
    assert toks[:len(prefix)] == prefix
    n_ref = len(toks) - len(prefix) - len(suffix)
    assert n_ref > 0 and toks[len(prefix):len(prefix) + n_ref] == [-1] * n_ref   # the voice's recording
    assert toks[len(prefix) + n_ref:] == suffix
    assert d.system_length == d.n_past == len(toks)

    r = d.step(_audio(0), logit_bias={ids["<|listen|>"]: BIG})
    assert r.listening and not r.end_of_turn and r.text == ""
    assert r.tokens == [ids["<|listen|>"]]
    assert r.unit_tokens == [ids["<unit>"]] + [-1] * 10 + [ids["<|listen|>"], ids["</unit>"]]
    assert np.array_equal(r.audio, np.zeros(24000, np.float32))     # a listen step: 1 s of silence
    assert d.n_past == d.system_length + 13
    assert d.tokens[d.system_length:] == r.unit_tokens
    assert d.positions == list(range(d.n_past))

    # a text-only unit and a frame + audio unit
    r = d.step(None, text="hi", logit_bias={ids["<|listen|>"]: BIG})
    assert r.unit_tokens == [ids["<unit>"]] + model.tokenize("hi") + [ids["<|listen|>"], ids["</unit>"]]
    frame = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    if model.has_vision:
        r = d.step(_audio(1), frame=frame, text=["a", "b"], logit_bias={ids["<|listen|>"]: BIG})
        ut = r.unit_tokens
        assert ut[0] == ids["<unit>"] and ut[1] == model.tokenize("<image>")[0]
        n_img = ut.index(model.tokenize("</image>")[0]) - 2
        assert n_img > 0 and ut[2:2 + n_img] == [-1] * n_img
        rest = ut[3 + n_img:]
        assert rest == [-1] * 10 + model.tokenize("ab") + [ids["<|listen|>"], ids["</unit>"]]


def test_decision_rules(model, voice, ids):
    d = _session(model, voice, seed=2, generate_audio=True, capture=True, max_speak_tokens=4)
    speak, listen, eot = ids["<|speak|>"], ids["<|listen|>"], ids["<|turn_eos|>"]
    r = d.step(_audio(0), logit_bias={speak: BIG})
    # max_speak_tokens 4: three tokens, then <|chunk_eos|> is fed
    assert r.tokens == [speak] * 3 + [ids["<|chunk_eos|>"]]
    assert not r.listening and not r.end_of_turn
    assert r.tts_tokens == [speak] * 2                      # pairs from j >= 1
    assert r.tts_hidden.shape == (2, model.info["n_embd"]) and np.isfinite(r.tts_hidden).all()
    assert r.audio.size == 0 or r.audio.size >= 24000       # short first output left-padded to 1 s
    assert len(r.codes) <= 25
    # the turn has not ended: a sampled <|listen|> becomes <|tts_bos|>
    r = d.step(_audio(1), logit_bias={listen: BIG})
    assert r.tokens[0] == ids["<|tts_bos|>"] and not r.listening
    # <|turn_eos|> ends the turn (the unit still runs to its terminator); then listening is allowed
    r = d.step(_audio(2), logit_bias={eot: BIG})
    assert r.tokens == [eot] * 3 + [ids["<|chunk_eos|>"]] and r.end_of_turn
    r = d.step(_audio(3), logit_bias={listen: BIG})
    assert r.listening and r.tokens == [listen]


def test_force_listen_and_interrupt(model, voice, ids):
    speak, listen = ids["<|speak|>"], ids["<|listen|>"]
    d = _session(model, voice, seed=3, force_listen_count=2)
    for k in range(2):
        r = d.step(_audio(k), logit_bias={speak: BIG})
        assert r.listening and r.tokens == [listen]
    r = d.step(_audio(2), logit_bias={speak: BIG})
    assert not r.listening
    d.interrupt()                                           # barge-in: the spoken turn is over
    r = d.step(_audio(3), logit_bias={listen: BIG})
    assert r.listening


def test_errors(model, voice, converted, tiny_qwen3_dir, tiny_minicpmo45_dir):
    d = _session(model, voice, seed=1)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="16000 samples"):
        d.step(np.zeros(8000, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="16000 Hz"):
        d.step(np.zeros(UNIT, np.float32), sample_rate=8000)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="1-D"):
        d.step(np.zeros((UNIT, 2), np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="not finite"):
        d.step(np.full(UNIT, np.nan, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="logit_bias"):
        d.step(np.zeros(UNIT, np.float32), logit_bias={10**9: 1.0})
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="frame"):
        d.step(np.zeros(UNIT, np.float32), frame=np.zeros((4, 4), np.uint8))
    assert d.n_past == d.system_length                      # refused units change nothing
    for bad in (dict(window="sliding"), dict(max_speak_tokens=0), dict(top_p=1.5), dict(temperature=0.0),
                dict(force_listen_count=-1), dict(window_max_tokens=10, window_target_tokens=20), dict(seed=-1)):
        with pytest.raises(minicpm_cpp.InvalidArgumentError):
            _session(model, voice, **bad)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="Voice"):
        minicpm_cpp.DuplexSession(model, voice="me.wav")
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        minicpm_cpp.DuplexSession("model.gguf")
    text_llm = minicpm_cpp.Model(str(converted(tiny_qwen3_dir, "f32")), device="cpu")
    with pytest.raises(minicpm_cpp.UnsupportedError, match="MiniCPM-o 4.5"):
        minicpm_cpp.DuplexSession(text_llm, generate_audio=False)
    # an o4.5 file without the speech stages: text-only duplex works, speech is refused
    no_tts = minicpm_cpp.Model(str(converted(tiny_minicpmo45_dir, "f32")), device="cpu")
    with pytest.raises(minicpm_cpp.UnsupportedError, match="generate_audio"):
        minicpm_cpp.DuplexSession(no_tts)
    t = minicpm_cpp.DuplexSession(no_tts, generate_audio=False, max_speak_tokens=2, n_ctx=512, seed=1)
    r = t.step(_audio(0))
    assert r.unit_tokens[0] == no_tts.tokenize("<unit>")[0] and r.unit_tokens.count(-1) == 10


def test_seed_reset_and_threads(model, voice, ids):
    speak = ids["<|speak|>"]

    def run(d, seed):
        out = []
        for k in range(3):
            out.append(_summary(d.step(_audio(k, seed), logit_bias={speak: BIG} if k == 1 else None)))
        return out

    def make(seed):
        return _session(model, voice, seed=seed, generate_audio=True)

    alone = {}
    for seed in (1, 2, 3):
        d = make(seed)
        alone[seed] = run(d, seed)
        d.reset()                                           # back to the system prompt, RNG and counters too
        assert d.n_past == d.system_length
        assert run(d, seed) == alone[seed]
    assert alone[1] != alone[2]

    got, errors = {}, []
    sessions = {seed: make(seed) for seed in (1, 2, 3)}

    def worker(seed):
        try:
            got[seed] = run(sessions[seed], seed)
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == alone


def test_async_worker(model, voice):
    d = _session(model, voice, seed=7)
    ref = [_summary(d.step(_audio(k, 7))) for k in range(3)]
    d.reset()
    d.start()
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="async"):
        d.step(_audio(0))
    pcm = np.concatenate([_audio(k, 7) for k in range(3)] + [np.zeros(5000, np.float32)])
    for i in range(0, pcm.size, 1600):                      # 100 ms pieces from this (capture) thread
        d.push(pcm[i:i + 1600])
    d.stop()                                                # the whole units, then the worker ends
    got = []
    while (r := d.poll(0)) is not None:
        got.append(_summary(r))
    assert got == ref


def test_window_keeps_the_context_bounded(model, voice, ids):
    listen = {ids["<|listen|>"]: BIG}
    d = _session(model, voice, seed=1, window="basic", window_max_tokens=120, window_target_tokens=80, n_ctx=512)
    system = d.tokens[:d.system_length]
    most = 0
    for k in range(200):
        d.step(_audio(k % 7), logit_bias=listen)
        most = max(most, d.n_past)
        assert d.n_past <= 120
    assert d.units == 200
    assert d.tokens[:d.system_length] == system             # the system prompt is always kept
    assert most > 100                                       # the window did fill up
    off = _session(model, voice, seed=1, n_ctx=512)
    for k in range(10):
        off.step(_audio(k % 7), logit_bias=listen)
    assert off.n_past == off.system_length + 13 * 10


def test_cli_duplex_deterministic(gguf, tmp_path, capsys):
    from minicpm_cpp.cli import main
    from minicpm_cpp.wav import write_wav

    wav, ref = tmp_path / "talk.wav", tmp_path / "me.wav"
    write_wav(wav, tone(2.5, seed=5), 16000)
    write_wav(ref, tone(2.0), 16000)
    outs = []
    for k in range(2):
        out = tmp_path / f"reply{k}.wav"
        rc = main(["-m", str(gguf), "--duplex", "--input", str(wav), "-o", str(out), "--ref-audio", str(ref), "--seed", "3",
                   "--tts-steps", "1",
                   "--max-speak-tokens", "3", "-t", "2", "--no-timings"])
        assert rc == 0
        outs.append((out.read_bytes(), capsys.readouterr().out))
    assert outs[0] == outs[1]
    import wave

    with wave.open(str(tmp_path / "reply0.wav")) as w:
        assert w.getframerate() == 24000 and w.getnframes() >= 3 * 24000   # aligned to the 3 input units
    assert main(["-m", str(gguf), "--duplex"]) == 2
    assert "--input" in capsys.readouterr().err
