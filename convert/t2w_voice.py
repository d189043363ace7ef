"""Voice-cloning inputs of MiniCPM-o 4.5: the two ONNX models of ``assets/token2wav``.

* ``speech_tokenizer_v2_25hz.onnx``: S3Tokenizer v2 (reference voice -> prompt speech tokens).
  Its ONNX initializers are named the way ``s3tokenizer.utils.onnx2torch`` names them (the
  package's own conversion, which ``S3TokenizerV2.init_from_onnx`` loads with ``strict=True``):
  four fixed initializer names for the convolutions and the FSQ projection, LayerNormalization
  nodes by their node name (``/blocks.N/attn_ln/LayerNormalization`` -> ``blocks.N.attn_ln``),
  every other weight by the name of the node that consumes it (``/blocks.N/attn/query/MatMul``
  -> ``blocks.N.attn.query.weight``), 2-D arrays transposed (ONNX MatMul holds [in, out]).
  The result is the torch state dict, written under the ``s3.*`` names of the table.
  Hyperparameters come from the shapes, except the reference's constants (``model_v2.py``):
  the rotary table is ``precompute_freqs_cis(64, 2048)`` (so the head width is 64 and
  n_head = width / 64), LayerNorm eps 1e-6 before attention and 1e-5 before the MLP, 3 FSQ
  levels, 30 s windows with 4 s overlap for longer audio.
* ``campplus.onnx``: CAM++, run by onnxruntime at voice creation; stored byte for byte as an
  I8 tensor so the model file is self-contained, with its fbank parameters
  (``torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0, sample_frequency=16000)`` in
  ``stepaudio2/token2wav.py`` ``_prepare_prompt``).

Either file may be absent: the converter then writes nothing for it (with a notice).

The default voice (what a model speaks with when the caller gives no voice): the official code
ships none (``get_sys_prompt`` and ``init_token2wav_cache`` take the recording from the caller),
so the converter makes one from a recording (``--default-voice FILE``, else the first of
``DEFAULT_VOICE_FILES`` found in the checkpoint folder) with these same encoders, exactly as
``Model.voice(FILE)`` does, and stores it as a voice file holds it (``voice.*``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from gguf import GGMLQuantizationType

from .checkpoint import ConvertError
from .names import key_name, tensor_name
from .vision import VisionTensor

__all__ = ["DEFAULT_VOICE_FILES", "find_default_voice", "make_default_voice", "plan_default_voice",
           "write_default_voice_metadata",
           "VoiceAssets", "T2W_DIR", "S3_FILE", "CAMPPLUS_FILE", "find_voice_assets", "plan_voice", "write_voice_metadata",
           "onnx_to_s3_state"]

Q = GGMLQuantizationType

T2W_DIR = Path("assets") / "token2wav"
S3_FILE = "speech_tokenizer_v2_25hz.onnx"
CAMPPLUS_FILE = "campplus.onnx"

# Recordings a checkpoint folder may hold as its default voice, in this order: the file the
# remote code's get_sys_prompt special-cases ("assets/demo.wav"), llama.cpp-omni's default
# reference audio, the official demo's default (MiniCPM-o-Demo assets/ref_audio/).
DEFAULT_VOICE_FILES = (Path("assets") / "demo.wav", Path("assets") / "default_ref_audio.wav",
                       Path("assets") / "ref_audio" / "ref_minicpm_signature.wav")

# model_v2.py constants (not in the ONNX file's shapes).
ROPE_DIM = 64  # precompute_freqs_cis(64, 1024 * 2)
ROPE_THETA = 10000.0
ROPE_MAX_POS = 2048
ATTN_LN_EPS = 1e-6  # ResidualAttentionBlock.attn_ln
FFN_LN_EPS = 1e-5  # ResidualAttentionBlock.mlp_ln (nn.LayerNorm default)
FSQ_LEVELS = 3  # FSQVectorQuantization: FSQCodebook(level=3)
SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_S = 30  # S3TokenizerV2._quantize_mixed_batch
OVERLAP_S = 4
TOKEN_RATE = 25
# _prepare_prompt's speaker features.
FBANK_BINS = 80

# s3tokenizer.utils.onnx2torch's fixed initializer names (v1_50hz, v1_25hz, v2_25hz).
_FIXED = {
    "onnx::Conv_1519": "encoder.conv1.weight",
    "encoders.conv1.weight": "encoder.conv1.weight",
    "onnx::Conv_2216": "encoder.conv1.weight",
    "onnx::Conv_1520": "encoder.conv1.bias",
    "encoders.conv1.bias": "encoder.conv1.bias",
    "onnx::Conv_2217": "encoder.conv1.bias",
    "onnx::Conv_1521": "encoder.conv2.weight",
    "encoders.conv2.weight": "encoder.conv2.weight",
    "onnx::Conv_2218": "encoder.conv2.weight",
    "onnx::Conv_1522": "encoder.conv2.bias",
    "encoders.conv2.bias": "encoder.conv2.bias",
    "onnx::Conv_2219": "encoder.conv2.bias",
    "encoders.positional_embedding": "encoder.positional_embedding",
    "quantizer.project_in.bias": "quantizer._codebook.project_down.bias",
    "onnx::MatMul_2536": "quantizer._codebook.project_down.weight",
}

# torch state-dict name -> table ID.
_GLOBAL = {
    "encoder.conv1.weight": "S3_CONV1",
    "encoder.conv1.bias": "S3_CONV1_BIAS",
    "encoder.conv2.weight": "S3_CONV2",
    "encoder.conv2.bias": "S3_CONV2_BIAS",
    "quantizer._codebook.project_down.weight": "S3_FSQ_DOWN",
    "quantizer._codebook.project_down.bias": "S3_FSQ_DOWN_BIAS",
}
_LAYER = {
    "attn_ln.weight": "S3_ATTN_NORM",
    "attn_ln.bias": "S3_ATTN_NORM_BIAS",
    "attn.query.weight": "S3_ATTN_Q",
    "attn.query.bias": "S3_ATTN_Q_BIAS",
    "attn.key.weight": "S3_ATTN_K",
    "attn.value.weight": "S3_ATTN_V",
    "attn.value.bias": "S3_ATTN_V_BIAS",
    "attn.out.weight": "S3_ATTN_OUT",
    "attn.out.bias": "S3_ATTN_OUT_BIAS",
    "attn.fsmn_block.weight": "S3_FSMN",
    "mlp_ln.weight": "S3_FFN_NORM",
    "mlp_ln.bias": "S3_FFN_NORM_BIAS",
    "mlp.0.weight": "S3_FFN_UP",
    "mlp.0.bias": "S3_FFN_UP_BIAS",
    "mlp.2.weight": "S3_FFN_DOWN",
    "mlp.2.bias": "S3_FFN_DOWN_BIAS",
}
_LAYER_RE = re.compile(r"^encoder\.blocks\.(\d+)\.(.+)$")


def _rename_block(k: str) -> str:
    """onnx2torch's rename of a block weight named after its node (``_rename_weights``)."""
    new_k = k[1:].replace("/", ".").replace("MatMul", "weight").replace("Add_1", "bias").replace("Mul", "weight")
    new_k = new_k.replace("Add", "bias").replace("mlp.mlp", "mlp").replace("fsmn_block.Conv", "fsmn_block.weight")
    return "encoder." + new_k


def onnx_to_s3_state(path: Path) -> Dict[str, np.ndarray]:
    """The S3Tokenizer state dict (torch names, torch layouts, float32) of an ONNX file."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # pragma: no cover - the convert extra
        raise ConvertError(f"{path}: reading the S3Tokenizer needs the onnx package (pip install onnx)") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError and friends
        raise ConvertError(f"{path}: not a readable ONNX model ({e})") from None
    inits = {t.name: t for t in model.graph.initializer}
    raw: Dict[str, np.ndarray] = {}

    def arr(name: str) -> np.ndarray:
        return np.array(numpy_helper.to_array(inits[name]), dtype=np.float32)

    for node in model.graph.node:
        for inp in node.input:
            if inp not in inits:
                continue
            if inp in _FIXED:
                wname = _FIXED[inp]
            elif node.op_type == "LayerNormalization":
                ln = node.name.replace("/LayerNormalization", "")
                if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
                    raise ConvertError(f"{path}: LayerNormalization {node.name} lacks its scale or bias initializer")
                raw[ln + ".weight"] = arr(node.input[1])
                raw[ln + ".bias"] = arr(node.input[2])
                continue
            else:
                wname = node.name
            a = arr(inp)
            raw[wname] = a if a.ndim > 2 or wname == "encoder.positional_embedding" else np.ascontiguousarray(a.T)
    state: Dict[str, np.ndarray] = {}
    for k, v in raw.items():
        if "quantizer" in k:
            if k == "/quantizer/rq/model/layers.0/_codebook/Pow_1":
                raise ConvertError(f"{path}: a v1 S3Tokenizer (VQ codebook); MiniCPM-o 4.5 uses v2 (FSQ)")
            if "project_down" in k:
                state[k] = v
        elif "positional_embedding" in k:
            raise ConvertError(f"{path}: a v1 S3Tokenizer (positional table); MiniCPM-o 4.5 uses v2 (rotary)")
        elif "conv" in k:
            state[k] = v
        else:
            if "blocks" not in k:
                raise ConvertError(f"{path}: initializer of node {k} is not an S3Tokenizer v2 weight")
            state[_rename_block(k)] = v
    return state


class VoiceTensor(VisionTensor):
    """A planned tensor whose data comes from the ONNX files, not the checkpoint."""


def _from_array(a: np.ndarray):
    def read(_ckpt: Any, start: Optional[int], stop: Optional[int]) -> np.ndarray:
        return a if start is None else a[start:stop]

    return read


class VoiceAssets:
    """What ``assets/token2wav`` offers: the S3 state dict and hyperparameters, the CAM++ bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.s3_path: Optional[Path] = root / S3_FILE if (root / S3_FILE).is_file() else None
        self.spk_path: Optional[Path] = root / CAMPPLUS_FILE if (root / CAMPPLUS_FILE).is_file() else None
        self.s3: Optional[Dict[str, np.ndarray]] = None
        self.hp: Dict[str, int] = {}
        self.spk_bytes: Optional[np.ndarray] = None
        self.spk_embd = 192
        self.notices: List[str] = []
        if self.s3_path is not None:
            self._read_s3(self.s3_path)
        else:
            self.notices.append(f"voice: no {S3_FILE} in {root}; the model file gets no speech tokenizer")
        if self.spk_path is not None:
            self._read_campplus(self.spk_path)
        else:
            self.notices.append(f"voice: no {CAMPPLUS_FILE} in {root}; the model file gets no speaker encoder")

    @property
    def empty(self) -> bool:
        return self.s3 is None and self.spk_bytes is None

    def _read_s3(self, path: Path) -> None:
        st = onnx_to_s3_state(path)
        for k in _GLOBAL:
            if k not in st:
                raise ConvertError(f"{path}: no {k} among the S3Tokenizer weights")
        layers = sorted({int(m.group(1)) for m in (_LAYER_RE.match(k) for k in st) if m})
        if not layers or layers != list(range(len(layers))):
            raise ConvertError(f"{path}: S3Tokenizer blocks {layers} are not numbered 0..N-1")
        conv1 = st["encoder.conv1.weight"]
        if conv1.ndim != 3 or conv1.shape[2] != 3:
            raise ConvertError(f"{path}: conv1 weight {list(conv1.shape)} is not [width, n_mels, 3]")
        width, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
        if width % ROPE_DIM:
            raise ConvertError(f"{path}: width {width} is not a multiple of the reference's 64-wide rotary heads")
        fsmn = st.get("encoder.blocks.0.attn.fsmn_block.weight")
        up = st.get("encoder.blocks.0.mlp.0.weight")
        down = st["quantizer._codebook.project_down.weight"]
        if fsmn is None or fsmn.ndim != 3 or up is None or up.ndim != 2:
            raise ConvertError(f"{path}: block 0 lacks its FSMN or MLP weights")
        self.hp = dict(n_mels=n_mels, n_state=width, n_head=width // ROPE_DIM, n_layer=len(layers),
                       n_ff=int(up.shape[0]), fsmn_kernel=int(fsmn.shape[2]), fsq_dim=int(down.shape[0]))
        expected = {"encoder.conv1.bias": (width,), "encoder.conv2.weight": (width, width, 3),
                    "encoder.conv2.bias": (width,), "quantizer._codebook.project_down.weight": (self.hp["fsq_dim"], width),
                    "quantizer._codebook.project_down.bias": (self.hp["fsq_dim"],)}
        ff, kk = self.hp["n_ff"], self.hp["fsmn_kernel"]
        shapes = {"attn.query.weight": (width, width), "attn.key.weight": (width, width),
                  "attn.value.weight": (width, width), "attn.out.weight": (width, width),
                  "attn.fsmn_block.weight": (width, 1, kk), "mlp.0.weight": (ff, width), "mlp.0.bias": (ff,),
                  "mlp.2.weight": (width, ff)}
        for il in layers:
            for suffix in _LAYER:
                expected[f"encoder.blocks.{il}.{suffix}"] = shapes.get(suffix, (width,))
        for k, shape in expected.items():
            if k not in st:
                raise ConvertError(f"{path}: no {k} among the S3Tokenizer weights")
            if tuple(st[k].shape) != shape:
                raise ConvertError(f"{path}: {k} has shape {list(st[k].shape)}, expected {list(shape)}")
        extra = sorted(set(st) - set(expected) - set(_GLOBAL))
        if extra:
            raise ConvertError(f"{path}: unexpected S3Tokenizer weights {extra[:5]}")
        self.s3 = st

    def _read_campplus(self, path: Path) -> None:
        data = np.fromfile(str(path), dtype=np.uint8)
        if data.size == 0:
            raise ConvertError(f"{path}: empty file")
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            outs = model.graph.output
            if outs:
                dims = [d.dim_value for d in outs[0].type.tensor_type.shape.dim]
                if dims and dims[-1] > 0:
                    self.spk_embd = int(dims[-1])
        except ImportError:  # pragma: no cover
            pass
        except Exception as e:
            raise ConvertError(f"{path}: not a readable ONNX model ({e})") from None
        self.spk_bytes = data.view(np.int8)

    def plan(self, weight_type: GGMLQuantizationType) -> List[VoiceTensor]:
        """The tensors in GGUF order: S3 matrices in ``weight_type`` (F32 or F16), convolution
        kernels F16 unless F32 is asked, 1-D tensors F32; CAM++ bytes as I8."""
        out: List[VoiceTensor] = []
        if self.s3 is not None:
            wt = Q.F32 if weight_type == Q.F32 else Q.F16
            for k, a in self.s3.items():
                m = _LAYER_RE.match(k)
                tid = _LAYER[m.group(2)] if m else _GLOBAL[k]
                layer = int(m.group(1)) if m else None
                # Kernels, FSMN taps and the FSQ projection (its rounding decides the tokens) stay F32.
                qt = wt if a.ndim == 2 and tid not in ("S3_FSQ_DOWN",) else Q.F32
                out.append(VoiceTensor(tid, tensor_name(tid, layer), f"{S3_FILE}:{k}", tuple(a.shape), qtype=qt,
                                       source=_from_array(a)))
        if self.spk_bytes is not None:
            out.append(VoiceTensor("SPK_ONNX", tensor_name("SPK_ONNX"), CAMPPLUS_FILE, (int(self.spk_bytes.size),),
                                   qtype=Q.I8, source=_from_array(self.spk_bytes)))
        return out


def find_voice_assets(hf_dir: Path) -> Optional[VoiceAssets]:
    """The voice assets of a checkpoint, or None when it has no ``assets/token2wav`` with either file."""
    root = Path(hf_dir) / T2W_DIR
    if not (root / S3_FILE).is_file() and not (root / CAMPPLUS_FILE).is_file():
        return None
    return VoiceAssets(root)


def plan_voice(assets: VoiceAssets, weight_type: GGMLQuantizationType) -> Tuple[List[VoiceTensor], List[str]]:
    return assets.plan(weight_type), list(assets.notices)


def write_voice_metadata(writer: Any, assets: VoiceAssets) -> None:
    if assets.s3 is not None:
        hp = assets.hp
        writer.add_uint32(key_name("MINICPM_S3_N_MELS"), hp["n_mels"])
        writer.add_uint32(key_name("MINICPM_S3_N_STATE"), hp["n_state"])
        writer.add_uint32(key_name("MINICPM_S3_N_HEAD"), hp["n_head"])
        writer.add_uint32(key_name("MINICPM_S3_N_LAYER"), hp["n_layer"])
        writer.add_uint32(key_name("MINICPM_S3_N_FF"), hp["n_ff"])
        writer.add_uint32(key_name("MINICPM_S3_FSMN_KERNEL"), hp["fsmn_kernel"])
        writer.add_float32(key_name("MINICPM_S3_ATTN_LN_EPS"), ATTN_LN_EPS)
        writer.add_float32(key_name("MINICPM_S3_FFN_LN_EPS"), FFN_LN_EPS)
        writer.add_uint32(key_name("MINICPM_S3_ROPE_DIM"), ROPE_DIM)
        writer.add_float32(key_name("MINICPM_S3_ROPE_THETA"), ROPE_THETA)
        writer.add_uint32(key_name("MINICPM_S3_ROPE_MAX_POS"), ROPE_MAX_POS)
        writer.add_uint32(key_name("MINICPM_S3_FSQ_LEVELS"), FSQ_LEVELS)
        writer.add_uint32(key_name("MINICPM_S3_FSQ_DIM"), hp["fsq_dim"])
        writer.add_uint32(key_name("MINICPM_S3_SAMPLE_RATE"), SAMPLE_RATE)
        writer.add_uint32(key_name("MINICPM_S3_N_FFT"), N_FFT)
        writer.add_uint32(key_name("MINICPM_S3_HOP"), HOP)
        writer.add_uint32(key_name("MINICPM_S3_WINDOW_S"), WINDOW_S)
        writer.add_uint32(key_name("MINICPM_S3_OVERLAP_S"), OVERLAP_S)
        writer.add_uint32(key_name("MINICPM_S3_TOKEN_RATE"), TOKEN_RATE)
    if assets.spk_bytes is not None:
        writer.add_uint32(key_name("MINICPM_SPK_FBANK_BINS"), FBANK_BINS)
        writer.add_uint32(key_name("MINICPM_SPK_SAMPLE_RATE"), SAMPLE_RATE)
        writer.add_uint32(key_name("MINICPM_SPK_EMBD_DIM"), assets.spk_embd)


def write_voice_gguf(root: Path, out: Path, weight_type: GGMLQuantizationType = Q.F32) -> Path:
    """The voice encoders of an ``assets/token2wav`` folder alone, in a GGUF of their own (a
    model's extra file; the converter puts them into the main file)."""
    from gguf import GGUFWriter

    from .quant import encode_rows, tensor_bytes

    assets = VoiceAssets(Path(root))
    if assets.empty:
        raise ConvertError(f"{root}: neither {S3_FILE} nor {CAMPPLUS_FILE}")
    plan = assets.plan(weight_type)
    writer = GGUFWriter(str(out), "minicpm-voice-encoders")
    try:
        write_voice_metadata(writer, assets)
        for p in plan:
            data = encode_rows(p.qtype, p.read_rows(None, None, None))
            assert data.nbytes == tensor_bytes(p.qtype, p.shape)
            writer.add_tensor(p.gguf_name, data, raw_shape=p.shape, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Path(out)


def find_default_voice(hf_dir: Path, given: Optional[Path] = None) -> Optional[Path]:
    """The default voice's recording: ``given`` (which must exist), else the first of
    DEFAULT_VOICE_FILES in the checkpoint folder, else None."""
    if given is not None:
        if not Path(given).is_file():
            raise ConvertError(f"--default-voice {given}: no such file")
        return Path(given)
    for rel in DEFAULT_VOICE_FILES:
        if (Path(hf_dir) / rel).is_file():
            return Path(hf_dir) / rel
    return None


def make_default_voice(assets: "VoiceAssets", path: Path) -> Any:
    """The Voice of the recording at ``path``, made by the runtime with the assets' encoders (S3
    tokenizer in F32, CAM++ through onnxruntime), as ``Model.voice(path)`` makes one."""
    import tempfile

    if assets.s3 is None or assets.spk_bytes is None:
        raise ConvertError("a default voice needs both voice encoders (assets/token2wav/" + S3_FILE + " and " +
                           CAMPPLUS_FILE + ")")
    try:
        from minicpm_cpp.errors import Error
        from minicpm_cpp.voice import Voice
    except ImportError as e:  # pragma: no cover - the converter ships inside the package
        raise ConvertError(f"the default voice needs the minicpm_cpp runtime: {e}") from None
    with tempfile.TemporaryDirectory(prefix="minicpm-voice-") as td:
        enc = write_voice_gguf(assets.root, Path(td) / "encoders.gguf", Q.F32)
        try:
            return Voice.from_audio(enc, str(path), SAMPLE_RATE, device="cpu")
        except Error as e:
            raise ConvertError(f"default voice {path}: {e}") from None


def plan_default_voice(v: Any) -> List[VoiceTensor]:
    audio = np.ascontiguousarray(v.audio_16k, dtype=np.float32)
    return [VoiceTensor("SPK_VOICE_TOKENS", tensor_name("SPK_VOICE_TOKENS"), "default voice", tuple(v.tokens.shape),
                        qtype=Q.I32, source=_from_array(v.tokens)),
            VoiceTensor("SPK_VOICE_SPEAKER", tensor_name("SPK_VOICE_SPEAKER"), "default voice", tuple(v.speaker.shape),
                        qtype=Q.F32, source=_from_array(v.speaker)),
            VoiceTensor("SPK_VOICE_MEL", tensor_name("SPK_VOICE_MEL"), "default voice", tuple(v.prompt_mel.shape),
                        qtype=Q.F32, source=_from_array(v.prompt_mel)),
            VoiceTensor("SPK_VOICE_AUDIO", tensor_name("SPK_VOICE_AUDIO"), "default voice", tuple(audio.shape),
                        qtype=Q.F32, source=_from_array(audio))]


def write_default_voice_metadata(writer: Any, v: Any, path: Path) -> None:
    writer.add_uint32(key_name("VOICE_VERSION"), 1)
    writer.add_uint32(key_name("VOICE_N_TOKENS"), int(v.tokens.shape[0]))
    writer.add_uint32(key_name("VOICE_SPEAKER_DIM"), int(v.speaker.shape[0]))
    writer.add_uint32(key_name("VOICE_MEL_BINS"), int(v.prompt_mel.shape[1]))
    writer.add_uint32(key_name("VOICE_SOURCE_RATE"), SAMPLE_RATE)
    writer.add_string(key_name("VOICE_SOURCE"), Path(path).name)
