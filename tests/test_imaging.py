"""Pure decode: odd images become RGB tensors, bad files get a stable failure kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgflow.imaging import ImageRejected, Limits, decode_image
from tests.images import bad_inputs, dds_with_unknown_pixel_format, odd_images

LIMITS = Limits(max_file_bytes=5 * 2**20, max_pixels=4_000_000)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imgs")


def test_odd_but_valid_images_decode_to_uint8_rgb(folder: Path):
    for name, path in odd_images(folder / "odd").items():
        out = decode_image(path, (224, 224), "center_crop", LIMITS)
        assert out.tensor.shape == (224, 224, 3), name
        assert out.tensor.dtype == np.uint8, name
        assert out.meta.file_name == name and out.meta.bytes == path.stat().st_size
        assert len(out.meta.sha256) == 64


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "not_an_image", "truncated_jpeg", "corrupt_png", "decompression_bomb", "directory"],
)
def test_bad_files_are_rejected_with_their_kind(folder: Path, case: str):
    path, kind = bad_inputs(folder / "bad", LIMITS.max_pixels)[case]
    with pytest.raises(ImageRejected) as info:
        decode_image(path, (224, 224), "center_crop", LIMITS)
    assert info.value.kind == kind
    assert info.value.message


def test_oversize_file_is_rejected_before_reading(folder: Path):
    path = folder / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(ImageRejected) as info:
        decode_image(path, (224, 224), "center_crop", Limits(max_file_bytes=10, max_pixels=10**6))
    assert info.value.kind == "file_too_large"


def test_exif_orientation_is_applied(folder: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = folder / "portrait.jpg"
    Image.new("RGB", (300, 100), (10, 200, 10)).save(path, exif=exif)
    out = decode_image(path, (32, 32), "stretch", LIMITS)
    assert (out.meta.width, out.meta.height) == (100, 300)


def test_transparency_is_composited_on_white(folder: Path):
    path = folder / "clear.png"
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(path)
    out = decode_image(path, (8, 8), "stretch", LIMITS)
    assert out.tensor.min() == 255  # fully transparent red -> white


def test_sixteen_bit_greyscale_keeps_its_range(folder: Path):
    path = folder / "ramp16.png"
    ramp = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (16, 1))
    Image.fromarray(ramp).save(path)
    out = decode_image(path, (16, 256), "stretch", LIMITS)
    assert out.tensor[..., 0].min() <= 2 and out.tensor[..., 0].max() >= 253


def test_a_format_variant_pillow_cannot_decode_is_unsupported_format(folder: Path):
    """Pillow raises NotImplementedError for it; that must not end as an internal error."""
    import json

    from imgflow.failures import failure_for
    from imgflow.records import ImagePath

    path = dds_with_unknown_pixel_format(folder / "texture.dds")
    with pytest.raises(ImageRejected) as info:
        decode_image(path, (224, 224), "center_crop", LIMITS)
    assert info.value.kind == "unsupported_format"
    assert "texture.dds" in info.value.message and "DDS" in info.value.message

    item = ImagePath(image_id="dds-1", path=str(path), source="test", submitted_at=1.0)
    key, value = failure_for("decode", item, info.value)
    record = json.loads(value)
    assert key == "dds-1"
    assert record["kind"] == "unsupported_format" and record["stage"] == "decode"
    assert record["message"] == info.value.message and record["ref"]["path"] == str(path)


def _camera_jpeg(path: Path, size=(1280, 960), orientation: int | None = None) -> Path:
    """A photo-like JPEG: smooth gradients and a sharp edge, as a camera would give."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], ((x // 40 + y // 40) % 2) * 200], axis=-1)
    img = Image.fromarray(rgb.astype(np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif.tobytes())
    return path


def test_draft_decoding_reports_the_full_size_and_stays_close(folder: Path):
    path = _camera_jpeg(folder / "camera.jpg")
    full = decode_image(path, (224, 224), "center_crop", LIMITS, draft=False)
    fast = decode_image(path, (224, 224), "center_crop", LIMITS)
    assert (fast.meta.width, fast.meta.height) == (full.meta.width, full.meta.height) == (1280, 960)
    assert fast.meta.sha256 == full.meta.sha256 and fast.meta.bytes == full.meta.bytes
    diff = np.abs(fast.tensor.astype(int) - full.tensor.astype(int))
    assert diff.mean() < 2.0, diff.mean()


def test_draft_decoding_reduces_the_jpeg_scale_but_never_below_twice_the_input(folder: Path):
    from imgflow.imaging import decode_bytes

    data = _camera_jpeg(folder / "camera2.jpg").read_bytes()
    opened = decode_bytes(data, "camera2.jpg", LIMITS, at_least=448)
    assert opened.image.size == (640, 480)  # 1/2 scale: 1/4 would give 320x240, under 448
    assert (opened.width, opened.height) == (1280, 960)
    assert decode_bytes(data, "camera2.jpg", LIMITS).image.size == (1280, 960)


def test_draft_decoding_keeps_the_exif_orientation(folder: Path):
    path = _camera_jpeg(folder / "rotated.jpg", orientation=6)  # stored landscape, shown portrait
    full = decode_image(path, (224, 224), "stretch", LIMITS, draft=False)
    fast = decode_image(path, (224, 224), "stretch", LIMITS)
    assert (fast.meta.width, fast.meta.height) == (full.meta.width, full.meta.height) == (960, 1280)
    assert np.abs(fast.tensor.astype(int) - full.tensor.astype(int)).mean() < 2.0
