"""Image inputs: decoding to the RGB8 array the MiniCPM-V reference processor would see.

:func:`load_image` accepts what a caller or an OpenAI-style content part may hold:

* a ``PIL.Image.Image``;
* a path (``str`` or ``os.PathLike``), or a ``file://`` URL;
* a ``data:`` URL (``data:image/png;base64,...``; non-base64 data is percent-decoded);
* raw encoded bytes (``bytes``, ``bytearray``, ``memoryview``);
* a numpy ``uint8`` array of shape (height, width, 3) (also (h, w), (h, w, 1) and (h, w, 4),
  converted like Pillow's ``convert("RGB")``: grey replicated, alpha dropped).

Decoding mirrors the reference exactly: ``Image.open(...)`` then ``.convert("RGB")``. Every
mode Pillow reads is converted the way Pillow does it (grey, palette, 16-bit, CMYK, LA and
RGBA: the alpha channel is dropped, not composited). **EXIF orientation is not applied**: the
reference does not call ``ImageOps.exif_transpose``, so a photo stored sideways with an
orientation tag is seen sideways, here as there. Multi-frame files give their first frame.

Refused with :class:`~minicpm_cpp.errors.InvalidArgumentError` (naming the input): data that
Pillow cannot identify or decode (corrupt or truncated files, unless the caller has set
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``), images with a zero side, and images with more than
:data:`MAX_IMAGE_PIXELS` pixels (Pillow's decompression-bomb limit) -- the last checked from
the header, before any pixel is decoded. A missing file raises
:class:`~minicpm_cpp.errors.FileError`.

Pillow is needed for anything but numpy input.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from ._files import open_regular, refuse_local
from .errors import FileError, InvalidArgumentError

__all__ = ["MAX_IMAGE_PIXELS", "load_image", "preprocess_image"]

#: Largest accepted width * height (Pillow's DecompressionBombError threshold).
MAX_IMAGE_PIXELS: int = int(_core.image_max_pixels)


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("decoding image files needs Pillow: pip install pillow") from e
    return Image


def _check_size(width: int, height: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidArgumentError(f"{name}: image size {width}x{height} is empty")
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidArgumentError(
            f"{name}: image size {width}x{height} has more than {MAX_IMAGE_PIXELS} pixels "
            "(decompression bomb limit)"
        )


def _pil_to_rgb(im: Any, name: str) -> np.ndarray:
    _check_size(im.size[0], im.size[1], name)
    try:
        rgb = im.convert("RGB")  # loads the pixels; the reference's only conversion
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        raise InvalidArgumentError(f"{name}: cannot decode image: {e}") from e
    arr = np.array(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - Pillow guarantees RGB
        raise InvalidArgumentError(f"{name}: decoded image has shape {arr.shape}, expected (h, w, 3)")
    return arr


def _decode(fp: Any, name: str) -> np.ndarray:
    Image = _pil()
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; Pillow's warning band is below it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise InvalidArgumentError(f"{name}: image is too large ({e})") from e
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, SyntaxError, struct errors...
        raise InvalidArgumentError(f"{name}: not a readable image: {e}") from e
    try:
        return _pil_to_rgb(im, name)
    finally:
        im.close()


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    if len(data) == 0:
        raise InvalidArgumentError(f"{name}: no image data")
    return _decode(io.BytesIO(data), name)


def _decode_path(path: str, name: Optional[str] = None, allow_local_files: bool = True) -> np.ndarray:
    name = name or path
    if not allow_local_files:
        raise refuse_local(name)
    with open_regular(path, name, "image") as f:
        return _decode(f, name)


def _data_url_bytes(url: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise InvalidArgumentError("data URL: missing ',' before the data")
    params = head[len("data:"):].split(";")
    if params and params[-1].strip().lower() == "base64":
        try:
            compact = "".join(payload.split())
            return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidArgumentError(f"data URL: bad base64 data: {e}") from e
    return urllib.parse.unquote_to_bytes(payload)


def _file_url_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgumentError(f"{url}: file URLs of other hosts are not supported")
    return urllib.request.url2pathname(parsed.path)


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise InvalidArgumentError(f"image array must have dtype uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        _check_size(arr.shape[1], arr.shape[0], "image array")
        return np.ascontiguousarray(arr)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 4)):
        _check_size(arr.shape[1], arr.shape[0], "image array")
        Image = _pil()
        src = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
        return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(src)), "image array")
    raise InvalidArgumentError(
        f"image array must have shape (height, width, 3) (or (h, w), (h, w, 1), (h, w, 4)), got {arr.shape}"
    )


def load_image(image: Any, *, allow_local_files: bool = True) -> np.ndarray:
    """Decode ``image`` into a C-contiguous uint8 array (height, width, 3), RGB.

    See the module documentation for the accepted inputs and the refusals. With
    ``allow_local_files=False`` paths and ``file://`` URLs are refused (one error text, whether
    or not the file exists).
    """
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(image), "image bytes")
    if isinstance(image, str):
        lowered = image[:16].lower()
        if lowered.startswith("data:"):
            return _decode_bytes(_data_url_bytes(image), "data URL")
        if lowered.startswith("file://"):
            if not allow_local_files:
                raise refuse_local(image[:200])
            return _decode_path(_file_url_path(image), image)
        if lowered.startswith(("http://", "https://")):
            raise InvalidArgumentError(f"{image}: remote images are not fetched; download the file first")
        return _decode_path(image, None, allow_local_files)
    if isinstance(image, os.PathLike):
        return _decode_path(os.fspath(image), None, allow_local_files)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _pil_to_rgb(image, "PIL image")
    raise InvalidArgumentError(
        "image must be a PIL image, a path, a file:// or data: URL, encoded bytes or a uint8 array, "
        f"got {type(image).__name__}"
    )


def preprocess_image(
    image: Any,
    max_slice_nums: int = 9,
    scale_resolution: int = 448,
    patch_size: int = 14,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> dict:
    """:func:`load_image`, then the native slicing and normalisation.

    Returns ``{"overview": float32 [3, h, w], "slices": [float32 [3, h, w], ...],
    "grid": (cols, rows)}``, slices in row-major order, grid (0, 0) when not sliced.
    """
    return _core.image_preprocess(
        load_image(image),
        max_slice_nums=max_slice_nums,
        scale_resolution=scale_resolution,
        patch_size=patch_size,
        mean=list(mean),
        std=list(std),
    )
