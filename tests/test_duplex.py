"""Full-duplex sessions (minicpm_cpp.DuplexSession) against the official algorithm.

The reference is ``ref_minicpmo_duplex.RefDuplex`` (MiniCPMODuplex + StreamDecoder of the
official MiniCPM-o 4.5 code, in PyTorch, see its module documentation). Decisions are scripted
per unit with ``logit_bias`` (a large bias on ``<|speak|>`` / ``<|listen|>`` / ``<|turn_eos|>``),
some units decode freely; everything is greedy, so the unit layout, the decisions, the generated
ids and the TTS inputs must be identical, the TTS hidden states within 1e-4 (relative). Omni
units (camera frames with or without audio) run the reference's vision tower and resampler.

The reference itself is checked against hand-derived expectations first (literal token ids of
the system prompt and of whole units, the decode-loop rules, the audio consumption, RoPE
re-alignment, window bookkeeping), so a rule ported wrongly on both sides cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minicpm_cpp
import ref_minicpmo_duplex as R
from tiny_voice import tone

BIG = 1000.0  # the tiny model's logits stay within +-40

# o4.5 ids (tokenizer added_tokens.json), written out on purpose.
UNIT, UNIT_END = 151683, 151684
LISTEN, SPEAK, TTS_BOS = 151705, 151706, 151703
TURN_EOS, CHUNK_EOS, TTS_PAD = 151717, 151718, 151722
IM_START, IM_END, AUDIO_START, AUDIO_END = 151644, 151645, 151697, 151699
# "<|im_start|>system\nYou are a helpful assistant.\n<|audio_start|>" / "<|audio_end|><|im_end|>"
PREFIX_IDS = [IM_START, 8948, 198, 2610, 525, 264, 10950, 17847, 624, AUDIO_START]
SUFFIX_IDS = [AUDIO_END, IM_END]
N_AUDIO = 10  # 1 s of audio: 102 / 104 mel frames -> 50 encoder frames -> 10 rows

HAS_RUNTIME = hasattr(minicpm_cpp, "DuplexSession")
needs_runtime = pytest.mark.skipif(not HAS_RUNTIME, reason="minicpm_cpp.DuplexSession is not built in this tree")


def rel(a, b) -> float:
    a, b = (np.asarray(x.detach().numpy() if torch.is_tensor(x) else x, np.float64) for x in (a, b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def pcm(k: int) -> np.ndarray:
    """Unit k's second of user audio (a different tone each unit)."""
    return tone(1.0, f0=140.0 + 17.0 * k, seed=k).astype(np.float32)


@pytest.fixture(scope="module")
def parts(tiny_speech_dir):
    return R.load_parts(tiny_speech_dir)


@pytest.fixture(scope="module")
def ref_voice_pcm():
    return tone(2.0)


def make_ref(tiny_speech_dir, parts, ref_audio=None, **kw):
    kw.setdefault("greedy", True)
    return R.RefDuplex(tiny_speech_dir, ref_audio=ref_audio, parts=parts, **kw)


# ---- the reference against hand-derived expectations ---------------------------------------------


def test_reference_layout_and_decode_rules(tiny_speech_dir, parts):
    r = make_ref(tiny_speech_dir, parts, max_speak_tokens=5, force_listen_count=1, generate_audio=False)
    assert r.tokens == PREFIX_IDS + SUFFIX_IDS and r.system_length == 12 and r.n_past == 12

    # force_listen_count: the first unit listens whatever the logits say.
    o = r.step(pcm(0), logit_bias={SPEAK: BIG})
    assert o["listening"] and o["tokens"] == [LISTEN]
    assert o["unit_tokens"] == [UNIT] + [-1] * N_AUDIO + [LISTEN, UNIT_END]
    # the first unit took 16480 of the 16560 left-padded samples: 80 wait for the next one
    assert len(r.audio_buffer) == 80

    # speak: <|speak|> at every step, <|chunk_eos|> forced at j = max - 1; the TTS gets j >= 1 only.
    o = r.step(pcm(1), logit_bias={SPEAK: BIG})
    assert not o["listening"] and not o["end_of_turn"]
    assert o["tokens"] == [SPEAK] * 4 + [CHUNK_EOS]
    assert o["unit_tokens"] == [UNIT] + [-1] * N_AUDIO + [SPEAK] * 4 + [CHUNK_EOS, UNIT_END]
    assert o["tts_tokens"] == [SPEAK] * 3 and o["tts_hidden"].shape == (3, r.llm.config.hidden_size)
    assert len(r.audio_buffer) == 80

    # <|listen|> while the turn is open becomes <|tts_bos|>.
    o = r.step(pcm(2), logit_bias={LISTEN: BIG})
    assert o["tokens"] == [TTS_BOS] * 4 + [CHUNK_EOS] and not o["listening"]

    # <|turn_eos|> ends the turn (end_of_turn: it was the last non-terminator) ...
    o = r.step(pcm(3), logit_bias={TURN_EOS: BIG})
    assert o["tokens"] == [TURN_EOS] * 4 + [CHUNK_EOS] and o["end_of_turn"]
    # ... after which <|listen|> is a real listen.
    o = r.step(pcm(4), logit_bias={LISTEN: BIG})
    assert o["listening"] and o["tokens"] == [LISTEN] and o["text"] == ""

    # text of a unit follows the audio rows (its ids, no markers).
    o = r.step(pcm(5), text="hi", logit_bias={LISTEN: BIG})
    hi = r.tok.encode("hi", add_special_tokens=False)
    assert o["unit_tokens"] == [UNIT] + [-1] * N_AUDIO + hi + [LISTEN, UNIT_END]
    assert r.n_past == 12 + 13 + 3 * 17 + 13 + 13 + len(hi)
    assert r.tokens[:12] == PREFIX_IDS + SUFFIX_IDS

    # the decode history: every drawn id (the replaced listens as <|listen|>, no forced listen)
    assert r.decoded == [SPEAK] * 4 + [LISTEN] * 4 + [TURN_EOS] * 4 + [LISTEN, LISTEN]


def test_reference_repetition_and_length_penalty(tiny_speech_dir, parts):
    """StreamDecoder.decode on hand-made logits: the repetition penalty divides every repeated
    id's logit by 1.05, negative ones too; the length penalty divides a positive / multiplies a
    negative <|turn_eos|> logit by 1.1; the raw draw sees <|chunk_eos|> before any rule."""
    r = make_ref(tiny_speech_dir, parts, generate_audio=False)
    x = torch.full((r.llm.config.vocab_size,), -50.0)
    x[11], x[20] = -1.0, -0.97

    def pick(history):
        r.decoded = list(history)
        return r._decode(x.clone())

    assert pick([11]) == 11                 # -1 / 1.05 = -0.952 > -0.97 (a sign rule: -1.05, 20)
    assert pick([12]) == 20                 # 11 unrepeated
    assert pick([11] + [12] * 512) == 20    # only the last 512 ids count
    x[TURN_EOS] = -0.9
    assert pick([12]) == 20                 # -0.9 * 1.1 = -0.99
    x[TURN_EOS] = 1.05
    assert pick([12]) == TURN_EOS           # 1.05 / 1.1 = 0.955
    assert r.decoded == [12, TURN_EOS]      # the history gets the decoded id
    x[CHUNK_EOS] = 60.0
    assert pick([12]) == CHUNK_EOS and r.decoded == [12]   # raw <|chunk_eos|>: not recorded
    x[CHUNK_EOS], x[TTS_PAD] = -60.0, 70.0
    assert pick([12]) == TURN_EOS           # <|tts_pad|> drawn raw, then forbidden


@torch.no_grad()
def test_reference_rope_realign(parts):
    """realign_keys(K at positions a..) == K computed at positions b.. (layer 0: the keys depend
    on the token and its position only)."""
    llm = parts["llm"]
    ids = torch.tensor([[5, 77, 901, 4242, 17]])
    keys = []
    for start in (3, 40):
        out = llm.model(ids, position_ids=torch.arange(start, start + 5)[None], use_cache=True)
        keys.append(out.past_key_values.layers[0].keys)
    theta = float(llm.config.rope_parameters["rope_theta"]) if getattr(llm.config, "rope_parameters", None) else llm.config.rope_theta
    moved = R.realign_keys(keys[1], 40, 3, theta)
    assert rel(moved, keys[0]) < 1e-5
    assert rel(keys[1], keys[0]) > 1e-2


def layer0_keys_match(r) -> float:
    """Layer-0 keys depend on a row's input and position only: those of the cache's token rows
    must be the keys a fresh forward of the same ids at positions 0.. gives (rows re-rotated
    after an eviction included)."""
    ids = torch.tensor([[t if t >= 0 else 0 for t in r.tokens]])
    with torch.no_grad():
        fresh = r.llm.model(ids, position_ids=torch.arange(ids.shape[1])[None], use_cache=True).past_key_values
    rows = [i for i, t in enumerate(r.tokens) if t >= 0]
    return rel(r.kv.layers[0][0][:, :, rows], fresh.layers[0].keys[:, :, rows])


# ---- scripted sessions (the reference runs each once; the runtime replays them) --------------------

# A 12-unit session: listen (forced), listen, speak, free, barge-in (turn end), listen, text,
# speak, listen-while-speaking (-> <|tts_bos|>), free, turn end, listen.
SCRIPT = [
    {SPEAK: BIG}, {LISTEN: BIG}, {SPEAK: BIG}, None, {TURN_EOS: BIG}, {LISTEN: BIG},
    ("hello", {LISTEN: BIG}), {SPEAK: BIG}, {LISTEN: BIG}, None, {TURN_EOS: BIG}, {LISTEN: BIG},
]
# speak (the turn's first talker chunk: min 0, force flush), speak (min 26), turn end (flush all)
TTS_SCRIPT = [{SPEAK: BIG}, {SPEAK: BIG}, {TURN_EOS: BIG}]
SYS = 12 + 20  # prefix + suffix ids, the 2-s reference voice's 20 offline audio rows


def frame(k: int) -> np.ndarray:
    """Unit k's camera frame: a random RGB image of a size that is no multiple of the patch."""
    return np.random.default_rng(900 + k).integers(0, 256, (70 + 6 * k, 90, 3), dtype=np.uint8)


# Omni units (streaming_prefill's modes): OMNI (audio + frame), VISION (a frame alone: its logits
# start the decode loop, and it counts as an audio chunk), two frames in one unit, VISION with
# text, AUDIO; listening, speaking and a turn end among them.
OMNI_SCRIPT = [
    dict(frames=[0], bias={LISTEN: BIG}), dict(frames=[1], audio=False, bias={SPEAK: BIG}),
    dict(frames=[2, 3], bias=None), dict(bias={TURN_EOS: BIG}), dict(frames=[4], audio=False, text="look", bias=None),
    dict(frames=[5], bias={SPEAK: BIG}),
]
SESSIONS = {
    "omni": (OMNI_SCRIPT, dict(max_speak_tokens=5, force_listen_count=0)),
    "off": (SCRIPT, dict(max_speak_tokens=6, force_listen_count=1)),
    "basic": (SCRIPT, dict(max_speak_tokens=4, force_listen_count=1, window="basic", window_max_tokens=SYS + 48,
                           window_target_tokens=SYS + 32)),
    "context": (SCRIPT, dict(max_speak_tokens=4, force_listen_count=1, window="context", context_max_units=3,
                             max_previous_tokens=1)),
    "tts": (TTS_SCRIPT, dict(max_speak_tokens=4)),
}


def _unit_args(script, k):
    s = script[k]
    if isinstance(s, dict) and ("bias" in s or "frames" in s):
        fr = [frame(i) for i in s.get("frames", [])]
        return dict(audio=pcm(k) if s.get("audio", True) else None, frame=fr or None, text=s.get("text"),
                    logit_bias=s.get("bias"))
    text, bias = (s if isinstance(s, tuple) else (None, s))
    return dict(audio=pcm(k), text=text, logit_bias=bias)


@pytest.fixture(scope="module")
def ref_session(tiny_speech_dir, parts, ref_voice_pcm):
    """ref_session(name) -> (RefDuplex after the script, [unit outputs], [(tokens, n_past, system_length)])."""
    cache = {}

    def run(name):
        if name not in cache:
            script, knobs = SESSIONS[name]
            r = make_ref(tiny_speech_dir, parts, ref_audio=ref_voice_pcm, generate_audio=name == "tts", seed=7, **knobs)
            start = (r.tokens, r.n_past, r.system_length)
            outs, snaps = [], []
            for k in range(len(script)):
                outs.append(r.step(**_unit_args(script, k)))
                snaps.append((r.tokens, r.n_past, r.system_length))
            cache[name] = (r, outs, [start] + snaps)
        return cache[name]

    return run


def test_reference_session_off(ref_session):
    r, outs, snaps = ref_session("off")
    assert snaps[0][0] == PREFIX_IDS + [-1] * 20 + SUFFIX_IDS and r.system_length == SYS
    assert outs[0]["tokens"] == [LISTEN]                       # forced, against the speak bias
    assert outs[2]["tokens"] == [SPEAK] * 5 + [CHUNK_EOS] and outs[2]["tts_tokens"] == [SPEAK] * 4
    assert outs[4]["end_of_turn"] and outs[5]["listening"]
    hello = r.tok.encode("hello", add_special_tokens=False)
    assert outs[6]["unit_tokens"] == [UNIT] + [-1] * N_AUDIO + hello + [LISTEN, UNIT_END]
    assert outs[8]["tokens"] == [TTS_BOS] * 5 + [CHUNK_EOS]     # listen while the turn is open
    assert r.tokens == snaps[0][0] + [t for o in outs for t in o["unit_tokens"]]


def _expected_basic_evictions(lengths, high, low):
    held, out = [], []
    for i, n in enumerate(lengths):
        held.append((i, n))
        ev = []
        if SYS + sum(m for _, m in held) > high:
            while SYS + sum(m for _, m in held) > low and held:
                ev.append(held.pop(0)[0])
        out.append(ev)
    return out, [i for i, _ in held]


def test_reference_basic_window(ref_session):
    r, outs, _ = ref_session("basic")
    lengths = [len(o["unit_tokens"]) for o in outs]
    want, kept = _expected_basic_evictions(lengths, SYS + 48, SYS + 32)
    assert [o["evicted"] for o in outs] == want and sum(map(len, want)) >= 4
    assert r.tokens == PREFIX_IDS + [-1] * 20 + SUFFIX_IDS + [t for i in kept for t in outs[i]["unit_tokens"]]
    assert r.system_length == SYS
    assert layer0_keys_match(r) < 1e-5     # the kept rows were re-rotated to their new positions


@torch.no_grad()
def test_reference_context_window(ref_session):
    r, outs, _ = ref_session("context")
    n = len(outs)
    assert [o["evicted"] for o in outs] == [[]] * 3 + [[k] for k in range(n - 3)]
    marker = r.tok.encode("\n\nprevious: ", add_special_tokens=False)
    assert marker == [271, 19702, 25, 220]
    spoken = [t for o in outs[: n - 3] if not o["listening"] for t in o["tts_tokens"] if t not in r.special_ids]
    prev = marker + spoken[-1:] if spoken else []
    assert spoken and r.previous_ids == prev
    kept = [t for o in outs[n - 3:] for t in o["unit_tokens"]]
    assert r.tokens == PREFIX_IDS + [-1] * 20 + prev + SUFFIX_IDS + kept
    assert r.system_length == SYS + len(prev)
    # the rebuilt system part is exactly a fresh prefill of its rows; the units were re-rotated
    ids = torch.tensor(PREFIX_IDS + [0] * 20 + prev + SUFFIX_IDS)
    rows = r.embed(ids).clone()
    rows[len(PREFIX_IDS): len(PREFIX_IDS) + 20] = r.ref_rows
    fresh = r.llm.model(inputs_embeds=rows[None], position_ids=torch.arange(len(ids))[None], use_cache=True).past_key_values
    for li, (k, v) in enumerate(r.kv.layers):
        assert rel(k[:, :, : len(ids)], fresh.layers[li].keys) < 1e-5
        assert rel(v[:, :, : len(ids)], fresh.layers[li].values) < 1e-5
    assert layer0_keys_match(r) < 1e-5


def test_reference_talker_chunks(ref_session):
    """The talker's chunk sizes and the Token2Wav windows of one turn (3 silence codes first)."""
    r, outs, _ = ref_session("tts")
    c = [o["tts_codes"] for o in outs]
    assert len(c[1]) == 25                                   # mid-turn: EOS masked, 26 draws, last dropped
    assert 0 <= len(c[0]) <= 25 and 0 <= len(c[2]) <= 25
    buf = [R.SILENCE_CODE] * 3 + c[0]
    want0 = []
    while len(buf) >= 3 + 5:                                 # first chunk: force flush
        w = min(28, len(buf))
        want0.append((buf[:w], False))
        buf = buf[min(25, w - 3):]
    assert outs[0]["t2w_chunks"] == want0
    buf += c[1]
    want1 = []
    while len(buf) >= 28:
        want1.append((buf[:28], False))
        buf = buf[25:]
    assert outs[1]["t2w_chunks"] == want1
    buf += c[2]
    want2 = []
    while len(buf) >= 28:
        want2.append((buf[:28], False))
        buf = buf[25:]
    if buf:
        want2.append((buf, True))
    assert outs[2]["t2w_chunks"] == want2 and outs[2]["end_of_turn"]
    assert r.t2w_buffer == [R.SILENCE_CODE] * 3 and r.tts_text_start_pos == 0


# ---- runtime parity ------------------------------------------------------------------------------


def _field(out, name):
    return out[name] if isinstance(out, dict) else getattr(out, name)


@pytest.fixture(scope="module")
def model(tiny_speech_dir, converted):
    if not HAS_RUNTIME:
        pytest.skip("minicpm_cpp.DuplexSession is not built in this tree")
    return minicpm_cpp.Model(str(converted(tiny_speech_dir, "f32")), device="cpu", n_threads=2)


@pytest.fixture(scope="module")
def voice(model, ref_voice_pcm):
    v = model.voice(ref_voice_pcm)
    assert np.array_equal(v.audio_16k, ref_voice_pcm)
    return v


def _replay(ref_session, model, voice, name, **extra):
    """Replay a reference session on minicpm_cpp.DuplexSession; per unit: decisions, ids, layout,
    text and TTS inputs equal, TTS hidden states within 1e-4; the talker's codes when speaking;
    after each unit the whole LLM context and the kept system length."""
    r, outs, snaps = ref_session(name)
    script, knobs = SESSIONS[name]
    tts = name == "tts"
    d = minicpm_cpp.DuplexSession(model, voice=voice, greedy=True, seed=7, generate_audio=tts, capture=True,
                                  **knobs, **extra)
    assert (list(d.tokens), d.n_past, d.system_length) == snaps[0]
    for k, ro in enumerate(outs):
        do = d.step(**_unit_args(script, k))
        where = f"{name} unit {k}"
        for field in ("listening", "end_of_turn", "tokens", "unit_tokens", "text"):
            got, want = _field(do, field), ro[field]
            got = list(got) if isinstance(want, list) else got
            assert got == want, f"{where}: {field} {got!r} != {want!r}"
        assert list(_field(do, "tts_tokens") or []) == ro["tts_tokens"], where
        hid = _field(do, "tts_hidden")
        hid = np.zeros((0,)) if hid is None else np.asarray(hid)
        if ro["tts_tokens"]:
            assert rel(hid.reshape(ro["tts_hidden"].shape), ro["tts_hidden"]) <= 1e-4, where
        else:
            assert hid.size == 0, where
        if tts:
            assert list(_field(do, "codes")) == ro["tts_codes"], f"{where}: talker codes"
        assert (list(d.tokens), d.n_past, d.system_length) == snaps[k + 1], f"{where}: context"
        # StreamDecoder feeds at position = cache length: evictions compress the positions
        assert list(d.positions) == list(range(d.n_past)), f"{where}: positions"
    return d


@needs_runtime
def test_duplex_session_matches_reference(ref_session, model, voice):
    _replay(ref_session, model, voice, "off")


def test_reference_omni_units(ref_session, parts):
    """The reference's frame units: <unit> <image> 64 rows </image> (per frame) before the audio
    rows; the audio chunk counter also advances on a VISION unit."""
    r, outs, snaps = ref_session("omni")
    image, image_end = (parts["tok"].convert_tokens_to_ids(t) for t in ("<image>", "</image>"))
    for k, o in enumerate(outs):
        u, n_fr = o["unit_tokens"], len(OMNI_SCRIPT[k].get("frames", []))
        assert u[0] == UNIT and u.count(image) == n_fr and u.count(image_end) == n_fr, k
        if n_fr:
            assert u[1] == image and u[2:66] == [-1] * 64 and u[66] == image_end, k
    assert [o["listening"] for o in outs][:2] == [True, False]
    assert r.audio_chunk_idx == len(OMNI_SCRIPT)


@needs_runtime
def test_duplex_session_omni_frames(ref_session, model, voice):
    _replay(ref_session, model, voice, "omni")


@needs_runtime
def test_duplex_session_basic_window(ref_session, model, voice):
    _replay(ref_session, model, voice, "basic")


@needs_runtime
def test_duplex_session_context_window(ref_session, model, voice):
    _replay(ref_session, model, voice, "context")


@needs_runtime
def test_duplex_session_talker_codes(ref_session, model, voice):
    _replay(ref_session, model, voice, "tts", tts_steps=1)


@needs_runtime
def test_duplex_session_warmup_changes_nothing(ref_session, model, voice):
    """warmup=True (the GPU default) runs the talker and Token2Wav once at construction and puts
    their states back: the talker's codes still match the reference, the audio is unchanged."""
    _replay(ref_session, model, voice, "tts", tts_steps=1, warmup=True)
    script, knobs = SESSIONS["tts"]
    audio = {}
    for warm in (False, True):
        d = minicpm_cpp.DuplexSession(model, voice=voice, greedy=True, seed=7, tts_steps=1, warmup=warm, **knobs)
        audio[warm] = [np.asarray(d.step(**_unit_args(script, k)).audio).tobytes() for k in range(len(script))]
    assert audio[True] == audio[False]
