"""LLM outputs beyond the last logits, against transformers on tiny random checkpoints:

* last-layer hidden states (after the final norm: transformers' ``hidden_states[-1]``) of every
  prompt position and of generated tokens, as the TTS condition needs them;
* per-position logits of a whole prefill;
* the KV cache with cells apart from positions: removing a range of positions and continuing
  gives the logits transformers computes on the remaining tokens at their original positions
  (``position_ids``), which the duplex sliding window relies on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minicpm_cpp
import tiny_models

PROMPT = "<|im_start|>user\nWhy is the sky blue? 天空为什么是蓝色的 1234<|im_end|>\n<|im_start|>assistant\n"
MORE = "The sky looks blue because air scatters short wavelengths more strongly."
LAYOUTS = ["tiny_qwen3_dir", "tiny_qwen2_dir"]
RTOL = 1e-4   # F32 weights and an F32 cache: the bound of the logit parity tests


def _rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def setup(request, converted):
    cache = {}

    def get(layout):
        if layout not in cache:
            from transformers import Qwen2TokenizerFast

            hf_dir = request.getfixturevalue(layout)
            tok = Qwen2TokenizerFast.from_pretrained(str(hf_dir))
            cache[layout] = (
                tiny_models.load_reference_llm(hf_dir),
                minicpm_cpp.Model(converted(hf_dir, "f32"), device="cpu"),
                tok(PROMPT, add_special_tokens=False).input_ids,
                tok(MORE, add_special_tokens=False).input_ids,
            )
        return cache[layout]

    return get


def _hf(model, ids, positions=None):
    with torch.no_grad():
        kw = {} if positions is None else {"position_ids": torch.tensor([positions])}
        # An explicit mask: without one, transformers reads a jump in position_ids as the start
        # of another packed sequence and would not attend across it.
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = model(torch.tensor([ids]), attention_mask=mask, output_hidden_states=True, **kw)
    return out.logits[0].double().numpy(), out.hidden_states[-1][0].double().numpy()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hidden_states_of_prompt_and_generated_tokens(layout, setup):
    ref, model, ids, _ = setup(layout)
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=7)   # several micro-batches
    s.set_capture(hidden=True)
    s.prefill(tokens=ids)
    s.generate(max_tokens=6, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    s.logits()   # evaluates the last sampled token too
    full = s.tokens
    assert len(full) == len(ids) + 6
    _, ref_hidden = _hf(ref, full)
    ours = s.hidden_states()
    assert ours.shape == (len(full), model.info["n_embd"]) and ours.dtype == np.float32
    assert _rel(ours, ref_hidden) < RTOL
    # A range, and the generated positions alone (what the TTS condition takes).
    assert np.array_equal(s.hidden_states(len(ids), len(full)), ours[len(ids):])


def test_hidden_states_need_capture(setup):
    _, model, ids, _ = setup("tiny_qwen3_dir")
    s = minicpm_cpp.Session(model, n_ctx=128)
    s.prefill(tokens=ids[:5])
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="capture"):
        s.hidden_states()
    s.set_capture(hidden=True)
    s.prefill(tokens=ids[5:9])
    assert s.hidden_states(5, 9).shape[0] == 4
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="outside"):
        s.hidden_states(5, 99)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_position_logits(layout, setup):
    ref, model, ids, _ = setup(layout)
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=5)
    s.set_capture(hidden=False, logits=True)
    s.prefill(tokens=ids)
    ref_logits, _ = _hf(ref, ids)
    assert _rel(s.position_logits(), ref_logits) < RTOL
    assert np.array_equal(s.position_logits(len(ids) - 1)[0], s.logits())


class _WindowedReference:
    """transformers with a KV cache edited as a windowed cache edits it: the prompt is evaluated
    with use_cache, the entries of positions [a, b) are cut out of every layer's keys and values,
    and new tokens continue at the following positions (their RoPE phases), attending what is
    left. The kept entries are the ones computed with the whole prompt, as in the session."""

    def __init__(self, model, ids, a, b):
        self.model = model
        with torch.no_grad():
            self.cache = model(torch.tensor([ids]), use_cache=True).past_key_values
        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys[:, :, :a], layer.keys[:, :, b:]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :a], layer.values[:, :, b:]], dim=2)
        self.n_cached = len(ids) - (b - a)
        self.next_pos = len(ids)

    def feed(self, tokens):
        n = len(tokens)
        pos = torch.arange(self.next_pos, self.next_pos + n).unsqueeze(0)
        mask = torch.ones(1, self.n_cached + n, dtype=torch.long)
        with torch.no_grad():
            out = self.model(torch.tensor([tokens]), past_key_values=self.cache, position_ids=pos,
                             attention_mask=mask, use_cache=True, output_hidden_states=True)
        self.n_cached += n
        self.next_pos += n
        return out.logits[0].double().numpy(), out.hidden_states[-1][0].double().numpy()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cut", [(3, 11), (0, 4), (10, 20)], ids=["middle", "head", "tail-of-prompt"])
def test_removed_cells_keep_the_positions_of_the_rest(layout, cut, setup):
    ref, model, ids, more = setup(layout)
    a, b = cut
    assert b < len(ids)
    s = minicpm_cpp.Session(model, n_ctx=256, n_batch=6)
    s.prefill(tokens=ids)
    s.remove(a, b)
    kept = ids[:a] + ids[b:]
    kept_pos = list(range(a)) + list(range(b, len(ids)))
    assert s.tokens == kept and s.positions == kept_pos
    # New tokens continue after the last position, in the freed cells and beyond.
    s.set_capture(hidden=True, logits=True)
    s.prefill(tokens=more)
    new_pos = list(range(len(ids), len(ids) + len(more)))
    assert s.positions == kept_pos + new_pos
    ref_logits, ref_hidden = _WindowedReference(ref, ids, a, b).feed(more)
    n_kept = len(kept)
    assert _rel(s.position_logits(n_kept), ref_logits) < RTOL
    assert _rel(s.hidden_states(n_kept), ref_hidden) < RTOL
    # The test tells the cut cache from a plain prompt of the kept tokens (recomputed, shifted).
    shifted, _ = _hf(ref, kept + more)
    assert _rel(s.position_logits(n_kept), shifted[n_kept:]) > 10 * RTOL


def test_remove_then_generate_matches_reference(setup):
    ref, model, ids, _ = setup("tiny_qwen3_dir")
    s = minicpm_cpp.Session(model, n_ctx=256)
    s.prefill(tokens=ids)
    s.remove(2, 9)
    n_kept = len(ids) - 7
    s.generate(max_tokens=5, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    got = s.tokens[n_kept:]
    win = _WindowedReference(ref, ids, 2, 9)
    # The cut cache holds the prompt's last token; its logits are the first prediction.
    with torch.no_grad():
        full = ref(torch.tensor([ids])).logits[0, -1]
    want = [int(full.argmax())]
    for _ in range(4):
        logits, _ = win.feed([want[-1]])
        want.append(int(np.argmax(logits[-1])))
    assert got == want
    assert s.positions[n_kept:] == list(range(len(ids), len(ids) + 4)) + [len(ids) + 4]


def test_remove_validates_its_range(setup):
    _, model, ids, _ = setup("tiny_qwen3_dir")
    s = minicpm_cpp.Session(model, n_ctx=64)
    s.prefill(tokens=ids[:8])
    for bad in [(5, 3), (0, 9), (-1, 2)]:
        with pytest.raises(minicpm_cpp.InvalidArgumentError):
            s.remove(*bad)
    s.remove(8, 8)   # empty range: nothing happens
    assert s.n_past == 8
    s.remove(0, 8)
    assert s.n_past == 0 and s.positions == []
