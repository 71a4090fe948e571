"""Turning a file into a model-sized uint8 tensor: pure functions, no Kafka.

Every way a file can be unusable raises :class:`ImageRejected` with a stable
``kind`` (for filters and metrics) and a message a person understands.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

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


@dataclass(frozen=True)
class DecodedFile:
    tensor: np.ndarray  # uint8, HxWx3
    file_name: str
    width: int
    height: int
    format: str
    bytes: int
    sha256: str


def read_file(path: Path, limits: Limits) -> bytes:
    """Read the whole file, refusing what is missing, empty or too large."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageRejected("missing_file", f"file not found: {path}") from None
    except PermissionError:
        raise ImageRejected("unreadable_file", f"permission denied: {path}") from None
    except OSError as exc:
        raise ImageRejected("unreadable_file", f"cannot stat {path}: {exc.strerror}") from None
    if not path.is_file():
        raise ImageRejected("not_a_file", f"not a regular file: {path}")
    if stat.st_size == 0:
        raise ImageRejected("empty_file", f"file is empty (0 bytes): {path}")
    if stat.st_size > limits.max_file_bytes:
        raise ImageRejected(
            "file_too_large",
            f"file is {stat.st_size:,} bytes, over the {limits.max_file_bytes:,}-byte limit",
        )
    try:
        return path.read_bytes()
    except PermissionError:
        raise ImageRejected("unreadable_file", f"permission denied: {path}") from None
    except OSError as exc:
        raise ImageRejected("unreadable_file", f"cannot read {path}: {exc.strerror}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "I" and arr.max() <= 65535 and arr.max() > 255:
            top = 65535.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
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


@dataclass(frozen=True)
class Opened:
    """An image decoded (perhaps at a reduced scale) and oriented, with its full size."""

    image: Image.Image  # RGB
    format: str
    width: int  # of the full image, as oriented
    height: int


def decode_bytes(data: bytes, file_name: str, limits: Limits, at_least: int | None = None) -> Opened:
    """Open, validate and orient an image.

    ``at_least``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode: the
    codec skips the finest DCT coefficients, ~2-3x less work) as long as both sides stay at
    least this many pixels; the full size is still reported.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            img_format = img.format or "unknown"
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    "decompression_bomb",
                    f"{width}x{height} = {width * height:,} pixels, over the "
                    f"{limits.max_pixels:,}-pixel limit",
                )
            img.seek(0)  # first frame of animations
            if at_least and img_format == "JPEG":
                img.draft(None, (at_least, at_least))
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
        raise ImageRejected("not_an_image", f"{file_name} is not an image format Pillow can read") from None
    except NotImplementedError as exc:
        # A plugin recognised the format but not this variant of it (DDS pixel formats,
        # some BLP encodings): the file may be fine, Pillow just cannot decode it.
        fmt = _format_being_opened(exc) or "its image format"
        raise ImageRejected(
            "unsupported_format",
            f"{file_name} uses a variant of {fmt} that Pillow cannot decode: {exc}",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError.
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
    path: Path, size: tuple[int, int], resize: str, limits: Limits = Limits(), *, draft: bool = True
) -> DecodedFile:
    """Read ``path`` and return a uint8 tensor of ``size`` (height, width) plus metadata.

    ``draft``: decode a large JPEG at a reduced scale first (see :func:`decode_bytes`).
    """
    return decode_data(read_file(path, limits), path.name, size, resize, limits, draft=draft)


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
    return DecodedFile(
        tensor=np.ascontiguousarray(tensor, dtype=np.uint8),
        file_name=name,
        width=opened.width,
        height=opened.height,
        format=opened.format,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
