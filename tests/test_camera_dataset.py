"""The benchmark's camera-sized input: distinct 1280x960 JPEGs, made from bundled photos."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from simulator.dataset import write_camera_dataset


def test_camera_images_are_distinct_camera_sized_jpegs_and_reproducible(tmp_path: Path):
    paths = write_camera_dataset(tmp_path / "a", count=24)
    assert len(paths) == 24
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 24
    for p in paths[:5]:
        with Image.open(p) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (1280, 960), "RGB")
    again = write_camera_dataset(tmp_path / "b", count=24)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    mtime = paths[0].stat().st_mtime_ns
    write_camera_dataset(tmp_path / "a", count=24)  # kept, not rewritten
    assert paths[0].stat().st_mtime_ns == mtime
