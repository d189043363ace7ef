"""Fuzz worker: reads one JSON case per line on stdin, writes JSON lines on stdout:
``{"id", "desc", ...}`` before running a case (so a crash or hang still has its description),
then ``{"id", "outcome", ...}``. Started and restarted by run.py.

Outcomes: ok, error (a minicpm_cpp.Error, class recorded), unexpected_exception, nan,
nan_weights (non-finite outputs after a mutation that changed weight bytes: garbage in).
"""

from __future__ import annotations

import base64
import json
import os
import random
import resource
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

import gguf_raw  # noqa: E402
import mutate  # noqa: E402

N_CTX = 128
IMAGE = np.random.RandomState(0).randint(0, 256, (40, 56, 3)).astype(np.uint8)


class Ctx:
    def __init__(self, bases, workdir, threads):
        self.bases = {k: Path(v) for k, v in bases.items()}
        self.workdir = Path(workdir)
        self.threads = threads
        self._models = {}
        self._parsed = {}

    def path(self, name):
        return str(self.bases[name])

    def model(self, name):
        import minicpm_cpp as m

        if name not in self._models:
            self._models[name] = m.Model(self.path(name), device="cpu", n_threads=self.threads, warmup=False)
        return self._models[name]

    def parsed(self, name):
        if name not in self._parsed:
            raw = self.bases[name].read_bytes()
            self._parsed[name] = (gguf_raw.parse(raw), raw)
        return self._parsed[name]


def _finite(arrs):
    for a in arrs:
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            return False
    return True


def _exercise(m, model, chat=True, vision=True, audio=True):
    """Short chat, an image encode on vision models, an audio encode on audio models."""
    out = []
    s = m.Session(model, n_ctx=N_CTX)
    if chat:
        s.chat([{"role": "user", "content": "Hello"}], max_tokens=4)
        out.append(np.asarray(s.logits()))
    if vision and model.has_vision:
        ch = s.encode_image(IMAGE)
        out.append(np.asarray(ch.embeddings))
    if audio and model.has_audio:
        for ch in s.encode_audio(np.random.RandomState(1).uniform(-0.3, 0.3, 8000).astype(np.float32)):
            out.append(np.asarray(ch.embeddings))
    return out


GGUF_BASES = ["llm", "llm", "v45", "v45_split_llm", "v45_split_mmproj", "v45_split_mmproj", "o45"]


def gguf_case(ctx, case, emit):
    import minicpm_cpp as m

    rng = random.Random("gguf:%d:%d" % (case["seed"], case["idx"]))
    target = rng.choice(GGUF_BASES)
    src = {"v45_split_llm": "v45_llm", "v45_split_mmproj": "v45_mmproj"}.get(target, target)
    g, raw = ctx.parsed(src)
    family = "blind" if rng.random() < case.get("blind_frac", 0.3) else "structured"
    op, data, desc, touches = (mutate.blind if family == "blind" else mutate.structured)(rng, g, raw)
    path = ctx.workdir / ("case-%d.gguf" % case["id"])
    path.write_bytes(data)
    emit({"id": case["id"], "desc": desc, "base": target, "family": family, "op": op, "file": str(path), "touches_data": touches})
    try:
        if target == "v45_split_llm":
            model = m.Model(str(path), device="cpu", n_threads=ctx.threads, mmproj=ctx.path("v45_mmproj"), warmup=False)
        elif target == "v45_split_mmproj":
            model = m.Model(ctx.path("v45_llm"), device="cpu", n_threads=ctx.threads, mmproj=str(path), warmup=False)
        else:
            model = m.Model(str(path), device="cpu", n_threads=ctx.threads, warmup=False)
        outs = _exercise(m, model)
        del model
        return outs, touches
    finally:
        pass


def media_case(ctx, case, emit):
    import media
    import minicpm_cpp as m

    rng = random.Random("media:%d:%d" % (case["seed"], case["idx"]))
    is_audio = rng.random() < 0.35
    desc, value, route = (media.audio_case if is_audio else media.image_case)(rng, ctx.workdir)
    emit({"id": case["id"], "desc": desc, "base": "o45" if is_audio else "v45", "family": "audio" if is_audio else "image",
          "op": route})
    model = ctx.model("o45" if is_audio else "v45")
    s = m.Session(model, n_ctx=4096)
    if route == "encode":
        if is_audio:
            return [np.asarray(c.embeddings) for c in s.encode_audio(value)], False
        return [np.asarray(s.encode_image(value).embeddings)], False
    if is_audio:
        if isinstance(value, (bytes, str)):
            data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
            part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
            if isinstance(value, str) and not value.startswith("data:"):
                part = value                       # a path: read as audio by its ending
        elif isinstance(value, np.ndarray) and value.ndim != 1:
            part = {"type": "input_audio", "input_audio": value}
        else:
            part = value
    elif isinstance(value, bytes):
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(value).decode()}}
    elif isinstance(value, str):
        part = {"type": "image_url", "image_url": {"url": value}}
    else:
        part = value
    content = [part, "Describe."]
    s.chat([{"role": "user", "content": content}], max_tokens=2)
    return [np.asarray(s.logits())], False


def api_case(ctx, case, emit):
    import api

    rng = random.Random("api:%d:%d" % (case["seed"], case["idx"]))
    desc, fn = api.api_case(rng)
    emit({"id": case["id"], "desc": desc, "base": "-", "family": "api", "op": desc.split("(")[0].split(":")[0].split(" ")[0]})
    return fn(ctx), False


def main():
    cfg = json.loads(sys.argv[1])
    # AddressSanitizer reserves terabytes of address space for its shadow memory: an address-space
    # limit makes every allocation fail, so under a preloaded ASan runtime the limit is left off.
    if cfg.get("mem_limit_gb") and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        lim = int(cfg["mem_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import minicpm_cpp as m

    try:
        m.set_log_level("error")
    except Exception:  # noqa: BLE001
        pass
    ctx = Ctx(cfg["bases"], cfg["workdir"], cfg.get("threads", 1))
    # The protocol gets a private copy of stdout; fd 1 (native prints, profile tables) goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    emit({"ready": True})
    for line in sys.stdin:
        case = json.loads(line)
        fn = {"gguf": gguf_case, "media": media_case, "api": api_case}[case["kind"]]
        res = {"id": case["id"]}
        started = []

        def emit_desc(obj, started=started):
            started.append(True)
            emit(obj)
        try:
            arrs, touches = fn(ctx, case, emit_desc)
            if _finite(arrs):
                res["outcome"] = "ok"
            else:
                res["outcome"] = "nan_weights" if touches else "nan"
        except m.Error as e:
            res.update(outcome="error", exc=type(e).__name__, msg=str(e)[:300])
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.extract_tb(e.__traceback__)
            where = "%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno) if tb else "?"
            # an exception before the case was described is a bug of the generator, not a finding
            res.update(outcome="unexpected_exception" if started else "harness_error", exc=type(e).__name__,
                       msg=str(e)[:300], where=where)
        f = ctx.workdir / ("case-%d.gguf" % case["id"])
        if f.exists():
            f.unlink()
        emit(res)


if __name__ == "__main__":
    main()
