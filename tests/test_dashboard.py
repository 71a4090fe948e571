"""The dashboard's data store and views, as plain param classes (no browser, no Panel server).

MongoDB is the real MongoDB-protocol server of the ``mongo_url`` fixture (no
broker, no model), in a database of each test's own; documents are written with the sink's own
``write_predictions`` / ``write_failures`` (with their counters), exactly as a worker writes them. The
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
from pymongo import monitoring

from dashboard import previews, stats, workers
from dashboard.board import Dashboard
from dashboard.compare import CompareView
from dashboard.corrections import CorrectionsView
from dashboard.data_store import DataStore
from dashboard.detail import DetailView, meta_html, topk_figure
from dashboard.failures import FailuresView
from dashboard.feed import LiveFeed
from dashboard.gallery import GalleryView, card_text
from dashboard.live import CountsView, ThroughputView
from dashboard.queries import ALL, image_filter
from dashboard.styles import STATIC, stylesheet
from devstack.embedded import free_port
from imgflow import storage
from imgflow.ranges import matches, merge, split
from imgflow.records import Failure, ImageMeta, ImageRef, Prediction
from imgflow.tally import Tally

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
        ref=ImageRef(image_id=image_id, path=str(path), source=source, submitted_at=submitted.timestamp()),
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
    storage.write_predictions(db, writer(db, "sink"), preds, stored_at)


def store_failures(db, failures: list[Failure]) -> None:
    storage.write_failures(db, writer(db, "dead-letters"), failures)


_writers: dict[tuple[str, str], Tally] = {}


def writer(db, role: str) -> Tally:
    """One counters writer per database and role, as one worker process has."""
    key = (db.name, role)
    if key not in _writers:
        storage.ensure_indexes(db)
        _writers[key] = Tally(db, role)
    return _writers[key]


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
def db(mongo_url: str) -> Iterator[Any]:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_url, tz_aware=True)
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
            ref=ImageRef(
                image_id="bad-1", path=str(root / "notes.txt"), source="simulator", submitted_at=0.0
            ),
            image_id="bad-1",
            stage="decode",
            kind="not_an_image",
            message="cannot identify image file",
            failed_at=(NOW - timedelta(seconds=20)).timestamp(),
        ),
        Failure(
            ref=ImageRef(image_id="bad-2", path=str(root / "gone.jpg"), source="upload", submitted_at=0.0),
            image_id="bad-2",
            stage="decode",
            kind="missing_file",
            message="no such file",
            failed_at=(NOW - timedelta(seconds=50)).timestamp(),
        ),
    ]
    store_failures(db, failures)
    return {"root": root, "ids": ids}


def store_for(db, seeded, **params) -> DataStore:
    store = DataStore(db=db, roots=[seeded["root"]], **params)
    store.refresh()
    return store


# --------------------------------------------------------------------------------------------------
# A real HTTP server standing in for a worker's web views


class FakeWorker:
    """A real HTTP server answering GET /counts/, /workers/ and /health/ with canned JSON; counts requests."""

    def __init__(self, counts: dict[str, Any]) -> None:
        self.counts = counts
        self.members: list[str] = []  # GET /workers/: the cluster's workers (itself when empty)
        self.requests: list[str] = []
        self.authorization: list[str | None] = []  # the Authorization header of each request
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                owner.authorization.append(self.headers.get("Authorization"))
                if self.path.startswith("/counts/"):
                    body, status = owner.counts, 200
                elif self.path.startswith("/workers/"):
                    body, status = {"answered_by": owner.url, "members": owner.members or [owner.url]}, 200
                elif self.path.startswith("/health/"):
                    models = [{"name": MODEL, "version": "1.0.0"}]
                    body, status = {"status": "ok", "url": owner.url, "models": models, "lag": 0}, 200
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


def test_image_filter_hides_hidden_images_unless_asked():
    assert image_filter() == {"hidden": {"$ne": True}}
    assert image_filter(include_hidden=True) == {}


def test_image_filter_matches_the_corrected_label_and_every_other_filter():
    q = image_filter(label="tabby", score=(0.5, 1.0), model=f"{MODEL}:1.0.0", source="upload")
    assert q == {
        "elabel": "tabby",  # the effective label: a correction wins
        "score": {"$gte": 0.5, "$lte": 1.0},
        "model": MODEL,
        "model_version": "1.0.0",
        "source": "upload",
        "hidden": {"$ne": True},
    }  # flat: the embedded server scans the whole collection for a top-level $and


def test_image_filter_adds_nothing_for_all_and_the_full_score_range():
    assert image_filter(label=ALL, score=(0.0, 1.0), model=ALL, source=ALL, include_hidden=True) == {}


def test_image_filter_refuses_a_model_without_a_version():
    with pytest.raises(ValueError):
        image_filter(model="no-version")
    assert image_filter(model="a:b:1.0", include_hidden=True) == {"model": "a:b", "model_version": "1.0"}


def test_merge_keeps_the_tighter_bound_of_one_field_and_flattens_the_rest():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    since = {"updated_at": {"$gte": t0}, "hidden": {"$ne": True}}
    page = {"updated_at": {"$gte": t0 - timedelta(hours=1), "$lt": t0 + timedelta(hours=1)}}
    assert merge(since, page) == {
        "updated_at": {"$gte": t0, "$lt": t0 + timedelta(hours=1)},
        "hidden": {"$ne": True},
    }
    assert merge({"a": 1}, {"a": 2}) == {"a": 1, "$and": [{"a": 2}]}  # cannot merge: both kept
    assert merge({"a": 1}, {"a": 1}, {}) == {"a": 1}


def test_split_gives_the_server_one_index_and_checks_the_rest_here():
    q = image_filter(label="tabby", score=(0.5, 1.0), source="upload", since=datetime(2026, 1, 1, tzinfo=UTC))
    lead, rest = split(q, "updated_at")
    assert lead == {"elabel": "tabby", "updated_at": q["updated_at"]}
    assert rest == {"score": {"$gte": 0.5, "$lte": 1.0}, "source": "upload", "hidden": {"$ne": True}}
    lead, rest = split(image_filter(model=f"{MODEL}:2.0.0", source="upload"), "updated_at")
    assert lead == {"model": MODEL, "model_version": "2.0.0"}
    assert rest == {"source": "upload", "hidden": {"$ne": True}}
    assert split(image_filter(), "updated_at") == ({}, {"hidden": {"$ne": True}})


def test_matches_checks_what_image_filter_writes_like_the_server():
    doc = {"_id": "a", "elabel": "tabby", "score": 0.7, "source": "upload", "feedback": {"label": "x"}}
    assert matches(doc, image_filter(label="tabby", score=(0.5, 1.0), source="upload"))
    assert not matches(doc, image_filter(score=(0.0, 0.5)))
    assert not matches({**doc, "hidden": True}, image_filter())  # hidden: filtered out
    assert matches({**doc, "hidden": True}, image_filter(include_hidden=True))
    assert matches(doc, {"hidden": {"$ne": True}})  # a missing field is not True
    assert not matches(doc, {"gone": {"$gte": 1}})  # nor does it compare
    assert matches(doc, {"gone": {"$exists": False}, "feedback.label": "x", "source": {"$in": ["upload"]}})
    naive = datetime(2026, 1, 1)  # a client without tz_aware reads naive UTC times
    assert matches({"t": naive}, {"t": {"$gte": datetime(2026, 1, 1, tzinfo=UTC)}})
    with pytest.raises(ValueError):
        matches(doc, {"score": {"$mod": [2, 0]}})


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert stats.percentile(values, 50) == 50.0
    assert stats.percentile(values, 95) == 95.0
    assert stats.percentile([3.0], 95) == 3.0
    assert stats.percentile([], 50) is None


def test_previews_only_come_from_configured_folders(tmp_path: Path):
    root = tmp_path / "images"
    inside = write_image(root / "sub" / "ok.png")
    outside = write_image(tmp_path / "secret" / "private.png")
    (root / "escape.png").symlink_to(outside)  # a link inside the root to a file outside it
    (root / "alias.png").symlink_to(inside)  # a link that stays inside is fine
    roots = [root]
    safe = previews.safe_image_path

    assert safe(inside, roots) == inside.resolve()
    assert safe(root / "alias.png", roots) == inside.resolve()
    assert safe(outside, roots) is None
    assert safe(root / "escape.png", roots) is None
    assert safe(f"{root}/../secret/private.png", roots) is None
    assert safe(f"{root}/sub/../../secret/private.png", roots) is None
    assert safe(root / "missing.png", roots) is None
    assert safe(root, roots) is None  # a folder is not an image
    assert safe("bad\x00name.png", roots) is None
    assert safe(None, roots) is None
    assert safe(inside, []) is None
    assert previews.preview_jpeg(str(outside), roots) is None
    assert previews.preview_jpeg(str(root / "escape.png"), roots) is None


def test_previews_are_downscaled_jpeg_bytes(tmp_path: Path):
    root = tmp_path / "images"
    big = write_image(root / "big.png", size=(1200, 800))
    thumb = previews.preview_jpeg(str(big), [root], px=previews.THUMB_PX)
    assert thumb is not None and thumb[:3] == b"\xff\xd8\xff"  # JPEG
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.size == (160, 107)
    detail = previews.preview_jpeg(str(big), [root], px=previews.DETAIL_PX)
    with Image.open(io.BytesIO(detail)) as im:
        assert im.size == (640, 427)


def test_a_transparent_preview_is_white_not_black(tmp_path: Path):
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (300, 300), (255, 0, 0, 0)).save(rgba)
    with Image.open(io.BytesIO(previews.preview_jpeg(str(rgba), [tmp_path]))) as im:
        assert im.mode == "RGB" and im.getpixel((10, 10))[0] > 240


def test_no_preview_for_files_that_are_not_images_or_too_big(tmp_path: Path):
    root = tmp_path / "images"
    big = write_image(root / "big.png", size=(1200, 800))
    (root / "notes.txt").write_text("not an image")
    truncated = root / "cut.png"
    truncated.write_bytes(big.read_bytes()[:200])
    assert previews.preview_jpeg(str(root / "notes.txt"), [root]) is None
    assert previews.preview_jpeg(str(truncated), [root]) is None
    assert previews.preview_jpeg(str(big), [root], max_bytes=100) is None  # over the size limit
    assert previews.preview_jpeg(str(big), [root], max_pixels=1000) is None  # over the pixel limit


def test_counts_come_from_the_first_worker_that_answers(worker: FakeWorker):
    down = dead_url()
    result = workers.fetch_counts([down, worker.url])
    assert result["ok"] and result["url"] == worker.url
    assert down in result["errors"]
    assert result["body"]["current"]["counts"]["tabby"] == 4
    nobody = workers.fetch_counts([dead_url(), dead_url()])
    assert not nobody["ok"] and len(nobody["errors"]) == 2


def test_counts_ask_no_worker_after_the_first_good_answer(worker: FakeWorker):
    workers.fetch_counts([worker.url, dead_url()])
    assert len([r for r in worker.requests if r.startswith("/counts/")]) == 1


def test_worker_health_is_one_row_per_worker(worker: FakeWorker):
    down = dead_url()
    health = {row["url"]: row for row in workers.worker_health([worker.url, down])}
    assert health.keys() == {worker.url, down}
    assert health[worker.url]["status"] == "ok" and health[worker.url]["models"] == [f"{MODEL}:1.0.0"]
    assert health[down]["status"] == "down" and health[down]["error"]


def test_the_status_line_lists_every_worker_of_the_cluster_from_one_address():
    """IMGFLOW_WORKER_URLS may name one address (a Compose service, a Kubernetes Service: one
    replica per request); every worker the cluster reports gets its row, each one once."""
    a, b = FakeWorker(counts_body()), FakeWorker(counts_body())
    gone = dead_url()  # a member that stopped answering since the last rebalance
    try:
        for w in (a, b):
            w.members = [a.url, b.url, gone]
        # "localhost" reaches worker a but is not the URL it advertises, like a Service's name.
        service = a.url.replace("127.0.0.1", "localhost")
        rows = workers.worker_health([service])
        assert [row["url"] for row in rows] == sorted([a.url, b.url, gone])
        assert {row["url"]: row["status"] for row in rows} == {a.url: "ok", b.url: "ok", gone: "down"}

        feed = LiveFeed(db=None, worker_urls=[service])
        feed.refresh_now()
        line = ThroughputView(feed=feed).workers_html()
        for url, status in ((a.url, "ok"), (b.url, "ok"), (gone, "down")):
            assert f"{url} <b>{status}</b>" in line
        assert service not in line
    finally:
        a.close()
        b.close()


def test_the_worker_client_sends_the_headers_it_is_given(worker: FakeWorker):
    # The API token (IMGFLOW_API_TOKEN) reaches the workers as a header; test_api_token_e2e.py
    # checks a real worker's answer with and without it.
    feed = LiveFeed(db=None, worker_urls=[worker.url], worker_headers={"Authorization": "Bearer t0k"})
    feed.collect()
    assert {p.split("?")[0] for p in worker.requests} == {"/counts/", "/workers/", "/health/"}
    assert set(worker.authorization) == {"Bearer t0k"}


def test_counts_view_draws_current_window_bars_biggest_on_top():
    feed = LiveFeed(db=None, worker_urls=[])
    view = CountsView(feed=feed)
    assert view.bar_data() == {"label": [], "count": []}
    feed.param.update(counts=counts_body(), counts_url="http://w1:6066")
    view.update()
    # Biggest bar last: Bokeh draws categorical factors bottom-up.
    assert view.bar_source.data["label"] == ["sorrel", "espresso", "tabby"]
    assert view.bar_source.data["count"] == [1, 2, 4]
    assert list(view.bars.y_range.factors) == ["sorrel", "espresso", "tabby"]
    assert "from http://w1:6066" in view.caption.object and "<b>7</b>" in view.caption.object


def test_the_caption_says_when_windows_hop():
    body = counts_body()
    feed = LiveFeed(db=None, worker_urls=[], counts=body)
    assert "60 s windows<" in CountsView(feed=feed).caption.object
    body["window"]["step"] = 20.0
    feed = LiveFeed(db=None, worker_urls=[], counts=body)
    assert "60 s windows every 20 s" in CountsView(feed=feed).caption.object


def test_counts_view_draws_one_line_per_label_oldest_window_first():
    feed = LiveFeed(db=None, worker_urls=[])
    feed.param.update(counts=counts_body(), counts_url="http://w1:6066")
    lines = CountsView(feed=feed).line_source.data
    assert lines["label"][0] == "all labels" and lines["ys"][0] == [1, 5, 7]
    assert lines["label"][1:] == ["tabby", "espresso", "sorrel", "wall clock"]  # most images first
    assert lines["ys"][lines["label"].index("tabby")] == [0, 2, 4]


def test_an_empty_current_window_falls_back_to_the_newest_with_data():
    body = counts_body()
    body["current"] = {"start": None, "end": None, "total": 0, "counts": {}, "by_model": {}}
    view = CountsView(feed=LiveFeed(db=None, worker_urls=[], counts=body))
    assert view.bar_source.data["count"] == [1, 2, 4]


def test_a_degraded_worker_shows_red_with_its_stalled_partitions():
    feed = LiveFeed(db=None, worker_urls=[])
    feed.workers = [
        {"url": "http://w1", "status": "degraded", "models": ["m:1"], "lag": 7, "stalled": ["p-paths[2]"]},
        {"url": "http://w2", "status": "ok", "models": ["m:1"], "lag": 0, "stalled": []},
    ]
    html = ThroughputView(feed=feed).workers_html()
    assert '<span class="down">●</span> http://w1 <b>degraded</b>' in html
    assert "stalled: p-paths[2]" in html
    assert '<span class="ok">●</span> http://w2 <b>ok</b>' in html


def test_a_file_name_is_shown_escaped_never_as_markup():
    doc = {"_id": "x", "label": "tabby", "score": 0.5, "file_name": "<img src=x onerror=alert(1)>.png"}
    text = card_text(doc)
    assert "<img src=x" not in text and "&lt;img" in text


def test_the_css_lives_in_files_that_ship_with_the_package():
    import tomllib

    sheets = sorted(p.stem for p in STATIC.glob("*.css"))
    assert sheets == ["card", "image", "text", "tiles"]
    assert ".meta" in stylesheet("text") and ":host(.selected)" in stylesheet("card")
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "static/*.css" in pyproject["tool"]["setuptools"]["package-data"]["dashboard"]


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
    store_failures(db, [failure])
    early = Failure(  # alone in its interval: no result was stored then
        image_id="f0", stage="decode", kind="empty_file", message="empty", failed_at=now.timestamp() - 280
    )
    store_failures(db, [early])

    numbers = stats.throughput(db, minutes=5, now=now)
    assert numbers["stored"] == 20 and numbers["failed"] == 2
    assert numbers["stored_per_s"] == pytest.approx(20 / 300)
    assert numbers["failed_per_s"] == pytest.approx(2 / 300)
    # From a histogram with bins 12% wide (imgflow.rates): within 6% of the exact values.
    assert numbers["p50"] == pytest.approx(1.0, rel=0.07)
    assert numbers["p95"] == pytest.approx(1.9, rel=0.07)
    assert sum(numbers["series"]["stored_per_s"]) * numbers["bucket"] == pytest.approx(20)
    assert stats.totals(db) == {"images": 21, "failures": 2, "hidden": 0, "corrected": 0}

    view = ThroughputView(feed=LiveFeed(db=db, worker_urls=[]))
    view.feed.stats = {**numbers, "totals": stats.totals(db)}
    view.update()
    tiles = dict((name, value) for name, value, _bad in view.kpis())
    p50, p95 = (f"{numbers[p]:.2f} s" for p in ("p50", "p95"))
    assert tiles["p50 publish→stored"] == p50 and tiles["p95 publish→stored"] == p95
    assert tiles["images stored"] == "21" and tiles["failures"] == "2"
    assert p95 in view.tiles.object
    assert view.kpis()[0][1] == "0.07"


@e2e
def test_gallery_is_newest_first(db, seeded):
    store = store_for(db, seeded)
    assert store.total == 8
    assert [d["file_name"] for d in store.images] == [name for name, *_ in SEED]


@e2e
def test_filter_choices_come_from_what_is_stored(db, seeded):
    store = store_for(db, seeded)
    assert "tabby" in store.param.label.objects and "upload" in store.param.source.objects
    assert store.param.model.objects == [ALL, f"{MODEL}:1.0.0"]


@e2e
def test_every_filter_narrows_the_gallery(db, seeded):
    store = store_for(db, seeded)
    ids = seeded["ids"]
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


@e2e
def test_pages_are_newest_first_and_a_filter_change_starts_again(db, seeded):
    store = store_for(db, seeded, page_size=3)
    assert [d["file_name"] for d in store.images] == ["cat-1.png", "cat-2.png", "coffee-1.png"]
    store.page = 2
    assert [d["file_name"] for d in store.images] == ["clock.png", "horse.png"]
    store.label = "espresso"
    assert store.page == 0 and len(store.images) == 2


def every_page(store: DataStore, check: Any = None) -> list[str]:
    """The ids of every page from the current one to the oldest, clicking Older (``check`` on each)."""
    seen: list[str] = []
    while True:
        seen += [d["_id"] for d in store.images]
        if check is not None:
            assert check()
        if not store.has_older:
            return seen
        store.page += 1


@e2e
def test_keyset_pages_walk_every_image_once_across_batches_and_hours(db, tmp_path: Path):
    """Pages read time ranges (widening from seconds to hours), and batches share one time."""
    path = write_image(tmp_path / "images" / "a.png")
    now = datetime.now(UTC)
    expected = []
    # 12 batches of 5 (one stored time per batch), spread from now back to ~6 hours ago.
    for b in range(12):
        stored = now - timedelta(seconds=2 ** (b + 3))
        labels = ["tabby" if (b + i) % 3 else "espresso" for i in range(5)]
        preds = [
            prediction(f"b{b:02d}-{i}", path, labels[i], 0.5, submitted=stored - timedelta(seconds=1))
            for i in range(5)
        ]
        store_predictions(db, preds, stored)
        expected += [(f"b{b:02d}-{i}", labels[i]) for i in range(5)]  # newest batch first, then _id
    store = DataStore(db=db, roots=[tmp_path], page_size=7)
    store.refresh()
    seen = every_page(store, check=lambda: store.total == 60 and not store.total_capped)
    assert seen == [image_id for image_id, _ in expected]
    store.page = 0
    store.page = 5  # a jump walks forward from the last known page
    assert [d["_id"] for d in store.images] == seen[35:42]
    store.label = "espresso"
    espresso = every_page(store)
    assert espresso == [image_id for image_id, label in expected if label == "espresso"]
    assert store.total == len(espresso)


@e2e
def test_a_count_no_index_serves_stops_at_its_read_budget_and_says_more_may_match(db, tmp_path: Path):
    """A score filter is checked here: its count reads at most about the budget, then "N+"."""
    from dashboard.queries import count_images, image_filter

    path = write_image(tmp_path / "images" / "a.png")
    now = datetime.now(UTC)
    for b in range(6):  # 6 batches of 20 going back in time; a quarter of each scores low
        stored = now - timedelta(seconds=30 * b + 1)
        preds = [
            prediction(f"s{b}-{i:02d}", path, "tabby", 0.1 if i % 4 == 0 else 0.9, submitted=stored)
            for i in range(20)
        ]
        store_predictions(db, preds, stored)
    low = image_filter(score=(0.0, 0.3))
    assert count_images(db, low) == (30, False)  # within the budget: exact
    found, more = count_images(db, low, budget=40)
    assert more and 0 < found < 30  # stopped after about 40 documents read, and says "+"
    assert count_images(db, image_filter(label="tabby")) == (120, False)
    assert count_images(db, image_filter(label="tabby"), limit=50) == (50, True)  # "50+"


class Finds(monitoring.CommandListener):
    """A pymongo command listener that keeps the filters sent to one collection."""

    def __init__(self, collection: str) -> None:
        self.collection, self.filters = collection, []

    def started(self, event) -> None:
        cmd = event.command
        if cmd.get("find") == self.collection:
            self.filters.append(cmd.get("filter") or {})
        elif cmd.get("aggregate") == self.collection:  # count_documents
            self.filters.append(cmd["pipeline"][0].get("$match", {}))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


@e2e
def test_pages_read_ranges_sized_by_the_rates_with_one_index_per_query(db, mongo_url: str, tmp_path: Path):
    """The server reads what a page needs, not the history, and gets only what one index serves."""
    from pymongo import MongoClient

    path = write_image(tmp_path / "images" / "a.png")
    now = datetime.now(UTC)
    stored: list[Prediction] = []
    for b in range(40):  # 1,000 images in batches of 25, 0.2 s apart, over the last 8 s
        at = now - timedelta(seconds=8 - 0.2 * b)
        preds = []
        for i in range(25):
            n = 25 * b + i
            label = "rare" if n % 50 == 8 else ("tabby" if n % 3 else "espresso")
            source = "upload" if n % 4 == 0 else "simulator"
            score = round(0.3 + (n % 7) / 10, 2)
            preds.append(
                prediction(
                    f"i{n:04d}", path, label, score, source=source, submitted=at - timedelta(seconds=1)
                )
            )
        store_predictions(db, preds, at)
        stored += preds
    newest_first = [p for b in range(39, -1, -1) for p in stored[25 * b : 25 * b + 25]]
    finds = Finds("images")
    client: MongoClient = MongoClient(mongo_url, tz_aware=True, event_listeners=[finds])
    try:
        watched = client[db.name]
        store = DataStore(db=watched, roots=[tmp_path], page_size=10)
        store.load_images()
        assert [d["_id"] for d in store.images] == [p.image_id for p in newest_first[:10]]
        read = sum(db.images.count_documents(f) for f in finds.filters)
        assert read <= 50, f"the newest page read {read} of 1,000 images"  # by time alone: all 1,000

        finds.filters.clear()
        store.param.update(label="rare", source="upload", score=(0.5, 1.0))
        want = [p for p in newest_first if p.label == "rare" and p.source == "upload" and p.score >= 0.5]
        seen = every_page(store)
        assert want and seen == [p.image_id for p in want]
        assert store.total == len(want)
        allowed = [{"elabel"}, {"model", "model_version"}, {"source"}, set()]
        for sent in finds.filters:
            fields = set(sent) - {"updated_at"}
            assert "$and" not in sent and fields in allowed, sent  # the rest is checked client-side
    finally:
        client.close()

    # The rate intervals are read by their indexed start: a range on _id is a collection scan here.
    intervals = Finds("rates")
    client = MongoClient(mongo_url, tz_aware=True, event_listeners=[intervals])
    try:
        LiveFeed(db=client[db.name], worker_urls=[]).collect()
        DataStore(db=client[db.name], roots=[tmp_path], page_size=10).load_images()
        assert intervals.filters and all(set(f) == {"t"} for f in intervals.filters), intervals.filters
    finally:
        client.close()


@e2e
def test_ten_sessions_cost_the_database_what_one_does(db, seeded, mongo_url: str):
    from pymongo import MongoClient, monitoring

    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.names: list[str] = []

        def started(self, event) -> None:
            self.names.append(event.command_name)

        def succeeded(self, event) -> None:
            pass

        def failed(self, event) -> None:
            pass

    commands = Commands()
    client: MongoClient = MongoClient(mongo_url, tz_aware=True, event_listeners=[commands])
    try:
        watched = client[db.name]
        feed = LiveFeed(db=watched, worker_urls=[])
        feed.refresh_now()
        sessions = [DataStore(db=watched, roots=[seeded["root"]], feed=feed) for _ in range(10)]
        commands.names.clear()
        sessions[0].refresh()
        one = len(commands.names)
        for session in sessions[1:]:
            session.refresh()
        assert one > 0 and len(commands.names) == one
        assert all(s.images == sessions[0].images and s.total == 8 for s in sessions)
    finally:
        client.close()


@e2e
def test_hiding_is_stored_and_leaves_the_gallery(db, seeded):
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


@e2e
def test_a_corrected_label_is_stored_beside_the_models(db, seeded):
    store = store_for(db, seeded)
    image_id = seeded["ids"]["rocket.png"]
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert store.correct_label(image_id, "  missile ")
    fb = db.images.find_one({"_id": image_id})["feedback"]
    assert fb["label"] == "missile" and fb["predicted_label"] == "space shuttle"
    assert fb["model"] == MODEL and fb["model_version"] == "1.0.0" and fb["at"] >= before
    assert fb["user"] == "anonymous"
    assert not store.correct_label(image_id, "   ")  # blank is refused
    assert not store.correct_label("no-such-image", "x")


@e2e
def test_the_label_filter_matches_the_corrected_label(db, seeded):
    store = store_for(db, seeded)
    image_id = seeded["ids"]["rocket.png"]
    store.correct_label(image_id, "missile")
    store.refresh()
    assert "missile" in store.param.label.objects
    store.label = "missile"
    assert [d["_id"] for d in store.images] == [image_id]
    store.label = "space shuttle"  # the model's label no longer matches...
    assert store.total == 0
    assert store.clear_correction(image_id)
    assert store.total == 1  # ...until the correction is removed
    assert "feedback" not in db.images.find_one({"_id": image_id})


@e2e
def test_a_redelivered_image_keeps_the_persons_label(db, seeded):
    store = store_for(db, seeded)
    image_id = seeded["ids"]["rocket.png"]
    store.correct_label(image_id, "missile")
    doc = db.images.find_one({"_id": image_id})
    redelivered = prediction(image_id, Path(doc["path"]), "space shuttle", 0.7, submitted=NOW)
    store_predictions(db, [redelivered], datetime.now(UTC))
    assert db.images.find_one({"_id": image_id})["feedback"]["label"] == "missile"


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


@e2e
def test_the_corrections_tab_lists_and_downloads_them(db, seeded):
    store = store_for(db, seeded)
    view = CorrectionsView(store=store)
    store.correct_label(seeded["ids"]["cat-2.png"], "Egyptian cat")
    assert list(view.table.value["label"]) == ["Egyptian cat"]  # follows the edit
    downloaded = view.csv.callback().getvalue()
    assert "Egyptian cat" in downloaded and downloaded.startswith("image_id,")
    assert json.loads(view.json.callback().getvalue())[0]["label"] == "Egyptian cat"


@e2e
def test_gallery_cards_show_label_score_model_file_and_a_jpeg(db, seeded):
    store = store_for(db, seeded)
    ids = seeded["ids"]
    gallery = GalleryView(store=store)
    assert list(gallery.cards) == [ids[name] for name, *_ in SEED]
    text = card_text(store.images[0])
    assert "tabby" in text and "0.91" in text and "1.0.0" in text and "cat-1.png" in text
    assert "8 images" in gallery.summary.object
    picture = gallery.cards[ids["cat-1.png"]].objects[0]
    assert picture.object[:3] == b"\xff\xd8\xff"  # embedded JPEG bytes, not a file URL


@e2e
def test_hide_on_a_card_is_stored_and_the_card_leaves(db, seeded):
    store = store_for(db, seeded, user="carol")
    image_id = seeded["ids"]["cat-1.png"]
    gallery = GalleryView(store=store)
    hide = gallery.cards[image_id].objects[2].objects[1]
    assert hide.label == "Hide"
    hide.clicks += 1
    hidden = db.images.find_one({"_id": image_id})
    assert hidden["hidden"] is True and hidden["hidden_by"] == "carol"
    assert image_id not in gallery.cards and "7 images" in gallery.summary.object
    assert "Hidden: " in gallery.status.object


@e2e
def test_a_refresh_that_finds_nothing_new_keeps_the_cards(db, seeded):
    store = store_for(db, seeded)
    gallery = GalleryView(store=store)
    cards = dict(gallery.cards)
    store.refresh()  # equal documents: param notifies nobody, nothing is redrawn
    assert all(gallery.cards[i] is card for i, card in cards.items())


@e2e
def test_details_then_correct_the_label_in_the_detail_view(db, seeded):
    store = store_for(db, seeded, user="carol")
    image_id = seeded["ids"]["coffee-1.png"]
    gallery = GalleryView(store=store)
    detail = DetailView(store=store)
    gallery.cards[image_id].objects[2].objects[0].clicks += 1  # Details
    assert store.selected == image_id and detail.doc["_id"] == image_id
    meta = meta_html(detail.doc)
    assert "coffee-1.png" in meta and "320 × 240 px" in meta and "simulator" in meta
    assert list(topk_figure(detail.doc).y_range.factors) == ["lab coat", "tabby", "espresso"]  # best on top
    detail.label_input.value = "cup"
    detail.save.clicks += 1
    feedback = db.images.find_one({"_id": image_id})["feedback"]
    assert feedback["label"] == "cup" and feedback["user"] == "carol"
    assert "✎ cup" in card_text(next(d for d in store.images if d["_id"] == image_id))
    assert detail.clear.disabled is False
    detail.clear.clicks += 1
    assert "feedback" not in db.images.find_one({"_id": image_id})


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
def test_failures_view_lists_dead_letters_newest_first(db, seeded):
    view = FailuresView(store=store_for(db, seeded))
    frame = view.table.value
    assert list(frame["image_id"]) == ["bad-1", "bad-2"]
    assert list(frame["kind"]) == ["not_an_image", "missing_file"]
    assert "2 failures" in view.summary.object and "not_an_image 1" in view.summary.object


@e2e
def test_failures_view_retries_through_the_broker(db, seeded, broker_url: str, mongo_url: str):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from imgflow.settings import Settings

    bootstrap = broker_url.split("://", 1)[1]
    prefix = f"dash{uuid.uuid4().hex[:6]}"
    settings = Settings(
        BROKER_URL=broker_url, MONGO_URL=mongo_url, MONGO_DB=db.name, IMGFLOW_TOPIC_PREFIX=prefix
    )
    store = store_for(db, seeded, settings=settings, user="dave")
    view = FailuresView(store=store)

    async def retry_and_read() -> list[dict[str, Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.topic("paths"), 1, 1)])
        finally:
            await admin.close()
        view.table.selection = [1]  # bad-2
        await view._retry_selected()
        consumer = AIOKafkaConsumer(
            settings.topic("paths"), bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            return [json.loads(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()

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


@e2e
def test_one_shared_refresh_asks_the_worker_once_for_every_session(db, seeded, worker: FakeWorker):
    feed = LiveFeed(db=db, worker_urls=[dead_url(), worker.url])
    sessions = [Dashboard(store=DataStore(db=db, roots=[seeded["root"]]), feed=feed) for _ in range(3)]
    for board in sessions:
        board.connect(None)  # no Bokeh document: updates apply at once
    worker.requests.clear()
    feed.refresh_now()
    assert len([r for r in worker.requests if r.startswith("/counts/")]) == 1
    assert feed.counts_url == worker.url and feed.stats["totals"]["images"] == 8
    for board in sessions:
        assert board.counts.bar_source.data["label"] == ["sorrel", "espresso", "tabby"]
        assert "images stored" in board.throughput.tiles.object
        assert board.gallery.store.total == 8


@e2e
def test_new_data_makes_every_following_session_requery_once(db, seeded):
    feed = LiveFeed(db=db, worker_urls=[])
    sessions = [Dashboard(store=DataStore(db=db, roots=[seeded["root"]]), feed=feed) for _ in range(2)]
    for board in sessions:
        board.connect(None)
    feed.refresh_now()
    version = feed.version
    path = seeded["root"] / "new.png"
    write_image(path)
    store_predictions(db, [prediction("new-1", path, "tabby", 0.99, submitted=NOW)], datetime.now(UTC))
    feed.refresh_now()
    assert feed.version == version + 1
    assert all(board.store.total == 9 and "new-1" in board.gallery.cards for board in sessions)
    feed.refresh_now()
    assert feed.version == version + 1  # nothing changed: no re-query


@e2e
def test_a_paused_session_keeps_its_page_until_it_resumes(db, seeded):
    feed = LiveFeed(db=db, worker_urls=[])
    paused, live = (Dashboard(store=DataStore(db=db, roots=[seeded["root"]]), feed=feed) for _ in range(2))
    for board in (paused, live):
        board.connect(None)
    feed.refresh_now()
    paused.store.follow = False
    path = write_image(seeded["root"] / "new.png")
    store_predictions(db, [prediction("new-2", path, "tabby", 0.98, submitted=NOW)], datetime.now(UTC))
    feed.refresh_now()
    assert paused.store.total == 8 and live.store.total == 9
    paused.store.follow = True  # "Live" back on: catches up at once
    assert paused.store.total == 9


@e2e
def test_the_detail_column_shows_only_while_an_image_is_open(db, seeded):
    board = Dashboard(store=DataStore(db=db, roots=[seeded["root"]]), feed=LiveFeed(db=db, worker_urls=[]))
    assert board.detail_column.visible is False
    board.store.selected = seeded["ids"]["cat-1.png"]
    assert board.detail_column.visible is True
    board.detail.close.clicks += 1
    assert board.detail_column.visible is False


@e2e
def test_the_async_refresh_does_the_same_off_the_event_loop(db, seeded, worker: FakeWorker):
    feed = LiveFeed(db=db, worker_urls=[worker.url])
    asyncio.run(feed.refresh())
    assert feed.counts_error == "" and feed.counts_url == worker.url
    assert feed.stats["totals"]["images"] == 8


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
        "import dashboard.board, dashboard.feed as f, dashboard.queries as q\n"
        "assert q._clients == {} and f._feed is None\n"
        "print('ok')\n"
    )
    env = {"MONGO_URL": f"mongodb://127.0.0.1:{free_port()}", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_broker_memory_notice_says_what_to_do_only_past_the_limit():
    from imgflow import notices

    assert notices.broker_memory(900, 1000) is None
    message = notices.broker_memory(1500, 1000)
    assert message and "1,500 MB" in message and "Apache Kafka" in message


def test_the_broker_watch_rolls_over_when_one_partition_holds_too_many_records(capsys):
    """Records held in the fullest partition (each read of it lists them all) are a limit too."""
    import os

    from devstack.rollover import BrokerWatch

    held: list[int | None] = [4_999]
    watch = BrokerWatch(
        os.getpid(), warn_mb=1e9, mongo_url="mongodb://unused", db_name="unused", every=0.0,
        roll=True, roll_records=5_000, held=lambda: held[0],
    )  # fmt: skip
    watch()
    assert not watch.due and capsys.readouterr().out == ""
    held[0] = None  # the broker did not answer: no decision
    watch()
    assert not watch.due
    held[0] = 5_000
    watch()
    assert watch.due
    out = capsys.readouterr().out
    assert "holds 5,000 records in one partition (limit 5,000)" in out and "Rolling over" in out
    watch()  # said once while the roll is due
    assert capsys.readouterr().out == ""
    unwatched = BrokerWatch(
        os.getpid(), warn_mb=1e9, mongo_url="mongodb://unused", db_name="unused", every=0.0,
        roll=True, roll_records=0, held=lambda: 10**9,
    )  # fmt: skip
    unwatched()
    assert not unwatched.due


@e2e
def test_the_launcher_warns_on_the_dashboard_when_the_broker_grows(db, mongo_url: str, capsys):
    """The watch reads a process's memory (here this test's own) and posts once per 10% growth."""
    import os

    from devstack.rollover import BrokerWatch
    from imgflow import notices

    watch = BrokerWatch(
        os.getpid(), warn_mb=1.0, mongo_url=mongo_url, db_name=db.name, every=0.0, started_mb=0.0
    )
    watch()
    watch()  # no growth since: said once
    assert capsys.readouterr().out.count("!! The embedded Kafka broker holds") == 1
    feed = LiveFeed(db=db, worker_urls=[])
    feed.apply(feed.collect())
    assert len(feed.notices) == 1 and "embedded Kafka broker" in feed.notices[0]
    assert "⚠ The embedded Kafka broker holds" in ThroughputView(feed=feed).workers_html()
    notices.clear(db, "broker-memory")
    feed.apply(feed.collect())
    assert feed.notices == []


@e2e
def test_quality_view_shows_evaluations_and_accuracy_against_corrections(db, seeded):
    from dashboard.quality import QualityView
    from lifecycle import evaluations

    ids = seeded["ids"]
    # Version 2.0.0 re-classifies three images; people correct two images and confirm one.
    for name, label in {"cat-1.png": "tabby", "cat-2.png": "tiger cat", "rocket.png": "missile"}.items():
        doc = db.images.find_one({"_id": ids[name]})
        store_predictions(
            db,
            [prediction(ids[name], Path(doc["path"]), label, 0.8, version="2.0.0", submitted=NOW)],
            datetime.now(UTC),
        )
    store = store_for(db, seeded)
    assert store.correct_label(ids["cat-2.png"], "tiger cat")  # 1.0.0 said tabby, 2.0.0 tiger cat
    assert store.correct_label(ids["rocket.png"], "space shuttle")  # 1.0.0 right, 2.0.0 wrong
    assert store.correct_label(ids["cat-1.png"], "tabby")  # a confirmation: both right
    evaluations.save(
        db,
        {
            "model": f"{MODEL}:2.0.0",
            "data": "/data/cats",
            "held_out": True,
            "created_at": "2026-12-02T10:00:00+00:00",
            "metrics": {"images": 40, "accuracy": 0.95, "macro_f1": 0.94},
            "binary": {"roc_auc": 0.99, "chosen": {"threshold": 0.42, "target": "best_f1"}},
        },
    )

    found = evaluations.feedback_accuracy(db)
    assert found["corrected_images"] == 3
    v1, v2 = found["models"][f"{MODEL}:1.0.0"], found["models"][f"{MODEL}:2.0.0"]
    assert (v1["images"], v1["correct"]) == (3, 2)  # tabby right, tiger cat wrong, space shuttle right
    assert (v2["images"], v2["correct"]) == (3, 2)  # tabby right, tiger cat right, missile wrong
    assert v1["by_label"]["tiger cat"] == {"images": 1, "correct": 0, "accuracy": 0.0}
    assert v2["by_label"]["space shuttle"] == {"images": 1, "correct": 0, "accuracy": 0.0}
    assert evaluations.feedback_accuracy(db, model=f"{MODEL}:2.0.0")["models"].keys() == {f"{MODEL}:2.0.0"}

    view = QualityView(store=store)
    rows = view.evaluations.value.to_dict("records")
    assert [(r["model"], r["accuracy"], r["roc_auc"], r["threshold"]) for r in rows] == [
        (f"{MODEL}:2.0.0", 0.95, 0.99, 0.42)
    ]
    by_model = {r["model"]: r["accuracy"] for r in view.by_model.value.to_dict("records")}
    assert by_model == {f"{MODEL}:1.0.0": pytest.approx(2 / 3), f"{MODEL}:2.0.0": pytest.approx(2 / 3)}
    assert len(view.by_label.value) == 6 and set(view.by_day.value["model"]) == set(by_model)
    assert "3 corrected image(s)" in view.intro.object
