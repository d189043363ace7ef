#!/usr/bin/env python3
"""Full-duplex session speed (minicpm_cpp.DuplexSession): per-unit latency, the loop's real-time
factor, time to first speech after the user stops, and N sessions at once on one model.

The model is a random-weight MiniCPM-o 4.5 (tests/tiny_models.make_minicpmo45 + the Token2Wav
parts of benchmarks/make_random_speech.py) converted to GGUF, at one of three sizes:

* ``--size tiny``: the test fixtures' sizes (a smoke test, seconds on a CPU);
* ``--size mid``: a Qwen3-0.6B-shaped LLM, the real audio encoder, talker and Token2Wav;
* ``--size real``: the release's shapes: Qwen3-8B LLM (4096 wide, 36 layers), Whisper-medium
  audio encoder, the 20-layer talker, the real flow and vocoders (about 17 GB of random
  bfloat16 weights, then the GGUF; a GPU machine's job).

``--types`` are GGUF matrix types (f16, q4_k_m, ...; q* go through minicpm-quantize from the F16
file). The files are kept in the folder (given, else a temporary one) and reused.

Script of a session (``--units`` units of 1 s, cycling with a period of ``--talk`` + ``--answer``
+ 2 units, one conversational turn each): the user talks for ``--talk`` units (a voiced tone),
then is silent. While talking the decisions are scripted to listen (logit_bias on
<|listen|>); from the first silent unit on, a bias on <|speak|> for the first unit of the turn
makes the model answer; its answer is free after that (max_speak_tokens per unit), ended by a
bias on <|turn_eos|> after ``--answer`` units, then listening again. So every configuration does
the same work whatever its random weights would decide.

Measured per unit: ``decision_ms`` (unit start -> first generated token: streaming log-mel,
audio encoder, the unit's prefill, the first draw), ``first_pcm_ms`` (unit start -> the first
PCM of the unit, speaking units), ``unit_ms`` (whole unit: decode loop, talker, Token2Wav);
P50 / P95 over the units of all sessions; ``rtf`` = the session's wall time / its audio time;
``first_speech_ms`` = from the end of the user's last talking unit (the moment the first silent
second is complete) to the first PCM of the answer (the first turn; ``later_*``: the turns after
it, when ``--units`` covers more than one period: a session's graphs exist by then); ``p95_under_1s``: whether unit_ms P95 < 1000,
the condition to keep up with real time. minicpm.cpp's speaking units also give where the
LLM and Token2Wav time goes (``speaking_encoder_ms_p50``: streaming log-mel + audio encoder,
``speaking_prefill_ms_p50``: the unit's prefill, ``sample_ms_per_step_p50``: host sampling per
decode step, ``speaking_flow_ms_p50`` / ``speaking_vocoder_ms_p50``: Token2Wav's two stages). ``--sessions N`` runs N sessions on one model, each on
its own thread, started together. ``--batch off,on`` measures each count both ways: every session
on its own (``off``: its LLM steps run as graphs of their own, side by side on the device) and
through the model's cross-session batcher (``on``: the LLM steps of the sessions waiting at the same
moment run as one graph); the report gives the batcher's graphs and the requests per graph.
``shared`` is ``on`` with the sessions' caches in one shared buffer (``Model(batch_cache_cells=
(sessions + 1) x n_ctx)``): their decode steps and units run as one attention over it, a graph
that depends on the row count only (a model of its own is loaded for it).
``decisions`` gives each session's units as ``L`` (listened) / ``S`` (spoke).

``--torch`` also runs the PyTorch reference session on the same checkpoint (the ``hf-{size}``
folder next to the GGUF, so ``--gguf`` needs the folder it was made in), after minicpm.cpp's
results for the first type (whose model is freed first): tests/ref_minicpmo_duplex.py's
``RefDuplex`` (our port of the official ``MiniCPMODuplex``: transformers' Qwen3 LLM, the Whisper
encoder and the talker) on ``--device`` in ``--torch-dtype`` (default bfloat16 on a GPU, float32
on the CPU), one session, the same script, voice recording (``tone(2.0)``), ``max_speak_tokens``
and biases, after a 2-unit warm-up as for minicpm.cpp. Each unit's Token2Wav windows
(``t2w_chunks``) are synthesised as the official ``Token2wav.stream`` does: bench_speech.py's
PyTorch streaming flow (``inference_chunk`` on the turn's cache, trimmed as ``stream`` trims it,
``--tts-steps`` Euler steps, in the torch dtype) and then the causal vocoder through
``BoundedVocoder`` (float32; minicpm.cpp's duplex runs that vocoder too); the flow's voice
prompt is set once and every turn starts from a copy of it with a fresh vocoder state, as the
official restores ``token2wav_cache``. Clocks are read after ``torch.cuda.synchronize`` on a GPU:
``decision_ms`` (unit start -> first token chosen), ``llm_ms`` (-> ``</unit>`` fed),
``talker_ms`` (the talker's codes), ``token2wav_ms`` (the unit's windows and the turn reset),
``first_pcm_ms`` (-> the end of the first window that gave samples), ``unit_ms`` (all of it).
The report's result entries say ``impl``: ``minicpm.cpp`` or ``pytorch`` (``type``: the torch
dtype). The two sides draw their free tokens differently, so only the scripted decisions agree.

    python benchmarks/bench_duplex.py --size tiny --units 8 --json /tmp/duplex-tiny.json
    python benchmarks/bench_duplex.py /data/duplex --size real --types f16,q4_k_m --device cuda \\
        --sessions 1,4 --units 30 --json duplex.json
    python benchmarks/bench_duplex.py /data/duplex --size real --types f16 --device cuda --torch \\
        --units 30 --json duplex-vs-torch.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_speech import Torch  # noqa: E402  (numpy only at import; torch when used)

LLM = {
    "tiny": dict(hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=512, layers=2),
    "mid": dict(hidden=1024, heads=16, kv_heads=8, head_dim=128, ffn=3072, layers=28),
    "real": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=12288, layers=36),
}
AUDIO_REAL = {"d_model": 1024, "encoder_attention_heads": 16, "encoder_ffn_dim": 4096, "encoder_layers": 24,
              "num_mel_bins": 80, "max_source_positions": 1500}


def make_model(folder: Path, size: str, log) -> Path:
    """The HF folder and its F16 GGUF (f32 for tiny), made once."""
    import make_random_speech as mrs
    import speech_ref  # noqa: F401  (torchaudio stub before the reference packages)
    import tiny_hift
    import tiny_models
    import tiny_token2wav
    import tiny_voice

    hf = folder / f"hf-{size}"
    out = folder / f"duplex-{size}-{'f32' if size == 'tiny' else 'f16'}.gguf"
    if out.exists():
        return out
    t0 = time.perf_counter()
    tiny = size == "tiny"
    s = mrs.sizes(tiny)
    kw = dict(LLM[size])
    kw["dtype"] = "float32" if tiny else "bfloat16"
    tiny_models.make_minicpmo45(hf, audio=None if size == "tiny" else AUDIO_REAL, tts=s["tts"], **kw)
    tiny_token2wav.add_token2wav_flow(hf, s["flow"])
    tiny_hift.add_hift(hf, seed=3, **({} if tiny else s["hift"]))
    # the streaming vocoder at the release's widths (CausalHiFTGenerator / CausalConvRNNF0Predictor
    # defaults, 512 and 512) except for the smoke-test size
    tiny_hift.add_causal_hift(hf, seed=4, **({} if tiny else dict(base_channels=512, f0_channels=512)))
    tiny_voice.add_voice_assets(hf)
    log(f"  checkpoint ({size}): {time.perf_counter() - t0:.1f} s")
    from minicpm_cpp.convert import convert

    t0 = time.perf_counter()
    convert(hf, out, "f32" if tiny else "f16", force=True, progress=False, log=lambda m: None)
    log(f"  converted: {time.perf_counter() - t0:.1f} s")
    return out


def quantized(f16: Path, typ: str, log) -> Path:
    if typ in ("f16", "f32"):
        return f16
    out = f16.with_name(f16.name.replace("-f16.gguf", f"-{typ}.gguf"))
    if not out.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "minicpm_cpp.quantize", str(f16), str(out), typ.upper()], check=True)
        log(f"  quantized to {typ}: {time.perf_counter() - t0:.1f} s")
    return out


def talk(k: int) -> np.ndarray:
    from tiny_voice import tone

    return tone(1.0, f0=150.0 + 7.0 * (k % 5), seed=k)


def scripted(k: int, args, tok: Dict[str, int]):
    """Unit k of the script: (turn, index in the period, whether the user talks, the logit bias)."""
    turn, kk = divmod(k, args.talk + args.answer + 2)   # talk, answer (turn end at its last unit), one listening unit
    talking = kk < args.talk
    answer_k = kk - args.talk
    if talking:
        bias = {tok["<|listen|>"]: 1e4}
    elif answer_k == 0:
        bias = {tok["<|speak|>"]: 1e4}
    elif answer_k == args.answer:
        bias = {tok["<|turn_eos|>"]: 1e4}
    elif answer_k > args.answer:
        bias = {tok["<|listen|>"]: 1e4}
    else:
        bias = None
    return turn, kk, talking, bias


def run_session(model, voice, args, seed: int, batch: bool = False) -> Dict[str, Any]:
    import minicpm_cpp

    tok = {n: model.tokenize(n)[0] for n in ("<|listen|>", "<|speak|>", "<|turn_eos|>")}
    d = minicpm_cpp.DuplexSession(model, voice=voice, seed=seed, tts_steps=args.tts_steps,
                                  max_speak_tokens=args.max_speak_tokens, generate_audio=not args.no_audio,
                                  window=args.window, n_ctx=args.n_ctx, batch=batch)
    silence = np.zeros(16000, np.float32)
    units: List[Dict[str, Any]] = []
    t_start = time.perf_counter()
    t_silence = None
    first_speeches: List[float] = []
    for k in range(args.units):
        turn, kk, talking, bias = scripted(k, args, tok)
        t0 = time.perf_counter()
        r = d.step(talk(k) if talking else silence, logit_bias=bias)
        if kk == args.talk:
            t_silence = t0   # the first silent second is complete: the user has stopped
        if t_silence is not None and not r.listening and r.ms_first_audio > 0:
            first_speeches.append((t0 - t_silence) * 1000.0 + r.ms_first_audio)
            t_silence = None
        units.append(dict(turn=turn, listening=r.listening, decision_ms=r.ms_decision, first_pcm_ms=r.ms_first_audio,
                          unit_ms=r.ms_total, llm_ms=r.ms_llm, talker_ms=r.ms_talker, token2wav_ms=r.ms_token2wav,
                          encoder_ms=r.ms_encoder, prefill_ms=r.ms_prefill, sample_ms=r.ms_sample, flow_ms=r.ms_flow,
                          vocoder_ms=r.ms_vocoder,
                          audio_s=r.audio.size / 24000.0, n_tokens=len(r.tokens)))
    wall = time.perf_counter() - t_start
    return dict(units=units, wall_s=wall, rtf=wall / args.units, first_speech_ms=first_speeches[0] if first_speeches else None,
                first_speech_later_ms=first_speeches[1:], n_past=d.n_past)


class TorchToken2Wav(Torch):
    """bench_speech's PyTorch Token2Wav for the duplex windows, as ``Token2wav.stream`` runs one:
    the flow's streaming pass (``Torch.load`` / ``set_prompt`` and the ``inference_chunk`` +
    cache trims of ``Torch.flow_push``, here with ``last_chunk`` for a turn's final window), then
    the causal vocoder (``load_causal_vocoder`` + ``BoundedVocoder``, ``Token2wav._stream_vocode``:
    float32, the turn's first samples led by the vocoder delay in silence)."""

    def load_voice(self, voice: Dict[str, np.ndarray], steps: int) -> None:
        """The flow and vocoder, and the voice prompt's pass (``set_stream_cache``): the voice's
        prompt tokens, mel and speaker vector as minicpm.cpp's ``Voice`` holds them."""
        from stepaudio2.causal_vocoder.bounded_vocoder import BoundedVocoder
        from stepaudio2.token2wav import load_causal_vocoder

        self.load(("flow",))
        self.cvoc, _, _ = load_causal_vocoder(self.ckpt / "assets" / "token2wav", self.dev)
        delay = self.cvoc.f0_predictor.condnet[0].causal_padding + self.cvoc.conv_pre_look_right + 1
        self.voc = types.SimpleNamespace(bounded_vocoder=BoundedVocoder(self.cvoc), hift_cache_dict={},
                                         source_cache_len=delay * 480)
        noise = np.random.default_rng(0).standard_normal((80, 50 * 600)).astype(np.float32)   # the flow's table size
        self.set_prompt(types.SimpleNamespace(prompt_tokens=np.asarray(voice["tokens"], np.int64),
                                              prompt_mel=voice["prompt_mel"], spk=voice["speaker"], noise=noise), steps)
        b = self.voc.bounded_vocoder
        with self.torch.inference_mode():
            b.reset()
            b.cache["first_chunk"] = self.torch.ones(1, dtype=self.torch.long)
            self.base = (self._clone(self.cache), self._clone(b.cache))   # MiniCPMO.token2wav_cache
        self.restart()

    @staticmethod
    def _clone(d: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v.clone() for k, v in d.items()}

    def restart(self) -> None:
        """A new turn: the flow cache and the vocoder state of just after the prompt pass."""
        with self.torch.inference_mode():
            self.cache = self._clone(self.base[0])
            self.voc.hift_cache_dict = self._clone(self.base[1])
        self.voc.bounded_vocoder.cache = self.voc.hift_cache_dict

    def window(self, codes: List[int], last: bool) -> np.ndarray:
        """One ``Token2wav.stream`` call: 24 kHz float32 PCM (may be empty)."""
        from stepaudio2.token2wav import Token2wav

        torch = self.torch
        state = types.SimpleNamespace(stream_cache=self.cache, flow=self.flow, CONFORMER_HISTORY_FRAMES=100)
        with torch.inference_mode():
            mel, state.stream_cache = self.flow.inference_chunk(self._t(np.asarray(codes)[None], torch.int32), self.spk_t,
                                                                state.stream_cache, last_chunk=last, n_timesteps=self.steps)
            Token2wav._trim_estimator_cache(state, self.n_prompt_frames)
            Token2wav._trim_conformer_cache(state, self.n_prompt_frames)
            self.cache = state.stream_cache
            speech = Token2wav._stream_vocode(self.voc, mel.float(), last)
        return speech[0].cpu().numpy()


def run_torch_session(parts, t2w: Optional[TorchToken2Wav], hf: Path, args, seed: int) -> Dict[str, Any]:
    """run_session's script on the PyTorch reference (RefDuplex on ``parts``, the unit's Token2Wav
    windows on ``t2w``); the same per-unit record."""
    import ref_minicpmo_duplex as R
    from tiny_voice import tone

    cuda = args.device.startswith("cuda")
    marks: Dict[str, float] = {}

    def now() -> float:
        if cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def clock(event: str) -> None:
        marks[event] = now()

    tk = parts["tok"].convert_tokens_to_ids
    tok = {n: tk(n) for n in ("<|listen|>", "<|speak|>", "<|turn_eos|>")}
    d = R.RefDuplex(hf, ref_audio=tone(2.0), parts=parts, seed=seed, max_speak_tokens=args.max_speak_tokens,
                    generate_audio=t2w is not None, window=args.window, clock=clock)
    if t2w is not None:
        t2w.restart()
    silence = np.zeros(16000, np.float32)
    units: List[Dict[str, Any]] = []
    t_start = now()
    t_silence = None
    first_speeches: List[float] = []
    for k in range(args.units):
        turn, kk, talking, bias = scripted(k, args, tok)
        marks.clear()
        t0 = now()
        r = d.step(talk(k) if talking else silence, logit_bias=bias)
        first_pcm, samples = 0.0, 0
        if t2w is not None:
            for codes, last in r["t2w_chunks"]:
                pcm = t2w.window(codes, last)
                samples += pcm.size
                if first_pcm == 0.0 and pcm.size:
                    first_pcm = (now() - t0) * 1000.0
            if r["end_of_turn"]:
                t2w.restart()
        t1 = now()
        if kk == args.talk:
            t_silence = t0
        if t_silence is not None and not r["listening"] and first_pcm > 0:
            first_speeches.append((t0 - t_silence) * 1000.0 + first_pcm)
            t_silence = None
        ms = {e: (marks[e] - t0) * 1000.0 for e in ("decision", "llm", "talker")}
        units.append(dict(turn=turn, listening=r["listening"], decision_ms=ms["decision"], first_pcm_ms=first_pcm,
                          unit_ms=(t1 - t0) * 1000.0, llm_ms=ms["llm"], talker_ms=ms["talker"] - ms["llm"],
                          token2wav_ms=(t1 - marks["talker"]) * 1000.0,
                          audio_s=1.0 if r["listening"] else samples / 24000.0, n_tokens=len(r["tokens"])))
    wall = now() - t_start
    return dict(units=units, wall_s=wall, rtf=wall / args.units, first_speech_ms=first_speeches[0] if first_speeches else None,
                first_speech_later_ms=first_speeches[1:], n_past=d.n_past)


def bench_torch(hf: Path, voice: Dict[str, np.ndarray], args, log) -> Dict[str, Any]:
    """The PyTorch reference session (``--torch``): load, warm up (2 units), one timed session,
    free everything; returns the result entry."""
    import torch

    import make_random_speech as mrs
    import ref_minicpmo_duplex as R
    import speech_ref  # noqa: F401  (torchaudio stub before the reference packages)

    dtype = getattr(torch, args.torch_dtype)
    t0 = time.perf_counter()
    t2w = None
    if not args.no_audio:
        t2w = TorchToken2Wav(hf, mrs.sizes(args.size == "tiny"), args.device, args.threads or os.cpu_count(),
                             args.torch_dtype)
        t2w.load_voice(voice, args.tts_steps)
        # one window before the clock, as DuplexSession's warmup builds its Token2Wav graphs
        t2w.window([R.SILENCE_CODE] * 28, False)
        t2w.restart()
    else:
        torch.set_num_threads(args.threads or os.cpu_count())
    parts = R.load_parts(hf, with_tts=not args.no_audio, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    run_torch_session(parts, t2w, hf, argparse.Namespace(**{**vars(args), "units": 2}), seed=0)   # warm-up
    t0 = time.perf_counter()
    run = run_torch_session(parts, t2w, hf, args, seed=100)
    s = summarize([run])
    s.update(impl="pytorch", type=args.torch_dtype, sessions=1, batch="off", wall_s=time.perf_counter() - t0,
             file=hf.name, load_s=load_s)
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        s["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del parts, t2w
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return s


def log_result(log, label: str, s: Dict[str, Any]) -> None:
    log(f"{label}: unit P50 {s['unit_ms_p50']:.0f} ms P95 {s['unit_ms_p95']:.0f} ms, decision P95 "
        f"{s['decision_ms_p95']:.0f} ms, RTF {s['rtf']:.2f}, first speech "
        f"{s['first_speech_ms'] if s['first_speech_ms'] is None else round(s['first_speech_ms'])} ms, "
        f"P95 < 1 s: {s['p95_under_1s']}")


def pct(xs: List[float], q: float) -> Optional[float]:
    return float(np.percentile(xs, q)) if xs else None


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    us = [u for r in runs for u in r["units"]]
    dec = [u["decision_ms"] for u in us]
    tot = [u["unit_ms"] for u in us]
    pcm = [u["first_pcm_ms"] for u in us if not u["listening"] and u["first_pcm_ms"] > 0]
    fs = [r["first_speech_ms"] for r in runs if r["first_speech_ms"] is not None]
    speaking = [u for u in us if not u["listening"]]
    warm = [u for u in speaking if u["turn"] > 0]   # later turns: the session's graphs exist
    fs_later = [x for r in runs for x in r["first_speech_later_ms"]]
    tok = [(u["llm_ms"] - u["decision_ms"]) / max(u["n_tokens"] - 1, 1) for u in speaking if u["n_tokens"] > 1]
    return dict(
        decision_ms_p50=pct(dec, 50), decision_ms_p95=pct(dec, 95),
        first_pcm_ms_p50=pct(pcm, 50), first_pcm_ms_p95=pct(pcm, 95),
        unit_ms_p50=pct(tot, 50), unit_ms_p95=pct(tot, 95),
        rtf=max(r["rtf"] for r in runs), first_speech_ms=max(fs) if fs else None,
        p95_under_1s=bool(tot) and pct(tot, 95) < 1000.0,
        speaking_units=len(speaking), units=len(us),
        decisions=["".join("L" if u["listening"] else "S" for u in r["units"]) for r in runs],
        # the speaking units' stages (P50): LLM (encoder + prefill + decode loop), per decode step, talker, Token2Wav
        speaking_llm_ms_p50=pct([u["llm_ms"] for u in speaking], 50), decode_step_ms_p50=pct(tok, 50),
        speaking_talker_ms_p50=pct([u["talker_ms"] for u in speaking], 50),
        speaking_token2wav_ms_p50=pct([u["token2wav_ms"] for u in speaking], 50),
        speaking_token2wav_ms_max=max([u["token2wav_ms"] for u in speaking], default=None),
        # finer (minicpm.cpp only): audio encoder, unit prefill, host sampling per decode step, flow, vocoder
        **({} if not speaking or "flow_ms" not in speaking[0] else dict(
            speaking_encoder_ms_p50=pct([u["encoder_ms"] for u in speaking], 50),
            speaking_prefill_ms_p50=pct([u["prefill_ms"] for u in speaking], 50),
            sample_ms_per_step_p50=pct([u["sample_ms"] / max(u["n_tokens"] - 1, 1) for u in speaking], 50),
            speaking_flow_ms_p50=pct([u["flow_ms"] for u in speaking], 50),
            speaking_vocoder_ms_p50=pct([u["vocoder_ms"] for u in speaking], 50))),
        # later turns only (none unless --units covers more than one talk + answer period)
        later_first_speech_ms_p50=pct(fs_later, 50), later_unit_ms_p95=pct([u["unit_ms"] for u in warm], 95),
        later_talker_ms_p50=pct([u["talker_ms"] for u in warm], 50),
        later_token2wav_ms_p50=pct([u["token2wav_ms"] for u in warm], 50),
    )


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="where the checkpoint and GGUF files are made / found (default: a temp dir)")
    ap.add_argument("--size", default="tiny", choices=sorted(LLM))
    ap.add_argument("--gguf", help="use this converted o4.5 file instead of making one")
    ap.add_argument("--types", default="f16", help="GGUF types, comma-separated (f16, q4_k_m, q8_0, ...; tiny: f32)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per model (0: all cores)")
    ap.add_argument("--sessions", default="1", help="concurrent sessions, comma-separated (e.g. 1,4)")
    ap.add_argument("--batch", default="off",
                    help="LLM steps batched across sessions: off, on, shared (on + one shared cache), comma-separated")
    ap.add_argument("--batch-gather", default="1,0", metavar="PARTS,MS",
                    help="batcher gathering: a batch waits up to MS ms for PARTS requests (default 1,0: at once)")
    ap.add_argument("--units", type=int, default=12)
    ap.add_argument("--talk", type=int, default=3, help="units of user speech before the silence")
    ap.add_argument("--answer", type=int, default=4, help="units of answer before <|turn_eos|> is forced")
    ap.add_argument("--max-speak-tokens", type=int, default=20)
    ap.add_argument("--tts-steps", type=int, default=10)
    ap.add_argument("--window", default="off", choices=("off", "basic", "context"))
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--no-audio", action="store_true", help="text only (no talker / Token2Wav)")
    ap.add_argument("--torch", action="store_true",
                    help="also time the PyTorch reference session (RefDuplex) on the hf-SIZE checkpoint")
    ap.add_argument("--torch-dtype", choices=("float32", "float16", "bfloat16"),
                    help="dtype of the PyTorch session (default: bfloat16 on cuda, else float32)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--prepare-only", action="store_true", help="make (and quantize) the files, then stop")
    args = ap.parse_args(argv)

    import minicpm_cpp
    from tiny_voice import tone

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="bench-duplex-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(args.gguf) if args.gguf else make_model(folder, args.size, log)
    hf = folder / f"hf-{args.size}"
    if args.torch and not args.prepare_only:
        if not (hf / "config.json").is_file():
            ap.error(f"--torch needs the checkpoint folder {hf} (the folder make_model wrote next to the GGUF: "
                     f"give it as FOLDER, with the matching --size)")
        if args.torch_dtype is None:
            args.torch_dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
        import torch

        try:
            torch.device(args.device)
        except RuntimeError:
            ap.error(f"--torch: {args.device!r} is no torch device (cpu, cuda, cuda:N)")
    if args.gguf:   # the file as it is, labelled by the type in its name
        m = re.search(r"-(f32|f16|bf16|q\d\w*)\.gguf$", base.name, re.IGNORECASE)
        types = [m.group(1).lower() if m else "gguf"]
    else:
        types = ["f32"] if args.size == "tiny" else [t.strip() for t in args.types.split(",") if t.strip()]
    report: Dict[str, Any] = dict(
        size=args.size, device=args.device, threads=args.threads, units=args.units, talk=args.talk,
        answer=args.answer, max_speak_tokens=args.max_speak_tokens, tts_steps=args.tts_steps, window=args.window,
        batch_gather=args.batch_gather, torch_dtype=args.torch_dtype if args.torch else None,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()), results=[])
    if args.prepare_only:
        for typ in types:
            log(f"  {base if args.gguf else quantized(base, typ, log)}")
        return 0
    for ti, typ in enumerate(types):
        path = base if args.gguf else quantized(base, typ, log)
        modes = [m.strip() for m in args.batch.split(",") if m.strip()]
        if not modes or any(m not in ("off", "on", "shared") for m in modes):
            ap.error("--batch takes off, on, shared or a comma-separated list of them")
        try:
            g_parts, g_ms = (int(x) if i == 0 else float(x) for i, x in enumerate(args.batch_gather.split(",")))
        except ValueError:
            ap.error("--batch-gather takes PARTS,MS (e.g. 8,2)")
        n_max = max(int(x) for x in args.sessions.split(","))
        model = voice = None
        loaded_cells = -1

        def load(cells: int) -> None:
            nonlocal model, voice, loaded_cells
            model = voice = None
            gc.collect()
            model = minicpm_cpp.Model(str(path), device=args.device, n_threads=args.threads or None,
                                      batch_cache_cells=cells)
            voice = model.voice(tone(2.0))
            run_session(model, voice, argparse.Namespace(**{**vars(args), "units": 2}), seed=0)   # warm-up
            model.set_batch_gather(g_parts, g_ms)
            if cells or "on" in modes:
                run_session(model, voice, argparse.Namespace(**{**vars(args), "units": 2}), seed=0, batch=True)
            loaded_cells = cells

        for n, mode in [(int(x), m) for x in args.sessions.split(",") for m in modes]:
            cells = (n_max + 1) * args.n_ctx if mode == "shared" else 0
            if cells != loaded_cells:
                load(cells)
            runs: List[Optional[Dict[str, Any]]] = [None] * n
            errors: List[BaseException] = []
            batch = mode != "off"
            stats0 = model.batch_stats()

            def work(i: int) -> None:
                try:
                    runs[i] = run_session(model, voice, args, seed=100 + i, batch=batch)
                except BaseException as e:   # noqa: BLE001
                    errors.append(e)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            s = summarize([r for r in runs if r is not None])
            s.update(impl="minicpm.cpp", type=typ, sessions=n, batch=mode, wall_s=time.perf_counter() - t0, file=path.name)
            if n == 1:   # one session: each unit's stages, for where a turn's first speech goes
                s["unit_records"] = [{k: round(v, 2) if isinstance(v, float) else v for k, v in u.items()}
                                     for u in runs[0]["units"]]
            if batch:
                st = model.batch_stats()
                graphs = st["batches"] - stats0["batches"]
                s.update(batch_graphs=graphs, requests_per_graph=(st["parts"] - stats0["parts"]) / max(graphs, 1),
                         max_requests_per_graph=st["max_parts"], batch_rebuilds=st["rebuilds"] - stats0["rebuilds"],
                         batch_build_ms_per_graph=(st["build_ms"] - stats0["build_ms"]) / max(graphs, 1),
                         batch_compute_ms_per_graph=(st["compute_ms"] - stats0["compute_ms"]) / max(graphs, 1),
                         shared_requests=st["shared_parts"] - stats0["shared_parts"],
                         shared_cache_mib=st["shared_cache_bytes"] / 2**20)
            report["results"].append(s)
            log_result(log, f"{typ} x{n} batch {mode}", s)
        prompt = dict(tokens=voice.tokens.copy(), prompt_mel=voice.prompt_mel.copy(), speaker=voice.speaker.copy())
        del voice, model
        gc.collect()
        if args.torch and ti == 0:
            if args.json:   # minicpm.cpp's figures so far, should the PyTorch side fail
                Path(args.json).write_text(json.dumps(report, indent=2))
            s = bench_torch(hf, prompt, args, log)
            report["results"].append(s)
            log_result(log, f"pytorch {args.torch_dtype} x1", s)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
