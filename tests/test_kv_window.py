"""The KV sliding window of MiniCPM-o 4.5 full duplex, against a port of the official code
(tests/ref_duplex_window.py, from MiniCPMO45/utils.py) on tiny random checkpoints:

* the Session primitives: ``remove(first, last, realign=True)`` closes the gap by re-rotating the
  cached keys after it (``realign_rotary_suffix``), ``replace(first, last, tokens)`` evaluates new
  tokens in the middle and re-rotates what follows (``_rebuild_cache_with_previous``); the logits
  of the tokens fed afterwards are compared with transformers on the edited cache;
* the window bookkeeping (``DuplexWindow``, the C++ class the duplex session runs): a scripted
  duplex session of text units in the basic and the context mode, unit by unit, against the
  reference's ``StreamDecoder`` window (state, context tokens and the logits of every unit).
"""

from __future__ import annotations

import numpy as np
import pytest

import minicpm_cpp
import ref_duplex_window as ref
import tiny_models

torch = pytest.importorskip("torch")

PROMPT = "<|im_start|>user\nWhy is the sky blue? 天空为什么是蓝色的 1234<|im_end|>\n<|im_start|>assistant\n"
MORE = "The sky looks blue because air scatters short wavelengths more strongly."
RTOL = 1e-4   # F32 weights and an F32 cache: the bound of the logit parity tests
LAYOUTS = ["tiny_qwen3_dir", "tiny_qwen2_dir"]


def _rel(ours, want):
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def setup(request, converted):
    cache = {}

    def get(layout, outtype="f32"):
        key = (layout, outtype)
        if key not in cache:
            from transformers import Qwen2TokenizerFast

            hf_dir = request.getfixturevalue(layout)
            tok = Qwen2TokenizerFast.from_pretrained(str(hf_dir))
            cache[key] = (
                tiny_models.load_reference_llm(hf_dir),
                minicpm_cpp.Model(converted(hf_dir, outtype), device="cpu"),
                tok,
            )
        return cache[key]

    return get


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


# ---- primitives ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cut", [(3, 11), (0, 4), (10, 25)], ids=["middle", "head", "to-the-end"])
def test_remove_realign_matches_reference(layout, cut, setup):
    hf, model, tok = setup(layout)
    ids, more = _ids(tok, PROMPT), _ids(tok, MORE)
    a, b = cut
    b = min(b, len(ids))
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=6, kv_type="f32")
    s.prefill(tokens=ids)
    s.remove(a, b, realign=True)
    kept = ids[:a] + ids[b:]
    assert s.tokens == kept and s.positions == list(range(len(kept)))
    s.set_capture(hidden=False, logits=True)
    s.prefill(tokens=more)
    assert s.positions == list(range(len(kept) + len(more)))

    r = ref.KvModel(hf)
    r.feed(ids)
    r.drop(a, b)
    want = r.feed(more)
    got = s.position_logits(len(kept))
    assert _rel(got, want) < RTOL
    # Without the re-rotation the logits differ far beyond the bound (the test sees it), unless
    # nothing followed the cut.
    if b < len(ids):
        plain = ref.KvModel(hf)
        plain.feed(ids)
        plain.kv = [(torch.cat([k[:, :, :a], k[:, :, b:]], 2), torch.cat([v[:, :, :a], v[:, :, b:]], 2)) for k, v in plain.kv]
        assert _rel(got, plain.feed(more)) > 10 * RTOL


def test_remove_realign_f16_cache(setup):
    hf, model, tok = setup("tiny_qwen3_dir")
    ids, more = _ids(tok, PROMPT), _ids(tok, MORE)
    s = minicpm_cpp.Session(model, n_ctx=256, kv_type="f16", flash_attn="off")
    s.prefill(tokens=ids)
    s.remove(2, 12, realign=True)
    s.set_capture(hidden=False, logits=True)
    s.prefill(tokens=more)
    r = ref.KvModel(hf)
    r.feed(ids)
    r.drop(2, 12)
    want = r.feed(more)
    got = s.position_logits(len(ids) - 10)
    plain = ref.KvModel(hf)
    plain.feed(ids)
    plain.kv = [(torch.cat([k[:, :, :2], k[:, :, 12:]], 2), torch.cat([v[:, :, :2], v[:, :, 12:]], 2)) for k, v in plain.kv]
    err, err_plain = _rel(got, want), _rel(got, plain.feed(more))
    assert err < 5e-3 and err_plain > 10 * err


def _gpu():
    return any(d["type"] == "gpu" for d in minicpm_cpp.list_devices())


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("kv,flash,tol", [("f32", "off", 1e-4), ("f16", "off", 5e-3), ("f16", "on", 5e-3)])
def test_realign_then_replace_per_backend(device, kv, flash, tol, setup, converted, tiny_qwen3_dir):
    """A realigned cut, then a replacement, against the reference, with the cache on each
    backend (the K-shift graph in device memory on a GPU) and each cache type."""
    if device == "gpu" and not _gpu():
        pytest.skip("no GPU device in this ggml build")
    hf, _, tok = setup("tiny_qwen3_dir")
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device=device)
    ids, more = _ids(tok, PROMPT), _ids(tok, MORE)
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=5, kv_type=kv, flash_attn=flash)
    s.prefill(tokens=ids)
    s.remove(2, 9, realign=True)
    s.replace(3, 6, more[:4])
    s.set_capture(hidden=False, logits=True)
    s.prefill(tokens=more)
    r = ref.KvModel(hf)
    r.feed(ids)
    r.drop(2, 9)
    head, _ = r.forward(r.slice(0, 3), more[:4], 3)
    n = r.length()
    tail = [(ref.realign_keys(k, range(6, n), range(7, n + 1), r.theta), v) for k, v in r.slice(6, None)]
    r.kv = [(torch.cat([hk, tk], 2), torch.cat([hv, tv], 2)) for (hk, hv), (tk, tv) in zip(head, tail)]
    r.tokens = r.tokens[:3] + more[:4] + r.tokens[6:]
    assert s.tokens == r.tokens + more and s.positions == list(range(len(r.tokens) + len(more)))
    got = s.position_logits(len(r.tokens))
    assert _rel(got, r.feed(more)) < tol


def test_remove_realign_twice_and_pending(setup):
    """Two realigned cuts compose (the second moves keys already moved), and pending tokens
    are evaluated first."""
    hf, model, tok = setup("tiny_qwen3_dir")
    ids, more = _ids(tok, PROMPT), _ids(tok, MORE)
    s = minicpm_cpp.Session(model, n_ctx=256, kv_type="f32")
    s.prefill(tokens=ids)
    s.generate(max_tokens=3, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    full = list(s.tokens)   # the last sampled token is pending
    s.remove(1, 5, realign=True)
    s.remove(6, 9, realign=True)
    s.set_capture(hidden=False, logits=True)
    s.prefill(tokens=more)
    r = ref.KvModel(hf)
    r.feed(full)
    r.drop(1, 5)
    r.drop(6, 9)
    assert s.tokens == r.tokens + more
    assert _rel(s.position_logits(len(r.tokens)), r.feed(more)) < RTOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("span,new", [((4, 12), 5), ((4, 4), 3), ((4, 12), 0), ((6, 27), 4)],
                         ids=["shorter", "insert", "empty", "to-the-end"])
def test_replace_matches_reference(layout, span, new, setup):
    hf, model, tok = setup(layout)
    ids, more = _ids(tok, PROMPT), _ids(tok, MORE)
    a, b = span
    b = min(b, len(ids))
    fresh = more[:new]
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=4, kv_type="f32")
    s.prefill(tokens=ids)
    s.set_capture(hidden=False, logits=True)
    assert s.replace(a, b, fresh) == len(fresh)
    out = ids[:a] + fresh + ids[b:]
    assert s.tokens == out and s.positions == list(range(len(out)))

    # The reference rebuild: the prefix cache, the new tokens run over it, the tail realigned.
    r = ref.KvModel(hf)
    r.feed(ids)
    head = r.slice(0, a)
    tail = r.slice(b, None)
    fresh_logits = None
    if fresh:
        head, fresh_logits = r.forward(head, fresh, a)
    n_tail = len(ids) - b
    tail = [(ref.realign_keys(k, range(b, len(ids)), range(a + len(fresh), a + len(fresh) + n_tail), r.theta), v)
            for k, v in tail]
    r.kv = [(torch.cat([hk, tk], 2), torch.cat([hv, tv], 2)) for (hk, hv), (tk, tv) in zip(head, tail)]
    r.tokens = list(out)
    if fresh:
        assert _rel(s.position_logits(a, a + len(fresh)), fresh_logits) < RTOL
    tail_follows = b < len(ids)
    if fresh and tail_follows:
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="logits"):
            s.logits()
    want = r.feed(more)
    s.prefill(tokens=more)
    assert _rel(s.position_logits(len(out)), want) < RTOL


def test_replace_and_realign_validate(setup):
    _, model, tok = setup("tiny_qwen3_dir")
    ids = _ids(tok, PROMPT)
    s = minicpm_cpp.Session(model, n_ctx=32, kv_type="f32")
    s.prefill(tokens=ids[:20])
    for bad in [(5, 3), (0, 21)]:
        with pytest.raises(minicpm_cpp.InvalidArgumentError):
            s.replace(*bad, [1])
        with pytest.raises(minicpm_cpp.InvalidArgumentError):
            s.remove(*bad, realign=True)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="out of range"):
        s.replace(2, 4, [10 ** 9])
    with pytest.raises(minicpm_cpp.ContextFullError):
        s.replace(2, 4, [1] * 15)
    assert s.tokens == ids[:20] and s.positions == list(range(20))
    s.remove(3, 3, realign=True)
    assert s.n_past == 20
    s.remove(0, 20, realign=True)
    assert s.n_past == 0


# ---- the window ---------------------------------------------------------------------------------

class _Script:
    """A duplex session of text units on both sides: prefix, suffix, then units of
    <unit> + input tokens + generated tokens + </unit>, the window applied after each."""

    def __init__(self, hf, model, tok, cfg: ref.WindowConfig, special_default=False):
        self.tok = tok
        self.cfg = cfg
        self.s = minicpm_cpp.Session(model, n_ctx=512, n_batch=8, kv_type="f32")
        self.s.set_capture(hidden=False, logits=True)
        self.w = minicpm_cpp._core.DuplexWindow(self.s._s, mode=cfg.mode, max_tokens=cfg.max_tokens,
                                                target_tokens=cfg.target_tokens, max_units=cfg.max_units,
                                                max_previous_tokens=cfg.max_previous_tokens)
        sp_ids, sp_texts = ref.special_sets(tok)
        if not special_default:
            self.w.set_special_ids(sp_ids)
        self.r = ref.RefWindow(ref.KvModel(hf), tok, cfg, sp_ids, sp_texts)
        self.id = {t: tok.convert_tokens_to_ids(t) for t in ["<unit>", "</unit>", "<|speak|>", "<|listen|>",
                                                              "<|turn_eos|>", "<|tts_bos|>", "<|im_end|>"]}

    def feed(self, ids):
        n = self.s.n_past
        self.s.prefill(tokens=ids)
        got = self.s.position_logits(n)
        want = self.r.m.feed(ids)
        assert _rel(got, want) < RTOL, "logits differ after the window's edits"

    def prepare(self, prefix, suffix):
        self.feed(_ids(self.tok, prefix))
        suffix_ids = _ids(self.tok, suffix)
        if self.cfg.mode == "context":
            self.w.register_system_prompt_with_context(suffix_ids)
            self.r.register_system_prompt_with_context(suffix_ids)
            self.feed(suffix_ids)
        else:
            self.feed(suffix_ids)
            self.w.register_system_prompt()
            self.r.register_system_prompt()

    def unit(self, inputs, generated, listen=False, type="audio"):
        assert self.w.register_unit_start() == self.r.register_unit_start()
        self.feed([self.id["<unit>"]] + inputs)
        if generated:
            self.feed(generated)
        self.feed([self.id["</unit>"]])
        kept = generated[1:]   # streaming_generate collects j >= 1
        text = self.tok.decode(kept, skip_special_tokens=True) if kept else ""
        self.w.register_unit_end(type, kept, listen, text)
        self.r.register_unit_end(type, kept, listen, text)
        a, b = self.w.enforce(), self.r.enforce()
        assert a == b
        self.check()
        return a

    def check(self):
        w, r = self.w, self.r
        assert self.s.tokens == r.m.tokens
        assert self.s.positions == list(range(len(r.m.tokens)))
        assert w.cache_length == r.m.length()
        assert [(u["unit_id"], u["length"], u["is_listen"]) for u in w.units] == \
               [(u.unit_id, u.length, u.is_listen) for u in r.units]
        assert w.system_length == r.system_preserve_length
        assert w.position_offset == r.position_offset
        assert w.previous_tokens == r.previous_ids
        assert w.previous_text == r.previous_text
        assert w.stats == r.stats


def _units(tok, n, seed=0):
    """n scripted units: (input tokens, generated tokens, listen)."""
    rng = np.random.default_rng(seed)
    words = _ids(tok, MORE + " " + PROMPT)
    speak, listen_id = tok.convert_tokens_to_ids("<|speak|>"), tok.convert_tokens_to_ids("<|listen|>")
    turn_eos = tok.convert_tokens_to_ids("<|turn_eos|>")
    out = []
    for i in range(n):
        inputs = [int(x) for x in rng.choice(words, size=int(rng.integers(3, 7)))]
        kind = i % 4
        if kind == 1:
            out.append((inputs, [], True))   # <|listen|> at j = 0: not fed
        else:
            gen = [speak] + [int(x) for x in rng.choice(words, size=int(rng.integers(1, 5)))]
            if kind == 3:
                gen += [turn_eos]
            if kind == 2:
                gen.insert(2, speak)   # a special id inside the kept tokens (filtered from previous)
            out.append((inputs, gen, False))
    return out


def test_window_basic_matches_reference(setup):
    hf, model, tok = setup("tiny_qwen3_dir")
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="basic", max_tokens=70, target_tokens=52))
    sc.prepare("<|im_start|>system\nYou are a helpful assistant.", "<|im_end|>")
    slid = [sc.unit(*u) for u in _units(tok, 14)]
    assert sum(slid) >= 2 and sc.w.stats["total_dropped_units"] >= 3
    assert sc.w.cache_length <= 70


def test_window_context_matches_reference(setup):
    hf, model, tok = setup("tiny_qwen3_dir")
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="context", max_units=3, max_previous_tokens=7))
    sc.prepare("<|im_start|>system\nYou are a helpful assistant.", "<|im_end|>")
    # The first dropped unit is a listen unit: only the gap closes, no marker yet.
    units = _units(tok, 13, seed=1)
    units = [units[1]] + units[:1] + units[2:]
    slid = [sc.unit(*u) for u in units]
    assert sum(slid) == 10
    marker = _ids(tok, ref.MARKER)
    prev = sc.w.previous_tokens
    assert prev[:len(marker)] == marker and len(prev) == len(marker) + 7   # left-truncated
    pre = sc.w.prefix_length
    assert sc.s.tokens[pre:pre + len(prev) + 1] == prev + _ids(tok, "<|im_end|>")


def test_window_context_default_special_ids(setup):
    """The window's own special set (CONTROL tokens) gives the reference's result on units
    whose tokens hold the duplex special tokens."""
    hf, model, tok = setup("tiny_qwen3_dir")
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="context", max_units=2, max_previous_tokens=50),
                 special_default=True)
    sc.prepare("<|im_start|>system\nHi.", "<|im_end|>")
    for u in _units(tok, 6, seed=2):
        sc.unit(*u)
    assert sc.w.stats["total_dropped_units"] == 4


def test_window_context_default_special_ids_are_all_special_ids(setup):
    """The file's minicpm.all_special_ids is the tokenizer's all_special_ids: a generated
    <|box_start|> (a CONTROL token outside that set) stays in the previous text, as the reference
    keeps it, and a generated <|im_end|> (inside it) leaves."""
    hf, model, tok = setup("tiny_qwen3_dir")
    box, im_end = tok.convert_tokens_to_ids("<|box_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert box not in tok.all_special_ids and im_end in tok.all_special_ids
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="context", max_units=2, max_previous_tokens=50),
                 special_default=True)
    sc.prepare("<|im_start|>system\nHi.", "<|im_end|>")
    for inputs, gen, listen in _units(tok, 6, seed=3):
        if not listen:
            gen = gen[:2] + [box, im_end] + gen[2:]
        sc.unit(inputs, gen, listen)
    assert sc.w.stats["total_dropped_units"] == 4
    assert box in sc.w.previous_tokens and im_end not in sc.w.previous_tokens


def test_window_off_and_no_system(setup):
    hf, model, tok = setup("tiny_qwen3_dir")
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="off", max_tokens=10, target_tokens=5))
    for u in _units(tok, 3):
        assert not sc.unit(*u)
    assert len(sc.w.units) == 3 and sc.w.system_length == 0
    # basic without a registered system prompt drops from position 0
    sc = _Script(hf, model, tok, ref.WindowConfig(mode="basic", max_tokens=20, target_tokens=10))
    for u in _units(tok, 4):
        sc.unit(*u)
    assert sc.w.stats["total_dropped_units"] >= 1


def test_window_config_is_validated(setup):
    _, model, _ = setup("tiny_qwen3_dir")
    s = minicpm_cpp.Session(model, n_ctx=64)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="mode"):
        minicpm_cpp._core.DuplexWindow(s._s, mode="sliding")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="target"):
        minicpm_cpp._core.DuplexWindow(s._s, mode="basic", max_tokens=10, target_tokens=20)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        minicpm_cpp._core.DuplexWindow(s._s, mode="context", max_units=-1)
    w = minicpm_cpp._core.DuplexWindow(s._s)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="vocabulary"):
        w.set_special_ids([-3])
    w.register_unit_end("audio", [], False, "")   # without a start: ignored, as the reference
    assert w.units == []
