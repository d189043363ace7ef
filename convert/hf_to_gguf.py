"""Convert a Hugging Face MiniCPM-V / MiniCPM-o (or plain Qwen3 / Qwen2) checkpoint to GGUF.

One file holds the language model and tokenizer in llama.cpp's layout, and, for MiniCPM-V/o
checkpoints, the vision tower and resampler under clip.cpp's MiniCPM-V names and keys
(:mod:`.vision`). ``llm_only`` leaves the vision part out, so the file loads in llama.cpp
(whose loader refuses extra tensors); ``mmproj`` also writes the vision part as a separate
clip-convention file (``general.architecture = clip``) for llama.cpp's mtmd. Tensors stream from the memory-mapped
checkpoint to the output row block by row block, so memory stays bounded by the chunk size,
not the model size. The output is written to a temporary file beside the target and renamed
at the end: a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter

from .checkpoint import Checkpoint, ConvertError, load_config, open_checkpoint
from .defaults import chat_defaults, write_chat_defaults
from .llm import PlannedTensor, detect, plan_tensors, write_metadata
from .names import key_name
from .quant import ENCODINGS, OUTTYPES, encode_rows, tensor_bytes
from .tokenizer import add_tokenizer
from .t2w_flow import detect_flow, plan_flow, write_flow_metadata
from .audio import AUDIO_OUTTYPES, AudioSpec, audio_qtypes, detect_audio, has_audio, plan_audio, write_audio_metadata
from .t2w_voice import (find_default_voice, find_voice_assets, make_default_voice, plan_default_voice, plan_voice,
                        write_default_voice_metadata, write_voice_metadata)
from .tts import TtsSpec, detect_tts, has_tts, plan_tts, write_tts_metadata
from .vision import VISION_OUTTYPES, VisionSpec, detect_vision, has_vision, plan_vision, vision_qtypes, write_vision_metadata
from .t2w_hift import find_hift, load_hift, plan_hift, write_hift_metadata
from .t2w_cvoc import find_cvoc, load_cvoc, plan_cvoc, write_cvoc_metadata
from .writer import Progress, atomic_output, padding, write_padding

__all__ = ["convert", "main", "ConvertError", "STOP_TOKENS"]

PROG = "minicpm-convert"

# Strings that end an assistant turn in every supported model (besides eos), recorded when the
# vocabulary has them.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")

# Keys this module asks the name table for (checked by the tests, with llm.KEY_IDS).
KEY_IDS = ("GENERAL_FILE_TYPE", "GENERAL_QUANT_VERSION", "TOKENIZER_TOKENS", "MINICPM_STOP_TOKENS",
           "MINICPM_BAD_TOKEN_IDS")

# general.architecture of a llama.cpp mmproj file.
_MMPROJ_ARCH = "clip"

# Float32 bytes converted at a time; bounds the memory of one tensor's conversion.
_CHUNK_BYTES = 64 << 20

PathLike = Union[str, "os.PathLike[str]"]


def _stderr(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _resolve_output(out_path: Optional[PathLike], hf_dir: Path, outtype: str, vocab_only: bool, force: bool) -> Path:
    if out_path is None:
        stem = hf_dir.resolve().name or "model"
        out = Path.cwd() / f"{stem}-{'vocab' if vocab_only else outtype}.gguf"
    else:
        out = Path(out_path)
    if out.is_dir():
        raise ConvertError(f"output {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise ConvertError(f"output directory {out.parent} does not exist")
    if out.exists() and not force:
        raise ConvertError(f"output {out} already exists; pass --force (force=True) to overwrite it")
    return out


def _write_tensor_data(
    writer: GGUFWriter, ckpt: Checkpoint, plan: Sequence[PlannedTensor], types: Sequence, progress: bool
) -> None:
    """Stream every tensor's data after the header, in the order of the tensor infos."""
    assert writer.fout is not None and len(writer.fout) == 1
    fout = writer.fout[0]
    align = writer.data_alignment

    def pad_to(n: int) -> None:
        write_padding(fout, n, align)

    pad_to(fout.tell())
    data_start, offset = fout.tell(), 0
    bar = Progress(len(plan), progress, desc="converting", prog=PROG)
    try:
        for p, qtype in zip(plan, types):
            if fout.tell() - data_start != offset:
                raise RuntimeError(f"internal error: {p.gguf_name} would be written at the wrong offset")
            expected = tensor_bytes(qtype, p.shape)
            written = 0
            n_rows = p.shape[0] if len(p.shape) == 2 else 0
            step = max(1, _CHUNK_BYTES // (4 * int(p.shape[-1]))) if n_rows else 0
            starts = range(0, n_rows, step) if n_rows else [None]
            read_rows = getattr(p, "read_rows", None)
            for start in starts:
                stop = None if start is None else start + step
                rows = read_rows(ckpt, start, stop) if read_rows is not None else ckpt.read(p.hf_name, start, stop)
                try:
                    data = encode_rows(qtype, rows)
                except ConvertError as e:
                    raise ConvertError(f"tensor {p.hf_name}: {e}") from None
                fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                written += data.nbytes
            if written != expected:
                raise RuntimeError(f"internal error: {p.gguf_name} has {written} bytes, expected {expected}")
            pad_to(written)
            offset += written + padding(written, align)
            bar.step(p.gguf_name)
    finally:
        bar.close()
    fout.flush()


def _stop_tokens(writer: GGUFWriter) -> List[str]:
    """The STOP_TOKENS present in the vocabulary the tokenizer has just written."""
    entry = writer.kv_data[0].get(key_name("TOKENIZER_TOKENS"))
    vocab = set(entry.value) if entry is not None else set()
    return [t for t in STOP_TOKENS if t in vocab]


def _add_tokenizer(writer: GGUFWriter, hf_dir: Path, n_vocab: int) -> None:
    try:
        tok = add_tokenizer(writer, hf_dir, n_vocab)
    except (ValueError, OSError) as e:
        raise ConvertError(f"tokenizer: {e}") from None
    n_tokens = tok.get("n_tokens") if isinstance(tok, dict) else None
    if n_tokens is not None and n_tokens != n_vocab:
        raise ConvertError(f"the tokenizer has {n_tokens} tokens but the model has {n_vocab} embedding rows")
    stops = _stop_tokens(writer)
    if stops:
        writer.add_array(key_name("MINICPM_STOP_TOKENS"), stops)
    bad = _bad_token_ids(hf_dir, n_vocab)
    if bad:
        writer.add_array(key_name("MINICPM_BAD_TOKEN_IDS"), bad)


def _bad_token_ids(hf_dir: Path, n_vocab: int) -> List[int]:
    """tokenizer_config.json's ``bad_token_ids`` (MiniCPMOTokenizerFast keeps them; the o4.5
    streaming_generate masks them), checked against the vocabulary; [] when absent."""
    path = hf_dir / "tokenizer_config.json"
    if not path.is_file():
        return []
    try:
        ids = json.loads(path.read_text(encoding="utf-8")).get("bad_token_ids") or []
    except (ValueError, OSError, AttributeError) as e:
        raise ConvertError(f"tokenizer: cannot read {path}: {e}") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConvertError(f"tokenizer: bad_token_ids in {path} must be a list of token ids")
    wrong = [i for i in ids if not 0 <= i < n_vocab]
    if wrong:
        raise ConvertError(f"tokenizer: bad_token_ids in {path} holds ids outside the vocabulary of {n_vocab}: "
                           f"{wrong[:5]}")
    return sorted(set(ids))


def _pick_types(plan: Sequence[PlannedTensor], out_type, say: Callable[[str], None]) -> List:
    """The ggml type of each planned tensor (vision tensors carry theirs), with grouped notices."""
    types: List = []
    fallbacks: Dict[str, List[str]] = defaultdict(list)
    for p in plan:
        fixed = getattr(p, "qtype", None)
        if fixed is not None:
            types.append(fixed)
            continue
        qtype, why = out_type.pick(p.tensor_id, p.shape)
        types.append(qtype)
        if why:
            fallbacks[why].append(p.gguf_name)
    for why, affected in fallbacks.items():
        more = f" and {len(affected) - 3} more" if len(affected) > 3 else ""
        say(f"{len(affected)} tensor(s) ({', '.join(affected[:3])}{more}): {why}")
    return types


def _skipped_notice(ckpt: Checkpoint, used: set, llm_prefix: str) -> Optional[str]:
    """One notice for the tensors of components not converted (audio, TTS), or None."""
    skipped: Dict[str, int] = defaultdict(int)
    for n in ckpt.names():
        if n in used or (llm_prefix and n.startswith(llm_prefix)):
            continue
        skipped[n.split(".", 1)[0]] += 1
    if not skipped:
        return None
    parts = ", ".join(f"{k}.* ({v})" for k, v in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} tensors of components not converted: {parts}"


def _write_gguf(
    tmp: Path,
    arch: str,
    write_keys: Callable[[GGUFWriter], None],
    ckpt: Optional[Checkpoint],
    plan: Sequence[PlannedTensor],
    types: Sequence,
    progress: bool,
) -> None:
    writer = GGUFWriter(tmp, arch)
    try:
        write_keys(writer)
        for p, qtype in zip(plan, types):
            writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), tensor_bytes(qtype, p.shape), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        if plan:
            assert ckpt is not None
            _write_tensor_data(writer, ckpt, plan, types, progress)
    finally:
        writer.close()


def _file_type_of(qtype) -> int:
    """general.file_type of a file whose main matrices are ``qtype``."""
    for out in OUTTYPES.values():
        if out.weight_type == qtype:
            return out.file_type
    raise RuntimeError(f"internal error: no file type for {qtype!r}")


def quantize_outtypes() -> List[str]:
    """--outtype values that convert, then quantize with minicpm-quantize (llama.cpp's mixes)."""
    from .quantize import QUANT_TYPES

    return [n.lower() for n in QUANT_TYPES if n.lower() not in OUTTYPES]


def all_outtypes() -> List[str]:
    return list(OUTTYPES) + quantize_outtypes()


def _lossless_outtype(ckpt: Checkpoint) -> str:
    """The narrowest output type holding every float weight of ``ckpt`` exactly."""
    dtypes = {ckpt.dtype(n) for n in ckpt.names()} & {"F64", "F32", "F16", "BF16"}
    if dtypes == {"BF16"}:
        return "bf16"
    if dtypes == {"F16"}:
        return "f16"
    return "f32"


def _convert_then_quantize(
    hf_dir: Path,
    out_path: Optional[PathLike],
    outtype: str,
    *,
    force: bool,
    vocab_only: bool,
    name: Optional[str],
    progress: bool,
    say: Callable[[str], None],
    llm_only: bool,
    mmproj: Optional[PathLike],
    vision_outtype: str,
    audio_out: Optional[PathLike],
    audio_outtype: str,
) -> Path:
    """--outtype q4_k_m and the like: convert losslessly to a temporary file beside the output,
    then quantize it with :mod:`.quantize` (llama.cpp's per-tensor mix, ggml's kernels)."""
    from minicpm_cpp.errors import Error

    from .quantize import quantize

    if vocab_only:
        raise ConvertError(f"--vocab-only writes no tensors to quantize; drop --outtype {outtype}")
    if vision_outtype not in VISION_OUTTYPES:
        raise ConvertError(f"unknown vision output type {vision_outtype!r}; choose one of {', '.join(VISION_OUTTYPES)}")
    load_config(hf_dir)
    out = _resolve_output(out_path, hf_dir, outtype, False, force)
    if mmproj is not None:
        mm_out = _resolve_output(mmproj, hf_dir, outtype, False, force)
        if mm_out.resolve() == out.resolve():
            raise ConvertError(f"--mmproj {mm_out} is the same file as the output")
    ckpt = open_checkpoint(hf_dir)
    try:
        inter = _lossless_outtype(ckpt)
    finally:
        ckpt.close()
    if audio_outtype not in AUDIO_OUTTYPES:
        raise ConvertError(f"unknown audio output type {audio_outtype!r}; choose one of {', '.join(AUDIO_OUTTYPES)}")
    # The vision and audio parts: F16 unless asked otherwise (also in their own files).
    vision_t = "f16" if vision_outtype == "auto" else vision_outtype
    audio_t = "f16" if audio_outtype == "auto" else audio_outtype
    if audio_t != vision_t and audio_outtype != "auto" and vision_outtype != "auto":
        raise ConvertError("a quantized --outtype takes one type for the encoders: give --vision-outtype and "
                           "--audio-outtype the same value (or leave one auto)")
    enc_t = vision_t if vision_outtype != "auto" else audio_t
    fd, tmp_name = tempfile.mkstemp(prefix=f"{out.name}.{inter}-", suffix=".gguf", dir=str(out.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        convert(
            hf_dir, tmp, inter, force=True, name=name or hf_dir.resolve().name, progress=progress, log=say,
            llm_only=llm_only, mmproj=mmproj, vision_outtype=vision_t, audio_out=audio_out, audio_outtype=audio_t,
        )
        say(f"quantizing to {outtype.upper()}")
        try:
            result = quantize(tmp, out, outtype, encoder_type=enc_t, force=force, progress=progress, log=say)
        except Error as e:
            raise ConvertError(str(e)) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    say(f"wrote {out} ({result.summary()})")
    return out


def convert(
    hf_dir: PathLike,
    out_path: Optional[PathLike] = None,
    outtype: str = "f16",
    *,
    force: bool = False,
    vocab_only: bool = False,
    name: Optional[str] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    llm_only: bool = False,
    mmproj: Optional[PathLike] = None,
    vision_outtype: str = "auto",
    audio_out: Optional[PathLike] = None,
    audio_outtype: str = "auto",
    default_voice: Optional[PathLike] = None,
    no_default_voice: bool = False,
) -> Path:
    """Convert the checkpoint in ``hf_dir`` to a GGUF file and return its path.

    ``out_path`` defaults to ``<dir-name>-<outtype>.gguf`` in the current directory. An
    existing file is only replaced with ``force=True``. ``vocab_only`` writes the metadata and
    tokenizer without tensors. For a MiniCPM-V/o checkpoint the file also holds the vision
    tower and resampler unless ``llm_only``; ``mmproj`` names a second file to write them to in
    llama.cpp's mmproj convention. ``vision_outtype`` ("auto" follows ``outtype`` but keeps the
    vision matrices F16 for quantized outtypes) sets the vision matrices' type. A MiniCPM-o
    checkpoint's audio encoder and projector go into the file too (unless ``llm_only``);
    ``audio_out`` names a second file for them alone, ``audio_outtype`` sets their matrices'
    type as ``vision_outtype`` does for vision. A MiniCPM-o 4.5 file with the voice encoders
    also gets a default voice recording: ``default_voice`` (a sound file), else one found in
    the checkpoint folder (t2w_voice.DEFAULT_VOICE_FILES); none with ``no_default_voice``.
    Notices go to
    ``log`` (stderr by default). Raises :class:`ConvertError` for anything wrong with the
    checkpoint or the output paths.
    """
    say = log if log is not None else _stderr
    hf_dir = Path(hf_dir)
    if outtype in quantize_outtypes():
        return _convert_then_quantize(
            hf_dir, out_path, outtype, force=force, vocab_only=vocab_only, name=name, progress=progress, say=say,
            llm_only=llm_only, mmproj=mmproj, vision_outtype=vision_outtype, audio_out=audio_out,
            audio_outtype=audio_outtype,
        )
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown output type {outtype!r}; choose one of {', '.join(all_outtypes())}")
    if vision_outtype not in VISION_OUTTYPES:
        raise ConvertError(f"unknown vision output type {vision_outtype!r}; choose one of {', '.join(VISION_OUTTYPES)}")
    if audio_outtype not in AUDIO_OUTTYPES:
        raise ConvertError(f"unknown audio output type {audio_outtype!r}; choose one of {', '.join(AUDIO_OUTTYPES)}")
    if mmproj is not None and vocab_only:
        raise ConvertError("--mmproj cannot be combined with --vocab-only (an mmproj file is all tensors)")
    if audio_out is not None and vocab_only:
        raise ConvertError("--audio-out cannot be combined with --vocab-only (an audio file is all tensors)")
    out_type = OUTTYPES[outtype]
    config = load_config(hf_dir)
    out = _resolve_output(out_path, hf_dir, outtype, vocab_only, force)
    mm_out: Optional[Path] = None
    if mmproj is not None:
        mm_out = _resolve_output(mmproj, hf_dir, outtype, False, force)
        if mm_out.resolve() == out.resolve():
            raise ConvertError(f"--mmproj {mm_out} is the same file as the output")
    au_out: Optional[Path] = None
    if audio_out is not None:
        au_out = _resolve_output(audio_out, hf_dir, outtype, False, force)
        if au_out.resolve() == out.resolve() or (mm_out is not None and au_out.resolve() == mm_out.resolve()):
            raise ConvertError(f"--audio-out {au_out} is the same file as another output")

    ckpt: Optional[Checkpoint] = None
    try:
        try:
            ckpt = open_checkpoint(hf_dir)
        except ConvertError:
            if not vocab_only:
                raise
        names = ckpt.names() if ckpt is not None else None
        spec = detect(config, names)
        say(f"converting {spec.source} from {hf_dir} ({ckpt.description if ckpt else 'no weights'}) to {out}")
        for note in spec.notices:
            say(note)
        chat, chat_notes = chat_defaults(spec.model_type, hf_dir)
        for note in chat_notes:
            say(note)

        vspec: Optional[VisionSpec] = None
        wants_vision = not vocab_only and (mm_out is not None or not llm_only)
        if spec.prefix and wants_vision and has_vision(config, names):
            vspec = detect_vision(config, spec, hf_dir)
            for note in vspec.notices:
                say(note)
        if mm_out is not None and vspec is None:
            raise ConvertError(f"--mmproj: {hf_dir} has no vision tower to write (init_vision false, or no vpm.* tensors)")

        aspec: Optional[AudioSpec] = None
        wants_audio = not vocab_only and (au_out is not None or not llm_only)
        if spec.prefix and wants_audio and has_audio(config, names):
            aspec = detect_audio(config, spec)
            for note in aspec.notices:
                say(note)
        if au_out is not None and aspec is None:
            raise ConvertError(f"--audio-out: {hf_dir} has no audio encoder to write (init_audio false, or no apm.* "
                               "tensors)")

        # assets/token2wav (MiniCPM-o 4.5): the voice-cloning encoders, in the main file only.
        voice = find_voice_assets(hf_dir) if spec.prefix and not vocab_only and not llm_only else None
        voice_plan: List[PlannedTensor] = []
        if voice is not None:
            voice_plan, voice_notes = plan_voice(voice, audio_qtypes(outtype, audio_outtype)[0])
            for note in voice_notes:
                say(note)
        dv_path = dv = None
        if default_voice is not None and no_default_voice:
            raise ConvertError("--default-voice and --no-default-voice contradict each other")
        if voice is not None and voice.spk_bytes is not None and voice.s3 is not None and not no_default_voice:
            dv_path = find_default_voice(hf_dir, Path(default_voice) if default_voice is not None else None)
            if dv_path is not None:
                dv = make_default_voice(voice, dv_path)
                voice_plan = voice_plan + plan_default_voice(dv)
                say(f"default voice: {dv_path} ({dv.audio_16k.shape[0] / 16000:.1f} s, {dv.tokens.shape[0]} speech tokens)")
            else:
                say("default voice: none in the checkpoint folder (--default-voice FILE to add one); speech then "
                    "needs a voice from the caller, as the reference code does")
        elif default_voice is not None:
            raise ConvertError(f"--default-voice: {hf_dir} lacks the voice encoders (assets/token2wav/campplus.onnx and "
                               "speech_tokenizer_v2_25hz.onnx) to make a voice with")
        hspec = None   # Token2Wav vocoder (assets/token2wav/hift_original.pt)
        if not vocab_only and not llm_only and find_hift(hf_dir) is not None:
            hspec = load_hift(find_hift(hf_dir))
            say(f"vocoder: {hspec.path} ({len(hspec.ids)} tensors, weight norms folded)")
        elif llm_only and not vocab_only and find_hift(hf_dir) is not None:
            say(f"--llm-only: the vocoder {find_hift(hf_dir)} is not written")
        # Token2Wav's flow-matching model (assets/token2wav/flow.{yaml,pt}), into the main file.
        fspec = detect_flow(hf_dir, say) if spec.prefix and not vocab_only and not llm_only else None
        fplan: List[PlannedTensor] = plan_flow(fspec, outtype)[0] if fspec is not None else []
        tspec: Optional[TtsSpec] = None
        if spec.prefix and not vocab_only and not llm_only and has_tts(config, names, spec):
            tspec = detect_tts(config, spec)
            for note in tspec.notices:
                say(note)
        cspec = None   # streaming vocoder (assets/token2wav/hift.pt + config.yaml)
        if not vocab_only and not llm_only and find_cvoc(hf_dir) is not None:
            cspec = load_cvoc(*find_cvoc(hf_dir))
            say(f"streaming vocoder: {cspec.path} + {cspec.config.name} ({len(cspec.ids)} tensors, weight norms folded)")
        elif not vocab_only and not llm_only and (Path(hf_dir) / "assets" / "token2wav").is_dir():
            say("no streaming vocoder: assets/token2wav lacks hift.pt or config.yaml")

        plan: List[PlannedTensor] = []
        vplan: List[PlannedTensor] = []
        aplan: List[PlannedTensor] = []
        tplan: List[PlannedTensor] = []
        types: List = []
        if not vocab_only:
            assert ckpt is not None
            plan, notes = plan_tensors(spec, ckpt)
            if vspec is not None:
                vplan, vnotes = plan_vision(vspec, ckpt, outtype, vision_outtype)
                notes += list(vnotes)
                if llm_only:
                    notes.append(f"--llm-only: the vision tower and resampler ({len(vplan)} tensors) go to {mm_out} only")
            if aspec is not None:
                aplan, anotes = plan_audio(aspec, ckpt, outtype, audio_outtype)
                notes += list(anotes)
                if llm_only:
                    notes.append(f"--llm-only: the audio encoder and projector ({len(aplan)} tensors) go to {au_out} only")
            if tspec is not None:
                tplan, tnotes = plan_tts(tspec, ckpt, outtype)
                notes += list(tnotes)
            if vspec is not None or aspec is not None or tspec is not None:
                used = {p.hf_name for p in plan + vplan + aplan}
                if tspec is not None:
                    used |= {n for n in ckpt.names() if n.startswith("tts.")}
                if vspec is not None:
                    used |= {n for n in ckpt.names() if n.startswith(("vpm.", "resampler."))}
                if aspec is not None:
                    used |= {n for n in ckpt.names() if n.startswith(("apm.", "audio_projection_layer."))}
                notes = [n for n in notes if not n.startswith("skipped ")]
                left = _skipped_notice(ckpt, used, spec.prefix)
                if left:
                    notes.append(left)
            for note in notes:
                say(note)
        main_plan = plan + ([] if llm_only else vplan + aplan + tplan) + voice_plan + fplan
        if hspec is not None:
            main_plan = main_plan + plan_hift(hspec)
        if cspec is not None:
            main_plan = main_plan + plan_cvoc(cspec)
        types = _pick_types(main_plan, out_type, say)

        def main_keys(writer: GGUFWriter) -> None:
            write_metadata(writer, spec, name or hf_dir.resolve().name)
            write_chat_defaults(writer, chat)
            if not vocab_only:
                writer.add_uint32(key_name("GENERAL_FILE_TYPE"), out_type.file_type)
                if out_type.quantized:
                    writer.add_uint32(key_name("GENERAL_QUANT_VERSION"), GGML_QUANT_VERSION)
            if vspec is not None and not llm_only:
                write_vision_metadata(writer, vspec)
            if aspec is not None and not llm_only:
                write_audio_metadata(writer, aspec)
            if voice is not None:
                write_voice_metadata(writer, voice)
            if dv is not None:
                write_default_voice_metadata(writer, dv, dv_path)
            if hspec is not None:
                write_hift_metadata(writer, hspec)
            if fspec is not None:
                write_flow_metadata(writer, fspec)
            if tspec is not None:
                write_tts_metadata(writer, tspec)
            if cspec is not None:
                write_cvoc_metadata(writer, cspec)
            _add_tokenizer(writer, hf_dir, spec.hparams.n_vocab)

        with atomic_output(out) as tmp:
            _write_gguf(tmp, spec.arch, main_keys, ckpt, main_plan, types, progress)
            if mm_out is not None:
                assert vspec is not None
                mm_types = [p.qtype for p in vplan]
                weight_t, _ = vision_qtypes(outtype, vision_outtype)

                def mm_keys(writer: GGUFWriter) -> None:
                    writer.add_string(key_name("GENERAL_NAME"), name or hf_dir.resolve().name)
                    writer.add_description(f"image encoder for MiniCPM-{vspec.flavour.upper()} {vspec.version}")
                    writer.add_uint32(key_name("GENERAL_FILE_TYPE"), _file_type_of(weight_t))
                    if ENCODINGS[weight_t].quantized:
                        writer.add_uint32(key_name("GENERAL_QUANT_VERSION"), GGML_QUANT_VERSION)
                    write_vision_metadata(writer, vspec)

                with atomic_output(mm_out) as mm_tmp:
                    _write_gguf(mm_tmp, _MMPROJ_ARCH, mm_keys, ckpt, vplan, mm_types, progress)
            if au_out is not None:
                assert aspec is not None
                au_types = [p.qtype for p in aplan]
                a_weight_t, _ = audio_qtypes(outtype, audio_outtype)

                def au_keys(writer: GGUFWriter) -> None:
                    writer.add_string(key_name("GENERAL_NAME"), name or hf_dir.resolve().name)
                    writer.add_description(f"audio encoder for {spec.model_type}")
                    writer.add_uint32(key_name("GENERAL_FILE_TYPE"), _file_type_of(a_weight_t))
                    if ENCODINGS[a_weight_t].quantized:
                        writer.add_uint32(key_name("GENERAL_QUANT_VERSION"), GGML_QUANT_VERSION)
                    write_audio_metadata(writer, aspec)

                with atomic_output(au_out) as au_tmp:
                    _write_gguf(au_tmp, _MMPROJ_ARCH, au_keys, ckpt, aplan, au_types, progress)
    finally:
        if ckpt is not None:
            ckpt.close()
    size = out.stat().st_size
    what = "vocabulary only" if vocab_only else f"{len(main_plan)} tensors, {outtype}"
    if vspec is not None and not llm_only:
        what += f", with vision ({len(vplan)} tensors)"
    if aspec is not None and not llm_only:
        what += f", with audio ({len(aplan)} tensors)"
    if fplan:
        what += f", with the Token2Wav flow ({len(fplan)} tensors)"
    if tspec is not None:
        what += f", with TTS ({len(tplan)} tensors)"
    say(f"wrote {out} ({spec.arch}, {what}, {size / 2**20:.1f} MiB)")
    if mm_out is not None:
        say(f"wrote {mm_out} (mmproj, {len(vplan)} tensors, {mm_out.stat().st_size / 2**20:.1f} MiB)")
    if au_out is not None:
        say(f"wrote {au_out} (audio, {len(aplan)} tensors, {au_out.stat().st_size / 2**20:.1f} MiB)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Convert a Hugging Face MiniCPM-V 4.5 / MiniCPM-o 4.5 / MiniCPM-V 2.6 / MiniCPM-o 2.6 checkpoint "
            "(or a plain Qwen3ForCausalLM / Qwen2ForCausalLM one) to GGUF. One file holds the language model and "
            "tokenizer in llama.cpp's layout plus, for MiniCPM-V/o, the vision tower (SigLIP, only the layers the "
            "model runs: drop_vision_last_layer is applied) and the resampler, under clip.cpp's MiniCPM-V tensor "
            "names and clip.* keys, and for MiniCPM-o the Whisper audio encoder and its projector under llama.cpp mtmd's "
            "audio names (a.*, mm.a.*) with clip.audio.* / minicpm.audio.* keys, and MiniCPM-o 4.5's TTS talker (tts.*, minicpm.tts.* keys)."
        ),
        epilog=(
            "The output is written to OUTFILE.tmp-XXXX beside OUTFILE and renamed when complete; on any error "
            "or interruption nothing is left behind. An existing OUTFILE is never replaced without --force. "
            "1-D tensors (norms, biases) are always F32; with q8_0, a matrix whose row length is not a multiple "
            "of 32 is written as F16 (with a notice). Vision: the patch embedding is F16 (F32 with f32), "
            "the resampler queries and its sin-cos table are F32, and a quantized --outtype keeps the vision "
            "matrices F16 unless --vision-outtype asks otherwise (the audio encoder likewise, --audio-outtype). For llama.cpp, use --llm-only together with "
            "--mmproj: llama.cpp loads the LLM file and takes the vision part from the mmproj file "
            "(llama-mtmd-cli -m OUTFILE --mmproj MMPROJ). The reference chat()'s generation defaults (sampling "
            "with and without reasoning, enable_thinking, max_new_tokens) are recorded in OUTFILE, the default-mode "
            "sampling also as llama.cpp's general.sampling.* keys; minicpm-cli -m OUTFILE --help shows them."
        ),
    )
    p.add_argument("model_dir", type=Path, help="Hugging Face checkpoint directory (config.json, safetensors, tokenizer files)")
    p.add_argument(
        "-o",
        "--outfile",
        type=Path,
        default=None,
        help=(
            "output GGUF file (default: <model_dir name>-<outtype>.gguf in the current directory, "
            "<model_dir name>-vocab.gguf with --vocab-only)"
        ),
    )
    p.add_argument(
        "--outtype",
        choices=all_outtypes(),
        default="f16",
        help=(
            "type of the 2-D weight matrices, token embedding included (default: f16); "
            f"{', '.join(quantize_outtypes())} convert, then quantize with llama.cpp's per-tensor mix "
            "as minicpm-quantize does (the vision part stays F16 unless --vision-outtype says otherwise)"
        ),
    )
    p.add_argument("--force", action="store_true", help="overwrite OUTFILE if it exists")
    p.add_argument("--vocab-only", action="store_true", help="write only the metadata and tokenizer, no tensors")
    p.add_argument("--name", default=None, help=f"{key_name('GENERAL_NAME')} to record (default: the model directory's name)")
    p.add_argument(
        "--llm-only",
        action="store_true",
        help=(
            "leave the vision tower, resampler and audio encoder out of OUTFILE, so it loads in llama.cpp (whose "
            "loader refuses tensors it does not know); combine with --mmproj / --audio-out to keep them in their "
            "own files"
        ),
    )
    p.add_argument(
        "--mmproj",
        type=Path,
        default=None,
        metavar="MMPROJ",
        help=(
            "also write the vision tower and resampler to MMPROJ, a llama.cpp mmproj GGUF (architecture "
            "clip, clip.* keys, clip.cpp's MiniCPM-V tensor names) usable with llama.cpp's mtmd tools"
        ),
    )
    p.add_argument(
        "--vision-outtype",
        choices=list(VISION_OUTTYPES),
        default="auto",
        help=(
            "type of the vision and resampler matrices (default auto: as --outtype, but F16 when --outtype is "
            "quantized)"
        ),
    )
    p.add_argument(
        "--audio-out",
        type=Path,
        default=None,
        metavar="AUDIO",
        help=(
            "also write the audio encoder and projector (MiniCPM-o) to AUDIO, a file of their own (architecture "
            "clip, clip.audio.* keys); load it with minicpm-cli --audio-model AUDIO or Model(..., audio=AUDIO)"
        ),
    )
    p.add_argument(
        "--audio-outtype",
        choices=list(AUDIO_OUTTYPES),
        default="auto",
        help="type of the audio encoder and projector matrices (default auto: as --outtype, but F16 when quantized)",
    )
    p.add_argument(
        "--default-voice",
        type=Path,
        default=None,
        metavar="FILE",
        help=(
            "MiniCPM-o 4.5: the recording of the voice spoken when the caller gives none (any sound file, stored "
            "at 16 kHz; default: assets/demo.wav, assets/default_ref_audio.wav or "
            "assets/ref_audio/ref_minicpm_signature.wav in the checkpoint folder, the first found)"
        ),
    )
    p.add_argument("--no-default-voice", action="store_true", help="store no default voice")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert(
            args.model_dir,
            args.outfile,
            args.outtype,
            force=args.force,
            vocab_only=args.vocab_only,
            name=args.name,
            progress=not args.no_progress,
            llm_only=args.llm_only,
            mmproj=args.mmproj,
            vision_outtype=args.vision_outtype,
            audio_out=args.audio_out,
            audio_outtype=args.audio_outtype,
            default_voice=args.default_voice,
            no_default_voice=args.no_default_voice,
        )
    except ConvertError as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    except OSError as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no output written", file=sys.stderr)
        raise SystemExit(130) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
