"""The Python API: Session/Model behaviour, generation controls, chat, sampling semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minicpm_cpp


@pytest.fixture(scope="module")
def model(tiny_qwen3_dir, converted):
    return minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu", n_threads=2)


def test_model_info(model):
    info = model.info
    assert info["arch"] == "qwen3"
    assert (info["n_layer"], info["n_embd"], info["n_head"], info["n_head_kv"], info["head_dim"]) == (2, 128, 4, 2, 32)
    assert info["n_vocab"] == 151748
    assert info["device"] == "CPU"
    assert "enable_thinking" in model.chat_template
    im_end = model.tokenize("<|im_end|>")
    assert im_end == [151645] and 151645 in model.end_of_turn_ids


def test_session_from_path_and_prefill_count(tiny_qwen3_dir, converted):
    s = minicpm_cpp.Session(str(converted(tiny_qwen3_dir, "f32")), n_ctx=64, seed=1)
    n = s.prefill("Hello world")
    assert n == len(s.tokenize("Hello world")) and s.n_past == n
    n2 = s.prefill(tokens=[1, 2, 3])
    assert n2 == 3 and s.n_past == n + 3
    s.reset()
    assert s.n_past == 0


def test_generate_text_stream_and_seed(model):
    def run(seed, stream):
        s = minicpm_cpp.Session(model, n_ctx=128, seed=seed)
        s.prefill("Once upon a time")
        out = s.generate(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, stream=stream)
        return "".join(out) if stream else out, s.tokens

    text1, toks1 = run(7, False)
    text2, toks2 = run(7, True)
    assert isinstance(text1, str) and text1 == text2 and toks1 == toks2
    _, toks3 = run(8, False)
    assert toks3 != toks1   # a different seed gives a different sample (150k-token vocabulary)


def test_generate_text_matches_detokenized_tokens(model):
    s = minicpm_cpp.Session(model, n_ctx=128)
    s.prefill("abc")
    n0 = s.n_past
    text = s.generate(max_tokens=10, temperature=0, stop_at_end_of_turn=False, skip_special=False)
    assert s.last_stop_reason == "max_tokens"
    assert text == model.detokenize(s.tokens[n0:])


def test_stop_string_cuts_output(model):
    s = minicpm_cpp.Session(model, n_ctx=128)
    s.prefill("abc")
    full = s.generate(max_tokens=20, temperature=0, stop_at_end_of_turn=False)
    assert len(full) > 4
    stop = full[3:5]
    s.reset()
    s.prefill("abc")
    cut = s.generate(max_tokens=20, temperature=0, stop=[stop], stop_at_end_of_turn=False)
    assert s.last_stop_reason == "stop_string"
    assert cut == full[: full.index(stop)]
    s.reset()
    s.prefill("abc")
    pieces = list(s.generate(max_tokens=20, temperature=0, stop=stop, stop_at_end_of_turn=False, stream=True))
    assert "".join(pieces) == cut


def test_context_full_during_generation(model):
    s = minicpm_cpp.Session(model, n_ctx=16)
    s.prefill(tokens=list(range(100, 110)))
    s.generate(max_tokens=100, temperature=0, stop_at_end_of_turn=False)
    assert s.last_stop_reason == "context_full"
    assert s.n_past == 16


def test_chat_renders_template_and_reuses_prefix(model):
    s = minicpm_cpp.Session(model, n_ctx=512, seed=0)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    answer = s.chat(msgs, max_tokens=8, temperature=0, enable_thinking=False)
    prompt = model.render_chat(msgs, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert s.tokens[: len(model.tokenize(prompt))] == model.tokenize(prompt)
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    s.reset_timings()
    s.chat(msgs, max_tokens=4, temperature=0, enable_thinking=False)
    full = model.tokenize(model.render_chat(msgs, enable_thinking=False))
    # Only the part after the reused prefix was evaluated.
    assert 0 < s.timings["n_prefill"] < len(full)
    # OpenAI-style text parts are accepted too.
    s.chat([{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}], max_tokens=2)


def test_logits_is_a_copy_of_last_position(model):
    s = minicpm_cpp.Session(model, n_ctx=64)
    s.prefill(tokens=[5, 6, 7])
    a = s.logits()
    a[:] = 0
    assert np.abs(s.logits()).max() > 0


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    s = minicpm_cpp.Session(model, n_ctx=64, seed=3)
    s.prefill(tokens=[5, 6, 7])
    best = int(np.argmax(s.logits()))
    for _ in range(5):
        assert s.sample(temperature=1.5, top_k=1, top_p=1.0, repeat_penalty=1.0) == best
        assert s.sample(temperature=1.0, top_k=0, top_p=1e-6, repeat_penalty=1.0) == best
        assert s.sample(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0, repeat_penalty=1.0) == best


def test_sampling_distribution_matches_softmax(model):
    s = minicpm_cpp.Session(model, n_ctx=64, seed=11)
    s.prefill(tokens=[9707, 11])
    logits = s.logits().astype(np.float64)
    temp, top_k = 0.5, 5
    draws = [s.sample(temperature=temp, top_k=top_k, top_p=1.0, repeat_penalty=1.0) for _ in range(3000)]
    top = np.argsort(-logits)[:top_k]
    p = np.exp((logits[top] - logits[top].max()) / temp)
    p /= p.sum()
    freq = np.array([draws.count(int(t)) for t in top]) / len(draws)
    assert set(draws) <= set(int(t) for t in top)
    assert np.abs(freq - p).max() < 0.04, (freq, p)


def test_repetition_penalty_follows_transformers(model):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    s = minicpm_cpp.Session(model, n_ctx=64)
    prompt = [9707, 11, 1879, 0, 30000]
    s.prefill(tokens=prompt)
    logits = torch.tensor(s.logits()).unsqueeze(0)
    for penalty in (1.3, 20.0, 0.5):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt]), logits.clone())
        expect = int(ref.argmax())
        got = s.sample(temperature=0, repeat_penalty=penalty)
        assert got == expect, penalty


def test_model_shared_by_many_sessions_is_kept_alive(tiny_qwen3_dir, converted):
    m = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu")
    sessions = [minicpm_cpp.Session(m, n_ctx=32) for _ in range(3)]
    del m
    for s in sessions:
        s.prefill(tokens=[1, 2])
        assert s.logits().shape == (151748,)


def test_list_devices_has_cpu():
    devs = minicpm_cpp.list_devices()
    assert any(d["type"] == "cpu" for d in devs)


def test_chat_text_never_becomes_an_image_slot(model):
    """The reference's image marker typed into user text stays text (no image slot, nothing lost)."""
    s = minicpm_cpp.Session(model, n_ctx=256)
    text = "Look: (<image>./</image>) and <image>./</image>!"
    p = s.chat_prompt([{"role": "user", "content": text}])
    assert all(isinstance(seg, list) for seg in p["segments"])
    assert text in p["text"]
    ids = [t for seg in p["segments"] for t in seg]
    assert model.detokenize(ids).count("<image>./</image>") == 2


def test_chat_rejects_bad_text_with_a_clear_error(model):
    s = minicpm_cpp.Session(model, n_ctx=64)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="surrogate"):
        s.chat([{"role": "user", "content": "bad \ud800 text"}], max_tokens=1)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="max_tokens"):
        s.chat([{"role": "user", "content": "hi"}], max_tokens=-5)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="role"):
        s.chat([{"role": "robot", "content": "hi"}], max_tokens=1)
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="unknown sampling parameter"):
        s.chat([{"role": "user", "content": "hi"}], max_tokens=1, temprature=0.5)


def test_generation_defaults_come_from_the_model(model):
    """Sampling values left out are the model's (Model.defaults), not constants of the binding:
    greedy via the model's defaults equals an explicit greedy run."""
    d = model.defaults
    assert set(d) == {"enable_thinking", "sampling", "sampling_think", "max_tokens", "source"}
    s = minicpm_cpp.Session(model, n_ctx=128, seed=3)
    s.prefill("Hello")
    a = s.generate(max_tokens=5, temperature=0)
    s.reset()
    s.prefill("Hello")
    b = s.generate(max_tokens=5, temperature=0, repeat_penalty=d["sampling"]["repeat_penalty"],
                   top_k=d["sampling"]["top_k"], top_p=d["sampling"]["top_p"])
    assert a == b
