"""Known people: face embeddings in MongoDB ``people``, for a face model to name who it sees.

One document per person and face model version (``<name>|<model>|<version>``): embeddings
from one model version mean nothing to another, so a person is enrolled per version and
a worker only compares with the ones its model made. Each embedding keeps the image it
came from.

Workers read the people of a model when it first names a face and again at most every
``REFRESH`` seconds, so an enrolment reaches every worker within that time, with no restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pymongo import ASCENDING, IndexModel

COLLECTION = "people"
INDEXES = [IndexModel([("model", ASCENDING), ("model_version", ASCENDING)], name="model_version")]
#: Seconds a worker keeps its copy of a model's people before reading them again.
REFRESH = 5.0


def person_id(name: str, model: str, version: str) -> str:
    return f"{name}|{model}|{version}"


def enroll(
    db: Any, name: str, model: str, version: str, faces: Sequence[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    """Add ``(image name, embedding)`` pairs to a person (created on first use); returns the
    person's document."""
    name = name.strip()
    if not name or name in ("unknown", "no_face"):
        raise ValueError(f"{name!r} cannot name a person (reserved or empty)")
    now = datetime.now(UTC)
    entries = [{"image": image, "vector": [float(x) for x in vector], "at": now} for image, vector in faces]
    db[COLLECTION].update_one(
        {"_id": person_id(name, model, version)},
        {
            "$setOnInsert": {"name": name, "model": model, "model_version": version, "created_at": now},
            "$set": {"updated_at": now},
            "$push": {"embeddings": {"$each": entries}},
        },
        upsert=True,
    )
    return db[COLLECTION].find_one({"_id": person_id(name, model, version)})


def remove(db: Any, name: str) -> int:
    """Forget a person for every model version; returns how many documents went."""
    return db[COLLECTION].delete_many({"name": name}).deleted_count


def listing(db: Any) -> list[dict[str, Any]]:
    """Every enrolled person per model version: name, model, version, how many embeddings."""
    docs = db[COLLECTION].find({}, {"embeddings.vector": 0}).sort([("name", ASCENDING), ("model_version", 1)])
    return [
        {
            "name": d["name"],
            "model": d["model"],
            "model_version": d["model_version"],
            "embeddings": len(d.get("embeddings", [])),
            "images": [e.get("image") for e in d.get("embeddings", [])],
            "updated_at": d.get("updated_at"),
        }
        for d in docs
    ]


def known(db: Any, model: str, version: str) -> list[tuple[str, np.ndarray]]:
    """``(name, embedding)`` for every embedding a model version made of an enrolled person."""
    out: list[tuple[str, np.ndarray]] = []
    for doc in db[COLLECTION].find({"model": model, "model_version": version}):
        out += [(doc["name"], np.asarray(e["vector"], dtype=np.float32)) for e in doc.get("embeddings", [])]
    return out


class People:
    """A worker's copy of the enrolled people, per model version, read again every ``REFRESH`` s."""

    def __init__(self, db: Any, refresh: float = REFRESH) -> None:
        self.db = db
        self.refresh = refresh
        self._cache: dict[tuple[str, str], tuple[float, list[tuple[str, np.ndarray]]]] = {}

    async def of(self, model: str, version: str) -> list[tuple[str, np.ndarray]]:
        key = (model, version)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.refresh:
            return cached[1]
        people = await asyncio.to_thread(known, self.db, model, version)
        self._cache[key] = (time.monotonic(), people)
        return people
