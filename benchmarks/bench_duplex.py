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
the condition to keep up with real time. ``--sessions N`` runs N sessions on one model, each on
its own thread, started together. ``--batch off,on`` measures each count both ways: every session
on its own (``off``: its LLM steps run as graphs of their own, side by side on the device) and
through the model's cross-session batcher (``on``: the LLM steps of the sessions waiting at the same
moment run as one graph); the report gives the batcher's graphs and the requests per graph.

    python benchmarks/bench_duplex.py --size tiny --units 8 --json /tmp/duplex-tiny.json
    python benchmarks/bench_duplex.py /data/duplex --size real --types f16,q4_k_m --device cuda \\
        --sessions 1,4 --units 30 --json duplex.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

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
    period = args.talk + args.answer + 2   # talk, answer (turn end at its last unit), one listening unit
    first_speeches: List[float] = []
    for k in range(args.units):
        turn, kk = divmod(k, period)
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
        t0 = time.perf_counter()
        r = d.step(talk(k) if talking else silence, logit_bias=bias)
        if kk == args.talk:
            t_silence = t0   # the first silent second is complete: the user has stopped
        if t_silence is not None and not r.listening and r.ms_first_audio > 0:
            first_speeches.append((t0 - t_silence) * 1000.0 + r.ms_first_audio)
            t_silence = None
        units.append(dict(turn=turn, listening=r.listening, decision_ms=r.ms_decision, first_pcm_ms=r.ms_first_audio,
                          unit_ms=r.ms_total, llm_ms=r.ms_llm, talker_ms=r.ms_talker, token2wav_ms=r.ms_token2wav,
                          audio_s=r.audio.size / 24000.0, n_tokens=len(r.tokens)))
    wall = time.perf_counter() - t_start
    return dict(units=units, wall_s=wall, rtf=wall / args.units, first_speech_ms=first_speeches[0] if first_speeches else None,
                first_speech_later_ms=first_speeches[1:], n_past=d.n_past)


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
        # the speaking units' stages (P50): LLM (encoder + prefill + decode loop), per decode step, talker, Token2Wav
        speaking_llm_ms_p50=pct([u["llm_ms"] for u in speaking], 50), decode_step_ms_p50=pct(tok, 50),
        speaking_talker_ms_p50=pct([u["talker_ms"] for u in speaking], 50),
        speaking_token2wav_ms_p50=pct([u["token2wav_ms"] for u in speaking], 50),
        speaking_token2wav_ms_max=max([u["token2wav_ms"] for u in speaking], default=None),
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
    ap.add_argument("--batch", default="off", help="LLM steps batched across sessions: off, on or off,on (both)")
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
    types = ["f32"] if args.size == "tiny" and not args.gguf else [t.strip() for t in args.types.split(",") if t.strip()]
    report: Dict[str, Any] = dict(
        size=args.size, device=args.device, threads=args.threads, units=args.units, talk=args.talk,
        answer=args.answer, max_speak_tokens=args.max_speak_tokens, tts_steps=args.tts_steps, window=args.window,
        batch_gather=args.batch_gather, machine=dict(platform=platform.platform(), cpus=os.cpu_count()), results=[])
    if args.prepare_only:
        for typ in types:
            log(f"  {quantized(base, typ, log)}")
        return 0
    for typ in types:
        path = quantized(base, typ, log)
        model = minicpm_cpp.Model(str(path), device=args.device, n_threads=args.threads or None)
        voice = model.voice(tone(2.0))
        run_session(model, voice, argparse.Namespace(**{**vars(args), "units": 2}), seed=0)   # warm-up
        modes = [m.strip() for m in args.batch.split(",") if m.strip()]
        if not modes or any(m not in ("off", "on") for m in modes):
            ap.error("--batch takes off, on or off,on")
        try:
            g_parts, g_ms = args.batch_gather.split(",")
            model.set_batch_gather(int(g_parts), float(g_ms))
        except ValueError:
            ap.error("--batch-gather takes PARTS,MS (e.g. 8,2)")
        if "on" in modes:
            run_session(model, voice, argparse.Namespace(**{**vars(args), "units": 2}), seed=0, batch=True)
        for n, mode in [(int(x), m) for x in args.sessions.split(",") for m in modes]:
            runs: List[Optional[Dict[str, Any]]] = [None] * n
            errors: List[BaseException] = []
            batch = mode == "on"
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
            s.update(type=typ, sessions=n, batch=mode, wall_s=time.perf_counter() - t0, file=path.name)
            if batch:
                st = model.batch_stats()
                graphs = st["batches"] - stats0["batches"]
                s.update(batch_graphs=graphs, requests_per_graph=(st["parts"] - stats0["parts"]) / max(graphs, 1),
                         max_requests_per_graph=st["max_parts"], batch_rebuilds=st["rebuilds"] - stats0["rebuilds"],
                         batch_build_ms_per_graph=(st["build_ms"] - stats0["build_ms"]) / max(graphs, 1),
                         batch_compute_ms_per_graph=(st["compute_ms"] - stats0["compute_ms"]) / max(graphs, 1))
            report["results"].append(s)
            log(f"{typ} x{n} batch {mode}: unit P50 {s['unit_ms_p50']:.0f} ms P95 {s['unit_ms_p95']:.0f} ms, decision P95 "
                f"{s['decision_ms_p95']:.0f} ms, RTF {s['rtf']:.2f}, first speech "
                f"{s['first_speech_ms'] if s['first_speech_ms'] is None else round(s['first_speech_ms'])} ms, "
                f"P95 < 1 s: {s['p95_under_1s']}")
        del model
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
