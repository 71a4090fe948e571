"""The files of an HTTP upload (``POST /images/``, view in ``web/upload.py``).

Choices, all for "never trust the client":

- The body is streamed to disk in chunks; a file over ``IMGFLOW_MAX_UPLOAD_BYTES``
  stops the upload with ``413`` (never read whole into memory). At most
  ``MAX_FILES`` files per request (more: ``413``).
- Content is sniffed with Pillow (``Image.open`` + ``verify``); only JPEG, PNG,
  GIF, BMP, TIFF and WebP are accepted, anything else (text, PDF, a corrupt
  file) gets ``415``. An image with more pixels than ``IMGFLOW_MAX_PIXELS`` gets ``413``.
- The file is saved as ``UPLOAD_DIR/YYYY-MM-DD/<image_id>.<ext>`` (extension
  from the sniffed format), written under ``UPLOAD_DIR/.incoming/`` first and
  renamed in when complete and synced, so readers never see half a file. The
  client's file name is never used as a path; its last component, cleaned, is
  kept as ``attrs.original_name``.
- A request is all or nothing: if any file is refused, none is kept or
  published. The images are published (:meth:`UploadSession.publish`, through
  the one publisher every source uses) only after every file is in place, and
  the view answers ``201`` only after the broker acknowledged every message; if
  publishing fails the files are removed and the answer is ``503``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from imgflow.records import ImagePath
from imgflow.settings import get_settings
from sources.publish import path_message, publish_paths

MAX_FILES = 100
CHUNK = 64 * 1024
FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
FORMATS["WEBP"] = ".webp"
ACCEPTED = "JPEG, PNG, GIF, BMP, TIFF or WebP"
RAW_TYPES = ("image/", "application/octet-stream")


class Refused(Exception):
    """An upload that cannot be accepted: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, file_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.file_name = file_name

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.file_name is not None:
            body["file"] = self.file_name
        return body


@dataclass
class Saved:
    """One uploaded file, sniffed, in its temporary place."""

    image_id: str
    tmp: Path
    original_name: str
    size: int
    format: str = ""
    width: int = 0
    height: int = 0
    final: Path | None = None
    #: Where it was put instead, with ``IMGFLOW_UPLOAD_URI`` (an object store).
    final_uri: str | None = None

    def as_json(self, root: Path) -> dict[str, Any]:
        stored_as = self.final_uri or (self.final.relative_to(root).as_posix() if self.final else None)
        return {
            "image_id": self.image_id,
            "file_name": self.original_name,
            "stored_as": stored_as,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": self.size,
            "result": f"/images/{self.image_id}",
        }


def clean_name(raw: str | None) -> str:
    """The last component of a client-side file name, printable, for display only."""
    if not raw:
        return ""
    # Some clients percent-encode the name (aiohttp, RFC 7578's advice); browsers and curl do not.
    name = PurePosixPath(unquote(raw).replace("\\", "/")).name
    name = "".join(c for c in unicodedata.normalize("NFC", name) if c.isprintable())
    return name.strip().lstrip(".")[:200]


def sniff(path: Path, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) of an image file, or :class:`Refused` (runs in a thread)."""
    from PIL import Image, UnidentifiedImageError

    from imgflow.settings import get_settings

    try:
        # Only the allowed formats' plugins look at the bytes (IMGFLOW_IMAGE_FORMATS).
        with Image.open(path, formats=get_settings().image_format_list) as im:
            fmt, (width, height) = im.format or "", im.size
            if fmt not in FORMATS:
                raise Refused(
                    415,
                    f"unsupported image format {fmt or 'unknown'}; send JPEG, PNG, GIF, BMP, TIFF or WebP",
                )
            if width * height >= max_pixels:  # as the decode stage counts it: the limit is refused
                raise Refused(
                    413, f"image is {width}x{height} pixels, at or over the {max_pixels:,}-pixel limit"
                )
            im.verify()
    except Refused:
        raise
    except Image.DecompressionBombError as exc:
        raise Refused(413, f"image has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise Refused(415, f"not an image ({ACCEPTED} expected)") from None
    except Exception as exc:  # truncated or corrupt data Pillow could not verify
        raise Refused(415, f"corrupt or truncated image: {exc}") from None
    return fmt, width, height


class UploadSession:
    """The files of one request; removed unless :meth:`commit` ran."""

    def __init__(
        self, root: Path, max_bytes: int, max_pixels: int | None = None, uri: str | None = None
    ) -> None:
        self.root = root
        #: Put the files under this object-store prefix instead of ``root`` (imgflow/objects.py);
        #: ``root`` still holds them while they are received and checked.
        self.uri = uri
        self.incoming = root / ".incoming"
        self.max_bytes = max_bytes
        self.max_pixels = get_settings().max_pixels if max_pixels is None else max_pixels
        self.files: list[Saved] = []

    async def receive_request(self, request: Any) -> None:
        """Every file of a multipart body, or the raw body as one file; :class:`Refused` otherwise."""
        ctype = request.content_type or ""
        length = request.content_length
        if length is not None and length > self.max_bytes * MAX_FILES + 2**20:
            raise Refused(413, f"request is larger than {MAX_FILES} files of {self.max_bytes:,} bytes")
        if ctype.startswith("multipart/"):
            from aiohttp import BodyPartReader

            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise Refused(400, "nested multipart bodies are not supported")
                    if part.filename is None and part.name not in ("file", "files", "image", "images"):
                        await part.release()  # an ordinary form field
                        continue
                    await self.receive(part, part.filename)
            except (ValueError, AssertionError) as exc:  # aiohttp's errors for a malformed body
                raise Refused(400, f"malformed multipart body: {exc}") from None
        elif ctype.startswith(RAW_TYPES):
            await self.receive(_RawBody(request.content), request.query.get("filename"))
        else:
            raise Refused(415, "send multipart/form-data with file parts, or an image as the body")
        if not self.files:
            raise Refused(400, "no file in the request: send multipart/form-data with a file part")

    async def receive(self, stream: Any, raw_name: str | None) -> Saved:
        """Stream one file to a temporary name, enforcing the size limit."""
        if len(self.files) >= MAX_FILES:
            raise Refused(413, f"at most {MAX_FILES} files per request")
        name = clean_name(raw_name)
        self.incoming.mkdir(parents=True, exist_ok=True)
        saved = Saved(uuid.uuid4().hex, self.incoming / f"{uuid.uuid4().hex}.part", name, 0)
        self.files.append(saved)
        with open(saved.tmp, "wb") as fh:
            while chunk := await stream.read_chunk(CHUNK):
                saved.size += len(chunk)
                if saved.size > self.max_bytes:
                    raise Refused(413, f"file is larger than the {self.max_bytes:,}-byte limit", name)
                fh.write(chunk)
            fh.flush()
            await asyncio.to_thread(os.fsync, fh.fileno())
        if saved.size == 0:
            raise Refused(415, "empty file", name)
        try:
            saved.format, saved.width, saved.height = await asyncio.to_thread(
                sniff, saved.tmp, self.max_pixels
            )
        except Refused as exc:
            exc.file_name = name
            raise
        return saved

    def commit(self) -> None:
        """Rename every file into place under a generated name (or put it in the object store)."""
        if self.uri is not None:
            from imgflow.objects import write_object

            prefix = f"{self.uri.rstrip('/')}/{time.strftime('%Y-%m-%d')}"
            for saved in self.files:
                saved.final_uri = f"{prefix}/{saved.image_id}{FORMATS[saved.format]}"
                write_object(saved.final_uri, saved.tmp.read_bytes())
                saved.tmp.unlink()
            return
        day = self.root / time.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        for saved in self.files:
            saved.final = day / f"{saved.image_id}{FORMATS[saved.format]}"
            os.replace(saved.tmp, saved.final)

    def messages(self) -> list[ImagePath]:
        """One path message per committed file, under the id its file is named after."""
        return [
            path_message(
                s.final_uri or s.final,  # type: ignore[arg-type]
                "upload",
                image_id=s.image_id,
                attrs={"original_name": s.original_name, "upload_bytes": s.size},
            )
            for s in self.files
        ]

    async def publish(self) -> list[str]:
        """Publish the committed files; returns their ids once the broker has them all."""
        return await publish_paths(self.messages())

    def discard(self) -> None:
        for saved in self.files:
            if saved.final_uri is not None:
                from imgflow.objects import remove_object

                with contextlib.suppress(Exception):  # best effort: the request fails either way
                    remove_object(saved.final_uri)
            for path in (saved.tmp, saved.final):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


class _RawBody:
    """``read_chunk`` over a request's raw body, like a multipart part."""

    def __init__(self, content: Any) -> None:
        self.content = content

    async def read_chunk(self, size: int) -> bytes:
        return await self.content.read(size)
