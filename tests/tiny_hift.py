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


# ---- the streaming vocoder: CosyVoice3 CausalHiFTGenerator (assets/token2wav/hift.pt + config.yaml)

TINY_CVOC = {"base_channels": 32, "f0_channels": 16}

# config.yaml as the release lays it out (hyperpyyaml tags resolved by Token2wav's loader), at
# tiny widths; the released structure otherwise.
CVOC_CONFIG = """\
sample_rate: 24000
hift: !new:cosyvoice.hifigan.generator.CausalHiFTGenerator
    in_channels: 80
    base_channels: {base}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    conv_pre_look_right: 4
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {cond}
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
"""


def build_causal_reference(seed: int = 0, base_channels: int = 32, f0_channels: int = 16):
    """The reference CausalHiFTGenerator at tiny widths, random weights, eval mode, CPU, F32."""
    from stepaudio2.causal_vocoder.f0_predictor import CausalConvRNNF0Predictor
    from stepaudio2.causal_vocoder.generator import CausalHiFTGenerator

    torch.manual_seed(seed)
    m = CausalHiFTGenerator(
        in_channels=80, base_channels=base_channels, nb_harmonics=8, sampling_rate=24000, nsf_alpha=0.1,
        nsf_sigma=0.003, nsf_voiced_threshold=10, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
        istft_params={"n_fft": 16, "hop_len": 4}, resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, source_resblock_kernel_sizes=[7, 7, 11],
        source_resblock_dilation_sizes=[[1, 3, 5]] * 3, lrelu_slope=0.1, audio_limit=0.99, conv_pre_look_right=4,
        f0_predictor=CausalConvRNNF0Predictor(num_class=1, in_channels=80, cond_channels=f0_channels))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("original0"):
                p.copy_(0.2 + 0.6 * torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
        cls = m.f0_predictor.classifier
        cls.weight.mul_(1500.0)
        cls.bias.fill_(60.0)
    return m.eval()


def add_causal_hift(ckpt_dir: PathLike, seed: int = 0, **sizes):
    """Put a tiny ``assets/token2wav/hift.pt`` + ``config.yaml`` into a checkpoint; returns the
    reference model (its weights as saved)."""
    kw = dict(TINY_CVOC)
    kw.update(sizes)
    model = build_causal_reference(seed, **kw)
    d = Path(ckpt_dir) / "assets" / "token2wav"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, str(d / "hift.pt"))
    (d / "config.yaml").write_text(CVOC_CONFIG.format(base=kw["base_channels"], cond=kw["f0_channels"]))
    return model
