"""Image previews: only from the configured folders, downscaled on the server, as JPEG bytes.

The browser never gets a file URL: a preview is read here, inside the allowed
folders only (the decode stage's own check), scaled to the size shown and
embedded in the page. Renders are cached by path, modification time and size,
so a refresh that shows the same page decodes nothing again.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=1024)
def _render(path: str, mtime_ns: int, size: int, px: int, max_bytes: int, max_pixels: int) -> bytes | None:
    from models.safeio import ReadRefused, read_regular

    if size > max_bytes:
        return None
    try:  # a regular file, not a link, never past the limit (a FIFO swapped in cannot hang a page)
        data = read_regular(path, max_bytes)
    except ReadRefused as exc:
        log.debug("no preview for %s: %s", path, exc)
        return None
    return render_bytes(data, px, max_pixels)


def render_bytes(data: bytes, px: int, max_pixels: int = 64_000_000) -> bytes | None:
    """:func:`preview_jpeg` for an image in memory (a kept frame)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _scaled(im, px, max_pixels)
    except Exception as exc:
        log.debug("no preview for a frame: %s", exc)
        return None


def frame_preview_jpeg(db, path: str, px: int = THUMB_PX, max_pixels: int = 64_000_000) -> bytes | None:
    """The preview of a ``frame://`` path from MongoDB ``frames`` (imgflow/frames.py), or
    None once the frame is no longer kept. Renders are cached by frame (frames never change)."""
    from imgflow.frames import FrameStore, frame_key

    try:
        _source, image_id = frame_key(path)
    except ValueError:
        return None
    cached = _frame_cache.get((image_id, px))
    if cached is not None:
        return cached
    data = FrameStore(db, keep=1).get(image_id)
    if data is None:
        return None
    jpeg = render_bytes(data, px, max_pixels)
    if jpeg is not None:
        _remember((image_id, px), jpeg)
    return jpeg


#: Rendered frame and object previews, oldest first out: a page of the gallery asks for the
#: same ones again. Keyed by frame id or URI (an uploaded object's key is never reused).
FRAME_CACHE = 512
_frame_cache: dict[tuple[str, int], bytes] = {}


def _remember(key: tuple[str, int], jpeg: bytes) -> None:
    if len(_frame_cache) >= FRAME_CACHE:
        _frame_cache.pop(next(iter(_frame_cache)))
    _frame_cache[key] = jpeg


def object_preview_jpeg(
    uri: str, roots: list[str], px: int = THUMB_PX, max_bytes: int = 50 * 2**20, max_pixels: int = 64_000_000
) -> bytes | None:
    """The preview of an object-store image (imgflow/objects.py), only under an object root."""
    from imgflow.imaging import ImageRejected, Limits
    from imgflow.objects import inside_object_roots, read_object

    clean = inside_object_roots(uri, roots)
    if clean is None:
        return None
    cached = _frame_cache.get((clean, px))
    if cached is not None:
        return cached
    try:
        data = read_object(clean, Limits(max_file_bytes=max_bytes, max_pixels=max_pixels))
    except ImageRejected as exc:
        log.debug("no preview for %s: %s", uri, exc)
        return None
    jpeg = render_bytes(data, px, max_pixels)
    if jpeg is not None:
        _remember((clean, px), jpeg)
    return jpeg


def preview_jpeg(
    path: str | None,
    roots: Iterable[Path],
    px: int = THUMB_PX,
    max_bytes: int = 50 * 2**20,
    max_pixels: int = 64_000_000,
) -> bytes | None:
    """JPEG bytes of the image at ``path`` scaled to fit ``px``, or None if not allowed/readable."""
    real = safe_image_path(path, roots)
    if real is None:
        return None
    try:
        st = real.stat()
    except OSError:
        return None
    return _render(str(real), st.st_mtime_ns, st.st_size, px, max_bytes, max_pixels)


def faces_drawn(preview: bytes, faces: list[dict], original_width: int) -> bytes:
    """A preview JPEG with face boxes (in the original image's pixels) and names drawn on it."""
    from PIL import Image

    from imgflow.annotate import draw_result

    with Image.open(io.BytesIO(preview)) as im:
        drawn = draw_result(im, "", 0.0, faces, scale=im.width / original_width)
    buf = io.BytesIO()
    drawn.save(buf, "JPEG", quality=85)
    return buf.getvalue()
