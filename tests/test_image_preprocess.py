"""Image preprocessing against the reference MiniCPM-V processor (tests/ref_minicpmv_processor.py,
Pillow doing the resizing as in the reference).

* Geometry: grid, overview, refine and slice sizes identical for hundreds of seeded random
  sizes plus edge cases (1x1, 1x4000, 8000x8000, near-tie aspect ratios, the worked examples
  of the specification) and max_slice_nums in {1, 2, 9, 16}; the placeholder token ids (and
  the image-embedding positions) identical to the reference placeholder string tokenized by
  ``transformers.Qwen2TokenizerFast``.
* Pixels: overview and slices of noise, gradients and real photos within 2/255 of the
  reference after normalisation (they are bit-identical with Pillow >= 13).
* Resize: ``image_resize_bicubic`` against ``Image.resize(size, BICUBIC)`` for many sizes.
* Inputs: ``minicpm_cpp.image.load_image`` returns what ``Image.open(...).convert("RGB")``
  gives for every mode, and refuses corrupt, truncated, empty and oversized images.

Bit-exactness of the resize depends on Pillow's pass order, which changed in Pillow 13
(vertical pass first when the height shrinks more than twice as much as the width); with an
older Pillow the exactness checks are skipped and only the 1-level bound on natural images
is kept.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

import ref_minicpmv_processor as ref  # noqa: E402
import minicpm_cpp  # noqa: E402
import tiny_models  # noqa: E402
from minicpm_cpp import _core  # noqa: E402
from minicpm_cpp.errors import FileError, InvalidArgumentError  # noqa: E402
from minicpm_cpp.image import MAX_IMAGE_PIXELS, load_image, preprocess_image  # noqa: E402

N_VOCAB = 151748
PILLOW_MAJOR = int(Image.__version__.split(".")[0])
PILLOW_PASS_ORDER_13 = PILLOW_MAJOR >= 13
MAX_SLICE_NUMS = (1, 2, 9, 16)

# Worked examples of the specification (section 3.2): size -> grid, overview, refine, slice, tokens.
SPEC_EXAMPLES = {
    (300, 200): (None, (546, 364), None, None, 64),
    (448, 448): (None, (448, 448), None, None, 64),
    (600, 300): (None, (630, 322), None, None, 64),
    (640, 480): ((2, 1), (518, 392), (728, 546), (364, 546), 192),
    (1000, 750): ((2, 2), (518, 392), (1036, 784), (518, 392), 320),
    (1024, 1024): ((3, 2), (448, 448), (1092, 1092), (364, 546), 448),
    (1920, 1080): ((4, 2), (602, 336), (1680, 952), (420, 476), 576),
    (3000, 400): ((7, 1), (1218, 168), (3234, 434), (462, 434), 512),
}


def media_dir() -> Path:
    return tiny_models.assets_dir() / "media"


def _near_tie_sizes(rng):
    """Sizes whose aspect ratio sits where two candidate grids are (almost) equally close."""
    out = []
    ratios = [1 / 4, 1 / 3, 1 / 2, 2 / 3, 1, 3 / 2, 2, 3, 4, 5, 6, 8]
    for i, a in enumerate(ratios):
        for b in ratios[i + 1:]:
            mid = math.sqrt(a * b)
            for h in rng.integers(200, 2600, 2):
                w = int(round(int(h) * mid))
                out += [(w + d, int(h)) for d in (-1, 0, 1) if w + d > 0]
    # squares: 1xN vs Nx1 ties, and 2x3 vs 3x2 for an area of 5..7 cells
    out += [(s, s) for s in (449, 634, 635, 777, 897, 1003, 1004, 1024, 1100, 1185, 1186, 1187, 2000, 5000)]
    return out


def _sizes():
    rng = np.random.default_rng(20240611)
    sizes = list(SPEC_EXAMPLES) + [
        (1, 1), (1, 4000), (4000, 1), (8000, 8000), (448, 448), (447, 449), (449, 447), (2, 1), (1, 2),
        (14, 14), (13, 15), (7, 7), (21, 35), (35, 21), (896, 448), (448, 896), (1344, 448), (100000, 1),
        (1, 100000), (13376, 13376), (200704, 1), (448, 449), (1, 200705),
    ]
    for _ in range(500):
        w = int(math.exp(rng.uniform(0, math.log(8000))))
        h = int(math.exp(rng.uniform(0, math.log(8000))))
        sizes.append((max(w, 1), max(h, 1)))
    for _ in range(100):  # natural photo-like shapes
        w = int(rng.integers(100, 5000))
        h = max(1, int(w / rng.choice([4 / 3, 3 / 2, 16 / 9, 1, 3 / 4, 9 / 16, 21 / 9])) + int(rng.integers(-2, 3)))
        sizes.append((w, h))
    sizes += _near_tie_sizes(rng)
    return list(dict.fromkeys(sizes))


SIZES = _sizes()


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory, tokenizer_dir):
    from minicpm_cpp.convert.tokenizer import write_vocab_only_gguf

    path = tmp_path_factory.mktemp("image-tokenizer") / "vocab.gguf"
    write_vocab_only_gguf(tokenizer_dir, path, n_vocab=N_VOCAB)
    return str(path)


@pytest.fixture(scope="module")
def ours_tok(vocab_gguf):
    return _core.Tokenizer(vocab_gguf)


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2TokenizerFast.from_pretrained(str(tokenizer_dir))


# ---------------------------------------------------------------------------------------------
# geometry


def test_enough_sizes():
    assert len(SIZES) >= 500


@pytest.mark.parametrize("size", list(SPEC_EXAMPLES), ids=lambda s: f"{s[0]}x{s[1]}")
def test_spec_worked_examples(size):
    grid, overview, refine, cell, tokens = SPEC_EXAMPLES[size]
    assert ref.geometry(size) == (grid, overview, refine)
    assert _core.image_best_grid(*size) == (grid or (0, 0))
    assert _core.image_overview_size(*size) == overview
    assert _core.image_refine_size(*size) == refine
    if grid:
        assert (refine[0] // grid[0], refine[1] // grid[1]) == cell
    n_pieces = 1 + (grid[0] * grid[1] if grid else 0)
    assert 64 * n_pieces == tokens


def test_geometry_matches_reference():
    mismatches = []
    n = 0
    for size in SIZES:
        for msn in MAX_SLICE_NUMS:
            grid, overview, refine = ref.geometry(size, msn)
            got = (
                _core.image_best_grid(*size, max_slice_nums=msn),
                _core.image_overview_size(*size, max_slice_nums=msn),
                _core.image_refine_size(*size, max_slice_nums=msn),
            )
            want = (grid or (0, 0), overview, refine)
            n += 1
            if got != want:
                mismatches.append((size, msn, got, want))
    assert not mismatches, f"{len(mismatches)} of {n} differ, e.g. {mismatches[:5]}"


def test_geometry_invariants():
    for size in SIZES:
        grid = _core.image_best_grid(*size)
        ow, oh = _core.image_overview_size(*size)
        assert ow % 14 == 0 and oh % 14 == 0 and ow >= 14 and oh >= 14
        if grid != (0, 0):
            rw, rh = _core.image_refine_size(*size)
            assert rw % (14 * grid[0]) == 0 and rh % (14 * grid[1]) == 0
            assert 2 <= grid[0] * grid[1] <= 10


def test_square_tie_takes_first_candidate_in_double_precision():
    # 2x3 and 3x2 are equally far from a square in exact arithmetic; the reference's
    # double-precision logs make 3x2 win, and 1x2 beats 2x1 for a 2-cell square.
    assert _core.image_best_grid(1024, 1024) == (3, 2) == ref.get_sliced_grid((1024, 1024), 9)
    assert _core.image_best_grid(500, 500) == (1, 2) == ref.get_sliced_grid((500, 500), 9)


def test_geometry_with_other_resolutions():
    rng = np.random.default_rng(7)
    for _ in range(200):
        size = (int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        res, patch = int(rng.choice([224, 336, 448, 980])), int(rng.choice([14, 16]))
        msn = int(rng.integers(1, 12))
        grid, overview, refine = ref.geometry(size, msn, res, patch)
        assert _core.image_best_grid(*size, msn, res, patch) == (grid or (0, 0))
        assert _core.image_overview_size(*size, msn, res, patch) == overview
        assert _core.image_refine_size(*size, msn, res, patch) == refine


def test_refine_size_with_given_grid():
    assert _core.image_refine_size(1000, 750, grid=(2, 2)) == ref.get_refine_size((1000, 750), (2, 2), 448, 14, True)
    assert _core.image_refine_size(300, 200, grid=(3, 1)) == ref.get_refine_size((300, 200), (3, 1), 448, 14, True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: _core.image_best_grid(0, 10),
        lambda: _core.image_best_grid(10, -1),
        lambda: _core.image_best_grid(20000, 20000),
        lambda: _core.image_best_grid(100, 100, max_slice_nums=0),
        lambda: _core.image_overview_size(100, 100, patch_size=0),
        lambda: _core.image_overview_size(100, 100, scale_resolution=0),
        lambda: _core.image_refine_size(100, 100, grid=(0, 2)),
        lambda: _core.image_placeholder_text(2, 0),
        lambda: _core.image_placeholder_text(1, 1, n_query=0),
        lambda: _core.image_placeholder_text(1, 1, image_id=-1),
    ],
)
def test_bad_geometry_arguments(call):
    with pytest.raises(InvalidArgumentError):
        call()


# ---------------------------------------------------------------------------------------------
# placeholders


def test_placeholder_text_matches_reference():
    for grid in [None, (1, 2), (2, 1), (3, 3), (7, 1)]:
        for image_id in [None, 0, 5, 42]:
            cols, rows = grid or (0, 0)
            assert _core.image_placeholder_text(cols, rows, 64, image_id) == ref.placeholder_for_grid(grid, image_id)
    size = (1000, 750)
    assert ref.placeholder(size, 0) == _core.image_placeholder_text(2, 2, 64, 0)
    # the worked example of the specification, section 3.4
    u = "<unk>" * 64
    want = f"<image_id>0</image_id><image>{u}</image><slice>{u}</slice><slice>{u}</slice>\n<slice>{u}</slice><slice>{u}</slice>"
    assert ref.placeholder(size, 0) == want


def test_placeholder_tokens_match_hf(vocab_gguf, ours_tok, hf_tok):
    start_ids = {hf_tok.convert_tokens_to_ids(t) for t in (ref.IM_START, ref.SLICE_START)}
    end_ids = {hf_tok.convert_tokens_to_ids(t) for t in (ref.IM_END, ref.SLICE_END)}
    hf_cache, ours_cache = {}, {}
    rng = np.random.default_rng(3)
    checked = 0
    for k, size in enumerate(SIZES):
        msn = MAX_SLICE_NUMS[k % len(MAX_SLICE_NUMS)]
        image_id = [None, 0, 1, 9, 10, 123, int(rng.integers(0, 100000))][k % 7]
        text = ref.placeholder(size, image_id or 0, msn, use_image_id=image_id is not None)
        if text not in hf_cache:
            ids = hf_tok.encode(text)
            hf_cache[text] = (ids, ref.image_positions(ids, start_ids, end_ids))
        cols, rows = _core.image_best_grid(*size, max_slice_nums=msn)
        key = (cols, rows, image_id)
        if key not in ours_cache:
            ids, pos = _core.image_placeholder_tokens(ours_tok, cols, rows, 64, image_id)
            ours_cache[key] = (list(ids), list(pos))
            assert list(ids) == ours_tok.encode(text, True)
        assert ours_cache[key] == hf_cache[text], (size, msn, image_id)
        checked += 1
    assert checked >= 500
    # by path (loaded once and cached) and through the Python Tokenizer class
    want = hf_tok.encode(ref.placeholder_for_grid((3, 2), 0))
    want_pos = ref.image_positions(want, start_ids, end_ids)
    for tok in (vocab_gguf, Path(vocab_gguf), vocab_gguf, minicpm_cpp.Tokenizer(vocab_gguf)):
        ids, pos = _core.image_placeholder_tokens(tok, 3, 2, 64, 0)
        assert (list(ids), list(pos)) == (want, want_pos)
    assert len(want_pos) == 64 * 7


def test_placeholder_positions_are_unk(ours_tok):
    unk = ours_tok.find_token("<unk>")
    for cols, rows, n_query in [(0, 0, 64), (2, 3, 64), (1, 1, 4), (9, 1, 32)]:
        ids, pos = _core.image_placeholder_tokens(ours_tok, cols, rows, n_query, None)
        assert len(pos) == n_query * (1 + cols * rows)
        assert all(ids[p] == unk for p in pos)
        assert ids[0] == ours_tok.find_token("<image>")
        if rows > 1:
            assert ours_tok.encode("\n", True)[0] in ids


def test_placeholder_bad_tokenizer_argument():
    with pytest.raises(InvalidArgumentError):
        _core.image_placeholder_tokens(12, 1, 1)


# ---------------------------------------------------------------------------------------------
# pixels


def _noise(rng, w, h):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient(rng, w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    fx, fy = rng.uniform(0.5, 3, 2)
    r = 127.5 + 127.5 * np.sin(fx * 2 * np.pi * x / max(w, 1) + fy * np.pi * y / max(h, 1))
    g = 255.0 * x / max(w - 1, 1)
    b = 255.0 * (0.5 + 0.5 * np.cos(fy * 2 * np.pi * y / max(h, 1)))
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def _pixel_cases():
    rng = np.random.default_rng(11)
    cases = []
    for w, h in [(50, 40), (300, 200), (640, 480), (1000, 750), (1024, 1024), (3000, 400), (60, 900),
                 (447, 449), (13, 7), (900, 1400), (1920, 1080), (1, 4000), (4000, 1), (1, 1), (5, 3000)]:
        cases.append((f"noise-{w}x{h}", _noise(rng, w, h)))
    for w, h in [(120, 80), (600, 300), (800, 600), (1500, 1500), (400, 2400), (2000, 250), (333, 555)]:
        cases.append((f"gradient-{w}x{h}", _gradient(rng, w, h)))
    media = media_dir()
    photos = sorted(media.glob("*.jp*g"))
    for p in photos:
        im = Image.open(p).convert("RGB")
        cases.append((p.name, np.array(im)))
        for w, h in [(200, 150), (1300, 700), (3000, 2000)]:
            cases.append((f"{p.name}-{w}x{h}", np.array(im.resize((w, h), Image.Resampling.BICUBIC))))
    return cases


def test_pixels_match_reference():
    cases = _pixel_cases()
    assert len(cases) >= 25
    worst, total_abs, total_n, exact = 0.0, 0.0, 0, 0
    report = []
    for name, arr in cases:
        want, grid = ref.preprocess(Image.fromarray(arr))
        got = _core.image_preprocess(arr)
        assert got["grid"] == (grid or (0, 0)), name
        pieces = [got["overview"]] + list(got["slices"])
        assert len(pieces) == len(want), name
        for g, w in zip(pieces, want):
            assert g.dtype == np.float32 and g.shape == w.shape, (name, g.shape, w.shape)
            d = np.abs(g.astype(np.float64) - w.astype(np.float64))
            worst = max(worst, float(d.max()))
            total_abs += float(d.sum())
            total_n += d.size
            exact += int(np.array_equal(g, w))
        report.append(name)
    mean = total_abs / total_n
    print(f"\npixels: {len(cases)} images, {total_n} values: max |diff| {worst:.3g}, mean {mean:.3g}, "
          f"{exact} pieces bit-identical")
    assert worst <= 2 / 255 + 1e-6
    assert mean <= 0.01 * 2 / 255
    if PILLOW_PASS_ORDER_13:
        assert worst == 0.0


def test_preprocess_custom_normalisation():
    rng = np.random.default_rng(5)
    arr = _gradient(rng, 700, 500)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    want, _ = ref.preprocess(Image.fromarray(arr), mean=mean, std=std)
    got = _core.image_preprocess(arr, mean=list(mean), std=list(std))
    for g, w in zip([got["overview"]] + list(got["slices"]), want):
        assert np.abs(g - w).max() <= 1e-5 + (0 if PILLOW_PASS_ORDER_13 else 2 / 255 / min(std))


def test_preprocess_non_contiguous_input():
    rng = np.random.default_rng(6)
    big = _noise(rng, 1200, 800)
    view = big[::2, 1::2]
    a = _core.image_preprocess(view)
    b = _core.image_preprocess(np.ascontiguousarray(view))
    assert np.array_equal(a["overview"], b["overview"])
    assert all(np.array_equal(x, y) for x, y in zip(a["slices"], b["slices"]))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10), np.uint8),
     np.zeros((0, 10, 3), np.uint8), [[1, 2, 3]], "not an array"],
    ids=["float32", "rgba", "2d", "empty", "list", "str"],
)
def test_preprocess_rejects_bad_arrays(bad):
    with pytest.raises(InvalidArgumentError):
        _core.image_preprocess(bad)
    with pytest.raises(InvalidArgumentError):
        _core.image_resize_bicubic(bad, 10, 10)


def test_preprocess_rejects_bad_normalisation():
    arr = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InvalidArgumentError):
        _core.image_preprocess(arr, std=[0.5, 0.0, 0.5])
    with pytest.raises(InvalidArgumentError):
        _core.image_preprocess(arr, mean=[0.5, 0.5])


# ---------------------------------------------------------------------------------------------
# resize


def _resize_cases():
    rng = np.random.default_rng(99)
    cases = []
    for _ in range(260):
        iw, ih, ow, oh = (int(v) for v in rng.integers(1, 260, 4))
        cases.append((iw, ih, ow, oh))
    # extreme ratios, identity, single rows/columns
    cases += [(1, 1, 5, 5), (5, 5, 1, 1), (1, 300, 7, 40), (300, 1, 40, 7), (2000, 3, 7, 1), (3, 2000, 1, 7),
              (640, 480, 640, 480), (640, 480, 640, 100), (640, 480, 100, 480), (17, 900, 30, 100)]
    # the pass-order rule of Pillow 13 at its boundary: height loses 2 x (columns lost) +-1 rows
    for iw, ih, dw in [(100, 200, 10), (150, 90, 20), (60, 240, 30), (80, 80, -20)]:
        for extra in (-1, 0, 1):
            cases.append((iw, ih, iw - dw, ih - (2 * dw + extra)))
    return [c for c in cases if min(c) > 0]


def test_resize_matches_pillow():
    rng = np.random.default_rng(12)
    worst, diffs, exact, n_values = 0, 0.0, 0, 0
    cases = _resize_cases()
    for k, (iw, ih, ow, oh) in enumerate(cases):
        arr = _noise(rng, iw, ih) if k % 2 == 0 else _gradient(rng, iw, ih)
        want = np.asarray(Image.fromarray(arr).resize((ow, oh), Image.Resampling.BICUBIC)).astype(np.int32)
        got = _core.image_resize_bicubic(arr, ow, oh)
        assert got.shape == (oh, ow, 3) and got.dtype == np.uint8
        d = np.abs(got.astype(np.int32) - want)
        if PILLOW_PASS_ORDER_13 or k % 2 == 1:
            worst = max(worst, int(d.max()))
        diffs += float(d.sum())
        n_values += d.size
        exact += int(d.max() == 0)
    print(f"\nresize: {len(cases)} sizes, max |diff| {worst}, mean {diffs / n_values:.3g}, "
          f"{exact} bit-identical")
    assert worst <= 1
    if PILLOW_PASS_ORDER_13:
        assert exact == len(cases)


def test_resize_large_photo():
    p = sorted(media_dir().glob("*.jp*g"))[0]
    im = Image.open(p).convert("RGB")
    arr = np.array(im)
    for size in [(1680, 952), (602, 336), (97, 1000), (3000, 31)]:
        want = np.asarray(im.resize(size, Image.Resampling.BICUBIC)).astype(np.int32)
        d = np.abs(_core.image_resize_bicubic(arr, *size).astype(np.int32) - want)
        assert d.max() <= (0 if PILLOW_PASS_ORDER_13 else 1), size


def test_resize_forced_pass_order():
    rng = np.random.default_rng(1)
    arr = _noise(rng, 50, 300)
    h_first = _core.image_resize_bicubic(arr, 80, 100, vertical_first=False)
    v_first = _core.image_resize_bicubic(arr, 80, 100, vertical_first=True)
    step = np.asarray(Image.fromarray(arr).resize((50, 100), Image.Resampling.BICUBIC).resize((80, 100), Image.Resampling.BICUBIC))
    assert np.array_equal(v_first, step)
    assert not np.array_equal(h_first, v_first)


def test_resize_bad_sizes():
    arr = np.zeros((4, 4, 3), np.uint8)
    for w, h in [(0, 4), (4, 0), (-1, 3), (20000, 20000)]:
        with pytest.raises(InvalidArgumentError):
            _core.image_resize_bicubic(arr, w, h)


# ---------------------------------------------------------------------------------------------
# load_image


def _png_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png_header(w=100000, h=100000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def sample_rgb():
    rng = np.random.default_rng(21)
    return Image.fromarray(_gradient(rng, 96, 64))


def _mode_images(sample):
    rng = np.random.default_rng(22)
    out = {
        "L": sample.convert("L"),
        "LA": sample.convert("LA"),
        "RGBA": Image.fromarray(np.dstack([np.array(sample), rng.integers(0, 256, (64, 96), dtype=np.uint8)])),
        "P": sample.convert("P", palette=Image.Palette.ADAPTIVE, colors=37),
        "1": sample.convert("1"),
        "I;16": Image.fromarray((rng.integers(0, 65536, (64, 96))).astype(np.uint16)),
        "I": Image.fromarray(rng.integers(-1000, 70000, (64, 96)).astype(np.int32)),
        "CMYK": sample.convert("CMYK"),
    }
    p = out["P"].copy()
    p.info["transparency"] = 3
    out["P-transparent"] = p
    return out


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P-transparent", "1", "I;16", "I", "CMYK"])
def test_load_image_modes_like_reference(tmp_path, sample_rgb, mode):
    im = _mode_images(sample_rgb)[mode]
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I" else "PNG")
    path = tmp_path / f"img.{fmt.lower()}"
    im.save(path, format=fmt)
    want = np.array(Image.open(path).convert("RGB"))
    got = load_image(str(path))
    assert got.dtype == np.uint8 and got.shape == want.shape and got.flags.c_contiguous
    assert np.array_equal(got, want)
    assert np.array_equal(load_image(im), np.array(im.convert("RGB")))


def test_load_image_exif_orientation_not_applied(tmp_path, sample_rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    sample_rgb.save(path, format="JPEG", exif=exif)
    assert Image.open(path).getexif().get(0x0112) == 6
    got = load_image(path)
    want = np.array(Image.open(path).convert("RGB"))
    assert got.shape == (64, 96, 3)  # as stored, not as displayed
    assert np.array_equal(got, want)


def test_load_image_input_kinds(tmp_path, sample_rgb):
    data = _png_bytes(sample_rgb)
    path = tmp_path / "x y.png"
    path.write_bytes(data)
    want = np.array(sample_rgb)
    b64 = base64.b64encode(data).decode()
    for x in [str(path), path, path.as_uri(), data, bytearray(data), memoryview(data),
              f"data:image/png;base64,{b64}", f"data:image/png;base64,{b64.rstrip('=')}", sample_rgb, want,
              np.asfortranarray(want)]:
        got = load_image(x)
        assert np.array_equal(got, want), type(x)
        assert got.flags.c_contiguous
    grey = np.array(sample_rgb.convert("L"))
    assert np.array_equal(load_image(grey), np.array(sample_rgb.convert("L").convert("RGB")))
    rgba = np.dstack([want, np.full(want.shape[:2], 7, np.uint8)])
    assert np.array_equal(load_image(rgba), want)


def test_load_image_real_photos():
    for p in sorted(media_dir().glob("*.jp*g")):
        assert np.array_equal(load_image(p), np.array(Image.open(p).convert("RGB")))


def test_load_image_corrupt_and_truncated(sample_rgb, tmp_path):
    rng = np.random.default_rng(23)
    jpeg = _jpeg_bytes(Image.fromarray(_noise(rng, 200, 150)))
    png = _png_bytes(Image.fromarray(_noise(rng, 200, 150)))
    bad = {
        "garbage": bytes(rng.integers(0, 256, 5000, dtype=np.uint8)),
        "jpeg-header-garbage": b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        "jpeg-truncated": jpeg[: len(jpeg) // 2],
        "png-truncated": png[: int(len(png) * 0.6)],
        "png-header-only": png[:40],
        "empty": b"",
    }
    for name, data in bad.items():
        with pytest.raises(InvalidArgumentError):
            load_image(data)
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        with pytest.raises(InvalidArgumentError, match=path.name):
            load_image(str(path))


def test_load_image_refuses_empty_images():
    with pytest.raises(InvalidArgumentError):
        load_image(Image.new("RGB", (0, 10)))
    with pytest.raises(InvalidArgumentError):
        load_image(np.zeros((5, 0, 3), np.uint8))


def test_load_image_refuses_decompression_bombs(monkeypatch, tmp_path):
    data = _huge_png_header()
    for limit in (Image.MAX_IMAGE_PIXELS, None):  # Pillow's own check on or off: ours stays
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        t0 = time.perf_counter()
        with pytest.raises(InvalidArgumentError, match="100000x100000|too large|pixels"):
            load_image(data)
        assert time.perf_counter() - t0 < 1.0
    # just over our limit, under Pillow's error threshold when that is disabled
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    w = 20000
    h = MAX_IMAGE_PIXELS // w + 1
    with pytest.raises(InvalidArgumentError, match="pixels"):
        load_image(_huge_png_header(w, h))


def test_load_image_other_refusals(tmp_path):
    with pytest.raises(FileError):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(InvalidArgumentError):
        load_image(str(tmp_path))
    with pytest.raises(InvalidArgumentError):
        load_image("https://example.com/cat.png")
    with pytest.raises(InvalidArgumentError):
        load_image("data:image/png;base64,@@@@")
    with pytest.raises(InvalidArgumentError):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidArgumentError):
        load_image(3.5)


def test_preprocess_image_helper(sample_rgb):
    got = preprocess_image(_png_bytes(sample_rgb))
    want, _ = ref.preprocess(sample_rgb)
    assert got["grid"] == (0, 0)
    assert np.abs(got["overview"] - want[0]).max() <= 2 / 255 + 1e-6
