"""Faces in the chain, without the engine: the face spec, letterboxing and boxes back in the
image's pixels, naming faces, and the people store on a real MongoDB-protocol server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.faces import DEFAULT_FACE_SPEC
from imgflow import people
from models.face_model import NO_FACE, UNKNOWN, describe_faces, face_answer
from models.preprocess import fit_to_input, letterbox_scale
from models.spec import ModelSpecError, load_spec


@dataclass(frozen=True)
class Hit:
    """A face as the engine reports it (models/faces.py FaceHit): a value, not a stand-in service."""

    box: tuple[float, float, float, float]
    score: float
    embedding: np.ndarray


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_bundled_face_spec_loads_without_artefact_or_labels():
    spec = load_spec(DEFAULT_FACE_SPEC)
    assert (spec.format, spec.output, spec.resize, spec.labels) == ("faces", "faces", "letterbox", [])
    assert spec.input_size == (360, 480)


@pytest.mark.parametrize(
    "extra, message",
    [
        ('labels = ["a", "b"]\n', "no labels"),
        ('format = "keras"\nartefact = "m.keras"\n', "goes with format"),
    ],
)
def test_a_face_spec_refuses_labels_and_other_formats(tmp_path: Path, extra: str, message: str):
    base = DEFAULT_FACE_SPEC.read_text()
    if extra.startswith("format"):
        base = base.replace('format = "faces"\n', "")
    spec = tmp_path / "faces.toml"
    spec.write_text(base + extra)
    with pytest.raises(ModelSpecError, match=message):
        load_spec(spec)


def test_letterbox_fits_the_whole_image_top_left_and_pads_with_black():
    image = Image.new("RGB", (1280, 720), (200, 100, 50))
    tensor = fit_to_input(image, (480, 640), "letterbox")
    assert tensor.shape == (480, 640, 3)
    scale = letterbox_scale(1280, 720, (480, 640))
    assert scale == 0.5  # width decides: 1280 -> 640, 720 -> 360
    assert (tensor[:360] == (200, 100, 50)).all() and (tensor[360:] == 0).all()
    small = fit_to_input(Image.new("RGB", (100, 50), (9, 9, 9)), (480, 640), "letterbox")
    assert (small[:50, :100] == 9).all() and (small[50:] == 0).all()  # never scaled up


def test_faces_come_back_in_the_original_pixels_named_after_the_nearest_person():
    spec = load_spec(DEFAULT_FACE_SPEC).model_copy(update={"input_size": (480, 640)})
    ada, bob = unit(1, 0, 0), unit(0, 1, 0)
    hits = [
        Hit((100.0, 50.0, 150.0, 110.0), 0.99, unit(0.95, 0.05, 0)),  # close to ada
        Hit((300.0, 200.0, 340.0, 250.0), 0.93, unit(0, 0, 1)),  # nobody
    ]
    faces = describe_faces(hits, (1280, 960), spec, [("ada", ada), ("bob", bob)], threshold=0.6)
    # 1280x960 letterboxed into 640x480: scale 0.5, boxes double.
    assert faces[0]["box"] == [200, 100, 300, 220] and faces[1]["box"] == [600, 400, 680, 500]
    assert [f["identity"] for f in faces] == ["ada", UNKNOWN]
    assert faces[0]["distance"] < 0.6 and faces[1]["distance"] > 0.6
    assert len(faces[0]["embedding"]) == 3
    label, score, top = face_answer(faces, top_k=5)
    assert (label, score) == ("ada", 0.99) and [t["label"] for t in top] == ["ada", UNKNOWN]
    assert face_answer([], top_k=5) == (NO_FACE, 0.0, [])
    nobody_known = describe_faces(hits[:1], (640, 480), spec, [], threshold=0.6)
    assert nobody_known[0]["identity"] == UNKNOWN and nobody_known[0]["distance"] is None


@pytest.mark.e2e
def test_people_are_enrolled_per_model_version_listed_and_removed(scratch_db):
    people.enroll(scratch_db, "Ada", "faces", "1", [("a1.jpg", unit(1, 0)), ("a2.jpg", unit(0.9, 0.1))])
    people.enroll(scratch_db, "Ada", "faces", "1", [("a3.jpg", unit(1, 0.1))])
    people.enroll(scratch_db, "Ada", "faces", "2", [("a1.jpg", unit(0, 1))])
    people.enroll(scratch_db, "Bob", "faces", "1", [("b.jpg", unit(0, 1))])
    listed = {(p["name"], p["model_version"]): p["embeddings"] for p in people.listing(scratch_db)}
    assert listed == {("Ada", "1"): 3, ("Ada", "2"): 1, ("Bob", "1"): 1}
    known = people.known(scratch_db, "faces", "1")
    assert sorted(name for name, _ in known) == ["Ada", "Ada", "Ada", "Bob"]
    assert all(v.dtype == np.float32 and v.shape == (2,) for _, v in known)
    with pytest.raises(ValueError):
        people.enroll(scratch_db, "unknown", "faces", "1", [("x.jpg", unit(1, 0))])
    assert people.remove(scratch_db, "Ada") == 2
    assert [p["name"] for p in people.listing(scratch_db)] == ["Bob"]


@pytest.mark.e2e
async def test_a_workers_copy_of_the_people_is_read_again_after_its_refresh(scratch_db):
    cache = people.People(scratch_db, refresh=0.0)
    assert await cache.of("faces", "1") == []
    people.enroll(scratch_db, "Ada", "faces", "1", [("a.jpg", unit(1, 0))])
    assert [name for name, _ in await cache.of("faces", "1")] == ["Ada"]
    held = people.People(scratch_db, refresh=3600.0)
    assert len(await held.of("faces", "1")) == 1
    people.enroll(scratch_db, "Bob", "faces", "1", [("b.jpg", unit(0, 1))])
    assert len(await held.of("faces", "1")) == 1  # within its refresh: the copy it has
