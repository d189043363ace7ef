"""Video on the model side: MiniCPM-V 4.5's 3D resampler and the ``video`` content part (frames
with temporal ids), against the reference on tiny random checkpoints.

Reference: the 3D resampler of the official ``resampler.py`` (tests/ref_minicpmv_resampler3d.py,
``batch_attn_forward`` as ``batch_3d_resampler: true`` selects), the reference ViT
(tests/ref_minicpmv_vision.py) on each frame, and the prompt of the official processor
(``processing_minicpmv.py`` / ``image_processing_minicpmv.py``, ported below): every frame is an
image marker of chat() (items joined with "\\n"); with ``temporal_ids`` every frame after the
first of its group is "skipped" (no placeholder, and the text before it stripped); placeholders
as ``get_slice_image_placeholder`` with ``use_image_id=False`` and ``max_slice_nums=1`` (the
README's video call); then transformers' Qwen3 on the embeddings written over the <unk> positions.
Pixels come from our preprocessing (checked against PIL in test_image_preprocess).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import minicpm_cpp
import ref_minicpmv_resampler3d as ref3d
import ref_minicpmv_vision as ref_vision
import tiny_models
from minicpm_cpp import _core

V45 = "tiny_minicpmv45_vision_dir"
V45_2D = "v45 with a 2d resampler"   # the V4.5 file marked minicpm.resampler.kind = "2d"
QUESTION = "Describe the video."


def _frame(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 7 + seed * 13) & 255, (y * 5 + seed * 29) & 255, (x ^ y) & 255], axis=-1)
    return np.clip(base + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)


def _frames(n, w=160, h=120, seed=0):
    return [_frame(w, h, seed + i) for i in range(n)]


def _groups(n, packing):
    """The README's grouping (group_array) of n frames at 0.5 s apart (ids in 0.1 s units)."""
    ids = [5 * i for i in range(n)]
    return [ids[i : i + packing] for i in range(0, n, packing)]


def _pixels(rgb, max_slice_nums=1):
    pre = _core.image_preprocess(rgb, max_slice_nums=max_slice_nums)
    return torch.from_numpy(np.ascontiguousarray(pre["overview"]))


def _chunks(segs):
    return [s for s in segs if hasattr(s, "embed_pos")]


def _flatten(segments):
    ids = []
    for s in segments:
        ids.extend(s.tokens if hasattr(s, "embed_pos") else s)
    return ids


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _video(frames, ids=None, **kw):
    part = {"type": "video", "frames": frames}
    if ids is not None:
        part["temporal_ids"] = ids
    part.update(kw)
    return part


class Reference:
    def __init__(self, hf_dir):
        from transformers import Qwen2TokenizerFast

        self.cfg = json.loads((hf_dir / "config.json").read_text())
        self.tok = Qwen2TokenizerFast.from_pretrained(str(hf_dir))
        self.vision = ref_vision.load_from_dir(hf_dir)
        self.n_query = int(self.cfg.get("query_num", 64))
        self._llm, self._dir = None, hf_dir

    @property
    def llm(self):
        if self._llm is None:
            self._llm = tiny_models.load_reference_llm(self._dir)
        return self._llm

    def prompt_ids(self, content_texts, n_images, temporal_ids=None, enable_thinking=False):
        """chat() of one user turn whose items are ``content_texts`` (images as the marker),
        then the processor's _convert_images_texts_to_inputs (use_image_id=False, unsliced)."""
        pattern = "(<image>./</image>)"
        msgs = [{"role": "user", "content": "\n".join(content_texts)}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                            enable_thinking=enable_thinking)
        skip = []
        if temporal_ids is not None:  # image_processing_minicpmv.preprocess: skip_image_idx
            start = 0
            for grp in temporal_ids:
                skip.extend(range(start + 1, start + len(grp)))
                start += len(grp)
        chunks = text.split(pattern)
        assert len(chunks) == n_images + 1
        out = ""
        for i in range(n_images):
            if i in skip:
                out += chunks[i].strip()
            else:
                out += chunks[i] + "<image>" + "<unk>" * self.n_query + "</image>"
        out += chunks[-1]
        return self.tok(out, add_special_tokens=False).input_ids

    def image_positions(self, ids):
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


def _patch_kind(src, dst, key=b"minicpm.resampler.kind", value=b"2d"):
    """A copy of a GGUF with the string key minicpm.resampler.kind = "3d" patched in place to
    another key name or value of the same length (rewriting the file with gguf_edit takes long
    for the 300 MB tiny file)."""
    import mmap
    import shutil
    import struct

    shutil.copyfile(src, dst)
    old = b"minicpm.resampler.kind"
    assert len(key) == len(old) and len(value) == 2
    want = struct.pack("<Q", len(old)) + old + struct.pack("<IQ", 8, 2) + b"3d"   # GGUF string value
    with open(dst, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        at = mm.find(want)
        assert at >= 0 and mm.find(want, at + 1) < 0
        mm[at + 8 : at + 8 + len(key)] = key
        mm[at + len(want) - 2 : at + len(want)] = value
    return dst


@pytest.fixture(scope="module")
def setup(request, converted, tmp_path_factory):
    cache = {}

    def get(layout):
        if layout not in cache:
            d = request.getfixturevalue(V45)
            path = converted(d, "f32")
            if layout == V45_2D:
                path = _patch_kind(path, tmp_path_factory.mktemp("v45-2d") / "v45-2d.gguf")
            cache[layout] = (get(V45)[0] if layout == V45_2D else Reference(d), minicpm_cpp.Model(path, device="cpu"))
        return cache[layout]

    return get


def test_converter_marks_the_3d_resampler(setup, tmp_path):
    from gguf import GGUFReader

    _, v45 = setup(V45)
    f = GGUFReader(v45.path).fields["minicpm.resampler.kind"]
    assert bytes(f.parts[f.data[0]]).decode() == "3d"
    # llama.cpp's mmproj files have no kind key: their MiniCPM-V 4.5 (clip.minicpmv_version 6)
    # resampler is taken as the 3D one; the same video gives the same chunks.
    legacy = minicpm_cpp.Model(_patch_kind(v45.path, tmp_path / "nokind.gguf", key=b"minicpm.resampler.xxxx",
                                           value=b"3d"), device="cpu")
    msgs = [{"role": "user", "content": [_video(_frames(3, 64, 48), [[0, 5], [10]]), "?"]}]
    a, b = _chunks(legacy.chat_segments(msgs)), _chunks(v45.chat_segments(msgs))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.embeddings(), y.embeddings())


@pytest.mark.parametrize("packing", [1, 2, 3, 6])
def test_3d_resampler_matches_reference(packing, setup):
    """Packing 1/2/3/6 over packing + 1 frames (the last group ragged for 2, 3 and 6)."""
    ref, model = setup(V45)
    frames = _frames(packing + 1, seed=packing)
    ids = _groups(packing + 1, packing)
    segs = model.chat_segments([{"role": "user", "content": [_video(frames, ids), QUESTION]}])
    chunks = _chunks(segs)
    assert len(chunks) == len(ids)
    assert all(c.grid == (0, 0) and c.n_slices == 1 and len(c.embed_pos) == ref.n_query for c in chunks)
    want = ref3d.video_embeddings(ref.vision, [_pixels(f) for f in frames], ids).numpy()
    got = np.stack([c.embeddings() for c in chunks]).reshape(want.shape)
    err = _rel(got, want)
    print(f"packing {packing}: {len(ids)} groups, rel err {err:.2e}")
    assert err <= 1e-4


def test_video_across_batches_and_graphs(setup):
    """26 frames at packing 6 (4 groups + a ragged one of 2): the encoder's batches of groups of
    one size and packing, over several graphs, give the reference's groups in order."""
    ref, model = setup(V45)
    frames = _frames(26, 64, 48, seed=200)
    ids = _groups(26, 6)
    chunks = _chunks(model.chat_segments([{"role": "user", "content": [_video(frames, ids), QUESTION]}]))
    assert len(chunks) == 5
    want = ref3d.video_embeddings(ref.vision, [_pixels(f) for f in frames], ids).numpy()
    got = np.stack([c.embeddings() for c in chunks]).reshape(want.shape)
    err = _rel(got, want)
    print(f"26 frames: rel err {err:.2e}")
    assert err <= 1e-4


def test_video_across_windows(setup):
    """69 frames at packing 2 (35 groups, the last of one frame): frames are preprocessed in
    windows of up to 64 (the next window while the encoder runs one), the groups come back in
    the reference's order; a session sees a change of one frame in the second window as a change
    of its group only (the prompt is evaluated again from that group on)."""
    ref, model = setup(V45)
    frames = _frames(69, 56, 42, seed=300)
    ids = _groups(69, 2)
    chunks = _chunks(model.chat_segments([{"role": "user", "content": [_video(frames, ids), QUESTION]}]))
    assert len(chunks) == 35
    want = ref3d.video_embeddings(ref.vision, [_pixels(f) for f in frames], ids).numpy()
    got = np.stack([c.embeddings() for c in chunks]).reshape(want.shape)
    err = _rel(got, want)
    print(f"69 frames: rel err {err:.2e}")
    assert err <= 1e-4

    s = minicpm_cpp.Session(model, n_ctx=4096)
    s.chat([{"role": "user", "content": [_video(frames, ids), QUESTION]}], max_tokens=1, temperature=0)
    n_first = s.timings["n_prefill"]
    changed = [f.copy() for f in frames]
    changed[66][5, 7, 1] ^= 0x40    # group 33 (frames 66, 67)
    s.reset_timings()
    s.chat([{"role": "user", "content": [_video(changed, ids), QUESTION]}], max_tokens=1, temperature=0)
    n_again = s.timings["n_prefill"]
    per_group = len(chunks[0].tokens) + 1   # its placeholder and the "\n" before the next one
    assert s.timings["n_images"] == 35
    assert 2 * per_group <= n_again < 3 * per_group + 40, (n_first, n_again, per_group)


def test_mixed_image_and_video_batch(setup):
    """An image (id -1, its own group) and a video of another frame size in one reference
    resampler batch (padding across sizes): the image chunk (2D path) and the group chunks."""
    ref, model = setup(V45)
    img = _frame(300, 200, 40)
    frames = _frames(4, 96, 160, seed=50)
    vid_ids = [[2, 4, 7], [11]]
    msgs = [{"role": "user", "content": [img, _video(frames, vid_ids), QUESTION]}]
    segs = model.chat_segments(msgs, max_slice_nums=1, use_image_id=False)
    chunks = _chunks(segs)
    assert len(chunks) == 3
    all_ids = [[-1]] + vid_ids
    want = ref3d.video_embeddings(ref.vision, [_pixels(x) for x in [img] + frames], all_ids).numpy()
    got = np.stack([c.embeddings() for c in chunks]).reshape(want.shape)
    err = _rel(got, want)
    print(f"mixed batch: rel err {err:.2e}")
    assert err <= 1e-4
    # The prompt the reference builds for chat(msgs, temporal_ids=[[-1], [2, 4, 7], [11]]).
    marker = "(<image>./</image>)"
    assert _flatten(segs) == ref.prompt_ids([marker] * 5 + [QUESTION], 5, all_ids)


def test_temporal_id_minus_one_is_the_2d_path(setup):
    """Groups of one frame with id -1 give exactly (bit for bit) the image path's embeddings
    (unsliced, no image id), which match the reference's 2D resampler."""
    ref, model = setup(V45)
    frames = _frames(2, seed=60)
    vid = _chunks(model.chat_segments([{"role": "user", "content": [_video(frames, [[-1], [-1]]), "Hi"]}]))
    img = _chunks(model.chat_segments([{"role": "user", "content": frames + ["Hi"]}], max_slice_nums=1,
                                      use_image_id=False))
    assert len(vid) == len(img) == 2
    for a, b in zip(vid, img):
        assert a.tokens == b.tokens
        np.testing.assert_array_equal(a.embeddings(), b.embeddings())
    want = ref_vision.vision_embeddings(ref.vision, [_pixels(f) for f in frames]).numpy()
    assert _rel(np.stack([c.embeddings() for c in vid]).reshape(want.shape), want) <= 1e-4
    # the 3D reference with -1 ids reduces to the 2D one as well
    want3 = ref3d.video_embeddings(ref.vision, [_pixels(f) for f in frames], [[-1], [-1]]).numpy()
    assert _rel(want3, want) <= 1e-5


def test_video_chat_matches_reference(setup):
    """Prompt ids, logits and greedy tokens of a video chat (packing 3, a ragged last group, text
    before the video) against the reference chat(..., temporal_ids=...) path."""
    ref, model = setup(V45)
    frames = _frames(5, 128, 96, seed=70)
    ids = _groups(5, 3)
    msgs = [{"role": "user", "content": ["Watch this.", _video(frames, ids), QUESTION]}]
    s = minicpm_cpp.Session(model, n_ctx=2048)
    segs = s.chat_prompt(msgs)["segments"]
    marker = "(<image>./</image>)"
    want_ids = ref.prompt_ids(["Watch this."] + [marker] * 5 + [QUESTION], 5, ids)
    assert _flatten(segs) == want_ids
    emb = ref3d.video_embeddings(ref.vision, [_pixels(f) for f in frames], ids)
    emb = emb.reshape(-1, emb.shape[-1])
    got = np.concatenate([c.embeddings() for c in _chunks(segs)])
    assert _rel(got, emb.numpy()) <= 1e-4
    ref_logits, ref_greedy = ref.logits_and_greedy(want_ids, emb, 12)
    s._s.sync_segments(segs)
    lerr = _rel(s.logits(), ref_logits)
    print(f"video chat: {len(want_ids)} prompt tokens, logits rel err {lerr:.2e}")
    assert lerr <= 1e-4
    answer = s.chat(msgs, max_tokens=12, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    assert s.tokens[-12:] == ref_greedy
    assert answer == model.detokenize(ref_greedy, skip_special=True)
    # The same conversation again reuses the whole prompt (the video is neither encoded nor
    # evaluated again).
    s.reset_timings()
    s.chat(msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "More."}], max_tokens=1,
           temperature=0)
    assert s.timings["n_prefill"] < 40 and s.timings["n_images"] == 0


def test_frames_without_temporal_ids(setup):
    """Models without temporal ids (a 2D resampler): every frame a plain image, unsliced and
    without <image_id> (the reference recipes' use_image_id=False), or with the part's
    max_slice_nums."""
    ref, model = setup(V45_2D)
    frames = _frames(2, 640, 480, seed=80)
    segs = model.chat_segments([{"role": "user", "content": [_video(frames), QUESTION]}])
    chunks = _chunks(segs)
    assert len(chunks) == 2 and all(c.grid == (0, 0) for c in chunks)
    plain = model.chat_segments([{"role": "user", "content": frames + [QUESTION]}], max_slice_nums=1,
                                use_image_id=False)
    assert _flatten(segs) == _flatten(plain)
    want = ref_vision.vision_embeddings(ref.vision, [_pixels(f) for f in frames]).numpy()
    assert _rel(np.stack([c.embeddings() for c in chunks]).reshape(want.shape), want) <= 1e-4
    two = _chunks(model.chat_segments([{"role": "user", "content": [_video(frames, max_slice_nums=2), QUESTION]}]))
    assert two[0].grid != (0, 0) and model.tokenize("<image_id>")[0] not in two[0].tokens


def test_many_frames_not_encoded_again(setup):
    """A video without temporal ids is one image per frame; with more frames than the session's
    image cache keeps by default (16), the same conversation passed again must still encode
    none of them again (what a prompt uses stays until the next prompt)."""
    _, model = setup(V45_2D)
    frames = _frames(20, 64, 48, seed=90)
    s = minicpm_cpp.Session(model, n_ctx=4096)
    msgs = [{"role": "user", "content": [_video(frames), QUESTION]}]
    answer = s.chat(msgs, max_tokens=2, temperature=0)
    assert s.timings["n_images"] == 20
    s.reset_timings()
    s.chat(msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "More."}], max_tokens=1,
           temperature=0)
    assert s.timings["n_images"] == 0 and s.timings["n_prefill"] < 40
    # other images in between evict the unused ones first, never the last prompt's frames
    for i in range(20):
        s.encode_image(_frames(1, 32, 32, seed=200 + i)[0])
    s.reset_timings()
    s.chat(msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Again."}], max_tokens=1,
           temperature=0)
    assert s.timings["n_images"] == 0


def test_errors(setup):
    _, v45 = setup(V45)
    _, v26 = setup(V45_2D)
    fr = _frames(3, 64, 48, seed=90)

    def chat(model, part):
        return model.chat_segments([{"role": "user", "content": [part, "?"]}])

    err = minicpm_cpp.InvalidArgumentError
    with pytest.raises(err, match="3 frames"):
        chat(v45, _video(fr, [[0, 1]]))
    with pytest.raises(err, match="no frames"):
        chat(v45, _video([], [[0]]))
    with pytest.raises(err, match="1 to 6"):
        chat(v45, _video(_frames(7, 32, 32), [list(range(7))]))
    with pytest.raises(err, match="1 to 6"):
        chat(v45, _video(fr, [[0, 1, 2], []]))
    with pytest.raises(err, match="temporal id"):
        chat(v45, _video(fr, [[0, -2, 1]]))
    with pytest.raises(err, match="temporal id"):
        chat(v45, _video(fr, [[0, 1.5, 1]]))
    with pytest.raises(err, match="empty"):
        chat(v45, _video(fr, []))
    with pytest.raises(err, match="frames"):
        chat(v45, {"type": "video", "temporal_ids": [[0]], "frames": "clip"})
    with pytest.raises(err, match="uint8"):
        chat(v45, _video([np.zeros((8, 8), np.float32)], [[0]]))
    with pytest.raises(err, match="max_slice_nums"):
        chat(v26, _video(fr, max_slice_nums=0))
    with pytest.raises(err, match="not sliced"):
        chat(v45, _video(fr, [[0, 1, 2]], max_slice_nums=2))
    # frames of one group with different sizes: refused by the core
    with pytest.raises(err, match="one size"):
        chat(v45, _video([_frame(64, 48, 1), _frame(300, 100, 2)], [[0, 1]]))
    with pytest.raises(minicpm_cpp.UnsupportedError, match="3D resampler"):
        chat(v26, _video(fr, [[0, 1, 2]]))


def _remote_code():
    """The official MiniCPM-V 4.5 remote code (processing_minicpmv.py, image_processing_minicpmv.py,
    tokenization_minicpmv_fast.py, resampler.py, preprocessor_config.json) in the directory
    MINICPM_V45_REMOTE_CODE names, imported as a package; the test is skipped without it."""
    import importlib
    import os
    import sys
    import types
    from pathlib import Path

    d = os.environ.get("MINICPM_V45_REMOTE_CODE")
    need = ["processing_minicpmv.py", "image_processing_minicpmv.py", "tokenization_minicpmv_fast.py", "resampler.py",
            "preprocessor_config.json"]
    if not d or not all((Path(d) / f).is_file() for f in need):
        pytest.skip("MINICPM_V45_REMOTE_CODE does not name a directory with the official V4.5 remote code")
    pkg = types.ModuleType("minicpmv45_remote")
    pkg.__path__ = [str(Path(d))]
    sys.modules["minicpmv45_remote"] = pkg
    mods = {m: importlib.import_module(f"minicpmv45_remote.{m}")
            for m in ("processing_minicpmv", "image_processing_minicpmv", "tokenization_minicpmv_fast", "resampler")}
    return mods, json.loads((Path(d) / "preprocessor_config.json").read_text())


def test_official_remote_code(setup, tiny_minicpmv45_vision_dir):
    """Where the official remote code is at hand: its processor (chat()'s prompt with an image and
    a video, temporal_ids [[-1], ...], use_image_id=False, max_slice_nums=1) gives our prompt ids
    and pixels, and its Resampler (batch_infer = batch_3d_resampler = True) our embeddings."""
    from PIL import Image

    mods, pre_cfg = _remote_code()
    ref, model = setup(V45)
    tok = mods["tokenization_minicpmv_fast"].MiniCPMVTokenizerFast.from_pretrained(str(tiny_minicpmv45_vision_dir))
    proc = mods["processing_minicpmv"].MiniCPMVProcessor(
        image_processor=mods["image_processing_minicpmv"].MiniCPMVImageProcessor(**pre_cfg), tokenizer=tok)
    img = _frame(300, 200, 100)
    frames = _frames(8, 160, 120, seed=101)
    vid_ids = [[0, 5, 10], [15, 20, 25], [30, 35]]
    all_ids = [[-1]] + vid_ids
    marker = "(<image>./</image>)"
    text = "\n".join(["Look.", marker] + [marker] * 8 + [QUESTION])
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True,
                                     enable_thinking=False)
    inputs = proc([prompt], [[Image.fromarray(x) for x in [img] + frames]], max_slice_nums=1, use_image_id=False,
                  temporal_ids=all_ids, return_tensors="pt", max_length=None)
    segs = model.chat_segments([{"role": "user", "content": ["Look.", img, _video(frames, vid_ids), QUESTION]}],
                               max_slice_nums=1, use_image_id=False)
    assert _flatten(segs) == inputs["input_ids"][0].tolist()
    ours_px = [_pixels(x) for x in [img] + frames]
    for o, p in zip(ours_px, inputs["pixel_values"][0]):
        np.testing.assert_array_equal(ref_vision.reshape_by_patch(o, 14).numpy(), p.numpy())
    c = ref.vision.config
    rs = mods["resampler"].Resampler(num_queries=c.query_num, embed_dim=c.embed_dim, num_heads=c.embed_dim // 128,
                                     kv_dim=c.hidden_size, adaptive=True, batch_infer=True).float().eval()
    rs.load_state_dict(ref.vision.resampler.state_dict())
    feats = torch.nn.utils.rnn.pad_sequence([ref_vision.vit_features(ref.vision, p) for p in ours_px], batch_first=True)
    tgt = torch.tensor([ref_vision._grid(ref.vision, p) for p in ours_px], dtype=torch.int32)
    with torch.no_grad():
        want = rs(feats, tgt, inputs["temporal_ids"][0]).numpy()
    got = np.stack([ch.embeddings() for ch in _chunks(segs)]).reshape(want.shape)
    err = _rel(got, want)
    print(f"official remote code: prompt ids equal, resampler rel err {err:.2e}")
    assert err <= 1e-4


def test_video_file_chat_and_cli(setup, tmp_path):
    """A video file end to end: the path part decodes with the V4.5 recipe and chats as the
    frames form of minicpm_cpp.load_video does; minicpm-cli --video gives the same answer."""
    import subprocess
    import sys

    av = pytest.importorskip("av")
    _, model = setup(V45)
    path = tmp_path / "clip.mkv"
    frames = _frames(20, 64, 48, seed=91)
    with av.open(str(path), "w") as out:
        st = out.add_stream("ffv1", rate=10)
        st.width, st.height, st.pix_fmt = 64, 48, "bgr0"
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="bgr0")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    v = minicpm_cpp.load_video(str(path), fps=5, max_packing=2, force_packing=2)
    assert v.temporal_ids and all(len(g) <= 2 for g in v.temporal_ids)
    kw = dict(max_tokens=6, temperature=0, repeat_penalty=1.0, stop_at_end_of_turn=False)
    part = {"type": "video", "path": str(path), "fps": 5, "max_packing": 2, "force_packing": 2}
    a = minicpm_cpp.Session(model, n_ctx=2048).chat([{"role": "user", "content": [part, QUESTION]}], **kw)
    b = minicpm_cpp.Session(model, n_ctx=2048).chat([{"role": "user", "content": [v.to_part(), QUESTION]}], **kw)
    assert a == b
    r = subprocess.run([sys.executable, "-m", "minicpm_cpp.cli", "-m", model.path, "--video", str(path), "--video-fps", "5",
                        "--max-packing", "2", "-p", QUESTION, "-n", "6", "--temp", "0", "--repeat-penalty", "1.0",
                        "--device", "cpu", "-t", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    c = minicpm_cpp.Session(model, n_ctx=2048).chat(
        [{"role": "user", "content": [{"type": "video", "path": str(path), "fps": 5, "max_packing": 2}, QUESTION]}],
        max_tokens=6, temperature=0, repeat_penalty=1.0)
    assert r.stdout.strip() == c.strip()
