"""Hostile media inputs: images (shapes, modes, dtypes, corrupted/truncated/crafted encodings,
decompression-bomb headers, bad URLs, FIFOs) and audio (empty, NaN, int16, 2-D, lying WAV
headers, truncated files). Each generator returns ``(description, value, route)``; ``route``
says how the worker feeds it: "encode" (Model.encode_image / Session.encode_audio) or "chat"
(a message content part).
"""

from __future__ import annotations

import base64
import io
import math
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any, Tuple

import numpy as np


def _png_bytes(arr_or_im, fmt="PNG", **kw) -> bytes:
    from PIL import Image

    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _crafted_png(w: int, h: int, bitdepth=8, ctype=2, idat: bytes = b"") -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, bitdepth, ctype, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bmp_header(w: int, h: int, bpp=24) -> bytes:
    row = ((w * bpp + 31) // 32) * 4
    size = row * abs(h)
    hdr = b"BM" + struct.pack("<IHHI", (54 + size) & 0xFFFFFFFF, 0, 0, 54)
    s32 = lambda v: ((v + 2**31) % 2**32) - 2**31  # noqa: E731 - the header's signed fields wrap
    hdr += struct.pack("<IiiHHIIiiII", 40, s32(w), s32(h), 1, bpp, 0, size & 0xFFFFFFFF, 2835, 2835, 0, 0)
    return hdr + b"\0" * 64


def _gif_header(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", w & 0xFFFF, h & 0xFFFF, 0x80, 0, 0) + b"\0" * 6 + \
        b"," + struct.pack("<HHHHB", 0, 0, w & 0xFFFF, h & 0xFFFF, 0) + b"\x02\x02\x44\x01\x00;"


def _jpeg_sof(w: int, h: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h & 0xFFFF, w & 0xFFFF, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


def _wav(n_frames_claimed: int, data: bytes, channels=1, rate=16000, bits=16, fmt_tag=1, riff_size=None) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    dsize = n_frames_claimed * block
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", dsize & 0xFFFFFFFF) + data
    return b"RIFF" + struct.pack("<I", (len(body) if riff_size is None else riff_size) & 0xFFFFFFFF) + body


def _corrupt(rng: random.Random, b: bytes) -> Tuple[bytes, str]:
    b = bytearray(b)
    mode = rng.choice(["cut", "cut", "flip", "zero_tail", "garbage_tail"])
    if mode == "cut":
        at = rng.randrange(1, max(2, len(b)))
        return bytes(b[:at]), f"cut at {at}/{len(b)}"
    if mode == "flip":
        k = rng.choice([1, 4, 32])
        for _ in range(k):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), f"{k} random bytes changed"
    if mode == "zero_tail":
        at = rng.randrange(len(b))
        return bytes(b[:at]) + b"\0" * (len(b) - at), f"zeroed from {at}"
    return bytes(b) + bytes(rng.randrange(256) for _ in range(100)), "100 garbage bytes appended"


def image_case(rng: random.Random, workdir: Path) -> Tuple[str, Any, str]:
    from PIL import Image

    route = "chat" if rng.random() < 0.25 else "encode"
    kind = rng.choice(["shape", "shape", "array", "array", "mode", "mode", "encoded", "encoded", "encoded", "crafted",
                       "crafted", "url", "url", "pil_odd"])
    small = np.random.RandomState(rng.randrange(2**31)).randint(0, 256, (24, 32, 3)).astype(np.uint8)
    if kind == "shape":
        h, w = rng.choice([(1, 1), (1, 100000), (100000, 1), (1, 2), (2, 1), (14, 14), (13, 13), (1, 4000), (4000, 1),
                           (3, 30000), (448, 448), (449, 1), (1, 449), (0, 10), (10, 0), (0, 0), (5000, 5000), (1, 65535)])
        arr = np.full((h, w, 3), rng.randrange(256), np.uint8)
        return f"uint8 array shape {(h, w, 3)}", arr, route
    if kind == "array":
        c = rng.choice(["f32", "f64", "u16", "i8", "bool", "nan", "inf", "ndim1", "ndim4", "ch2", "ch5", "ch0", "noncontig",
                        "readonly", "object", "big_endian_u16", "fortran", "ndim0"])
        if c == "f32":
            a = small.astype(np.float32) / 255
        elif c == "f64":
            a = small.astype(np.float64)
        elif c == "u16":
            a = small.astype(np.uint16) * 257
        elif c == "i8":
            a = small.astype(np.int8)
        elif c == "bool":
            a = small > 128
        elif c == "nan":
            a = np.full(small.shape, np.nan, np.float32)
        elif c == "inf":
            a = np.full(small.shape, np.inf, np.float32)
        elif c == "ndim1":
            a = small.reshape(-1)
        elif c == "ndim4":
            a = small[None]
        elif c == "ndim0":
            a = np.array(5, np.uint8)
        elif c == "ch2":
            a = small[:, :, :2].copy()
        elif c == "ch5":
            a = np.concatenate([small, small[:, :, :2]], axis=2)
        elif c == "ch0":
            a = small[:, :, :0]
        elif c == "noncontig":
            a = small[::2, ::3]
        elif c == "readonly":
            a = small.copy()
            a.setflags(write=False)
        elif c == "object":
            a = small.astype(object)
        elif c == "big_endian_u16":
            a = small.astype(">u2")
        else:
            a = np.asfortranarray(small)
        return f"numpy image {c} dtype {a.dtype} shape {a.shape}", a, route
    if kind == "mode":
        m = rng.choice(["RGBA", "P", "LA", "L", "1", "CMYK", "I", "F", "I;16", "YCbCr", "LAB", "HSV", "RGBX", "PA", "La"])
        try:
            im = Image.fromarray(small).convert(m) if m not in ("I;16", "La") else Image.new(m, (32, 24))
        except Exception:  # noqa: BLE001
            im = Image.new("RGB", (32, 24))
        as_bytes = rng.random() < 0.5
        if as_bytes:
            for fmt in ("PNG", "TIFF", "WEBP", "BMP", "GIF"):
                try:
                    return f"PIL mode {m} saved as {fmt} bytes", _png_bytes(im, fmt), route
                except Exception:  # noqa: BLE001
                    continue
        return f"PIL image mode {m}", im, route
    if kind == "encoded":
        fmt = rng.choice(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "ICO", "PPM"])
        try:
            data = _png_bytes(small, fmt)
        except Exception:  # noqa: BLE001
            data = _png_bytes(small, "PNG")
            fmt = "PNG"
        bad, how = _corrupt(rng, data)
        wrap = rng.choice(["bytes", "bytes", "data_url", "file"])
        if wrap == "data_url":
            return f"{fmt} {how} as base64 data URL", "data:image/%s;base64,%s" % (fmt.lower(), base64.b64encode(bad).decode()), route
        if wrap == "file":
            p = workdir / f"img.{fmt.lower()}"
            p.write_bytes(bad)
            return f"{fmt} {how} as a file path", str(p), route
        return f"{fmt} {how} as bytes", bad, route
    if kind == "crafted":
        w, h = rng.choice([(2**31 - 1, 1), (1, 2**31 - 1), (65535, 65535), (100000, 100000), (0, 5), (2**32 - 1, 2**32 - 1),
                           (30000, 30000), (1, 1), (8000, 8000)])
        fmt = rng.choice(["png", "png16", "bmp", "bmp_neg", "gif", "jpeg", "png_palette_noplte"])
        if fmt == "png":
            data = _crafted_png(w, h)
        elif fmt == "png16":
            data = _crafted_png(w, h, 16, 6)
        elif fmt == "png_palette_noplte":
            data = _crafted_png(w, h, 8, 3)
        elif fmt == "bmp":
            data = _bmp_header(w, h)
        elif fmt == "bmp_neg":
            data = _bmp_header(w, -h)
        elif fmt == "gif":
            data = _gif_header(w, h)
        else:
            data = _jpeg_sof(w, h)
        return f"crafted {fmt} header claiming {w}x{h} with almost no pixel data", data, route
    if kind == "url":
        c = rng.choice(["missing", "dir", "fifo", "bad_b64", "no_comma", "empty_data", "file_host", "http", "percent",
                        "devnull", "devzero", "proc", "nul_in_path", "huge_path", "file_missing", "file_dir", "file_fifo",
                        "surrogate_path", "data_text"])
        if c == "missing":
            return "path to a missing file", str(workdir / "missing.png"), route
        if c in ("dir", "file_dir"):
            d = workdir / "adir"
            d.mkdir(exist_ok=True)
            return f"{c}: a directory", ("file://" + str(d)) if c == "file_dir" else str(d), route
        if c in ("fifo", "file_fifo"):
            f = workdir / "fifo.png"
            if not f.exists():
                os.mkfifo(f)
            return f"{c}: a FIFO nobody writes to", ("file://" + str(f)) if c == "file_fifo" else str(f), route
        if c == "file_missing":
            return "file:// URL to a missing file", "file://" + str(workdir / "nope.jpg"), route
        if c == "bad_b64":
            return "data URL with invalid base64", "data:image/png;base64,@@@@not*base64!!", route
        if c == "no_comma":
            return "data URL without a comma", "data:image/png;base64", route
        if c == "empty_data":
            return "data URL with no data", "data:image/png;base64,", route
        if c == "file_host":
            return "file URL of another host", "file://otherhost/etc/passwd", route
        if c == "http":
            return "http URL", "http://127.0.0.1:1/x.png", route
        if c == "percent":
            return "non-base64 data URL percent-encoded garbage", "data:image/png,%89PNG%0D%0A%1A%0A%00%00%ZZ", route
        if c == "devnull":
            return "/dev/null", "/dev/null", route
        if c == "devzero":
            return "/dev/zero (endless zeros)", "/dev/zero", route
        if c == "proc":
            return "/proc/self/status (a text file)", "/proc/self/status", route
        if c == "nul_in_path":
            return "path with a NUL byte", str(workdir) + "/a\x00b.png", route
        if c == "huge_path":
            return "a 100000-char path", "/" + "a" * 100000 + ".png", route
        if c == "surrogate_path":
            return "path with a lone surrogate", str(workdir) + "/\ud800.png", route
        return "data URL text/plain", "data:text/plain,hello", route
    # odd PIL objects
    c = rng.choice(["zero", "huge_lazy", "multiframe", "closed"])
    if c == "zero":
        return "PIL image 0x0", Image.new("RGB", (0, 0)), route
    if c == "multiframe":
        frames = [Image.fromarray(small), Image.fromarray(255 - small)]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        return "multi-frame GIF bytes", buf.getvalue(), route
    if c == "closed":
        im = Image.fromarray(small)
        im.close()
        return "a closed PIL image", im, route
    return "PIL image 1x60000", Image.new("L", (60000, 1)), route


def audio_case(rng: random.Random, workdir: Path) -> Tuple[str, Any, str]:
    route = "chat" if rng.random() < 0.25 else "encode"
    sr = 16000
    noise = np.random.RandomState(rng.randrange(2**31)).uniform(-0.5, 0.5, sr).astype(np.float32)
    c = rng.choice(["empty", "nan", "inf", "int16", "2d", "2d_t", "f16", "huge_val", "one", "short", "long", "wav_lie",
                    "wav_lie", "wav_trunc", "wav_trunc", "wav_bad_fmt", "wav_zero_rate", "wav_channels", "bytes_garbage",
                    "data_url_bad", "missing", "fifo", "dir", "part_bad", "object", "complex", "denormal", "ndim0",
                    "noncontig", "f64"])
    if c == "empty":
        return "empty float32 array", np.zeros(0, np.float32), route
    if c == "nan":
        a = noise.copy()
        a[rng.randrange(sr)] = np.nan
        return "float32 audio with a NaN", a, route
    if c == "inf":
        a = noise.copy()
        a[::100] = np.inf
        return "float32 audio with infs", a, route
    if c == "int16":
        return "int16 PCM array", (noise * 32767).astype(np.int16), route
    if c == "2d":
        return "2-D float32 (2, n)", np.stack([noise, noise]), route
    if c == "2d_t":
        return "2-D float32 (n, 2)", np.stack([noise, noise], 1), route
    if c == "f16":
        return "float16 array", noise.astype(np.float16), route
    if c == "f64":
        return "float64 array", noise.astype(np.float64), route
    if c == "huge_val":
        return "float32 audio with 1e30 samples", noise * 1e30, route
    if c == "denormal":
        return "float32 audio of denormals", np.full(sr, 1e-42, np.float32), route
    if c == "one":
        return "one sample", np.zeros(1, np.float32), route
    if c == "short":
        n = rng.choice([2, 159, 160, 161, 399, 400, 401, 1599])
        return f"{n} samples", noise[:n].copy(), route
    if c == "long":
        n = rng.choice([30 * sr + 1, 61 * sr])
        return f"{n} samples of noise", np.tile(noise, n // sr + 1)[:n], route
    if c == "ndim0":
        return "0-d array", np.array(0.5, np.float32), route
    if c == "noncontig":
        return "non-contiguous float32 view", noise[::2], route
    if c == "complex":
        return "complex64 array", noise.astype(np.complex64), route
    if c == "object":
        return "object array", noise[:100].astype(object), route
    pcm = (noise * 32767).astype("<i2").tobytes()
    if c == "wav_lie":
        claim = rng.choice([2**31 // 2, 2**32 // 2 - 1, 0, 10**9, 16000 * 4000])
        return f"WAV header claiming {claim} frames, 1 s present", _wav(claim, pcm), route
    if c == "wav_trunc":
        w = _wav(sr, pcm)
        at = rng.randrange(1, len(w))
        return f"WAV truncated at {at}/{len(w)}", w[:at], route
    if c == "wav_bad_fmt":
        tag, bits = rng.choice([(3, 16), (1, 0), (1, 7), (1, 64), (0xFFFE, 16), (6, 8), (1, 24)])
        return f"WAV fmt tag {tag} bits {bits}", _wav(sr, pcm, fmt_tag=tag, bits=bits), route
    if c == "wav_zero_rate":
        r = rng.choice([0, 1, 2**31, 2**32 - 1, 8])
        return f"WAV with sample rate {r}", _wav(sr, pcm, rate=r), route
    if c == "wav_channels":
        ch = rng.choice([0, 3, 255, 65535])
        return f"WAV with {ch} channels", _wav(sr // max(ch, 1), pcm, channels=ch), route
    if c == "bytes_garbage":
        return "1 KB of random bytes", bytes(rng.randrange(256) for _ in range(1024)), route
    if c == "data_url_bad":
        return "audio data URL with bad base64", "data:audio/wav;base64,%%%", route
    if c == "missing":
        return "missing .wav path", str(workdir / "nope.wav"), route
    if c == "fifo":
        f = workdir / "fifo.wav"
        if not f.exists():
            os.mkfifo(f)
        return "a FIFO named .wav", str(f), route
    if c == "dir":
        d = workdir / "dir.wav"
        d.mkdir(exist_ok=True)
        return "a directory named .wav", str(d), route
    part = rng.choice([{"type": "input_audio"}, {"type": "input_audio", "input_audio": {"data": "%%", "format": "wav"}},
                       {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "mp3"}},
                       {"type": "input_audio", "input_audio": None}, {"type": "input_audio", "input_audio": 5}])
    return f"input_audio part {str(part)[:60]}", part, "chat"
