"""Output plumbing shared by the converter and the quantizer.

* :func:`atomic_output`: the output is written to a temporary file beside the target and renamed
  over it only when complete, so a failed or interrupted run leaves nothing behind;
* :class:`Progress`: a tqdm bar over tensors when tqdm is installed, else a counter on stderr;
* :func:`padding` / :func:`write_padding`: GGUF alignment of the tensor data.

This module depends on the standard library only, and on no other module of the converter, so
that both :mod:`.hf_to_gguf` and :mod:`.quantize` can import it without importing each other.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_output", "Progress", "padding", "write_padding"]


class Progress:
    """tqdm over tensors when installed, else a plain counter on stderr prefixed with ``prog``."""

    def __init__(self, total: int, enabled: bool, *, desc: str, prog: str):
        self.total, self.enabled, self.done = total, enabled and total > 0, 0
        self.prog = prog
        self._bar = None
        if not self.enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="tensor", desc=desc, file=sys.stderr, leave=True)
        except ImportError:
            self._bar = None

    def step(self, name: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(name, refresh=False)
            self._bar.update(1)
        else:
            sys.stderr.write(f"\r{self.prog}: [{self.done}/{self.total}] {name:<40}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` on success, delete it otherwise.

    The file gets the mode a newly created file would (0666 less the umask), not mkstemp's 0600.
    """
    fd, name = tempfile.mkstemp(prefix=f"{out.name}.tmp-", dir=str(out.parent))
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def padding(n: int, align: int) -> int:
    """Bytes to add after ``n`` bytes so that the next byte lies on an ``align`` boundary."""
    return -n % align


def write_padding(fout: BinaryIO, n: int, align: int) -> None:
    """Zero bytes after ``n`` bytes so that the next write starts on an ``align`` boundary."""
    extra = padding(n, align)
    if extra:
        fout.write(b"\0" * extra)
