"""Turning a file into a model-sized uint8 tensor: pure functions, no Kafka.

Every way a file can be unusable raises :class:`ImageRejected` with a stable
``kind`` (for filters and metrics) and a message a person understands.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgflow.records import ImageMeta
from models.safeio import ReadRefused, read_regular

# Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(Exception):
    """The file cannot be classified; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 64_000_000
    #: Pillow formats opened (None: every plugin Pillow has).
    formats: tuple[str, ...] | None = None
    #: Shared by the decode threads (None: unbounded, for one-off calls).
    budget: MemoryBudget | None = None


@dataclass(frozen=True)
class DecodedFile:
    tensor: np.ndarray  # uint8, HxWx3
    meta: ImageMeta  # the facts about the file, as the tensors record carries them


def decode_limits(settings: Any, budget: MemoryBudget | None = None) -> Limits:
    """The limits a worker decodes under (``imgflow.settings.Settings``)."""
    return Limits(
        max_file_bytes=settings.max_file_bytes,
        max_pixels=settings.max_pixels,
        formats=settings.image_format_list,
        budget=budget,
    )


def read_file(path: Path, limits: Limits, roots: Sequence[Path] | None = None) -> bytes:
    """Read the whole file, refusing what is missing, empty, too large, not a regular file, a
    link, or (with ``roots``) really outside them: checked on the open file (models/safeio.py)."""
    try:
        return read_regular(path, limits.max_file_bytes, roots=roots)
    except ReadRefused as exc:
        raise ImageRejected(exc.kind, exc.message) from None


#: Modes holding more than 8 bits per sample: scaled down to 8-bit grey.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: Rows converted at a time: the float32 scratch of a high-bit image stays a few MB at any size.
_ROWS = 256


def _grey8(arr: np.ndarray, top: float) -> np.ndarray:
    """``arr`` scaled so that ``top`` is 255, rounded, as uint8, a block of rows at a time
    (a whole-image float64 copy was ~30 bytes per pixel: 1.8 GiB for one 8000x8000 PNG)."""
    out = np.empty(arr.shape, dtype=np.uint8)
    scale = np.float32(255.0 / top)
    for row in range(0, arr.shape[0], _ROWS):
        block = arr[row : row + _ROWS].astype(np.float32)
        block *= scale
        block += np.float32(0.5)
        np.clip(block, 0, 255, out=block)
        out[row : row + _ROWS] = block
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img)
        peak = float(arr.max()) if arr.size else 0.0
        top = 65535.0 if img.mode.startswith("I;16") else max(peak, 1.0)
        if img.mode == "I" and 255 < peak <= 65535:
            top = 65535.0
        grey = _grey8(arr, top)
        del arr
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def bytes_per_pixel(mode: str) -> int:
    """What Pillow's core holds per pixel in ``mode`` (RGB is stored in four bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_cost(mode: str, width: int, height: int) -> int:
    """Bytes a decode of one ``width`` x ``height`` frame in ``mode`` may hold at its peak:
    the decoded frame, and the copies that orientation, conversion to RGB and the crop make
    (measured peaks: 8-14 bytes per pixel on top of the frame). Only the first frame of an
    animation is ever decoded, so the frame count does not multiply it."""
    return width * height * (bytes_per_pixel(mode) + 10)


class MemoryBudget:
    """Bytes that decodes running at once may hold, shared by every decode thread.

    A decode takes its :func:`decode_cost` before Pillow allocates anything and gives it
    back when done; one that would never fit is refused at once. So N threads cannot each
    start a large image together: the worker's memory for decoding is bounded by
    ``total`` however many threads there are.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int, name: str) -> Iterator[None]:
        if cost > self.total:
            raise ImageRejected(
                "over_memory_budget",
                f"{name} would need ~{cost / 2**20:,.0f} MB to decode, over the "
                f"{self.total / 2**20:,.0f} MB decode budget (IMGFLOW_DECODE_MEMORY_MB)",
            )
        with self._cond:
            while self.free < cost:
                self._cond.wait()
            self.free -= cost
        try:
            yield
        finally:
            with self._cond:
                self.free += cost
                self._cond.notify_all()


@dataclass(frozen=True)
class Opened:
    """An image decoded (perhaps at a reduced scale) and oriented, with its full size."""

    image: Image.Image  # RGB
    format: str
    width: int  # of the full image, as oriented
    height: int


def decode_bytes(data: bytes, file_name: str, limits: Limits, at_least: int | None = None) -> Opened:
    """Open, validate and orient an image.

    Only the header is read before the checks: the format must be allowed
    (``limits.formats``), the pixels under the limit (``>=`` refuses an image of exactly
    ``max_pixels``), and the decode's memory must fit ``limits.budget``; then the first
    frame is decoded.

    ``at_least``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode: the
    codec skips the finest DCT coefficients, ~2-3x less work) as long as both sides stay at
    least this many pixels; the full size is still reported.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=limits.formats)
            img_format = img.format or "unknown"
            width, height = img.size
            if width * height >= limits.max_pixels:
                raise ImageRejected(
                    "decompression_bomb",
                    f"{width}x{height} = {width * height:,} pixels, at or over the "
                    f"{limits.max_pixels:,}-pixel limit (IMGFLOW_MAX_PIXELS)",
                )
            img.seek(0)  # first frame of animations
            if at_least and img_format == "JPEG":
                img.draft(None, (at_least, at_least))
            cost = decode_cost(img.mode, *img.size)  # after draft: the size it will decode at
            with limits.budget.hold(cost, file_name) if limits.budget else nullcontext():
                img.load()
                loaded = img.size
                img = ImageOps.exif_transpose(img) or img
                if img.size != loaded:  # turned a quarter: the full size turns too
                    width, height = height, width
                return Opened(to_rgb(img), img_format, width, height)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        allowed = ", ".join(limits.formats) if limits.formats else "any Pillow reads"
        raise ImageRejected(
            "not_an_image", f"{file_name} is not an image in an allowed format ({allowed})"
        ) from None
    except NotImplementedError as exc:
        # A plugin recognised the format but not this variant of it (DDS pixel formats,
        # some BLP encodings): the file may be fine, Pillow just cannot decode it.
        fmt = _format_being_opened(exc) or "its image format"
        raise ImageRejected(
            "unsupported_format",
            f"{file_name} uses a variant of {fmt} that Pillow cannot decode: {exc}",
        ) from None
    except MemoryError:
        raise ImageRejected("over_memory_budget", f"{file_name} ran out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError (and, from some
        # plugins on hostile headers, the others).
        raise ImageRejected("corrupt_image", f"{file_name} is corrupt or truncated: {exc}") from None


def _format_being_opened(exc: BaseException) -> str | None:
    """The format name of the Pillow plugin that raised ``exc``, for the failure message.

    The plugin raises from its ``_open``/``load`` before ``Image.open`` returns, so the
    image object is only reachable through the traceback.
    """
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, ImageFile.ImageFile) and candidate.format:
            return f"{candidate.format} ({candidate.format_description})"
        tb = tb.tb_next
    return None


#: With draft decoding, a JPEG is decoded at the smallest DCT scale that keeps both sides
#: at least this many times the model input's larger side, then resized as usual.
DRAFT_MARGIN = 2


def decode_image(
    path: Path,
    size: tuple[int, int],
    resize: str,
    limits: Limits = Limits(),
    *,
    draft: bool = True,
    roots: Sequence[Path] | None = None,
) -> DecodedFile:
    """Read ``path`` and return a uint8 tensor of ``size`` (height, width) plus metadata.

    ``draft``: decode a large JPEG at a reduced scale first (see :func:`decode_bytes`).
    ``roots``: the opened file must really be inside one (:func:`read_file`).
    """
    return decode_data(read_file(path, limits, roots), path.name, size, resize, limits, draft=draft)


def check_size(data: bytes, name: str, limits: Limits) -> None:
    """The file checks of :func:`read_file` for bytes that arrived without a file (frames)."""
    if not data:
        raise ImageRejected("empty_file", f"{name} is empty (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise ImageRejected(
            "file_too_large", f"{name} is {len(data):,} bytes, over the {limits.max_file_bytes:,}-byte limit"
        )


def decode_data(
    data: bytes,
    name: str,
    size: tuple[int, int],
    resize: str,
    limits: Limits = Limits(),
    *,
    draft: bool = True,
) -> DecodedFile:
    """:func:`decode_image` for an image already in memory (a file's bytes, a frame)."""
    from models.preprocess import fit_to_input

    check_size(data, name, limits)
    opened = decode_bytes(data, name, limits, at_least=DRAFT_MARGIN * max(size) if draft else None)
    tensor = fit_to_input(opened.image, size, resize)
    meta = ImageMeta(
        file_name=name,
        width=opened.width,
        height=opened.height,
        format=opened.format,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return DecodedFile(np.ascontiguousarray(tensor, dtype=np.uint8), meta)
