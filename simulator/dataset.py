"""A demo dataset from images that ship inside wheels (no downloads).

``skimage.data`` bundles a handful of photographs (a cat, coffee, a rocket,
an astronaut...) and matplotlib ships ``grace_hopper.jpg``. Each is written in
a few variants (mirrored, cropped, rotated, scaled, PNG) so that a demo or a
test has dozens of distinct real images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

#: Photographs bundled in the scikit-image wheel (others need a download).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "horse",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "retina",
)

Variant = Callable[[Image.Image], Image.Image]

VARIANTS: dict[str, Variant] = {
    "orig": lambda im: im,
    "mirror": ImageOps.mirror,
    "crop": lambda im: im.crop(
        (im.width // 8, im.height // 8, im.width - im.width // 8, im.height - im.height // 8)
    ),
    "rot90": lambda im: im.rotate(90, expand=True),
    "small": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2))),
}


def _demo_packages() -> tuple[Any, Any]:
    try:
        import matplotlib.cbook
        import skimage.data
    except ImportError as exc:
        raise RuntimeError(
            f"the demo dataset needs the extra imgflow[demo] ({exc.name} is not installed); "
            "or give a folder of your own images (--folder)"
        ) from exc
    return skimage.data, matplotlib.cbook


def base_images() -> Iterator[tuple[str, Image.Image]]:
    skimage_data, cbook = _demo_packages()

    for name in SKIMAGE_PHOTOS:
        try:
            array = getattr(skimage_data, name)()
        except Exception as exc:  # a photo that would need a download
            log.debug("skipping skimage.data.%s: %s", name, exc)
            continue
        array = np.asarray(array)
        if array.dtype != np.uint8:
            array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255).astype(np.uint8)
        yield name, Image.fromarray(array)
    sample: Any = cbook.get_sample_data("grace_hopper.jpg")  # a file object for a .jpg
    with sample as fh:
        yield "grace_hopper", Image.open(fh).convert("RGB")


def write_dataset(folder: Path, variants: int = len(VARIANTS)) -> list[Path]:
    """Write the demo images into ``folder`` (idempotent); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    chosen = list(VARIANTS.items())[:variants]
    for name, image in base_images():
        for variant, transform in chosen:
            ext = "png" if variant == "small" else "jpg"
            path = folder / f"{name}-{variant}.{ext}"
            if not path.exists():
                out = transform(image)
                if ext == "jpg" and out.mode not in ("RGB", "L"):
                    out = out.convert("RGB")
                tmp = path.with_suffix(".tmp")
                out.save(tmp, format="PNG" if ext == "png" else "JPEG", quality=92)
                tmp.rename(path)
            written.append(path)
    return written


def write_camera_dataset(
    folder: Path, count: int = 300, size: tuple[int, int] = (1280, 960), seed: int = 1
) -> list[Path]:
    """``count`` distinct camera-sized JPEGs (width x height ``size``), for benchmarks.

    Each is a random crop (60-100% of each side) of one of the bundled photos, scaled to
    ``size`` and mirrored half of the time, saved at quality 90 (~150-180 KB at 1280x960).
    Deterministic for a ``seed``; files already written are kept.
    """
    import random

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases = [image.convert("RGB") for _, image in base_images()]
    written: list[Path] = []
    for i in range(count):
        base = bases[i % len(bases)]
        f = rng.uniform(0.6, 1.0)
        w, h = int(base.width * f), int(base.height * f)
        x, y = rng.randint(0, base.width - w), rng.randint(0, base.height - h)
        mirror = rng.random() < 0.5
        path = folder / f"camera-{i:04d}.jpg"
        if not path.exists():
            out = base.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
            out = ImageOps.mirror(out) if mirror else out
            tmp = path.with_suffix(".tmp")
            out.save(tmp, format="JPEG", quality=90)
            tmp.rename(path)
        written.append(path)
    return written


def _save(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG" if path.suffix == ".png" else "JPEG", quality=92)
    tmp.rename(path)


def write_faces_dataset(folder: Path) -> dict[str, list[Path]]:
    """A labelled folder for binary training: ``face/`` and ``other/``, 100 images each.

    From scikit-image's ``lfw_subset()`` (in its wheel): 25x25 grey crops, the first 100 faces
    from Labeled Faces in the Wild, the other 100 non-face patches of the same photographs.
    Files already written are kept.
    """
    skimage_data, _ = _demo_packages()
    crops = np.asarray(skimage_data.lfw_subset())
    written: dict[str, list[Path]] = {"face": [], "other": []}
    for i, crop in enumerate(crops):
        label = "face" if i < 100 else "other"
        (folder / label).mkdir(parents=True, exist_ok=True)
        path = folder / label / f"lfw-{i:03d}.png"
        if not path.exists():
            _save(Image.fromarray((crop * 255).round().astype(np.uint8)), path)
        written[label].append(path)
    return written


def write_photo_classes(
    folder: Path,
    photos: tuple[str, ...] = ("chelsea", "coffee", "rocket", "astronaut"),
    per_label: int = 20,
    size: tuple[int, int] = (320, 240),
    seed: int = 1,
) -> dict[str, list[Path]]:
    """A labelled folder for multi-class training: one sub-folder per bundled photo, each with
    ``per_label`` random crops (40-100% of each side), mirrored half of the time.

    Deterministic for a ``seed``; files already written are kept.
    """
    import random

    rng = random.Random(seed)
    bases = {name: image.convert("RGB") for name, image in base_images() if name in photos}
    missing = sorted(set(photos) - set(bases))
    if missing:
        raise ValueError(f"not bundled photos: {', '.join(missing)}")
    written: dict[str, list[Path]] = {}
    for name in photos:
        base = bases[name]
        (folder / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_label):
            f = rng.uniform(0.4, 1.0)
            w, h = int(base.width * f), int(base.height * f)
            x, y = rng.randint(0, base.width - w), rng.randint(0, base.height - h)
            mirror = rng.random() < 0.5
            path = folder / name / f"{name}-{i:03d}.jpg"
            if not path.exists():
                out = base.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
                _save(ImageOps.mirror(out) if mirror else out, path)
            written[name].append(path)
    return written
