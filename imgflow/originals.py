"""One way to read an image's original bytes, whatever holds it: a file, an object, a frame.

A path in a record is one of three things: a ``frame://`` kept in MongoDB ``frames``
(imgflow/frames.py), an object-store URI (imgflow/objects.py) or a file (imgflow/roots.py).
The decode stage, the annotate stage and the dashboard's previews all read it here, with
the same rules: a file only inside the image roots, an object only under an object root,
never past the limits, and every refusal an :class:`~imgflow.imaging.ImageRejected` with a
stable kind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imgflow.frames import FrameStore, frame_key, is_frame
from imgflow.imaging import ImageRejected, Limits, read_file
from imgflow.objects import is_uri, read_object, require_object_root
from imgflow.roots import require_inside_roots


@dataclass(frozen=True)
class Origins:
    """Where originals may be read from."""

    roots: Sequence[Path]  # image roots (IMGFLOW_IMAGE_ROOTS)
    object_roots: Sequence[str] = ()  # object-store prefixes (IMGFLOW_OBJECT_ROOTS)
    frames: FrameStore | None = None  # the kept frames (None: frames are not read here)


def read_original(path: str, origins: Origins, limits: Limits) -> tuple[bytes, str]:
    """The bytes of the image ``path`` names, and the name it goes by (a file's name as it was
    sent, not a link's target; an object's last key part; a frame's id).

    A file's roots are checked first and the checked real path is what is opened, then the
    open file is checked again (a regular file, not a link, really inside a root), so nothing
    swapped in between is read."""
    if is_frame(path):
        if origins.frames is None:
            raise ImageRejected("frame_gone", "no frames are kept here to read a frame:// path from")
        return origins.frames.read(path), frame_key(path)[1]
    if is_uri(path):
        uri = require_object_root(path, list(origins.object_roots))
        return read_object(uri, limits), uri.rsplit("/", 1)[-1]
    real = require_inside_roots(path, origins.roots)
    return read_file(real, limits, list(origins.roots)), Path(path).name


def revision(path: str) -> tuple[int, int] | None:
    """What changes when an original changes, for caches of what was made from it: a file's
    (mtime, size); None for frames and objects, which are never rewritten under their id."""
    if is_frame(path) or is_uri(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
