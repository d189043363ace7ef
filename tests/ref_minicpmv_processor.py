"""Ground truth for the image preprocessing tests: the MiniCPM-V image processor's algorithm
(MiniCPMVImageProcessor in the MiniCPM-V 2.6 / o 2.6 / V 4.5 / o 4.5 processors), ported to
plain Python with Pillow doing the resizing, as the reference does.

What the reference does for one image (all sizes are (width, height), grids (cols, rows)):

* the image is converted to RGB (``.convert("RGB")``), with no EXIF transposition;
* ``get_sliced_grid`` decides whether to slice and picks the grid whose aspect ratio is the
  closest in log space to the image's (first candidate wins ties);
* unsliced: one image, resized (up or down) to about ``scale_resolution``^2 pixels;
  sliced: an overview, only ever shrunk, then a "refine" image resized so that it splits
  into ``cols x rows`` cells of about ``scale_resolution``^2 pixels each, cut row by row;
* every piece is resized with ``Image.resize(size, BICUBIC)``, turned into float32 / 255,
  normalised with float32 mean/std, and laid out channel-first;
* the prompt placeholder of the image is a string of special tokens; its image positions
  are the tokens strictly between each ``<image>``/``<slice>`` and the following end token.

Python semantics matter and are kept: ``round`` rounds halves to even, ``int`` truncates, and
sizes are compared and divided as Python floats (double precision).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

SCALE_RESOLUTION = 448
PATCH_SIZE = 14
MAX_SLICE_NUMS = 9
IMAGE_FEATURE_SIZE = 64
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)

IM_START, IM_END = "<image>", "</image>"
SLICE_START, SLICE_END = "<slice>", "</slice>"
UNK = "<unk>"
IM_ID_START, IM_ID_END = "<image_id>", "</image_id>"

Size = Tuple[int, int]
Grid = Optional[Tuple[int, int]]


def ensure_divide(length: float, patch_size: int) -> int:
    """Nearest multiple of ``patch_size`` (Python round: halves to even), at least one patch."""
    return max(round(length / patch_size) * patch_size, patch_size)


def find_best_resize(size, scale_resolution: int, patch_size: int, allow_upscale: bool = False) -> Size:
    """Keep the aspect ratio, aim at scale_resolution^2 pixels (only shrinking unless allowed)."""
    width, height = size
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        aspect = width / height
        height = int(scale_resolution / math.sqrt(aspect))
        width = int(height * aspect)
    return ensure_divide(width, patch_size), ensure_divide(height, patch_size)


def get_refine_size(size: Size, grid: Tuple[int, int], scale_resolution: int, patch_size: int,
                    allow_upscale: bool = False) -> Size:
    """Size of the image that is cut into the grid: grid times the best size of one cell."""
    width, height = size
    cols, rows = grid
    cell_w = ensure_divide(width, cols) / cols
    cell_h = ensure_divide(height, rows) / rows
    best_w, best_h = find_best_resize((cell_w, cell_h), scale_resolution, patch_size, allow_upscale)
    return best_w * cols, best_h * rows


def get_sliced_grid(size: Size, max_slice_nums: int, scale_resolution: int = SCALE_RESOLUTION) -> Grid:
    """(cols, rows) of the slicing, or None when the image is used whole."""
    width, height = size
    target_log = math.log(width / height)
    area_ratio = width * height / (scale_resolution * scale_resolution)
    multiple = min(math.ceil(area_ratio), max_slice_nums)
    if multiple <= 1:
        return None
    counts = [n for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= max_slice_nums]
    best, best_err = None, float("inf")
    for n in counts:
        for cols in range(1, n + 1):
            if n % cols:
                continue
            rows = n // cols
            err = abs(target_log - math.log(cols / rows))
            if err < best_err:  # strict: the first of equal candidates stays
                best, best_err = (cols, rows), err
    return best


def geometry(size: Size, max_slice_nums: int = MAX_SLICE_NUMS, scale_resolution: int = SCALE_RESOLUTION,
             patch_size: int = PATCH_SIZE):
    """(grid, overview size, refine size or None) for an image of ``size``."""
    grid = get_sliced_grid(size, max_slice_nums, scale_resolution)
    if grid is None:
        return None, find_best_resize(size, scale_resolution, patch_size, allow_upscale=True), None
    overview = find_best_resize(size, scale_resolution, patch_size)
    refine = get_refine_size(size, grid, scale_resolution, patch_size, allow_upscale=True)
    return grid, overview, refine


def slice_image(image, max_slice_nums: int = MAX_SLICE_NUMS, scale_resolution: int = SCALE_RESOLUTION,
                patch_size: int = PATCH_SIZE):
    """(overview PIL image, list of slice PIL images in row-major order, grid)."""
    from PIL import Image

    grid, overview_size, refine_size = geometry(image.size, max_slice_nums, scale_resolution, patch_size)
    overview = image.resize(overview_size, resample=Image.Resampling.BICUBIC)
    slices = []
    if grid is not None:
        refine = image.resize(refine_size, resample=Image.Resampling.BICUBIC)
        cell_w = int(refine.size[0] / grid[0])
        cell_h = int(refine.size[1] / grid[1])
        for top in range(0, refine.size[1], cell_h):
            for left in range(0, refine.size[0], cell_w):
                slices.append(refine.crop((left, top, left + cell_w, top + cell_h)))
    return overview, slices, grid


def normalise(image, mean: Sequence[float] = NORM_MEAN, std: Sequence[float] = NORM_STD) -> np.ndarray:
    """float32 [3, h, w]: (x / 255 - mean) / std, every step in float32 as the reference."""
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image, max_slice_nums: int = MAX_SLICE_NUMS, scale_resolution: int = SCALE_RESOLUTION,
               patch_size: int = PATCH_SIZE, mean=NORM_MEAN, std=NORM_STD):
    """(list of float32 [3, h, w]: overview then slices, grid) for a PIL image."""
    overview, slices, grid = slice_image(image.convert("RGB"), max_slice_nums, scale_resolution, patch_size)
    return [normalise(p, mean, std) for p in [overview] + slices], grid


def placeholder(size: Size, image_idx: int = 0, max_slice_nums: int = MAX_SLICE_NUMS, use_image_id: bool = True,
                n_query: int = IMAGE_FEATURE_SIZE, scale_resolution: int = SCALE_RESOLUTION) -> str:
    """The text that replaces one image marker in the prompt."""
    grid = get_sliced_grid(size, max_slice_nums, scale_resolution)
    return placeholder_for_grid(grid, image_idx if use_image_id else None, n_query)


def placeholder_for_grid(grid: Grid, image_id: Optional[int], n_query: int = IMAGE_FEATURE_SIZE) -> str:
    text = ""
    if image_id is not None:
        text += f"{IM_ID_START}{image_id}{IM_ID_END}"
    text += IM_START + UNK * n_query + IM_END
    if grid is not None:
        cell = SLICE_START + UNK * n_query + SLICE_END
        text += "\n".join(cell * grid[0] for _ in range(grid[1]))
    return text


def image_positions(ids: Sequence[int], start_ids: Sequence[int], end_ids: Sequence[int]) -> List[int]:
    """Indices of the tokens strictly between each start token and the matching end token,
    pairing the k-th start with the k-th end as the reference's image_bound does."""
    starts = [i + 1 for i, t in enumerate(ids) if t in start_ids]
    ends = [i for i, t in enumerate(ids) if t in end_ids]
    out: List[int] = []
    for s, e in zip(starts, ends):
        out.extend(range(s, e))
    return out
