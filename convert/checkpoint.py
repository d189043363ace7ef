"""Reading a Hugging Face checkpoint directory lazily, tensor by tensor.

Safetensors files are parsed here directly (an 8-byte header length, a JSON header, then the
raw data) and memory-mapped, so only the rows being converted are ever resident: an 8B
checkpoint converts in bounded memory, and BF16 (which numpy lacks) is widened to float32
by a bit shift. ``pytorch_model.bin`` checkpoints are read through ``torch.load(mmap=True)``
when torch is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["ConvertError", "Checkpoint", "load_config", "open_checkpoint", "WEIGHT_FILES"]


class ConvertError(Exception):
    """A checkpoint that cannot be converted; the message says what, where and why."""


# numpy storage type of each safetensors dtype; BF16 is kept as raw uint16 bits.
_ST_DTYPES: Dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

# Where the weights may be, in order of preference.
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def load_config(hf_dir: Path) -> Dict[str, Any]:
    """Validate the checkpoint directory and return its parsed config.json."""
    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise ConvertError(f"model directory not found: {hf_dir}")
    if not hf_dir.is_dir():
        raise ConvertError(f"not a directory: {hf_dir} (give the Hugging Face checkpoint directory)")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConvertError(f"config.json not found in {hf_dir}: is this a Hugging Face checkpoint directory?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot parse {path}: {e}") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: expected a JSON object at the top level")
    return config


def _to_f32(raw: np.ndarray, dtype: str, name: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in _FLOAT_DTYPES:
        return raw.astype(np.float32)
    raise ConvertError(f"tensor {name} has dtype {dtype}; supported weight dtypes: {', '.join(_FLOAT_DTYPES)}")


class _SafetensorsFile:
    """One .safetensors file: the header parsed up front, the data mapped on first read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConvertError(f"{path}: not a safetensors file (too short)")
                n = int.from_bytes(head, "little")
                if n <= 1 or 8 + n > size:
                    raise ConvertError(f"{path}: not a safetensors file (header length {n}, file size {size})")
                header = json.loads(f.read(n))
        except OSError as e:
            raise ConvertError(f"cannot read {path}: {e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: corrupt safetensors header (not a JSON object)")
        self.data_start = 8 + n
        self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = str(meta["dtype"])
                shape = tuple(int(d) for d in meta["shape"])
                begin, end = (int(x) for x in meta["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ConvertError(f"{path}: corrupt header entry for tensor {name}") from None
            if not 0 <= begin <= end or self.data_start + end > size:
                raise ConvertError(f"{path}: tensor {name} lies outside the file (truncated download?)")
            np_dtype = _ST_DTYPES.get(dtype)
            if np_dtype is not None:
                expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
                if expected != end - begin:
                    raise ConvertError(
                        f"{path}: tensor {name} has {end - begin} bytes, expected {expected} for {dtype}{list(shape)}"
                    )
            self.entries[name] = (dtype, shape, begin, end)
        self._map: Optional[np.memmap] = None

    def raw(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        np_dtype = _ST_DTYPES.get(dtype)
        if np_dtype is None:
            raise ConvertError(f"tensor {name} in {self.path.name} has unsupported dtype {dtype}")
        if begin == end:
            return np.zeros(shape, dtype=np_dtype)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = self._map[self.data_start + begin : self.data_start + end]
        return buf.view(np_dtype).reshape(shape)

    def close(self) -> None:
        self._map = None


_TORCH_DTYPES = {
    "torch.float64": "F64",
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


class _TorchFile:
    """One pytorch_model.bin file, memory-mapped through torch.load."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import torch
        except ImportError:
            raise ConvertError(
                f"{path.name} is a PyTorch pickle and reading it needs torch; install torch, "
                "or give a checkpoint in safetensors format"
            ) from None
        self._torch = torch
        try:
            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises many types for bad or legacy files
            raise ConvertError(f"cannot read {path}: {e}") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{path}: expected a state dict, got {type(state).__name__}")
        self.tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {
            k: (_TORCH_DTYPES.get(str(v.dtype), str(v.dtype)), tuple(v.shape), 0, 0) for k, v in self.tensors.items()
        }

    def raw(self, name: str) -> np.ndarray:
        t = self.tensors[name].detach().contiguous()
        if t.dtype == self._torch.bfloat16:
            return t.view(self._torch.int16).numpy().view(np.uint16)
        try:
            return t.numpy()
        except TypeError as e:
            raise ConvertError(f"tensor {name} in {self.path.name}: {e}") from None

    def close(self) -> None:
        self.tensors = {}


class Checkpoint:
    """The weights of a checkpoint directory: names, shapes and dtypes up front, data on demand."""

    def __init__(self, hf_dir: Path, where: Dict[str, Any], description: str):
        self.dir = hf_dir
        self._where = where  # name -> file object holding it
        self.description = description

    def names(self) -> List[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _entry(self, name: str):
        try:
            f = self._where[name]
        except KeyError:
            raise ConvertError(f"{name} not found in checkpoint {self.dir}") from None
        return f, f.entries[name]

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._entry(name)[1][1]

    def dtype(self, name: str) -> str:
        return self._entry(name)[1][0]

    def file_of(self, name: str) -> Path:
        return self._entry(name)[0].path

    def read(self, name: str, start: Optional[int] = None, stop: Optional[int] = None) -> np.ndarray:
        """The tensor (or rows start:stop of its first dimension) as a new float32 array."""
        f, (dtype, shape, _, _) = self._entry(name)
        if dtype not in _FLOAT_DTYPES:
            raise ConvertError(f"tensor {name} has dtype {dtype}; supported weight dtypes: {', '.join(_FLOAT_DTYPES)}")
        raw = f.raw(name)
        if start is not None or stop is not None:
            raw = raw[start:stop]
        return _to_f32(raw, dtype, name)

    def close(self) -> None:
        for f in {id(f): f for f in self._where.values()}.values():
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_index(path: Path) -> Dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot parse {path}: {e}") from None
    except (KeyError, TypeError):
        raise ConvertError(f"{path}: no \"weight_map\" object") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError(f"{path}: \"weight_map\" is empty or not an object")
    return {str(k): str(v) for k, v in weight_map.items()}


def open_checkpoint(hf_dir: Path) -> Checkpoint:
    """Find the weight files of ``hf_dir`` (single or sharded) and read their headers."""
    hf_dir = Path(hf_dir)
    present = [name for name in WEIGHT_FILES if (hf_dir / name).is_file()]
    if not present:
        others = sorted(p.name for p in hf_dir.glob("*.safetensors")) + sorted(p.name for p in hf_dir.glob("*.bin"))
        found = f" (found only: {', '.join(others[:5])})" if others else ""
        raise ConvertError(
            f"no weights in {hf_dir}: expected model.safetensors or model.safetensors.index.json"
            f" (or pytorch_model.bin){found}"
        )
    first = present[0]
    opener = _SafetensorsFile if "safetensors" in first else _TorchFile
    where: Dict[str, Any] = {}
    if first.endswith(".index.json"):
        index_path = hf_dir / first
        weight_map = _read_index(index_path)
        files: Dict[str, Any] = {}
        for shard in dict.fromkeys(weight_map.values()):
            shard_path = hf_dir / shard
            if not shard_path.is_file():
                raise ConvertError(f"{index_path.name} points to a missing shard: {shard} (not in {hf_dir})")
            files[shard] = opener(shard_path)
        for name, shard in weight_map.items():
            f = files[shard]
            if name not in f.entries:
                raise ConvertError(f"{index_path.name} lists {name} in {shard}, but that shard does not contain it")
            where[name] = f
        description = f"{first} ({len(files)} shards)"
    else:
        f = opener(hf_dir / first)
        where = {name: f for name in f.entries}
        description = first
    return Checkpoint(hf_dir, where, description)
