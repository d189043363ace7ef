"""minicpm_cpp.write_wav: a valid 16-bit PCM WAV that standard readers decode to the same samples."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soundfile

import minicpm_cpp


def test_round_trip_with_soundfile_and_wave(tmp_path):
    t = np.arange(24000) / 24000.0
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    p = minicpm_cpp.write_wav(tmp_path / "a.wav", x)
    y, sr = soundfile.read(str(p), dtype="float32")
    assert sr == 24000 and y.shape == x.shape
    assert np.abs(y - x).max() <= 1.0 / 32767 + 1e-6
    with wave.open(str(p)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 24000, 24000)
    assert p.stat().st_size == 44 + 2 * 24000


def test_clipping_rounding_and_int16(tmp_path):
    x = np.array([-2.0, -1.0, 0.0, 0.5 / 32767, 1.0, 3.0], np.float32)
    p = minicpm_cpp.write_wav(tmp_path / "c.wav", x, sample_rate=16000)
    y, sr = soundfile.read(str(p), dtype="int16")
    assert sr == 16000
    assert y.tolist() == [-32768, -32767, 0, 0, 32767, 32767]
    i = np.array([1, -2, 3], np.int16)
    y2, _ = soundfile.read(str(minicpm_cpp.write_wav(tmp_path / "i.wav", i)), dtype="int16")
    assert y2.tolist() == [1, -2, 3]


def test_empty_audio_is_a_valid_file(tmp_path):
    p = minicpm_cpp.write_wav(tmp_path / "e.wav", np.zeros(0, np.float32))
    with wave.open(str(p)) as w:
        assert w.getnframes() == 0


@pytest.mark.parametrize(
    "audio,rate,match",
    [
        (np.array([np.nan], np.float32), 24000, "NaN"),
        (np.zeros((2, 10), np.float32), 24000, "mono"),
        (np.zeros(4, np.int32), 24000, "int16"),
        (["a"], 24000, "float"),
        (np.zeros(4, np.float32), 0, "out of range"),
        (np.zeros(4, np.float32), 24000.0, "integer"),
        (np.zeros(4, np.float32), True, "integer"),
    ],
)
def test_bad_input(tmp_path, audio, rate, match):
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match=match):
        minicpm_cpp.write_wav(tmp_path / "x.wav", audio, sample_rate=rate)
    assert not list(tmp_path.iterdir())


def test_missing_directory(tmp_path):
    with pytest.raises(minicpm_cpp.FileError, match="does not exist"):
        minicpm_cpp.write_wav(tmp_path / "no" / "x.wav", np.zeros(4, np.float32))


def test_audio_chunk():
    c = minicpm_cpp.AudioChunk(np.zeros(12000, np.float32), last=True)
    assert c.sample_rate == 24000 and c.seconds == 0.5 and "0.500 s" in repr(c)


# ---- the speech system prompts (reference MiniCPMO.get_sys_prompt) --------------------------


@pytest.mark.parametrize(
    "mode,language,expect",
    [
        ("omni", "en", ["Clone the voice in the provided audio prompt.", "A",
                        "As an assistant, you will speak using this voice style."]),
        ("audio_assistant", "en", ["Use the voice in the audio prompt to synthesize new content.", "A",
                                   "You are a helpful assistant with the above voice style."]),
        ("audio_roleplay", "en", ["Clone the voice in the provided audio prompt.", "A",
                                  "Try to role-play the character based on the audio prompt above."]),
        ("voice_cloning", "en", ["Clone the voice in the provided audio prompt.", "A"]),
        ("voice_cloning", "zh", ["模仿输入音频中的声音特征。", "A"]),
        ("default", "en", ["You are a helpful assistant. You can accept audio and text input and output voice and text."]),
        ("something", "en", ["You are a helpful assistant. You can accept audio and text input and output voice and text."]),
    ],
)
def test_system_prompt_with_audio(mode, language, expect):
    a = np.zeros(1600, np.float32)
    m = minicpm_cpp.system_prompt(a, mode=mode, language=language)
    assert m["role"] == "system"
    got = ["A" if isinstance(x, np.ndarray) else x for x in m["content"]]
    assert got == expect


def test_system_prompt_without_audio():
    assert minicpm_cpp.system_prompt(None, "omni")["content"] == [""]
    assert minicpm_cpp.system_prompt(None, "audio_assistant")["content"] == [
        "Use the <reserved_53> voice.", "You are a helpful assistant with the above voice style."]
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="reference audio"):
        minicpm_cpp.system_prompt(None, "voice_cloning")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="language"):
        minicpm_cpp.system_prompt(None, "omni", language="fr")
    with pytest.raises(minicpm_cpp.InvalidArgumentError, match="16 kHz"):
        minicpm_cpp.system_prompt("voice.wav", "omni")
