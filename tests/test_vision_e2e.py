"""Image chat end to end against the reference pipeline on tiny random MiniCPM-V checkpoints.

Reference: the chat() prompt of the official code (content items joined with "\\n", the image
marker replaced by the placeholder of get_slice_image_placeholder, tokenized by the HF
tokenizer), the PyTorch vision reference (tests/ref_minicpmv_vision.py) on the slices, the
embeddings written over the <unk> positions, and transformers' Qwen3/Qwen2 on inputs_embeds.
Pixels come from our preprocessing (checked against PIL separately in test_image_preprocess).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import minicpm_cpp
import ref_minicpmv_vision as ref_vision
import tiny_models
from minicpm_cpp import _core

V45 = "tiny_minicpmv45_vision_dir"
V26 = "tiny_minicpmv26_vision_dir"


def _image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) & 255], axis=-1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _placeholder(grid, n_query, image_id):
    """get_slice_image_placeholder of the reference (use_image_id on)."""
    unk = "<unk>" * n_query
    s = f"<image_id>{image_id}</image_id>" if image_id is not None else ""
    s += f"<image>{unk}</image>"
    cols, rows = grid
    if cols and rows:
        s += "\n".join("".join(f"<slice>{unk}</slice>" for _ in range(cols)) for _ in range(rows))
    return s


class Reference:
    def __init__(self, hf_dir):
        from transformers import Qwen2TokenizerFast

        self.dir = hf_dir
        self.cfg = json.loads((hf_dir / "config.json").read_text())
        self.tok = Qwen2TokenizerFast.from_pretrained(str(hf_dir))
        self.llm = tiny_models.load_reference_llm(hf_dir)
        self.vision = ref_vision.load_from_dir(hf_dir)
        self.n_query = int(self.cfg.get("query_num", 64))
        self.use_image_id = bool(self.cfg.get("use_image_id", True))

    def prompt_ids(self, messages, images_info, enable_thinking=False):
        """messages with images replaced by the marker; images_info: [(grid), ...] in order."""
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                            enable_thinking=enable_thinking)
        parts = text.split("(<image>./</image>)")
        assert len(parts) == len(images_info) + 1
        out = parts[0]
        for k, grid in enumerate(images_info):
            out += _placeholder(grid, self.n_query, k if self.use_image_id else None) + parts[k + 1]
        return self.tok(out, add_special_tokens=False).input_ids

    def image_positions(self, ids):
        """Positions strictly inside <image>..</image> and <slice>..</slice> (the reference's image_bound)."""
        t = self.tok.convert_tokens_to_ids
        starts, ends = {t("<image>"), t("<slice>")}, {t("</image>"), t("</slice>")}
        pos, inside = [], False
        for i, x in enumerate(ids):
            if x in starts:
                inside = True
            elif x in ends:
                inside = False
            elif inside:
                pos.append(i)
        return pos

    def logits_and_greedy(self, ids, embeddings, n_gen):
        emb = self.llm.get_input_embeddings()(torch.tensor([ids]))
        pos = self.image_positions(ids)
        assert len(pos) == embeddings.shape[0]
        emb[0, pos] = embeddings.to(emb.dtype)
        out = []
        with torch.no_grad():
            res = self.llm(inputs_embeds=emb, use_cache=True)
            first = res.logits[0, -1].double().numpy()
            past, nxt = res.past_key_values, int(res.logits[0, -1].argmax())
            for _ in range(n_gen):
                out.append(nxt)
                res = self.llm(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past, nxt = res.past_key_values, int(res.logits[0, -1].argmax())
        return first, out


def _pieces(rgb, model_hp, max_slice_nums=None):
    pre = _core.image_preprocess(rgb, max_slice_nums=max_slice_nums or model_hp["max_slice_nums"])
    pieces = [pre["overview"]] + list(pre["slices"])
    return [torch.from_numpy(np.ascontiguousarray(p)) for p in pieces], tuple(pre["grid"])


@pytest.fixture(scope="module")
def setup(request, converted):
    cache = {}

    def get(layout):
        if layout not in cache:
            d = request.getfixturevalue(layout)
            model = minicpm_cpp.Model(converted(d, "f32"), device="cpu")
            cache[layout] = (Reference(d), model)
        return cache[layout]

    return get


def _flatten(segments):
    ids = []
    for s in segments:
        ids.extend(s.tokens if hasattr(s, "embed_pos") else s)
    return ids


@pytest.mark.parametrize("layout", [V45, V26])
@pytest.mark.parametrize("size", [(300, 200), (640, 480), (1000, 750), (448, 448)])
def test_single_image_chat_matches_reference(layout, size, setup):
    ref, model = setup(layout)
    assert model.has_vision
    rgb = _image(*size)
    msgs = [{"role": "user", "content": [rgb, "What is in the image?"]}]
    segs = model.chat_segments(msgs, enable_thinking=False)
    chunk = [s for s in segs if hasattr(s, "embed_pos")][0]

    ref_msgs = [{"role": "user", "content": "(<image>./</image>)\nWhat is in the image?"}]
    pieces, grid = _pieces(rgb, {"max_slice_nums": 9})
    assert chunk.grid == grid
    ids = ref.prompt_ids(ref_msgs, [grid])
    assert _flatten(segs) == ids

    ref_emb = ref_vision.vision_embeddings(ref.vision, pieces).reshape(-1, ref.vision.config.embed_dim)
    ours_emb = chunk.embeddings()
    err = np.abs(ours_emb - ref_emb.numpy()).max() / np.abs(ref_emb.numpy()).max()
    assert err <= 1e-4, f"embeddings rel err {err:.2e}"

    s = minicpm_cpp.Session(model, n_ctx=2048)
    s._s.sync_segments(segs)
    ref_logits, ref_greedy = ref.logits_and_greedy(ids, ref_emb, 16)
    lerr = np.abs(s.logits() - ref_logits).max() / np.abs(ref_logits).max()
    print(f"{layout} {size}: grid {grid}, embeddings rel err {err:.2e}, logits rel err {lerr:.2e}")
    assert lerr <= 1e-4
    s.generate(max_tokens=16, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    assert s.tokens[-16:] == ref_greedy


def test_multi_image_and_few_shot_token_sequence(setup):
    ref, model = setup(V45)
    a, b, c = _image(640, 480, 1), _image(300, 200, 2), _image(1000, 750, 3)
    msgs = [
        {"role": "user", "content": [a, "What is this?"]},
        {"role": "assistant", "content": "A gradient."},
        {"role": "user", "content": [b, "And this?"]},
        {"role": "assistant", "content": "Another one."},
        {"role": "user", "content": [c, b, "Compare image 1 and image 2."]},
    ]
    segs = model.chat_segments(msgs, enable_thinking=False)
    grids = [_pieces(x, {"max_slice_nums": 9})[1] for x in (a, b, c, b)]
    ref_msgs = [
        {"role": "user", "content": "(<image>./</image>)\nWhat is this?"},
        {"role": "assistant", "content": "A gradient."},
        {"role": "user", "content": "(<image>./</image>)\nAnd this?"},
        {"role": "assistant", "content": "Another one."},
        {"role": "user", "content": "(<image>./</image>)\n(<image>./</image>)\nCompare image 1 and image 2."},
    ]
    assert _flatten(segs) == ref.prompt_ids(ref_msgs, grids)
    # And the whole conversation evaluates; the second call reuses everything but the new turn.
    s = minicpm_cpp.Session(model, n_ctx=8192)
    answer = s.chat(msgs, max_tokens=4, temperature=0, enable_thinking=False)
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Thanks."}]
    s.reset_timings()
    s.chat(msgs, max_tokens=2, temperature=0, enable_thinking=False)
    assert s.timings["n_prefill"] < 64


def test_openai_parts_and_options(setup, tmp_path):
    from PIL import Image
    import base64
    import io

    ref, model = setup(V45)
    rgb = _image(1000, 750, 5)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    native = model.chat_segments([{"role": "user", "content": [rgb, "Describe."]}])
    for ref_ in (url, str(path)):
        parts = [{"type": "image_url", "image_url": {"url": ref_}}, {"type": "text", "text": "Describe."}]
        oa = model.chat_segments([{"role": "user", "content": parts}])
        assert _flatten(oa) == _flatten(native)
    one = model.chat_segments([{"role": "user", "content": [rgb, "Describe."]}], max_slice_nums=1, use_image_id=False)
    chunk = [x for x in one if hasattr(x, "embed_pos")][0]
    assert chunk.grid == (0, 0) and chunk.n_slices == 1
    assert model.tokenize("<image_id>")[0] not in chunk.tokens


def test_prefill_image_and_errors(setup, tiny_qwen3_dir, converted):
    ref, model = setup(V45)
    s = minicpm_cpp.Session(model, n_ctx=1024)
    n = s.prefill(image=_image(300, 200), text="\nWhat?")
    assert n == s.n_past and n > 64
    with pytest.raises(minicpm_cpp.ContextFullError):
        minicpm_cpp.Session(model, n_ctx=64).prefill(image=_image(640, 480))
    text_only = minicpm_cpp.Model(converted(tiny_qwen3_dir, "f32"), device="cpu")
    assert not text_only.has_vision
    with pytest.raises(minicpm_cpp.UnsupportedError, match="no vision encoder"):
        minicpm_cpp.Session(text_only).prefill(image=_image(64, 64))
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        model.encode_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(minicpm_cpp.InvalidArgumentError):
        model.encode_image(_image(64, 64), max_slice_nums=0)


def test_llama_cpp_layout_llm_plus_mmproj(tiny_minicpmv45_vision_dir, converted, tmp_path, setup):
    """The llama.cpp pair (LLM-only GGUF + clip-convention mmproj) gives the same embeddings and
    logits as our single file."""
    from minicpm_cpp.convert import convert

    llm = tmp_path / "llm.gguf"
    mmproj = tmp_path / "mmproj.gguf"
    convert(tiny_minicpmv45_vision_dir, llm, "f32", force=True, progress=False, log=lambda m: None,
            llm_only=True, mmproj=mmproj)
    plain = minicpm_cpp.Model(llm, device="cpu")
    assert not plain.has_vision
    pair = minicpm_cpp.Model(llm, device="cpu", mmproj=mmproj)
    _, single = setup(V45)
    assert pair.has_vision
    rgb = _image(640, 480, 9)
    a, b = pair.encode_image(rgb), single.encode_image(rgb)
    assert a.tokens == b.tokens
    np.testing.assert_array_equal(a.embeddings(), b.embeddings())
    msgs = [{"role": "user", "content": [rgb, "Hi"]}]
    sa, sb = minicpm_cpp.Session(pair, n_ctx=1024), minicpm_cpp.Session(single, n_ctx=1024)
    sa._s.sync_segments(pair.chat_segments(msgs))
    sb._s.sync_segments(single.chat_segments(msgs))
    np.testing.assert_array_equal(sa.logits(), sb.logits())
    # A mismatched mmproj (resampler width != LLM width) is refused with a clear error.
    other = tmp_path / "other-mmproj.gguf"
    d26 = tiny_models.make_minicpmv26(tmp_path / "v26")
    convert(d26, tmp_path / "v26.gguf", "f32", force=True, progress=False, log=lambda m: None, mmproj=other)
    with pytest.raises(minicpm_cpp.FormatError, match="width"):
        minicpm_cpp.Model(llm, device="cpu", mmproj=other)
    with pytest.raises(minicpm_cpp.FormatError, match="no MiniCPM-V vision encoder"):
        minicpm_cpp.Model(llm, device="cpu", mmproj=llm)


@pytest.mark.parametrize("layout", [V45, V26])
def test_default_chat_is_the_official_chat_default(layout, setup):
    """Without enable_thinking, chat() builds what the official chat() builds with its defaults:
    enable_thinking=False for the Qwen3 MiniCPM models, which renders <think>\\n\\n</think>\\n\\n
    after the assistant header (the Qwen2 V2.6 layout has no such switch). Greedy tokens equal
    the reference's on that prompt; the sampling defaults are the official chat()'s."""
    ref, model = setup(layout)
    rgb = _image(640, 480, 11)
    msgs = [{"role": "user", "content": [rgb, "What is in the image?"]}]
    s = minicpm_cpp.Session(model, n_ctx=2048)
    prompt = s.chat_prompt(msgs)
    ids = ref.prompt_ids([{"role": "user", "content": "(<image>./</image>)\nWhat is in the image?"}],
                         [_pieces(rgb, {"max_slice_nums": 9})[1]],
                         enable_thinking=False if layout == V45 else None)   # V2.6's chat() passes none
    assert _flatten(prompt["segments"]) == ids
    if layout == V45:
        assert prompt["text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert model.defaults["enable_thinking"] is False and not prompt["thinking"]
        # MiniCPM-V 4.5 chat(): temperature 0.7, top-p 0.8, top-k 100, repetition penalty 1.03.
        d = model.defaults["sampling"]
        assert (d["temperature"], d["top_p"], d["top_k"], d["repeat_penalty"]) == pytest.approx((0.7, 0.8, 100, 1.03))
    else:
        assert prompt["text"].endswith("<|im_start|>assistant\n")
    chunk = [x for x in prompt["segments"] if hasattr(x, "embed_pos")][0]
    pieces, _ = _pieces(rgb, {"max_slice_nums": 9})
    ref_emb = ref_vision.vision_embeddings(ref.vision, pieces).reshape(-1, ref.vision.config.embed_dim)
    _, ref_greedy = ref.logits_and_greedy(ids, ref_emb, 12)
    answer = s.chat(msgs, max_tokens=12, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    assert s.tokens[-12:] == ref_greedy
    assert answer == model.detokenize(ref_greedy, skip_special=True)
