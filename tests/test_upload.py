"""Upload handling without a server: names, sniffing, streaming limits, all-or-nothing.

The HTTP view itself is exercised end to end in ``test_ingest_e2e.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from sources.upload import Refused, UploadSession, clean_name, sniff


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buf, format=fmt)
    return buf.getvalue()


class Stream:
    """``read_chunk`` over bytes, like aiohttp's multipart part."""

    def __init__(self, data: bytes, chunk: int = 1000) -> None:
        self.data = data
        self.chunk = chunk
        self.read = 0

    async def read_chunk(self, size: int) -> bytes:
        out = self.data[self.read : self.read + min(size, self.chunk)]
        self.read += len(out)
        return out


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cat.jpg", "cat.jpg"),
        ("../../etc/passwd", "passwd"),
        ("..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/abs/path/x.png", "x.png"),
        (".htaccess", "htaccess"),
        ("new\nline\x00.jpg", "newline.jpg"),
        ("", ""),
        (None, ""),
        ("..", ""),
    ],
)
def test_client_file_names_are_reduced_to_a_display_name(raw, clean):
    assert clean_name(raw) == clean


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_images_are_recognised_by_content(tmp_path: Path, fmt: str):
    path = tmp_path / "upload.bin"  # the name says nothing
    path.write_bytes(image_bytes(fmt))
    assert sniff(path, 10_000) == (fmt, 40, 30)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"just text\n" * 50, 415, "not an image"),
        (b"%PDF-1.4\n" + b"0" * 500, 415, "not an image"),
        (image_bytes("PNG")[:60], 415, "corrupt or truncated"),
        (image_bytes("ICO"), 415, "not an image"),  # its plugin never sees the bytes
        (image_bytes("PNG", (200, 100)), 413, "pixel limit"),
    ],
)
def test_non_images_and_oversized_images_are_refused(tmp_path: Path, data: bytes, status: int, words: str):
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with pytest.raises(Refused) as info:
        sniff(path, 10_000)
    assert info.value.status == status and words in info.value.message


async def test_a_session_streams_files_and_commits_them_under_generated_names(tmp_path: Path):
    session = UploadSession(tmp_path / "uploads", max_bytes=100_000)
    first = await session.receive(Stream(image_bytes("JPEG")), "../../etc/passwd")
    second = await session.receive(Stream(image_bytes("PNG")), "b.png")
    assert first.tmp.parent == tmp_path / "uploads" / ".incoming"
    session.commit()
    assert first.final is not None and second.final is not None
    assert first.final.name == f"{first.image_id}.jpg" and second.final.name == f"{second.image_id}.png"
    assert first.final.parent.parent == tmp_path / "uploads"
    assert first.original_name == "passwd"
    assert not list((tmp_path / "uploads" / ".incoming").iterdir())
    assert first.as_json(tmp_path / "uploads")["stored_as"].endswith(f"/{first.image_id}.jpg")


async def test_a_file_over_the_limit_stops_the_stream_early(tmp_path: Path):
    session = UploadSession(tmp_path / "uploads", max_bytes=5_000)
    stream = Stream(b"\xff\xd8\xff" + b"\x00" * 50_000)
    with pytest.raises(Refused) as info:
        await session.receive(stream, "big.jpg")
    assert info.value.status == 413 and info.value.file_name == "big.jpg"
    assert stream.read < 10_000  # not read to the end
    session.discard()
    assert not [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]


async def test_one_bad_file_discards_the_whole_request(tmp_path: Path):
    session = UploadSession(tmp_path / "uploads", max_bytes=100_000)
    await session.receive(Stream(image_bytes("JPEG")), "good.jpg")
    with pytest.raises(Refused) as info:
        await session.receive(Stream(b"hello" * 100), "notes.jpg")
    assert info.value.status == 415 and info.value.file_name == "notes.jpg"
    session.discard()
    assert not [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]


async def test_an_empty_file_is_refused(tmp_path: Path):
    session = UploadSession(tmp_path / "uploads", max_bytes=100)
    with pytest.raises(Refused) as info:
        await session.receive(Stream(b""), "empty.jpg")
    assert info.value.status == 415
