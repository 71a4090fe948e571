"""Ingestion end to end: watched folder, ``submit --wait``, HTTP upload, simulator.

One real worker (embedded broker + MongoDB-protocol server) serves every test
in this module; each test keeps to its own folders and ids. The watcher and the
commands run as real ``faust -A imgflow ...`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.dataset import write_dataset
from tests.support import BIN, Pipeline, Services, Worker, wait_until

pytestmark = pytest.mark.e2e

UPLOAD_LIMIT = 1_000_000
SETTLE = "0.5"


@pytest.fixture(scope="module")
def shared(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, Worker]]:
    root = tmp_path_factory.mktemp("ingest")
    pipeline = Pipeline(
        services=services,
        home=root / "home",
        image_roots=tmp_path_factory.getbasetemp(),
        extra_env={
            "IMGFLOW_UPLOAD_DIR": str(root / "uploads"),
            "IMGFLOW_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        },
    )
    pipeline.home.mkdir(parents=True)
    worker = pipeline.start_worker()
    try:
        worker.wait_ready()
        yield pipeline, worker
    finally:
        pipeline.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_dataset(tmp_path_factory.mktemp("dataset"))


# Helpers ----------------------------------------------------------------------------------


class WatcherProcess:
    """``faust -A imgflow watch`` as its own process, stopped with SIGTERM."""

    def __init__(self, pipeline: Pipeline, log: Path, *args: str) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "faust"), "-A", "imgflow", "-l", "info", "watch", *args],
                env=pipeline.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_bytes()[self.offset :].decode(errors="replace")

    def wait_scanned(self, folder: Path, timeout: float = 60) -> None:
        def scanned() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"watcher exited early:\n{self.text()[-3000:]}")
            return f"scanned {folder}" in self.text()

        wait_until(scanned, timeout, f"watcher to scan {folder}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


async def _read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of a topic, read until an empty fetch (not trusting end_offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        empty = 0
        while empty < 2:
            batches = await consumer.getmany(timeout_ms=1500)
            records = [r for rs in batches.values() for r in rs]
            empty = 0 if records else empty + 1
            out += [json.loads(r.value) for r in records]
        return out
    finally:
        await consumer.stop()


def path_messages(pipeline: Pipeline, under: Path) -> list[dict[str, Any]]:
    messages = asyncio.run(_read_topic(pipeline.services.bootstrap, pipeline.topic("paths")))
    return [m for m in messages if m.get("path", "").startswith(str(under.resolve()) + os.sep)]


def docs_under(pipeline: Pipeline, collection: str, folder: Path) -> list[dict[str, Any]]:
    prefix = str(folder.resolve()) + os.sep
    return [d for d in pipeline.mongo()[collection].find() if str(d.get("path", "")).startswith(prefix)]


def write_in_chunks(path: Path, data: bytes, chunks: int, pause: float, long_pause: float = 0.0) -> None:
    """A slow writer: several writes with pauses (one long one, if given, in the middle)."""
    size = len(data) // chunks + 1
    with open(path, "wb") as fh:
        for i in range(chunks):
            fh.write(data[i * size : (i + 1) * size])
            fh.flush()
            time.sleep(long_pause if long_pause and i == chunks // 2 else pause)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# Watched folder ---------------------------------------------------------------------------


def test_watched_folder_sends_each_file_once_across_restarts(
    shared: tuple[Pipeline, Worker], dataset: list[Path], tmp_path: Path
):
    pipeline, _ = shared
    inbox = (tmp_path / "inbox").resolve()
    inbox.mkdir()
    journal = tmp_path / "journal.sqlite3"
    args = (str(inbox), "--journal", str(journal), "--settle", SETTLE)
    log = tmp_path / "watcher.log"
    sources = iter(dataset[:40])
    written: dict[Path, float] = {}

    def record(path: Path) -> None:
        written[path.resolve()] = time.time()

    watcher = WatcherProcess(pipeline, log, *args)
    watcher.wait_scanned(inbox)

    # 30 files, in every way writers produce them.
    (inbox / "sub").mkdir()
    for i in range(10):  # written in place in one go (3 of them in a sub-folder)
        target = inbox / ("sub" if i < 3 else ".") / f"plain-{i}.jpg"
        target.write_bytes(next(sources).read_bytes())
        record(target)
    for i in range(5):  # hidden temporary name, renamed when complete
        tmp, target = inbox / f".upload-{i}.jpg.part", inbox / f"renamed-{i}.jpg"
        tmp.write_bytes(next(sources).read_bytes())
        tmp.rename(target)
        record(target)
    for i in range(5):  # *.tmp, renamed when complete
        src = next(sources)
        tmp, target = inbox / f"tmp-{i}{src.suffix}.tmp", inbox / f"tmp-{i}{src.suffix}"
        tmp.write_bytes(src.read_bytes())
        tmp.rename(target)
        record(target)
    outside = tmp_path / "batch"
    outside.mkdir()
    for i in range(3):  # a whole folder moved in: the OS reports only the folder
        src = next(sources)
        (outside / f"moved-{i}{src.suffix}").write_bytes(src.read_bytes())
    os.rename(outside, inbox / "moved-in")
    for i in range(3):
        record(next((inbox / "moved-in").glob(f"moved-{i}.*")))

    # Slow writers: 7 files written in chunks, 3 with a pause longer than the settle time.
    slow = []
    for i in range(7):
        src = next(sources)
        target = inbox / f"slow-{i}{src.suffix}"
        long_pause = 2 * float(SETTLE) if i < 3 else 0.0
        slow.append((target, src.read_bytes(), long_pause))

    def slow_write(target: Path, data: bytes, long_pause: float) -> None:
        write_in_chunks(target, data, chunks=6, pause=0.2, long_pause=long_pause)
        record(target)

    threads = [threading.Thread(target=slow_write, args=s) for s in slow]
    for t in threads:
        t.start()
    # Noise that must never be sent.
    (inbox / "notes.txt").write_text("not an image\n")
    (inbox / ".hidden.jpg").write_bytes(dataset[-1].read_bytes())
    (inbox / "never-finished.jpg.part").write_bytes(dataset[-2].read_bytes()[:1000])
    for t in threads:
        t.join()
    assert len(written) == 30

    wait_until(lambda: len(docs_under(pipeline, "images", inbox)) >= 30, 240, "30 watched files stored")
    assert watcher.stop() == 0, watcher.text()[-3000:]

    images = docs_under(pipeline, "images", inbox)
    assert len(images) == 30
    assert {Path(d["path"]) for d in images} == set(written)
    assert {d["source"] for d in images} == {"watch"}
    assert not docs_under(pipeline, "failures", inbox)
    sent = path_messages(pipeline, inbox)
    assert (
        len(sent) == 30 and len({m["path"] for m in sent}) == 30 and len({m["image_id"] for m in sent}) == 30
    )
    first_ids = {d["_id"] for d in images}

    # Light-load latency (reported, not asserted): file written -> watcher sent -> stored.
    to_sent = [m["submitted_at"] - written[Path(m["path"])] for m in sent]
    to_stored = [d["updated_at"].timestamp() - written[Path(d["path"])] for d in images]
    print(
        f"\nwatch latency over {len(images)} files (settle {SETTLE}s): written->sent "
        f"p50 {statistics.median(to_sent):.2f}s max {max(to_sent):.2f}s; written->stored "
        f"p50 {statistics.median(to_stored):.2f}s max {max(to_stored):.2f}s"
    )

    # 10 more files while the watcher is down, then a restart: all 10 sent, none of the 30 again.
    for i in range(10):
        target = inbox / ("sub" if i % 2 else ".") / f"while-down-{i}.jpg"
        target.write_bytes(next(sources).read_bytes())
        record(target)
    watcher = WatcherProcess(pipeline, log, *args)
    wait_until(lambda: len(docs_under(pipeline, "images", inbox)) >= 40, 240, "40 watched files stored")
    watcher.wait_scanned(inbox)
    assert watcher.stop() == 0, watcher.text()[-3000:]

    images = docs_under(pipeline, "images", inbox)
    assert len(images) == 40
    assert {Path(d["path"]) for d in images} == set(written)
    assert first_ids <= {d["_id"] for d in images}
    sent = path_messages(pipeline, inbox)
    assert (
        len(sent) == 40 and len({m["path"] for m in sent}) == 40 and len({m["image_id"] for m in sent}) == 40
    )
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall() == [("sent", 40)]


def test_watch_latency_at_light_load(shared: tuple[Pipeline, Worker], dataset: list[Path], tmp_path: Path):
    """20 files, two a second, each written in place: how long until stored (reported)."""
    pipeline, _ = shared
    inbox = (tmp_path / "inbox").resolve()
    watcher = WatcherProcess(
        pipeline, tmp_path / "watcher.log", str(inbox), "--journal", str(tmp_path / "j.sqlite3")
    )
    try:
        watcher.wait_scanned(inbox)
        written: dict[Path, float] = {}
        for i, src in enumerate(dataset[40:60]):
            target = inbox / f"light-{i}{src.suffix}"
            target.write_bytes(src.read_bytes())
            written[target.resolve()] = time.time()
            time.sleep(0.5)
        wait_until(lambda: len(docs_under(pipeline, "images", inbox)) >= 20, 180, "20 files stored")
    finally:
        watcher.stop()
    images = docs_under(pipeline, "images", inbox)
    assert len(images) == 20
    latency = [d["updated_at"].timestamp() - written[Path(d["path"])] for d in images]
    to_sent = [d["submitted_at"].timestamp() - written[Path(d["path"])] for d in images]
    chain = [(d["updated_at"] - d["submitted_at"]).total_seconds() for d in images]
    to_predicted = [(d["prediction"]["predicted_at"] - d["submitted_at"]).total_seconds() for d in images]
    print(
        f"\nlight load (2 files/s, default settle 1s): written->sent p50 {statistics.median(to_sent):.2f}s "
        f"max {max(to_sent):.2f}s; written->stored p50 {statistics.median(latency):.2f}s "
        f"p90 {percentile(latency, 0.9):.2f}s max {max(latency):.2f}s; of which the chain (sent->stored) "
        f"p50 {statistics.median(chain):.2f}s, sent->predicted p50 {statistics.median(to_predicted):.2f}s"
    )


def test_lifecycle_moves_files_and_the_simulator_feeds_the_folder(
    shared: tuple[Pipeline, Worker], dataset: list[Path], tmp_path: Path
):
    pipeline, _ = shared
    inbox = (tmp_path / "inbox").resolve()
    watcher = WatcherProcess(
        pipeline,
        tmp_path / "watcher.log",
        str(inbox),
        "--lifecycle",
        "--journal",
        str(tmp_path / "j.sqlite3"),
        "--settle",
        "0.3",
    )
    try:
        watcher.wait_scanned(inbox)
        # Periodic bursts copied into the watched folder: 2 spikes of 3 images, half a second apart.
        result = pipeline.run(
            "simulate",
            "--folder",
            str(dataset[0].parent),
            "--copy-to",
            str(inbox),
            "--pattern",
            "spikes",
            "--rate",
            "0",
            "--spike-every",
            "0.5",
            "--spike-size",
            "3",
            "--count",
            "6",
            "--seed",
            "7",
        )
        assert result.returncode == 0, result.stderr
        assert "sent 6 images in 2 sends" in result.stdout
        (inbox / "broken.jpg").write_text("a text file with an image's name\n")

        def settled() -> bool:
            return (
                len(list((inbox / "processed").glob("*"))) == 6
                and len(list((inbox / "failed").glob("*"))) == 1
            )

        wait_until(settled, 180, "6 files in processed/ and 1 in failed/")
    finally:
        assert watcher.stop() == 0, watcher.text()[-3000:]
    assert sorted(p.name for p in inbox.iterdir()) == ["failed", "processed", "processing"]
    assert not list((inbox / "processing").iterdir())
    images = docs_under(pipeline, "images", inbox)
    assert len(images) == 6
    for doc in images:  # documents follow the file to processed/
        assert Path(doc["path"]).parent == (inbox / "processed").resolve() and Path(doc["path"]).exists()
    failures = docs_under(pipeline, "failures", inbox)
    assert [f["kind"] for f in failures] == ["not_an_image"]


# submit --wait ----------------------------------------------------------------------------


def test_submit_wait_prints_the_summary(shared: tuple[Pipeline, Worker], dataset: list[Path], tmp_path: Path):
    pipeline, _ = shared
    folder = tmp_path / "batch"
    (folder / "deeper").mkdir(parents=True)
    good = dataset[60:68]
    for i, src in enumerate(good):
        (folder / ("deeper" if i % 3 == 0 else ".") / src.name).write_bytes(src.read_bytes())
    (folder / "notes.jpg").write_text("not an image\n" * 10)
    (folder / "empty.png").write_bytes(b"")

    result = pipeline.run("--json", "submit", "--wait", "--timeout", "180", str(folder))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == 10
    assert (summary["stored"], summary["failed"], summary["pending"]) == (8, 2, 0)
    assert summary["timed_out"] is False
    assert summary["failure_kinds"] == {"not_an_image": 1, "empty_file": 1}
    ids = [i["image_id"] for i in summary["images"]]
    docs = list(pipeline.mongo().images.find({"_id": {"$in": ids}}))
    assert len(docs) == 8
    assert summary["labels"] == dict(Counter(d["label"] for d in docs))
    by_path = {Path(i["path"]).name: i for i in summary["images"]}
    assert by_path["notes.jpg"]["status"] == "failed" and by_path["notes.jpg"]["kind"] == "not_an_image"
    assert by_path[good[0].name]["status"] == "stored" and by_path[good[0].name]["label"]

    # The plain-text summary, and ids written to a file.
    ids_file = tmp_path / "ids.txt"
    result = pipeline.run(
        "submit", "--wait", "--no-progress", "--ids-out", str(ids_file), *map(str, good[:2])
    )
    assert result.returncode == 0, result.stderr
    assert len(ids_file.read_text().split()) == 2
    assert "stored 2, failed 0, pending 0 of 2" in result.stdout
    assert "labels: " in result.stdout


def test_submit_wait_times_out_with_exit_code_2(shared: tuple[Pipeline, Worker], dataset: list[Path]):
    pipeline, _ = shared
    # A topic prefix no worker consumes: nothing will ever be stored.
    result = pipeline.run(
        "submit",
        "--wait",
        "--timeout",
        "3",
        str(dataset[0]),
        IMGFLOW_TOPIC_PREFIX=f"nobody{uuid.uuid4().hex[:6]}",
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "timed out" in result.stderr
    assert "pending 1 of 1" in result.stdout


# HTTP upload ------------------------------------------------------------------------------


async def _post(
    url: str, files: list[tuple[str, str, bytes, str]] | None = None, **raw: Any
) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        if files is not None:
            form = aiohttp.FormData()
            for field, name, data, ctype in files:
                form.add_field(field, data, filename=name, content_type=ctype)
            raw["data"] = form
        async with http.post(url, **raw) as resp:
            return resp.status, await resp.json(content_type=None)


def post(
    worker: Worker, files: list[tuple[str, str, bytes, str]] | None = None, path: str = "/images/", **raw
):
    return asyncio.run(_post(worker.url + path, files, **raw))


def test_http_upload(shared: tuple[Pipeline, Worker], dataset: list[Path]):
    pipeline, worker = shared
    uploads = Path(pipeline.env()["IMGFLOW_UPLOAD_DIR"]).resolve()
    cat = next(p for p in dataset if p.name == "chelsea-orig.jpg").read_bytes()
    coffee = next(p for p in dataset if p.name == "coffee-orig.jpg").read_bytes()
    png = next(p for p in dataset if p.suffix == ".png").read_bytes()

    # One JPEG: 201 with its id; the result appears under GET /images/{id}.
    status, body = post(worker, [("file", "chelsea.jpg", cat, "image/jpeg")])
    assert status == 201, body
    (image,) = body["images"]
    assert body["image_ids"] == [image["image_id"]]
    assert image["format"] == "JPEG" and image["file_name"] == "chelsea.jpg"
    cat_id = image["image_id"]

    # Several files in one request, and a raw body.
    status, body = post(
        worker, [("files", "coffee.jpg", coffee, "image/jpeg"), ("files", "small.png", png, "image/png")]
    )
    assert status == 201, body
    assert [i["format"] for i in body["images"]] == ["JPEG", "PNG"]
    several = body["image_ids"]
    status, body = post(worker, data=png, headers={"Content-Type": "image/png"})
    assert status == 201, body
    raw_id = body["image_ids"][0]

    # A hostile file name, sent literally as curl or a browser would: stored under a generated
    # name inside the upload folder.
    boundary = uuid.uuid4().hex
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="../../etc/passwd"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + cat
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, body = post(
        worker, data=multipart, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 201, body
    evil = body["images"][0]
    saved = (uploads / evil["stored_as"]).resolve()
    assert saved.is_relative_to(uploads) and saved.is_file()
    assert saved.name == f"{evil['image_id']}.jpg"
    assert not (uploads / "../../etc/passwd").resolve().exists()
    assert evil["file_name"] == "passwd"

    # Refusals: nothing kept, nothing published.
    before = sorted(p for p in uploads.rglob("*") if p.is_file())
    status, body = post(worker, [("file", "notes.jpg", b"just some text\n" * 100, "image/jpeg")])
    assert status == 415, body
    assert "not an image" in body["error"] and body["file"] == "notes.jpg"
    status, body = post(worker, [("file", "huge.jpg", cat[:4] + os.urandom(UPLOAD_LIMIT + 10), "image/jpeg")])
    assert status == 413, body
    status, body = post(
        worker, [("file", "ok.jpg", cat, "image/jpeg"), ("file", "bad.txt", b"text", "text/plain")]
    )
    assert status == 415, body  # all or nothing: ok.jpg is not kept either
    status, body = post(worker, data=b"{}", headers={"Content-Type": "application/json"})
    assert status == 415, body
    assert sorted(p for p in uploads.rglob("*") if p.is_file()) == before

    # Every accepted upload is classified and stored.
    ids = [cat_id, *several, raw_id, evil["image_id"]]
    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({"_id": {"$in": ids}}) == len(ids), 180, "uploads stored")
    status, result = worker.get(f"/images/{cat_id}")
    assert status == 200 and result["status"] == "stored"
    assert result["image"]["source"] == "upload"
    assert result["image"]["attrs"]["original_name"] == "chelsea.jpg"
    assert Path(result["image"]["path"]).resolve().is_relative_to(uploads)
    assert db.images.find_one({"_id": evil["image_id"]})["path"] == str(saved)
    assert worker.get("/images/")[0] == 405  # GET is /images/{id}; /images/ takes uploads
