"""Which files the watcher sends, and whether a file looks fully written.

Pure decisions on names and bytes (no clocks, no journal), so each is
unit-tested on its own; the watcher and its start-up scan call them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from imgflow.files import IMAGE_SUFFIXES

IN_PROGRESS_SUFFIXES = frozenset(
    {".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", ".lock", ".filepart"}
)
#: Folders under each root that lifecycle mode moves files through; never watched.
LIFECYCLE_DIRS = ("processing", "processed", "failed")


def relative_parts(path: Path, root: Path) -> tuple[str, ...] | None:
    """``path``'s parts under ``root``, or None when it is not under it."""
    try:
        return path.relative_to(root).parts
    except ValueError:
        return None


def skipped_dir(parts: tuple[str, ...], lifecycle: bool) -> bool:
    """A folder under a root (given by its parts) whose contents are never sent."""
    if any(p.startswith(".") for p in parts):
        return True
    return lifecycle and bool(parts) and parts[0] in LIFECYCLE_DIRS


def in_progress_name(name: str) -> bool:
    """Names writers use while a file is incomplete."""
    lower = name.lower()
    return (
        name.startswith(".")
        or lower.endswith("~")
        or Path(lower).suffix in IN_PROGRESS_SUFFIXES
        or lower.startswith("~$")
    )


def is_candidate(path: Path, root: Path, lifecycle: bool) -> bool:
    """Whether a file under ``root`` is an image the watcher should send."""
    parts = relative_parts(path, root)
    if not parts or skipped_dir(parts[:-1], lifecycle) or in_progress_name(parts[-1]):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def looks_complete(head: bytes, tail: bytes, size: int) -> bool | None:
    """Whether a file's ending matches its format: True, False, or None (cannot tell)."""
    if size == 0:
        return False
    if head.startswith(b"\xff\xd8\xff"):  # JPEG: EOI marker, possibly zero-padded
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(b"IEND\xaeB`\x82")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return tail.endswith(b";")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 12:
        return size >= int.from_bytes(head[4:8], "little") + 8
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return size >= declared if declared else None
    return None


def file_complete(path: Path, size: int) -> bool | None:
    """:func:`looks_complete` on a file's first 16 and last 64 bytes (None if unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            fh.seek(max(0, size - 64))
            tail = fh.read(64)
    except OSError:
        return None
    return looks_complete(head, tail, size)


def stat_file(path: Path) -> os.stat_result | None:
    """A regular file's stat, or None (gone, a folder, unreadable)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def walk(folder: Path, root: Path, recursive: bool, lifecycle: bool) -> list[tuple[Path, os.stat_result]]:
    """Candidate files under ``folder`` with their stat, in name order (runs in a thread)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        parts = relative_parts(here, root) or ()
        if skipped_dir(parts, lifecycle):
            dirnames.clear()
            continue
        if not recursive:
            dirnames.clear()
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if is_candidate(path, root, lifecycle) and (st := stat_file(path)) is not None:
                found.append((path, st))
    return found


def dedupe_roots(roots: list[Path], recursive: bool) -> list[Path]:
    """Drop repeated roots and, when recursive, roots inside another root."""
    unique = list(dict.fromkeys(roots))
    if not recursive:
        return unique
    return [r for r in unique if not any(o != r and o in r.parents for o in unique)]
