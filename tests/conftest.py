"""Shared fixtures: the test assets (``tests/assets/``), tiny random checkpoints, and their GGUF conversions.

The checkpoints are built once per test session (a few seconds each) under pytest's
temporary directory; ``converted(dir, outtype)`` converts a checkpoint once per
(directory, output type) and returns the cached GGUF path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

import tiny_models


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """``tests/assets/``: tokenizers, llama.cpp's vocab test files, chat templates, media."""
    return tiny_models.assets_dir()


@pytest.fixture(scope="session")
def tokenizer_dir(assets_dir: Path) -> Path:
    return assets_dir / tiny_models.TOKENIZER_SUBDIR


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """Plain Qwen3ForCausalLM: 2 layers, hidden 128, 4 heads (2 KV), head_dim 32, FFN 256."""
    return tiny_models.make_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """Plain Qwen2ForCausalLM with q/k/v biases, same sizes as tiny_qwen3_dir."""
    return tiny_models.make_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_minicpmv45_dir(tmp_path_factory) -> Path:
    """MiniCPM-V 4.5 layout (llm.* Qwen3 + dummy vpm.* / resampler.*), same LLM as tiny_qwen3_dir."""
    return tiny_models.make_qwen3(tmp_path_factory.mktemp("tiny-minicpmv45"), minicpm_prefix=True)


@pytest.fixture(scope="session")
def tiny_minicpmo26_dir(tmp_path_factory) -> Path:
    """MiniCPM-o 2.6 layout (llm.* Qwen2 + dummy vision/audio/TTS tensors), sharded in 2 files."""
    return tiny_models.make_qwen2(tmp_path_factory.mktemp("tiny-minicpmo26"), minicpm_prefix=True, shards=2)


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> Callable[..., Path]:
    """``converted(hf_dir, outtype="f16") -> Path``: convert once per (dir, outtype), then reuse."""
    cache: Dict[Tuple[str, str], Path] = {}
    out_dir = tmp_path_factory.mktemp("gguf")

    def convert_once(hf_dir, outtype: str = "f16") -> Path:
        key = (str(Path(hf_dir).resolve()), outtype)
        if key not in cache:
            from minicpm_cpp.convert import convert

            out = out_dir / f"{Path(hf_dir).name}-{outtype}.gguf"
            cache[key] = convert(hf_dir, out, outtype, force=True, progress=False, log=lambda msg: None)
        return cache[key]

    return convert_once


@pytest.fixture(scope="session")
def tiny_minicpmv45_vision_dir(tmp_path_factory) -> Path:
    """MiniCPM-V 4.5 layout with a real tiny vision tower and resampler (bfloat16 weights):
    Qwen3 LLM hidden 256 (2 resampler heads), vision hidden 64, 4 heads, FFN 128, 3 layers stored,
    drop_vision_last_layer true (2 run). See tiny_models.make_minicpmv45."""
    return tiny_models.make_minicpmv45(tmp_path_factory.mktemp("tiny-minicpmv45-vision"))


@pytest.fixture(scope="session")
def tiny_minicpmv26_vision_dir(tmp_path_factory) -> Path:
    """MiniCPM-V 2.6 layout with a real tiny vision tower and resampler (float32 weights):
    Qwen2 LLM hidden 128 (1 resampler head), vision hidden 96, 4 heads, FFN 128, 2 layers,
    drop_vision_last_layer false. See tiny_models.make_minicpmv26."""
    return tiny_models.make_minicpmv26(tmp_path_factory.mktemp("tiny-minicpmv26-vision"))


@pytest.fixture(scope="session")
def tiny_minicpmo45_dir(tmp_path_factory) -> Path:
    """MiniCPM-o 4.5 layout: the LLM and vision of tiny_minicpmv45_vision_dir plus a real tiny
    Whisper encoder (d_model 64, 4 heads, FFN 256, 2 layers) and projector, pool step 5 (bfloat16).
    See tiny_models.make_minicpmo45."""
    return tiny_models.make_minicpmo45(tmp_path_factory.mktemp("tiny-minicpmo45"))


@pytest.fixture(scope="session")
def tiny_minicpmo26_dir_audio(tmp_path_factory) -> Path:
    """MiniCPM-o 2.6 layout: the Qwen2 LLM and vision of tiny_minicpmv26_vision_dir plus the audio
    encoder of tiny_minicpmo45_dir, pool step 2 (float32). See tiny_models.make_minicpmo26."""
    return tiny_models.make_minicpmo26(tmp_path_factory.mktemp("tiny-minicpmo26-audio"))


@pytest.fixture(scope="session")
def tiny_speech_dir(tmp_path_factory) -> Path:
    """MiniCPM-o 4.5 with every speech part (float32): the TTS talker, Token2Wav's flow, the
    original and the streaming HiFT, and the voice assets (S3 tokenizer, CAM++), as
    test_speech.py builds it."""
    import tiny_hift
    import tiny_token2wav
    import tiny_voice

    d = tiny_models.make_minicpmo45(tmp_path_factory.mktemp("tiny-o45-speech-shared"), dtype="float32")
    tiny_token2wav.add_token2wav_flow(d)
    tiny_hift.add_hift(d, seed=3)
    tiny_hift.add_causal_hift(d, seed=4)
    tiny_voice.add_voice_assets(d)
    return d
