"""Checks of the arguments the Python API passes to the native core: types, ranges and text
that the bindings would otherwise reject with a bare TypeError, OverflowError or hang on
(thread counts). Every refusal is an :class:`~minicpm_cpp.errors.InvalidArgumentError`."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ._files import check_path_text as _check_path_text
from .errors import InvalidArgumentError


def _str_arg(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a str, got {type(value).__name__}")
    return _check_text(value, name)


def _bool_arg(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_path(path: Union[str, os.PathLike], what: str = "model path") -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a str or os.PathLike, got {type(path).__name__}") from None
    if not isinstance(p, str):
        raise InvalidArgumentError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    _check_path_text(p, what)
    _check_text(p, what)
    return p


def _check_text(text: str, what: str) -> str:
    """Text the core takes must be valid Unicode (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None
    return text


# CPU threads: at most 4 x the cores (more only oversubscribes; 10^5 threads hang the first graph).
MAX_THREADS = 4 * (os.cpu_count() or 4)


def _threads(value: Any, name: str = "n_threads") -> int:
    n = _count(value, name)
    if n > MAX_THREADS:
        raise InvalidArgumentError(f"{name} must be <= {MAX_THREADS} (4 x the {MAX_THREADS // 4} cores of this "
                                   f"machine), got {n}")
    return n


def _seed_arg(value: Any, name: str = "seed", bits: int = 64) -> int:
    """A generator seed: an integer in [0, 2**bits) (numpy integers too, bools not)."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < 2**bits:
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")
    return int(value)


def _opt_bool(value: Any, name: str) -> Optional[bool]:
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be True, False or None, got {value!r}")
    return bool(value)


def _count(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _max_slices(max_slice_nums: Optional[int]) -> int:
    if max_slice_nums is None:
        return 0
    n = _count(max_slice_nums, "max_slice_nums", 1)
    if n > 1024:
        raise InvalidArgumentError(f"max_slice_nums must be <= 1024, got {n}")
    return n


def _small_count(value: Any, name: str) -> int:
    n = _count(value, name)
    if n >= 2**31:
        raise InvalidArgumentError(f"{name} must be < 2**31, got {n}")
    return n


_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty", "repeat_last_n")


def _sampling(kw: Dict[str, Any]) -> Dict[str, Any]:
    """Sampling overrides; None (or absent) takes the model's default."""
    p: Dict[str, Any] = {}
    for k, v in kw.items():
        if k not in _SAMPLING_KEYS:
            raise InvalidArgumentError(f"unknown sampling parameter {k!r} (known: {', '.join(_SAMPLING_KEYS)})")
        if v is None:
            continue
        if k in ("top_k", "repeat_last_n"):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidArgumentError(f"{k} must be an int, got {v!r}")
            if not -(2**31) <= int(v) < 2**31:
                raise InvalidArgumentError(f"{k} is out of range: {v!r}")
            p[k] = int(v)
        else:
            try:
                p[k] = float(v)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{k} must be a number, got {v!r}") from None
    return p


def _max_tokens(value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"max_tokens must be an int or None, got {type(value).__name__}")
    if value < -1:
        raise InvalidArgumentError(f"max_tokens must be >= 0, or -1 for no limit, got {value}")
    return int(min(value, 2**31 - 1))


def _stops(stop: Optional[Union[str, Sequence[str]]]) -> List[str]:
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not isinstance(stop, (list, tuple)):
        raise InvalidArgumentError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    stops = list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise InvalidArgumentError("stop must be a string or a list of strings")
    return [_check_text(s, "stop string") for s in stops]
