"""Each stage's logic in process, through Faust's ``test_context()`` (no broker).

The agents are two lines each (``await stage(...).run(stream)``); here the very
same stages run in test agents whose outputs and failure records go to
in-memory channels, so what a stage emits for good, bad and malformed input
is checked without Kafka. MongoDB, where a stage writes, is the real
embedded server.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
import pytest

from agents import classify, decode, failures, store
from imgflow.imaging import ImageRejected
from imgflow.records import (
    DecodedImage,
    Failure,
    ImageMeta,
    ImagePath,
    ImageRef,
    Prediction,
    dumps,
    parse,
    parse_tensor,
    tensor_message,
)
from models.registry import ModelRegistry
from tests.images import photo

# Never started: in-memory channels only.
app = faust.App("imgflow-stage-tests", broker="kafka://127.0.0.1:9", store="memory://")


def channel() -> tuple[Any, Any]:
    """An in-memory channel and a reader subscribed to it."""
    ch = app.channel()
    return ch, ch.clone(is_iterator=True)


async def drain(reader: Any, n: int, timeout: float = 30) -> list[Any]:
    return [await reader.get(timeout=timeout) for _ in range(n)]


def run_in_agent(stage_factory):
    """A test agent on an in-memory channel running ``stage_factory()``'s stage."""

    async def body(stream):
        await stage_factory().run(stream)

    return app.agent(app.channel(), name=f"test-{id(body)}")(body)


def meta(image_id: str) -> ImageMeta:
    return ImageMeta(file_name=f"{image_id}.jpg", width=8, height=8, format="JPEG", bytes=1, sha256="0" * 64)


def tiny_spec(folder: Path, size: int = 32) -> Path:
    """A spec the decode stage can size tensors for (decode never loads the artefact)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.keras").write_bytes(b"")
    (folder / "labels.txt").write_text("a\nb\n")
    spec = folder / "model.toml"
    spec.write_text(
        'name = "tiny"\nversion = "1"\nformat = "keras"\nartefact = "m.keras"\n'
        f'input_size = [{size}, {size}]\nresize = "stretch"\npreprocessing = "unit"\n'
        'output = "softmax"\nlabels_file = "labels.txt"\n'
    )
    return spec


async def test_decode_emits_a_tensor_per_good_image_and_a_failure_per_bad_one(tmp_path: Path):
    roots = tmp_path / "images"
    roots.mkdir()
    good = roots / "good.jpg"
    photo().save(good)
    (roots / "empty.jpg").write_bytes(b"")
    spec = tiny_spec(tmp_path / "model")
    out, tensors = channel()
    bad, failed = channel()
    pool = ThreadPoolExecutor(2)
    agent = run_in_agent(
        lambda: decode.stage(
            pool, output=out, failures=bad, roots=[roots], registry=ModelRegistry([tmp_path])
        )
    )
    async with agent.test_context() as a:
        for name in ("good.jpg", "empty.jpg", "missing.jpg"):
            body = {"image_id": name, "path": str(roots / name), "model": str(spec)}
            await a.put(json.dumps(body).encode(), key=name.encode(), wait=False)
        await a.put(b"{not json", key=b"x", wait=False)
        await a.put(json.dumps({"image_id": "passwd", "path": "/etc/passwd"}).encode(), wait=False)
        [tensor] = await drain(tensors, 1)
        kinds = {f.image_id: f.kind for f in (parse(Failure, e.value) for e in await drain(failed, 4))}
    pool.shutdown()
    item, pixels, _ = parse_tensor(tensor.value, tensor.headers)
    assert item.image_id == "good.jpg" and item.shape == [32, 32, 3] and item.meta.file_name == "good.jpg"
    assert len(pixels) == 32 * 32 * 3
    assert kinds.pop("empty.jpg") == "empty_file" and kinds.pop("missing.jpg") == "missing_file"
    assert kinds.pop("passwd") == "outside_roots"
    assert list(kinds.values()) == ["malformed_message"]  # keyed by topic/partition/offset


@pytest.mark.slow
async def test_classify_predicts_per_model_and_fails_a_wrong_shape(tmp_path: Path):
    import numpy as np

    from models.registry import ModelCache
    from tests.tiny_model import redblue_spec

    spec = redblue_spec(
        tmp_path / "m", name="rb", version="1", labels=("red", "blue"), size=8, resize="stretch"
    )
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255

    def tensor(image_id: str, array: np.ndarray) -> tuple[bytes, list[tuple[str, bytes]]]:
        record = DecodedImage(
            ref=ImageRef(image_id=image_id, path=f"/x/{image_id}.jpg", source="test", submitted_at=1.0),
            decoded_at=1.0,
            model=str(spec),
            shape=list(array.shape),
            meta=meta(image_id),
        )
        return tensor_message(record, array.tobytes())

    out, predictions = channel()
    bad, failed = channel()
    models = ModelCache(ThreadPoolExecutor(1), max_models=1)
    agent = run_in_agent(
        lambda: classify.stage(models, output=out, failures=bad, registry=ModelRegistry([tmp_path]))
    )
    async with agent.test_context() as a:
        for image_id, array in (("red", red), ("odd", np.zeros((4, 4, 3), dtype=np.uint8))):
            value, headers = tensor(image_id, array)
            await a.put(value, key=image_id.encode(), headers=headers, wait=False)
        await a.put(red.tobytes(), key=b"headless", wait=False)  # no record header: malformed
        [prediction] = await drain(predictions, 1, timeout=120)
        failures = [parse(Failure, e.value) for e in await drain(failed, 2)]
    p = parse(Prediction, prediction.value)
    assert (p.image_id, p.label, p.model, p.model_version) == ("red", "red", "rb", "1")
    kinds = {f.image_id: (f.stage, f.kind) for f in failures}
    assert kinds.pop("odd") == ("classify", "bad_tensor")
    assert list(kinds.values()) == [("classify", "malformed_message")]


@pytest.mark.slow
@pytest.mark.e2e
async def test_pixels_beside_the_message_are_classified_once_and_an_expired_one_fails(
    mongo_url: str, tmp_path: Path
):
    """IMGFLOW_TENSOR_STORE=mongo: decode puts the pixels in MongoDB, classify takes them, then done."""
    import uuid

    from PIL import Image
    from pymongo import MongoClient

    from imgflow.tensors import IN_MONGO, TensorStore
    from models.registry import ModelCache
    from tests.tiny_model import redblue_spec

    client: MongoClient = MongoClient(mongo_url)
    db = client[f"tensors_{uuid.uuid4().hex[:8]}"]
    pixels = TensorStore(db, ttl=3600)
    roots = tmp_path / "images"
    roots.mkdir()
    spec = redblue_spec(
        tmp_path / "m", name="rb", version="1", labels=("red", "blue"), size=8, resize="stretch"
    )
    for name, color in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (16, 16), color).save(roots / name)
    out, tensors = channel()
    bad, failed = channel()
    pool = ThreadPoolExecutor(2)
    decoder = run_in_agent(
        lambda: decode.stage(
            pool, output=out, failures=bad, roots=[roots], tensors=pixels, registry=ModelRegistry([tmp_path])
        )
    )
    async with decoder.test_context() as a:
        for name in ("red.png", "blue.png"):
            body = {"image_id": name, "path": str(roots / name), "model": str(spec)}
            await a.put(json.dumps(body).encode(), key=name.encode(), wait=False)
        messages = await drain(tensors, 2)
    pool.shutdown()
    assert [m.value for m in messages] == [b"", b""]  # the pixels are not in the messages
    assert {dict(m.headers)["imgflow-pixels"] for m in messages} == {IN_MONGO}
    assert db.tensors.count_documents({"px": {"$exists": True}}) == 2

    db.tensors.delete_one({"_id": {"$regex": "^blue"}})  # expired before classify came back
    out, predictions = channel()
    bad, failed = channel()
    models = ModelCache(ThreadPoolExecutor(1), max_models=1)
    classifier = run_in_agent(
        lambda: classify.stage(
            models, output=out, failures=bad, tensors=pixels, registry=ModelRegistry([tmp_path])
        )
    )
    async with classifier.test_context() as a:
        for m in messages:
            await a.put(m.value, key=m.key, headers=list(m.headers.items()), wait=False)
        [prediction] = await drain(predictions, 1, timeout=120)
        [gone] = [parse(Failure, e.value) for e in await drain(failed, 1)]
        for m in messages:  # redelivered after a crash: the red one was classified already
            await a.put(m.value, key=m.key, headers=list(m.headers.items()), wait=False)
        again = [parse(Failure, e.value) for e in await drain(failed, 1)]
        # Both redelivered messages were handled by now (one agent, in order): no second prediction.
        with pytest.raises(asyncio.TimeoutError):
            await predictions.get(timeout=0.1)
    p = parse(Prediction, prediction.value)
    assert (p.image_id, p.label) == ("red.png", "red")
    assert (gone.image_id, gone.stage, gone.kind, gone.path) == (
        "blue.png",
        "classify",
        "tensor_gone",
        str(roots / "blue.png"),
    )
    assert [f.image_id for f in again] == ["blue.png"]
    done = db.tensors.find_one({"_id": {"$regex": "^red"}}) or {}
    assert done["done"] is True and "px" not in done  # the pixels dropped, a tombstone kept
    client.drop_database(db.name)
    client.close()


def prediction(image_id: str, label: str = "cat") -> bytes:
    return dumps(
        Prediction(
            ref=ImageRef(image_id=image_id, path=f"/x/{image_id}.jpg", source="test", submitted_at=1.0),
            predicted_at=2.0,
            label=label,
            score=0.9,
            top_k=[{"label": label, "score": 0.9}],
            model="m",
            model_version="1",
            inference_ms=1.0,
            batch_size=1,
            meta=meta(image_id),
        )
    )


@pytest.mark.e2e
async def test_store_writes_then_emits_one_stored_event_per_prediction(mongo_url: str, tmp_path: Path):
    from imgflow.mongo import connect
    from imgflow.storage import Store

    db_name = f"stages_{tmp_path.name[-8:]}"
    sink = Store(mongo_url, db_name)
    out, stored = channel()
    bad, failed = channel()
    agent = run_in_agent(lambda: store.stage(sink, output=out, failures=bad))
    async with agent.test_context() as a:
        await a.put(prediction("a"), key=b"a", wait=False)
        await a.put(prediction("b", "dog"), key=b"b", wait=False)
        await a.put(b"[]", key=b"c", wait=False)
        events = await drain(stored, 2)
        [malformed] = await drain(failed, 1)
    await sink.close()
    assert sorted(json.loads(e.value)["ref"]["image_id"] for e in events) == ["a", "b"]
    # Keyed by label: imgflow-stored is partitioned as the label tables are (tables/label_counts.py).
    assert sorted(e.key for e in events) == [b"cat", b"dog"]
    assert parse(Failure, malformed.value).kind == "malformed_message"
    db = connect(mongo_url)[db_name]
    assert {d["_id"]: d["label"] for d in db.images.find({}, {"label": 1})} == {"a": "cat", "b": "dog"}


@pytest.mark.e2e
async def test_failures_stage_stores_records_and_keeps_malformed_dead_letters(mongo_url: str, tmp_path: Path):
    from imgflow.mongo import connect
    from imgflow.storage import Store

    db_name = f"stages_{tmp_path.name[-8:]}"
    sink = Store(mongo_url, db_name)
    agent = run_in_agent(lambda: failures.stage(sink))
    record = Failure(image_id="a", stage="decode", kind="missing_file", message="gone", failed_at=1.0)
    db = connect(mongo_url)[db_name]
    async with agent.test_context() as a:
        await a.put(dumps(record), key=b"a", wait=False)
        await a.put(b"not json", key=b"z", wait=False)
        for _ in range(200):
            if db.failures.count_documents({}) == 2:
                break
            await asyncio.sleep(0.1)
    await sink.close()
    kinds = sorted(d["kind"] for d in db.failures.find())
    assert kinds == ["malformed_message", "missing_file"]


# Decode timeouts -------------------------------------------------------------------------------


async def decode_on_one_thread(
    monkeypatch: pytest.MonkeyPatch, images: int, seconds_each: float, timeout: float
) -> list[Any]:
    """``images`` decoded at once on a one-thread pool, each taking ``seconds_each``."""
    import time

    from imgflow.app import settings

    monkeypatch.setattr(decode, "settings", settings.model_copy(update={"decode_timeout": timeout}))

    def slow(item: ImagePath, *args: Any) -> str:
        time.sleep(seconds_each)
        return item.image_id

    monkeypatch.setattr(decode, "decode_one", slow)
    items = [ImagePath(image_id=f"img-{i}", path=f"/nowhere/{i}.jpg", source="t") for i in range(images)]
    pool = ThreadPoolExecutor(1)
    decoder = decode.Decoder(pool, roots=[])
    try:
        return await asyncio.gather(*(decoder.one(item, Path("m.toml")) for item in items))
    finally:
        pool.shutdown()


async def test_an_image_waiting_for_a_decode_thread_is_not_timed_out(monkeypatch: pytest.MonkeyPatch):
    """Four images on one thread, each 0.3 s of decoding against a 0.5 s limit: none is slow, so
    none fails, though the last waits 0.9 s for the thread (timed from submission, it would)."""
    results = await decode_on_one_thread(monkeypatch, images=4, seconds_each=0.3, timeout=0.5)
    assert results == ["img-0", "img-1", "img-2", "img-3"]


async def test_a_decode_that_overruns_fails_as_decode_timeout(monkeypatch: pytest.MonkeyPatch):
    [result] = await decode_on_one_thread(monkeypatch, images=1, seconds_each=0.6, timeout=0.2)
    assert isinstance(result, ImageRejected) and result.kind == "decode_timeout"
