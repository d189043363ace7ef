"""The PyTorch reference of MiniCPM-o's audio input path (tests/ref_minicpmo_audio.py) and the
llama.cpp-omni audio GGUF writer (tests/omni_audio_gguf.py), on tiny random checkpoints.

These tests prove the reference itself: its encoder against transformers' WhisperEncoder, the
relations between the offline (chunk-masked, batched) and streaming (cached) paths that hold in
the official code and the ones that do not, token counts, placeholders and prompts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import omni_audio_gguf
import ref_minicpmo_audio as ref
import tiny_models

O45 = "tiny_minicpmo45_dir"
O26 = "tiny_minicpmo26_dir_audio"


def _mel_standin(pcm):
    """Offline log-mel per 30 s piece with transformers' WhisperFeatureExtractor (30 s padding,
    max - 8 clamp, trimmed to ceil(n / 160) frames): the official offline features."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)
    out = []
    for piece in ref.split_pieces(np.asarray(pcm, dtype=np.float32)):
        r = fe(piece, sampling_rate=16000, return_tensors="np", padding="max_length", return_attention_mask=True)
        n = int(r["attention_mask"][0].sum())
        out.append(r["input_features"][0][:, :n].astype(np.float32))
    return out


def mel_fn(pcm):
    try:
        import ref_audio_mel
    except ImportError:
        return _mel_standin(pcm)
    return ref_audio_mel.offline_features(pcm)


def _pcm(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.3 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _mel(frames, seed=0):
    return np.random.default_rng(seed).uniform(-0.8, 1.2, (80, frames)).astype(np.float32)


@pytest.fixture(scope="module")
def audio(request):
    cache = {}

    def get(layout):
        if layout not in cache:
            cache[layout] = ref.AudioRef(request.getfixturevalue(layout))
        return cache[layout]

    return get


@pytest.fixture(scope="module")
def tok():
    return ref._tokenizer(tiny_models.tokenizer_dir())


# ------------------------------------------------------------------------------ encoder

@pytest.mark.parametrize("layout", [O45, O26])
def test_encoder_matches_transformers(layout, audio):
    a = audio(layout)
    mel = _mel(3000)  # transformers only takes 2 * max_source_positions frames
    with torch.no_grad():
        want = ref.hf_whisper_encoder(a)(torch.from_numpy(mel)[None]).last_hidden_state[0]
        got = a.encoder(torch.from_numpy(mel)[None]).states[0]
    assert got.shape == (1500, a.config.d_model)
    assert float((got - want).abs().max()) <= 1e-5
    assert float(got.std()) > 0.5  # the tiny weights keep activations O(1)

    short = _mel(100, seed=1)  # a 1 s input against a 50-row table
    with torch.no_grad():
        want = ref.hf_whisper_encoder(a, 50)(torch.from_numpy(short)[None]).last_hidden_state[0]
        got = a.encoder(torch.from_numpy(short)[None]).states[0]
    assert float((got - want).abs().max()) <= 1e-5


def test_encoder_stages_and_extra_context(audio):
    a = audio(O45)
    mel = torch.from_numpy(_mel(104))[None]
    out = a.encoder(mel, return_stages=True)
    assert out.stages["conv1"].shape == (1, 64, 104)
    assert out.stages["conv2"].shape == (1, 64, 52)
    assert torch.equal(out.stages["ln_post"], out.states)
    # Duplex trimming: 2 extra mel frames on each side -> one encoder frame off each end.
    h = a.encoder.conv_frontend(mel, use_extra_context=True, prefix_extra_frames=2, suffix_extra_frames=2)
    assert h.shape[1] == 50
    assert torch.equal(h, out.stages["conv2"].permute(0, 2, 1)[:, 1:51])
    # cnn_min_length pads for the convs and keeps (F + 1) // 2 frames.
    assert a.encoder.conv_frontend(mel[:, :, :7], cnn_min_length=20).shape[1] == 4


def test_chunk_mask():
    m = ref.subsequent_chunk_mask(4, 2)
    assert m.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    m = ref.subsequent_chunk_mask(5, 2, num_left_chunks=0)
    assert m.int().tolist()[4] == [0, 0, 0, 0, 1]
    mask = ref.offline_attention_mask([130, 300], 150, 1.0)
    assert mask.shape == (2, 1, 150, 150)
    # Frame 60 of the short item sees [0, 100): its mel length (130) masks nothing there.
    assert torch.isfinite(mask[0, 0, 60, :100]).all() and torch.isinf(mask[0, 0, 60, 100:]).all()
    assert torch.isinf(mask[0, 0, 0, 50:]).all()


# ---------------------------------------------------------------- offline vs streaming

def test_streaming_one_second_equals_offline(audio):
    a = audio(O45)
    mel = _mel(100)
    s = ref.AudioStreamRef(a)
    got = s.process(mel)
    assert got.shape == (10, 256)
    assert np.abs(got - a.get_audio_embedding([mel])[0]).max() <= 1e-5
    assert np.abs(got - a.get_audio_embedding([mel], chunk_length=-1)[0]).max() <= 1e-5
    assert s.cache_len == 50


def test_streaming_blocks_differ_from_offline_at_conv_edges(audio):
    """1-s mel blocks streamed with the cache are not the offline chunk-masked encoding of the
    same clip: each block is convolved alone, so encoder frames 0 and 49 of a block see zero
    padding instead of the neighbouring mel frames, and attention spreads that to every frame."""
    a = audio(O45)
    mel = _mel(300)
    off = a.encoder_states([mel])[0]
    s = ref.AudioStreamRef(a)
    st = []
    for k in range(3):
        s.process(mel[:, 100 * k : 100 * (k + 1)])
        st.append(s.last_states)
    diff = np.abs(np.concatenate(st) - off).max(axis=1)
    assert diff[49] > 1e-2 and diff[50] > 1e-2  # the block edge
    assert diff.min() > 1e-4  # block 0 attends to its frame 49 too


def test_streaming_with_cnn_context_equals_offline(audio):
    """Duplex framing (2 extra mel frames each side, none in front of block 0; the last block
    without a suffix) gives exactly the offline conv outputs, and then the cached block-causal
    attention equals the offline chunk mask: the streaming embeddings are the offline ones."""
    a = audio(O45)
    n_blocks = 3
    mel = _mel(100 * n_blocks)
    off = a.get_audio_embedding([mel])[0]
    off_states = a.encoder_states([mel])[0]
    s = ref.AudioStreamRef(a)
    emb, st = [], []
    for k in range(n_blocks):
        last = k == n_blocks - 1
        lo, hi = max(100 * k - 2, 0), 100 * (k + 1) + (0 if last else 2)
        emb.append(s.process(mel[:, lo:hi], use_extra_context=True, prefix_extra_frames=0 if k == 0 else 2,
                             suffix_extra_frames=0 if last else 2))
        st.append(s.last_states)
    assert np.abs(np.concatenate(st) - off_states).max() <= 1e-5
    assert np.abs(np.concatenate(emb) - off).max() <= 1e-5


def test_streaming_cache_resets_at_1500(audio):
    a = audio(O45)
    s = ref.AudioStreamRef(a)
    blocks = [_mel(100, seed=k) for k in range(30)]
    lens = []
    for b in blocks[:29]:
        s.process(b)
        lens.append(s.cache_len)
    assert lens[-1] == 1450 and s.resets == 0
    got = s.process(blocks[29])  # 1450 + 50 >= 1500: dropped first, positions restart at 0
    assert s.resets == 1 and s.cache_len == 50
    fresh = ref.AudioStreamRef(a).process(blocks[29])
    assert np.abs(got - fresh).max() == 0.0


def test_streaming_positions_continue_after_cache(audio):
    a = audio(O45)
    s = ref.AudioStreamRef(a)
    s.process(_mel(100, seed=1))
    second = s.process(_mel(100, seed=2))
    assert np.abs(second - ref.AudioStreamRef(a).process(_mel(100, seed=2))).max() > 1e-2


def test_batch_padding_mask_compares_with_mel_length(audio):
    """A short item batched with a longer one: the official key mask compares encoder indices
    with mel lengths, so the item's last partial second attends to padding frames."""
    a = audio(O45)
    short, long_ = _mel(130, seed=3), _mel(300, seed=4)
    alone = a.get_audio_embedding([short])[0]
    batched = a.get_audio_embedding([short, long_])[0]
    assert alone.shape == batched.shape == (13, 256)
    assert np.abs(batched - alone).max() > 1e-2
    assert np.abs(batched[:10] - alone[:10]).max() <= 1e-5  # first full second: chunk mask hides the rest
    # With encoder lengths the item would not see its padding (not what the official code does).
    fixed = a.get_audio_embedding([short, long_], mask_lengths="encoder")[0]
    assert np.abs(fixed - alone).max() <= 1e-5
    # Whole seconds are unaffected.
    one = _mel(100, seed=5)
    assert np.abs(a.get_audio_embedding([one, long_])[0] - a.get_audio_embedding([one])[0]).max() <= 1e-5


# ------------------------------------------------------------------- counts, placeholders

@pytest.mark.parametrize(
    "seconds, o45, o26",
    [(1.0, 10, 25), (1.035, 10, 26), (0.1, 1, 2), (30.0, 300, 750), (2.5, 25, 62), (0.05, 0, 1)],
)
def test_token_counts(seconds, o45, o26):
    n = int(round(seconds * 16000))
    assert ref.audio_tokens(n, 5) == o45
    assert ref.audio_tokens(n, 2) == o26


def test_token_counts_match_embeddings(audio):
    a45, a26 = audio(O45), audio(O26)
    for seconds in (1.0, 1.035, 0.1, 2.5):
        f = ref.mel_frames(int(round(seconds * 16000)))
        mel = _mel(f)
        assert a45.get_audio_embedding([mel])[0].shape[0] == ref.tokens_for_mel(f, 5)
        assert a26.get_audio_embedding([mel])[0].shape[0] == ref.tokens_for_mel(f, 2)
    assert ref.mel_frames(16560) == 104 and ref.encoder_frames(104) == 52


def test_placeholders():
    g = lambda k: "<|audio_start|>" + "<unk>" * k + "<|audio_end|>"  # noqa: E731
    assert ref.audio_placeholder(16000, 5) == g(10)
    assert ref.audio_placeholder(40000, 5) == g(25)
    assert ref.audio_placeholder(40000, 5, chunk_input=True) == g(10) + g(10) + g(5)
    assert ref.audio_placeholder(40000, 2, chunk_input=True) == g(25) + g(25) + g(12)
    assert ref.audio_placeholder(16000 * 31 + 4800, 5) == g(313)  # one group for a 31.3 s clip
    assert ref.audio_placeholder(800, 5, chunk_input=True) == ""  # 0 tokens, 0 groups


# ----------------------------------------------------------------------------- prompts

def _ids(tok, s):
    return tok(s, add_special_tokens=False).input_ids


def test_prompt_audio_chat_o45(tok):
    d = tiny_models.tokenizer_dir()
    msgs = [{"role": "user", "content": [_pcm(1.0), "What is said?<|listen|>"]}]
    p = ref.build_prompt_ids(d, msgs)
    assert p.use_tts_template and p.fill == "zip"
    tail = _ids(tok, "<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>")
    assert p.ids[-len(tail):] == tail
    assert p.ids[-1] == tok.convert_tokens_to_ids("<|tts_bos|>")
    assert tok.convert_tokens_to_ids("<|listen|>") not in p.ids
    want = "<|im_start|>user\n" + "<|audio_start|>" + "<unk>" * 10 + "<|audio_end|>\nWhat is said?<|listen|><|im_end|>\n"
    assert p.ids[: -len(tail)] == [t for t in _ids(tok, want) if t != tok.convert_tokens_to_ids("<|listen|>")]
    (s, e), = p.audio_bounds
    assert e - s == 10 and all(t == tok.convert_tokens_to_ids("<unk>") for t in p.ids[s:e])
    assert len(p.audio_sources) == 1 and len(p.audio_sources[0]) == 16000

    # Our jinja rendering is apply_chat_template's.
    rendered = [{"role": "user", "content": "<audio>./</audio>\nWhat is said?"}]
    kw = dict(add_generation_prompt=True, use_tts_template=True, enable_thinking=False)
    cfg_t = json.loads((d / "tokenizer_config.json").read_text())["chat_template"]
    assert ref.render_chat_template(cfg_t, rendered, **kw) == tok.apply_chat_template(rendered, tokenize=False, **kw)

    # omni_mode joins items with "".
    p2 = ref.build_prompt_ids(d, msgs, omni_mode=True, tokenizer=tok)
    assert "<|audio_end|>What is said?" in p2.text
    # No audio: no <|tts_bos|>.
    p3 = ref.build_prompt_ids(d, [{"role": "user", "content": "hi"}], tokenizer=tok)
    assert not p3.use_tts_template and p3.ids[-len(tail) + 1 :] == tail[:-1]


def test_prompt_audio_chat_o26(tok):
    d = tiny_models.tokenizer_dir()
    msgs = [{"role": "user", "content": ["Listen:", _pcm(2.5)]}]
    p = ref.build_prompt_ids(d, msgs, model="o2.6", tokenizer=tok)
    assert p.fill == "concat"
    assert p.text.endswith("<|im_end|>\n<|im_start|>assistant\n<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>")
    assert p.text.startswith("<|im_start|>user\nListen:\n<|audio_start|>")
    assert "(" not in p.text
    assert [e - s for s, e in p.audio_bounds] == [25, 25, 12]  # chat()'s chunk_input default
    p = ref.build_prompt_ids(d, msgs, model="o2.6", chunk_input=False, fill="zip", tokenizer=tok)
    assert [e - s for s, e in p.audio_bounds] == [62]
    assert tok.convert_tokens_to_ids("<|spk|>") in p.ids  # o2.6 special strings exist in the o4.5 vocabulary


def test_prompt_rules_long_clip_and_two_audios(tok):
    d = tiny_models.tokenizer_dir()
    long_clip = _pcm(31.3)
    msgs = [{"role": "user", "content": [long_clip, "Sum up."]}]
    off = ref.build_prompt_ids(d, msgs, tokenizer=tok)
    assert [e - s for s, e in off.audio_bounds] == [313]
    assert [len(x) for x in off.audio_sources] == [480000, 20800]
    pieces = [np.zeros((ref.audio_tokens(len(x), 5), 4), np.float32) for x in off.audio_sources]
    rows = torch.zeros((len(off.ids), 4))
    with pytest.raises(ValueError, match="Shape mismatch"):
        ref.fill_audio_rows(rows, off.audio_bounds, pieces, off.fill)  # the official chat() raises here

    ours = ref.build_prompt_ids(d, msgs, audio_rule="per_item", tokenizer=tok)
    assert [e - s for s, e in ours.audio_bounds] == [300, 13]
    assert "<|audio_end|>\n<|audio_start|>" in ours.text  # pieces joined as items are
    omni = ref.build_prompt_ids(d, msgs, audio_rule="per_item", omni_mode=True, tokenizer=tok)
    assert "<|audio_end|><|audio_start|>" in omni.text
    ref.fill_audio_rows(torch.zeros((len(ours.ids), 4)), ours.audio_bounds, pieces, ours.fill)

    two = [{"role": "user", "content": [_pcm(1.0, 1), _pcm(1.5, 2), "Compare."]}]
    off = ref.build_prompt_ids(d, two, tokenizer=tok)
    assert [e - s for s, e in off.audio_bounds] == [10, 15]
    assert [len(x) for x in off.audio_sources] == [40000]  # merged: features of the concatenation
    with pytest.raises(ValueError, match="Shape mismatch"):
        ref.fill_audio_rows(torch.zeros((len(off.ids), 4)), off.audio_bounds, [np.zeros((25, 4), np.float32)], "zip")
    unmerged = ref.build_prompt_ids(d, two, merge_audio_from_same_content=False, tokenizer=tok)
    assert [len(x) for x in unmerged.audio_sources] == [16000, 24000]
    ours = ref.build_prompt_ids(d, two, audio_rule="per_item", tokenizer=tok)
    assert [e - s for s, e in ours.audio_bounds] == [10, 15] and len(ours.audio_sources) == 2


def test_decode_answer(tok):
    ids = _ids(tok, "Hello! there<|tts_eos|> extra<|im_end|>")
    assert ref.decode_answer(tok, ids, "o4.5") == "Hello there"  # id 0 is "!": dropped as chat() does
    assert ref.decode_answer(tok, ids, "o2.6") == "Hello there extra"
    assert ref.decode_answer(tok, [tok.bos_token_id] + _ids(tok, "Hi"), "o4.5") == "Hi"


def test_prompt_with_image(tok):
    from PIL import Image

    d = tiny_models.tokenizer_dir()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [img, _pcm(0.5), "Describe."]}]
    p = ref.build_prompt_ids(d, msgs, tokenizer=tok)
    assert "<image_id>0</image_id><image>" in p.text
    assert len(p.image_positions) == 64 and [e - s for s, e in p.audio_bounds] == [5]
    unk = tok.convert_tokens_to_ids("<unk>")
    assert all(p.ids[i] == unk for i in p.image_positions)


# ------------------------------------------------------------------------- end to end

def test_reference_chat_o45(tiny_minicpmo45_dir, audio):
    msgs = [{"role": "user", "content": [_pcm(1.3), "What is this?"]}]
    r = ref.reference_chat(tiny_minicpmo45_dir, msgs, n_gen=4, mel_fn=mel_fn)
    p = r["prompt"]
    (s, e), = p.audio_bounds
    assert e - s == 13
    want = audio(O45).get_audio_embedding(r["mels"])[0]
    assert np.abs(r["inputs_embeds"][s:e] - want).max() <= 1e-6  # unscaled
    assert r["prompt_logits"].shape == (len(p.ids), tiny_models.VOCAB_SIZE)
    assert np.array_equal(r["prompt_logits"][-1], r["step_logits"][0])
    assert r["tokens"] == [int(np.argmax(x)) for x in r["step_logits"]]
    assert 1 <= len(r["tokens"]) <= 4


def test_reference_chat_o26_concat_fill(tiny_minicpmo26_dir_audio, audio):
    msgs = [{"role": "user", "content": [_pcm(1.5), "Hi"]}]
    r = ref.reference_chat(tiny_minicpmo26_dir_audio, msgs, n_gen=2, mel_fn=mel_fn)
    p = r["prompt"]
    assert [e - s for s, e in p.audio_bounds] == [25, 12] and p.fill == "concat"
    emb = audio(O26).get_audio_embedding(r["mels"])[0]
    rows = np.concatenate([r["inputs_embeds"][s:e] for s, e in p.audio_bounds])
    assert np.abs(rows - emb).max() <= 1e-6


# ------------------------------------------------------------------------- omni GGUF

def test_omni_audio_gguf_layout(tiny_minicpmo45_dir, tmp_path):
    from gguf import GGUFReader, GGUFValueType

    out = omni_audio_gguf.write_omni_audio_gguf(tiny_minicpmo45_dir, tmp_path / "apm.gguf")
    r = GGUFReader(str(out))
    f = r.fields
    u32 = {"general.file_type": 1, "encoder_attention_heads": 4, "encoder_ffn_dim": 256, "encoder_layers": 2,
           "num_hidden_layers": 2, "d_model": 64, "audio_pool_step": 5, "use_f16": 1, "n_mel": 80, "n_fft": 201}
    for k, v in u32.items():
        assert f[k].types == [GGUFValueType.UINT32] and f[k].contents() == v, k
    assert f["general.architecture"].contents() == "whisper"
    assert f["general.description"].contents() == "audio encoder for MiniCPM-omni"
    assert f["filters"].types == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]
    filt = np.array(f["filters"].contents(), dtype=np.float32).reshape(80, 201)
    assert np.array_equal(filt, omni_audio_gguf.slaney_mel_filters())

    tensors = {t.name: t for t in r.tensors}
    d, ffn, hid = 64, 256, 256
    expect = {
        "encoder.conv1.weight": ([3, 80, d], "F16"),
        "encoder.conv1.bias": ([1, d], "F32"),
        "encoder.conv2.weight": ([3, d, d], "F16"),
        "encoder.conv2.bias": ([1, d], "F32"),
        "encoder.positional_embedding": ([d, 1500], "F32"),
        "encoder.ln_post.weight": ([d], "F32"),
        "encoder.ln_post.bias": ([d], "F32"),
        "audio_projector.linear1.weight": ([ffn // 4, hid], "F16"),
        "audio_projector.linear1.bias": ([hid], "F32"),
        "audio_projector.linear2.weight": ([hid, hid], "F16"),
        "audio_projector.linear2.bias": ([hid], "F32"),
    }
    for i in range(2):
        b = f"encoder.blocks.{i}."
        for n in ("query", "key", "value", "out"):
            expect[b + f"attn.{n}.weight"] = ([d, d], "F16")
            if n != "key":
                expect[b + f"attn.{n}.bias"] = ([d], "F32")
        for n in ("attn_ln", "mlp_ln"):
            expect[b + n + ".weight"] = ([d], "F32")
            expect[b + n + ".bias"] = ([d], "F32")
        expect[b + "mlp.0.weight"] = ([d, ffn], "F16")
        expect[b + "mlp.0.bias"] = ([ffn], "F32")
        expect[b + "mlp.2.weight"] = ([ffn, d], "F16")
        expect[b + "mlp.2.bias"] = ([d], "F32")
    assert set(tensors) == set(expect)
    for name, (shape, dtype) in expect.items():
        t = tensors[name]
        assert [int(x) for x in t.shape] == shape and t.tensor_type.name == dtype, name

    # Values: the checkpoint's, rounded to float16 (also the ones stored as F32).
    state = tiny_models.load_state_dict(tiny_minicpmo45_dir)
    for hf, gg in (("apm.embed_positions.weight", "encoder.positional_embedding"),
                   ("apm.layers.1.self_attn.k_proj.weight", "encoder.blocks.1.attn.key.weight"),
                   ("apm.conv2.bias", "encoder.conv2.bias"),
                   ("audio_projection_layer.linear1.weight", "audio_projector.linear1.weight")):
        want = state[hf].float().numpy().astype(np.float16).astype(np.float32)
        got = np.asarray(tensors[gg].data, dtype=np.float32).reshape(want.shape)
        assert np.array_equal(got, want), gg
    assert omni_audio_gguf.omni_tensor_name("apm.layers.3.self_attn_layer_norm.bias") == "encoder.blocks.3.attn_ln.bias"


def test_mel_filters_equal_librosa():
    librosa = pytest.importorskip("librosa")
    want = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
    assert np.array_equal(omni_audio_gguf.slaney_mel_filters(), want)
