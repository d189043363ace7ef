"""The Pythonic layer over the native core: Model, Session, Tokenizer."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core
from .errors import InvalidArgumentError

__all__ = ["Model", "Session", "Tokenizer", "ChatTemplate", "list_devices", "set_log_level"]

Message = Mapping[str, Any]

ChatTemplate = _core.ChatTemplate


def list_devices() -> List[Dict[str, Any]]:
    """Devices ggml's backend registry offers (name, description, type, memory)."""
    return list(_core.list_devices())


def set_log_level(level: str) -> None:
    """Native log level: "error", "warn" (default), "info" or "debug"."""
    _core.set_log_level(level)


def _check_path(path: Union[str, os.PathLike]) -> str:
    p = os.fspath(path)
    if not isinstance(p, str):
        raise InvalidArgumentError(f"model path must be a str or os.PathLike, got {type(path).__name__}")
    return p


class Tokenizer:
    """The tokenizer of a GGUF file (vocab-only files included), without loading weights."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self._t = _core.Tokenizer(_check_path(path))

    def encode(self, text: str, parse_special: bool = True) -> List[int]:
        """Token ids of ``text``; special tokens written in the text are matched when ``parse_special``."""
        return self._t.encode(text, parse_special)

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


class Model:
    """Weights loaded once (memory-mapped on the CPU); several sessions can share one model.

    Args:
        path: a GGUF file written by ``minicpm-convert`` (or llama.cpp's converter for the LLM).
        device: ``"auto"`` (a GPU when ggml has one, else the CPU), ``"cpu"``, ``"gpu"``,
            ``"cuda"``, ``"metal"`` or a registry name such as ``"CUDA1"``.
        n_threads: CPU threads; ``None`` picks from the core count.
        mmproj: a separate vision file (llama.cpp's ``mmproj`` layout), when the model file has
            no vision tower.
        cpu_repack: on the CPU, copy the quantized matrices that ggml has interleaved kernels
            for (Q4_0, Q4_K, IQ4_NL, ... depending on the CPU) into that layout at load, like
            llama.cpp's ``--repack``. ``None`` (default) and ``True``: every such type;
            ``False``: keep every weight memory-mapped (on AVX-512 builds of ggml this ran
            Q4_K prompts ~1.6x faster, and decoded up to ~15% slower).
        fuse_qkv: compute each layer's Q, K and V projections as one product over the three
            matrices stored back to back. ``None`` (default): on a GPU, where the three share a
            type; ``True``: also on the CPU (a copy of those weights); ``False``: never.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        device: str = "auto",
        n_threads: Optional[int] = None,
        mmproj: Optional[Union[str, os.PathLike]] = None,
        cpu_repack: Optional[bool] = None,
        fuse_qkv: Optional[bool] = None,
    ) -> None:
        p = _check_path(path)
        if n_threads is not None and n_threads < 0:
            raise InvalidArgumentError(f"n_threads must be >= 0, got {n_threads}")
        self.path = p
        self.mmproj = _check_path(mmproj) if mmproj is not None else None
        self._m = _core.Model(p, device, n_threads or 0, self.mmproj or "",
                              -1 if cpu_repack is None else int(bool(cpu_repack)),
                              -1 if fuse_qkv is None else int(bool(fuse_qkv)))

    @property
    def has_vision(self) -> bool:
        """Whether images can be given (a vision tower in the file, or an mmproj file)."""
        return self._m.has_vision

    def encode_image(
        self,
        image: Any,
        *,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        image_id: int = 0,
    ) -> "_core.ImageChunk":
        """Preprocesses and encodes an image (PIL image, path, bytes, data URL or HxWx3 uint8
        array) into its placeholder tokens and embeddings, ready for a session."""
        from .image import load_image

        rgb = load_image(image)
        if max_slice_nums is not None and (not isinstance(max_slice_nums, int) or max_slice_nums < 1):
            raise InvalidArgumentError(f"max_slice_nums must be an int >= 1, got {max_slice_nums!r}")
        return self._m.encode_image(rgb, max_slice_nums or 0, use_image_id, image_id)

    @property
    def info(self) -> Dict[str, Any]:
        """Architecture and sizes read from the file."""
        return dict(self._m.info)

    @property
    def chat_template(self) -> str:
        """The Jinja chat template stored in the file ('' when absent)."""
        return self._m.chat_template

    @property
    def end_of_turn_ids(self) -> List[int]:
        return list(self._m.end_of_turn_ids)

    def tokenize(self, text: str, parse_special: bool = True) -> List[int]:
        return self._m.tokenize(text, parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._m.detokenize(list(ids), skip_special)

    def render_chat(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        enable_thinking: Optional[bool] = None,
    ) -> str:
        """The prompt text the model's chat template gives for ``messages``."""
        images: list = []
        text = self._m.render_chat(_normalise_messages(messages, images), add_generation_prompt, enable_thinking)
        return text.replace(_IMAGE_MARK, "(<image>./</image>)")

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
        images: list = []
        text = self._m.render_chat(_normalise_messages(messages, images), add_generation_prompt, enable_thinking)
        parts = text.split(_IMAGE_MARK)
        segments: list = []
        for k, chunk in enumerate(parts):
            if chunk:
                segments.append(self.tokenize(chunk))
            if k < len(images):
                segments.append(
                    self.encode_image(images[k], max_slice_nums=max_slice_nums, use_image_id=use_image_id, image_id=k)
                )
        return segments

    def __repr__(self) -> str:
        i = self._m.info
        return f"Model({self.path!r}, arch={i['arch']}, layers={i['n_layer']}, device={i['device']})"


# Stands for an image in rendered chat text until it is replaced by the image's placeholder.
_IMAGE_MARK = "\ue000minicpm-image\ue001"


def _is_image_like(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return True
    mod = type(x).__module__ or ""
    return mod.startswith("PIL.")


def _normalise_messages(messages: Sequence[Message], images: Optional[list] = None) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidArgumentError(f"message {i} must be a dict with 'role' and 'content'")
        content = m["content"]
        if isinstance(content, (list, tuple)):
            # The reference's content list ([image, "text", ...]) or OpenAI-style parts; items are
            # joined with "\n" as the reference chat() does, images become markers.
            texts = []
            for part in content:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, Mapping) and part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, Mapping) and part.get("type") in ("image_url", "image"):
                    ref = part.get("image_url", part.get("image"))
                    if isinstance(ref, Mapping):
                        ref = ref.get("url")
                    if images is None:
                        raise InvalidArgumentError(f"message {i}: images are not accepted here")
                    images.append(ref)
                    texts.append(_IMAGE_MARK)
                elif _is_image_like(part):
                    if images is None:
                        raise InvalidArgumentError(f"message {i}: images are not accepted here")
                    images.append(part)
                    texts.append(_IMAGE_MARK)
                else:
                    raise InvalidArgumentError(f"message {i}: unsupported content item of type {type(part).__name__}")
            content = "\n".join(texts)
        elif _is_image_like(content) and not isinstance(content, str):
            if images is None:
                raise InvalidArgumentError(f"message {i}: images are not accepted here")
            images.append(content)
            content = _IMAGE_MARK
        d = {"role": str(m["role"]), "content": "" if content is None else str(content)}
        if m.get("reasoning_content") is not None:
            d["reasoning_content"] = str(m["reasoning_content"])
        out.append(d)
    return out


_SAMPLING_DEFAULTS = dict(
    temperature=0.7, top_k=100, top_p=0.8, min_p=0.0, repeat_penalty=1.05, presence_penalty=0.0, repeat_last_n=-1
)


class Session:
    """A conversation state (KV cache) over a :class:`Model`.

    Args:
        model: a :class:`Model`, or a path to load one (then ``device``/``n_threads`` apply).
        n_ctx: context length in tokens (prompt plus generated text).
        seed: sampling seed; ``None`` draws one at random.
        n_batch: prompt tokens evaluated per graph (micro-batch).
        kv_type: ``"auto"`` (F32 for all-F32 models, else F16), ``"f16"`` or ``"f32"``.
        flash_attn: ``"auto"``, ``"on"`` or ``"off"``.
        device, n_threads, mmproj: passed to :class:`Model` when ``model`` is a path
            (``mmproj``: a separate vision file in llama.cpp's layout).
    """

    def __init__(
        self,
        model: Union[Model, str, os.PathLike],
        n_ctx: int = 4096,
        seed: Optional[int] = None,
        *,
        n_batch: int = 512,
        kv_type: str = "auto",
        flash_attn: str = "auto",
        device: str = "auto",
        n_threads: Optional[int] = None,
        mmproj: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        if not isinstance(model, Model):
            model = Model(model, device=device, n_threads=n_threads, mmproj=mmproj)
        elif mmproj is not None:
            raise InvalidArgumentError("mmproj is given when loading a Model; pass it to Model(...)")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise InvalidArgumentError(f"seed must be a non-negative int or None, got {seed!r}")
        self.model = model
        self._s = _core.Session(model._m, n_ctx, n_batch, seed, kv_type, flash_attn)
        self.last_stop_reason: Optional[str] = None
        self._n_images = 0

    # -- context -----------------------------------------------------------------------------
    def prefill(
        self,
        text: Optional[str] = None,
        tokens: Optional[Sequence[int]] = None,
        image: Any = None,
        *,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
    ) -> int:
        """Appends ``image`` (PIL image, numpy HxWx3 uint8 array, path or data URL: its placeholder
        tokens and embeddings), then ``text`` (tokenized, special tokens parsed), then ``tokens`` to
        the context and evaluates them. Returns the number of positions added. Raises
        ContextFullError if they do not fit."""
        if text is None and tokens is None and image is None:
            raise InvalidArgumentError("prefill() needs text, tokens or an image")
        segments: list = []
        if image is not None:
            chunk = self.model.encode_image(
                image, max_slice_nums=max_slice_nums, use_image_id=use_image_id, image_id=self._n_images
            )
            segments.append(chunk)
        if text is not None:
            if not isinstance(text, str):
                raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
            segments.append(self.model.tokenize(text))
        if tokens is not None:
            segments.append(_as_token_list(tokens))
        n = self._s.prefill_segments(segments)
        if image is not None:
            self._n_images += 1
        return n

    def logits(self) -> np.ndarray:
        """Float32 logits of the last evaluated position, shape ``(n_vocab,)``."""
        return self._s.logits()

    def tokenize(self, text: str, parse_special: bool = True) -> List[int]:
        return self.model.tokenize(text, parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.model.detokenize(ids, skip_special)

    def reset(self) -> None:
        """Empties the context (the KV cache is reused)."""
        self._s.reset()
        self._n_images = 0

    @property
    def n_past(self) -> int:
        """Tokens in the context."""
        return self._s.n_past

    @property
    def n_ctx(self) -> int:
        return self._s.n_ctx

    @property
    def tokens(self) -> List[int]:
        return list(self._s.tokens)

    @property
    def timings(self) -> Dict[str, float]:
        """Accumulated prefill/decode/sampling times (ms) and token counts."""
        return dict(self._s.timings)

    def reset_timings(self) -> None:
        self._s.reset_timings()

    # -- generation --------------------------------------------------------------------------
    def sample(self, **sampling: Any) -> int:
        """Samples one token from the current logits (without adding it to the context)."""
        p = _sampling(sampling)
        return self._s.sample(**p)

    def generate(
        self,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.8,
        top_k: int = 100,
        min_p: float = 0.0,
        repeat_penalty: float = 1.05,
        presence_penalty: float = 0.0,
        repeat_last_n: int = -1,
        stop: Optional[Union[str, Sequence[str]]] = None,
        stream: bool = False,
        skip_special: bool = True,
        stop_at_end_of_turn: bool = True,
    ) -> Union[str, Iterator[str]]:
        """Generates text after the current context.

        Stops at an end-of-turn token (``<|im_end|>``, eos), a ``stop`` string (not included),
        ``max_tokens`` (``-1``: no limit) or a full context; ``last_stop_reason`` says which.
        ``temperature=0`` is greedy. Returns the text, or with ``stream=True`` an iterator of
        text pieces as they are produced.
        """
        if isinstance(stop, str):
            stop = [stop]
        stops = list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise InvalidArgumentError("stop must be a string or a list of strings")
        if not isinstance(max_tokens, int):
            raise InvalidArgumentError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        p = _sampling(
            dict(
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                repeat_penalty=repeat_penalty,
                presence_penalty=presence_penalty,
                repeat_last_n=repeat_last_n,
            )
        )
        self.last_stop_reason = None
        self._s.begin_generation(
            max_tokens,
            stops,
            p["temperature"],
            p["top_k"],
            p["top_p"],
            p["min_p"],
            p["repeat_penalty"],
            p["presence_penalty"],
            p["repeat_last_n"],
            stop_at_end_of_turn,
            skip_special,
        )
        it = self._steps()
        if stream:
            return it
        return "".join(it)

    def _steps(self) -> Iterator[str]:
        while True:
            text, _tok, done, reason = self._s.next()
            if text:
                yield text
            if done:
                self.last_stop_reason = reason
                return

    def chat(
        self,
        messages: Sequence[Message],
        *,
        enable_thinking: Optional[bool] = None,
        stream: bool = False,
        max_slice_nums: Optional[int] = None,
        use_image_id: Optional[bool] = None,
        **generate_kwargs: Any,
    ) -> Union[str, Iterator[str]]:
        """Answers the conversation ``messages`` (``[{"role": "user", "content": "..."}]``).

        Content may be a list mixing text and images, in the reference's form
        (``[PIL.Image, "What is in the image?"]``) or OpenAI's
        (``[{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}, {"type": "text", ...}]``).
        ``max_slice_nums`` and ``use_image_id`` override the model's image defaults.

        The whole conversation is rendered with the model's chat template; tokens already in
        the context that match the rendered prompt are reused, so passing the growing history
        each turn only evaluates the new part. ``enable_thinking`` switches the reasoning
        template (Qwen3 family). Other keyword arguments go to :meth:`generate`.
        """
        segments = self.model.chat_segments(
            messages,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
            max_slice_nums=max_slice_nums,
            use_image_id=use_image_id,
        )
        self._s.sync_segments(segments)
        return self.generate(stream=stream, **generate_kwargs)

    def __repr__(self) -> str:
        return f"Session(n_past={self.n_past}, n_ctx={self.n_ctx})"


def _as_token_list(tokens: Sequence[int]) -> List[int]:
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise InvalidArgumentError("tokens must be a 1-D integer array")
        return [int(t) for t in tokens]
    out = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise InvalidArgumentError(f"tokens must be ints, got {type(t).__name__}")
        out.append(int(t))
    return out


def _sampling(kw: Dict[str, Any]) -> Dict[str, Any]:
    p = dict(_SAMPLING_DEFAULTS)
    for k, v in kw.items():
        if k not in p:
            raise InvalidArgumentError(f"unknown sampling parameter {k!r} (known: {', '.join(p)})")
        if v is None:
            continue
        p[k] = v
    for k in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty"):
        try:
            p[k] = float(p[k])
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{k} must be a number, got {p[k]!r}") from None
    for k in ("top_k", "repeat_last_n"):
        if isinstance(p[k], bool) or not isinstance(p[k], (int, np.integer)):
            raise InvalidArgumentError(f"{k} must be an int, got {p[k]!r}")
        p[k] = int(p[k])
    return p
