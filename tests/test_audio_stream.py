"""Streaming audio input (Session.audio_stream) against the official simplex streaming layout.

The reference here follows MiniCPMO.streaming_prefill / streaming_generate (modeling_minicpmo.py,
o4.5) step by step for a caller that sends one piece per call, as our session cuts them: 16560
samples (1035 ms) first, then 16000, the ragged rest with ``is_last_chunk``:

* each piece goes through StreamingMelProcessorExact (``ref_audio_mel.StreamingMelRef``; a first
  piece shorter than 1035 ms is left-padded with zeros) and get_audio_embedding_streaming
  (``ref_minicpmo_audio.AudioStreamRef``: the encoder's K/V cache, no CNN context trimming in
  simplex); the cache is dropped after the first user piece of a session (``is_first``) and at
  every streaming_generate;
* the prompt of the first piece of a turn is ``<|im_start|>user\\n`` (a later turn:
  ``<|tts_eos|><|im_end|>\\n<|im_start|>user\\n``, since streaming_generate never marks its
  generation completed), each piece one ``<|audio_start|><unk>*N<|audio_end|>`` group, N from the
  piece's sample count (get_audio_placeholder) while the rows come from the emitted mel frames;
  get_omni_embedding raises "Shape mismatch" when they differ, which a ragged last piece can do
  (3.4 s: the last 5840 samples say 3 tokens, their 40 mel frames give 4);
* streaming_generate feeds ``<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|tts_bos|>``
  and decodes greedily (``do_sample=False``) with the forbidden tokens of ChunkPrefillChunkGenerate
  (23 punctuation strings and the tokenizer's ``bad_token_ids``) set to -inf, until
  ``<|tts_eos|>`` / ``<|im_end|>``; the terminator and, at the token limit, the last token are
  not fed back.

The LLM is transformers' Qwen3 on the whole context's rows (the official prefills them in pieces
through its KV cache: the same causal computation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import minicpm_cpp
import ref_audio_mel
import ref_minicpmo_audio as ref
from test_audio_e2e import RTOL, Omni, pcm, rel

FIRST, CHUNK = 16560, 16000
BOS = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>"
# ChunkPrefillChunkGenerate.forbidden_tokens (utils.py), looked up with convert_tokens_to_ids.
FORBIDDEN = [":", "：", "；", "#", "“", "”", "‘", "’", "@", "*", "【", "】", "「", "」", "(", ")", "（", "）", "[", "]",
             "&", "/", "$"]
TERMINATORS = ["<|tts_eos|>", "<|im_end|>", "</s>"]


class ShapeMismatch(ValueError):
    pass


class StreamingReference:
    """One streaming session of the official model (see the module documentation)."""

    def __init__(self, o: Omni, placeholders: str = "official"):
        self.o = o
        self.tok = o.ref.tok
        self.llm = o.ref.llm
        self.placeholders = placeholders  # "official": N from the samples; "rows": from the emitted mel
        self.enc = ref.AudioStreamRef(o.audio)
        self.ids: list = []
        self.rows: list = []
        self.session_started = False
        self.generated = False
        self.mismatches: list = []
        self.groups: list = []
        cfg = json.loads((o.dir / "tokenizer_config.json").read_text())
        conv = self.tok.convert_tokens_to_ids
        self.forbidden = sorted({conv(t) for t in FORBIDDEN} | set(cfg.get("bad_token_ids", [])))
        self.stop = {conv(t) for t in TERMINATORS if conv(t) is not None}

    def _feed(self, text: str, audio: np.ndarray = None) -> None:
        listen = self.tok.convert_tokens_to_ids(ref.LISTEN)
        ids = [t for t in self.tok(text, add_special_tokens=False).input_ids if t != listen]
        rows = self.llm.get_input_embeddings()(torch.tensor([ids]))[0].detach().clone()
        if audio is not None:
            start = ids.index(self.tok.convert_tokens_to_ids(ref.AUDIO_START)) + 1
            rows[start : start + audio.shape[0]] = torch.from_numpy(audio)
            self.groups.append((len(self.ids) + start, len(self.ids) + start + audio.shape[0]))
        self.ids += ids
        self.rows.append(rows)

    def begin_turn(self) -> None:
        self.mel = ref_audio_mel.StreamingMelRef()
        self.chunk_idx = 0
        self.new_user_msg = True

    def prefill(self, piece: np.ndarray, is_last: bool = False) -> None:
        prompt = ""
        if self.new_user_msg:
            prompt = ("<|tts_eos|><|im_end|>\n" if self.generated else "") + "<|im_start|>user\n"
            self.new_user_msg = False
        if self.chunk_idx == 0 and len(piece) < FIRST:
            piece = np.concatenate([np.zeros(FIRST - len(piece), np.float32), piece])
        self.chunk_idx += 1
        n_ph = ref.audio_tokens(len(piece), self.o.audio.pool_step)
        mel = self.mel.process(piece, is_last_chunk=is_last)
        if ref.encoder_frames(mel.shape[1]) < self.o.audio.pool_step:
            raise ValueError("AvgPool1d: fewer encoder frames than the pooling step")  # what torch raises there
        emb = self.enc.process(mel)
        if not self.session_started:  # is_first: the cache is dropped after the session's first prefill
            self.enc.reset()
            self.session_started = True
        if emb.shape[0] != n_ph:
            self.mismatches.append((n_ph, emb.shape[0]))
            if self.placeholders == "official":
                raise ShapeMismatch(f"Shape mismatch: {emb.shape[0]} embeddings for {n_ph} audio positions")
        self._feed(prompt + ref.AUDIO_START + ref.UNK * emb.shape[0] + ref.AUDIO_END, emb)

    def push_stream(self, signal: np.ndarray) -> None:
        """One user turn: the signal cut as the session cuts it."""
        self.begin_turn()
        at, need = 0, FIRST
        while len(signal) - at >= need:
            self.prefill(signal[at : at + need], is_last=False)
            at += need
            need = CHUNK
        if at < len(signal) or at == 0:
            self.prefill(signal[at:], is_last=True)

    @torch.no_grad()
    def generate(self, n: int, suppress: bool = True):
        """streaming_generate (greedy): returns (context logits [L, V], tokens, step logits)."""
        self._feed(BOS)
        self.enc.reset()
        self.generated = True
        rows = torch.cat(self.rows)[None]
        res = self.llm(inputs_embeds=rows, use_cache=True)
        context_logits = res.logits[0].numpy()
        past, last = res.past_key_values, res.logits[0, -1]
        tokens, steps = [], []
        for _ in range(n):
            steps.append(last.numpy())
            lg = last.clone()
            if suppress:
                lg[self.forbidden] = float("-inf")
            t = int(lg.argmax())
            tokens.append(t)
            if t in self.stop:
                break
            res = self.llm(torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past, last = res.past_key_values, res.logits[0, -1]
        fed = tokens[:-1]  # the terminator, or the last token at the limit, is not fed
        if fed:
            self.ids += fed
            self.rows.append(self.llm.get_input_embeddings()(torch.tensor([fed]))[0])
        return context_logits, tokens, np.stack(steps)


@pytest.fixture(scope="module")
def o45(tiny_minicpmo45_dir, converted) -> Omni:
    return Omni(tiny_minicpmo45_dir, converted(tiny_minicpmo45_dir, "f32"))


def _push_ragged(stream, signal, piece):
    n = 0
    for at in range(0, len(signal), piece):
        n += stream.push(signal[at : at + piece])
    return n


def _check_turn(s, want: StreamingReference, ctx_logits, tokens, steps, answer, what):
    n = len(ctx_logits)
    assert s.tokens[:n] == want.ids[:n], what
    lc = rel(s.position_logits(0, n), ctx_logits)
    gen = s.tokens[n:]
    assert gen == tokens, what
    n_eval = len(gen) - 1
    ls = rel(s.position_logits(n, n + n_eval), steps[1 : 1 + n_eval]) if n_eval > 0 else 0.0
    assert lc <= RTOL and ls <= RTOL, (what, lc, ls)
    text = want.tok.decode([t for t in tokens if t not in want.stop], skip_special_tokens=True)
    assert answer == text, what
    return lc, ls


@pytest.mark.parametrize("seconds, piece", [(3.32, 0.3), (3.4, 0.3), (0.6, 0.25), (2.035, 0.7)])
def test_stream_matches_streaming_prefill(seconds, piece, o45):
    """Pushed in ragged pieces: the same context tokens, the same logits at every position, the
    same greedy answer as the official streaming layout."""
    x = pcm(seconds, 31, 260.0)
    want = StreamingReference(o45, placeholders="rows")
    want.push_stream(x)
    official = StreamingReference(o45)
    try:
        official.push_stream(x)
        mismatch = None
    except ShapeMismatch as e:
        mismatch = str(e)
    # The official code raises for some ragged last pieces (placeholders from the sample count,
    # rows from the emitted mel frames); we size each group by its rows.
    assert (mismatch is not None) == bool(want.mismatches), mismatch
    if seconds == 3.4:
        assert want.mismatches == [(3, 4)]
    s = minicpm_cpp.Session(o45.model, n_ctx=1024)
    s.set_capture(hidden=False, logits=True)
    stream = s.audio_stream()
    n = _push_ragged(stream, x, int(piece * 16000))
    assert stream.active
    ctx_logits, tokens, steps = want.generate(16)
    answer = stream.respond(max_tokens=16, temperature=0, repeat_penalty=1.0)
    assert not stream.active
    assert stream.n_tokens == sum(e - s_ for s_, e in want.groups) + 2 * len(want.groups) and n <= stream.n_tokens
    lc, ls = _check_turn(s, want, ctx_logits, tokens, steps, answer, f"{seconds} s")
    print(f"stream {seconds} s in {piece} s pieces: groups {[e - s_ for s_, e in want.groups]}, "
          f"mismatch {want.mismatches}, logits {lc:.1e} / {ls:.1e}, {len(tokens)} tokens")


def test_stream_second_turn(o45):
    """A second turn continues the session: the reference's turn opening after a streamed answer,
    a fresh mel processor and encoder cache, and the first piece padded again."""
    a, b = pcm(2.2, 41, 200.0), pcm(1.5, 42, 420.0)
    want = StreamingReference(o45, placeholders="rows")
    s = minicpm_cpp.Session(o45.model, n_ctx=1024)
    s.set_capture(hidden=False, logits=True)
    for k, x in enumerate((a, b)):
        want.push_stream(x)
        stream = s.audio_stream()
        _push_ragged(stream, x, 5000)
        ctx_logits, tokens, steps = want.generate(16)
        answer = stream.respond(max_tokens=16, temperature=0, repeat_penalty=1.0)
        lc, ls = _check_turn(s, want, ctx_logits, tokens, steps, answer, f"turn {k}")
        print(f"stream turn {k}: {len(want.ids)} positions, logits {lc:.1e} / {ls:.1e}, {len(tokens)} tokens")
    assert want.ids[: 3] == o45.model.tokenize("<|im_start|>user\n")


def test_stream_past_30_seconds(o45):
    """33 pieces (32.5 s): the encoder cache is dropped when cache + chunk reaches 1500 frames
    (the 31st piece: the first piece's cache is not kept), the mel buffer slides at 30 s."""
    x = pcm(32.5, 43, 240.0)
    want = StreamingReference(o45, placeholders="rows")
    want.push_stream(x)
    assert want.enc.resets == 1 and len(want.groups) == 33
    assert want.mismatches == [(4, 5)]  # the last piece (7440 samples): the official code raises
    s = minicpm_cpp.Session(o45.model, n_ctx=1024)
    s.set_capture(hidden=False, logits=True)
    stream = s.audio_stream()
    _push_ragged(stream, x, 48000)
    ctx_logits, tokens, steps = want.generate(4)
    answer = stream.respond(max_tokens=4, temperature=0, repeat_penalty=1.0)
    lc, ls = _check_turn(s, want, ctx_logits, tokens, steps, answer, "32.5 s")
    print(f"stream 32.5 s: {len(want.ids)} positions, logits {lc:.1e} / {ls:.1e}")


@pytest.fixture(scope="module")
def forced(o45, tmp_path_factory, converted):
    """The tiny o4.5 checkpoint with the lm_head rows of <|endoftext|> and <|tts_eos|> replaced so
    that greedy decoding ends where the tests below need it. Hidden states do not depend on
    lm_head: from the original model, h_s1 (the last position of the first stream of
    test_stream_terminators) and h_s2 (<|endoftext|> fed after it), h_c1..h_c3 (the last position
    of CHAT_MESSAGES and its first two greedy tokens fed); the rows are solved so that
    <|endoftext|> scores K at h_s1 and <|tts_eos|> K at h_s2 and h_c3, 0 at the others.
    Streaming then answers <|endoftext|> <|tts_eos|>, chat() t1 t2 <|tts_eos|>."""
    import shutil

    from safetensors.torch import load_file, save_file

    llm, tok = o45.ref.llm, o45.ref.tok
    eot, tts_eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids(ref.TTS_EOS)

    def hidden(rows, feed):
        with torch.no_grad():
            out = llm(inputs_embeds=rows[None], use_cache=True, output_hidden_states=True)
            hs = [out.hidden_states[-1][0, -1]]
            for t in feed:
                out = llm(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True,
                          output_hidden_states=True)
                hs.append(out.hidden_states[-1][0, -1])
        return hs

    want = StreamingReference(o45, placeholders="rows")
    want.push_stream(FORCED_SIGNAL())
    want._feed(BOS)
    hs = hidden(torch.cat(want.rows), [eot])
    r = o45.chat(CHAT_MESSAGES(), n_gen=2)
    assert not set(r["tokens"]) & {eot, tts_eos}
    hs += hidden(torch.from_numpy(r["inputs_embeds"]), r["tokens"])
    h = torch.stack(hs, dim=1).double()                              # [d, 5]
    k = 60.0
    target = torch.tensor([[k, 0, 0, 0, 0], [0, k, 0, 0, k]], dtype=torch.float64).T   # [5, 2]
    rows = (h @ torch.linalg.solve(h.T @ h, target)).T.float()       # rows @ h = target.T
    d = tmp_path_factory.mktemp("tiny-minicpmo45-forced")
    for f in o45.dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, d / f.name)
    state = load_file(str(o45.dir / "model.safetensors"))
    w = state["llm.lm_head.weight"].float()
    w[eot], w[tts_eos] = rows[0], rows[1]
    state["llm.lm_head.weight"] = w.to(state["llm.lm_head.weight"].dtype)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    return Omni(d, converted(d, "f32"))


def FORCED_SIGNAL():
    return pcm(1.8, 44, 310.0)


def CHAT_MESSAGES():
    return [{"role": "user", "content": [pcm(1.4, 46, 270.0), "Say something."]}]


def test_chat_answer_cut_at_tts_eos(forced):
    """chat() with audio (o4.5, the speech template): the answer ends at <|tts_eos|>, as the
    reference's text is cut there (test_audio_e2e's chat tests never meet one)."""
    from test_audio_e2e import _check_chat

    s = forced.session()
    s.set_capture(hidden=False, logits=True)
    answer, r, _ = _check_chat(forced, s, CHAT_MESSAGES(), "forced tts_eos")
    tts_eos = forced.ref.tok.convert_tokens_to_ids(ref.TTS_EOS)
    assert r["tokens"][2] == tts_eos and len(r["tokens"]) > 3  # the reference goes on; its text is cut
    assert s.tokens[-3:] == r["tokens"][:3] and s.last_stop_reason == "end_of_turn"
    assert answer == forced.ref.tok.decode(r["tokens"][:2]) and answer


def test_stream_terminators(forced):
    """<|endoftext|> is no terminator of streaming_generate (sampled and fed like any token); the
    answer ends at <|tts_eos|>, which is not fed; the next turn opens with
    <|tts_eos|><|im_end|>\\n<|im_start|>user\\n all the same."""
    o = forced
    tok = o.ref.tok
    eot, tts_eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids(ref.TTS_EOS)
    want = StreamingReference(o, placeholders="rows")
    s = minicpm_cpp.Session(o.model, n_ctx=1024)
    s.set_capture(hidden=False, logits=True)
    for k, x in enumerate((FORCED_SIGNAL(), pcm(1.1, 45))):
        want.push_stream(x)
        stream = s.audio_stream()
        _push_ragged(stream, x, 8000)
        ctx_logits, tokens, steps = want.generate(8)
        answer = stream.respond(max_tokens=8, temperature=0, repeat_penalty=1.0)
        if k == 0:
            assert tokens == [eot, tts_eos] and s.last_stop_reason == "end_of_turn"
            assert answer == ""
        _check_turn(s, want, ctx_logits, tokens, steps, answer, f"turn {k}")
    opening = tok("<|tts_eos|><|im_end|>\n<|im_start|>user\n", add_special_tokens=False).input_ids
    n0 = want.ids.index(tok.convert_tokens_to_ids(ref.TTS_BOS)) + 1
    assert want.ids[n0 : n0 + 1 + len(opening)] == [eot] + opening


def test_bad_token_ids_read_by_the_converter(o45, tmp_path):
    """The converter takes tokenizer_config.json's bad_token_ids (MiniCPMOTokenizerFast keeps
    them; transformers' Qwen2TokenizerFast drops them) into minicpm.bad_token_ids; the streamed
    answers above would sample them otherwise."""
    from minicpm_cpp.convert import ConvertError
    from minicpm_cpp.convert import hf_to_gguf

    want = json.loads((o45.dir / "tokenizer_config.json").read_text())["bad_token_ids"]
    assert hf_to_gguf._bad_token_ids(o45.dir, 151748) == sorted(set(want)) and len(want) > 6000
    assert hf_to_gguf._bad_token_ids(tmp_path, 151748) == []
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bad_token_ids": [5, 200000]}))
    with pytest.raises(ConvertError, match="outside the vocabulary"):
        hf_to_gguf._bad_token_ids(tmp_path, 151748)
