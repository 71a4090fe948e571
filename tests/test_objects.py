"""Object-store paths (imgflow/objects.py): the roots rule, and reads, limits and failure kinds
against a real S3-protocol server (moto's, on loopback), end to end through a worker: images
under ``s3://`` classified and previewed, uploads put in a bucket."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from imgflow.imaging import ImageRejected, Limits
from imgflow.objects import inside_object_roots, list_objects, normalized, read_object, write_object
from simulator.dataset import write_dataset
from tests.support import Pipeline, Services, Worker, path_message, produce_raw, wait_until


def test_a_uri_is_read_only_under_an_object_root_by_whole_segments():
    roots = ["s3://photos/inbox", "s3://uploads/"]
    assert inside_object_roots("s3://photos/inbox/cat.jpg", roots) == "s3://photos/inbox/cat.jpg"
    assert inside_object_roots("s3://uploads/2026-12-03/x.png", roots) == "s3://uploads/2026-12-03/x.png"
    for refused in (
        "s3://photos/inbox2/cat.jpg",  # a sibling prefix, not inside
        "s3://photos/inbox/../secrets/key.jpg",
        "s3://photos/inbox/./cat.jpg",
        "s3://photos/inbox//cat.jpg",
        "s3://photos/inbox",  # the root itself is no object
        "s3://other/inbox/cat.jpg",
        "/photos/inbox/cat.jpg",
        None,
    ):
        assert inside_object_roots(refused, roots) is None, refused
    assert inside_object_roots("s3://photos/inbox/cat.jpg", []) is None
    assert normalized("s3://b/k") == "s3://b/k" and normalized("s3://") is None


@pytest.fixture
def bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    name = f"b{uuid.uuid4().hex[:10]}"
    from imgflow.objects import filesystem

    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return name


def jpeg(size=(320, 240), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.e2e
def test_objects_read_with_the_limits_and_failure_kinds_of_files(bucket: str):
    write_object(f"s3://{bucket}/in/a.jpg", jpeg())
    write_object(f"s3://{bucket}/in/empty.jpg", b"")
    write_object(f"s3://{bucket}/in/notes.txt", b"not an image")
    assert read_object(f"s3://{bucket}/in/a.jpg", Limits()) == jpeg()
    cases = {
        f"s3://{bucket}/in/missing.jpg": "missing_file",
        f"s3://{bucket}/in/empty.jpg": "empty_file",
        f"s3://no-such-bucket-{bucket}/a.jpg": "missing_file",
    }
    for uri, kind in cases.items():
        with pytest.raises(ImageRejected) as exc:
            read_object(uri, Limits())
        assert exc.value.kind == kind, uri
    with pytest.raises(ImageRejected) as big:
        read_object(f"s3://{bucket}/in/a.jpg", Limits(max_file_bytes=100))
    assert big.value.kind == "file_too_large"
    assert list_objects(f"s3://{bucket}/in/") == [f"s3://{bucket}/in/a.jpg", f"s3://{bucket}/in/empty.jpg"]


@pytest.fixture(scope="module")
def s3_worker(
    services: Services, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Worker, str]]:
    name = f"b{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("objects")
    pipeline = Pipeline(
        services=services,
        home=root / "home",
        extra_env={
            **s3_env,
            "IMGFLOW_IMAGE_ROOTS": f"s3://{name}/photos",
            "IMGFLOW_UPLOAD_URI": f"s3://{name}/uploads",
        },
    )
    pipeline.home.mkdir(parents=True)
    import os

    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)
    try:
        from imgflow.objects import filesystem

        fs, _ = filesystem(f"s3://{name}")
        fs.mkdir(name)
        worker = pipeline.start_worker()
        worker.wait_ready()
        yield pipeline, worker, name
    finally:
        pipeline.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.e2e
def test_images_under_s3_are_classified_previewed_and_refused_outside_the_roots(s3_worker, tmp_path: Path):
    pipeline, _worker, name = s3_worker
    photos = write_dataset(tmp_path / "dataset")[:3]
    uris = [f"s3://{name}/photos/{p.name}" for p in photos]
    for path, uri in zip(photos, uris, strict=True):
        write_object(uri, path.read_bytes())
    write_object(f"s3://{name}/private/secret.jpg", photos[0].read_bytes())
    messages = [path_message(uri, image_id=f"s3-{i}") for i, uri in enumerate(uris)]  # type: ignore[arg-type]
    messages += [
        path_message(f"s3://{name}/photos/missing.jpg", image_id="s3-missing"),  # type: ignore[arg-type]
        path_message(f"s3://{name}/private/secret.jpg", image_id="s3-outside"),  # type: ignore[arg-type]
        path_message(f"s3://{name}/photos/../private/secret.jpg", image_id="s3-climb"),  # type: ignore[arg-type]
    ]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    db = pipeline.mongo()
    wait_until(
        lambda: db.images.count_documents({}) >= 3 and db.failures.count_documents({}) >= 3,
        180,
        "3 images stored and 3 failures",
    )
    stored = {d["_id"]: d for d in db.images.find()}
    assert {stored[f"s3-{i}"]["path"] for i in range(3)} == set(uris)
    local = {d["file_name"]: d["label"] for d in stored.values()}
    assert set(local) == {p.name for p in photos}
    kinds = {d["_id"]: d["kind"] for d in db.failures.find()}
    assert kinds == {"s3-missing": "missing_file", "s3-outside": "outside_roots", "s3-climb": "outside_roots"}

    from dashboard.previews import object_preview_jpeg

    roots = [f"s3://{name}/photos"]
    preview = object_preview_jpeg(uris[0], roots, px=120)
    assert preview is not None and max(Image.open(io.BytesIO(preview)).size) == 120
    assert object_preview_jpeg(f"s3://{name}/private/secret.jpg", roots, px=120) is None


@pytest.mark.e2e
def test_an_upload_is_put_in_the_bucket_and_classified_from_there(s3_worker, tmp_path: Path):
    pipeline, worker, name = s3_worker
    photo = write_dataset(tmp_path / "dataset")[0]
    boundary = "imgflowboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{photo.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        worker.url + "/images/",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 201
        answer = json.loads(resp.read())
    [image] = answer["images"]
    assert image["stored_as"].startswith(f"s3://{name}/uploads/") and image["stored_as"].endswith(".jpg")
    assert read_object(image["stored_as"], Limits()) == photo.read_bytes()
    assert not any((pipeline.home / "uploads").rglob("*.jpg"))  # nothing left on the worker's disk
    db = pipeline.mongo()
    wait_until(lambda: db.images.find_one({"_id": image["image_id"]}), 120, "the upload stored")
    assert db.images.find_one({"_id": image["image_id"]})["path"] == image["stored_as"]


@pytest.mark.e2e
def test_the_watcher_puts_files_in_a_bucket_and_publishes_their_uris(s3_worker, tmp_path: Path):
    import signal
    import subprocess

    from tests.support import BIN

    pipeline, _worker, name = s3_worker
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo = write_dataset(tmp_path / "dataset")[1]
    prefix = f"s3://{name}/photos/watched"
    log = tmp_path / "watch.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "faust"), "-A", "imgflow", "-l", "info", "watch", str(inbox), "--settle", "0.5"],
            env=pipeline.env(IMGFLOW_WATCH_UPLOAD_URI=prefix, IMGFLOW_HOME=str(tmp_path / "watch-home")),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        (inbox / "dropped.jpg").write_bytes(photo.read_bytes())
        db = pipeline.mongo()
        doc = wait_until(
            lambda: db.images.find_one({"file_name": {"$regex": r"\.jpg$"}, "path": {"$regex": "/watched/"}}),
            120,
            "the watched file stored from the bucket",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert doc["path"] == f"{prefix}/{doc['_id']}.jpg" and doc["source"] == "watch"
    assert doc["attrs"]["relative_path"] == "dropped.jpg"
    assert read_object(doc["path"], Limits()) == photo.read_bytes()
