"""Rewrite a GGUF file with changes, to make broken models for the bad-input tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

import gguf


def rewrite(
    src: Path,
    dst: Path,
    *,
    drop_tensors: Iterable[str] = (),
    replace_tensors: Optional[Dict[str, np.ndarray]] = None,
    drop_keys: Iterable[str] = (),
    set_keys: Optional[Dict[str, Tuple[Any, gguf.GGUFValueType]]] = None,
) -> Path:
    """Copy ``src`` to ``dst``, dropping/replacing tensors and metadata keys.

    ``set_keys`` maps a key to ``(value, type)``; for arrays pass ``(list, GGUFValueType.ARRAY)``
    and the element type is taken from the list (strings or ints).
    """
    drop_tensors = set(drop_tensors)
    drop_keys = set(drop_keys)
    replace_tensors = replace_tensors or {}
    set_keys = dict(set_keys or {})
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        if name in set_keys:
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for name, (value, vtype) in set_keys.items():
        if name == "general.architecture":
            # the writer wrote it from `arch`; rewrite through a fresh writer field
            writer.kv_data[0].pop(name, None)
        sub = None
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType.STRING if value and isinstance(value[0], str) else gguf.GGUFValueType.INT32
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name in drop_tensors:
            continue
        if t.name in replace_tensors:
            writer.add_tensor(t.name, replace_tensors[t.name])
            continue
        data = np.array(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
