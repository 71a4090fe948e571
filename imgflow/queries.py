"""Read-side queries over MongoDB shared by the CLI, the web views and the dashboard."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any


def split_model(key: str) -> tuple[str, str]:
    """``"name:version"`` -> (name, version); the version is after the last colon."""
    name, sep, version = key.rpartition(":")
    if not sep or not name or not version:
        raise ValueError(f"model must be given as NAME:VERSION, got {key!r}")
    return name, version


def model_versions(db: Any) -> list[str]:
    """Every ``name:version`` that has predictions, most predictions first (from the counters)."""
    from imgflow.tally import model_versions_of, totals

    return model_versions_of(totals(db))


def _score_of(top_k: list[dict[str, Any]], label: str) -> float:
    return next((float(t["score"]) for t in top_k if t["label"] == label), 0.0)


#: Where the image-id ranges of a comparison start: every two-hex-digit prefix (ids are
#: uuid hex by default); the first range holds anything below "00", the last anything above.
ID_RANGES = ["", *(f"{i:02x}" for i in range(256))]


def id_ranges() -> list[tuple[str, str | None]]:
    """Consecutive ``[low, high)`` ranges that cover every string (the last is open above)."""
    return [(low, ID_RANGES[i + 1] if i + 1 < len(ID_RANGES) else None) for i, low in enumerate(ID_RANGES)]


def compare_models(
    db: Any,
    model_a: str,
    model_b: str,
    limit: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Agreement, a confusion table of top-1 labels and the images that changed most.

    Only images predicted by both versions count. "Changed most" ranks the
    images whose top-1 label differs by how much probability version B took
    away from version A's label.

    Bounded memory at any size: the image ids are read in 257 consecutive ranges on the
    (image_id, model, version) index, both versions of a range at once, so what is held
    is one range's predictions (a 257th of them for uuid ids), the confusion table and
    the ``limit`` largest changes. ``progress(done, total)`` is called after each range.
    """
    a, b = split_model(model_a), split_model(model_b)
    fields = {"image_id": 1, "model": 1, "model_version": 1, "label": 1, "score": 1, "top_k": 1, "path": 1}
    confusion: dict[str, Counter] = defaultdict(Counter)
    agree = common = 0
    changed: list[tuple[float, _Desc, dict[str, Any]]] = []  # a heap of the largest changes
    ranges = id_ranges()
    for done, (low, high) in enumerate(ranges, 1):
        span: dict[str, Any] = {"$gte": low} if high is None else {"$gte": low, "$lt": high}
        by_image: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for model, version, side in ((*a, "a"), (*b, "b")):
            query = {"image_id": span, "model": model, "model_version": version}
            for doc in db.predictions.find(query, fields):
                by_image[doc["image_id"]][side] = doc
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
            row = {
                "image_id": image_id,
                "path": pa.get("path"),
                "label_a": pa["label"],
                "score_a": float(pa["score"]),
                "label_b": pb["label"],
                "score_b": float(pb["score"]),
                "delta": delta,
            }
            # Keep the `limit` largest deltas (ties: smallest image id); the heap's top is the worst.
            item = (delta, _Desc(image_id), row)
            if len(changed) < limit:
                heapq.heappush(changed, item)
            elif changed and item[:2] > changed[0][:2]:
                heapq.heapreplace(changed, item)
        if progress is not None:
            progress(done, len(ranges))
    top = sorted((row for _, _, row in changed), key=lambda c: (-c["delta"], c["image_id"]))
    return {
        "model_a": model_a,
        "model_b": model_b,
        "images": common,
        "agree": agree,
        "agreement": agree / common if common else None,
        "confusion": {la: dict(row) for la, row in sorted(confusion.items())},
        "changed": top,
    }


class _Desc:
    """A string that sorts backwards: among equal deltas the heap drops the largest id first."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value
