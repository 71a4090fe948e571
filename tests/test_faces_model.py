"""The face engine on real photographs that ship in wheels, and the pure matching functions.

- ``skimage.data.astronaut()``: Eileen Collins, NASA portrait (public domain).
- Grace Hopper, ``matplotlib``'s sample ``grace_hopper.jpg`` (US Navy photo, public domain): the
  other person.
- ``skimage.data.coffee()`` and ``chelsea()`` (the cat): no face.

Loading the engine takes ~6 s (TensorFlow and a 94 MB graph), so the tests that use it are
``slow``; the matching functions run in ``make test-fast``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from models.faces import EMBEDDING_DIM, MATCH_THRESHOLD, FaceEngine, FaceHit, distance, nearest

slow = pytest.mark.slow

#: Eileen Collins' face in astronaut() (512x512), checked by eye on an enlarged crop with a
#: 10-pixel grid: cheek to cheek, from the forehead under the fringe to the chin.
ASTRONAUT_FACE = (186.0, 80.0, 268.0, 178.0)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / area


def astronaut() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.astronaut())


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        return np.asarray(photo.convert("RGB"))


def no_face_photos() -> list[np.ndarray]:
    import skimage.data

    return [skimage.data.coffee(), skimage.data.chelsea()]


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture(scope="module")
def engine() -> Iterator[FaceEngine]:
    yield FaceEngine(threads=1)


# Matching: pure functions.


def test_distance_is_euclidean_on_the_vectors() -> None:
    assert distance(unit(1, 0), unit(0, 1)) == pytest.approx(math.sqrt(2))
    assert distance(unit(1, 0), unit(1, 0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        distance(unit(1, 0), unit(1, 0, 0))


def test_nearest_names_the_closest_person_under_the_threshold() -> None:
    known = [("ada", unit(1, 0, 0)), ("grace", unit(0, 1, 0)), ("grace", unit(0.1, 1, 0))]
    name, found = nearest(unit(0.05, 1, 0), known)
    assert name == "grace"
    assert found < 0.06


def test_nearest_is_unknown_beyond_the_threshold() -> None:
    known = [("ada", unit(1, 0, 0)), ("grace", unit(0, 1, 0))]
    query = unit(0, 0, 1)  # sqrt(2) from both
    assert nearest(query, known) == ("unknown", pytest.approx(math.sqrt(2)))
    assert math.sqrt(2) > MATCH_THRESHOLD
    assert nearest(query, known, threshold=1.5)[0] in {"ada", "grace"}


def test_nearest_with_nobody_enrolled_is_unknown_at_infinity() -> None:
    assert nearest(unit(1, 0), []) == ("unknown", math.inf)


# The engine on real photographs.


@slow
def test_finds_the_astronauts_face_where_it_is(engine: FaceEngine) -> None:
    [hits] = engine.faces([astronaut()])
    assert len(hits) == 1
    face = hits[0]
    assert iou(face.box, ASTRONAUT_FACE) >= 0.5, face.box
    assert engine.min_score <= face.score <= 1.0
    assert face.embedding.dtype == np.float32
    assert face.embedding.shape == (EMBEDDING_DIM,)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)


@slow
def test_a_flipped_rescaled_or_brightened_photo_is_the_same_person(engine: FaceEngine) -> None:
    image = astronaut()
    reference = engine.embed_one(image)
    assert reference is not None
    flipped = np.ascontiguousarray(image[:, ::-1])
    smaller_brighter = np.asarray(Image.fromarray(image).resize((307, 307), Image.Resampling.BILINEAR))
    smaller_brighter = np.clip(smaller_brighter.astype(np.float32) * 1.3 + 10, 0, 255).astype(np.uint8)
    cropped = np.ascontiguousarray(image[20:-40, 30:-10])

    for variant in (flipped, smaller_brighter, cropped):
        hit = engine.embed_one(variant)
        assert hit is not None
        assert distance(hit.embedding, reference.embedding) < MATCH_THRESHOLD

    # The box follows the face: mirrored with the image.
    flipped_hit = engine.embed_one(flipped)
    assert flipped_hit is not None
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert iou(flipped_hit.box, (512 - x1, y0, 512 - x0, y1)) >= 0.5


@slow
def test_another_person_is_not_the_astronaut(engine: FaceEngine) -> None:
    astronaut_hit = engine.embed_one(astronaut())
    grace_hit = engine.embed_one(grace_hopper())
    assert astronaut_hit is not None and grace_hit is not None
    assert distance(astronaut_hit.embedding, grace_hit.embedding) > MATCH_THRESHOLD

    known = [("eileen collins", astronaut_hit.embedding)]
    name, found = nearest(grace_hit.embedding, known)
    assert name == "unknown"
    assert found > MATCH_THRESHOLD
    flipped = engine.embed_one(np.ascontiguousarray(astronaut()[:, ::-1]))
    assert flipped is not None
    assert nearest(flipped.embedding, [*known, ("grace hopper", grace_hit.embedding)])[0] == "eileen collins"


@slow
def test_photos_without_a_face_have_none(engine: FaceEngine) -> None:
    blank = np.zeros((480, 640, 3), dtype=np.uint8)
    tiny = np.full((5, 7, 3), 128, dtype=np.uint8)  # smaller than the detector's 12-pixel window
    assert engine.faces([*no_face_photos(), blank, tiny]) == [[], [], [], []]
    assert engine.embed_one(no_face_photos()[0]) is None
    assert engine.faces([]) == []


@slow
def test_a_batch_of_mixed_sizes_answers_as_image_by_image(engine: FaceEngine) -> None:
    # A faceless image of another size before a face: mtcnn 1.0.0 moved the next image's box by
    # the faceless one's padding (Grace Hopper's landed 100 px up) unless padded top-left.
    images = [astronaut(), no_face_photos()[0], grace_hopper()]
    batch = engine.faces(images)
    alone = [engine.faces([image])[0] for image in images]
    assert [len(hits) for hits in batch] == [1, 0, 1]
    for together, single in zip(batch, alone, strict=True):
        assert len(together) == len(single)
        for a, b in zip(together, single, strict=True):
            # The pyramid follows the batch's largest image, so boxes move by a pixel or two.
            assert iou(a.box, b.box) >= 0.9
            assert distance(a.embedding, b.embedding) < 0.3


@slow
def test_several_faces_in_one_image_come_most_confident_first(engine: FaceEngine) -> None:
    side = np.zeros((512, 1024 + 512, 3), dtype=np.uint8)
    side[:, :512] = astronaut()
    side[:, 512:1024] = np.asarray(Image.fromarray(grace_hopper()).resize((512, 512)))
    side[:, 1024:] = astronaut()[:, ::-1]
    [hits] = engine.faces([side])
    assert len(hits) == 3
    assert all(isinstance(hit, FaceHit) for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert sorted(hit.box[0] // 512 for hit in hits) == [0, 1, 2]


@slow
def test_rejects_what_is_not_an_rgb_uint8_image(engine: FaceEngine) -> None:
    with pytest.raises(ValueError, match="uint8"):
        engine.faces([astronaut().astype(np.float32)])
    with pytest.raises(ValueError, match="RGB"):
        engine.faces([astronaut()[:, :, 0]])
