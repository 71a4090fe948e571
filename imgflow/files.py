"""What counts as an image file, for every source that finds files on disk.

``submit`` expands folders with it, the watcher ignores other names with it and
the simulator lists its dataset with it, so a file that one source takes is
taken by all of them.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
