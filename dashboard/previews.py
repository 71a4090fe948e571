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


@lru_cache(maxsize=1024)
def _render(path: str, mtime_ns: int, size: int, px: int, max_bytes: int, max_pixels: int) -> bytes | None:
    from PIL import Image, ImageOps

    if size > max_bytes:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh, Image.open(fh) as im:
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
    except Exception as exc:  # unreadable, truncated, not an image: no preview, never an error page
        log.debug("no preview for %s: %s", path, exc)
        return None


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
