"""Model and Tokenizer: a GGUF file's weights (and its components' files) loaded once, shared
by every Session over it; the files of a model directory in llama.cpp-omni's layout."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import _core
from ._args import (
    _bool_arg,
    _check_path,
    _check_text,
    _count,
    _max_slices,
    _opt_bool,
    _small_count,
    _str_arg,
    _threads,
)
from ._speech_parts import SpeechModel
from .content import Message, normalise_messages as _normalise_messages
from .errors import FileError, InvalidArgumentError

__all__ = ["Model", "Tokenizer", "find_model_files"]

def _video_recipe(model: Any) -> str:
    """The frame recipe of video parts given by path for this model's family (video.py)."""
    from .video import recipe_for_model_type

    return recipe_for_model_type(model.info.get("model_type"))

class Tokenizer:
    """The tokenizer of a GGUF file (vocab-only files included), without loading weights."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self._t = _core.Tokenizer(_check_path(path))

    def encode(self, text: str, parse_special: bool = True) -> List[int]:
        """Token ids of ``text``; special tokens written in the text are matched when ``parse_special``."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
        return self._t.encode(_check_text(text, "text"), parse_special)

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._t.decode(list(ids), skip_special)

    def decode_stream(self, ids: Sequence[int], skip_special: bool = False) -> List[str]:
        """The pieces a streaming decoder emits for ``ids`` (their concatenation equals ``decode``)."""
        return self._t.decode_stream(list(ids), skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        return self._t.token_bytes(token_id)

    def find_token(self, text: str) -> int:
        """Id of the token whose text is exactly ``text``, or -1."""
        return self._t.find_token(text)

    def token_type(self, token_id: int) -> int:
        return self._t.token_type(token_id)

    @property
    def n_tokens(self) -> int:
        return self._t.n_tokens


class Model(SpeechModel):
    """Weights loaded once (memory-mapped on the CPU), read-only: any number of sessions, each
    on its own thread, share one model and run at the same time.

    Args:
        path: a GGUF file written by ``minicpm-convert`` (or llama.cpp's converter for the LLM).
        device: ``"auto"`` (a GPU when ggml has one, else the CPU), ``"cpu"``, ``"gpu"``,
            ``"cuda"``, ``"metal"`` or a registry name such as ``"CUDA1"``.
        n_threads: CPU threads of the model's sessions (each may ask for its own);
            ``None`` picks from the core count.
        mmproj: a separate vision file (llama.cpp's ``mmproj`` layout), when the model file has
            no vision tower.
        audio: a separate audio encoder file (``minicpm-convert --audio-out``, or llama.cpp-omni's
            ``audio/MiniCPM-o-4_5-audio-F16.gguf``), when the model file has no audio encoder.
            ``path`` may also be a directory in llama.cpp-omni's release layout: its LLM file and
            ``audio/`` file are loaded from there (see :func:`find_model_files`; pass the vision
            file as ``mmproj`` explicitly).
        extra_files: more GGUF files holding components of the model.
        cpu_repack: on the CPU, copy the quantized matrices that ggml has interleaved kernels
            for (Q4_0, Q4_K, IQ4_NL, ... depending on the CPU) into that layout at load, like
            llama.cpp's ``--repack`` (default). ``False`` keeps every weight memory-mapped (on
            AVX-512 builds of ggml this ran Q4_K prompts ~1.6x faster, and decoded up to ~15%
            slower).
        fuse_qkv: compute each layer's Q, K and V projections as one product over the three
            matrices stored back to back. ``None`` (default): on a GPU, where the three share a
            type; ``True``: also on the CPU (a copy of those weights); ``False``: never.
        warmup: run the vision encoder once at load (page faults, kernel start-up).
        vision_flash_attn: ``"auto"`` (where the backend supports it), ``"on"`` or ``"off"``.
        vision_pad_heads: pad the vision attention heads to a size with fast kernels;
            ``None``: on GPUs.
        vision_fold_norms: fold each ViT block's LayerNorm scale and shift into the product
            after it (as ``audio_fold_norms``), and store the padded heads in the Q|K|V and
            output matrices, so the graph needs no padding, slicing or second conversion around
            attention. One more rounding of those matrices (F16: within 2^-11 relative); float
            weights only. ``None`` (default): on GPUs; ``True``: also on the CPU.
        audio_fold_norms: fold each audio encoder block's LayerNorm scale and shift into the
            product after it (W diag(g), W b + c, computed at load in float32), so a GPU runs
            fewer kernels per pass. It rounds those matrices once more to their type (F16:
            within 2^-11 relative). ``None`` (default): on GPUs; ``True``: also on the CPU.
        flow_lean: run the Token2Wav flow's estimator as the graph with fewer, larger kernels
            (F32 copies of its matrices, about 300 MB in place of 150 MB of F16; one Q|K|V
            product; flash attention; on GPUs ggml's tanh GELU): a GPU's streaming window is bound by its count of small kernels,
            and on the CPU ggml's F32 products are the faster ones. ``None`` (default): on (the
            environment's ``MINICPM_FLOW_LEAN=0`` / ``1`` changes the default); ``False``: the
            file's matrices in the reference's order of operations.
        max_image_patches: refuse an image whose overview or slices would have more patches
            than this (a normal piece has ~1024; the reference's arithmetic gives extreme aspect
            ratios such as 1 x 100000 ten thousand, a 10k^2 attention per layer). ``0``: no limit.
        batch_cache_cells: cross-session batching (sessions made with ``batch=True``): one
            key/value buffer of this many cells shared by the batching sessions, each taking
            ``n_ctx`` cells of it (size it as sessions x n_ctx; a session that finds no room
            keeps a cache of its own, with a warning). Their decode steps and duplex units then
            run as one attention over the shared buffer, each row masked to its own session's
            cells, in a graph that depends on the row count only, so it is kept (and, on CUDA,
            replayed as a CUDA graph) whichever sessions it carries. Allocated at the first
            batching session. ``0`` (default): each session keeps its own cache.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        device: str = "auto",
        n_threads: Optional[int] = None,
        mmproj: Optional[Union[str, os.PathLike]] = None,
        cpu_repack: bool = True,
        fuse_qkv: Optional[bool] = None,
        *,
        extra_files: Sequence[Union[str, os.PathLike]] = (),
        warmup: bool = True,
        vision_flash_attn: str = "auto",
        vision_pad_heads: Optional[bool] = None,
        audio: Optional[Union[str, os.PathLike]] = None,
        audio_fold_norms: Optional[bool] = None,
        max_image_patches: int = 4096,
        flow_lean: Optional[bool] = None,
        batch_cache_cells: int = 0,
        vision_fold_norms: Optional[bool] = None,
    ) -> None:
        device = _str_arg(device, "device")
        vision_flash_attn = _str_arg(vision_flash_attn, "vision_flash_attn")
        if os.path.isdir(_check_path(path)):
            found = find_model_files(path)
            path = found["model"]
            if audio is None and found.get("audio"):
                audio = found["audio"]
            if not extra_files:   # speech output: the release's talker and Token2Wav files
                extra_files = [f for f in (found.get("tts"), found.get("token2wav")) if f]
        p = _check_path(path)
        n = 0 if n_threads is None else _threads(n_threads)
        self.path = p
        self.mmproj = _check_path(mmproj, "mmproj") if mmproj is not None else None
        self.audio = _check_path(audio, "audio file") if audio is not None else None
        from ._omni_t2w import expand_extra_files

        extra = [_check_path(f, "extra file") for f in expand_extra_files(extra_files)]
        self.extra_files = list(extra)
        self._device, self._n_threads = device, n
        self._m = _core.Model(
            p,
            device,
            n,
            self.mmproj or "",
            extra,
            _bool_arg(cpu_repack, "cpu_repack"),
            _opt_bool(fuse_qkv, "fuse_qkv"),
            bool(warmup),
            vision_flash_attn,
            _opt_bool(vision_pad_heads, "vision_pad_heads"),
            self.audio or "",
            _opt_bool(audio_fold_norms, "audio_fold_norms"),
            _count(min(max_image_patches, 2**62) if isinstance(max_image_patches, int) else max_image_patches,
                   "max_image_patches"),
            _opt_bool(flow_lean, "flow_lean"),
            _count(batch_cache_cells, "batch_cache_cells"),
            _opt_bool(vision_fold_norms, "vision_fold_norms"),
        )
        self._encoder: Optional[_core.ImageEncoder] = None
        self._encoder_lock = threading.Lock()

    @property
    def has_vision(self) -> bool:
        """Whether images can be given (a vision tower in the file, or an mmproj file)."""
        return self._m.has_vision

    @property
    def has_audio(self) -> bool:
        """Whether audio can be given (a MiniCPM-o audio encoder in the file, or an audio file)."""
        return self._m.has_audio

    @property
    def info(self) -> Dict[str, Any]:
        """Architecture and sizes read from the file."""
        return dict(self._m.info)

    @property
    def defaults(self) -> Dict[str, Any]:
        """The model's generation defaults: the reference ``chat()``'s values recorded in the
        file (``enable_thinking``, ``sampling``, ``sampling_think``, ``max_tokens``, ``source``)."""
        return dict(self._m.defaults)

    @property
    def chat_template(self) -> str:
        """The Jinja chat template stored in the file ('' when absent)."""
        return self._m.chat_template

    @property
    def end_of_turn_ids(self) -> List[int]:
        return list(self._m.end_of_turn_ids)

    def batch_stats(self) -> Dict[str, int]:
        """What the cross-session batcher (sessions made with ``batch=True``) has run:
        ``batches`` (graphs), ``parts`` (session requests in them), ``rows`` (positions),
        ``max_parts`` (the most requests one graph carried), ``rebuilds`` (graphs built for a new
        set of sessions or shapes; the others reused the allocated one), ``build_ms`` and
        ``compute_ms`` (time spent building / computing them), ``shared_parts`` (requests run as
        rows of the shared cache's one sequence, see ``batch_cache_cells``) and
        ``shared_cache_bytes`` (that cache's size; 0 before the first batched session)."""
        return dict(self._m.batch_stats())

    def set_batch_gather(self, min_parts: int, wait_ms: float) -> None:
        """How the batcher gathers: a batch waits up to ``wait_ms`` for ``min_parts`` session
        requests before it runs (default 1 and 0: at once, with whatever is waiting). Waiting
        trades each step's latency for larger batches."""
        if isinstance(min_parts, bool) or not isinstance(min_parts, int):
            raise InvalidArgumentError(f"min_parts must be an int, got {type(min_parts).__name__}")
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, (int, float)):
            raise InvalidArgumentError(f"wait_ms must be a number, got {type(wait_ms).__name__}")
        self._m.set_batch_gather(int(min_parts), float(wait_ms))

    def tokenize(self, text: str, parse_special: bool = True) -> List[int]:
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
        return self._m.tokenize(_check_text(text, "text"), parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._m.detokenize(list(ids), skip_special)

    def _with_encoder(self, fn: Callable[[Any], Any]) -> Any:
        # One encoder state per model for calls outside a session, used under a lock (sessions
        # have their own and encode in parallel).
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = _core.ImageEncoder(self._m)
            return fn(self._encoder)

    def encode_image(
        self,
        image: Any,
        *,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        image_id: int = 0,
    ) -> "_core.ImageChunk":
        """Preprocesses and encodes an image (PIL image, path, bytes, data URL or HxWx3 uint8
        array) into its placeholder tokens and embeddings, ready for any session. Calls are
        serialised per model; :meth:`Session.encode_image` runs in parallel across sessions."""
        args = _image_args(image, max_slice_nums, use_image_id, image_id)
        return self._with_encoder(lambda e: e.encode(*args))

    def render_chat(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        enable_thinking: Optional[bool] = None,
        use_tts_template: Optional[bool] = None,
        omni_mode: bool = False,
    ) -> str:
        """The prompt text the model's chat template gives for ``messages`` (images shown as
        ``(<image>./</image>)``, audio as ``(<audio>./</audio>)``); ``enable_thinking=None`` takes
        the model's default, ``use_tts_template=None`` switches the speech template on when a
        message holds audio (as the reference ``chat()``)."""
        return _core.render_chat(self._m, _normalise_messages(messages, True, _video_recipe(self)), add_generation_prompt,
                                 _opt_bool(enable_thinking, "enable_thinking"),
                                 _opt_bool(use_tts_template, "use_tts_template"), bool(omni_mode))

    def chat_segments(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        enable_thinking: Optional[bool] = None,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
    ) -> list:
        """The prompt of ``messages`` as segments: lists of token ids and encoded images, in order.
        Images are numbered 0, 1, ... across the conversation (``<image_id>N</image_id>``)."""
        msgs = _normalise_messages(messages, True, _video_recipe(self))
        slices = _max_slices(max_slice_nums)
        uid = _opt_bool(use_image_id, "use_image_id")
        think = _opt_bool(enable_thinking, "enable_thinking")
        segs, _text, _thinking, _prefix, _tts = self._with_encoder(
            lambda e: _core.chat_prompt_with(self._m, e, msgs, add_generation_prompt, think, slices, uid)
        )
        return list(segs)

    def __repr__(self) -> str:
        i = self._m.info
        return f"Model({self.path!r}, arch={i['arch']}, layers={i['n_layer']}, device={i['device']})"


def find_model_files(directory: Union[str, os.PathLike]) -> Dict[str, Optional[str]]:
    """The files of a model directory in llama.cpp-omni's release layout: the LLM GGUF at the
    top (``MiniCPM-o-4_5-Q4_K_M.gguf``; when several, the one whose name says Q4_K_M, else F16,
    else the first by name), ``audio/*audio*.gguf``, ``vision/*vision*.gguf``, the talker
    ``tts/*tts*.gguf`` (its ``*projector*.gguf`` beside it) and the ``token2wav-gguf/`` folder
    (when it holds ``flow_matching.gguf``). ``Model(directory)`` loads all but the vision file
    (pass that as ``mmproj=``). Returns ``{"model", "audio", "vision", "tts", "token2wav"}``
    (``None`` where absent)."""
    d = _check_path(directory, "model directory")
    if not os.path.isdir(d):
        raise FileError(f"{d}: not a directory (find_model_files takes a model directory)")
    top = sorted(f for f in os.listdir(d) if f.lower().endswith(".gguf") and os.path.isfile(os.path.join(d, f)))
    if not top:
        raise FileError(f"{d}: no .gguf model file in this directory")

    def pick(names: List[str]) -> str:
        for want in ("q4_k_m", "f16"):
            for n in names:
                if want in n.lower():
                    return n
        return names[0]

    def sub(name: str, word: str) -> Optional[str]:
        sd = os.path.join(d, name)
        if not os.path.isdir(sd):
            return None
        fs = sorted(f for f in os.listdir(sd) if f.lower().endswith(".gguf") and word in f.lower())
        return os.path.join(sd, pick(fs)) if fs else None

    tts = sub("tts", "tts")
    if tts is not None and "projector" in os.path.basename(tts).lower():
        tts = None
    t2w = os.path.join(d, "token2wav-gguf")
    return {"model": os.path.join(d, pick(top)), "audio": sub("audio", "audio"), "vision": sub("vision", "vision"),
            "tts": tts, "token2wav": t2w if os.path.isfile(os.path.join(t2w, "flow_matching.gguf")) else None}


def _image_args(image: Any, max_slice_nums: Optional[int], use_image_id: Optional[bool], image_id: int) -> tuple:
    """(rgb, max_slice_nums, use_image_id, image_id) as the native encoders take them."""
    from .image import load_image

    return (load_image(image), _max_slices(max_slice_nums), _opt_bool(use_image_id, "use_image_id"),
            _small_count(image_id, "image_id"))
