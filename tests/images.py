"""Odd-but-valid and bad image files, made on the fly for tests (docs/design.md §7)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A real photograph (skimage's cat), resized."""
    import skimage.data

    return Image.fromarray(skimage.data.chelsea()).resize(size)


def odd_images(folder: Path) -> dict[str, Path]:
    """Valid images in unusual modes and shapes; each must be classified."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo()
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str, **kw) -> None:
        path = folder / name
        image.save(path, format=fmt, **kw)
        out[name] = path

    save("cmyk.jpg", base.convert("CMYK"), "JPEG")
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("grey16.png", Image.fromarray(grey16), "PNG")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    save("palette-transparent.png", palette, "PNG", transparency=0)
    save("la.png", base.convert("LA"), "PNG")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("rgba.png", rgba, "PNG")
    save("grey.jpg", base.convert("L"), "JPEG")
    frames = [base, base.rotate(20), base.rotate(40)]
    frames[0].save(folder / "animated.gif", format="GIF", save_all=True, append_images=frames[1:])
    out["animated.gif"] = folder / "animated.gif"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    save("exif-rotated.jpg", base, "JPEG", exif=exif)
    save("one-pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")
    save("wide.png", base.resize((2000, 20)), "PNG")
    save("png-named.jpg", base, "PNG")  # wrong extension: content decides
    save("bmp.bmp", base, "BMP")
    save("webp.webp", base, "WEBP")
    return out


def bad_inputs(folder: Path, bomb_pixels: int) -> dict[str, tuple[Path, str]]:
    """Files that must fail, with the failure kind each must get."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    out["missing"] = (folder / "does-not-exist.jpg", "missing_file")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    out["empty"] = (empty, "empty_file")
    text = folder / "notes.jpg"
    text.write_text("this is a text file pretending to be a JPEG\n" * 20)
    out["not_an_image"] = (text, "not_an_image")
    buf = io.BytesIO()
    photo((640, 480)).save(buf, format="JPEG", quality=95)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated_jpeg"] = (truncated, "corrupt_image")
    png = io.BytesIO()
    photo((200, 200)).save(png, format="PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[200:260] = b"\x00" * 60  # damage IDAT data: CRC and zlib errors
    broken = folder / "corrupt.png"
    broken.write_bytes(bytes(corrupt))
    out["corrupt_png"] = (broken, "corrupt_image")
    side = int(bomb_pixels**0.5) + 64
    bomb = folder / "bomb.png"
    Image.new("L", (side, side), 0).save(bomb, format="PNG", optimize=True)
    out["decompression_bomb"] = (bomb, "decompression_bomb")
    folder_path = folder / "a-folder.jpg"
    folder_path.mkdir(exist_ok=True)
    out["directory"] = (folder_path, "not_a_file")
    return out


def dds_with_unknown_pixel_format(path: Path) -> Path:
    """A DDS file whose header names a FourCC Pillow has no decoder for.

    Pillow's DDS plugin recognises the file and then raises ``NotImplementedError``
    (not ``OSError``), which is how several plugins report a variant they cannot read.
    """
    import struct

    width = height = 4
    header = struct.pack("<7I", 124, 0x1007, height, width, 0, 0, 0)  # size, flags, h, w, pitch...
    header += b"\x00" * 44  # reserved
    ddpf_fourcc = 0x4
    header += struct.pack("<4I", 32, ddpf_fourcc, int.from_bytes(b"ZZZZ", "little"), 0)
    header += b"\x00" * 40  # masks, caps
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DDS " + header + b"\x00" * (width * height * 4))
    return path
