"""The system messages of MiniCPM-o 4.5's speech modes, as the reference ``get_sys_prompt`` builds them.

The reference voice enters the conversation twice: as audio in the system message (an LLM input,
encoded like any other clip) and as the Token2Wav prompt (a ``Voice``). ``system_prompt`` gives
the first; pass a ``Voice`` (its 16 kHz audio is used) or a 16 kHz float array.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .errors import InvalidArgumentError

MODES = ("default", "omni", "audio_assistant", "audio_roleplay", "voice_cloning")
LANGUAGES = ("en", "zh")

# (prefix, suffix) per mode and language, the reference's exact strings.
_TEXTS = {
    ("omni", "en"): ("Clone the voice in the provided audio prompt.",
                     "As an assistant, you will speak using this voice style."),
    ("omni", "zh"): ("模仿音频样本的音色并生成新的内容。",
                     "请用这种声音风格来为用户提供帮助。 请认真、高质量地回复用户的问题。 请用高自然度的方式和用户聊天。"),
    ("audio_assistant", "en"): ("Use the voice in the audio prompt to synthesize new content.",
                                "You are a helpful assistant with the above voice style."),
    ("audio_assistant", "zh"): ("模仿音频样本的音色并生成新的内容。",
                                "你的任务是用这种声音模式来当一个助手。请认真、高质量地回复用户的问题。请用高自然度的方式和用户聊天。"
                                "你是由面壁智能开发的人工智能助手：面壁小钢炮。"),
    ("audio_roleplay", "en"): ("Clone the voice in the provided audio prompt.",
                               "Try to role-play the character based on the audio prompt above."),
    ("audio_roleplay", "zh"): ("模仿输入音频中的声音特征。", "假装你是上述音频中的人物，与我进行对话。"),
    ("voice_cloning", "en"): ("Clone the voice in the provided audio prompt.", None),
    ("voice_cloning", "zh"): ("模仿输入音频中的声音特征。", None),
}
_DEFAULT = "You are a helpful assistant. You can accept audio and text input and output voice and text."
_NO_VOICE = "Use the <reserved_53> voice."


def _audio_of(ref_audio) -> np.ndarray:
    audio = getattr(ref_audio, "audio_16k", None)
    if audio is None:
        audio = ref_audio
    if isinstance(audio, (str, bytes)) or not hasattr(audio, "__len__"):
        raise InvalidArgumentError("ref_audio must be a Voice or a 16 kHz float array (decode files with load_audio)")
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1 or a.size == 0:
        raise InvalidArgumentError(f"ref_audio must be a non-empty 1-D 16 kHz array, got shape {a.shape}")
    return a


def system_prompt(ref_audio: Optional[Any] = None, mode: str = "default", language: str = "en") -> Dict[str, Any]:
    """The system message of ``mode`` ("default", "omni", "audio_assistant", "audio_roleplay",
    "voice_cloning") in ``language`` ("en" or "zh"): ``{"role": "system", "content": [...]}`` with
    the reference audio between the prefix and the suffix, as ``MiniCPMO.get_sys_prompt``.

    Without a reference audio "omni" is an empty system text, "audio_assistant" and
    "audio_roleplay" name the default voice, "voice_cloning" is an error. Unknown modes fall back
    to the default text as in the reference; a mode or language of the wrong type is an error."""
    if not isinstance(mode, str):
        raise InvalidArgumentError(f"mode must be a string, got {type(mode).__name__}")
    if language not in LANGUAGES:
        raise InvalidArgumentError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    audio = _audio_of(ref_audio) if ref_audio is not None else None
    lang = "zh" if language == "zh" else "en"
    if (mode, lang) not in _TEXTS:
        return {"role": "system", "content": [_DEFAULT]}
    prefix, suffix = _TEXTS[(mode, lang)]
    if audio is None:
        if mode == "omni":
            return {"role": "system", "content": [""]}
        if mode == "voice_cloning":
            raise InvalidArgumentError("the voice_cloning mode needs a reference audio")
        return {"role": "system", "content": [_NO_VOICE, suffix]}
    content = [prefix, audio] + ([suffix] if suffix is not None else [])
    return {"role": "system", "content": content}
