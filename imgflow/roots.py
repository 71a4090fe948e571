"""Which files imgflow may read: only those inside the configured image roots.

A path arrives from outside (a Kafka message anyone with produce rights can
write, a retry, a replay), so it is checked before the file is touched: the
path and every root are resolved (symlinks followed, ``..`` collapsed) and the
real path must lie inside a real root, compared by whole path components.
Resolving needs only ``lstat``/``readlink`` on the way, never ``open``, so a
refused file is never opened: ``/etc/passwd`` or a FIFO that would hang a
reader outside the roots is not read at all. The real path is returned so that
the caller reads exactly what was checked, not a name a link could redirect.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from imgflow.imaging import ImageRejected

OUTSIDE_ROOTS = "outside_roots"


def real_path(path: str | os.PathLike[str]) -> Path | None:
    """``path`` with every symlink and ``..`` resolved, or None if it cannot be resolved.

    Not strict: a missing file inside a root still resolves, so that it fails
    later as ``missing_file`` (a person's typo), not as a security refusal.
    """
    try:
        return Path(path).resolve(strict=False)
    except (OSError, RuntimeError, ValueError):  # symlink loop, embedded NUL byte
        return None


def inside_roots(path: str | os.PathLike[str] | None, roots: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The real path of ``path`` if it lies inside one of ``roots`` (each resolved too), else None.

    ``Path.is_relative_to`` compares components, so ``/data2/x`` is not inside
    ``/data``. An empty root list allows nothing.
    """
    if not path:
        return None
    real = real_path(path)
    if real is None:
        return None
    for root in roots:
        real_root = real_path(root) if str(root).strip() else None
        if real_root is not None and real.is_relative_to(real_root):
            return real
    return None


def require_inside_roots(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """The real path to read, or :class:`ImageRejected` (kind ``outside_roots``) without opening it."""
    real = inside_roots(path, roots)
    if real is None:
        raise ImageRejected(
            OUTSIDE_ROOTS,
            f"refused to read {path}: it is outside the image folders this worker may read "
            "(dataset, uploads, watched folders and IMGFLOW_IMAGE_ROOTS, after following links)",
        )
    return real
