"""GGUF mutations: structured (header counts, lengths, dims, types, offsets, alignment,
duplicate/missing keys and tensors, hostile hyperparameters, tokenizer arrays, clip keys) and
blind (byte flips, truncations). Each mutation is drawn from a ``random.Random`` and returns
``(bytes, description, touches_data)``; ``touches_data`` is True when tensor *values* may have
changed (then non-finite outputs are garbage in, garbage out, not a finding).
"""

from __future__ import annotations

import copy
import math
import random
import struct
from typing import Callable, Dict, List, Tuple

import gguf_raw as G

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
HOSTILE_INTS = [0, 1, 2, 3, 7, -1, -2, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1]
HOSTILE_FLOATS = [0.0, -0.0, -1.0, 1e-45, 1e-38, 1e-20, 1e20, 3.4e38, math.inf, -math.inf, math.nan, -1e30]
NAMED = ("block_count", "head_count", "head_count_kv", "context_length", "embedding_length", "feed_forward_length",
         "key_length", "value_length", "freq_base", "epsilon", "dimension_count", "vocab_size", "image_size",
         "patch_size", "scale_resolution", "image_mean", "image_std", "query_num", "minicpmv_version", "pool_step",
         "chunk_length", "num_mel_bins", "max_slice_nums", "token_id", "projection_dim", "max_new_tokens")
TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")


def _kvcopy(g: G.GGUF, i: int) -> G.KV:
    kv = copy.copy(g.kvs[i])
    kv.raw = None
    g.kvs[i] = kv
    return kv


def _shallow(g: G.GGUF) -> G.GGUF:
    h = copy.copy(g)
    h.kvs = list(g.kvs)
    h.tensors = list(g.tensors)
    return h


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int) and abs(v) > 10**6:
        return hex(v)
    return repr(v)[:80]


def _pick_kv(rng: random.Random, g: G.GGUF, pred) -> int:
    idx = [i for i, k in enumerate(g.kvs) if pred(k)]
    return rng.choice(idx) if idx else -1


# -- structured mutations -------------------------------------------------------------------

def m_header_counts(rng, g):
    h = _shallow(g)
    which = rng.choice(["n_tensors", "n_kv", "version", "magic"])
    if which == "version":
        h.version = rng.choice([0, 1, 2, 4, 255, U32_MAX])
        return h, f"header version={h.version}"
    if which == "magic":
        h.magic = rng.choice([b"GGUG", b"FUGG", b"\0\0\0\0", b"GGML"])
        return h, f"header magic={h.magic!r}"
    n = len(g.tensors) if which == "n_tensors" else len(g.kvs)
    v = rng.choice([0, 1, n - 1, n + 1, n * 2, 2**31, 2**32, 2**62, 2**63, U64_MAX])
    setattr(h, which, v)
    return h, f"header {which}={_fmt(v)} (real {n})"


def m_string_len(rng, g):
    h = _shallow(g)
    if rng.random() < 0.3:
        i = rng.randrange(len(h.kvs))
        kv = _kvcopy(h, i)
        real = len(kv.key.encode())
        kv.key_len = rng.choice([0, real - 1, real + 1, 2**32, 2**63, U64_MAX])
        return h, f"key length of {kv.key!r}={_fmt(kv.key_len)} (real {real})"
    i = _pick_kv(rng, h, lambda k: k.vtype == G.STR)
    kv = _kvcopy(h, i)
    b = kv.value if isinstance(kv.value, bytes) else kv.value.encode()
    kv.str_len = rng.choice([0, len(b) - 1, len(b) + 1, len(b) + 1000, 2**31, 2**32 + len(b), 2**63, U64_MAX])
    if kv.str_len < 0:
        kv.str_len = 0
    return h, f"string length of {kv.key!r}={_fmt(kv.str_len)} (real {len(b)})"


def m_array_len(rng, g):
    h = _shallow(g)
    i = _pick_kv(rng, h, lambda k: k.vtype == G.ARR)
    kv = _kvcopy(h, i)
    n = len(kv.value)
    kv.arr_len = rng.choice([0, 1, n - 1, n + 1, n * 2, 2**31, 2**32, 2**61, 2**63, U64_MAX])
    if kv.arr_len < 0:
        kv.arr_len = 0
    return h, f"array count of {kv.key!r}={_fmt(kv.arr_len)} (real {n}) [elements written as is]"


def m_array_subtype(rng, g):
    h = _shallow(g)
    i = _pick_kv(rng, h, lambda k: k.vtype == G.ARR)
    kv = _kvcopy(h, i)
    new = rng.choice([G.U8, G.I32, G.F32, G.STR, G.ARR, G.U64, 13, 99, U32_MAX])
    # write the real elements under a lying subtype: re-use the original raw encoding
    orig = G.encode_value(g.kvs[i])
    kv.raw = struct.pack("<I", new) + orig[4:]
    return h, f"array subtype of {kv.key!r}={new} (real {g.kvs[i].subtype}) [elements written as is]"


def m_value_type(rng, g):
    """Change a key's value type (the value re-encoded or lying)."""
    h = _shallow(g)
    i = rng.randrange(len(h.kvs))
    kv = _kvcopy(h, i)
    old = kv.vtype
    choice = rng.choice(["u32", "i32neg", "f32", "str", "arr", "bool", "u64", "badtype", "u8"])
    if choice == "u32":
        kv.vtype, kv.value, kv.subtype = G.U32, rng.choice(HOSTILE_INTS) & U32_MAX, None
    elif choice == "i32neg":
        kv.vtype, kv.value, kv.subtype = G.I32, rng.choice([-1, -2**31, -7]), None
    elif choice == "f32":
        kv.vtype, kv.value, kv.subtype = G.F32, rng.choice(HOSTILE_FLOATS), None
    elif choice == "str":
        kv.vtype, kv.value, kv.subtype = G.STR, rng.choice(["", "two", "\xff", "-1", "nan"]), None
    elif choice == "arr":
        kv.vtype, kv.value, kv.subtype = G.ARR, rng.choice([[], [1, 2], ["a"]]), None
        kv.subtype = G.STR if kv.value and isinstance(kv.value[0], str) else G.I32
    elif choice == "bool":
        kv.vtype, kv.value, kv.subtype = G.BOOL, rng.choice([0, 1, 2, 255]), None
    elif choice == "u64":
        kv.vtype, kv.value, kv.subtype = G.U64, rng.choice(HOSTILE_INTS) & U64_MAX, None
    elif choice == "u8":
        kv.vtype, kv.value, kv.subtype = G.U8, rng.choice([0, 1, 255]), None
    else:
        kv.vtype = rng.choice([13, 100, U32_MAX])
        kv.raw = b""
    return h, f"key {kv.key!r}: type {old} -> {kv.vtype} ({choice}) value={_fmt(kv.value)}"


def m_hyperparam(rng, g):
    """Hostile value of a numeric hyperparameter (named ones preferred), same type or sign-flipped."""
    h = _shallow(g)
    named = [i for i, k in enumerate(h.kvs) if any(n in k.key for n in NAMED) and k.vtype != G.STR]
    num = [i for i, k in enumerate(h.kvs) if k.vtype in G._SCALAR or (k.vtype == G.ARR and k.subtype in (G.F32, G.I32, G.U32))]
    pool = named if named and rng.random() < 0.8 else num
    i = rng.choice(pool)
    kv = _kvcopy(h, i)
    if kv.vtype == G.ARR:
        n = len(kv.value)
        if kv.subtype == G.F32:
            mode = rng.choice(["one", "all", "len"])
            if mode == "len":
                kv.value = rng.choice([[], [0.5], [0.5] * 4, [0.5] * 1000])
            else:
                v = rng.choice(HOSTILE_FLOATS)
                kv.value = [v] * n if mode == "all" else [v if j == rng.randrange(max(n, 1)) else x for j, x in enumerate(kv.value)]
        else:
            v = rng.choice(HOSTILE_INTS)
            kv.value = [v] * min(n, 8) if rng.random() < 0.5 else [v] + list(kv.value[1:])
        return h, f"hyperparameter array {kv.key!r}={_fmt(kv.value)[:80]}"
    if kv.vtype in (G.F32, G.F64):
        kv.value = rng.choice(HOSTILE_FLOATS)
    elif kv.vtype == G.BOOL:
        kv.value = rng.choice([2, 255])
    else:
        v = rng.choice(HOSTILE_INTS)
        if kv.vtype in (G.U32, G.I32) and rng.random() < 0.3:
            kv.vtype = G.I32 if kv.vtype == G.U32 else G.U32   # negative-through-u32
        kv.value = v
    return h, f"hyperparameter {kv.key!r} (type {kv.vtype})={_fmt(kv.value)}"


def m_tokenizer(rng, g):
    h = _shallow(g)
    have = [i for i, k in enumerate(h.kvs) if k.key.startswith("tokenizer.")]
    if not have:
        return m_hyperparam(rng, g)
    op = rng.choice(["len", "len", "elem", "model", "ids", "scores", "types", "drop"])
    if op == "scores":
        tok = h.kv("tokenizer.ggml.tokens")
        n = len(tok.value) if tok else 10
        m = rng.choice([0, 1, n - 1, n + 1])
        vals = rng.choice([[0.0] * m, [math.nan] * m, [-math.inf] * m])
        h.kvs.append(G.KV("tokenizer.ggml.scores", G.ARR, vals, G.F32))
        return h, f"tokenizer.ggml.scores added with {m} entries (n_vocab {n}) value {vals[:1]}"
    if op == "drop":
        i = rng.choice(have)
        key = h.kvs[i].key
        del h.kvs[i]
        return h, f"tokenizer key {key!r} dropped"
    if op == "model":
        i = _pick_kv(rng, h, lambda k: k.key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"))
        kv = _kvcopy(h, i)
        kv.value = rng.choice(["", "llama", "bert", "t5", "rwkv", "none", "unknown-pre", "{% for %}", "{{ raise_exception('x') }}",
                               "{{ messages[99999] }}", "{% for i in range(999999999) %}x{% endfor %}", "\x00"])
        return h, f"{kv.key}={kv.value!r}"
    if op == "ids":
        i = _pick_kv(rng, h, lambda k: k.key.startswith("tokenizer.ggml.") and k.key.endswith("_id"))
        if i < 0:
            return m_hyperparam(rng, g)
        kv = _kvcopy(h, i)
        tok = h.kv("tokenizer.ggml.tokens")
        n = len(tok.value) if tok else 0
        kv.value = rng.choice([n, n + 1, 2**31, U32_MAX, 2**31 - 1])
        return h, f"{kv.key}={_fmt(kv.value)} (n_vocab {n})"
    if op == "types":
        i = _pick_kv(rng, h, lambda k: k.key == "tokenizer.ggml.token_type")
        if i < 0:
            return m_hyperparam(rng, g)
        kv = _kvcopy(h, i)
        v = rng.choice([0, 5, 6, 7, 99, -1, 2**31 - 1])
        vals = list(kv.value)
        if rng.random() < 0.5:
            vals = [v] * len(vals)
        else:
            for _ in range(50):
                vals[rng.randrange(len(vals))] = v
        kv.value = vals
        return h, f"tokenizer.ggml.token_type values set to {v}"
    arrays = [i for i in have if h.kvs[i].vtype == G.ARR]
    i = rng.choice(arrays)
    kv = _kvcopy(h, i)
    vals = list(kv.value)
    n = len(vals)
    if op == "len":
        m = rng.choice([0, 1, 2, n - 1, n // 2, n + 1, n + 1000])
        if m <= n:
            vals = vals[:m]
        else:
            vals = vals + [vals[-1]] * (m - n)
        kv.value = vals
        return h, f"{kv.key} length {m} (real {n}), elements consistent"
    # element corruption
    j = rng.randrange(n)
    if kv.subtype == G.STR:
        bad = rng.choice(["", " ", "a b c", "\x00", b"\xff\xfe", b"\xc3", "x" * 100000, "\u0120\u0120 ", "<|im_end|>",
                          "\ud800".encode("utf-8", "surrogatepass")])
        for _ in range(rng.choice([1, 1, 10, 1000])):
            vals[rng.randrange(n) if _ else j] = bad
        kv.value = vals
        return h, f"{kv.key}[{j}] (and maybe more) = {bad!r:.40}"
    vals[j] = rng.choice(HOSTILE_INTS)
    kv.value = vals
    return h, f"{kv.key}[{j}]={_fmt(vals[j])}"


def m_clip(rng, g):
    h = _shallow(g)
    idx = [i for i, k in enumerate(h.kvs) if k.key.startswith(("clip.", "minicpm.vision", "minicpm.resampler", "minicpm.audio"))]
    if not idx:
        return m_hyperparam(rng, g)
    i = rng.choice(idx)
    kv = _kvcopy(h, i)
    if kv.vtype == G.STR:
        kv.value = rng.choice(["", "mlp", "resampler", "ldp", "qwen2vl", "minicpmv-9.9", "3d", "none", "\xff"])
    elif kv.vtype == G.BOOL:
        kv.value = rng.choice([0, 1, 2])
    elif kv.vtype == G.ARR:
        kv.value = rng.choice([[], [0.0, 0.0, 0.0], [math.nan] * 3, [math.inf] * 3, [1e-45] * 3, [0.5] * 7, [-1e38] * 3])
        kv.subtype = G.F32
    elif kv.vtype in (G.F32, G.F64):
        kv.value = rng.choice(HOSTILE_FLOATS)
    else:
        kv.value = rng.choice(HOSTILE_INTS)
        if kv.vtype == G.U32 and rng.random() < 0.3:
            kv.vtype = G.I32
    return h, f"clip key {kv.key!r} (type {kv.vtype})={_fmt(kv.value)}"


TYPE_SWAPS = {0: [26, 1, 30, 8, 2], 1: [25, 0, 30, 8, 24], 30: [25, 1, 0]}


def m_tensor(rng, g):
    h = _shallow(g)
    ti = rng.randrange(len(h.tensors))
    t = copy.copy(h.tensors[ti])
    h.tensors[ti] = t
    t.dims = list(t.dims)
    op = rng.choice(["dim", "dim", "ndims", "type", "type", "offset", "offset"])
    if op == "dim":
        k = rng.randrange(len(t.dims))
        old = t.dims[k]
        t.dims[k] = rng.choice([0, 1, old * 2, old + 1, max(old - 1, 0), 2**31, 2**32, 2**32 + old, 2**63, U64_MAX])
        return h, f"tensor {t.name} dim[{k}] {old} -> {_fmt(t.dims[k])}"
    if op == "ndims":
        mode = rng.choice(["zero", "five", "lie", "lie0", "extra1"])
        if mode == "zero":
            t.dims = []
        elif mode == "five":
            t.dims = t.dims + [1] * (5 - len(t.dims))
        elif mode == "extra1":
            t.dims = t.dims + [1]
        elif mode == "lie":
            t.n_dims = rng.choice([len(t.dims) + 1, 5, 64, U32_MAX])
        else:
            t.n_dims = 0
        return h, f"tensor {t.name} n_dims {mode}: dims={t.dims} n_dims written={t.n_dims if t.n_dims is not None else len(t.dims)}"
    if op == "type":
        old = t.ttype
        cands = TYPE_SWAPS.get(old, []) + [rng.randrange(0, 42), 4, 5, 31, 39, 40, 100, U32_MAX]
        t.ttype = rng.choice(cands)
        return h, f"tensor {t.name} type {old} -> {t.ttype}"
    old = t.offset
    t.offset = rng.choice([old + 1, old + 2, old + 32, 0, len(g.data), len(g.data) - 32, len(g.data) + 4096,
                           2**32, 2**63, U64_MAX, max(old - 32, 0)])
    return h, f"tensor {t.name} offset {old} -> {_fmt(t.offset)} (data region {len(g.data)} bytes)"


def m_tensor_set(rng, g):
    h = _shallow(g)
    op = rng.choice(["drop", "dup", "dup_other", "rename", "swap_names", "empty_name", "drop_all_vision"])
    ti = rng.randrange(len(h.tensors))
    t = h.tensors[ti]
    if op == "drop":
        del h.tensors[ti]
        return h, f"tensor {t.name} dropped"
    if op == "dup":
        h.tensors.append(copy.copy(t))
        return h, f"tensor {t.name} listed twice"
    if op == "dup_other":
        o = copy.copy(h.tensors[rng.randrange(len(h.tensors))])
        o.name = t.name
        h.tensors.append(o)
        return h, f"tensor {t.name} listed twice, second entry with another tensor's shape/type/offset"
    if op == "rename":
        n = copy.copy(t)
        n.name = t.name + rng.choice([".x", "_", ""]) if rng.random() < 0.5 else "blk.999.attn_q.weight"
        h.tensors[ti] = n
        return h, f"tensor {t.name} renamed {n.name}"
    if op == "swap_names":
        tj = rng.randrange(len(h.tensors))
        a, b = copy.copy(h.tensors[ti]), copy.copy(h.tensors[tj])
        a.name, b.name = b.name, a.name
        h.tensors[ti], h.tensors[tj] = a, b
        return h, f"tensor names swapped: {a.name} <-> {b.name}"
    if op == "empty_name":
        n = copy.copy(t)
        n.name = rng.choice(["", "\x00", "a" * 70000])
        h.tensors[ti] = n
        return h, f"tensor {t.name} renamed to {n.name[:10]!r} (len {len(n.name)})"
    before = len(h.tensors)
    h.tensors = [x for x in h.tensors if not x.name.startswith(("v.", "resampler", "mm.", "a.", "apm", "audio"))]
    return h, f"all vision/audio tensors dropped ({before - len(h.tensors)}) with their keys kept"


def m_alignment(rng, g):
    h = _shallow(g)
    i = _pick_kv(rng, h, lambda k: k.key == "general.alignment")
    v = rng.choice([0, 1, 3, 7, 16, 64, 4096, 2**31, U32_MAX])
    typ = rng.choice([G.U32, G.U32, G.U64, G.I32, G.STR])
    kv = G.KV("general.alignment", typ, str(v) if typ == G.STR else v)
    if i >= 0:
        h.kvs[i] = kv
    else:
        h.kvs.insert(rng.randrange(len(h.kvs) + 1), kv)
    return h, f"general.alignment={v} type {typ} (data left at the original alignment {g.alignment})"


def m_keys(rng, g):
    h = _shallow(g)
    op = rng.choice(["drop", "drop", "dup", "dup_diff", "arch"])
    i = rng.randrange(len(h.kvs))
    kv = h.kvs[i]
    if op == "drop":
        del h.kvs[i]
        return h, f"key {kv.key!r} dropped"
    if op == "dup":
        h.kvs.append(kv)
        return h, f"key {kv.key!r} listed twice (same value)"
    if op == "dup_diff":
        d = G.KV(kv.key, G.U32, rng.choice(HOSTILE_INTS) & U32_MAX)
        h.kvs.insert(rng.randrange(len(h.kvs) + 1), d)
        return h, f"key {kv.key!r} listed twice, second as u32 {d.value}"
    i = _pick_kv(rng, h, lambda k: k.key == "general.architecture")
    k2 = _kvcopy(h, i)
    k2.value = rng.choice(["qwen2", "qwen3", "clip", "llama", "", "qwen3\x00", "minicpm"])
    return h, f"general.architecture={k2.value!r}"


STRUCTURED: List[Tuple[str, Callable, float]] = [
    ("header_counts", m_header_counts, 1.0),
    ("string_len", m_string_len, 1.0),
    ("array_len", m_array_len, 1.0),
    ("array_subtype", m_array_subtype, 0.5),
    ("value_type", m_value_type, 1.0),
    ("hyperparam", m_hyperparam, 3.0),
    ("tokenizer", m_tokenizer, 2.0),
    ("clip", m_clip, 2.0),
    ("tensor", m_tensor, 3.0),
    ("tensor_set", m_tensor_set, 1.5),
    ("alignment", m_alignment, 0.7),
    ("keys", m_keys, 1.5),
]


def structured(rng: random.Random, g: G.GGUF, src: bytes) -> Tuple[str, bytes, str, bool]:
    names = [n for n, _, w in STRUCTURED]
    weights = [w for _, _, w in STRUCTURED]
    name = rng.choices(names, weights)[0]
    fn = dict((n, f) for n, f, _ in STRUCTURED)[name]
    h, desc = fn(rng, g)
    # tensor offsets / types / names pointing elsewhere reinterpret weight bytes
    data = name in ("tensor", "tensor_set") and any(w in desc for w in ("offset", " type ", "swapped", "second entry"))
    # fewer tensor infos than written: the data region starts earlier, every tensor is read shifted
    data = data or (name == "header_counts" and desc.startswith("header n_tensors=") and h.n_tensors < len(g.tensors))
    # another alignment moves the start of the data region the loader computes (data left in place)
    data = data or name == "alignment"
    return name, G.write(h), desc, data


def blind(rng: random.Random, g: G.GGUF, src: bytes) -> Tuple[str, bytes, str, bool]:
    n = len(src)
    hs = g.data_start
    if rng.random() < 0.35:
        at = rng.randrange(hs + 64) if rng.random() < 0.7 else rng.randrange(n)
        return "truncate", src[:at], f"truncated to {at} of {n} bytes (header ends at {hs})", False
    b = bytearray(src)
    k = rng.choice([1, 1, 2, 4, 16, 64])
    in_data = False
    offs = []
    for _ in range(k):
        off = rng.randrange(hs) if rng.random() < 0.8 else rng.randrange(hs, n)
        in_data |= off >= hs
        mode = rng.random()
        if mode < 0.5:
            b[off] ^= 1 << rng.randrange(8)
        elif mode < 0.8:
            b[off] = rng.randrange(256)
        else:
            b[off] = rng.choice([0, 0xFF, 0x7F, 0x80])
        offs.append(off)
    return "byteflip", bytes(b), f"{k} byte(s) changed at offsets {sorted(offs)[:16]} (header ends at {hs})", in_data
