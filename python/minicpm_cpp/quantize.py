"""``python -m minicpm_cpp.quantize``: the same command as ``minicpm-quantize``.

The tool lives in :mod:`minicpm_cpp.convert.quantize`; from Python::

    from minicpm_cpp.quantize import quantize
    quantize("model-f16.gguf", "model-q4_k_m.gguf", "Q4_K_M")
"""

import sys

from .convert.quantize import QUANT_TYPES, QuantizeResult, main, plan_types, quantize

__all__ = ["quantize", "plan_types", "QUANT_TYPES", "QuantizeResult", "main"]

if __name__ == "__main__":
    sys.exit(main())
