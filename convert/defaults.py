"""The generation defaults of each model family, as its reference ``chat()`` sets them.

The converter records them in the GGUF (``minicpm.chat.*``, see ``csrc/model/names.def``), and
the runtime reads them in one place (``csrc/runtime/defaults.cpp``), so that a model samples
as its own Python code does unless the caller says otherwise. The default-mode values also go
to llama.cpp's ``general.sampling.*`` keys, so llama.cpp samples the same way.

Every value below cites the function it comes from. Values that ``chat()`` leaves to
``model.generate()`` come from the checkpoint's ``generation_config.json`` and, for a field
that file does not set, from transformers' own ``GenerationConfig`` defaults
(``_get_default_generation_params``: temperature 1.0, top_k 50, top_p 1.0, repetition_penalty
1.0, do_sample False, no min_p). ``min_p`` is written explicitly, as 0: no reference ``chat()``
sets it (a generation_config.json the values come from may).

Families (``minicpm.model_type``, from :func:`.llm.detect`): MiniCPM-V 4.5 and MiniCPM-o 4.5
record both modes and ``enable_thinking``; MiniCPM-V 2.6 and MiniCPM-o 2.6 have no thinking
switch (no ``enable_thinking``, no ``sampling_think`` key: the runtime uses the default mode);
plain Qwen3 / Qwen2 checkpoints have no chat() of their own and record only what their
generation_config.json sets (nothing without one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .checkpoint import ConvertError
from .names import key_name

__all__ = ["Sampling", "ChatDefaults", "chat_defaults", "write_chat_defaults", "FAMILIES", "GENERATION_CONFIG"]

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class Sampling:
    """One sampling mode, in the terms of transformers' generate()."""

    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    min_p: float = 0.0


@dataclass(frozen=True)
class ChatDefaults:
    """What :func:`write_chat_defaults` records for one checkpoint."""

    source: str  # minicpm.chat.source: where the values come from
    sampling: Sampling  # without reasoning (also general.sampling.*)
    sampling_think: Optional[Sampling] = None  # with reasoning enabled; None: the model has no switch
    enable_thinking: Optional[bool] = None  # chat()'s default; None: the model has no switch
    max_new_tokens: Optional[int] = None  # chat()'s default; None: not recorded
    notices: List[str] = field(default_factory=list)


# transformers' GenerationConfig._get_default_generation_params(): what generate() uses for a
# field neither the call nor generation_config.json sets.
_HF_DEFAULTS = Sampling(temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0, min_p=0.0)
# generation_config.json field -> Sampling field.
_GC_FIELDS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "min_p": "min_p",
}


def _read_generation_config(hf_dir: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint's generation_config.json, or None when it has none."""
    path = Path(hf_dir) / GENERATION_CONFIG
    if not path.is_file():
        return None
    try:
        gc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot parse {path}: {e}") from None
    if not isinstance(gc, dict):
        raise ConvertError(f"{path}: expected a JSON object at the top level")
    return gc


def _number(gc: Dict[str, Any], key: str, path: str, integer: bool) -> Optional[float]:
    value = gc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConvertError(f"{path}: {key} = {value!r} is not a number")
    if integer and int(value) != value:
        raise ConvertError(f"{path}: {key} = {value!r} is not an integer")
    return value


def _from_generation_config(gc: Dict[str, Any], base: Sampling, path: str) -> Sampling:
    """``base`` with the sampling fields ``gc`` sets."""
    changes: Dict[str, Any] = {}
    for gc_key, attr in _GC_FIELDS.items():
        value = _number(gc, gc_key, path, integer=attr == "top_k")
        if value is not None:
            changes[attr] = int(value) if attr == "top_k" else float(value)
    return replace(base, **changes)


def _check(s: Sampling, where: str) -> Sampling:
    """The ranges the runtime accepts (csrc/runtime/defaults.cpp); a value outside is an error here
    rather than a file the runtime refuses to load."""
    bad = []
    if not 0.0 <= s.temperature <= 100.0:
        bad.append(f"temperature {s.temperature} (expected [0, 100])")
    if not 0 <= s.top_k <= 1 << 30:
        bad.append(f"top_k {s.top_k} (expected >= 0)")
    if not 0.0 < s.top_p <= 1.0:
        bad.append(f"top_p {s.top_p} (expected (0, 1])")
    if not 0.0 <= s.min_p <= 1.0:
        bad.append(f"min_p {s.min_p} (expected [0, 1])")
    if not 0.0 < s.repetition_penalty <= 100.0:
        bad.append(f"repetition_penalty {s.repetition_penalty} (expected (0, 100])")
    if bad:
        raise ConvertError(f"{where}: " + "; ".join(bad))
    return s


# ---------------------------------------------------------------------------------------------
# The families


def _minicpm_v45(hf_dir: Path) -> ChatDefaults:
    """MiniCPM-V 4.5: ``MiniCPMV.chat`` in modeling_minicpmv.py of the official V4.5 remote code
    (copy in the public GitHub repository PcOffeeP/FineTune_MLLM,
    ``Model/MiniCPM-VL-4.5/modeling_minicpmv.py``).

    * ``chat(..., max_new_tokens=2048, sampling=True, enable_thinking=False, ...)``;
    * ``if sampling:`` ``generation_config = {"temperature": 0.7, "do_sample": True}``, and
      ``if not enable_thinking:`` it adds ``"top_p": 0.8, "top_k": 100, "repetition_penalty": 1.03``;
    * so with thinking, top_p / top_k / repetition_penalty are generate()'s: the checkpoint's
      generation_config.json (the released file: ``"top_p": 0.95, "top_k": 20``, no
      repetition_penalty, so transformers' 1.0; its ``"temperature": 0.6`` is overridden by
      chat()'s 0.7). Without the file, the released file's values are used.
    """
    plain = Sampling(temperature=0.7, top_p=0.8, top_k=100, repetition_penalty=1.03)
    released = Sampling(temperature=0.7, top_p=0.95, top_k=20, repetition_penalty=1.0)
    gc = _read_generation_config(hf_dir)
    if gc is None:
        think = released
    else:
        path = str(Path(hf_dir) / GENERATION_CONFIG)
        # chat() sets temperature and do_sample; every other field is the file's or transformers'.
        think = replace(_from_generation_config(gc, _HF_DEFAULTS, path), temperature=0.7)
    return ChatDefaults("MiniCPM-V 4.5 chat() (modeling_minicpmv.py)", plain, think, enable_thinking=False, max_new_tokens=2048)


def _minicpm_o45(hf_dir: Path) -> ChatDefaults:
    """MiniCPM-o 4.5: ``MiniCPMO.chat`` and ``prepare_generation_config`` in
    ``MiniCPMO45/modeling_minicpmo.py`` of the public GitHub repository OpenBMB/MiniCPM-o-Demo.

    * ``chat(..., max_new_tokens=4096, enable_thinking=False, ...)``;
    * ``prepare_generation_config`` (sampling): temperature 0.7, top_p 0.8, top_k 100,
      repetition_penalty 1.02, the same with and without thinking.

    prepare_generation_config also keeps ``num_beams=3`` together with ``do_sample=True``, that
    is transformers' beam sampling (three beams, each step sampled). This runtime samples one
    sequence; what is recorded is the per-token sampling those beams use.
    """
    s = Sampling(temperature=0.7, top_p=0.8, top_k=100, repetition_penalty=1.02)
    return ChatDefaults("MiniCPM-o 4.5 chat() (modeling_minicpmo.py)", s, s, enable_thinking=False, max_new_tokens=4096)


def _minicpm_v26(hf_dir: Path) -> ChatDefaults:
    """MiniCPM-V 2.6: ``MiniCPMV.chat`` of its remote code (copy: public GitHub repository
    404805854/minicpmv2.6-onnx, ``modeling_minicpmv.py``).

    * ``chat(..., max_new_tokens=2048, sampling=True, ...)``, no thinking switch;
    * with ``sampling``: temperature 0.7, top_p 0.8, top_k 100, repetition_penalty 1.05
      (do_sample).
    """
    s = Sampling(temperature=0.7, top_p=0.8, top_k=100, repetition_penalty=1.05)
    return ChatDefaults("MiniCPM-V 2.6 chat() (modeling_minicpmv.py)", s, max_new_tokens=2048)


def _minicpm_o26(hf_dir: Path) -> ChatDefaults:
    """MiniCPM-o 2.6: ``MiniCPMO.chat`` of its remote code (copy: public GitHub repository
    jack139/minicpmo-backend, ``modeling_minicpmo.py``).

    * ``chat(..., max_new_tokens=2048, sampling=True, ...)``, no thinking switch;
    * with ``sampling``: temperature 0.7, top_p 0.8, top_k 100, repetition_penalty 1.05
      (do_sample).
    """
    s = Sampling(temperature=0.7, top_p=0.8, top_k=100, repetition_penalty=1.05)
    return ChatDefaults("MiniCPM-o 2.6 chat() (modeling_minicpmo.py)", s, max_new_tokens=2048)


def _generation_config_only(hf_dir: Path) -> Optional[ChatDefaults]:
    """A checkpoint without a chat() of its own (Qwen3ForCausalLM, Qwen2ForCausalLM): what
    ``model.generate()`` does with its generation_config.json, or None when the file sets no
    sampling field (nothing is recorded then)."""
    gc = _read_generation_config(hf_dir)
    if gc is None or not any(gc.get(k) is not None for k in _GC_FIELDS):
        return None
    path = str(Path(hf_dir) / GENERATION_CONFIG)
    s = _from_generation_config(gc, _HF_DEFAULTS, path)
    notices = []
    if gc.get("do_sample") is not True:
        # generate() without do_sample is greedy search, whatever the temperature says.
        s = replace(s, temperature=0.0)
        notices.append(f"{GENERATION_CONFIG} does not set do_sample to true: recording greedy decoding (temperature 0)")
    return ChatDefaults(GENERATION_CONFIG, s, notices=notices)


# minicpm.model_type (llm.detect) -> the family's defaults.
FAMILIES: Dict[str, Callable[[Path], Optional[ChatDefaults]]] = {
    "minicpm-v-4.5": _minicpm_v45,
    "minicpm-o-4.5": _minicpm_o45,
    "minicpm-v-2.6": _minicpm_v26,
    "minicpm-o-2.6": _minicpm_o26,
    "qwen3": _generation_config_only,
    "qwen2": _generation_config_only,
}


def chat_defaults(model_type: str, hf_dir: Path) -> Tuple[Optional[ChatDefaults], List[str]]:
    """The defaults to record for a checkpoint of ``model_type`` (``minicpm.model_type``) in
    ``hf_dir`` (None when there are none: the runtime then uses its documented fallback), and
    notices for the user."""
    make = FAMILIES.get(model_type)
    notices: List[str] = []
    if make is None:
        notices.append(f"no reference chat() defaults are known for {model_type}; using its {GENERATION_CONFIG}, if any")
        make = _generation_config_only
    d = make(Path(hf_dir))
    if d is None:
        return None, notices
    _check(d.sampling, d.source)
    if d.sampling_think is not None:
        _check(d.sampling_think, d.source + " (with reasoning)")
    return d, notices + list(d.notices)


def write_chat_defaults(writer: Any, d: Optional[ChatDefaults]) -> None:
    """The minicpm.chat.* keys of ``d`` and llama.cpp's general.sampling.* (default mode)."""
    if d is None:
        return
    writer.add_string(key_name("MINICPM_CHAT_SOURCE"), d.source)
    if d.enable_thinking is not None:
        writer.add_bool(key_name("MINICPM_CHAT_ENABLE_THINKING"), d.enable_thinking)
    if d.max_new_tokens is not None:
        writer.add_uint32(key_name("MINICPM_CHAT_MAX_NEW_TOKENS"), d.max_new_tokens)
    s = d.sampling
    writer.add_float32(key_name("MINICPM_CHAT_TEMP"), s.temperature)
    writer.add_int32(key_name("MINICPM_CHAT_TOP_K"), s.top_k)
    writer.add_float32(key_name("MINICPM_CHAT_TOP_P"), s.top_p)
    writer.add_float32(key_name("MINICPM_CHAT_MIN_P"), s.min_p)
    writer.add_float32(key_name("MINICPM_CHAT_PENALTY_REPEAT"), s.repetition_penalty)
    t = d.sampling_think
    if t is not None:
        writer.add_float32(key_name("MINICPM_CHAT_THINK_TEMP"), t.temperature)
        writer.add_int32(key_name("MINICPM_CHAT_THINK_TOP_K"), t.top_k)
        writer.add_float32(key_name("MINICPM_CHAT_THINK_TOP_P"), t.top_p)
        writer.add_float32(key_name("MINICPM_CHAT_THINK_MIN_P"), t.min_p)
        writer.add_float32(key_name("MINICPM_CHAT_THINK_PENALTY_REPEAT"), t.repetition_penalty)
    writer.add_float32(key_name("GENERAL_SAMPLING_TEMP"), s.temperature)
    writer.add_int32(key_name("GENERAL_SAMPLING_TOP_K"), s.top_k)
    writer.add_float32(key_name("GENERAL_SAMPLING_TOP_P"), s.top_p)
    writer.add_float32(key_name("GENERAL_SAMPLING_MIN_P"), s.min_p)
    writer.add_float32(key_name("GENERAL_SAMPLING_PENALTY_REPEAT"), s.repetition_penalty)
