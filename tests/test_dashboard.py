"""The dashboard's data store and views, as plain param classes (no browser, no Panel server).

MongoDB is the real MongoDB-protocol server of the ``services`` fixture, in a
database of each test's own; documents are written with the sink's own
``prediction_ops`` / ``failure_ops``, exactly as a worker writes them. The
workers' web views are answered by a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dashboard import data_store as ds
from dashboard.data_store import ALL, DataStore, LiveFeed
from dashboard.views import (
    CompareView,
    CountsView,
    Dashboard,
    DetailView,
    FailuresView,
    FeedbackView,
    GalleryView,
    ThroughputView,
)
from imgflow.embedded import free_port
from imgflow.records import Failure, ImageMeta, Prediction
from imgflow.storage import failure_ops, prediction_ops

MODEL = "efficientnet-lite0"
NOW = datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# Realistic data: files on disk, documents written by the sink's own operations


def write_image(path: Path, size: tuple[int, int] = (320, 240), color: tuple = (200, 60, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 16):  # some structure, so it is not a flat colour
        for y in range(size[1]):
            image.putpixel((x, y), (x % 256, y % 256, 128))
    image.save(path)
    return path


def prediction(
    image_id: str,
    path: Path,
    label: str,
    score: float,
    *,
    version: str = "1.0.0",
    source: str = "simulator",
    submitted: datetime,
    latency: float = 0.5,
    top_k: list[tuple[str, float]] | None = None,
) -> Prediction:
    rest = 1 - score
    top = top_k or [(label, score), ("tabby", round(rest / 2, 3)), ("lab coat", round(rest / 4, 3))]
    return Prediction(
        image_id=image_id,
        path=str(path),
        source=source,
        submitted_at=submitted.timestamp(),
        predicted_at=(submitted + timedelta(seconds=latency * 0.8)).timestamp(),
        label=label,
        score=score,
        top_k=[{"label": lab, "score": s} for lab, s in top],
        model=MODEL,
        model_version=version,
        inference_ms=12.5,
        batch_size=4,
        meta=ImageMeta(
            file_name=path.name,
            width=320,
            height=240,
            format="PNG",
            bytes=path.stat().st_size,
            sha256="ab" * 32,
        ),
    )


def store_predictions(db, preds: list[Prediction], stored_at: datetime) -> None:
    ops = prediction_ops(preds, stored_at)
    db.predictions.bulk_write(ops["predictions"], ordered=False)
    db.images.bulk_write(ops["images"], ordered=False)


#: (file, label, score, source, minutes ago)
SEED = [
    ("cat-1.png", "tabby", 0.91, "simulator", 1),
    ("cat-2.png", "tabby", 0.55, "upload", 2),
    ("coffee-1.png", "espresso", 0.94, "simulator", 3),
    ("coffee-2.png", "espresso", 0.35, "simulator", 4),
    ("rocket.png", "space shuttle", 0.72, "upload", 5),
    ("astronaut.png", "lab coat", 0.48, "simulator", 30),
    ("clock.png", "wall clock", 0.83, "simulator", 90),
    ("horse.png", "sorrel", 0.66, "watch", 300),
]


@pytest.fixture
def db(services) -> Iterator[Any]:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(services.mongo_url, tz_aware=True)
    name = f"dash_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def seeded(db, tmp_path: Path) -> dict[str, Any]:
    """Eight images stored at different times, two failures; returns ids by file name."""
    root = tmp_path / "images"
    ids: dict[str, str] = {}
    for i, (name, label, score, source, minutes) in enumerate(SEED):
        path = write_image(root / name, color=(40 * i % 256, 90, 160))
        image_id = f"img-{i:02d}-{uuid.uuid4().hex[:6]}"
        ids[name] = image_id
        stored = NOW - timedelta(minutes=minutes)
        submitted = stored - timedelta(seconds=0.2 + 0.1 * i)
        store_predictions(
            db, [prediction(image_id, path, label, score, source=source, submitted=submitted)], stored
        )
    failures = [
        Failure(
            image_id="bad-1",
            stage="decode",
            kind="not_an_image",
            message="cannot identify image file",
            failed_at=(NOW - timedelta(seconds=20)).timestamp(),
            path=str(root / "notes.txt"),
            source="simulator",
        ),
        Failure(
            image_id="bad-2",
            stage="decode",
            kind="missing_file",
            message="no such file",
            failed_at=(NOW - timedelta(seconds=50)).timestamp(),
            path=str(root / "gone.jpg"),
            source="upload",
        ),
    ]
    db.failures.bulk_write(failure_ops(failures), ordered=False)
    return {"root": root, "ids": ids}


def store_for(db, seeded, **params) -> DataStore:
    store = DataStore(db=db, roots=[seeded["root"]], **params)
    store.refresh()
    return store


# --------------------------------------------------------------------------------------------------
# A real HTTP server standing in for a worker's web views


class FakeWorker:
    """A real HTTP server answering GET /counts/ and /health/ with canned JSON; counts requests."""

    def __init__(self, counts: dict[str, Any]) -> None:
        self.counts = counts
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if self.path.startswith("/counts/"):
                    body, status = owner.counts, 200
                elif self.path.startswith("/health/"):
                    models = [{"name": MODEL, "version": "1.0.0"}]
                    body, status = {"status": "ok", "models": models, "lag": 0}, 200
                else:
                    body, status = {"error": "not found"}, 404
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def counts_body(now: float | None = None) -> dict[str, Any]:
    """A realistic GET /counts/ answer: three 60 s windows, newest first."""
    now = now or time.time()
    start = now - now % 60
    windows = [
        {
            "start": start,
            "end": start + 60,
            "total": 7,
            "counts": {"tabby": 4, "espresso": 2, "sorrel": 1},
            "by_model": {f"{MODEL}:1.0.0": {"espresso": 2, "sorrel": 1, "tabby": 4}},
        },
        {
            "start": start - 60,
            "end": start,
            "total": 5,
            "counts": {"espresso": 3, "tabby": 2},
            "by_model": {f"{MODEL}:1.0.0": {"espresso": 3, "tabby": 2}},
        },
        {
            "start": start - 120,
            "end": start - 60,
            "total": 1,
            "counts": {"wall clock": 1},
            "by_model": {f"{MODEL}:1.0.0": {"wall clock": 1}},
        },
    ]
    return {
        "complete": True,
        "missing_partitions": [],
        "window": {"seconds": 60.0, "step": None, "expires": 3600.0},
        "now": now,
        "current": windows[0],
        "windows": windows,
    }


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker(counts_body())
    try:
        yield w
    finally:
        w.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------------------------------
# Pure functions


def test_image_filter_matches_the_corrected_label_and_hides_hidden_images():
    assert ds.image_filter() == {"hidden": {"$ne": True}}
    assert ds.image_filter(include_hidden=True) == {}
    q = ds.image_filter(label="tabby", score=(0.5, 1.0), model=f"{MODEL}:1.0.0", source="upload")
    clauses = q["$and"]
    effective = [{"feedback.label": "tabby"}, {"label": "tabby", "feedback.label": {"$exists": False}}]
    assert {"$or": effective} in clauses
    assert {"score": {"$gte": 0.5, "$lte": 1.0}} in clauses
    assert {"model": MODEL, "model_version": "1.0.0"} in clauses
    assert {"source": "upload"} in clauses
    # "(all)" and the full score range add no clause.
    assert ds.image_filter(label=ALL, score=(0.0, 1.0), model=ALL, source=ALL, include_hidden=True) == {}
    with pytest.raises(ValueError):
        ds.split_model_key("no-version")
    assert ds.split_model_key("a:b:1.0") == ("a:b", "1.0")


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert ds.percentile(values, 50) == 50.0
    assert ds.percentile(values, 95) == 95.0
    assert ds.percentile([3.0], 95) == 3.0
    assert ds.percentile([], 50) is None


def test_previews_only_come_from_configured_folders(tmp_path: Path):
    root = tmp_path / "images"
    inside = write_image(root / "sub" / "ok.png")
    outside = write_image(tmp_path / "secret" / "private.png")
    (root / "escape.png").symlink_to(outside)  # a link inside the root to a file outside it
    (root / "alias.png").symlink_to(inside)  # a link that stays inside is fine
    roots = [root]

    assert ds.safe_image_path(inside, roots) == inside.resolve()
    assert ds.safe_image_path(root / "alias.png", roots) == inside.resolve()
    assert ds.safe_image_path(outside, roots) is None
    assert ds.safe_image_path(root / "escape.png", roots) is None
    assert ds.safe_image_path(f"{root}/../secret/private.png", roots) is None
    assert ds.safe_image_path(f"{root}/sub/../../secret/private.png", roots) is None
    assert ds.safe_image_path(root / "missing.png", roots) is None
    assert ds.safe_image_path(root, roots) is None  # a folder is not an image
    assert ds.safe_image_path("bad\x00name.png", roots) is None
    assert ds.safe_image_path(None, roots) is None
    assert ds.safe_image_path(inside, []) is None
    assert ds.preview_jpeg(str(outside), roots) is None
    assert ds.preview_jpeg(str(root / "escape.png"), roots) is None


def test_previews_are_downscaled_jpeg_bytes(tmp_path: Path):
    root = tmp_path / "images"
    big = write_image(root / "big.png", size=(1200, 800))
    rgba = root / "alpha.png"
    Image.new("RGBA", (300, 300), (255, 0, 0, 0)).save(rgba)
    (root / "notes.txt").write_text("not an image")
    truncated = root / "cut.png"
    truncated.write_bytes(big.read_bytes()[:200])

    thumb = ds.preview_jpeg(str(big), [root], px=ds.THUMB_PX)
    assert thumb is not None and thumb[:3] == b"\xff\xd8\xff"  # JPEG
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.size == (160, 107)
    detail = ds.preview_jpeg(str(big), [root], px=ds.DETAIL_PX)
    with Image.open(io.BytesIO(detail)) as im:
        assert im.size == (640, 427)
    with Image.open(io.BytesIO(ds.preview_jpeg(str(rgba), [root]))) as im:
        assert im.mode == "RGB" and im.getpixel((10, 10))[0] > 240  # transparent -> white, not black
    assert ds.preview_jpeg(str(root / "notes.txt"), [root]) is None
    assert ds.preview_jpeg(str(truncated), [root]) is None
    assert ds.preview_jpeg(str(big), [root], max_bytes=100) is None  # over the size limit
    assert ds.preview_jpeg(str(big), [root], max_pixels=1000) is None  # over the pixel limit


def test_counts_come_from_the_first_worker_that_answers(worker: FakeWorker):
    down = dead_url()
    result = ds.fetch_counts([down, worker.url])
    assert result["ok"] and result["url"] == worker.url
    assert down in result["errors"]
    assert result["body"]["current"]["counts"]["tabby"] == 4
    # The first answering worker is enough: later ones are not asked.
    worker.requests.clear()
    ds.fetch_counts([worker.url, dead_url()])
    assert len([r for r in worker.requests if r.startswith("/counts/")]) == 1
    nobody = ds.fetch_counts([dead_url(), dead_url()])
    assert not nobody["ok"] and len(nobody["errors"]) == 2

    health = ds.worker_health([worker.url, down])
    assert health[0]["status"] == "ok" and health[0]["models"] == [f"{MODEL}:1.0.0"]
    assert health[1]["status"] == "down" and health[1]["error"]


def test_counts_view_draws_current_window_bars_and_lines_per_label():
    feed = LiveFeed(db=None, worker_urls=[])
    view = CountsView(feed=feed)
    assert view.bar_data() == {"label": [], "count": []}
    feed.param.update(counts=counts_body(), counts_url="http://w1:6066")
    view.update()
    # Biggest bar last: Bokeh draws categorical factors bottom-up.
    assert view.bar_source.data["label"] == ["sorrel", "espresso", "tabby"]
    assert view.bar_source.data["count"] == [1, 2, 4]
    assert list(view.bars.y_range.factors) == ["sorrel", "espresso", "tabby"]
    lines = view.line_source.data
    assert lines["label"][0] == "all labels" and lines["ys"][0] == [1, 5, 7]  # oldest window first
    assert lines["label"][1:] == ["tabby", "espresso", "sorrel", "wall clock"]  # most images first
    assert lines["ys"][lines["label"].index("tabby")] == [0, 2, 4]
    assert "from http://w1:6066" in view.caption.object and "<b>7</b>" in view.caption.object
    # An empty current window falls back to the newest window that has data.
    body = counts_body()
    body["current"] = {"start": None, "end": None, "total": 0, "counts": {}, "by_model": {}}
    feed.counts = body
    view.update()
    assert view.bar_source.data["count"] == [1, 2, 4]


# --------------------------------------------------------------------------------------------------
# Against the real MongoDB-protocol server

e2e = pytest.mark.e2e


@e2e
def test_throughput_and_latency_from_mongodb_timestamps(db, tmp_path: Path):
    path = write_image(tmp_path / "images" / "a.png")
    now = datetime.now(UTC)
    # 20 images stored in the last minute with latencies 0.1 .. 2.0 s, one stored long ago.
    for i in range(20):
        stored = now - timedelta(seconds=50 - 2 * i)
        submitted = stored - timedelta(seconds=0.1 * (i + 1))
        store_predictions(db, [prediction(f"t{i}", path, "tabby", 0.9, submitted=submitted)], stored)
    old = now - timedelta(hours=2)
    store_predictions(db, [prediction("old", path, "tabby", 0.9, submitted=old)], old)
    failure = Failure(
        image_id="f1", stage="decode", kind="empty_file", message="empty", failed_at=now.timestamp() - 5
    )
    db.failures.bulk_write(failure_ops([failure]))

    stats = ds.throughput(db, minutes=5, now=now)
    assert stats["stored"] == 20 and stats["failed"] == 1
    assert stats["stored_per_s"] == pytest.approx(20 / 300)
    assert stats["failed_per_s"] == pytest.approx(1 / 300)
    assert stats["p50"] == pytest.approx(1.0, abs=0.01)
    assert stats["p95"] == pytest.approx(1.9, abs=0.01)
    assert sum(stats["series"]["stored_per_s"]) * stats["bucket"] == pytest.approx(20)
    assert ds.totals(db) == {"images": 21, "failures": 1, "hidden": 0, "corrected": 0}

    view = ThroughputView(feed=LiveFeed(db=db, worker_urls=[]))
    view.feed.stats = {**stats, "totals": ds.totals(db)}
    view.update()
    tiles = dict((name, value) for name, value, _bad in view.kpis())
    assert tiles["p50 end-to-end"] == "1.00 s" and tiles["p95 end-to-end"] == "1.90 s"
    assert tiles["images stored"] == "21" and tiles["failures"] == "1"
    assert "1.90 s" in view.tiles.object
    assert ds.percentile([0.05, 0.2], 50) == 0.05 and view.kpis()[0][1] == "0.07"


@e2e
def test_gallery_is_newest_first_and_every_filter_narrows_it(db, seeded):
    store = store_for(db, seeded)
    ids = seeded["ids"]
    assert store.total == 8
    assert [d["file_name"] for d in store.images] == [name for name, *_ in SEED]  # newest first
    assert "tabby" in store.param.label.objects and "upload" in store.param.source.objects
    assert store.param.model.objects == [ALL, f"{MODEL}:1.0.0"]

    store.label = "tabby"
    assert {d["_id"] for d in store.images} == {ids["cat-1.png"], ids["cat-2.png"]}
    store.score = (0.6, 1.0)
    assert [d["_id"] for d in store.images] == [ids["cat-1.png"]]
    store.param.update(label=ALL, score=(0.0, 1.0), source="upload")
    assert {d["file_name"] for d in store.images} == {"cat-2.png", "rocket.png"}
    store.param.update(source=ALL, time_range="last 15 minutes")
    assert store.total == 5
    store.time_range = "last hour"
    assert store.total == 6
    store.param.update(time_range="all time", model=f"{MODEL}:1.0.0")
    assert store.total == 8
    store.model = f"{MODEL}:9.9.9"
    assert store.total == 0 and store.images == []

    # Paging: newest page first, the last page holds the rest.
    store.param.update(model=ALL, page_size=3)
    assert [d["file_name"] for d in store.images] == ["cat-1.png", "cat-2.png", "coffee-1.png"]
    store.page = 2
    assert [d["file_name"] for d in store.images] == ["clock.png", "horse.png"]
    store.label = "espresso"  # a filter change starts again at the first page
    assert store.page == 0 and len(store.images) == 2


@e2e
def test_hide_and_correct_are_stored_in_mongodb_and_change_the_gallery(db, seeded):
    feed = LiveFeed(db=db, worker_urls=[])
    store = store_for(db, seeded, feed=feed)
    ids = seeded["ids"]
    version = feed.version

    assert store.set_hidden(ids["coffee-2.png"], True)
    doc = db.images.find_one({"_id": ids["coffee-2.png"]})
    assert doc["hidden"] is True and isinstance(doc["hidden_at"], datetime)
    assert doc["hidden_by"] == "anonymous"  # no authentication: recorded as anonymous
    assert ids["coffee-2.png"] not in {d["_id"] for d in store.images} and store.total == 7
    assert feed.version > version  # every other session is told at once
    store.include_hidden = True
    assert store.total == 8
    store.set_hidden(ids["coffee-2.png"], False)
    store.include_hidden = False
    assert store.total == 8

    before = datetime.now(UTC) - timedelta(seconds=1)
    assert store.correct_label(ids["rocket.png"], "  missile ")
    fb = db.images.find_one({"_id": ids["rocket.png"]})["feedback"]
    assert fb["label"] == "missile" and fb["predicted_label"] == "space shuttle"
    assert fb["model"] == MODEL and fb["model_version"] == "1.0.0" and fb["at"] >= before
    assert fb["user"] == "anonymous"
    assert not store.correct_label(ids["rocket.png"], "   ")  # blank is refused
    assert not store.correct_label("no-such-image", "x")
    store.refresh()
    assert "missile" in store.param.label.objects
    store.label = "missile"  # the corrected label is what the filter matches...
    assert [d["_id"] for d in store.images] == [ids["rocket.png"]]
    store.label = "space shuttle"  # ...and the model's label no longer does
    assert store.total == 0

    # A re-store of the same image by the sink (redelivery) keeps the person's label.
    doc = db.images.find_one({"_id": ids["rocket.png"]})
    redelivered = prediction(ids["rocket.png"], Path(doc["path"]), "space shuttle", 0.7, submitted=NOW)
    store_predictions(db, [redelivered], datetime.now(UTC))
    assert db.images.find_one({"_id": ids["rocket.png"]})["feedback"]["label"] == "missile"

    assert store.clear_correction(ids["rocket.png"])
    assert store.total == 1  # "space shuttle" matches again
    assert "feedback" not in db.images.find_one({"_id": ids["rocket.png"]})


@e2e
def test_edits_record_the_signed_in_user(db, seeded):
    # app.py passes pn.state.user: the name Panel's basic auth signed in (test_dashboard_auth.py).
    store = store_for(db, seeded, user="alice")
    ids = seeded["ids"]
    assert store.set_hidden(ids["horse.png"], True)
    assert db.images.find_one({"_id": ids["horse.png"]})["hidden_by"] == "alice"
    store.user = "bob"  # whoever acts last is recorded
    assert store.set_hidden(ids["horse.png"], False)
    doc = db.images.find_one({"_id": ids["horse.png"]})
    assert doc["hidden"] is False and doc["hidden_by"] == "bob"

    assert store.correct_label(ids["clock.png"], "wall clock")
    assert db.images.find_one({"_id": ids["clock.png"]})["feedback"]["user"] == "bob"
    assert store.clear_correction(ids["clock.png"])
    doc = db.images.find_one({"_id": ids["clock.png"]})
    assert "feedback" not in doc and doc["feedback_cleared"]["user"] == "bob"


@e2e
def test_corrected_labels_export_as_csv_and_json(db, seeded):
    store = store_for(db, seeded)
    ids = seeded["ids"]
    store.correct_label(ids["cat-2.png"], "Egyptian cat")
    store.correct_label(ids["astronaut.png"], "astronaut")
    rows = list(csv.DictReader(io.StringIO(store.export_csv())))
    assert {r["image_id"]: r["label"] for r in rows} == {
        ids["cat-2.png"]: "Egyptian cat",
        ids["astronaut.png"]: "astronaut",
    }
    cat = next(r for r in rows if r["label"] == "Egyptian cat")
    assert cat["predicted_label"] == "tabby" and cat["file_name"] == "cat-2.png"
    assert cat["model"] == MODEL and cat["model_version"] == "1.0.0" and cat["corrected_at"]
    assert json.loads(store.export_json()) == json.loads(json.dumps(store.corrections()))

    view = FeedbackView(store=store)
    view.render()
    assert len(view.table.value) == 2
    downloaded = view.csv.callback().getvalue()
    assert "Egyptian cat" in downloaded and downloaded.startswith("image_id,")
    assert json.loads(view.json.callback().getvalue())[0]["label"] in {"Egyptian cat", "astronaut"}


@e2e
def test_gallery_view_cards_hide_and_detail_correction(db, seeded):
    store = store_for(db, seeded, user="carol")
    ids = seeded["ids"]
    gallery = GalleryView(store=store)
    detail = DetailView(store=store)
    assert list(gallery.cards) == [ids[name] for name, *_ in SEED]
    text = gallery.card_text(store.images[0])
    assert "tabby" in text and "0.91" in text and "1.0.0" in text and "cat-1.png" in text
    assert "8 images" in gallery.summary.object
    card = gallery.cards[ids["cat-1.png"]]
    picture = card.objects[0]
    assert picture.object[:3] == b"\xff\xd8\xff"  # embedded JPEG bytes, not a file URL

    # A file name from a user is shown escaped, never as markup.
    evil = dict(store.images[0], file_name="<img src=x onerror=alert(1)>.png")
    assert "<img src=x" not in gallery.card_text(evil) and "&lt;img" in gallery.card_text(evil)

    # Hide from the card: stored in MongoDB, the card disappears.
    hide = card.objects[2].objects[1]
    assert hide.label == "Hide"
    hide.clicks += 1
    hidden = db.images.find_one({"_id": ids["cat-1.png"]})
    assert hidden["hidden"] is True and hidden["hidden_by"] == "carol"
    assert ids["cat-1.png"] not in gallery.cards and "7 images" in gallery.summary.object

    # Details, then correct the label: stored, and the gallery marks it.
    details = gallery.cards[ids["coffee-1.png"]].objects[2].objects[0]
    details.clicks += 1
    assert store.selected == ids["coffee-1.png"] and detail.doc["_id"] == ids["coffee-1.png"]
    meta = detail.meta_html(detail.doc)
    assert "coffee-1.png" in meta and "320 × 240 px" in meta and "simulator" in meta
    fig = detail.topk_figure(detail.doc)
    assert list(fig.y_range.factors) == ["lab coat", "tabby", "espresso"]  # best on top
    detail.label_input.value = "cup"
    detail.save.clicks += 1
    feedback = db.images.find_one({"_id": ids["coffee-1.png"]})["feedback"]
    assert feedback["label"] == "cup" and feedback["user"] == "carol"
    assert "✎ cup" in gallery.card_text(next(d for d in store.images if d["_id"] == ids["coffee-1.png"]))
    assert detail.clear.disabled is False
    detail.clear.clicks += 1
    assert "feedback" not in db.images.find_one({"_id": ids["coffee-1.png"]})


@e2e
def test_gallery_shows_no_preview_for_files_outside_the_folders(db, seeded, tmp_path: Path):
    outside = write_image(tmp_path / "elsewhere" / "x.png")
    image_id = "outside-1"
    store_predictions(db, [prediction(image_id, outside, "tabby", 0.5, submitted=NOW)], datetime.now(UTC))
    store = store_for(db, seeded)
    gallery = GalleryView(store=store)
    picture = gallery.cards[image_id].objects[0]
    assert "no preview" in picture.object


@e2e
def test_failures_view_lists_dead_letters_and_retries_through_the_broker(db, seeded, services):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from imgflow.settings import Settings

    prefix = f"dash{uuid.uuid4().hex[:6]}"
    settings = Settings(
        BROKER_URL=services.broker_url,
        MONGO_URL=services.mongo_url,
        MONGO_DB=db.name,
        IMGFLOW_TOPIC_PREFIX=prefix,
    )
    store = store_for(db, seeded, settings=settings, user="dave")
    view = FailuresView(store=store)
    frame = view.table.value
    assert list(frame["image_id"]) == ["bad-1", "bad-2"]  # newest first
    assert list(frame["kind"]) == ["not_an_image", "missing_file"]
    assert "2 failures" in view.summary.object and "not_an_image 1" in view.summary.object

    async def retry_and_read() -> list[dict[str, Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.topic("paths"), 1, 1)])
        finally:
            await admin.close()
        view.table.selection = [1]  # bad-2
        await view._retry_selected()
        consumer = AIOKafkaConsumer(
            settings.topic("paths"), bootstrap_servers=services.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            return [json.loads(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()

    try:
        import imgflow.replay  # noqa: F401
    except ImportError:
        asyncio.run(store.retry(["bad-2"]))
        assert "not available" in store.message
        pytest.fail("imgflow.replay.retry_failed is missing: the retry action cannot work")
    sent = asyncio.run(retry_and_read())
    assert [m["image_id"] for m in sent] == ["bad-2"]
    assert sent[0]["path"].endswith("gone.jpg")
    assert sent[0]["attrs"]["retry_of"]["by"] == "dave"  # travels with the image
    retried = db.failures.find_one({"_id": "bad-2"})
    assert retried["retried_by"] == "dave" and retried["retry_id"] == sent[0]["replay_id"]
    assert "retried_by" not in db.failures.find_one({"_id": "bad-1"})
    assert "1 image(s) sent" in store.message and "1 image(s) sent" in view.summary.object


@e2e
def test_compare_view_shows_agreement_and_changed_images(db, seeded):
    ids = seeded["ids"]
    # Version 2.0.0 re-classifies four images: two agree, two change.
    changes = {
        "cat-1.png": "tabby",
        "coffee-1.png": "espresso",
        "cat-2.png": "tiger cat",
        "rocket.png": "missile",
    }
    for name, label in changes.items():
        doc = db.images.find_one({"_id": ids[name]})
        top = [(label, 0.8), (doc["label"], 0.1)]
        pred = prediction(ids[name], Path(doc["path"]), label, 0.8, version="2.0.0", submitted=NOW, top_k=top)
        store_predictions(db, [pred], datetime.now(UTC))
    store = store_for(db, seeded)
    assert set(store.versions) == {f"{MODEL}:1.0.0", f"{MODEL}:2.0.0"}

    view = CompareView(store=store)
    view.model_a.value, view.model_b.value = f"{MODEL}:1.0.0", f"{MODEL}:2.0.0"
    result = view.compare()
    assert result["images"] == 4 and result["agree"] == 2 and result["agreement"] == pytest.approx(0.5)
    assert result["confusion"]["space shuttle"] == {"missile": 1}
    changed = {r["file_name"]: r for r in result["changed"]}
    assert set(changed) == {"cat-2.png", "rocket.png"}
    assert changed["rocket.png"]["label_b"] == "missile"
    assert changed["rocket.png"]["delta"] == pytest.approx(0.72 - 0.1)
    assert "agreement <b>50.0%</b>" in view.summary.object
    assert len(view.changed.value) == 2 and len(view.pairs.value) == 4
    # Our own query gives the same answer as imgflow.queries (when that exists).
    local = ds.local_compare_models(db, f"{MODEL}:1.0.0", f"{MODEL}:2.0.0")
    assert (local["images"], local["agree"], local["confusion"]) == (4, 2, result["confusion"])
    assert [r["image_id"] for r in local["changed"]] == [r["image_id"] for r in result["changed"]]


@e2e
def test_one_shared_refresh_feeds_every_session(db, seeded, worker: FakeWorker):
    feed = LiveFeed(db=db, worker_urls=[dead_url(), worker.url])
    sessions = [Dashboard(store=DataStore(db=db, roots=[seeded["root"]]), feed=feed) for _ in range(3)]
    for board in sessions:
        board.connect(None)  # no Bokeh document: updates apply at once
    worker.requests.clear()

    feed.refresh_now()
    # One refresh asks the worker once for counts, whatever the number of sessions.
    assert len([r for r in worker.requests if r.startswith("/counts/")]) == 1
    assert feed.counts_url == worker.url and feed.stats["totals"]["images"] == 8
    for board in sessions:
        assert board.counts.bar_source.data["label"] == ["sorrel", "espresso", "tabby"]
        assert "images stored" in board.throughput.tiles.object
        assert board.gallery.store.total == 8

    # New data: the stamp changes, the version bumps, every following session re-queries.
    version = feed.version
    path = seeded["root"] / "new.png"
    write_image(path)
    store_predictions(db, [prediction("new-1", path, "tabby", 0.99, submitted=NOW)], datetime.now(UTC))
    feed.refresh_now()
    assert feed.version == version + 1
    assert all(board.store.total == 9 and "new-1" in board.gallery.cards for board in sessions)
    feed.refresh_now()
    assert feed.version == version + 1  # nothing changed: no re-query

    # A session that paused "Live" keeps its page until it resumes.
    sessions[0].store.follow = False
    store_predictions(db, [prediction("new-2", path, "tabby", 0.98, submitted=NOW)], datetime.now(UTC))
    feed.refresh_now()
    assert sessions[0].store.total == 9 and sessions[1].store.total == 10

    # The async refresh (what pn.state.schedule_task runs) does the same off the event loop.
    asyncio.run(feed.refresh())
    assert feed.counts_error == ""


@e2e
def test_live_feed_reports_when_no_worker_answers(db, seeded):
    feed = LiveFeed(db=db, worker_urls=[dead_url()])
    feed.refresh_now()
    assert feed.counts == {} and "Connection refused" in feed.counts_error
    assert feed.workers[0]["status"] == "down"
    view = CountsView(feed=feed)
    assert "No worker answered" in view.caption.object
    assert feed.stats["totals"]["images"] == 8  # MongoDB numbers still flow


def test_importing_the_dashboard_connects_to_nothing():
    code = (
        "import dashboard.data_store as d, dashboard.views\n"
        "assert d._clients == {} and d._feed is None\n"
        "print('ok')\n"
    )
    env = {"MONGO_URL": f"mongodb://127.0.0.1:{free_port()}", "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert time.monotonic() - started < 30


def test_a_degraded_worker_shows_red_with_its_stalled_partitions():
    from dashboard.data_store import LiveFeed
    from dashboard.views import ThroughputView

    feed = LiveFeed(db=None, worker_urls=[])
    feed.workers = [
        {"url": "http://w1", "status": "degraded", "models": ["m:1"], "lag": 7, "stalled": ["p-paths[2]"]},
        {"url": "http://w2", "status": "ok", "models": ["m:1"], "lag": 0, "stalled": []},
    ]
    html = ThroughputView(feed=feed).workers_html()
    assert '<span class="down">●</span> http://w1 <b>degraded</b>' in html
    assert "stalled: p-paths[2]" in html
    assert '<span class="ok">●</span> http://w2 <b>ok</b>' in html
