"""Parity of the C++ vision tower and resampler with the PyTorch reference (ref_minicpmv_vision.py).

Tiny random checkpoints (tests/tiny_models.py) are converted to F32 GGUF and run through
``_core.VisionModel``; every stage is compared with the reference in float32:

* the host-side inputs: NaViT position ids (exact) and the resampler's 2D sin-cos table;
* post-LayerNorm ViT features per slice (relative error 1e-4, max-abs normalised);
* the resampler output per slice;
* ``encode`` of many slices of mixed sizes (batched by size in C++) against one slice at a time;
* a llama.cpp-style legacy mmproj (swapped ffn names, no minicpm.* keys) gives the same output;
* bad arrays and broken files raise the library's errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

import ref_minicpmv_vision as ref  # noqa: E402
import tiny_models  # noqa: E402

from gguf_edit import rewrite  # noqa: E402

core = pytest.importorskip("minicpm_cpp._core")
errors = pytest.importorskip("minicpm_cpp.errors")

RTOL = 1e-4
PATCH = 14

# (height, width) of the slices checked one by one: a single patch, a full 448 slice, the wide
# and tall overviews of a 2:1 image, grids where k/n hits bucket boundaries (35 = 70/2 patches,
# 25), an extreme strip, and one above the 32x32 patches reserved at load (buffers must grow).
SIZES = [
    (14, 14),
    (448, 448),
    (336, 602),
    (602, 336),
    (490, 490),
    (350, 350),
    (98, 700),
    (532, 476),
]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def pixels(h: int, w: int, seed: int) -> np.ndarray:
    # Normalised pixel range of the processor ((x - 0.5) / 0.5 in [-1, 1]).
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(3, h, w)).astype(np.float32)


class Tower:
    def __init__(self, hf_dir: Path, path: Path):
        self.hf_dir = hf_dir
        self.path = path
        self.model = core.VisionModel(str(path), "cpu")
        self.parts = tiny_models.load_reference_vision(hf_dir)

    @torch.no_grad()
    def ref_vit(self, px: np.ndarray) -> np.ndarray:
        return ref.vit_features(self.parts, torch.from_numpy(px)).numpy()

    @torch.no_grad()
    def ref_resampler(self, feats: np.ndarray, h: int, w: int) -> np.ndarray:
        return ref.resampler_forward(self.parts, torch.from_numpy(feats), (h // PATCH, w // PATCH)).numpy()


_towers: Dict[str, Tower] = {}


@pytest.fixture(scope="module", params=["v45", "v26"])
def tower(request, converted) -> Tower:
    name = request.param
    if name not in _towers:
        fixture = "tiny_minicpmv45_vision_dir" if name == "v45" else "tiny_minicpmv26_vision_dir"
        hf_dir = request.getfixturevalue(fixture)
        _towers[name] = Tower(hf_dir, converted(hf_dir, "f32"))
    return _towers[name]


# ---- host-side inputs -------------------------------------------------------------------------


def test_position_ids_match_reference():
    for n in range(1, 301):
        got = core.vision_position_ids(1, n, 70)
        want = ref.navit_position_ids(1, n, 70).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"1 x {n} patches")
    for ph, pw in [(24, 43), (43, 24), (35, 35), (25, 50), (70, 70), (71, 3), (100, 100)]:
        np.testing.assert_array_equal(core.vision_position_ids(ph, pw, 70), ref.navit_position_ids(ph, pw, 70).numpy())
    # another table side (ids stay inside side^2)
    np.testing.assert_array_equal(core.vision_position_ids(9, 13, 32), ref.navit_position_ids(9, 13, 32).numpy())


@pytest.mark.parametrize("dim", [128, 256, 3584, 4096])
def test_resampler_pos_embed_matches_reference(dim):
    table = ref.get_2d_sincos_pos_embed(dim, (70, 70))
    for ph, pw in [(1, 1), (24, 43), (43, 24), (70, 70)]:
        got = core.vision_resampler_pos_embed(dim, ph, pw)
        want = table[:ph, :pw].reshape(ph * pw, dim)
        # float32 in both; sin/cos of arguments up to ~69 differ by an ulp of the argument
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


# ---- model ------------------------------------------------------------------------------------


def test_hparams(tower):
    cfg = tower.parts.config
    hp = tower.model.hparams
    assert hp["n_embd"] == cfg.hidden_size
    assert hp["n_layer"] == cfg.effective_layers
    assert hp["n_head"] == cfg.num_attention_heads
    assert hp["n_ff"] == cfg.intermediate_size
    assert hp["patch_size"] == PATCH
    assert hp["pos_side"] == cfg.num_patches_per_side
    assert hp["n_pos"] == cfg.num_patches_per_side**2
    assert hp["n_query"] == cfg.query_num
    assert hp["rs_dim"] == cfg.embed_dim
    assert hp["rs_heads"] == cfg.resampler_heads
    assert hp["image_size"] == 448
    assert not hp["ffn_swapped"]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_slice_parity(tower, size):
    h, w = size
    px = pixels(h, w, seed=h * 1000 + w)
    feats = tower.model.encode_vit(px)
    want_feats = tower.ref_vit(px)
    assert feats.shape == ((h // PATCH) * (w // PATCH), tower.model.hparams["n_embd"])
    e_vit = rel_err(feats, want_feats)
    assert e_vit < RTOL, f"ViT features {h}x{w}: relative error {e_vit:.3g}"

    emb = tower.model.encode([px])
    want_emb = tower.ref_resampler(want_feats, h, w)
    assert emb.shape == (1, tower.model.hparams["n_query"], tower.model.hparams["rs_dim"])
    e_rs = rel_err(emb[0], want_emb)
    assert e_rs < RTOL, f"resampler {h}x{w}: relative error {e_rs:.3g}"


def test_multi_slice_encode(tower):
    # An image-like batch: overview, then 3x2 slices of one size, plus other sizes interleaved.
    sizes = [(336, 602), (224, 294), (224, 294), (224, 294), (14, 14), (224, 294), (224, 294), (448, 448), (224, 294)]
    slices = [pixels(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    out = tower.model.encode(slices)
    assert out.shape == (len(slices), tower.model.hparams["n_query"], tower.model.hparams["rs_dim"])
    for i, px in enumerate(slices):
        one = tower.model.encode([px])[0]
        np.testing.assert_allclose(out[i], one, rtol=0, atol=1e-6 * max(1.0, float(np.abs(one).max())))
    want = ref.vision_embeddings(tower.parts, [torch.from_numpy(s) for s in slices]).numpy()
    assert rel_err(out, want) < RTOL
    assert tower.model.encode([]).shape == (0, tower.model.hparams["n_query"], tower.model.hparams["rs_dim"])


def test_reference_batched_path_agrees(tower):
    # The reference's own padded batch equals per-slice processing; so does ours.
    sizes = [(336, 602), (224, 294), (224, 294)]
    slices = [torch.from_numpy(pixels(h, w, seed=10 + i)) for i, (h, w) in enumerate(sizes)]
    want = ref.vision_embeddings_batched(tower.parts, slices).numpy()
    got = tower.model.encode([s.numpy() for s in slices])
    assert rel_err(got, want) < RTOL


# ---- other file layouts ----------------------------------------------------------------------

_mmproj: Dict[str, Path] = {}


def mmproj_file(tower: Tower, tmp_dir: Path) -> Path:
    """The converter's llama.cpp-style mmproj of the tower's checkpoint: the vision tower and
    resampler alone, small and quick to rewrite for the tests below."""
    key = str(tower.hf_dir)
    if key not in _mmproj:
        from minicpm_cpp.convert import convert

        out = tmp_dir / "mmproj-f32.gguf"
        convert(tower.hf_dir, tmp_dir / "llm-f32.gguf", "f32", force=True, progress=False, log=lambda m: None,
                llm_only=True, mmproj=out)
        _mmproj[key] = out
    return _mmproj[key]


@pytest.fixture
def small(tower, tmp_path_factory) -> Path:
    return mmproj_file(tower, tmp_path_factory.mktemp("mmproj"))


def test_mmproj_file(tower, small):
    """The mmproj file gives exactly what the single model file gives."""
    m = core.VisionModel(str(small))
    assert m.hparams == tower.model.hparams
    px = pixels(224, 294, seed=4)
    np.testing.assert_array_equal(m.encode([px]), tower.model.encode([px]))


def _legacy_copy(src: Path, dst: Path, n_layer: int) -> Path:
    """clip.cpp's older MiniCPM-V layout: fc1 stored as ffn_down and fc2 as ffn_up, no minicpm.*
    keys and no clip.minicpmv_query_num."""
    reader = gguf.GGUFReader(str(src))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    replace = {}
    for il in range(n_layer):
        for kind in ("weight", "bias"):
            up, down = f"v.blk.{il}.ffn_up.{kind}", f"v.blk.{il}.ffn_down.{kind}"
            replace[up], replace[down] = tensors[down], tensors[up]
    drop_keys = [name for name in reader.fields if name.startswith("minicpm.")]
    drop_keys.append("clip.minicpmv_query_num")
    return rewrite(src, dst, replace_tensors=replace, drop_keys=drop_keys)


def test_legacy_mmproj_layout(tower, small, tmp_path):
    hp = tower.model.hparams
    legacy = _legacy_copy(small, tmp_path / "legacy.gguf", hp["n_layer"])
    m = core.VisionModel(str(legacy))
    assert m.hparams["ffn_swapped"]
    assert m.hparams["rs_heads"] == hp["rs_dim"] // 128
    assert m.hparams["n_query"] == hp["n_query"]
    px = pixels(336, 602, seed=3)
    np.testing.assert_array_equal(m.encode([px]), tower.model.encode([px]))


# ---- bad input --------------------------------------------------------------------------------


def test_bad_arrays(tower):
    m = tower.model
    with pytest.raises(errors.InvalidArgumentError, match="float32"):
        m.encode_vit(np.zeros((3, 14, 14), dtype=np.float64))
    with pytest.raises(errors.InvalidArgumentError, match=r"\[3, h, w\]"):
        m.encode_vit(np.zeros((14, 14), dtype=np.float32))
    with pytest.raises(errors.InvalidArgumentError, match=r"\[3, h, w\]"):
        m.encode_vit(np.zeros((4, 14, 14), dtype=np.float32))
    with pytest.raises(errors.InvalidArgumentError, match="multiples of the patch size"):
        m.encode_vit(np.zeros((3, 14, 20), dtype=np.float32))
    with pytest.raises(errors.InvalidArgumentError, match="multiples of the patch size"):
        m.encode([np.zeros((3, 14, 14), dtype=np.float32), np.zeros((3, 0, 14), dtype=np.float32)])
    with pytest.raises(errors.InvalidArgumentError, match="numpy array"):
        m.encode([[1.0, 2.0]])
    with pytest.raises(errors.InvalidArgumentError, match="list"):
        m.encode(np.zeros((3, 14, 14), dtype=np.float32))
    # non-contiguous float32 input is accepted (copied)
    px = pixels(28, 28, seed=1)
    wide = np.zeros((3, 28, 56), dtype=np.float32)
    wide[:, :, ::2] = px
    np.testing.assert_array_equal(m.encode_vit(wide[:, :, ::2]), m.encode_vit(px))


def _broken(src: Path, dst: Path, **kw) -> str:
    return str(rewrite(src, dst, **kw))


def test_bad_files(small, tmp_path):
    src = small
    with pytest.raises(errors.FormatError, match="clip.vision.attention.head_count"):
        core.VisionModel(_broken(src, tmp_path / "a.gguf", drop_keys=["clip.vision.attention.head_count"]))
    with pytest.raises(errors.FormatError, match="not a multiple of head_count"):
        core.VisionModel(
            _broken(src, tmp_path / "b.gguf", set_keys={"clip.vision.attention.head_count": (7, gguf.GGUFValueType.UINT32)})
        )
    reader = gguf.GGUFReader(str(src))
    pos = next(np.array(t.data) for t in reader.tensors if t.name == "v.position_embd.weight")
    with pytest.raises(errors.FormatError, match="v.position_embd.weight"):
        core.VisionModel(_broken(src, tmp_path / "c.gguf", replace_tensors={"v.position_embd.weight": pos[:-1]}))
    with pytest.raises(errors.FormatError, match="v.blk.0.attn_q.weight"):
        core.VisionModel(_broken(src, tmp_path / "d.gguf", drop_tensors=["v.blk.0.attn_q.weight"]))
    with pytest.raises(errors.FormatError, match="clip.minicpmv_query_num"):
        core.VisionModel(
            _broken(src, tmp_path / "e.gguf", set_keys={"clip.minicpmv_query_num": (3, gguf.GGUFValueType.UINT32)})
        )
    with pytest.raises(errors.UnsupportedError, match="projector type"):
        core.VisionModel(
            _broken(src, tmp_path / "f.gguf", set_keys={"clip.projector_type": ("mlp", gguf.GGUFValueType.STRING)})
        )


@pytest.mark.parametrize("size", [(448, 448), (336, 602)], ids=["448x448", "336x602"])
def test_padded_head_flash_attention(tower, size):
    """The GPU path pads the attention head size to one with fast kernels (zero columns):
    forced on the CPU here, it must give the reference's ViT features and resampler output."""
    padded = core.VisionModel(str(tower.path), "cpu", pad_heads=True)
    assert padded.hparams["pad_heads"]
    h, w = size
    px = pixels(h, w, seed=7 * h + w)
    want_feats = tower.ref_vit(px)
    assert rel_err(padded.encode_vit(px), want_feats) < RTOL
    assert rel_err(padded.encode([px])[0], tower.ref_resampler(want_feats, h, w)) < RTOL


@pytest.mark.parametrize("pad", [False, True])
def test_fused_qkv_vision(tower, pad):
    """One Q|K|V product per ViT layer (the GPU default), forced on the CPU, with and without
    the padded-head attention path: reference ViT features and resampler output."""
    fused = core.VisionModel(str(tower.path), "cpu", fuse_qkv=True, pad_heads=pad)
    for h, w in [(448, 448), (280, 504)]:
        px = pixels(h, w, seed=11 * h + w)
        want_feats = tower.ref_vit(px)
        assert rel_err(fused.encode_vit(px), want_feats) < RTOL
        assert rel_err(fused.encode([px])[0], tower.ref_resampler(want_feats, h, w)) < RTOL


@pytest.mark.parametrize("pad", [False, True])
def test_folded_norms_vision(tower, pad):
    """The GPU layout (``vision_fold_norms``), forced on the CPU: each LayerNorm's scale and
    shift folded into the product after it (Q|K|V, fc1), and with ``pad`` the attention heads
    stored padded in the Q|K|V rows and the output matrix's columns, so the graph runs flash
    attention at the padded size with no padding of its own. F32 weights: the reference within
    float rounding."""
    folded = core.VisionModel(str(tower.path), "cpu", pad_heads=pad, fold_norms=True)
    hp = folded.hparams
    d = hp["n_embd"] // hp["n_head"]
    assert hp["norms_folded"]
    if pad:
        assert hp["flash"] and hp["head_stored"] > d
    else:
        assert hp["head_stored"] == d
    for h, w in [(448, 448), (280, 504), (336, 602)]:
        px = pixels(h, w, seed=13 * h + w)
        want_feats = tower.ref_vit(px)
        assert rel_err(folded.encode_vit(px), want_feats) < RTOL
        assert rel_err(folded.encode([px])[0], tower.ref_resampler(want_feats, h, w)) < RTOL


def test_folded_norms_vision_f16(tower, converted):
    """F16 weights: folding rounds W diag(g) once more; its error against the reference stays
    within that of the file's own layout (plus a margin for the one extra rounding)."""
    f16 = str(converted(tower.hf_dir, "f16"))
    plain = core.VisionModel(f16, "cpu", fold_norms=False)
    folded = core.VisionModel(f16, "cpu", pad_heads=True, fold_norms=True)
    assert folded.hparams["norms_folded"] and not plain.hparams["norms_folded"]
    for h, w in [(448, 448), (336, 602)]:
        px = pixels(h, w, seed=17 * h + w)
        want_feats = tower.ref_vit(px)
        e_plain = rel_err(plain.encode_vit(px), want_feats)
        e_fold = rel_err(folded.encode_vit(px), want_feats)
        assert e_plain < 5e-3 and e_fold < 2 * e_plain + 1e-3, (e_plain, e_fold)
        want = tower.ref_resampler(want_feats, h, w)
        assert rel_err(folded.encode([px])[0], want) < 2 * rel_err(plain.encode([px])[0], want) + 1e-3
