#!/usr/bin/env python3
"""MiniCPM-o 4.5 speech output speed: minicpm.cpp next to the minicpmo-utils / transformers
PyTorch path, at the released sizes with random weights (``make_random_speech.py``).

Tests (``--tests``, all by default). Every test runs on its own freshly loaded model; ``cold``
is the first call of the test after loading (graph build and allocation included), ``warm`` the
median of ``--reps`` more calls of each configuration.

* ``tts_stream``: the streamed talker (``TTSStreamingGenerator`` / ``Tts.stream``): the condition
  of 10 text tokens (``emb_text`` + normalised ``projector_semantic`` of random LLM hidden states)
  then ``push`` of that chunk with up to ``--chunk-codes`` codes (25 = the first 1 s window),
  chunk after chunk until ``--codes`` codes; the last chunk has ``last=True``. Tokens/s = codes /
  time of the whole turn (conditions, prefills and decode steps). ``first_chunk_ms``: the first
  chunk's condition + push.
* ``tts_offline``: ``MiniCPMTTS.generate`` on a 10-token condition with EOS masked for
  ``--codes`` steps (``min_new_tokens = max_new_tokens = codes``): steps/s.
* ``flow_mel``: the whole-utterance flow (``CausalMaskedDiffWithXvec.inference`` /
  ``Token2Wav.flow_mel``) of ``--flow-codes`` codes (25/50/100 = 1/2/4 s) behind a prompt of
  ``--prompt-codes`` codes (its mel and a speaker vector), at each of ``--steps`` (10/5/3 Euler
  steps, CFG batch of 2). ``ms_per_s``: ms per 1 s of audio (the real-time factor x 1000).
* ``flow_stream``: the streaming flow (``Token2wav.set_stream_cache`` + ``stream``'s flow part /
  ``Token2Wav.set_prompt`` + ``push``): the prompt pass, then ``--windows`` windows of 28 codes
  (25 new + 3 look-ahead, the first starting with 3 x code 4218), each 50 mel frames = 1 s, at
  each of ``--steps``; cold = the first window after the first prompt pass. The reference trims
  its caches after each window as ``Token2wav.stream`` does.
* ``vocoder``: the original HiFT (``HiFTGenerator.forward`` / ``Vocoder.vocode``) on 1 s and 4 s
  of mel (50 / 200 frames), ms per 1 s of audio.
* ``ttfa``: time to first audio after the prompt, with the voice prompt already set (flow prompt
  pass done) and the last LLM token's hidden states in hand: the first chunk's condition + TTS push
  up to 25 codes, the first flow window (3 x 4218 + 25 codes) at ``--ttfa-steps``, and the
  vocoder on its 50 frames. Cold: the first turn after loading; warm: the median of the next
  ``--reps`` turns (the prompt pass is redone before each turn, outside the clock).

minicpm.cpp: ``minicpm_cpp.Model(file, device, n_threads)`` with ``Tts(model)``,
``Token2Wav(model._m)``, ``Vocoder(model._m)``; numpy in and out.

PyTorch: the reference classes built directly at the same sizes with the checkpoint's weights:
the talker of tests/ref_minicpmo_tts.py (``RefTts``: transformers' LlamaModel 768 wide, 20
layers, the official condition and sampling with the same seeded draw; its decode loop is
written here device-aware, one code per step with a DynamicCache, as the reference), the
minicpmo-utils flow and original HiFT (tests/tiny_token2wav.py ``load_flow``, tests/tiny_hift.py
``build_reference``), imported through tests/speech_ref.py. float32 unless ``--torch-dtype``
says otherwise (talker and flow; the vocoder stays float32); ``torch.inference_mode``,
``cuda.synchronize`` before each clock read; torch threads = ours. The talker samples on the
host each step, as the reference's per-step EOS check does.

Speed ratios in the JSON: ``pytorch ms / minicpm.cpp ms`` (> 1: minicpm.cpp is faster).

    python benchmarks/make_random_speech.py /tmp/speech-real
    python benchmarks/bench_speech.py /tmp/speech-real --device cpu --threads 2 --json speech.json
    python benchmarks/bench_speech.py --tiny --reps 1 --json /tmp/s.json      # tiny, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO / "tests"))

TESTS = ("tts_stream", "tts_offline", "flow_mel", "flow_stream", "vocoder", "ttfa")
RATIO_DEFINITION = "pytorch ms / minicpm.cpp ms; > 1 means minicpm.cpp is faster"
CODES_PER_S = 25
PAD_CODE = 4218
WINDOW, LOOKAHEAD = 28, 3
TEXT_CHUNK = 10
# The targets of issue 10: (figure, device kind, limit, unit).
TARGETS = (("flow_stream ms per 1 s at 10 steps", "cuda", 20.0, "ms"), ("tts_stream tokens/s", "cuda", 500.0, "tok/s"),
           ("ttfa warm", "cuda", 250.0, "ms"), ("flow_stream ms per 1 s at 5 steps", "cpu", 1000.0, "ms"))


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return (time.perf_counter() - t0) * 1000.0, out


# ---------------------------------------------------------------------------------------------
# Inputs


class Inputs:
    """The same random inputs for both runtimes."""

    def __init__(self, llm_dim: int, args, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n_text = TEXT_CHUNK * (1 + args.codes // max(1, args.chunk_codes))
        self.text = rng.integers(0, 150000, n_text).astype(np.int64)
        self.hidden = rng.standard_normal((n_text, llm_dim)).astype(np.float32)
        n_codes = max(max(args.flow_codes), WINDOW * (args.windows + 1))
        self.codes = rng.integers(0, 6561, n_codes).astype(np.int64)
        p = args.prompt_codes
        self.prompt_tokens = rng.integers(0, 6561, p).astype(np.int64)
        self.prompt_mel = (rng.standard_normal((2 * p, 80)) - 5.0).astype(np.float32)
        self.spk = rng.standard_normal(192).astype(np.float32)
        self.noise = rng.standard_normal((80, 2 * (p + n_codes) + 400)).astype(np.float32)
        self.mel = {s: (rng.standard_normal((80, 50 * s)) * 1.5 - 5.0).astype(np.float32) for s in (1, 4)}

    def windows(self, n: int) -> List[np.ndarray]:
        buf = [PAD_CODE] * LOOKAHEAD + list(self.codes)
        out = []
        for _ in range(n):
            out.append(np.asarray(buf[:WINDOW], np.int64))
            buf = buf[WINDOW - LOOKAHEAD:]
        return out


# ---------------------------------------------------------------------------------------------
# minicpm.cpp


class Ours:
    name = "minicpm.cpp"

    def __init__(self, gguf: str, device: str, threads: int) -> None:
        self.gguf, self.device, self.threads = gguf, device, threads
        self.clock = Clock("cpu")  # our calls return when the result is on the host

    def load(self, parts: Sequence[str] = ("tts", "flow", "hift")) -> None:
        import minicpm_cpp
        from minicpm_cpp.token2wav import Token2Wav
        from minicpm_cpp.tts import Tts
        from minicpm_cpp.vocoder import Vocoder

        self.model = minicpm_cpp.Model(self.gguf, device=self.device, n_threads=self.threads)
        self.tts = Tts(self.model, n_threads=self.threads)
        self.t2w = Token2Wav(self.model._m, self.threads)
        self.voc = Vocoder(self.model._m, self.threads)

    def close(self) -> None:
        for k in ("voc", "t2w", "tts", "model"):
            self.__dict__.pop(k, None)
        import gc

        gc.collect()

    def llm_dim(self) -> int:
        return int(self.tts.hparams["llm_dim"])

    # talker
    def tts_stream_begin(self, seed: int = 0) -> None:
        self.stream = self.tts.stream(seed=seed)

    def tts_push(self, tokens, hidden, last: bool, max_codes: int) -> List[int]:
        c = self.tts.condition(tokens, hidden)
        return self.stream.push(c, last=last, max_new_tokens=max_codes)

    def tts_generate(self, tokens, hidden, n: int) -> int:
        c = self.tts.condition(tokens, hidden)
        self.tts.generate(c, seed=0, min_new_tokens=n, max_new_tokens=n)
        return n

    # flow
    def flow_mel(self, inp: Inputs, n: int, steps: int) -> np.ndarray:
        p = {"prompt_tokens": inp.prompt_tokens, "prompt_mel": inp.prompt_mel, "spk": inp.spk}
        total = 2 * (len(inp.prompt_tokens) + n)
        return self.t2w.flow_mel(inp.codes[:n], p, n_timesteps=steps, noise=inp.noise[:, :total])

    def set_prompt(self, inp: Inputs, steps: int) -> None:
        p = {"prompt_tokens": inp.prompt_tokens, "prompt_mel": inp.prompt_mel, "spk": inp.spk}
        self.t2w.set_prompt(p, n_timesteps=steps, noise=inp.noise)

    def flow_push(self, window: np.ndarray) -> np.ndarray:
        return self.t2w.push(window, last=False)

    # vocoder
    def vocode(self, mel: np.ndarray) -> np.ndarray:
        return self.voc.vocode(mel, seed=0)


# ---------------------------------------------------------------------------------------------
# PyTorch reference


class Torch:
    name = "pytorch"

    def __init__(self, ckpt: Path, sizes: Dict[str, Dict[str, object]], device: str, threads: int, dtype: str) -> None:
        import torch

        import speech_ref  # noqa: F401  (stubs torchaudio before the reference imports)

        torch.set_num_threads(threads)
        self.torch = torch
        self.ckpt, self.sizes = Path(ckpt), sizes
        self.dev = torch.device(device)
        self.dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.clock = Clock(device)

    def load(self, parts: Sequence[str] = ("tts", "flow", "hift")) -> None:
        """Builds the reference modules a test uses (``parts``) with the checkpoint's weights."""
        import tiny_hift
        import tiny_token2wav
        from ref_minicpmo_tts import load_ref_tts

        torch = self.torch
        t2w = self.ckpt / "assets" / "token2wav"
        if "tts" in parts:
            self.tts = load_ref_tts(self.ckpt).to(self.dev, self.dtype).eval()
        if "flow" in parts:
            flow = tiny_token2wav.load_flow(t2w, self.sizes["flow"])
            self._stream_ready(flow)
            self.flow = flow.to(self.dev, self.dtype).eval()
        if "hift" not in parts:
            return
        h = dict(self.sizes["hift"])
        hift = tiny_hift.build_reference(1, **h)
        state = torch.load(t2w / "hift_original.pt", map_location="cpu", weights_only=True)
        hift.load_state_dict({k[len("generator."):]: v for k, v in state.items()}, strict=True)
        self.hift = hift.to(self.dev).eval()  # the reference vocodes in float32

    def close(self) -> None:
        for k in ("tts", "flow", "hift", "past", "cache"):
            self.__dict__.pop(k, None)
        import gc

        gc.collect()
        if self.dev.type == "cuda":
            self.torch.cuda.empty_cache()

    def _stream_ready(self, ref) -> None:
        """The reference's streaming scratch buffers have the released model's fixed shapes (16
        blocks of 8 heads): sized to this model (a no-op at the real size); the encoder's
        forward_chunk without its torch.compile wrapper (the same operations, eager)."""
        torch = self.torch
        from stepaudio2.cosyvoice2.transformer.upsample_encoder_v2 import UpsampleConformerEncoderV2

        est = ref.decoder.estimator
        depth, blk = len(est.blocks), est.blocks[0]
        heads, hd, width = blk.attn.num_heads, blk.attn.head_dim, blk.norm1.normalized_shape[0]
        ref.decoder.cnn_cache_buffer = torch.zeros(16, depth, 2, 2 * width, 2)
        ref.decoder.att_cache_buffer = torch.zeros(16, depth, 2, heads, 1000, 2 * hd)
        est.cnn_cache_buffer = torch.zeros(depth, 2, 2 * width, 2)
        est.att_cache_buffer = torch.zeros(depth, 2, heads, 1000, 2 * hd)
        fn = UpsampleConformerEncoderV2.forward_chunk
        orig = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", None)
        if orig is not None:
            ref.encoder.forward_chunk = types.MethodType(orig, ref.encoder)

    def llm_dim(self) -> int:
        return int(json.loads((self.ckpt / "config.json").read_text())["tts_config"]["llm_dim"])

    def _t(self, a, dtype=None):
        return self.torch.as_tensor(a, device=self.dev, dtype=dtype if dtype is not None else self.dtype)

    # talker (RefTts's modules; the decode loop of MiniCPMTTS.generate / generate_with_buffer)
    def _condition(self, tokens, hidden):
        torch, r = self.torch, self.tts
        with torch.inference_mode():
            e = r.emb_text(self._t(tokens, torch.long))
            h = r.projector_semantic(self._t(hidden))
            if r.cfg["normalize_projected_hidden"]:
                h = torch.nn.functional.normalize(h, p=2, dim=-1)
            return e + h

    def _row(self, token: int):
        return self.tts.emb_text(self._t([token], self.torch.long))

    def _decode(self, x, start: int, n: int, history: List[int], bos_first: bool, mask_eos_until: int,
                stop_at_eos: bool) -> List[int]:
        from ref_minicpmo_tts import SplitMix, ref_probs

        torch, r = self.torch, self.tts
        rng = getattr(self, "rng", None) or SplitMix(0)
        self.rng = rng
        out: List[int] = []
        L = x.shape[1]
        with torch.inference_mode():
            for t in range(n):
                if t == 0:
                    inp, pos = x, torch.arange(start, start + L, device=self.dev)[None]
                else:
                    inp = r.emb_code[0](self._t([[out[-1]]], torch.long))
                    pos = torch.tensor([[start + L + t - 1]], device=self.dev)
                o = r.model(position_ids=pos, past_key_values=self.past, inputs_embeds=inp, use_cache=True)
                self.past = o.past_key_values
                logits = r.head_code[0](o.last_hidden_state[0, -1]).float().cpu()
                probs = ref_probs(logits, history + out, bos_step=bos_first and t == 0 and not history,
                                  eos=r.eos, mask_eos=t < mask_eos_until)
                idx = rng.draw(probs.numpy())
                if idx == r.eos and stop_at_eos:
                    break
                out.append(idx)
        self.pos = start + L + len(out)
        return out

    def tts_stream_begin(self, seed: int = 0) -> None:
        from ref_minicpmo_tts import SplitMix

        self.past, self.pos, self.history, self.rng = None, 0, [], SplitMix(seed)

    def tts_push(self, tokens, hidden, last: bool, max_codes: int) -> List[int]:
        torch = self.torch
        with torch.inference_mode():
            parts = [self._condition(tokens, hidden)]
            if last:
                parts.append(self._row(self.tts.text_eos_token_id))
            parts.append(self._row(self.tts.audio_bos_token_id))
            x = torch.cat(parts, 0)[None]
        codes = self._decode(x, self.pos, max_codes, self.history, True, 0, True)
        self.history += codes
        return codes

    def tts_generate(self, tokens, hidden, n: int) -> int:
        from ref_minicpmo_tts import SplitMix

        torch = self.torch
        self.past, self.rng = None, SplitMix(0)
        with torch.inference_mode():
            x = torch.cat([self._condition(tokens, hidden), self._row(self.tts.text_eos_token_id),
                           self._row(self.tts.audio_bos_token_id)], 0)[None]
        self._decode(x, 0, n, [], True, n, False)
        return n

    # flow
    def flow_mel(self, inp: Inputs, n: int, steps: int):
        torch = self.torch
        total = 2 * (len(inp.prompt_tokens) + n)
        self.flow.decoder.rand_noise = self._t(inp.noise[None, :, :max(total, 1)])
        t = self._t(inp.codes[:n][None], torch.int32)
        pt = self._t(inp.prompt_tokens[None], torch.int32)
        pm = self._t(inp.prompt_mel[None])
        with torch.inference_mode():
            mel = self.flow.inference(t, self._t([n], torch.int32), pt, self._t([pt.shape[1]], torch.int32), pm,
                                      self._t([pm.shape[1]], torch.int32), self._t(inp.spk[None]), n_timesteps=steps)
        return mel[0].float().cpu().numpy()

    def set_prompt(self, inp: Inputs, steps: int) -> None:
        torch = self.torch
        self.steps = steps
        self.flow.decoder.rand_noise = self._t(inp.noise[None])
        toks = np.concatenate([inp.prompt_tokens, inp.prompt_tokens[:LOOKAHEAD]])
        with torch.inference_mode():
            self.cache = self.flow.setup_cache(self._t(toks[None], torch.long), self._t(inp.prompt_mel[None]),
                                               self._t(inp.spk[None]), n_timesteps=steps)
        self.n_prompt_frames = 2 * len(inp.prompt_tokens)
        self.spk_t = self._t(inp.spk[None])

    def flow_push(self, window: np.ndarray):
        from stepaudio2.token2wav import Token2wav

        torch = self.torch
        state = types.SimpleNamespace(stream_cache=self.cache, flow=self.flow, CONFORMER_HISTORY_FRAMES=100)
        with torch.inference_mode():
            mel, state.stream_cache = self.flow.inference_chunk(self._t(window[None], torch.int32), self.spk_t,
                                                                state.stream_cache, last_chunk=False,
                                                                n_timesteps=self.steps)
        Token2wav._trim_estimator_cache(state, self.n_prompt_frames)
        Token2wav._trim_conformer_cache(state, self.n_prompt_frames)
        self.cache = state.stream_cache
        return mel[0].float().cpu().numpy()

    # vocoder
    def vocode(self, mel: np.ndarray):
        torch = self.torch
        with torch.inference_mode():
            wav, _ = self.hift.forward(torch.as_tensor(mel[None], device=self.dev, dtype=torch.float32))
        return wav[0].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Tests


def run_tts_stream(rt, inp: Inputs, args) -> Dict[str, Any]:
    def turn():
        rt.tts_stream_begin(0)
        t0 = time.perf_counter()
        codes, first, i = 0, None, 0
        while codes < args.codes:
            sl = slice(i * TEXT_CHUNK, (i + 1) * TEXT_CHUNK)
            want = min(args.chunk_codes, args.codes - codes)
            last = codes + want >= args.codes or (i + 2) * TEXT_CHUNK > len(inp.text)
            got = rt.tts_push(inp.text[sl], inp.hidden[sl], last, want)
            rt.clock.sync()
            if first is None:
                first = (time.perf_counter() - t0) * 1000.0
            codes += len(got)
            i += 1
            if last or (i + 1) * TEXT_CHUNK > len(inp.text):
                break  # (a talker that ends its chunks early stops at the end of the text)
        ms = (time.perf_counter() - t0) * 1000.0
        return ms, codes, first

    runs = [turn() for _ in range(1 + args.reps)]
    ms, codes, first = runs[0]
    warm = runs[1:]
    return {"codes": codes, "chunk_codes": args.chunk_codes,
            "cold_ms": ms, "cold_tokens_per_s": codes / ms * 1000.0, "cold_first_chunk_ms": first,
            "warm_ms": median([r[0] for r in warm]),
            "warm_tokens_per_s": median([r[1] / r[0] * 1000.0 for r in warm]),
            "warm_first_chunk_ms": median([r[2] for r in warm])}


def run_tts_offline(rt, inp: Inputs, args) -> Dict[str, Any]:
    sl = slice(0, TEXT_CHUNK)
    times = [rt.clock.time(lambda: rt.tts_generate(inp.text[sl], inp.hidden[sl], args.codes))[0]
             for _ in range(1 + args.reps)]
    return {"codes": args.codes, "cold_ms": times[0], "cold_tokens_per_s": args.codes / times[0] * 1000.0,
            "warm_ms": median(times[1:]), "warm_tokens_per_s": args.codes / median(times[1:]) * 1000.0}


def run_flow_mel(rt, inp: Inputs, args) -> Dict[str, Any]:
    out: Dict[str, Any] = {"prompt_codes": args.prompt_codes, "configs": {}}
    first = True
    for n in args.flow_codes:
        for steps in args.steps:
            if first:
                out["cold_ms"] = rt.clock.time(lambda: rt.flow_mel(inp, n, steps))[0]
                out["cold_config"] = {"codes": n, "steps": steps}
                first = False
            ts = [rt.clock.time(lambda: rt.flow_mel(inp, n, steps))[0] for _ in range(args.reps)]
            ms = median(ts)
            out["configs"][f"{n}x{steps}"] = {"codes": n, "steps": steps, "seconds": n / CODES_PER_S,
                                              "warm_ms": ms, "ms_per_s": ms / (n / CODES_PER_S)}
    return out


def run_flow_stream(rt, inp: Inputs, args) -> Dict[str, Any]:
    out: Dict[str, Any] = {"prompt_codes": args.prompt_codes, "windows": args.windows, "configs": {}}
    wins = inp.windows(args.windows)
    first = True
    for steps in args.steps:
        prompt_ms = rt.clock.time(lambda: rt.set_prompt(inp, steps))[0]
        ts = [rt.clock.time(lambda: rt.flow_push(w))[0] for w in wins]
        cfg = {"steps": steps, "prompt_ms": prompt_ms, "window_ms": ts}
        if first:
            out["cold_prompt_ms"], out["cold_window_ms"], out["cold_steps"] = prompt_ms, ts[0], steps
            ts = ts[1:]
            first = False
        for _ in range(max(0 if ts else 1, args.reps - 1)):
            rt.set_prompt(inp, steps)
            ts += [rt.clock.time(lambda: rt.flow_push(w))[0] for w in wins]
        cfg["warm_ms"] = median(ts)
        cfg["ms_per_s"] = cfg["warm_ms"]  # a window is 25 new codes = 1 s
        out["configs"][str(steps)] = cfg
    return out


def run_vocoder(rt, inp: Inputs, args) -> Dict[str, Any]:
    out: Dict[str, Any] = {"configs": {}}
    out["cold_ms"] = rt.clock.time(lambda: rt.vocode(inp.mel[1]))[0]
    for s in (1, 4):
        ts = [rt.clock.time(lambda: rt.vocode(inp.mel[s]))[0] for _ in range(args.reps)]
        out["configs"][f"{s}s"] = {"seconds": s, "warm_ms": median(ts), "ms_per_s": median(ts) / s}
    return out


def run_ttfa(rt, inp: Inputs, args) -> Dict[str, Any]:
    steps = args.ttfa_steps

    def turn():
        rt.set_prompt(inp, steps)
        rt.tts_stream_begin(0)
        rt.clock.sync()
        t0 = time.perf_counter()
        codes = rt.tts_push(inp.text[:TEXT_CHUNK], inp.hidden[:TEXT_CHUNK], False, WINDOW - LOOKAHEAD)
        rt.clock.sync()
        t1 = time.perf_counter()
        window = np.asarray(([PAD_CODE] * LOOKAHEAD + list(codes) + list(inp.codes))[:WINDOW], np.int64)
        mel = rt.flow_push(window)
        rt.clock.sync()
        t2 = time.perf_counter()
        rt.vocode(np.ascontiguousarray(mel))
        rt.clock.sync()
        t3 = time.perf_counter()
        return [(t3 - t0) * 1000.0, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0]

    runs = [turn() for _ in range(1 + args.reps)]
    keys = ("ms", "tts_ms", "flow_ms", "vocoder_ms")
    out: Dict[str, Any] = {"steps": steps}
    for i, k in enumerate(keys):
        out["cold_" + k] = runs[0][i]
        out["warm_" + k] = median([r[i] for r in runs[1:]])
    return out


NEEDS = {"tts_stream": ("tts",), "tts_offline": ("tts",), "flow_mel": ("flow",), "flow_stream": ("flow",),
         "vocoder": ("hift",), "ttfa": ("tts", "flow", "hift")}
RUNNERS = {"tts_stream": run_tts_stream, "tts_offline": run_tts_offline, "flow_mel": run_flow_mel,
           "flow_stream": run_flow_stream, "vocoder": run_vocoder, "ttfa": run_ttfa}


def bench(rt, tests: Sequence[str], args, log, res: Optional[Dict[str, Any]] = None,
          saved: Callable[[], None] = lambda: None) -> Dict[str, Any]:
    res = {} if res is None else res
    for name in tests:
        t0 = time.perf_counter()
        rt.load(NEEDS[name])
        load_ms = (time.perf_counter() - t0) * 1000.0
        inp = Inputs(rt.llm_dim(), args)
        res[name] = RUNNERS[name](rt, inp, args)
        res[name]["load_ms"] = load_ms
        rt.close()
        log(f"  {rt.name:12s} {name:12s} done in {time.perf_counter() - t0:.1f} s")
        saved()
    return res


# ---------------------------------------------------------------------------------------------
# Report


def headline(r: Dict[str, Any]) -> Dict[str, float]:
    """Flat figures of one runtime: name -> value (ms unless it says tokens/s)."""
    f: Dict[str, float] = {}
    if "tts_stream" in r:
        t = r["tts_stream"]
        f["tts_stream tokens/s cold"] = t["cold_tokens_per_s"]
        f["tts_stream tokens/s warm"] = t["warm_tokens_per_s"]
        f["tts_stream first chunk ms warm"] = t["warm_first_chunk_ms"]
    if "tts_offline" in r:
        f["tts_offline tokens/s warm"] = r["tts_offline"]["warm_tokens_per_s"]
    if "flow_mel" in r:
        for k, c in r["flow_mel"]["configs"].items():
            f[f"flow_mel {c['codes']} codes {c['steps']} steps ms per 1 s"] = c["ms_per_s"]
    if "flow_stream" in r:
        fs = r["flow_stream"]
        f["flow_stream window ms cold"] = fs["cold_window_ms"]
        for k, c in fs["configs"].items():
            f[f"flow_stream ms per 1 s at {c['steps']} steps"] = c["ms_per_s"]
            f[f"flow_stream prompt pass ms at {c['steps']} steps"] = c["prompt_ms"]
    if "vocoder" in r:
        for k, c in r["vocoder"]["configs"].items():
            f[f"vocoder {k} ms per 1 s"] = c["ms_per_s"]
    if "ttfa" in r:
        t = r["ttfa"]
        f["ttfa cold"] = t["cold_ms"]
        f["ttfa warm"] = t["warm_ms"]
        for k in ("tts_ms", "flow_ms", "vocoder_ms"):
            f[f"ttfa warm: {k[:-3]}"] = t["warm_" + k]
    return f


def print_table(report: Dict[str, Any]) -> None:
    ours = headline(report["results"]["minicpm.cpp"])
    ref = headline(report["results"].get("pytorch", {}))
    print(f"\n{'figure':48s} {'minicpm.cpp':>12s} {'pytorch':>12s} {'ratio':>7s}")
    for k, v in ours.items():
        r = ref.get(k)
        ratio = report["ratios"].get(k)
        print(f"{k:48s} {v:12.1f} {(f'{r:12.1f}' if r is not None else ' ' * 12)} "
              f"{(f'{ratio:7.2f}' if ratio is not None else '')}")
    for t in report.get("targets", []):
        print(f"target {t['figure']} ({t['device']}): {t['value']:.1f} vs {t['limit']} {t['unit']} -> "
              f"{'met' if t['met'] else 'NOT met'}")


def machine(device: str) -> Dict[str, Any]:
    m: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                         "cpu_count": os.cpu_count(), "processor": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                m["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        m["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import torch

        m["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            m["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return m


def parse_ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="make_random_speech.py's output folder (speech-sizes.json, hf/, *.gguf)")
    ap.add_argument("--tiny", action="store_true", help="write and use a tiny checkpoint in a temporary folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="warm calls per configuration (median)")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--codes", type=int, default=100, help="TTS codes per turn")
    ap.add_argument("--chunk-codes", type=int, default=25, help="codes per 10-token TTS chunk (streaming)")
    ap.add_argument("--flow-codes", default="25,50,100")
    ap.add_argument("--steps", default="10,5,3")
    ap.add_argument("--ttfa-steps", type=int, default=10)
    ap.add_argument("--windows", type=int, default=3, help="streaming flow windows per prompt pass")
    ap.add_argument("--prompt-codes", type=int, default=75, help="voice prompt length in codes (75 = 3 s)")
    ap.add_argument("--no-torch", action="store_true", help="minicpm.cpp only")
    ap.add_argument("--torch-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                    help="dtype of the PyTorch talker and flow (the vocoder stays float32)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    args.flow_codes, args.steps = parse_ints(args.flow_codes), parse_ints(args.steps)
    tests = [t for t in args.tests.split(",") if t]
    bad = set(tests) - set(TESTS)
    if bad:
        raise SystemExit(f"unknown tests {sorted(bad)}; known: {', '.join(TESTS)}")
    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    log = print

    tmp = None
    if args.tiny and not args.folder:
        tmp = tempfile.TemporaryDirectory(prefix="bench-speech-")
        args.folder = tmp.name
    if not args.folder:
        raise SystemExit("give make_random_speech.py's folder, or --tiny")
    folder = Path(args.folder)
    if not (folder / "speech-sizes.json").is_file():
        import make_random_speech

        if not args.tiny:
            raise SystemExit(f"{folder} has no speech-sizes.json: run make_random_speech.py {folder}")
        make_random_speech.main([str(folder), "--tiny", "--type", "f32", "--quiet", "--force"])
    meta = json.loads((folder / "speech-sizes.json").read_text())

    report: Dict[str, Any] = {
        "benchmark": "bench_speech", "device": args.device, "threads": args.threads, "reps": args.reps,
        "gguf": meta["gguf"], "type": meta["type"], "tiny": meta["tiny"], "llm_dim": meta["llm_dim"],
        "sizes": meta["sizes"], "machine": machine(args.device),
        "settings": {"codes": args.codes, "chunk_codes": args.chunk_codes, "flow_codes": args.flow_codes,
                     "steps": args.steps, "ttfa_steps": args.ttfa_steps, "windows": args.windows,
                     "prompt_codes": args.prompt_codes, "torch_dtype": args.torch_dtype},
        "ratio_definition": RATIO_DEFINITION, "results": {}, "ratios": {},
    }
    t0 = time.perf_counter()
    log(f"bench_speech: {meta['gguf']} on {args.device}, {args.threads} threads, reps {args.reps}")

    def saved() -> None:  # the figures so far (a long run that is stopped keeps them)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    report["results"]["minicpm.cpp"] = {}
    bench(Ours(meta["gguf"], args.device, args.threads), tests, args, log, report["results"]["minicpm.cpp"], saved)
    if not args.no_torch:
        rt = Torch(Path(meta["checkpoint"]), meta["sizes"], args.device, args.threads, args.torch_dtype)
        report["results"]["pytorch"] = {}
        bench(rt, tests, args, log, report["results"]["pytorch"], saved)
        ours, ref = headline(report["results"]["minicpm.cpp"]), headline(report["results"]["pytorch"])
        for k, v in ours.items():
            if k in ref and v > 0:
                # tokens/s: ours / theirs; ms: theirs / ours (> 1: minicpm.cpp is faster either way)
                report["ratios"][k] = v / ref[k] if "tokens/s" in k else ref[k] / v
    ours = headline(report["results"]["minicpm.cpp"])
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    report["targets"] = [{"figure": f, "device": d, "limit": lim, "unit": u, "value": ours[f],
                          "met": bool(ours[f] >= lim if u == "tok/s" else ours[f] <= lim)}
                         for f, d, lim, u in TARGETS if d == kind and f in ours]
    try:
        report["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    report["wall_s"] = time.perf_counter() - t0
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
