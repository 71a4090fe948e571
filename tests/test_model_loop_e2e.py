"""The model loop in one story: train -> evaluate -> replay the last hour -> compare -> promote.

A binary face detector is trained on scikit-image's ``lfw_subset()`` (100 faces, 100 non-face
patches, shipped in its wheel) over the default model's pooled features, judged on its held-out
split, run over the images the chain classified in the last hour, compared with the default
model, and promoted: new images get the new version, and the counts show both.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from simulator.dataset import write_faces_dataset
from tests.support import Pipeline, wait_until
from tests.test_replay_e2e import send

pytestmark = pytest.mark.e2e

DEFAULT = "efficientnet-lite0:1.0.0"
FACES = "faces:1"


def ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_evaluate_replay_compare_promote(pipeline: Pipeline, tmp_path: Path):
    data = tmp_path / "faces"
    written = write_faces_dataset(data)
    spec = tmp_path / "models" / "faces-1" / "model.toml"

    # Train: a sigmoid head, its threshold chosen on the held-out split.
    trained = ok(
        pipeline.run(
            "train",
            "--data",
            str(data),
            "--binary",
            "face",
            "--out",
            str(spec.parent),
            "--name",
            "faces",
            "--version",
            "1",
            timeout=600,
        )
    )
    assert "trained faces:1 from 200 images (face 100, other 100): 160 trained on, 40 held out" in trained
    record = json.loads((spec.parent / "training.json").read_text())
    held_out = [Path(p) for p, _ in record["split"]["held_out"]]

    # Evaluate on the held-out split (the folder trained it, so only those 40 count).
    result = json.loads(
        ok(pipeline.run("evaluate", "--model", str(spec), "--data", str(data), "--json", timeout=600))
    )
    assert result["held_out"] is True and result["metrics"]["images"] == 40
    assert result["metrics"]["accuracy"] >= 0.95, result["metrics"]
    assert result["binary"]["roc_auc"] >= 0.95
    assert pipeline.mongo().evaluations.count_documents({"model": FACES}) == 1

    # The chain classifies the held-out images with the default model...
    worker = pipeline.start_worker()
    worker.wait_ready()
    db = pipeline.mongo()
    first = send(pipeline, held_out)
    wait_until(lambda: db.images.count_documents({}) >= 40, 180, "the default model's results")

    # ...then the last hour is replayed with the new model: its results land beside them.
    ok(pipeline.run("replay", "--since", "1h", "--model", str(spec), timeout=180))
    wait_until(lambda: db.predictions.count_documents({"model": "faces"}) >= 40, 180, "the replay's results")
    compared = json.loads(ok(pipeline.run("compare", "--model-a", DEFAULT, "--model-b", FACES, "--json")))
    assert compared["images"] == 40

    # Promote: new images get the new version, without restarting the worker.
    promoted = ok(
        pipeline.run("promote", str(spec), "--wait", "60", timeout=120, IMGFLOW_WORKER_URLS=worker.url)
    )
    print(promoted)  # how long the worker took to load and switch, with -s
    assert f"promoted {FACES}" in promoted and "switched" in promoted
    fresh = tmp_path / "fresh"
    copies = []
    for label in ("face", "other"):
        for path in written[label][:10]:
            copy = fresh / label / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
            copies.append(copy)
    new = send(pipeline, copies)
    wait_until(
        lambda: db.images.count_documents({"_id": {"$in": list(new)}}) >= 20,
        180,
        "the promoted model's results",
    )
    latest = {d["_id"]: d for d in db.images.find({"_id": {"$in": list(new)}})}
    assert {f"{d['model']}:{d['model_version']}" for d in latest.values()} == {FACES}
    called = Counter((new[i].parent.name, d["label"]) for i, d in latest.items())
    assert called[("face", "face")] + called[("other", "other")] >= 18, called  # the held-out accuracy, again

    # The counts per model show both versions; the old results are still there.
    def counted_models() -> set[str]:
        status, counts = worker.get("/counts/")
        return {m for w in counts["windows"] for m in w["by_model"]} if status == 200 else set()

    wait_until(lambda: {DEFAULT, FACES} <= counted_models(), 60, "both versions counted")
    assert (
        db.predictions.count_documents({"image_id": {"$in": list(first)}, "model": "efficientnet-lite0"})
        == 40
    )
