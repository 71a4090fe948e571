"""Read-side queries over MongoDB shared by the CLI, the web views and the dashboard."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


def split_model(key: str) -> tuple[str, str]:
    """``"name:version"`` -> (name, version); the version is after the last colon."""
    name, sep, version = key.rpartition(":")
    if not sep or not name or not version:
        raise ValueError(f"model must be given as NAME:VERSION, got {key!r}")
    return name, version


def model_versions(db: Any) -> list[str]:
    """Every ``name:version`` that has predictions, most predictions first."""
    rows = db.predictions.aggregate(
        [{"$group": {"_id": {"model": "$model", "version": "$model_version"}, "n": {"$sum": 1}}}]
    )
    counted = sorted(((r["n"], f"{r['_id']['model']}:{r['_id']['version']}") for r in rows), reverse=True)
    return [key for _, key in counted]


def _score_of(top_k: list[dict[str, Any]], label: str) -> float:
    return next((float(t["score"]) for t in top_k if t["label"] == label), 0.0)


def compare_models(db: Any, model_a: str, model_b: str, limit: int = 20) -> dict[str, Any]:
    """Agreement, a confusion table of top-1 labels and the images that changed most.

    Only images predicted by both versions count. "Changed most" ranks the
    images whose top-1 label differs by how much probability version B took
    away from version A's label.
    """
    a, b = split_model(model_a), split_model(model_b)
    wanted = [{"model": a[0], "model_version": a[1]}, {"model": b[0], "model_version": b[1]}]
    fields = {"image_id": 1, "model": 1, "model_version": 1, "label": 1, "score": 1, "top_k": 1, "path": 1}
    by_image: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for doc in db.predictions.find({"$or": wanted}, fields):
        side = "a" if (doc["model"], doc["model_version"]) == a else "b"
        by_image[doc["image_id"]][side] = doc
    confusion: dict[str, Counter] = defaultdict(Counter)
    agree = 0
    changed = []
    common = 0
    for image_id, sides in by_image.items():
        if "a" not in sides or "b" not in sides:
            continue
        common += 1
        pa, pb = sides["a"], sides["b"]
        confusion[pa["label"]][pb["label"]] += 1
        if pa["label"] == pb["label"]:
            agree += 1
            continue
        delta = float(pa["score"]) - _score_of(pb.get("top_k", []), pa["label"])
        changed.append(
            {
                "image_id": image_id,
                "path": pa.get("path"),
                "label_a": pa["label"],
                "score_a": float(pa["score"]),
                "label_b": pb["label"],
                "score_b": float(pb["score"]),
                "delta": delta,
            }
        )
    changed.sort(key=lambda c: (-c["delta"], c["image_id"]))
    return {
        "model_a": model_a,
        "model_b": model_b,
        "images": common,
        "agree": agree,
        "agreement": agree / common if common else None,
        "confusion": {la: dict(row) for la, row in sorted(confusion.items())},
        "changed": changed[:limit],
    }
