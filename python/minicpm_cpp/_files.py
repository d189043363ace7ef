"""Local files named by callers (model files, images, audio): regular files only, no NUL bytes in
paths, and the ``allow_local_files`` switch for content parts.

A FIFO, a character device or a socket given as a file would block ``open()`` or the first read
forever, so files are opened non-blocking and refused unless they are regular files. With
``allow_local_files=False`` a path or ``file://`` URL in message content is refused before the
file system is touched, with one text whether or not the file exists, so that the error does not
tell a remote caller which files exist.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from .errors import FileError, InvalidArgumentError

# Upper bound on a path given as text content that may name a file (longer strings are text).
MAX_PATH_CHARS = 4096


def check_path_text(path: str, name: str) -> None:
    """Refuse paths the OS would silently cut (an embedded NUL byte)."""
    if "\x00" in path:
        raise InvalidArgumentError(f"{name}: the path contains a NUL character")


def refuse_local(name: str) -> FileError:
    return FileError(f"{name}: local files are not allowed here (allow_local_files=False)")


def open_regular(path: str, name: str, kind: str) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; else a clear error.

    ``kind`` names what the file should be ("image", "audio") in the messages."""
    check_path_text(path, name)
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{name}: the path is not valid Unicode (a lone surrogate)") from None
    a_kind = ("an " if kind[:1] in "aeiou" else "a ") + kind
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise FileError(f"{name}: no such {kind} file") from e
    except IsADirectoryError as e:
        raise InvalidArgumentError(f"{name}: is a directory, not {a_kind} file") from e
    except OSError as e:
        raise FileError(f"{name}: cannot read {kind} file: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(f"{name}: is a directory, not {a_kind} file")
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"{name}: not a regular file (a FIFO, device or socket), cannot read it as {a_kind} file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
