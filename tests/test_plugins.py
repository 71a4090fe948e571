"""The model plug-in interface (models/answers.py): the classify stage and the sink take any
model through it, and name no kind of model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.classify import classify_group
from imgflow.records import DecodedImage, ImageMeta, ImageRef, Prediction
from imgflow.storage import prediction_ops
from models.answers import DETAIL_FIELDS, Answer, Context, Model, stored_details
from models.spec import ModelSpec


def spec() -> ModelSpec:
    return ModelSpec(
        name="counter",
        version="7",
        format="keras",
        artefact=Path("/nowhere/m.keras"),
        input_size=(4, 4),
        resize="stretch",
        preprocessing="unit",
        output="softmax",
        labels=["dark", "bright"],
        spec_path=Path("/nowhere/model.toml"),
    )


class Brightness:
    """A plug-in written for this test, neither a classifier nor a face model: it names an
    image by its mean brightness and reports one "face" per image in its details."""

    def __init__(self) -> None:
        self.spec = spec()
        self.seen: dict[str, Any] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def _means(self, batch: np.ndarray) -> list[float]:
        return [float(image.mean()) for image in batch]

    async def answer(self, batch: np.ndarray, context: Context) -> list[Answer]:
        means = await context.run(self._means, batch)
        known = await context.known(self.spec.name, self.spec.version) if context.known else []
        self.seen = {"sizes": list(context.sizes), "known": known}
        return [
            Answer(
                "bright" if m > 127 else "dark",
                m / 255,
                [{"label": "bright" if m > 127 else "dark", "score": m / 255}],
                {"faces": [{"box": [0, 0, w, h], "score": 1.0, "embedding": [0.5, 0.5]}]},
            )
            for m, (w, h) in zip(means, context.sizes, strict=True)
        ]


def decoded(image_id: str, width: int, height: int) -> DecodedImage:
    return DecodedImage(
        ref=ImageRef(image_id=image_id, path=f"/x/{image_id}.jpg", source="test", submitted_at=time.time()),
        decoded_at=time.time(),
        model="counter",
        shape=[4, 4, 3],
        meta=ImageMeta(
            file_name=f"{image_id}.jpg", width=width, height=height, format="JPEG", bytes=1, sha256="0" * 64
        ),
    )


class People:
    async def of(self, name: str, version: str) -> list[tuple[str, np.ndarray]]:
        return [(f"{name}:{version}", np.zeros(2))]


async def test_the_classify_stage_takes_any_model_through_the_interface() -> None:
    model = Brightness()
    typed: Model = model  # the protocol is all the stage asks for
    items = [decoded("a", 1280, 960), decoded("b", 640, 480)]
    arrays = [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    with ThreadPoolExecutor(1) as thread:
        preds, failed = await classify_group(items, arrays, typed, thread, People())  # type: ignore[arg-type]
    assert failed == []
    assert [(p.label, p.model, p.model_version) for p in preds] == [
        ("dark", "counter", "7"),
        ("bright", "counter", "7"),
    ]
    # The details reach the prediction as the model gave them; the context carried the
    # original sizes and the known references for this model's name and version.
    assert preds[0].faces == [{"box": [0, 0, 1280, 960], "score": 1.0, "embedding": [0.5, 0.5]}]
    assert model.seen["sizes"] == [(1280, 960), (640, 480)]
    assert [name for name, _ in model.seen["known"]] == ["counter:7"]


def test_an_answer_may_only_carry_prediction_fields() -> None:
    with pytest.raises(ValueError, match="not prediction fields"):
        Answer("x", 1.0, [], {"boxes": []})
    assert set(DETAIL_FIELDS) <= set(Prediction._options.fields)  # type: ignore[attr-defined]


def test_details_keep_their_vectors_only_where_they_are_searched() -> None:
    faces = [{"box": [1, 2, 3, 4], "identity": "ada", "embedding": [0.1, 0.2]}]
    assert stored_details({"faces": faces}, full=True) == {"faces": faces}
    assert stored_details({"faces": faces}, full=False) == {
        "faces": [{"box": [1, 2, 3, 4], "identity": "ada"}]
    }
    assert stored_details({"faces": None}, full=True) == {}


def test_the_sink_stores_a_models_details_whatever_the_model() -> None:
    p = Prediction(
        ref=ImageRef(image_id="a", path="/x/a.jpg", source="test", submitted_at=time.time()),
        predicted_at=time.time(),
        label="ada",
        score=0.9,
        top_k=[{"label": "ada", "score": 0.9}],
        model="counter",
        model_version="7",
        inference_ms=1.0,
        batch_size=1,
        meta=decoded("a", 8, 8).meta,
        faces=[{"box": [0, 0, 8, 8], "identity": "ada", "embedding": [0.3]}],
    )
    ops = prediction_ops([p], datetime.now(UTC))
    searched, shown = str(ops["predictions"][0]._doc), str(ops["images"][0]._doc)
    assert "'embedding': [0.3]" in searched and "'identity': 'ada'" in searched
    assert "'identity': 'ada'" in shown and "embedding" not in shown
