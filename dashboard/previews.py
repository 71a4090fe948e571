"""Image previews: only from the configured folders, downscaled on the server, as JPEG bytes.

The browser never gets a file URL: a preview is read here, inside the allowed
folders only (the decode stage's own check), scaled to the size shown and
embedded in the page. Renders are cached by path, size and the file's modification time,
so a refresh that shows the same page decodes nothing again.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from imgflow.frames import FrameStore
from imgflow.imaging import ImageRejected, Limits
from imgflow.originals import Origins, read_original, revision

log = logging.getLogger(__name__)

THUMB_PX = 160
DETAIL_PX = 640


def safe_image_path(path: str | os.PathLike | None, roots: Iterable[Path]) -> Path | None:
    """The real path of ``path`` if it is a file inside one of ``roots``, else None.

    The same check as the decode stage (``imgflow.roots.inside_roots``): every
    symlink and ``..`` is resolved, so a link inside a root that points outside
    it, or a path that climbs out, is refused.
    """
    from imgflow.roots import inside_roots

    resolved = inside_roots(path, roots)
    if resolved is None or not resolved.is_file():
        return None
    return resolved


def _scaled(im, px: int, max_pixels: int) -> bytes | None:
    """An opened image, oriented, flattened on white and scaled to fit ``px``, as JPEG bytes."""
    from PIL import Image, ImageOps

    if im.width * im.height > max_pixels:
        return None
    im.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much faster
    im.seek(0)
    out = ImageOps.exif_transpose(im)
    if out.mode in ("RGBA", "LA", "PA") or (out.mode == "P" and "transparency" in out.info):
        rgba = out.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
    else:
        out = out.convert("RGB")
    out.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def preview(
    path: str | None,
    origins: Origins,
    px: int = THUMB_PX,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
) -> bytes | None:
    """JPEG bytes of any original (a file inside the roots, an object under an object root, a
    kept frame: imgflow/originals.py, the decode stage's own rules) scaled to fit ``px``, or
    None if it is not allowed or not readable. Cached by path, size and revision."""
    if not path:
        return None
    key = (path, px, revision(path))
    cached = _cache.get(key)
    if cached is not None:
        return cached
    try:  # a regular file, not a link, never past the limit (a FIFO swapped in cannot hang a page)
        data, _name = read_original(path, origins, Limits(max_file_bytes=max_bytes, max_pixels=max_pixels))
    except ImageRejected as exc:
        log.debug("no preview for %s: %s", path, exc)
        return None
    jpeg = render_bytes(data, px, max_pixels)
    if jpeg is not None:
        if len(_cache) >= CACHE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = jpeg
    return jpeg


#: Rendered previews, oldest first out: a page of the gallery asks for the same ones again.
CACHE = 1024
_cache: dict[tuple[str, int, tuple[int, int] | None], bytes] = {}


def render_bytes(data: bytes, px: int, max_pixels: int = 64_000_000) -> bytes | None:
    """:func:`preview_jpeg` for an image in memory (a kept frame)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _scaled(im, px, max_pixels)
    except Exception as exc:
        log.debug("no preview for a frame: %s", exc)
        return None


def preview_jpeg(
    path: str | None,
    roots: Iterable[Path],
    px: int = THUMB_PX,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
) -> bytes | None:
    """The preview of a file inside ``roots``."""
    return preview(path, Origins(list(roots)), px, max_bytes, max_pixels)


def frame_preview_jpeg(db, path: str, px: int = THUMB_PX, max_pixels: int = 64_000_000) -> bytes | None:
    """The preview of a ``frame://`` path from MongoDB ``frames``, or None once it is not kept."""
    return preview(path, Origins((), (), FrameStore(db, keep=1)), px, max_pixels=max_pixels)


def object_preview_jpeg(
    uri: str, roots: list[str], px: int = THUMB_PX, max_bytes: int = 50 * 2**20, max_pixels: int = 64_000_000
) -> bytes | None:
    """The preview of an object-store image, only under an object root."""
    return preview(uri, Origins((), roots), px, max_bytes, max_pixels)


def faces_drawn(preview: bytes, faces: list[dict], original_width: int) -> bytes:
    """A preview JPEG with face boxes (in the original image's pixels) and names drawn on it."""
    from PIL import Image

    from imgflow.annotate import draw_result

    with Image.open(io.BytesIO(preview)) as im:
        drawn = draw_result(im, "", 0.0, faces, scale=im.width / original_width)
    buf = io.BytesIO()
    drawn.save(buf, "JPEG", quality=85)
    return buf.getvalue()
