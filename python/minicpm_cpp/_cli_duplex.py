"""``minicpm-cli --duplex``: a recorded conversation through a full-duplex session.

The input is cut into 1 s units (the last one padded with silence) and stepped in order; the
text of each speaking unit is printed with the time of its unit, and the reply track (24 kHz) is
written aligned to the input's time: a unit's reply starts when its second of input is complete
(or when the reply before it ends), silence elsewhere. ``--realtime`` feeds the input at its own
pace through the session's worker thread (``push`` / ``poll``) and reports how far behind real
time the units finished.
"""

from __future__ import annotations

import sys
import time
from typing import Any, List

import numpy as np

from .wav import SPEECH_SAMPLE_RATE


def _stamp(seconds: float) -> str:
    m, s = divmod(seconds, 60.0)
    return f"{int(m):02d}:{s:04.1f}"


def run_duplex(model: Any, args: Any) -> int:
    from .audio import load_audio
    from .duplex import UNIT_SAMPLES, DuplexSession
    from .wav import write_wav

    if not args.input:
        print("minicpm-cli: error: --duplex needs --input conversation.wav", file=sys.stderr)
        return 2
    if not model.has_audio:
        print(f"minicpm-cli: error: {args.model} has no audio encoder; --duplex needs MiniCPM-o 4.5 with it",
              file=sys.stderr)
        return 2
    speak = bool(args.output)
    if speak and not model.can_speak:
        print(f"minicpm-cli: error: {args.model} cannot speak (no TTS talker or Token2Wav); drop -o for text only",
              file=sys.stderr)
        return 2
    voice = model.voice(args.ref_audio) if args.ref_audio else None
    pcm = load_audio(args.input)
    n_units = max(1, -(-len(pcm) // UNIT_SAMPLES))
    padded = np.zeros(n_units * UNIT_SAMPLES, np.float32)
    padded[: len(pcm)] = pcm
    kw = dict(seed=args.seed, generate_audio=speak, max_speak_tokens=args.max_speak_tokens, tts_steps=args.tts_steps, n_ctx=max(args.ctx_size, 8192))
    if args.system is not None:
        kw["system"] = args.system
    if args.temp is not None:
        if args.temp == 0:
            kw["greedy"] = True
        else:
            kw["temperature"] = args.temp
    if args.top_p is not None:
        kw["top_p"] = args.top_p
    if args.top_k is not None:
        kw["top_k"] = args.top_k
    d = DuplexSession(model, voice=voice, **kw)

    results: List[Any] = []
    lag = 0.0
    t0 = time.perf_counter()
    if args.realtime:
        piece = UNIT_SAMPLES // 10
        d.start()
        for i in range(0, len(padded), piece):
            due = t0 + i / UNIT_SAMPLES
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            d.push(padded[i:i + piece])
            while (r := d.poll(0)) is not None:
                results.append(r)
                _print_unit(r)
                lag = max(lag, time.perf_counter() - (t0 + (r.unit + 1)))
        d.stop()
        while (r := d.poll(0)) is not None:
            results.append(r)
            _print_unit(r)
            lag = max(lag, time.perf_counter() - (t0 + (r.unit + 1)))
    else:
        for k in range(n_units):
            r = d.step(padded[k * UNIT_SAMPLES:(k + 1) * UNIT_SAMPLES])
            results.append(r)
            _print_unit(r)
    wall = time.perf_counter() - t0
    sys.stdout.write("\n")
    sys.stdout.flush()

    if speak:
        track = np.zeros(n_units * SPEECH_SAMPLE_RATE, np.float32)
        cursor = 0
        for r in results:
            if r.listening or r.audio.size == 0:
                continue
            start = max(cursor, (r.unit + 1) * SPEECH_SAMPLE_RATE)
            end = start + r.audio.size
            if end > track.size:
                track = np.concatenate([track, np.zeros(end - track.size, np.float32)])
            track[start:end] = r.audio
            cursor = end
        write_wav(args.output, track, SPEECH_SAMPLE_RATE)
    if not args.no_timings:
        ms = [r.ms_total for r in results]
        line = (f"[{n_units} units in {wall:.2f} s: RTF {wall / n_units:.2f}, unit P50 {np.percentile(ms, 50):.0f} ms, "
                f"P95 {np.percentile(ms, 95):.0f} ms")
        if args.realtime:
            line += f", worst lag behind real time {max(0.0, lag):.2f} s"
        print(line + "]", file=sys.stderr)
    return 0


def _print_unit(r: Any) -> None:
    if r.listening:
        return
    t = _stamp(float(r.unit))
    sys.stdout.write(f"[{t}] {r.text}" + (" <end of turn>" if r.end_of_turn else "") + "\n")
    sys.stdout.flush()
