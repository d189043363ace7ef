"""Simplex streaming voice turns (Session.streaming_prefill / streaming_generate, the C++
Session::streaming_prefill and StreamingTurn) against tests/ref_minicpmo_streaming.py, a port of
the official MiniCPMO.streaming_prefill / streaming_generate on the same tiny checkpoint.

A conversation as the reference README streams it: the system prompt with the reference voice
(get_sys_prompt "audio_assistant"), two user turns of three 1 s chunks each (a frame before the
audio of one chunk per turn, as the omni contents lay them out), each answered greedily
(do_sample=False): the first with speech, the second text only. Checked: the context's ids and
its last-layer hidden states at every position (the embedding layout: voice audio with full
attention, streamed chunks, frames), the answer tokens the reference yields, the (token, hidden)
pairs the talker gets, the talker's codes (the same seeded draw), the events (text before each
1 s window, as the reference pairs them) and their audio against the reference-tested Token2Wav
stages; then the turn bookkeeping after an answer ended by a terminator and after one cut at
the chunk limit, and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minicpm_cpp
import ref_minicpmo_audio as ref
import ref_minicpmo_streaming as sref
from test_audio_e2e import pcm, image
from tiny_voice import tone

RTOL = 1e-4


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
    return model.voice(tone(1.5))


@pytest.fixture(scope="module")
def omni(tiny_speech_dir):
    return ref.OmniReference(tiny_speech_dir)


@pytest.fixture(scope="module")
def ref_tts(tiny_speech_dir):
    import ref_minicpmo_tts

    return ref_minicpmo_tts.load_ref_tts(tiny_speech_dir)


def _frame(seed):
    from PIL import Image

    return Image.fromarray(image(40, 30, seed))


def _turns():
    """Two user turns of three 1 s chunks; a frame before the first chunk of turn 1 and before
    the second of turn 2."""
    t1 = [(_frame(1), pcm(1.0, 11, 230.0)), (None, pcm(1.0, 12, 250.0)), (None, pcm(1.0, 13, 270.0))]
    t2 = [(None, pcm(1.0, 21, 300.0)), (_frame(2), pcm(1.0, 22, 320.0)), (None, pcm(1.0, 23, 340.0))]
    return t1, t2


def _prefill_turn(s, want, turn, sid="s"):
    for k, (frame, audio) in enumerate(turn):
        last = k == len(turn) - 1
        content = ([frame] if frame is not None else []) + [audio]
        before = len(want.ids)
        want.streaming_prefill(sid, {"role": "user", "content": content}, is_last_chunk=last)
        if frame is not None:
            n = s.streaming_prefill(frame=np.asarray(frame), audio=audio, is_last_chunk=last)
        else:
            n = s.streaming_prefill(audio=audio, is_last_chunk=last)
        assert n == len(want.ids) - before
        assert s.tokens == want.ids, f"chunk {k}"


def _context_hidden(want):
    with torch.no_grad():
        out = want.llm(inputs_embeds=torch.cat(want.rows)[None], output_hidden_states=True)
    return out.hidden_states[-1][0].float().numpy()


def _stage_audio(model, voice, codes, steps, seed):
    """Token2wav.stream's windows with the reference-tested flow and streaming vocoder."""
    from minicpm_cpp.causal_vocoder import CausalVocoder
    from minicpm_cpp.token2wav import Token2Wav

    v = {"prompt_tokens": voice.tokens, "prompt_mel": voice.prompt_mel, "spk": voice.speaker}
    buf, windows = [4218] * 3 + list(codes), []
    while len(buf) >= 28:
        windows.append((buf[:28], False))
        buf = buf[25:]
    windows.append((buf, True))
    flow = Token2Wav(model._m)
    flow.set_prompt(v, n_timesteps=steps, seed=seed)
    vs = CausalVocoder(model._m).stream(seed=seed)
    return [w for w, _ in windows], [vs.push(flow.push(c, last=last), last=last) for c, last in windows]


def test_two_turns_match_the_reference(model, voice, omni, ref_tts):
    from ref_minicpmo_tts import SplitMix

    s = minicpm_cpp.Session(model, n_ctx=2048, seed=1)
    s.set_capture(hidden=True, logits=False)
    want = sref.StreamingRef(omni, ref_tts)
    sysmsg = minicpm_cpp.system_prompt(voice, mode="audio_assistant")
    want.streaming_prefill("s", sysmsg)
    s.streaming_system(voice, mode="audio_assistant")
    assert s.tokens == want.ids and s.streaming_started
    # the voice audio sits between the prefix and the suffix, one placeholder group, no newline
    text = omni.tok.decode(want.ids)
    assert text.startswith("<|im_start|>system\nUse the voice in the audio prompt to synthesize new content.<|audio_start|>")
    assert text.endswith("<|audio_end|>You are a helpful assistant with the above voice style.<|im_end|>\n")

    t1, t2 = _turns()
    _prefill_turn(s, want, t1)
    tok = omni.tok
    steps, seed, n_new = 2, 5, 12
    ans = s.streaming_generate(do_sample=False, max_new_tokens=n_new, tts_steps=steps, tts_seed=seed, capture=True)
    evs = list(ans)
    r = want.streaming_generate(True, max_new_tokens=n_new, rng=SplitMix(seed))
    # the context: ids and hidden states at every position (the last draw, never fed, is pending
    # in ours until the next prefill drops it)
    assert s.tokens == want.ids + r["drawn"][-1:]
    h = s.hidden_states(0, len(want.ids))
    e_ctx = rel(h, _context_hidden(want))
    assert e_ctx <= RTOL, e_ctx
    # the answer: 2 rounds (11 + 10 draws), 20 tokens yielded, the last draw unfed
    assert ans.answer_tokens == r["tokens"] and len(r["tokens"]) == 20 and not r["finished"]
    assert ans.stop_reason == "max_tokens"
    e_h = rel(ans.talker_hidden, r["hidden"].numpy())
    assert ans.talker_hidden.shape == tuple(r["hidden"].shape) and e_h <= RTOL, e_h
    assert ans.codes == r["codes"] and len(ans.codes) > 0
    # events: text then audio per window, as the reference yields (waveform, new_text)
    got, pending = [], ""
    for ev in evs:
        if isinstance(ev, str):
            pending += ev
        else:
            got.append((pending, ev))
            pending = ""
    assert pending == ""
    assert [t for t, _ in got] == [t for t, _, _ in r["events"]]
    assert [a.last for _, a in got] == [last for _, _, last in r["events"]]
    windows, audio = _stage_audio(model, voice, r["codes"], steps, seed)
    assert windows == [w for _, w, _ in r["events"]]
    e_a = max(rel(a.audio, w) if w.size else 0.0 for (_, a), w in zip(got, audio))
    assert all(a.audio.shape == w.shape for (_, a), w in zip(got, audio)) and e_a <= 1e-5, e_a
    assert ans.text == tok.decode(r["tokens"])

    # turn 2: opened after the answer; a text-only answer
    n_before = len(want.ids)
    _prefill_turn(s, want, t2)
    opening = tok("<|tts_eos|><|im_end|>\n<|im_start|>user\n", add_special_tokens=False).input_ids
    assert want.ids[n_before: n_before + len(opening)] == opening
    ans2 = s.streaming_generate(False, do_sample=False, max_new_tokens=25)
    texts = list(ans2)
    r2 = want.streaming_generate(False, max_new_tokens=25)
    assert s.tokens == want.ids + r2["drawn"][-1:]
    assert ans2.answer_tokens == r2["tokens"] and len(r2["tokens"]) == 30
    assert texts == [t for t, _, _ in r2["events"] if t] and ans2.codes == []
    e2 = rel(s.hidden_states(0, len(want.ids)), _context_hidden(want))
    assert e2 <= RTOL, e2
    print(f"simplex: {len(want.ids)} positions, hidden {e_ctx:.1e} / {e2:.1e}, talker hidden {e_h:.1e}, "
          f"{len(ans.codes)} codes, {len(got)} windows, audio {e_a:.1e}")


@pytest.fixture(scope="module")
def forced(gguf, omni, tmp_path_factory):
    """The checkpoint with the lm_head row of <|tts_eos|> solved so that the first answer of
    _first_turn draws it at its 4th draw (logit 60 there, 0 at the three draws before; hidden
    states do not depend on lm_head): (model, the row, the three tokens before). The GGUF is a
    copy with that row's bytes replaced; the reference LLM takes the row with _patched_head."""
    import shutil

    import gguf as gg

    want = sref.StreamingRef(omni)
    _first_turn(want, None)
    r = want.streaming_generate(False, max_new_tokens=10)
    h = torch.stack(r["draw_hidden"][:4]).double()                     # [4, d]
    target = torch.tensor([0.0, 0.0, 0.0, 60.0], dtype=torch.float64)
    row = (h.T @ torch.linalg.solve(h @ h.T, target)).float()
    tts_eos = omni.tok.convert_tokens_to_ids("<|tts_eos|>")
    out = tmp_path_factory.mktemp("forced") / "forced.gguf"
    shutil.copy(gguf, out)
    t = next(t for t in gg.GGUFReader(str(out)).tensors if t.name == "output.weight")
    assert t.tensor_type == gg.GGMLQuantizationType.F32 and t.data.shape[-1] == row.shape[0]
    mm = np.memmap(out, dtype=np.uint8, mode="r+")
    at = int(t.data_offset) + tts_eos * row.shape[0] * 4
    mm[at: at + row.shape[0] * 4] = np.frombuffer(row.numpy().astype("<f4").tobytes(), np.uint8)
    mm.flush()
    del mm
    return minicpm_cpp.Model(str(out), device="cpu", n_threads=2, warmup=False), row, r["tokens"][:3]


class _patched_head:
    """The reference LLM with lm_head row `token` replaced while inside."""

    def __init__(self, llm, token, row):
        self.w, self.token, self.row = llm.lm_head.weight, token, row

    def __enter__(self):
        self.keep = self.w.data[self.token].clone()
        self.w.data[self.token] = self.row

    def __exit__(self, *exc):
        self.w.data[self.token] = self.keep


def _first_turn(want, s):
    """The session's first call: one user chunk (no system prompt), then a text chunk."""
    a = pcm(1.0, 31, 260.0)
    want.streaming_prefill("b", {"role": "user", "content": [a]})
    want.streaming_prefill("b", {"role": "user", "content": ["Hi there."]})
    if s is not None:
        s.streaming_prefill(audio=a)
        s.streaming_prefill(text="Hi there.")
        assert s.tokens == want.ids


@pytest.mark.parametrize("case", ["terminator", "limit"])
def test_next_turn_after_a_completed_and_a_cut_answer(case, model, forced, omni):
    """The answer ends at <|tts_eos|> (drawn, never fed) or at the chunk limit (the last draw
    never fed); either way the next user turn opens with <|tts_eos|><|im_end|>\\n<|im_start|>user\\n
    (streaming_generate never marks its answer completed)."""
    fm, row, head3 = forced
    m = fm if case == "terminator" else model
    n_new = 10 if case == "terminator" else 3
    s = minicpm_cpp.Session(m, n_ctx=1024)
    want = sref.StreamingRef(omni)
    _first_turn(want, s)
    assert omni.tok.decode(want.ids[:3]) == "<|im_start|>user\n"
    ans = s.streaming_generate(False, do_sample=False, max_new_tokens=n_new)
    texts = list(ans)
    tts_eos = omni.tok.convert_tokens_to_ids("<|tts_eos|>")
    if case == "terminator":
        with _patched_head(omni.llm, tts_eos, row):
            r = want.streaming_generate(False, max_new_tokens=n_new)
    else:
        r = want.streaming_generate(False, max_new_tokens=n_new)
    assert ans.answer_tokens == r["tokens"]
    assert texts == [t for t, _, _ in r["events"] if t]
    if case == "terminator":
        assert r["finished"] and r["tokens"] == head3 and ans.stop_reason == "end_of_turn"
        assert s.tokens[len(want.ids):] == [tts_eos]
    else:
        assert not r["finished"] and len(r["tokens"]) == 10 and ans.stop_reason == "max_tokens"
        assert s.tokens[len(want.ids):] == r["drawn"][-1:]
    n0 = len(want.ids)
    b = pcm(1.0, 32, 280.0)
    want.streaming_prefill("b", {"role": "user", "content": [b]}, is_last_chunk=True)
    s.streaming_prefill(audio=b, is_last_chunk=True)
    assert s.tokens == want.ids
    opening = omni.tok("<|tts_eos|><|im_end|>\n<|im_start|>user\n", add_special_tokens=False).input_ids
    assert want.ids[n0: n0 + len(opening)] == opening
    # a system message later in the session adds its content only (not the chat template)
    want.streaming_prefill("b", {"role": "system", "content": ["Be brief."]})
    s.streaming_prefill({"role": "system", "content": ["Be brief."]})
    assert s.tokens == want.ids and omni.tok.decode(want.ids[-3:]).endswith("Be brief.")


def test_penalty_sees_the_answer_only(model, omni):
    """The repetition penalty (here 1.5) counts the current answer's tokens only
    (chunk_generate's all_input_ids), not the context: a second answer may begin as the first did."""
    s = minicpm_cpp.Session(model, n_ctx=1024)
    want = sref.StreamingRef(omni)
    _first_turn(want, s)
    got = []
    for k in range(2):
        if k:
            want.streaming_prefill("b", {"role": "user", "content": ["Again."]})
            s.streaming_prefill(text="Again.")
        ans = s.streaming_generate(False, do_sample=False, max_new_tokens=10, repetition_penalty=1.5)
        texts = list(ans)
        r = want.streaming_generate(False, max_new_tokens=10, repetition_penalty=1.5)
        assert ans.answer_tokens == r["tokens"] and texts == [t for t, _, _ in r["events"] if t]
        got.append(r["tokens"])
    assert s.tokens == want.ids + r["drawn"][-1:]
    assert got[1][:2] == got[0][:2]   # (penalising the context's tokens would change them)
    # sampling (do_sample=True, the default) with top_k 1 is the reference's argmax
    want.streaming_prefill("b", {"role": "user", "content": ["Once more."]})
    s.streaming_prefill(text="Once more.")
    ans = s.streaming_generate(False, max_new_tokens=10, top_k=1, repetition_penalty=1.5)
    list(ans)
    r = want.streaming_generate(False, max_new_tokens=10, repetition_penalty=1.5)
    assert ans.answer_tokens == r["tokens"]


def test_errors(model, voice, converted, tiny_qwen3_dir):
    s = minicpm_cpp.Session(model, n_ctx=1024)
    for audio in (True, False):
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="nothing was prefilled"):
            s.streaming_generate(audio)
    bad = pcm(1.0, 1)
    bad[5] = np.nan
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="finite|NaN"):
        s.streaming_prefill(audio=bad)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.streaming_prefill(audio=np.zeros((2, 16000), np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.streaming_prefill(audio=np.zeros(0, np.float32))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="role"):
        s.streaming_prefill({"role": "tool", "content": ["x"]})
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="one audio chunk"):
        s.streaming_prefill({"role": "user", "content": [pcm(1.0, 1), pcm(1.0, 2)]})
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="needs msg"):
        s.streaming_prefill()
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="not both"):
        s.streaming_prefill({"role": "user", "content": ["x"]}, text="y")
    assert s.n_past == 0 and not s.streaming_started
    s.streaming_prefill(audio=pcm(1.0, 3))
    n = s.n_past
    # a chunk that is not 1 s: its positions and its emitted frames disagree (the reference
    # raises); the stream is left as it was, the next 1 s chunk goes on
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="audio positions"):
        s.streaming_prefill(audio=pcm(0.5, 4))
    assert s.n_past == n
    assert s.streaming_prefill(audio=pcm(1.0, 5)) == 12 and s.n_past == n + 12
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="max_new_tokens"):
        s.streaming_generate(False, max_new_tokens=0)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="top_p"):
        s.streaming_generate(False, top_p=2.0)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="temperature"):
        s.streaming_generate(False, temperature=float("nan"))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="voice"):
        s.streaming_generate(voice="me.wav")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="voice"):
        s.streaming_system("me.wav")
    assert s.n_past == n + 12
    # a model without vision, audio or speech parts
    plain = minicpm_cpp.Session(minicpm_cpp.Model(str(converted(tiny_qwen3_dir, "f32")), device="cpu", warmup=False),
                                n_ctx=256)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="vision"):
        plain.streaming_prefill(frame=image(32, 32, 1), text="What is this?")
    with pytest.raises(minicpm_cpp.UnsupportedError, match="audio"):
        plain.streaming_prefill(audio=pcm(1.0, 1))
    assert plain.n_past == 0
    plain.streaming_prefill(text="Hello")
    n = plain.n_past
    with pytest.raises(minicpm_cpp.UnsupportedError, match="cannot speak"):
        plain.streaming_generate()
    assert plain.n_past == n
    assert "".join(plain.streaming_generate(False, max_new_tokens=4, do_sample=False)) is not None
