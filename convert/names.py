"""The GGUF tensor and metadata names, read from the one table shared with the C++ runtime.

The table is ``csrc/model/names.def``: lines ``MINICPM_TENSOR(ID, "pattern")`` and
``MINICPM_KEY(ID, "pattern")``. In a pattern, ``%d`` stands for the layer index and ``%s``
for the value of ``general.architecture``. The installed package carries the file as
``minicpm_cpp/names.def``; in a source tree it is found relative to this file.

The converter never spells a GGUF name itself: it asks :func:`tensor_name` and
:func:`key_name` by ID, so a renamed entry in the table changes both sides at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["TENSORS", "KEYS", "COMPONENTS", "TABLE_PATH", "tensor_name", "key_name", "tensor_component", "parse_table"]

# One entry per line; comments and the #define fallbacks do not match.
_ENTRY = re.compile(r'^\s*MINICPM_(TENSOR|KEY|COMPONENT)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,\s*"([^"]*)"\s*\)')


def _locate_table() -> Path:
    # Installed: this module is <pkg>.convert.names and the table is <pkg>/names.def.
    parent = (__package__ or "").rpartition(".")[0]
    if parent:
        try:
            from importlib import resources

            candidate = resources.files(parent) / "names.def"
            if candidate.is_file():
                return Path(str(candidate))
        except (ImportError, TypeError, AttributeError, OSError):
            pass
    # Source tree: <repo>/convert/names.py -> <repo>/csrc/model/names.def
    candidate = Path(__file__).resolve().parent.parent / "csrc" / "model" / "names.def"
    if candidate.is_file():
        return candidate
    raise RuntimeError(
        "minicpm_cpp: cannot find the name table names.def (neither installed as package data "
        f"nor at {candidate}); reinstall the package"
    )


def parse_table(
    text: str, origin: str = "names.def"
) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """Parse the text of names.def into (tensors, keys, components): ID -> pattern for the first
    two, tensor-ID prefix -> component kind for the third. Every tensor ID must start with a
    component prefix followed by an underscore."""
    tables: Dict[str, Dict[str, str]] = {"TENSOR": {}, "KEY": {}, "COMPONENT": {}}
    lines: Dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _ENTRY.match(line)
        if m is None:
            continue
        kind, ident, pattern = m.groups()
        table = tables[kind]
        if ident in table:
            raise RuntimeError(f"{origin}:{lineno}: duplicate {kind.lower()} id {ident}")
        table[ident] = pattern
        lines[ident] = lineno
    prefixes = tables["COMPONENT"]
    for ident in tables["TENSOR"]:
        if ident.split("_", 1)[0] not in prefixes:
            raise RuntimeError(
                f"{origin}:{lines[ident]}: tensor id {ident} does not start with a component prefix "
                f"({', '.join(p + '_' for p in prefixes)})"
            )
    return tables["TENSOR"], tables["KEY"], prefixes


TABLE_PATH: Path = _locate_table()
TENSORS, KEYS, COMPONENTS = parse_table(TABLE_PATH.read_text(encoding="utf-8"), str(TABLE_PATH))


def tensor_component(ident: str) -> str:
    """The component kind ("llm", "vision", ...) that owns tensor ``ident``."""
    _lookup(TENSORS, "tensor", ident)
    return COMPONENTS[ident.split("_", 1)[0]]


def _lookup(table: Dict[str, str], kind: str, ident: str) -> str:
    try:
        return table[ident]
    except KeyError:
        raise KeyError(f"{kind} id {ident!r} is not in the name table {TABLE_PATH}") from None


def tensor_name(ident: str, layer: Optional[int] = None) -> str:
    """The GGUF tensor name for ``ident``, with ``layer`` substituted for ``%d``."""
    pattern = _lookup(TENSORS, "tensor", ident)
    if "%d" in pattern:
        if layer is None:
            raise ValueError(f"tensor {ident} ({pattern}) needs a layer index")
        return pattern.replace("%d", str(int(layer)), 1)
    if layer is not None:
        raise ValueError(f"tensor {ident} ({pattern}) takes no layer index")
    return pattern


def key_name(ident: str, arch: Optional[str] = None) -> str:
    """The GGUF metadata key for ``ident``, with ``arch`` substituted for ``%s``."""
    pattern = _lookup(KEYS, "key", ident)
    if "%s" in pattern:
        if not arch:
            raise ValueError(f"key {ident} ({pattern}) needs the architecture name")
        return pattern.replace("%s", arch, 1)
    return pattern
