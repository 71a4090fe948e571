"""Drawing a result on its image: face boxes with names, or the label and score.

Pure Pillow, shared by the ``annotated`` stage (agents/annotate.py), which publishes the
drawn frame for consumers that want pictures, and by the dashboard's detail view.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

KNOWN = (46, 204, 113)  # a named person
STRANGER = (231, 76, 60)  # unknown
BANNER = (20, 20, 20)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def draw_result(
    image: Image.Image,
    label: str,
    score: float,
    faces: Sequence[dict[str, Any]] | None,
    scale: float = 1.0,
) -> Image.Image:
    """A copy of ``image`` with the result drawn on it.

    ``faces``: boxes in the original image's pixels; ``scale``: this image's size over the
    original's (a preview). Without faces, the label and score go in a banner at the top.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    line = max(2, round(max(out.size) / 300))
    font = _font(max(12, round(max(out.size) / 40)))
    if faces is None:
        text = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.rectangle((0, 0, right - left + 4 * line, bottom - top + 4 * line), fill=BANNER)
        draw.text((2 * line, 2 * line - top), text, fill=(255, 255, 255), font=font)
        return out
    for face in faces:
        x0, y0, x1, y1 = (v * scale for v in face["box"])
        colour = STRANGER if face.get("identity") in (None, "unknown") else KNOWN
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        text = f"{face.get('identity', 'face')} {face.get('score', 0):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = max(0, y0 - (bottom - top) - 2 * line)
        draw.rectangle((x0, ty, x0 + right - left + 2 * line, ty + bottom - top + 2 * line), fill=colour)
        draw.text((x0 + line, ty + line - top), text, fill=(255, 255, 255), font=font)
    return out


def annotated_jpeg(
    data: bytes, label: str, score: float, faces: Sequence[dict[str, Any]] | None, max_side: int = 1280
) -> bytes:
    """The encoded image ``data`` with its result drawn, as JPEG, at most ``max_side`` pixels."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened) or opened
        image = image.convert("RGB")
    scale = 1.0
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    buf = io.BytesIO()
    draw_result(image, label, score, faces, scale).save(buf, "JPEG", quality=85)
    return buf.getvalue()
