"""minicpm-cli: chat with a GGUF model from the shell (llama.cpp-style flags)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, List, Optional

from .errors import Error

I31 = 2**31 - 1


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit code 2), as every other error of the CLI."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {v}")
        return v

    parse.__name__ = what
    return parse


def _float_arg(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        return v

    parse.__name__ = what
    return parse


def _read_prompt_file(path: str) -> str:
    from ._files import open_regular
    from .errors import InvalidArgumentError

    with open_regular(path, path, "prompt") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"{path}: the prompt file is not UTF-8 text (byte {e.start})") from None


def _defaults_text(model_path: Optional[str]) -> str:
    """The generation defaults of the model at ``model_path`` (read from its metadata only)."""
    if not model_path:
        return ("Sampling flags left out take the model's own defaults (the reference chat()'s values "
                "recorded in the GGUF); give -m with --help to see them.")
    try:
        from . import _core

        d = _core.model_defaults(model_path)
    except Exception as e:  # a bad path: say so in the help instead of failing
        return f"(cannot read the defaults of {model_path}: {e})"
    s, t = d["sampling"], d["sampling_think"]

    def fmt(c: dict) -> str:
        return (f"temperature {c['temperature']:g}, top-p {c['top_p']:g}, top-k {c['top_k']}, min-p {c['min_p']:g}, "
                f"repetition penalty {c['repeat_penalty']:g}")

    think = {None: "the chat template's default", True: "on", False: "off"}[d["enable_thinking"]]
    return (f"Defaults of {model_path} ({d['source']}): {fmt(s)}; with --think: {fmt(t)}; "
            f"reasoning {think}; up to {d['max_tokens']} new tokens.")


def build_parser(model_path: Optional[str] = None) -> argparse.ArgumentParser:
    from .session import MAX_THREADS

    p = _Parser(
        prog="minicpm-cli",
        description="Run a MiniCPM-V / MiniCPM-o (or Qwen3/Qwen2) GGUF model. The prompt is wrapped in "
        "the model's chat template unless --raw is given.",
        epilog=_defaults_text(model_path),
    )
    p.add_argument("-m", "--model", help="path to the model .gguf")
    p.add_argument("-p", "--prompt", help="prompt (user message); '-' reads it from stdin")
    p.add_argument("-f", "--file", help="read the prompt from this file")
    p.add_argument("-n", "--n-predict", type=_int_in(-1, I31, "-n"), default=None,
                   help="max tokens to generate (-1 = until end of turn; default: the model's)")
    p.add_argument("-c", "--ctx-size", type=_int_in(1, I31, "-c"), default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-b", "--batch-size", type=_int_in(1, I31, "-b"), default=512, help="prompt micro-batch (default 512)")
    p.add_argument("-t", "--threads", type=_int_in(0, MAX_THREADS, "-t"), default=None,
                   help=f"CPU threads, at most {MAX_THREADS} (default: from the core count)")
    p.add_argument("--temp", type=_float_arg("--temp"), default=None, help="temperature, 0 = greedy (default: the model's)")
    p.add_argument("--top-p", type=_float_arg("--top-p"), default=None, help="top-p (default: the model's)")
    p.add_argument("--top-k", type=_int_in(0, I31, "--top-k"), default=None, help="top-k, 0 = off (default: the model's)")
    p.add_argument("--min-p", type=_float_arg("--min-p"), default=None, help="min-p (default: the model's)")
    p.add_argument("--repeat-penalty", type=_float_arg("--repeat-penalty"), default=None, help="repetition penalty (default: the model's)")
    p.add_argument("--presence-penalty", type=_float_arg("--presence-penalty"), default=None, help="presence penalty (default: the model's)")
    p.add_argument("--seed", type=_int_in(0, 2**64 - 1, "--seed"), default=None, help="sampling seed (default: random)")
    p.add_argument("--device", default="auto", help="auto | cpu | gpu | cuda | metal | a device name (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list the compute devices and exit")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--think", dest="enable_thinking", action="store_true", default=None,
                   help="enable reasoning (Qwen3 family; default: the model's, off for MiniCPM-V/o 4.5 as their chat())")
    p.add_argument("--no-think", dest="enable_thinking", action="store_false", help="disable reasoning")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text as is")
    p.add_argument("-i", "--interactive", action="store_true", help="interactive multi-turn chat")
    p.add_argument("--image", action=_MediaAction, default=[], help="image file (needs a vision model; repeatable)")
    p.add_argument("--audio", action=_MediaAction, default=[],
                   help="audio file: wav, flac, mp3, ogg, m4a, webm, ... (needs a MiniCPM-o model; repeatable, "
                        "in the message in the order given together with --image)")
    p.add_argument("--video", action=_MediaAction, default=[],
                   help="video file: mp4, mkv, webm, mov, ... (needs a vision model; repeatable, in the message in "
                        "the order given together with --image / --audio); sampled as MiniCPM-V 4.5's README recipe")
    p.add_argument("--video-fps", type=_float_arg("--video-fps"), default=None,
                   help="frames per second sampled from each --video (the recipe's choose_fps, default 3)")
    p.add_argument("--max-packing", type=_int_in(1, 6, "--max-packing"), default=3,
                   help="most frames packed into one temporal group of 64 tokens, 1-6 (default 3, the reference's)")
    p.add_argument("--mmproj", default=None, help="separate vision file (llama.cpp's mmproj layout)")
    p.add_argument("--audio-model", default=None,
                   help="separate audio encoder file (minicpm-convert --audio-out, or llama.cpp-omni's audio GGUF)")
    p.add_argument("--max-slice-nums", type=_int_in(0, 1024, "--max-slice-nums"), default=None, help="max slices per image (default: the model's, 9)")
    p.add_argument("--no-repack", dest="cpu_repack", action="store_false", default=True,
                   help="CPU: use quantized weights from the mapped file as is (no repacked copy)")
    p.add_argument("--kv-type", default="auto", choices=["auto", "f16", "f32"], help="KV cache type")
    p.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"], help="flash attention")
    p.add_argument("--speak", action="store_true",
                   help="speak the answer (MiniCPM-o 4.5: TTS talker + Token2Wav, 24 kHz); needs -o")
    p.add_argument("-o", "--output", default=None, help="with --speak: write the speech to this WAV file")
    p.add_argument("--ref-audio", default=None,
                   help="with --speak: clone this voice (audio file; also put in the system prompt, as the reference's "
                        "audio_assistant mode)")
    p.add_argument("--tts-steps", type=_int_in(1, 1000, "--tts-steps"), default=10,
                   help="flow-matching steps of Token2Wav (default 10, the reference's; 5 and 3 are faster)")
    p.add_argument("--duplex", action="store_true",
                   help="full-duplex voice session (MiniCPM-o 4.5) over --input; -o writes the reply track")
    p.add_argument("--input", default=None, help="with --duplex: the conversation audio (any rate, mono)")
    p.add_argument("--max-speak-tokens", type=_int_in(1, 4096, "--max-speak-tokens"), default=20,
                   help="with --duplex: most tokens the model says in one unit (default 20, the reference's)")
    p.add_argument("--realtime", action="store_true",
                   help="with --duplex: feed the input at its own pace (worker thread) and report the lag")
    p.add_argument("--no-timings", action="store_true", help="do not print the timing line")
    p.add_argument("-v", "--verbose", action="store_true", help="log loading details (and show tracebacks)")
    return p


class _MediaAction(argparse.Action):
    """--image / --audio / --video: appends the path to its own list and (kind, path) to
    args.media, so the message keeps the order given on the command line."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append(values)
        media = getattr(namespace, "media", None) or []
        media.append((self.dest, values))
        namespace.media = media


def media_content(args: argparse.Namespace, prompt: str, video_recipe: str = "v45") -> list:
    """The user message's content from --image / --audio / --video (in the order given) and the
    prompt: images as arrays, audio as 16 kHz samples, each video as its content part
    ``{"type": "video", "frames": [...], "temporal_ids": [...]}`` (video.load_video with
    --video-fps and --max-packing, by the recipe of the model's family)."""
    from .audio import load_audio
    from .image import load_image

    out: list = []
    for kind, p in getattr(args, "media", None) or []:
        if kind == "image":
            out.append(load_image(p))
        elif kind == "audio":
            out.append(load_audio(p, name=p))
        else:
            from .video import load_video

            out.append(load_video(p, fps=args.video_fps, max_packing=args.max_packing, recipe=video_recipe,
                                  name=p).to_part())
    return out + [prompt]


def _timing_line(timings: dict, wall_s: float) -> str:
    def rate(n: float, ms: float) -> str:
        return f"{n / (ms / 1000.0):.2f} tok/s" if ms > 0 and n > 0 else "n/a"

    return (
        f"prompt: {timings['n_prefill']} tokens in {timings['prefill_ms']:.1f} ms ({rate(timings['n_prefill'], timings['prefill_ms'])})"
        f" | generation: {timings['n_decode']} tokens in {timings['decode_ms']:.1f} ms ({rate(timings['n_decode'], timings['decode_ms'])})"
        + (f" | audio: {timings['n_audio']} piece(s) in {timings['audio_ms']:.1f} ms" if timings.get("n_audio") else "")
        + f" | total {wall_s:.2f} s"
    )


def _model_arg(argv: List[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a in ("-m", "--model") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    args = build_parser(_model_arg(argv) if wants_help else None).parse_args(argv)
    try:
        return _run(args)
    except Error as e:
        print(f"minicpm-cli: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # anything else: one line, the traceback only with -v
        if args.verbose:
            raise
        print(f"minicpm-cli: error: {type(e).__name__}: {_one_line(str(e))} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _run(args: argparse.Namespace) -> int:
    from . import Model, Session, list_devices, set_log_level

    if args.verbose:
        set_log_level("info")
    if args.list_devices:
        for d in list_devices():
            mem = f", {d['memory_free'] / 2**30:.1f}/{d['memory_total'] / 2**30:.1f} GiB free" if d["memory_total"] else ""
            print(f"{d['name']}: {d['description']} ({d['type']}{mem})")
        return 0
    if not args.model:
        print("minicpm-cli: error: -m/--model is required", file=sys.stderr)
        return 2

    prompt = args.prompt
    if args.file:
        prompt = _read_prompt_file(args.file)
    elif prompt == "-":
        prompt = sys.stdin.read()
    if (args.input or args.realtime) and not args.duplex:
        print("minicpm-cli: error: --input and --realtime go with --duplex", file=sys.stderr)
        return 2
    if args.duplex and (args.speak or args.interactive or args.raw or prompt is not None):
        print("minicpm-cli: error: --duplex takes --input (no -p / -f / -i / --raw / --speak)", file=sys.stderr)
        return 2
    if prompt is None and not args.interactive and not args.duplex:
        print("minicpm-cli: error: give a prompt with -p, -f, or use -i", file=sys.stderr)
        return 2

    t_load = time.perf_counter()
    model = Model(args.model, device=args.device, n_threads=args.threads, mmproj=args.mmproj,
                  cpu_repack=args.cpu_repack, audio=args.audio_model)
    if args.image and not model.has_vision:
        print(f"minicpm-cli: error: {args.model} has no vision encoder; convert the checkpoint with its vision "
              "tower or pass --mmproj", file=sys.stderr)
        return 2
    if args.audio and not model.has_audio:
        print(f"minicpm-cli: error: {args.model} has no audio encoder; convert a MiniCPM-o checkpoint with its "
              "audio encoder or pass --audio-model", file=sys.stderr)
        return 2
    if args.video and not model.has_vision:
        print(f"minicpm-cli: error: {args.model} has no vision encoder; --video needs one", file=sys.stderr)
        return 2
    if args.video and args.raw:
        print("minicpm-cli: error: --video needs the chat template (drop --raw)", file=sys.stderr)
        return 2
    if args.audio and args.raw:
        print("minicpm-cli: error: --audio needs the chat template (drop --raw)", file=sys.stderr)
        return 2
    if args.speak and (args.raw or args.interactive):
        print("minicpm-cli: error: --speak works with one prompt (drop --raw / -i)", file=sys.stderr)
        return 2
    if args.speak and not args.output:
        print("minicpm-cli: error: --speak needs -o FILE.wav", file=sys.stderr)
        return 2
    if args.duplex:
        from ._cli_duplex import run_duplex

        return run_duplex(model, args)
    if (args.output or args.ref_audio) and not args.speak:
        print("minicpm-cli: error: -o and --ref-audio go with --speak", file=sys.stderr)
        return 2
    voice = None
    if args.speak:
        if not model.can_speak:
            print(f"minicpm-cli: error: {args.model} cannot speak (no TTS talker or Token2Wav in the file); "
                  "convert a MiniCPM-o 4.5 checkpoint with its assets/token2wav folder", file=sys.stderr)
            return 2
        if args.ref_audio:
            voice = model.voice(args.ref_audio)
    session = Session(model, n_ctx=args.ctx_size, seed=args.seed, n_batch=args.batch_size,
                      kv_type=args.kv_type, flash_attn=args.flash_attn)
    if args.verbose:
        print(f"loaded {model!r} in {time.perf_counter() - t_load:.2f} s", file=sys.stderr)

    gen = dict(
        max_tokens=args.n_predict,
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        presence_penalty=args.presence_penalty,
        stop=args.stop,
    )

    def stream(pieces) -> str:
        out = []
        try:
            for piece in pieces:
                out.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write("\n[interrupted]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        return "".join(out)

    def timings(t0: float) -> None:
        if not args.no_timings:
            print(_timing_line(session.timings, time.perf_counter() - t0), file=sys.stderr)

    if args.raw:
        t0 = time.perf_counter()
        for img in args.image:
            session.prefill(image=img, max_slice_nums=args.max_slice_nums)
        session.prefill(prompt or "")
        stream(session.generate(stream=True, **gen))
        timings(t0)
        return 0

    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    elif voice is not None:
        from .speech_prompt import system_prompt

        messages.append(system_prompt(voice, mode="audio_assistant"))
    gen["max_slice_nums"] = args.max_slice_nums
    if prompt is not None:
        content = prompt
        media = getattr(args, "media", None) or []
        if media:
            from .video import recipe_for_model_type

            content = media_content(args, prompt, recipe_for_model_type(model.info.get("model_type")))
        messages.append({"role": "user", "content": content})
        t0 = time.perf_counter()
        if args.speak:
            return _speak(session, messages, args, gen, voice, stream, timings, t0)
        answer = stream(session.chat(messages, enable_thinking=args.enable_thinking, stream=True, **gen))
        messages.append({"role": "assistant", "content": answer})
        timings(t0)
    if not args.interactive:
        return 0
    print("interactive chat: empty line or Ctrl+D to quit, /reset to clear the history", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print("", file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        if line.strip() == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            session.reset()
            continue
        messages.append({"role": "user", "content": line})
        session.reset_timings()
        t0 = time.perf_counter()
        answer = stream(session.chat(messages, enable_thinking=args.enable_thinking, stream=True, **gen))
        messages.append({"role": "assistant", "content": answer})
        timings(t0)



def _speak(session, messages, args, gen, voice, stream, timings, t0) -> int:
    import numpy as np

    from .wav import AudioChunk, write_wav

    audio = []

    def text_pieces():
        for ev in session.chat(messages, enable_thinking=args.enable_thinking, stream=True, generate_audio=True,
                               voice=voice, tts_steps=args.tts_steps, **gen):
            if isinstance(ev, AudioChunk):
                audio.append(ev.audio)
            else:
                yield ev

    stream(text_pieces())
    pcm = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    write_wav(args.output, pcm)
    print(f"wrote {args.output}: {len(pcm) / 24000:.2f} s of 24 kHz speech", file=sys.stderr)
    timings(t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
