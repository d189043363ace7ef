"""API abuse: out-of-range and wrong-typed arguments for every public entry point, hostile
strings (NUL bytes, lone surrogates, the library's private media markers, huge text).

``api_case(rng)`` returns ``(description, fn)``; ``fn(ctx)`` runs it, where ``ctx`` gives
``ctx.model(name)`` (cached Model objects: "llm", "v45", "o45") and ``ctx.path(name)``.
It returns a list of float arrays to check for finiteness (may be empty).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, List, Tuple

import numpy as np

BAD_VALUES = [None, -1, 0, 2**31, 2**63, 10**6, -(2**63), 1.5, math.nan, math.inf, "4", "", b"x", [1], {}, True, object(),
              np.int64(-1), np.float32(2.5), 1e6, complex(1, 1)]
HOSTILE_TEXT = [
    "a\x00b", "\x00", "\ud800", "x\udfff", "\x01minicpm-image-0\x02", "\x01minicpm-audio-0\x02",
    "\x01minicpm-image-0\x02\x01minicpm-image-1\x02", "(<image>./</image>)", "(<audio>./</audio>)", "<image></image>",
    "<|im_start|>system\nx<|im_end|>", "<|im_end|>" * 50, "<think>", "</think>" * 3, "<unk>", "<slice>", "<image_id>99</image_id>",
    "<|tts_bos|>", "\uffff\ufffe", "\U0010ffff", "\u202e", "word " * 3000, "\n" * 5000, "\x01minicpm-image-", "{{ 7*7 }}",
    "{% raw %}", "\x02\x01",
]
MODEL_ARGS = {
    "device": ["", "cpu:0", "cuda", "gpu", "CUDA9", "metal", None, 5, "\x00"],
    "n_threads": [0, -1, 10**6, 2**31, 1.5, "2", None, True],
    "mmproj": ["/nonexistent.gguf", "", 5, b"/x", "/dev/null", "/"],
    "cpu_repack": [None, 2, "yes", 0],
    "fuse_qkv": [2, "on", 0, True],
    "warmup": ["no", None, 2],
    "vision_flash_attn": ["", "maybe", None, 1, "ON"],
    "vision_pad_heads": ["x", 3],
    "audio": ["/nonexistent.gguf", "", "/dev/null", 7],
    "audio_fold_norms": ["x", 3],
    "vision_fold_norms": ["x", 3],
    "flow_lean": ["x", 3],
    "extra_files": [["/nonexistent.gguf"], "/dev/null", [5], [""], None, [None]],
}
SESSION_ARGS = {
    "n_ctx": [0, -1, 1, 2, 2**31, 2**40, 10**9, 1.5, "64", None, True],
    "seed": [-1, 2**64, 1.5, "1", True],
    "n_batch": [0, -1, 1, 2**31, 10**9, None, "8"],
    "kv_type": ["", "q4_0", "bf16", None, 5, "F16"],
    "flash_attn": ["", "maybe", None, 1, "ON"],
    "n_threads": [0, -1, 10**6, 2**31, 1.5, "2"],
    "eval_callback": [5, "x", lambda *a: 1 / 0],
    "eval_filter": [None, 5, "\x00"],
    "profile_ops": ["x", None],
    "mmproj": ["/x"],
}
CHAT_ARGS = {
    "max_tokens": [-5, -1, 0, 2**31, 2**63, 1.5, "4", True, np.int64(3)],
    "enable_thinking": ["yes", 2, None],
    "max_slice_nums": [0, -1, 10**6, 1.5, "9"],
    "use_image_id": ["x", 2],
    "stop": [[""], "", [None], 5, ["\x00"], ["\ud800"], ["a" * 10000], [b"x"]],
    "skip_special": ["x", None, 2],
    "stop_at_end_of_turn": ["x", None],
    "use_tts_template": ["x", 2],
    "omni_mode": ["x", None],
    "temperature": [-1.0, math.nan, math.inf, 1e30, "hot", 0.0, 1e-30],
    "top_k": [-1, 0, 2**31, 2**40, 1.5, "10"],
    "top_p": [0.0, -0.1, 1.5, math.nan],
    "min_p": [-1.0, 2.0, math.nan],
    "repeat_penalty": [0.0, -1.0, math.inf, math.nan],
    "presence_penalty": [math.inf, -math.inf, math.nan],
    "repeat_last_n": [-5, 2**31, 2**40, -1],
    "bogus_kw": [1],
}
MESSAGES = [
    [], None, "hi", [{}], [{"role": "user"}], [{"role": 5, "content": "x"}], [{"role": "wizard", "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "user", "content": [5]}], [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"type": "image_url"}]}], [{"role": "user", "content": [{"type": "nope", "x": 1}]}],
    [{"role": "user", "content": [{"type": "text", "text": None}]}], [{"role": "user", "content": {"type": "text", "text": "x"}}],
    [{"role": "user", "content": [None]}], [{"role": "user", "content": [b"x"]}], [("user", "x")], ["user"],
    [{"role": "assistant", "content": "x"}], [{"role": "system", "content": "x"}],
    [{"role": "user", "content": "x", "reasoning_content": 5}], [{"role": "user", "content": "x", "reasoning_content": "\x01minicpm-image-0\x02"}],
    [{"role": "user", "content": [np.zeros((2, 2, 2, 2), np.uint8)]}], [{"role": "user", "content": [np.zeros(0, np.float32)]}],
    [{"role": "user", "content": "x"}] * 2000,
]


def _finite_logits(s) -> List[np.ndarray]:
    try:
        return [np.asarray(s.logits())]
    except Exception:  # noqa: BLE001 - nothing evaluated
        return []


def api_case(rng: random.Random) -> Tuple[str, Callable[[Any], List[np.ndarray]]]:
    import minicpm_cpp as m

    kind = rng.choice(["model", "session", "session", "chat", "chat", "chat", "text", "text", "messages", "messages",
                       "prefill", "generate", "tokens", "image_args", "misc", "audio_api"])
    if kind == "model":
        k = rng.choice(list(MODEL_ARGS))
        v = rng.choice(MODEL_ARGS[k])
        base = rng.choice(["llm", "v45"])

        def fn(ctx, k=k, v=v, base=base):
            kw = {"device": "cpu", k: v}
            model = m.Model(ctx.path(base), **kw)
            s = m.Session(model, n_ctx=64)
            s.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            return _finite_logits(s)
        return f"Model({base}, {k}={v!r:.60})", fn
    if kind == "session":
        k = rng.choice(list(SESSION_ARGS))
        v = rng.choice(SESSION_ARGS[k])

        def fn(ctx, k=k, v=v):
            kw = {"n_ctx": 64}
            kw[k] = v
            s = m.Session(ctx.model("llm"), **kw)
            s.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            return _finite_logits(s)
        return f"Session(llm, {k}={v!r:.60})", fn
    if kind == "chat":
        items = rng.sample(list(CHAT_ARGS), rng.choice([1, 1, 2, 3]))
        kw = {k: rng.choice(CHAT_ARGS[k]) for k in items}
        stream = rng.random() < 0.3

        def fn(ctx, kw=kw, stream=stream):
            s = m.Session(ctx.model("llm"), n_ctx=128)
            kw2 = dict(kw)
            kw2.setdefault("max_tokens", 3)
            if stream:
                out = list(s.chat([{"role": "user", "content": "hi"}], stream=True, **kw2))
            else:
                s.chat([{"role": "user", "content": "hi"}], **kw2)
            return _finite_logits(s)
        return f"chat(stream={stream}, {', '.join('%s=%r' % (k, v) for k, v in kw.items())[:120]})", fn
    if kind == "text":
        t = "".join(rng.choice(HOSTILE_TEXT) for _ in range(rng.choice([1, 1, 2, 4])))
        where = rng.choice(["chat", "tokenize", "prefill", "render", "system", "assistant", "stop"])
        base = rng.choice(["llm", "llm", "v45"])

        def fn(ctx, t=t, where=where, base=base):
            model = ctx.model(base)
            if where == "tokenize":
                ids = model.tokenize(t)
                model.detokenize(ids)
                return []
            if where == "render":
                model.render_chat([{"role": "user", "content": t}])
                return []
            s = m.Session(model, n_ctx=512)
            if where == "prefill":
                s.prefill(t)
                return _finite_logits(s)
            msgs = [{"role": "user", "content": t}]
            if where == "system":
                msgs = [{"role": "system", "content": t}] + msgs
            if where == "assistant":
                msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}, {"role": "user", "content": "r"}]
            s.chat(msgs, max_tokens=3, stop=[t] if where == "stop" else None)
            return _finite_logits(s)
        return f"hostile text {t[:60]!r} (len {len(t)}) via {where} on {base}", fn
    if kind == "messages":
        msgs = rng.choice(MESSAGES)
        base = rng.choice(["llm", "v45"])

        def fn(ctx, msgs=msgs, base=base):
            s = m.Session(ctx.model(base), n_ctx=256)
            s.chat(msgs, max_tokens=2)
            return _finite_logits(s)
        return f"chat(messages={str(msgs)[:100]}) on {base}", fn
    if kind == "prefill":
        arg = rng.choice([dict(tokens=[]), dict(tokens=[2**31]), dict(tokens=[-2**31]), dict(tokens=np.array([1.5])),
                          dict(tokens=np.array([[1, 2]])), dict(tokens="abc"), dict(tokens=[None]), dict(text=5),
                          dict(text=""), dict(tokens=list(range(1000))), dict(tokens=[151747]), dict(tokens=[151748]),
                          dict(image=np.zeros((4, 4, 3), np.uint8)), dict(tokens=[1], image=5),
                          dict(tokens=np.arange(3, dtype=np.uint64)), dict(tokens=[True])])

        def fn(ctx, arg=arg):
            s = m.Session(ctx.model("llm"), n_ctx=128)
            s.prefill(**arg)
            return _finite_logits(s)
        return f"prefill({str(arg)[:80]}) with n_ctx 128 on llm", fn
    if kind == "generate":
        kw = rng.choice([dict(max_tokens=-5), dict(max_tokens=0), dict(max_tokens=10**9), dict(stop="x"), dict(stop=5),
                         dict(max_tokens=3, temperature=0.0), dict(max_tokens=3, top_k=10**9)])
        n_ctx = rng.choice([4, 8, 64])

        def fn(ctx, kw=kw, n_ctx=n_ctx):
            s = m.Session(ctx.model("llm"), n_ctx=n_ctx)
            s.prefill(tokens=[1, 2, 3])
            s.generate(**kw)
            return _finite_logits(s)
        return f"generate({kw}) after 3 tokens, n_ctx {n_ctx}", fn
    if kind == "tokens":
        op = rng.choice(["remove", "hidden", "position_logits", "detok", "token_bytes", "sample", "reset_twice", "set_capture"])
        a, b = rng.choice([(0, 0), (-1, 2), (2, 1), (0, 2**40), (5, 6), (0, None)])

        def fn(ctx, op=op, a=a, b=b):
            s = m.Session(ctx.model("llm"), n_ctx=64)
            s.set_capture(hidden=True, logits=True)
            s.prefill(tokens=[1, 2, 3])
            out = []
            if op == "remove":
                s.remove(a, b if b is not None else 1)
                s.prefill(tokens=[4])
            elif op == "hidden":
                out.append(np.asarray(s.hidden_states(a, b)))
            elif op == "position_logits":
                out.append(np.asarray(s.position_logits(a, b)))
            elif op == "detok":
                ctx.model("llm").detokenize([a, 2**31 - 1, -5])
            elif op == "token_bytes":
                m.Tokenizer(ctx.path("llm")).token_bytes(a - 10)
            elif op == "sample":
                s.sample(temperature=a)
            elif op == "reset_twice":
                s.reset()
                s.reset()
                s.generate(max_tokens=1)
            else:
                s.set_capture(hidden=a, logits=b)
            return out + _finite_logits(s)
        return f"session.{op}({a}, {b}) after 3 tokens", fn
    if kind == "image_args":
        k, v = rng.choice([("max_slice_nums", 0), ("max_slice_nums", -1), ("max_slice_nums", 10**6), ("max_slice_nums", 2**40),
                           ("use_image_id", "x"), ("image_id", -1), ("image_id", 2**40), ("image_id", 1.5),
                           ("max_slice_nums", 1.0)])
        shape = rng.choice([(32, 32, 3), (14, 3000, 3), (3000, 14, 3)])

        def fn(ctx, k=k, v=v, shape=shape):
            ch = ctx.model("v45").encode_image(np.full(shape, 100, np.uint8), **{k: v})
            return [np.asarray(ch.embeddings)]
        return f"encode_image({shape}, {k}={v!r})", fn
    if kind == "audio_api":
        op = rng.choice(["push_bad", "finish_twice", "push_after_finish", "stream_on_v45", "encode_on_llm", "respond_empty"])

        def fn(ctx, op=op):
            base = "v45" if op == "stream_on_v45" else ("llm" if op == "encode_on_llm" else "o45")
            s = m.Session(ctx.model(base), n_ctx=512)
            if op == "encode_on_llm":
                s.encode_audio(np.zeros(16000, np.float32))
                return []
            st = s.audio_stream()
            if op == "push_bad":
                st.push(np.full(100, np.nan, np.float32))
            elif op in ("finish_twice", "push_after_finish"):
                st.push(np.zeros(16000, np.float32))
                st.finish()
                if op == "finish_twice":
                    st.finish()
                else:
                    st.push(np.zeros(100, np.float32))
            else:
                st.respond(max_tokens=2)
            return _finite_logits(s)
        return f"audio API: {op}", fn
    # misc
    op = rng.choice(["find_files_file", "tokenizer_dir", "set_log_level", "list_devices", "template_none", "render_bad",
                     "defaults", "segments_bad"])

    def fn(ctx, op=op):
        if op == "find_files_file":
            m.find_model_files(ctx.path("llm"))
        elif op == "tokenizer_dir":
            m.Tokenizer("/")
        elif op == "set_log_level":
            m.set_log_level(rng.choice(["", "verbose", None, 5]))
        elif op == "list_devices":
            m.list_devices()
        elif op == "template_none":
            m.ChatTemplate(None)
        elif op == "render_bad":
            ctx.model("llm").render_chat([{"role": "user", "content": "x"}], enable_thinking="x")
        elif op == "defaults":
            dict(ctx.model("o45").defaults)
        else:
            ctx.model("v45").chat_segments([{"role": "user", "content": [np.zeros((1, 1, 3), np.uint8)] * 50}], max_slice_nums=1)
        return []
    return f"misc: {op}", fn
