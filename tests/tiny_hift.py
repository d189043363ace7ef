"""A tiny original HiFT (the Token2Wav vocoder of MiniCPM-o 4.5) for tests.

The reference class (minicpmo-utils 1.0.7 ``HiFTGenerator``) at small widths, with the released
structure otherwise (80 mel bins, 8 harmonics, rates 8/5/3, kernels, dilations, iSTFT 16/4,
24 kHz). Weights are random, saved like ``assets/token2wav/hift_original.pt``: a state dict with
a ``generator.`` key prefix (stripped by ``Token2wav._get_original_vocoder``) and the
parametrized weight norms of current torch (``parametrizations.weight.original0/1``), or the
older ``weight_g``/``weight_v`` names with ``legacy_norm``.

The F0 predictor's classifier is scaled so that F0 spreads over roughly 0-250 Hz, frames on both sides of the threshold: random weights
of that size would give F0 below the 10 Hz voiced threshold everywhere, and the sine source
would never be tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import speech_ref  # noqa: F401  (imports the reference packages on CPU)
import torch

PathLike = Union[str, Path]

TINY_HIFT = {"base_channels": 32, "f0_channels": 16}


def build_reference(seed: int = 0, base_channels: int = 32, f0_channels: int = 16):
    """The reference HiFTGenerator at tiny widths, random weights, eval mode, CPU, F32."""
    from stepaudio2.flashcosyvoice.modules.hifigan import ConvRNNF0Predictor, HiFTGenerator

    torch.manual_seed(seed)
    m = HiFTGenerator(base_channels=base_channels, f0_predictor=ConvRNNF0Predictor(cond_channels=f0_channels))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))           # Snake alpha in [0.5, 1.5)
            elif name.endswith("original0"):                               # weight-norm magnitudes
                p.copy_(0.2 + 0.6 * torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
        cls = m.f0_predictor.classifier
        cls.weight.mul_(1500.0)
        cls.bias.fill_(60.0)
    return m.eval()


def save_like_release(model, path: PathLike, legacy_norm: bool = False) -> Path:
    """Write ``model``'s state dict as ``hift_original.pt`` is: ``generator.`` prefix."""
    state: Dict[str, Any] = {}
    for k, v in model.state_dict().items():
        if legacy_norm:
            k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                   "weight_v")
        state["generator." + k] = v.detach().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return path


def add_hift(ckpt_dir: PathLike, seed: int = 0, legacy_norm: bool = False, **sizes):
    """Put a tiny ``assets/token2wav/hift_original.pt`` into a tiny o4.5 checkpoint; returns the
    reference model."""
    kw = dict(TINY_HIFT)
    kw.update(sizes)
    model = build_reference(seed, **kw)
    save_like_release(model, Path(ckpt_dir) / "assets" / "token2wav" / "hift_original.pt", legacy_norm)
    return model
