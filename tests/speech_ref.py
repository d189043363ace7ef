"""Import the speech reference packages (minicpmo-utils' ``stepaudio2``, ``s3tokenizer``) on CPU.

Both import ``torchaudio`` at module level, and the torchaudio that pip resolves for them has a
compiled library built for another torch. The reference code needs only
``torchaudio.compliance.kaldi`` (pure Python on top of torch), so a stand-in package holding that
one module, loaded from the installed torchaudio's source file, is put in ``sys.modules`` before
the references are imported. Nothing here is used by the runtime.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _install_torchaudio_stub() -> None:
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401  (a working install wins)
        return
    except Exception:
        for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("torchaudio")
    root = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    ta = types.ModuleType("torchaudio")
    ta.__path__ = []
    comp = types.ModuleType("torchaudio.compliance")
    comp.__path__ = []
    ta.compliance = comp
    sys.modules["torchaudio"] = ta
    sys.modules["torchaudio.compliance"] = comp
    if root is not None and (root / "compliance" / "kaldi.py").is_file():
        kspec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", root / "compliance" / "kaldi.py")
        kaldi = importlib.util.module_from_spec(kspec)
        sys.modules["torchaudio.compliance.kaldi"] = kaldi
        kspec.loader.exec_module(kaldi)
        comp.kaldi = kaldi


_install_torchaudio_stub()

import stepaudio2  # noqa: E402,F401
import s3tokenizer  # noqa: E402,F401
