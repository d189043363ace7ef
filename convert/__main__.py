"""``python -m minicpm_cpp.convert``: the same command as ``minicpm-convert``."""

import sys

from .hf_to_gguf import main

sys.exit(main())
