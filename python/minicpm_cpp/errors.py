"""Exceptions raised by minicpm_cpp. Every error of the native core is an :class:`Error`."""

from __future__ import annotations

__all__ = [
    "Error",
    "FileError",
    "FormatError",
    "UnsupportedError",
    "InvalidArgumentError",
    "ContextFullError",
    "BackendError",
    "BusyError",
    "MissingDependencyError",
]


class Error(Exception):
    """Base class of every minicpm_cpp error."""


class FileError(Error, FileNotFoundError):
    """A model file is missing or cannot be read."""


class FormatError(Error, ValueError):
    """A file is not a valid GGUF, is truncated, or lacks/misshapes a tensor or metadata key."""


class UnsupportedError(Error, ValueError):
    """A valid file whose architecture, tokenizer or tensor type this runtime does not run."""


class InvalidArgumentError(Error, ValueError):
    """A parameter passed by the caller is out of range or inconsistent."""


class ContextFullError(Error):
    """The prompt or the generation does not fit in the session's context (n_ctx)."""


class BackendError(Error, RuntimeError):
    """The compute device failed (allocation, graph compute)."""


class BusyError(Error, RuntimeError):
    """A Session (or ImageEncoder) was called from a second thread while another was inside it.
    Use one session per thread; sessions on one Model run in parallel."""


class MissingDependencyError(Error, ImportError):
    """An optional Python package that this input needs is not installed; the message names it."""
