"""End to end: a worker never reads a path outside its image roots.

Paths are published with a plain Kafka producer, as anyone with produce rights
on the paths topic could. The worker's roots are the session's temporary folder
(tests/conftest.py); the refused paths are ``/etc/passwd``, a real image in a
folder outside it (it would be classified and stored if it were read), a FIFO
there (a reader would block on it) and a link inside the roots pointing out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import photo
from tests.support import Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside the pytest temporary folder, hence outside the worker's roots."""
    folder = Path(tempfile.mkdtemp(prefix="imgflow-outside-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_paths_outside_the_roots_become_outside_roots_failures(
    pipeline: Pipeline, tmp_path: Path, outside: Path
):
    assert not outside.resolve().is_relative_to(pipeline.image_roots.resolve())  # type: ignore[union-attr]
    photo().save(outside / "cat.jpg")
    os.mkfifo(outside / "pipe.jpg")
    inside = tmp_path / "images"
    inside.mkdir()
    photo().save(inside / "ok.jpg")
    (inside / "passwd.jpg").symlink_to("/etc/passwd")

    refused = {
        "etc-passwd": "/etc/passwd",
        "outside-image": str(outside / "cat.jpg"),
        "outside-fifo": str(outside / "pipe.jpg"),
        "dot-dot": f"{inside}/../../../../../../../../etc/passwd",
        "link-out": str(inside / "passwd.jpg"),
    }
    worker = pipeline.start_worker()
    messages = [path_message(Path(p), image_id=key) for key, p in refused.items()]
    messages.append(path_message(inside / "ok.jpg", image_id="inside"))
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))

    db = pipeline.mongo()
    wait_until(lambda: db.images.find_one({"_id": "inside"}), 180, "the image inside the roots stored")

    def every_refusal() -> list[dict] | None:
        found = list(db.failures.find({"_id": {"$in": list(refused)}}))
        return found if len(found) == len(refused) else None

    docs = wait_until(every_refusal, 60, "a failure for every refused path")
    for doc in docs:
        assert doc["kind"] == "outside_roots", doc
        assert doc["stage"] == "decode"
        assert "outside the image folders" in doc["message"]
        assert doc["path"] == refused[doc["_id"]]
    # Nothing outside was classified: the image there would have a result if it had been read.
    assert db.images.count_documents({"_id": {"$in": list(refused)}}) == 0
    assert worker.proc is not None and worker.proc.poll() is None  # still running
