"""Reading a file someone else named, with nothing between the check and the read.

A path arrives from outside (a Kafka message, a control record, an upload's name): the
file it names may be a link to ``/dev/zero``, a FIFO that never answers, or a regular
file swapped for either after a check. :func:`read_regular` opens first, with
``O_NOFOLLOW`` (a link in the last component is refused) and ``O_NONBLOCK`` (opening a
FIFO does not wait for a writer), then checks what was opened (``fstat``: a regular
file, within the size limit) and, where roots are given, where the opened file really
is (``/proc/self/fd``), and reads at most the limit. Every check is on the open file
itself, so nothing can be swapped in between.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path


class ReadRefused(Exception):
    """The file was not read; ``kind`` says why (the decode stage's failure kinds)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)


def opened_path(fd: int) -> Path | None:
    """Where an open file really is (Linux ``/proc``), or None where that cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def read_regular(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    roots: Iterable[str | os.PathLike[str]] | None = None,
    allow_empty: bool = False,
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes``, or :class:`ReadRefused`.

    ``roots``: the opened file must really lie inside one of them (after the open, so a
    directory swapped for a link between a caller's check and this open is caught too).
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise ReadRefused("missing_file", f"file not found: {path}") from None
    except PermissionError:
        raise ReadRefused("unreadable_file", f"permission denied: {path}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (EMLINK on BSDs)
            raise ReadRefused("not_a_file", f"refused to follow a link: {path}") from None
        raise ReadRefused("unreadable_file", f"cannot open {path}: {exc.strerror}") from None
    except ValueError:  # an embedded NUL byte
        raise ReadRefused("unreadable_file", f"not a valid path: {str(path)[:200]!r}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadRefused("not_a_file", f"not a regular file: {path}")
        if roots is not None:
            where = opened_path(fd)
            resolved = [Path(r).resolve() for r in roots if str(r).strip()]
            if where is not None and not any(where.is_relative_to(r) for r in resolved):
                raise ReadRefused(
                    "outside_roots", f"refused to read {path}: it is now {where}, outside the roots"
                )
        if info.st_size == 0 and not allow_empty:
            raise ReadRefused("empty_file", f"file is empty (0 bytes): {path}")
        if info.st_size > max_bytes:
            raise ReadRefused(
                "file_too_large", f"file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit"
            )
        # The file is non-blocking and regular: read until EOF, never past the limit (it may
        # have grown since fstat).
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ReadRefused("file_too_large", f"file grew past the {max_bytes:,}-byte limit while read")
        return b"".join(chunks)
    except OSError as exc:
        raise ReadRefused("unreadable_file", f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
