"""MiniCPM-o audio input end to end against the PyTorch reference, on tiny random checkpoints.

Reference: tests/ref_minicpmo_audio.py (the official encoder, projector, pooling and the padded
batch of ``get_audio_embedding``; ``build_prompt_ids(..., audio_rule="per_item")`` for the prompt,
``reference_chat`` for chat() greedy), tests/ref_audio_mel.py for the features. Our side: the F32
conversion of the same checkpoint (``converted(dir, "f32")``), so the bound is the F32 one of the
other parity tests (relative 1e-4).

* the encoder alone (``_core.AudioModel``): single clips of 0.1 s to 30 s, padded batches of mixed
  lengths, full attention, the streaming cache (ragged chunks, the reset at 1500 frames, duplex
  CNN context);
* chat prompts: token ids and the audio embeddings of every piece for o4.5 and o2.6 (audio alone,
  with text, with an image, in several messages, 31 s and 65 s clips, replies, omni_mode);
* logits at every prompt position, 16 greedy tokens and the answer text of chat();
* the llama.cpp-omni audio file, F16 / Q8_0 conversions, bad input, the CLI.

Streaming input (Session.audio_stream) is in test_audio_stream.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicpm_cpp
import ref_audio_mel
import ref_minicpmo_audio as ref
from minicpm_cpp import _core

O45 = "tiny_minicpmo45_dir"
O26 = "tiny_minicpmo26_dir_audio"
LAYOUTS = [O45, O26]
RTOL = 1e-4  # F32 weights, F32 KV cache: the bound of the other parity tests
SR = 16000


def pcm(seconds: float, seed: int = 0, f0: float = 220.0) -> np.ndarray:
    """A loud tone with a slow envelope plus noise (every mel bin far above the floor)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    y = 0.3 * np.sin(2 * np.pi * f0 * t) * np.sin(2 * np.pi * 1.3 * t + seed) + 0.05 * rng.standard_normal(n)
    return y.astype(np.float32)


def image(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) & 255], axis=-1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def rel(ours, want) -> float:
    """max |ours - want| / max |want| (float32 arithmetic: the logit arrays are large)."""
    want = np.asarray(want, np.float32)
    return float(np.abs(np.asarray(ours, np.float32) - want).max() / np.abs(want).max())


def flatten(segments):
    """(token ids, [(first position, chunk)] of the audio chunks) of prompt segments."""
    ids, audio = [], []
    for s in segments:
        if hasattr(s, "embed_pos"):
            if s.kind == "audio":
                audio.append((len(ids), s))
            ids.extend(s.tokens)
        else:
            ids.extend(s)
    return ids, audio


def ref_messages(msgs):
    """Our messages with images as PIL images (what the reference's chat() takes). A bare 1-D
    array as content is one audio item here (the official chat() would iterate its samples)."""
    from PIL import Image

    out = []
    for m in msgs:
        c = m["content"]
        if isinstance(c, np.ndarray):
            c = [c]
        items = c if isinstance(c, list) else [c]
        items = [Image.fromarray(x) if isinstance(x, np.ndarray) and x.ndim == 3 else x for x in items]
        out.append({"role": m["role"], "content": items if isinstance(c, list) else items[0]})
    return out


class Omni:
    """One tiny checkpoint: its F32 GGUF loaded as a Model and as an AudioModel, and the reference."""

    def __init__(self, hf_dir: Path, gguf: Path):
        self.dir, self.gguf = hf_dir, gguf
        self.model = minicpm_cpp.Model(gguf, device="cpu")
        self.name = "o4.5" if self.model.info["model_type"] == "minicpm-o-4.5" else "o2.6"
        key = str(Path(hf_dir).resolve())
        if key not in ref._REFERENCES:
            ref._REFERENCES[key] = ref.OmniReference(hf_dir)
        self.ref = ref._REFERENCES[key]
        self.audio = self.ref.audio
        self._enc = None

    @property
    def enc(self) -> "_core.AudioModel":
        if self._enc is None:
            self._enc = _core.AudioModel(str(self.gguf), "cpu", 0)
        return self._enc

    def session(self, n_ctx: int = 4096) -> minicpm_cpp.Session:
        return minicpm_cpp.Session(self.model, n_ctx=n_ctx)

    def prompt(self, msgs, **kw):
        return ref.build_prompt_ids(self.dir, ref_messages(msgs), model=self.name, audio_rule="per_item",
                                    tokenizer=self.ref.tok, **kw)

    def chat(self, msgs, n_gen: int = 16, **kw):
        return ref.reference_chat(self.dir, ref_messages(msgs), n_gen=n_gen, model=self.name, audio_rule="per_item",
                                  **kw)


@pytest.fixture(scope="module")
def omni(request, converted):
    cache = {}

    def get(layout) -> Omni:
        if layout not in cache:
            d = request.getfixturevalue(layout)
            cache[layout] = Omni(d, converted(d, "f32"))
        return cache[layout]

    return get


# ------------------------------------------------------------------------------ 1. encoder

def _mel(seconds: float, seed: int = 0) -> np.ndarray:
    (m,) = ref_audio_mel.offline_features(pcm(seconds, seed))
    return m


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encoder_single_clips(layout, omni):
    o = omni(layout)
    for k, seconds in enumerate((0.1, 1.0, 1.035, 7.3, 30.0)):
        mel = _mel(seconds, k)
        r = o.audio.forward_batch([mel])
        c, n = ref.encoder_frames(mel.shape[1]), r["n_tokens"][0]
        emb, states = o.enc.encode(mel, mel.shape[1], True)
        assert states.shape == (c, o.audio.config.d_model) and emb.shape == (n, o.audio.config.llm_hidden)
        es, ee = rel(states, r["states"][0, :c]), rel(emb, r["pooled"][0, :n])
        print(f"{layout} {seconds} s: {c} frames, {n} tokens, states {es:.1e}, embeddings {ee:.1e}")
        assert es <= RTOL and ee <= RTOL
    # Full attention (chunk_length <= 0: the o4.5 simplex system prefill).
    mel = _mel(2.37, 9)
    r = o.audio.forward_batch([mel], chunk_length=-1)
    emb, states = o.enc.encode(mel, mel.shape[1], False)
    assert rel(states, r["states"][0]) <= RTOL and rel(emb, r["pooled"][0, : emb.shape[0]]) <= RTOL
    chunked, _ = o.enc.encode(mel, mel.shape[1], True)
    assert rel(chunked, emb) > 1e-2  # the 1 s block mask matters


@pytest.mark.parametrize(
    "seconds, chunked",
    [((1.3, 7.3), True), ((0.1, 2.5, 1.0), True), ((30.0, 0.35), True), ((0.1, 2.5), False)],
)
def test_encoder_padded_batch(seconds, chunked, omni):
    """Each item of a chat's audio batch as the reference encodes the padded batch: the key mask
    compares encoder frames with the item's *mel* length, so a short item sees its padding."""
    o = omni(O45)
    mels = [_mel(s, k) for k, s in enumerate(seconds)]
    batch = max(m.shape[1] for m in mels)
    r = o.audio.forward_batch(mels, chunk_length=1.0 if chunked else -1)
    for i, mel in enumerate(mels):
        c, n = ref.encoder_frames(mel.shape[1]), r["n_tokens"][i]
        emb, states = o.enc.encode(mel, batch, chunked)
        es, ee = rel(states, r["states"][i, :c]), rel(emb, r["pooled"][i, :n])
        print(f"batch {seconds} item {i} ({chunked=}): states {es:.1e}, embeddings {ee:.1e}")
        assert es <= RTOL and ee <= RTOL
        if mel.shape[1] < batch and mel.shape[1] % 100:
            alone, _ = o.enc.encode(mel, mel.shape[1], chunked)
            assert rel(alone, emb) > 1e-3  # the padding is visible: batch semantics, not the clip alone


def _stream_compare(o: Omni, chunks, extra=None):
    """Push mel chunks through AudioStreamRef and our streaming encoder; returns the cache lengths."""
    s = ref.AudioStreamRef(o.audio)
    o.enc.reset_stream()
    lens, worst = [], 0.0
    for k, mel in enumerate(chunks):
        kw = extra(k) if extra else {}
        want = s.process(mel, **({"use_extra_context": True, **kw} if extra else {}))
        emb, states = o.enc.encode_stream(mel, bool(extra), kw.get("prefix_extra_frames", 0),
                                          kw.get("suffix_extra_frames", 0))
        assert emb.shape == want.shape and states.shape == s.last_states.shape, k
        worst = max(worst, rel(states, s.last_states), rel(emb, want))
        assert o.enc.stream_frames == s.cache_len, k
        lens.append(s.cache_len)
    return lens, worst, s.resets


def test_encoder_streaming_ragged_chunks_and_reset(omni):
    """Chunks of 104, 100 and 60 mel frames (52, 50, 30 encoder frames), then 96 (48) so that
    cache + chunk is exactly 1500: the cache is dropped when cache + chunk >= 1500 (not only past
    it), positions restart at 0."""
    o = omni(O45)
    mel = ref_audio_mel.offline_features(pcm(30.0, 3))[0]
    sizes = [104, 100, 60] * 11 + [96] + [104, 100, 60]
    chunks, at = [], 0
    for n in sizes:
        chunks.append(mel[:, at % 2900 : at % 2900 + n])
        at += n
    lens, worst, resets = _stream_compare(o, chunks)
    print(f"streaming ragged: {len(chunks)} chunks, {resets} reset(s), max rel err {worst:.1e}")
    assert resets == 1 and worst <= RTOL
    k = next(i for i in range(1, len(lens)) if lens[i] < lens[i - 1])
    assert k == 33 and lens[k - 1] + ref.encoder_frames(sizes[k]) == 1500
    assert lens[k] == ref.encoder_frames(sizes[k]) == 48


def test_encoder_streaming_duplex_context(omni):
    """Duplex framing: blocks [100k - 2, 100(k+1) + 2), prefix 0 for block 0, no suffix on the
    last; 31 blocks (the cache reset at 1450 + 52 >= 1500); the first three blocks equal the
    offline encoding of the same frames."""
    o = omni(O45)
    n_blocks = 31
    mel = np.concatenate([ref_audio_mel.offline_features(pcm(30.0, 4))[0], _mel(1.0, 5)], axis=1)
    assert mel.shape[1] == 100 * n_blocks

    def block(k):
        lo, hi = max(100 * k - 2, 0), 100 * (k + 1) + (0 if k == n_blocks - 1 else 2)
        return mel[:, lo:hi]

    def extra(k):
        return {"prefix_extra_frames": 0 if k == 0 else 2, "suffix_extra_frames": 0 if k == n_blocks - 1 else 2}

    lens, worst, resets = _stream_compare(o, [block(k) for k in range(n_blocks)], extra)
    print(f"streaming duplex: {n_blocks} blocks, {resets} reset(s), max rel err {worst:.1e}")
    assert resets == 1 and lens[28] == 1450 and lens[29] == 50 and worst <= RTOL
    # With the CNN context, streamed blocks are the offline chunk-masked encoding of the clip.
    o.enc.reset_stream()
    got = np.concatenate([o.enc.encode_stream(block(k), True, extra(k)["prefix_extra_frames"], 2)[0] for k in range(3)])
    off = o.audio.get_audio_embedding([mel[:, :302]])[0][:30]
    assert rel(got, off) <= RTOL


def test_encoder_streaming_positions_continue(omni):
    o = omni(O45)
    a, b = _mel(1.0, 6), _mel(1.0, 7)
    o.enc.reset_stream()
    o.enc.encode_stream(a)
    second, _ = o.enc.encode_stream(b)
    o.enc.reset_stream()
    fresh, _ = o.enc.encode_stream(b)
    assert rel(second, fresh) > 1e-2 and o.enc.stream_frames == 50


@pytest.mark.parametrize("fold", [False, True], ids=["fused_qkv", "folded_norms"])
def test_encoder_fused_and_folded_graphs(fold, omni, converted):
    """The GPU graph forms, forced on the CPU: one Q|K|V product per layer (bias with zeros for
    K), and with fold_norms each LayerNorm's scale/shift inside the next product. At F32 both
    equal the reference, offline (block mask and full attention) and streaming; at F16 the fold
    costs at most one more rounding of those matrices."""
    o = omni(O45)
    enc = _core.AudioModel(str(o.gguf), "cpu", 0, fuse_qkv=True, fold_norms=fold)
    assert enc.hparams["fused_qkv"] and enc.hparams["folded_norms"] == fold
    for k, (seconds, chunked) in enumerate(((1.0, True), (7.3, True), (2.37, False))):
        mel = _mel(seconds, 20 + k)
        r = o.audio.forward_batch([mel], chunk_length=1.0 if chunked else -1)
        c, n = ref.encoder_frames(mel.shape[1]), r["n_tokens"][0]
        emb, states = enc.encode(mel, mel.shape[1], chunked)
        assert rel(states, r["states"][0, :c]) <= RTOL and rel(emb, r["pooled"][0, :n]) <= RTOL
    mel = ref_audio_mel.offline_features(pcm(4.0, 8))[0]
    s = ref.AudioStreamRef(o.audio)
    for at in range(0, 400, 100):
        want = s.process(mel[:, at : at + 100])
        got, _ = enc.encode_stream(mel[:, at : at + 100])
        assert rel(got, want) <= RTOL
    # F16: the folded matrices are rounded once more; the error stays of the unfolded F16's size.
    f16 = str(converted(o.dir, "f16"))
    mel = _mel(7.3, 30)
    want = o.audio.forward_batch([mel])["pooled"][0]
    plain, _ = _core.AudioModel(f16, "cpu", 0, fuse_qkv=False, fold_norms=False).encode(mel, mel.shape[1], True)
    this, _ = _core.AudioModel(f16, "cpu", 0, fuse_qkv=True, fold_norms=fold).encode(mel, mel.shape[1], True)
    e_plain, e_this = rel(plain, want[: plain.shape[0]]), rel(this, want[: this.shape[0]])
    print(f"F16 embeddings vs F32 reference: plain {e_plain:.1e}, {'folded' if fold else 'fused'} {e_this:.1e}")
    assert e_this <= max(2.0 * e_plain, 1e-3)


# ------------------------------------------------------------------------------ 2. prompts

def _msgs_cases():
    a1, a2, a3 = pcm(1.3, 1), pcm(2.37, 2, 330.0), pcm(0.42, 3, 150.0)
    img = image(300, 200, 1)
    return {
        "audio_only": ([{"role": "user", "content": [a1]}], {}),
        "audio_as_content": ([{"role": "user", "content": a2}], {}),
        "audio_text": ([{"role": "user", "content": [a1, "What is said?"]}], {}),
        "text_audio_image": ([{"role": "user", "content": ["Listen:", a2, img, "Describe both."]}], {}),
        "two_messages": ([{"role": "user", "content": [a1, "First."]}, {"role": "assistant", "content": "Noted."},
                          {"role": "user", "content": ["Second:", a3]}], {}),
        "two_in_one_message": ([{"role": "user", "content": [a3, a1, "Compare."]}], {}),
        "multi_turn": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [a2, "Hi"]},
                        {"role": "assistant", "content": "Hello there."},
                        {"role": "user", "content": [a1, "And this?"]}, {"role": "assistant", "content": "A tone."},
                        {"role": "user", "content": "Thanks."}], {}),
        "omni_mode": ([{"role": "user", "content": ["Hear", a1, "this", a3]}], {"omni_mode": True}),
    }


def _check_prompt(o: Omni, msgs, kw, what):
    s = o.session()
    p = s.chat_prompt(msgs, **kw)
    ids, audio = flatten(p["segments"])
    want = o.prompt(msgs, **kw)
    assert ids == want.ids, what
    assert p["tts"] == want.use_tts_template, what
    # Every audio position, and the embeddings there: each piece is an item of the chat's batch.
    pos = [off + e for off, ch in audio for e in ch.embed_pos]
    assert pos == [i for s_, e_ in want.audio_bounds for i in range(s_, e_)], what
    mels = [m for src in want.audio_sources for m in ref_audio_mel.offline_features(src)]
    embs = o.audio.get_audio_embedding(mels)
    assert len(embs) == len(audio)
    worst = max(rel(ch.embeddings(), e) for (_, ch), e in zip(audio, embs))
    assert worst <= RTOL, what
    return p, want, worst


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(_msgs_cases()))
def test_prompt_ids(layout, case, omni):
    o = omni(layout)
    msgs, kw = _msgs_cases()[case]
    p, want, worst = _check_prompt(o, msgs, kw, case)
    assert p["tts"]  # audio switches the speech template on
    print(f"{layout} {case}: {len(want.ids)} tokens, groups {[e - s for s, e in want.audio_bounds]}, "
          f"embeddings {worst:.1e}")
    if o.name == "o4.5":
        assert p["text"].endswith("<think>\n\n</think>\n\n<|tts_bos|>")
    else:
        assert p["text"].endswith("<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>")
        assert all(e - s <= 25 for s, e in want.audio_bounds)  # per-second groups


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prompt_long_clips_are_pieces(layout, omni):
    """31 s and 65 s: every 30 s piece is its own item (own placeholder group(s)), joined as
    items are; all pieces of the chat are one padded batch."""
    o = omni(layout)
    a31, a65 = pcm(31.0, 11), pcm(65.0, 12, 180.0)
    pool = o.audio.pool_step
    for msgs, kw, pieces in (
        ([{"role": "user", "content": [a31, "Sum up."]}], {}, [30.0, 1.0]),
        ([{"role": "user", "content": [a65]}], {}, [30.0, 30.0, 5.0]),
        ([{"role": "user", "content": ["Both:", a31, a65]}], {"omni_mode": True}, [30.0, 1.0, 30.0, 30.0, 5.0]),
    ):
        p, want, worst = _check_prompt(o, msgs, kw, f"{len(pieces)} pieces")
        _, audio = flatten(p["segments"])
        assert [ch.n_samples for _, ch in audio] == [int(x * SR) for x in pieces]
        assert [len(ch.embed_pos) for _, ch in audio] == [ref.audio_tokens(int(x * SR), pool) for x in pieces]
        sep = "" if kw.get("omni_mode") else "\n"
        assert f"<|audio_end|>{sep}<|audio_start|>" in want.text
        print(f"{layout} pieces {pieces}: {len(want.ids)} tokens, embeddings {worst:.1e}")


def test_prompt_without_tts_template_and_listen(omni):
    o = omni(O45)
    msgs = [{"role": "user", "content": [pcm(1.0), "What is said?<|listen|>"]}]
    p, want, _ = _check_prompt(o, msgs, {"use_tts_template": False}, "no tts")
    assert not p["tts"] and not p["text"].endswith("<|tts_bos|>")
    assert o.model.tokenize("<|listen|>")[0] not in flatten(p["segments"])[0]


# ------------------------------------------------------------------------------ 3. logits, greedy

def _check_chat(o: Omni, s: minicpm_cpp.Session, msgs, what, n_gen: int = 16):
    """s.chat(msgs) greedy against reference_chat: prompt ids, logits at every prompt position,
    the generated tokens and their logits, the answer text. Returns (answer, errors)."""
    r = o.chat(msgs, n_gen=n_gen)
    ids = r["ids"]
    s.reset_timings()
    answer = s.chat(msgs, max_tokens=n_gen, temperature=0, repeat_penalty=1.0)
    assert s.tokens[: len(ids)] == ids, what
    gen = s.tokens[len(ids):]
    want = list(r["tokens"])
    if o.name == "o4.5":  # chat() cuts the answer at <|tts_eos|>; we stop there
        tts_eos = o.ref.tok.convert_tokens_to_ids(ref.TTS_EOS)
        if tts_eos in want:
            want = want[: want.index(tts_eos) + 1]
    assert gen == want, what
    lp = rel(s.position_logits(0, len(ids)), r["prompt_logits"])
    n_eval = len(gen) - 1  # the last sampled token is not evaluated
    ls = rel(s.position_logits(len(ids), len(ids) + n_eval), r["step_logits"][1 : 1 + n_eval]) if n_eval > 0 else 0.0
    assert lp <= RTOL and ls <= RTOL, what
    assert answer == r["text"], what
    return answer, r, (lp, ls)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chat_audio_only(layout, omni):
    o = omni(layout)
    s = o.session()
    s.set_capture(hidden=False, logits=True)
    msgs = [{"role": "user", "content": [pcm(1.3, 21)]}]
    answer, r, err = _check_chat(o, s, msgs, "audio only")
    print(f"{layout} audio only: {len(r['ids'])} positions, logits {err[0]:.1e} / {err[1]:.1e}, "
          f"{len(r['tokens'])} tokens {answer!r}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chat_audio_and_image(layout, omni):
    o = omni(layout)
    s = o.session()
    s.set_capture(hidden=False, logits=True)
    # 448 x 448: one slice at the model's resolution, so no resampling differs from the reference's.
    msgs = [{"role": "user", "content": [image(448, 448, 3), pcm(2.37, 22, 300.0), "What do you see and hear?"]}]
    answer, r, err = _check_chat(o, s, msgs, "audio + image")
    print(f"{layout} audio + image: {len(r['ids'])} positions, logits {err[0]:.1e} / {err[1]:.1e}, {answer!r}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chat_multi_turn_reuses_context(layout, omni):
    o = omni(layout)
    s = o.session()
    s.set_capture(hidden=False, logits=True)
    msgs = [{"role": "user", "content": [pcm(1.7, 23), "What is this sound?"]}]
    a1, r1, e1 = _check_chat(o, s, msgs, "turn 1")
    n1 = len(r1["ids"])
    msgs = msgs + [{"role": "assistant", "content": a1}, {"role": "user", "content": ["And this one?", pcm(0.9, 24)]}]
    a2, r2, e2 = _check_chat(o, s, msgs, "turn 2")
    # Turn 2 evaluated only what follows the common prefix: the first clip is still the longest
    # of the chat's audio batch, so its embeddings (and positions) are unchanged.
    common = next(i for i, (x, y) in enumerate(zip(r1["ids"] + [-1], r2["ids"])) if x != y)
    assert common > n1 // 2 and s.timings["n_prefill"] <= len(r2["ids"]) - common + 1
    assert s.timings["n_audio"] == 1  # only the new clip was encoded
    # Turn 3 brings a longer clip: the reference encodes the chat's audio as one batch padded to
    # it, which changes the first clip's embeddings (1.7 s is not whole seconds): everything from
    # the first audio position on is evaluated again.
    msgs = msgs + [{"role": "assistant", "content": a2}, {"role": "user", "content": [pcm(3.1, 25)]}]
    a3, r3, e3 = _check_chat(o, s, msgs, "turn 3")
    first_audio = r3["prompt"].audio_bounds[0][0]
    assert s.timings["n_prefill"] >= len(r3["ids"]) - first_audio
    assert s.timings["n_audio"] == 3  # every clip again, padded to the new longest
    print(f"{layout} multi-turn: turn 2 reused {common} of {len(r2['ids'])} positions, logits "
          f"{max(e1[0], e2[0], e3[0]):.1e} / {max(e1[1], e2[1], e3[1]):.1e}")


# ------------------------------------------------------------------------------ 5. llama.cpp-omni file

@pytest.fixture(scope="module")
def split_files(tiny_minicpmo45_dir, tmp_path_factory):
    """The LLM alone (--llm-only, F32) with our audio file (--audio-out, F16), and llama.cpp-omni's
    audio file written from the same checkpoint (convert_apm.py's layout)."""
    import omni_audio_gguf
    from minicpm_cpp.convert import convert

    d = tmp_path_factory.mktemp("o45-split")
    llm, ours = d / "llm.gguf", d / "audio-f16.gguf"
    convert(tiny_minicpmo45_dir, llm, "f32", force=True, progress=False, log=lambda m: None, llm_only=True,
            audio_out=ours, audio_outtype="f16")
    omni_file = omni_audio_gguf.write_omni_audio_gguf(tiny_minicpmo45_dir, d / "MiniCPM-o-4_5-audio-F16.gguf")
    return llm, ours, omni_file


def _embeddings(model, x):
    (chunk,) = minicpm_cpp.Session(model, n_ctx=512).encode_audio(x)
    return chunk


def test_llama_cpp_omni_audio_file(split_files, omni):
    """llama.cpp-omni's audio GGUF (whisper names, its own keys) next to an LLM-only file gives the
    embeddings of our F16 audio file: convert_apm.py rounds every tensor to float16 first, which
    for the checkpoint's bfloat16 values changes nothing but subnormals."""
    llm, ours, omni_file = split_files
    assert not minicpm_cpp.Model(llm, device="cpu").has_audio
    with_omni = minicpm_cpp.Model(llm, device="cpu", audio=omni_file)
    with_ours = minicpm_cpp.Model(llm, device="cpu", audio=ours)
    assert with_omni.has_audio and with_ours.has_audio
    assert _core.AudioModel(str(omni_file), "cpu", 0).hparams["omni_layout"]
    x = pcm(2.37, 51)
    a, b = _embeddings(with_omni, x), _embeddings(with_ours, x)
    assert a.tokens == b.tokens and len(a.embed_pos) == 23
    err = rel(a.embeddings(), b.embeddings())
    print(f"llama.cpp-omni audio file vs our F16 audio file: embeddings rel {err:.1e}")
    assert err <= 1e-6
    # Both F16 encoders against the F32 reference: the F16 bound of test_quantized_conversions.
    want = omni(O45).audio.get_audio_embedding(ref_audio_mel.offline_features(x))[0]
    assert rel(a.embeddings(), want) <= 3e-3
    # A chat through each pair gives the same logits.
    msgs = [{"role": "user", "content": [x, "Hi"]}]
    la, lb = [], []
    for m, out in ((with_omni, la), (with_ours, lb)):
        s = minicpm_cpp.Session(m, n_ctx=512)
        s._s.sync_segments(s.chat_prompt(msgs)["segments"])
        out.append(s.logits())
    assert rel(la[0], lb[0]) <= 1e-5


def test_llama_cpp_omni_directory(split_files, tmp_path):
    """Model(directory) in llama.cpp-omni's release layout: the LLM at the top, audio/*audio*.gguf."""
    import os

    llm, _, omni_file = split_files
    d = tmp_path / "MiniCPM-o-4_5-gguf"
    (d / "audio").mkdir(parents=True)
    os.link(llm, d / "MiniCPM-o-4_5-F32.gguf")
    os.link(omni_file, d / "audio" / "MiniCPM-o-4_5-audio-F16.gguf")
    found = minicpm_cpp.find_model_files(d)
    assert found["model"] == str(d / "MiniCPM-o-4_5-F32.gguf")
    assert found["audio"] == str(d / "audio" / "MiniCPM-o-4_5-audio-F16.gguf") and found["vision"] is None
    m = minicpm_cpp.Model(d, device="cpu")
    assert m.has_audio and m.audio == found["audio"]
    x = pcm(1.3, 52)
    got = _embeddings(m, x)
    want = _embeddings(minicpm_cpp.Model(llm, device="cpu", audio=omni_file), x)
    np.testing.assert_array_equal(got.embeddings(), want.embeddings())


# ------------------------------------------------------------------------------ 6. quantized files

@pytest.fixture(scope="module")
def q8_audio_file(tiny_minicpmo45_dir, tmp_path_factory):
    from minicpm_cpp.convert import convert

    out = tmp_path_factory.mktemp("o45-q8a") / "o45-q8_0-audio-q8_0.gguf"
    return convert(tiny_minicpmo45_dir, out, "q8_0", force=True, progress=False, log=lambda m: None,
                   audio_outtype="q8_0")


@pytest.mark.parametrize(
    "outtype, audio_q8, emb_bound, logit_bound",
    # Bounds: 3-4x what was measured on the tiny checkpoint (printed below): F16 2.6e-4 / 8.5e-4,
    # Q8_0 LLM 2.6e-4 / 1.6e-2, Q8_0 LLM and audio 1.0e-2 / 1.8e-2.
    [("f16", False, 1e-3, 3e-3), ("q8_0", False, 1e-3, 5e-2), ("q8_0", True, 3e-2, 5e-2)],
)
def test_quantized_conversions(outtype, audio_q8, emb_bound, logit_bound, tiny_minicpmo45_dir, converted,
                               q8_audio_file, omni):
    """F16 and Q8_0 files (the audio encoder F16 unless --audio-outtype q8_0) against the F32
    reference: the embeddings of a clip and the logits of an audio chat at every position."""
    o = omni(O45)
    path = q8_audio_file if audio_q8 else converted(tiny_minicpmo45_dir, outtype)
    m = minicpm_cpp.Model(path, device="cpu")
    x = pcm(2.37, 61)
    want = o.audio.get_audio_embedding(ref_audio_mel.offline_features(x))[0]
    ee = rel(_embeddings(m, x).embeddings(), want)
    msgs = [{"role": "user", "content": [x, "What is said?"]}]
    r = o.chat(msgs, n_gen=1)
    s = minicpm_cpp.Session(m, n_ctx=512)
    s.set_capture(hidden=False, logits=True)
    s._s.sync_segments(s.chat_prompt(msgs)["segments"])
    assert s.tokens == r["ids"]
    le = rel(s.position_logits(), r["prompt_logits"])
    print(f"{outtype} (audio {'q8_0' if audio_q8 else 'f16'}): embeddings rel {ee:.2e}, logits rel {le:.2e}")
    assert ee <= emb_bound and le <= logit_bound
    assert ee > 1e-6  # not the F32 path


# ------------------------------------------------------------------------------ 7. bad input

def _wav_bytes(x: np.ndarray, rate: int = SR) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_bad_audio_input(omni, tmp_path, monkeypatch):
    o = omni(O45)
    s = o.session()
    good = pcm(1.0, 71)
    bad_arrays = {
        "empty": (np.zeros(0, np.float32), "no samples|empty"),
        "nan": (np.where(np.arange(16000) == 123, np.nan, good).astype(np.float32), "NaN"),
        "inf": (np.where(np.arange(16000) == 9, np.inf, good).astype(np.float32), "NaN or infinite|not finite"),
        "int16": ((good * 32767).astype(np.int16), "int16"),
        "int32": ((good * 2**31 - 1).astype(np.int32), "int32"),
    }
    for what, (arr, match) in bad_arrays.items():
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match=match):
            s.chat([{"role": "user", "content": [arr, "Hi"]}], max_tokens=1)
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match=match):
            s.encode_audio(arr)
    # A 2-D array: two channels are not an image either.
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        s.chat([{"role": "user", "content": [np.stack([good, good]), "Hi"]}], max_tokens=1)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="1-D"):
        s.encode_audio(np.stack([good, good], axis=1))
    # Unreadable, truncated, missing files, as paths and as parts.
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(_wav_bytes(good)[:20000])
    for path, exc in ((junk, minicpm_cpp.InvalidArgumentError), (cut, minicpm_cpp.InvalidArgumentError),
                      (tmp_path / "missing.wav", minicpm_cpp.FileError)):
        part = {"type": "audio_url", "audio_url": {"url": str(path)}}
        with pytest.raises(exc):
            s.chat([{"role": "user", "content": [part, "Hi"]}], max_tokens=1)
        with pytest.raises(exc):
            s.encode_audio(str(path))
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="truncated"):
        s.chat([{"role": "user", "content": [str(cut), "Hi"]}], max_tokens=1)
    # Over the limit: the Python check (MAX_AUDIO_SECONDS, patched small here) and the native one.
    import minicpm_cpp.audio as maudio

    monkeypatch.setattr(maudio, "MAX_AUDIO_SECONDS", 2)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="limit"):
        s.chat([{"role": "user", "content": [pcm(2.5, 72)]}], max_tokens=1)
    monkeypatch.undo()
    long_zeros = np.zeros(3600 * SR + 1, np.float32)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="over the limit"):
        s._s.encode_audio(long_zeros)
    del long_zeros
    # The session is still usable.
    assert s.chat([{"role": "user", "content": [good, "Hi"]}], max_tokens=2, temperature=0) is not None


def test_audio_shorter_than_the_pooling(omni):
    """50 samples: one mel frame, one encoder frame, fewer than the pooling step: the reference's
    AvgPool1d raises; so do we, saying how long audio must be (o4.5 pools by 5: 1281 samples)."""
    for layout, need in ((O45, 1281), (O26, 321)):
        o = omni(layout)
        s = o.session()
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match=f"too short.*at least {need} samples"):
            s.chat([{"role": "user", "content": [pcm(50 / SR), "Hi"]}], max_tokens=1)
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="too short"):
            s.encode_audio(pcm((need - 1) / SR))
        (chunk,) = s.encode_audio(pcm(need / SR))
        assert len(chunk.embed_pos) == 1
    # Through the reference: the shortest clip gives one token there too.
    assert ref.audio_tokens(1281, 5) == 1 and ref.audio_tokens(1280, 5) == 0
    assert ref.audio_tokens(321, 2) == 1 and ref.audio_tokens(320, 2) == 0


def test_model_without_audio(tiny_minicpmv45_vision_dir, converted):
    m = minicpm_cpp.Model(converted(tiny_minicpmv45_vision_dir, "f32"), device="cpu")
    assert not m.has_audio
    s = minicpm_cpp.Session(m, n_ctx=512)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no audio encoder"):
        s.chat([{"role": "user", "content": [pcm(1.0), "Hi"]}], max_tokens=1)
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no audio encoder"):
        s.encode_audio(pcm(1.0))
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no audio encoder"):
        s.audio_stream()
    with pytest.raises(minicpm_cpp.FormatError, match="no MiniCPM-o audio encoder"):
        _core.AudioModel(str(converted(tiny_minicpmv45_vision_dir, "f32")), "cpu", 0)
    assert s.n_past == 0


def test_stream_misuse(omni):
    o = omni(O45)
    s = o.session(n_ctx=1024)
    st = s.audio_stream()
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="already open"):
        s.audio_stream()
    for bad, match in ((np.full(100, np.nan, np.float32), "NaN"), (np.ones(100, np.int16), "int16"),
                       (np.ones((2, 100), np.float32), "1-D")):
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match=match):
            st.push(bad)
    assert st.push(np.zeros(0, np.float32)) == 0
    assert st.push(pcm(1.2, 73)) == 12  # "<|audio_start|>" + 10 + "<|audio_end|>"
    st.respond(max_tokens=2, temperature=0)
    assert not st.active
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="no audio stream is open"):
        st.push(pcm(0.5))
    assert st.finish() == 0
    # A fresh stream on the same session works.
    st2 = s.audio_stream()
    st2.push(pcm(0.5, 74))
    assert st2.finish() == 12 and st2.finish() == 0
    # o2.6 takes audio through chat() only.
    with pytest.raises(minicpm_cpp.UnsupportedError, match="2.6"):
        omni(O26).session().audio_stream()


# ------------------------------------------------------------------------------ 8. CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minicpm_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_audio_and_image(omni, split_files, tmp_path):
    from PIL import Image

    o = omni(O45)
    wav, png = tmp_path / "a.wav", tmp_path / "b.png"
    wav.write_bytes(_wav_bytes(pcm(1.6, 81)))
    Image.fromarray(image(448, 448, 82)).save(png)
    prompt = "What do you hear and see?"
    r = _cli("-m", o.gguf, "--audio", wav, "--image", png, "-p", prompt, "--temp", "0", "-n", "8", "--device", "cpu",
             "--no-timings")
    assert r.returncode == 0, r.stderr
    from minicpm_cpp.audio import load_audio
    from minicpm_cpp.image import load_image

    want = o.session().chat([{"role": "user", "content": [load_audio(str(wav)), load_image(str(png)), prompt]}],
                            max_tokens=8, temperature=0)
    assert r.stdout == want + "\n"
    # The same with the LLM-only file and a separate audio file (--audio-out).
    llm, ours, _ = split_files
    r2 = _cli("-m", llm, "--audio-model", ours, "--audio", wav, "-p", prompt, "--temp", "0", "-n", "8",
              "--device", "cpu", "--no-timings")
    assert r2.returncode == 0, r2.stderr
    m2 = minicpm_cpp.Model(llm, device="cpu", audio=ours)
    want2 = minicpm_cpp.Session(m2).chat([{"role": "user", "content": [load_audio(str(wav)), prompt]}], max_tokens=8,
                                         temperature=0)
    assert r2.stdout == want2 + "\n"
    # Without the audio file the model has no audio encoder: a clear message.
    r3 = _cli("-m", llm, "--audio", wav, "-p", prompt, "-n", "1", "--device", "cpu")
    assert r3.returncode == 2 and "no audio encoder" in r3.stderr and "Traceback" not in r3.stderr
