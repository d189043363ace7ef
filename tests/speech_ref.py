"""Import the speech reference packages (minicpmo-utils' ``stepaudio2``, ``s3tokenizer``) on CPU.

Both import ``torchaudio`` at module level, and the torchaudio that pip resolves for them has a
compiled library built for another torch. The reference code needs only
``torchaudio.compliance.kaldi`` (pure Python on top of torch), so a stand-in package holding that
one module is put in ``sys.modules`` before the references are imported. torchaudio must not be
installed in the test environment (transformers imports it and fails on the mismatch); the
README's test command unpacks it with ``pip install --no-deps --target tests/.ref``, and the
Kaldi module's source file is loaded from there. Nothing here is used by the runtime.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def _install_torchaudio_stub() -> None:
    if "torchaudio" in sys.modules:
        return
    root = Path(__file__).resolve().parent / ".ref" / "torchaudio"
    ta = types.ModuleType("torchaudio")
    ta.__path__ = []
    ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None, is_package=True)
    comp = types.ModuleType("torchaudio.compliance")
    comp.__path__ = []
    comp.__spec__ = importlib.machinery.ModuleSpec("torchaudio.compliance", None, is_package=True)
    ta.compliance = comp
    sys.modules["torchaudio"] = ta
    sys.modules["torchaudio.compliance"] = comp
    if (root / "compliance" / "kaldi.py").is_file():
        kspec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", root / "compliance" / "kaldi.py")
        kaldi = importlib.util.module_from_spec(kspec)
        sys.modules["torchaudio.compliance.kaldi"] = kaldi
        kspec.loader.exec_module(kaldi)
        comp.kaldi = kaldi


_install_torchaudio_stub()


def _install_librosa_stub() -> None:
    """stepaudio2's mel module imports librosa.filters at import time; where librosa is absent
    (a bare benchmark machine) a stand-in that refuses to be called keeps the other modules
    importable. The test environment has librosa: this does nothing there."""
    try:
        import librosa.filters  # noqa: F401
        return
    except Exception:
        pass

    def mel(*args, **kwargs):
        raise RuntimeError("librosa is not installed")

    lib = types.ModuleType("librosa")
    lib.__path__ = []
    lib.__spec__ = importlib.machinery.ModuleSpec("librosa", None, is_package=True)
    filt = types.ModuleType("librosa.filters")
    filt.mel = mel
    lib.filters = filt
    sys.modules["librosa"] = lib
    sys.modules["librosa.filters"] = filt


_stubbed_librosa = "librosa" not in sys.modules
_install_librosa_stub()


def kaldi():
    """torchaudio.compliance.kaldi (the reference fbank), or a clear failure if not unpacked."""
    mod = sys.modules.get("torchaudio.compliance.kaldi")
    if mod is None:
        raise RuntimeError("torchaudio's Kaldi module is missing: run "
                           "`pip install --no-deps --target tests/.ref torchaudio==2.11.1`")
    return mod

import stepaudio2  # noqa: E402,F401
import stepaudio2.flashcosyvoice.utils.audio  # noqa: E402,F401  (the module that reads librosa.filters)
import s3tokenizer  # noqa: E402,F401

if _stubbed_librosa and getattr(sys.modules.get("librosa"), "__file__", None) is None:
    # The stand-in served stepaudio2's import only: transformers must not find it.
    sys.modules.pop("librosa", None)
    sys.modules.pop("librosa.filters", None)
