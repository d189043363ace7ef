"""Hugging Face checkpoint -> GGUF conversion for minicpm.cpp.

Command line: ``minicpm-convert MODEL_DIR -o model.gguf`` or ``python -m minicpm_cpp.convert``.
From Python::

    from minicpm_cpp.convert import convert
    convert("MiniCPM-V-4_5", "minicpm-v-4_5-f16.gguf", outtype="f16")
"""

from .checkpoint import ConvertError
from .hf_to_gguf import convert, main

__all__ = ["convert", "main", "ConvertError"]
