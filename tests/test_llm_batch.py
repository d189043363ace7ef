"""Cross-session batching (``Session(batch=True)``, ``DuplexSession(batch=True)``): the LLM
steps of several sessions waiting at once run as one graph over their own caches.

The sessions' logits are compared with transformers on the same tiny random weights (not with
the runtime's unbatched path alone), while the batcher's statistics show that the graphs did
carry several sessions each: a gather setting (``set_batch_gather``) holds each batch until
all sessions of the test have their request in.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import minicpm_cpp
import tiny_models

PROMPTS = [
    "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n天空为什么是蓝色的 1234<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCount: 1 2 3 4 5 6 7 8 9<|im_end|>\n<|im_start|>assistant\n",
]
REL = {"f32": 1e-4, "f16": 3e-3}


@pytest.fixture(scope="module")
def hf(tiny_qwen3_dir):
    from transformers import Qwen2TokenizerFast

    tok = Qwen2TokenizerFast.from_pretrained(str(tiny_qwen3_dir))
    ids = [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]
    n = min(len(i) for i in ids)
    ids = [i[:n] for i in ids]   # equal lengths: the sessions stay in step token by token
    return tiny_models.load_reference_llm(tiny_qwen3_dir), ids


def _ref_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _greedy_ref(model, ids, n):
    out, ids = [], list(ids)
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(t)
            ids.append(t)
    return out


def _rel(ours, ref):
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def _in_threads(fns):
    errors = []

    def wrap(f):
        try:
            f()
        except BaseException as e:   # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(f,)) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("outtype,flash,shared", [("f32", "off", False), ("f16", "on", False), ("f16", "off", False),
                                                  ("f32", "off", True), ("f16", "on", True)])
def test_batched_sessions_match_transformers(hf, tiny_qwen3_dir, converted, outtype, flash, shared):
    """shared: the sessions' caches are ranges of one shared buffer (batch_cache_cells) and their
    parts run as one sequence over it, each row masked to its own session's cells."""
    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, outtype), device="cpu", n_threads=2,
                              batch_cache_cells=4 * 256 if shared else 0)
    k = len(prompts)
    model.set_batch_gather(k, 5000.0)
    kv = "f32" if outtype == "f32" else "f16"
    sessions = [minicpm_cpp.Session(model, n_ctx=256, batch=True, kv_type=kv, flash_attn=flash) for _ in range(k)]
    n = len(prompts[0])
    head = 6   # the first tokens one by one (one-row parts), then the rest in parts of different sizes
    got = [[] for _ in range(k)]

    def run(i):
        s, ids = sessions[i], prompts[i]
        for t in ids[:head]:
            s.prefill(tokens=[t])
            got[i].append(s.logits())
        s.prefill(tokens=ids[head:head + 1 + i])            # rows 1, 2, 3, 4 in one graph
        got[i].append(s.logits())
        s.prefill(tokens=ids[head + 1 + i:])                # the rest: different sizes again
        got[i].append(s.logits())

    _in_threads([lambda i=i: run(i) for i in range(k)])
    stats = model.batch_stats()
    assert stats["batches"] == head + 2 and stats["max_parts"] == k and stats["parts"] == k * (head + 2)
    assert stats["rows"] == k * n
    assert stats["shared_parts"] == (stats["parts"] if shared else 0)
    if shared:   # one graph per shape, whichever sessions: the one-row steps shared one graph
        assert stats["rebuilds"] <= 3
        assert stats["shared_cache_bytes"] > 0
    for i in range(k):
        ref = _ref_logits(ref_model, prompts[i])
        rows = list(range(head)) + [head + i, n - 1]
        for r, lg in zip(rows, got[i]):
            err = _rel(lg, ref[r])
            assert err <= REL[outtype], f"session {i} position {r}: {err:.2e}"

    # Greedy continuations, all four sessions decoding together, are the reference's.
    model.set_batch_gather(k, 5000.0)
    outs = [None] * k

    def gen(i):
        s = sessions[i]
        s.generate(max_tokens=12, temperature=0.0, repeat_penalty=1.0, stop_at_end_of_turn=False)
        outs[i] = s.tokens[-12:]

    before = model.batch_stats()["batches"]
    _in_threads([lambda i=i: gen(i) for i in range(k)])
    assert model.batch_stats()["batches"] - before <= 13   # together, not one session after another
    if outtype == "f32":
        for i in range(k):
            assert outs[i] == _greedy_ref(ref_model, prompts[i], 12), f"session {i}"


def test_unbatched_and_batched_sessions_mix(hf, tiny_qwen3_dir, converted):
    """A batched session next to an unbatched one, and sessions that cannot share a graph
    (flash attention on and off): each is still right; nothing waits forever."""
    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f16"), device="cpu", n_threads=2)
    model.set_batch_gather(2, 50.0)
    specs = [dict(batch=True, flash_attn="on"), dict(batch=True, flash_attn="off"), dict(batch=False, flash_attn="on")]
    sessions = [minicpm_cpp.Session(model, n_ctx=128, kv_type="f16", **sp) for sp in specs]
    got = [None] * 3

    def run(i):
        sessions[i].prefill(tokens=prompts[i])
        got[i] = sessions[i].logits()

    _in_threads([lambda i=i: run(i) for i in range(3)])
    for i in range(3):
        assert _rel(got[i], _ref_logits(ref_model, prompts[i])[-1]) <= REL["f16"]
    st = model.batch_stats()
    assert st["parts"] == 2 and st["max_parts"] == 1   # the two batched ones: one graph each


def test_batched_errors_stay_in_their_session(hf, tiny_qwen3_dir, converted):
    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", n_threads=2)
    small = minicpm_cpp.Session(model, n_ctx=8, batch=True)
    ok = minicpm_cpp.Session(model, n_ctx=128, batch=True)
    with pytest.raises(minicpm_cpp.ContextFullError):
        small.prefill(tokens=prompts[0])
    assert small.n_past == 0
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        ok.prefill(tokens=[10**9])
    ok.prefill(tokens=prompts[1])
    assert _rel(ok.logits(), _ref_logits(ref_model, prompts[1])[-1]) <= REL["f32"]
    small.prefill(tokens=prompts[2][:8])
    assert _rel(small.logits(), _ref_logits(ref_model, prompts[2][:8])[-1]) <= REL["f32"]
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        model.set_batch_gather(0, 1.0)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        model.set_batch_gather(2, -1.0)
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        minicpm_cpp.Session(model, batch="yes")


@pytest.mark.parametrize("shared", [False, True])
def test_batched_duplex_sessions_equal_each_alone(tiny_speech_dir, converted, shared):
    """Three duplex sessions through the batcher give what each gives alone, unbatched (shared:
    with their caches in one shared buffer, the units and decode steps as one sequence)."""
    from tiny_voice import tone

    model = minicpm_cpp.Model(str(converted(tiny_speech_dir, "f32")), device="cpu", n_threads=2,
                              batch_cache_cells=3 * 1024 if shared else 0)
    voice = model.voice(tone(2.0))
    speak, listen = model.tokenize("<|speak|>")[0], model.tokenize("<|listen|>")[0]
    rng = np.random.default_rng(5)
    audio = [[(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(4)] for _ in range(3)]
    bias = [{listen: 1e4}, {speak: 1e4}, None, None]

    def run(i, batch):
        d = minicpm_cpp.DuplexSession(model, voice=voice, seed=i, greedy=True, generate_audio=False, max_speak_tokens=4,
                                      n_ctx=1024, capture=True, batch=batch)
        out = []
        for k in range(4):
            r = d.step(audio[i][k], logit_bias=bias[k])
            out.append((r.listening, r.text, list(r.tokens), list(r.unit_tokens), np.asarray(r.tts_hidden)))
        return out

    alone = [run(i, False) for i in range(3)]
    assert model.batch_stats()["parts"] == 0
    model.set_batch_gather(3, 200.0)
    together = [None] * 3

    def work(i):
        together[i] = run(i, True)

    _in_threads([lambda i=i: work(i) for i in range(3)])
    st = model.batch_stats()
    assert st["max_parts"] == 3
    assert (st["shared_parts"] > 0) == shared
    for i in range(3):
        for k in range(4):
            a, b = alone[i][k], together[i][k]
            assert a[:4] == b[:4], f"session {i} unit {k}"
            if a[4].size:
                assert np.abs(a[4] - b[4]).max() <= 1e-4 * np.abs(a[4]).max()
    assert any(not u[0] for u in alone[0])   # someone spoke: the decode loop's one-row steps ran batched


def test_new_sessions_never_reuse_a_freed_sessions_graph(hf, tiny_qwen3_dir, converted):
    """Sessions made and dropped in turn (a new one often lands at a freed one's address) with the
    same shapes: each batch graph must be over the live sessions' caches."""
    import gc

    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", n_threads=2)
    model.set_batch_gather(2, 5000.0)
    for round_ in range(3):
        pair = [minicpm_cpp.Session(model, n_ctx=128, batch=True) for _ in range(2)]
        got = [None, None]

        def run(i):
            pair[i].prefill(tokens=prompts[(round_ + i) % len(prompts)])
            got[i] = pair[i].logits()

        _in_threads([lambda i=i: run(i) for i in range(2)])
        for i in range(2):
            want = _ref_logits(ref_model, prompts[(round_ + i) % len(prompts)])[-1]
            assert _rel(got[i], want) <= REL["f32"], (round_, i)
        del pair
        gc.collect()
    assert model.batch_stats()["rebuilds"] == 3


def test_shared_cache_ranges_long_parts_and_overflow(hf, tiny_qwen3_dir, converted):
    """The shared cache with room for two sessions of three: the third keeps its own cache and
    still batches; a prefill longer than a shared part runs over its own range; a session made
    after one is dropped takes the freed range (other sessions' stale cells stay masked)."""
    import gc

    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", n_threads=2, batch_cache_cells=2 * 128)
    model.set_batch_gather(3, 5000.0)
    long_ids = (prompts[0] * 4)[:40]   # past the 32 rows of a shared part
    sessions = [minicpm_cpp.Session(model, n_ctx=128, batch=True) for _ in range(3)]
    got = [None] * 3

    def run(i):
        s = sessions[i]
        ids = long_ids if i == 0 else prompts[i]
        s.prefill(tokens=ids)
        for t in ids[:3]:   # one-row steps: the shared sequence (the third session: its own)
            s.prefill(tokens=[t])
        got[i] = (ids + ids[:3], s.logits())

    _in_threads([lambda i=i: run(i) for i in range(3)])
    for i in range(3):
        ids, lg = got[i]
        assert _rel(lg, _ref_logits(ref_model, ids)[-1]) <= REL["f32"], i
    st = model.batch_stats()
    assert st["shared_parts"] == 3 + 4   # the leased two's steps but the 40-row prefill
    assert st["max_parts"] == 3

    # Drop the first: a new session takes its range, whose cells hold the old keys.
    del sessions[0]
    gc.collect()
    fresh = minicpm_cpp.Session(model, n_ctx=128, batch=True)
    sessions.insert(0, fresh)
    model.set_batch_gather(2, 5000.0)
    out = [None, None]

    def again(i):
        s = sessions[i]
        ids = prompts[3] if i == 0 else prompts[1]
        if i == 0:
            s.prefill(tokens=ids)
        s.prefill(tokens=[ids[0]])
        out[i] = s.logits()

    _in_threads([lambda i=i: again(i) for i in range(2)])
    assert _rel(out[0], _ref_logits(ref_model, prompts[3] + [prompts[3][0]])[-1]) <= REL["f32"]
    ids1 = prompts[1] + prompts[1][:3] + [prompts[1][0]]
    assert _rel(out[1], _ref_logits(ref_model, ids1)[-1]) <= REL["f32"]
    for bad in (-1, 2**31, 1.5):
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="batch_cache_cells"):
            minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", batch_cache_cells=bad)


WINDOWS = {"basic": dict(window="basic", window_max_tokens=140, window_target_tokens=100),
           "context": dict(window="context", context_max_units=4, max_previous_tokens=8)}


@pytest.mark.parametrize("mode", sorted(WINDOWS))
def test_shared_cache_duplex_windows_equal_each_alone(tiny_speech_dir, converted, mode):
    """Duplex sessions in the shared cache with the context window on (evictions, the re-rotated
    keys of the kept suffix, done by each session on its own range) give what each gives alone."""
    from tiny_voice import tone

    model = minicpm_cpp.Model(str(converted(tiny_speech_dir, "f32")), device="cpu", n_threads=2,
                              batch_cache_cells=2 * 512)
    voice = model.voice(tone(2.0))
    speak, listen = model.tokenize("<|speak|>")[0], model.tokenize("<|listen|>")[0]
    rng = np.random.default_rng(9)
    n_units = 14
    audio = [[(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(n_units)] for _ in range(2)]
    bias = [{speak: 1e4} if k % 4 == 1 else {listen: 1e4} for k in range(n_units)]

    def run(i, batch):
        d = minicpm_cpp.DuplexSession(model, voice=voice, seed=i, greedy=True, generate_audio=False, max_speak_tokens=3,
                                      n_ctx=512, capture=True, batch=batch, **WINDOWS[mode])
        out = []
        for k in range(n_units):
            r = d.step(audio[i][k], logit_bias=bias[k])
            out.append((r.listening, r.text, list(r.tokens), list(r.unit_tokens), np.asarray(r.tts_hidden), d.n_past))
        return out

    alone = [run(i, False) for i in range(2)]
    n_past = [u[5] for u in alone[0]]
    assert n_past[-1] < n_past[0] + 13 * (n_units - 1), n_past   # the window evicted units (13+ tokens each)
    model.set_batch_gather(2, 200.0)
    together = [None, None]

    def work(i):
        together[i] = run(i, True)

    _in_threads([lambda i=i: work(i) for i in range(2)])
    st = model.batch_stats()
    assert st["shared_parts"] > 0 and st["max_parts"] == 2
    for i in range(2):
        for k in range(n_units):
            a, b = alone[i][k], together[i][k]
            assert a[:4] == b[:4] and a[5] == b[5], f"session {i} unit {k}"
            if a[4].size:
                assert np.abs(a[4] - b[4]).max() <= 1e-4 * np.abs(a[4]).max()


def test_shared_sequence_rows_are_capped(hf, tiny_qwen3_dir, converted):
    """Without flash attention the shared sequence takes at most 64 rows (each row scores every
    leased cell): of three 30-row parts two join it, the third attends its own range; all right."""
    ref_model, prompts = hf
    model = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", n_threads=2, batch_cache_cells=3 * 128)
    model.set_batch_gather(3, 5000.0)
    sessions = [minicpm_cpp.Session(model, n_ctx=128, batch=True, flash_attn="off") for _ in range(3)]
    ids = [(prompts[i] * 4)[:30] for i in range(3)]
    got = [None] * 3

    def run(i):
        sessions[i].prefill(tokens=ids[i])
        got[i] = sessions[i].logits()

    _in_threads([lambda i=i: run(i) for i in range(3)])
    st = model.batch_stats()
    assert st["batches"] == 1 and st["max_parts"] == 3 and st["shared_parts"] == 2
    for i in range(3):
        assert _rel(got[i], _ref_logits(ref_model, ids[i])[-1]) <= REL["f32"], i
