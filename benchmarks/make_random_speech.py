#!/usr/bin/env python3
"""Write a random-weight MiniCPM-o 4.5 speech-output checkpoint and convert it to GGUF.

The speech parts are at the released sizes (spec-audio-speech.md):

* TTS talker (section 2.2): LlamaModel 20 layers, hidden 768, 12 heads (12 KV heads, head_dim 64),
  gated SiLU MLP 3072, 4096 positions, ``emb_text`` [152064, 768], 6562 audio codes (EOS 6561),
  weight-normed head, audio BOS 151687 / text EOS 151692, ``full_attention``.
* Token2Wav flow (section 2.8.1): width 512, conformer 6 + 4 up blocks of 8 heads, FFN 2048,
  look-ahead 3, stride 2; DiT depth 16, 8 heads of 64, mlp ratio 4; CFG 0.7
  (``assets/token2wav/flow.yaml`` + ``flow.pt``).
* Original HiFT vocoder (section 2.10.1): base channels 512, F0 predictor 512 wide
  (``assets/token2wav/hift_original.pt``).

The checkpoint is built by the test fixtures (tests/tiny_models.py ``make_minicpmo45``,
tests/tiny_token2wav.py, tests/tiny_hift.py) given real size dicts; the LLM, vision and audio
encoder stand-ins stay tiny (the converter needs an LLM). The talker's ``llm_dim`` is the LLM
hidden size, so it is the tiny LLM's 256 here instead of the release's 4096: only the
``projector_semantic`` input (one [256 -> 768] matrix per text token, instead of [4096 -> 768])
is smaller, about 1 % of the talker's work per text token and none of its per-code work.
The EOS row of the head gets the same norm as the others (the tiny fixture makes it large so
that tiny talkers end their chunks), so random talkers run to ``max_new_tokens``.

Matrices are F16 in the GGUF file (``--type``), about 0.9 GB.

    python benchmarks/make_random_speech.py /tmp/speech-real            # -> /tmp/speech-real/speech-f16.gguf
    python benchmarks/make_random_speech.py /tmp/speech-tiny --tiny     # the test fixtures' sizes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

REAL_TTS: Dict[str, object] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "num_hidden_layers": 20,
    "max_position_embeddings": 4096,
    "num_text_tokens": 152064,
    "num_audio_tokens": 6562,
    "audio_bos_token_id": 151687,
    "text_eos_token_id": 151692,
    "normalize_projected_hidden": True,
    "attention_type": "full_attention",
}

REAL_FLOW: Dict[str, object] = {
    "vocab_size": 6561,
    "width": 512,
    "enc_heads": 8,
    "enc_ff": 2048,
    "num_blocks": 6,
    "num_up_blocks": 4,
    "pre_lookahead_len": 3,
    "up_stride": 2,
    "dit_depth": 16,
    "dit_heads": 8,
    "dit_head_dim": 64,
    "mlp_ratio": 4.0,
    "cfg_rate": 0.7,
}

REAL_HIFT: Dict[str, int] = {"base_channels": 512, "f0_channels": 512}


def sizes(tiny: bool) -> Dict[str, Dict[str, object]]:
    """The size dicts of the three parts (real, or the test fixtures' tiny ones)."""
    import tiny_hift
    import tiny_models
    import tiny_token2wav

    if tiny:
        return {"tts": dict(tiny_models.DEFAULT_TTS), "flow": dict(tiny_token2wav.TINY_FLOW),
                "hift": dict(tiny_hift.TINY_HIFT)}
    return {"tts": dict(REAL_TTS), "flow": dict(REAL_FLOW), "hift": dict(REAL_HIFT)}


def make_checkpoint(folder: Path, tiny: bool = False, seed: int = 0, log=print) -> Path:
    """The Hugging Face style folder: config.json with tts_config, model.safetensors, tokenizer,
    assets/token2wav/{flow.yaml, flow.pt, hift_original.pt}."""
    import speech_ref  # noqa: F401  (stubs torchaudio before the reference packages)
    import tiny_hift
    import tiny_models
    import tiny_token2wav

    s = sizes(tiny)
    orig = tiny_models._init_tts_tensor

    def init_tts(name, shape, gen, torch):
        t = orig(name, shape, gen, torch)
        if name.endswith("original0") and not tiny:
            t[-1] = 1.25  # EOS row like the others: the talker runs to max_new_tokens
        return t

    t0 = time.perf_counter()
    tiny_models._init_tts_tensor = init_tts
    try:
        tiny_models.make_minicpmo45(folder, tts=s["tts"], dtype="bfloat16", seed=seed)
    finally:
        tiny_models._init_tts_tensor = orig
    log(f"  talker + tiny LLM: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    tiny_token2wav.add_token2wav_flow(folder, s["flow"], seed=seed)
    log(f"  Token2Wav flow: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    tiny_hift.add_hift(folder, seed=seed, **s["hift"])
    log(f"  HiFT vocoder: {time.perf_counter() - t0:.1f} s")
    return folder


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="output folder (checkpoint in FOLDER/hf, GGUF in FOLDER/speech-<type>.gguf)")
    ap.add_argument("--tiny", action="store_true", help="the test fixtures' tiny sizes")
    ap.add_argument("--type", default="f16", choices=("f16", "f32"), help="matrix type of the GGUF file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing folder")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda m: None) if args.quiet else print

    folder = Path(args.folder)
    hf = folder / "hf"
    out = folder / f"speech-{args.type}.gguf"
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists (--force to overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    log(f"writing the {'tiny' if args.tiny else 'real-size'} random checkpoint to {hf}")
    make_checkpoint(hf, args.tiny, args.seed, log)
    cfg = json.loads((hf / "config.json").read_text())
    llm_dim = int(cfg["tts_config"]["llm_dim"])
    log(f"  tts_config.llm_dim = {llm_dim} (the tiny LLM's hidden size; the release has 4096)")
    from minicpm_cpp.convert import convert

    t0 = time.perf_counter()
    convert(hf, out, args.type, force=True, progress=False, log=(lambda m: None) if args.quiet else
            (lambda m: print("  convert: " + m)))
    log(f"converted in {time.perf_counter() - t0:.1f} s: {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    meta = {"checkpoint": str(hf), "gguf": str(out), "type": args.type, "tiny": bool(args.tiny),
            "llm_dim": llm_dim, "sizes": sizes(args.tiny)}
    (folder / "speech-sizes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
