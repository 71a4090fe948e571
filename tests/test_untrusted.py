"""Every input is untrusted: the pure pieces that keep one hostile value from harming a worker.

Each test names the finding it guards (docs/untrusted-input.md);
the end-to-end versions against a real worker are in tests/test_hostile_e2e.py.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgflow.control import Promotion
from imgflow.fields import MalformedMessage
from imgflow.imaging import (
    ImageRejected,
    Limits,
    MemoryBudget,
    decode_cost,
    decode_data,
    decode_limits,
    read_file,
    to_rgb,
)
from imgflow.objects import inside_object_roots
from imgflow.records import ImageRef, Prediction, parse, parse_image_path
from imgflow.retry import OUTAGES, is_transient, retry
from imgflow.settings import Settings
from models.registry import ModelNotRegistered, ModelRegistry
from models.safeio import ReadRefused, read_regular
from models.spec import ModelSpecError, load_spec
from tests.images import dds_with_unknown_pixel_format, photo
from tests.tiny_model import redblue_spec

# Reads that must not block: a FIFO, a device. A regression hangs, so each such test is bounded.
pytestmark = pytest.mark.timeout(60)


def png16(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of zeros: tiny on disk, width x height x 2 bytes once decoded."""
    buf = io.BytesIO()
    Image.new("I;16", (width, height)).save(buf, "PNG")
    return buf.getvalue()


# 1. A model path in a message -----------------------------------------------------------------


def test_a_spec_path_without_a_spec_suffix_is_refused_before_it_is_opened():
    with pytest.raises(ModelSpecError, match=r"must end in \.toml"):
        load_spec("/dev/zero")  # read to the end, this never finishes (the module's timeout fails it)


def test_a_spec_that_is_a_fifo_or_a_link_is_refused_unread(tmp_path: Path):
    fifo = tmp_path / "model.toml"
    os.mkfifo(fifo)
    with pytest.raises(ModelSpecError, match="not a regular file"):
        load_spec(fifo)  # no writer: a blocking open would wait forever
    real = redblue_spec(tmp_path / "real", name="real", version="1", labels=("a", "b"))
    link = tmp_path / "linked.toml"
    link.symlink_to(real)
    registry = ModelRegistry([tmp_path])
    registry.scan()
    assert [s.name for s in registry.specs] == ["real"]  # the link is not followed into the registry


def test_a_spec_may_not_name_an_artefact_or_labels_outside_its_folder(tmp_path: Path):
    spec = redblue_spec(tmp_path / "m", name="m", version="1", labels=("a", "b"))
    text = spec.read_text()
    spec.write_text(text.replace('artefact = "m.keras"', 'artefact = "../../elsewhere/any.keras"'))
    with pytest.raises(ModelSpecError, match="outside the spec's folder"):
        load_spec(spec)
    (tmp_path / "m" / "model.toml").write_text(
        'name = "m"\nversion = "1"\nformat = "keras"\nartefact = "m.keras"\ninput_size = [8, 8]\n'
        'preprocessing = "unit"\noutput = "softmax"\nlabels_file = "/etc/passwd"\n'
    )
    with pytest.raises(ModelSpecError, match="outside the spec's folder"):
        load_spec(tmp_path / "m" / "model.toml")


def test_an_oversized_spec_file_is_refused(tmp_path: Path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (128 * 1024))
    with pytest.raises(ModelSpecError, match="over the"):
        load_spec(big)


def test_a_message_can_name_only_registered_models(tmp_path: Path):
    spec = redblue_spec(tmp_path / "models" / "rb", name="rb", version="2", labels=("a", "b"))
    outside = redblue_spec(tmp_path / "elsewhere" / "x", name="x", version="1", labels=("a", "b"))
    registry = ModelRegistry([tmp_path / "models"])
    for ref in ("rb", "rb:2", str(spec)):
        assert registry.resolve(ref).spec_path == spec.resolve()
    for ref in (str(outside), "/dev/zero", "x", "rb:3", "a" * 10_000, "rb\x00"):
        with pytest.raises(ModelNotRegistered):
            registry.resolve(ref)


def test_a_model_added_to_a_folder_is_found_by_name_without_a_restart(tmp_path: Path, monkeypatch):
    import models.registry as reg

    monkeypatch.setattr(reg, "RESCAN_EVERY", 0.0)
    registry = ModelRegistry([tmp_path])
    registry.scan()
    with pytest.raises(ModelNotRegistered):
        registry.resolve("late")
    redblue_spec(tmp_path / "late", name="late", version="1", labels=("a", "b"))
    assert registry.resolve("late").key == "late:1"


# 2. The control topic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"{}",
        b"[]",
        b'{"spec": 1, "model": "m", "promoted_at": 1}',
        b'{"spec": "", "model": "m", "promoted_at": NaN}',
        b'{"spec": "", "model": "m", "promoted_at": 1e400}',
        b'{"spec": "", "model": "m", "promoted_at": 1, "history": {"a": 1}}',
        b'{"spec": "", "model": "m", "promoted_at": 1, "extra": 1}',
        json.dumps({"spec": "x" * 5000, "model": "m", "promoted_at": 1}).encode(),
    ],
)
def test_a_control_record_that_does_not_validate_is_malformed(value: bytes):
    with pytest.raises(MalformedMessage):
        Promotion.decode(value)


def test_a_valid_control_record_round_trips():
    record = Promotion("rb:2", "rb:2", 12.5, "ana@host", ["a", "b"])
    assert Promotion.decode(record.encode()) == record


async def test_a_promotion_of_an_unregistered_model_is_refused_and_the_model_kept(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    from imgflow.control import ActiveModel
    from imgflow.metrics import METRICS
    from models.registry import ModelCache

    default = redblue_spec(tmp_path / "m", name="m", version="1", labels=("a", "b"))
    settings = Settings(IMGFLOW_MODEL=str(default), IMGFLOW_HOME=str(tmp_path))  # type: ignore[call-arg]
    active = ActiveModel(settings, ModelCache(ThreadPoolExecutor(1)), ModelRegistry([tmp_path / "m"]))
    refused = METRICS.promotions.labels("refused")._value.get()
    await active._switch(Promotion("/dev/zero", "evil:1", time.time(), "x"))
    assert METRICS.promotions.labels("refused")._value.get() == refused + 1
    assert active.spec_path == default and active.promotion is None


# 3. Decoding within a memory budget ---------------------------------------------------------------


def test_an_image_of_exactly_the_pixel_limit_is_refused():
    with pytest.raises(ImageRejected) as exc:
        decode_data(png16(100, 100), "edge.png", (8, 8), "stretch", Limits(max_pixels=10_000))
    assert exc.value.kind == "decompression_bomb" and "at or over" in exc.value.message


def test_a_decode_over_the_memory_budget_is_refused_before_pixels_are_allocated():
    limits = Limits(budget=MemoryBudget(decode_cost("I;16", 1000, 1000) - 1))
    with pytest.raises(ImageRejected) as exc:
        decode_data(png16(1000, 1000), "big.png", (8, 8), "stretch", limits)
    assert exc.value.kind == "over_memory_budget" and "IMGFLOW_DECODE_MEMORY_MB" in exc.value.message


def test_decodes_wait_for_each_other_within_the_budget():
    budget = MemoryBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with budget.hold(60, "x"):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and budget.free == 100  # two of 60 never fit in 100 together


def test_a_16_bit_image_converts_to_the_same_grey_as_before_without_float64():
    ramp = np.linspace(0, 65535, 256 * 300, dtype=np.float64).reshape(300, 256).astype(np.uint16)
    img = Image.frombytes("I;16", (256, 300), ramp.astype("<u2").tobytes())
    expected = np.clip(ramp / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # the former formula
    grey = np.asarray(to_rgb(img))[..., 0]
    assert np.abs(grey.astype(int) - expected.astype(int)).max() <= 1


def test_a_format_outside_the_allowlist_is_not_an_image(tmp_path: Path):
    limits = decode_limits(Settings())  # type: ignore[call-arg]
    data = dds_with_unknown_pixel_format(tmp_path / "texture.dds").read_bytes()
    with pytest.raises(ImageRejected) as exc:
        decode_data(data, "texture.dds", (8, 8), "stretch", limits)
    assert exc.value.kind == "not_an_image" and "JPEG" in exc.value.message


def test_an_unknown_format_name_in_the_settings_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        Settings(IMGFLOW_IMAGE_FORMATS="JPEG,NOPE")  # type: ignore[call-arg]


def test_a_fifo_or_a_device_inside_the_roots_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "cam.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageRejected) as exc:
        read_file(fifo, Limits(), [tmp_path])
    assert exc.value.kind == "not_a_file"
    with pytest.raises(ReadRefused) as refused:
        read_regular("/dev/zero", 1024)
    assert refused.value.kind == "not_a_file"


def test_a_link_swapped_in_after_the_roots_check_is_not_followed(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    photo().save(outside / "secret.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").symlink_to(outside / "secret.jpg")  # swapped in after the check
    with pytest.raises(ImageRejected) as exc:
        read_file(root / "a.jpg", Limits(), [root])
    assert exc.value.kind == "not_a_file"
    (root / "dir").symlink_to(outside)  # a folder on the way swapped for a link
    with pytest.raises(ImageRejected) as exc:
        read_file(root / "dir" / "secret.jpg", Limits(), [root])
    assert exc.value.kind == "outside_roots"


def test_a_file_is_read_no_further_than_the_limit(tmp_path: Path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(ReadRefused) as exc:
        read_regular(big, 1024)
    assert exc.value.kind == "file_too_large"


# 4. Poison fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"submitted_at": 1e400},  # inf once parsed
        {"submitted_at": -1e12},
        {"submitted_at": 1e12},  # far in the future
        {"attrs": {"a\x00b": 1}},
        {"attrs": {"$set": 1}},
        {"attrs": {"a.b": 1}},
        {"attrs": {"n": 2**70}},  # BSON holds 64 bits
        {"attrs": {"deep": json.loads("[" * 50 + "]" * 50)}},
        {"attrs": {"big": "x" * 20_000}},
        {"source": "s\x00"},
        {"path": "p" * 5000},
        {"unknown": 1},
    ],
)
def test_a_paths_message_with_a_poison_field_is_malformed(fields: dict):
    body = {"image_id": "i", "path": "/data/a.jpg", **fields}
    with pytest.raises(MalformedMessage):
        parse_image_path(json.dumps(body).encode(), None, "fallback")


def test_nan_and_infinity_are_not_json():
    for raw in (b'{"path": "/a.jpg", "submitted_at": NaN}', b'{"path": "/a.jpg", "submitted_at": Infinity}'):
        with pytest.raises(MalformedMessage):
            parse_image_path(raw, None, "f")


def test_a_submitted_at_slightly_ahead_is_taken_as_now_so_it_cannot_outrank_later_requests():
    ahead = time.time() + 120  # within the allowed clock skew
    before = time.time()
    item = parse_image_path(json.dumps({"path": "/a.jpg", "submitted_at": ahead}).encode(), None, "f")
    assert before <= item.submitted_at <= time.time()
    old = parse_image_path(json.dumps({"path": "/a.jpg", "submitted_at": 1000.0}).encode(), None, "f")
    assert old.submitted_at == 1000.0  # backlogs and retries keep their time


def test_a_prediction_without_meta_is_malformed():
    body = {
        "ref": {"image_id": "i", "path": "/a.jpg", "source": "s", "submitted_at": 1.0},
        "predicted_at": 2.0,
        "label": "cat",
        "score": 0.9,
        "top_k": [{"label": "cat", "score": 0.9}],
        "model": "m",
        "model_version": "1",
        "inference_ms": 3.0,
        "batch_size": 1,
        "meta": None,
    }
    with pytest.raises(MalformedMessage):
        parse(Prediction, json.dumps(body).encode())


def test_deeply_nested_json_is_malformed_not_a_recursion_error():
    with pytest.raises(MalformedMessage):
        parse_image_path(b'{"path": "/a", "attrs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "f")


# The retry helper: transient waited out, permanent raised at once ------------------------------


def test_errors_are_sorted_into_transient_and_permanent():
    from bson.errors import InvalidDocument
    from pymongo.errors import (
        AutoReconnect,
        BulkWriteError,
        DocumentTooLarge,
        NotPrimaryError,
        OperationFailure,
        ServerSelectionTimeoutError,
    )

    for exc in (
        AutoReconnect("x"),
        NotPrimaryError("x"),
        ServerSelectionTimeoutError("x"),
        ConnectionError(),
    ):
        assert is_transient(exc), exc
    permanent = (
        DocumentTooLarge("x"),
        InvalidDocument("x"),
        OperationFailure("x", code=17419),  # document too large, server side
        BulkWriteError({"writeErrors": [{"code": 2, "errmsg": "nesting"}]}),
        ValueError(),
    )
    for exc in permanent:
        assert not is_transient(exc), exc
    assert is_transient(BulkWriteError({"writeErrors": [{"code": 91, "errmsg": "shutting down"}]}))


async def test_retry_waits_out_transient_errors_and_raises_permanent_ones_at_once():
    from pymongo.errors import AutoReconnect, DocumentTooLarge

    calls = []

    async def down_twice() -> str:  # MongoDB away for two attempts, then back
        calls.append(1)
        if len(calls) < 3:
            raise AutoReconnect("down")
        return "ok"

    seen = []

    async def no_sleep(delay: float) -> None:
        seen.append(OUTAGES.longest())

    assert await retry("write", down_twice, sleep=no_sleep) == "ok"
    assert len(calls) == 3 and seen[0] is not None and seen[0][0] == "write"
    assert OUTAGES.longest() is None  # over once it succeeded

    async def too_large() -> None:
        calls.append(1)
        raise DocumentTooLarge("16 MB")

    calls.clear()
    with pytest.raises(DocumentTooLarge):
        await retry("write", too_large, sleep=no_sleep)
    assert len(calls) == 1


# 5. Smaller doors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/root/a.jpg::memory://x", "s3://bucket/root/a.jpg?versionId=1", "s3://bucket/root/a.jpg#f"],
)
def test_a_uri_with_fsspec_chaining_or_options_is_refused(uri: str):
    assert inside_object_roots(uri, ["s3://bucket/root"]) is None
    assert inside_object_roots("s3://bucket/root/a.jpg", ["s3://bucket/root"]) == "s3://bucket/root/a.jpg"


def test_failure_metric_labels_come_from_a_fixed_set():
    from imgflow.failures import KINDS, STAGES, metric_label

    assert metric_label("missing_file", KINDS) == "missing_file"
    assert metric_label("made-up-" + "x" * 40, KINDS) == "other"
    assert metric_label("decode", STAGES) == "decode" and metric_label("evil", STAGES) == "other"


def test_every_failure_kind_imgflow_records_is_a_known_metric_label():
    """A kind added to the code but not to KINDS would be counted as ``other``."""
    import re

    from imgflow.failures import KINDS

    root = Path(__file__).resolve().parent.parent
    found = set()
    for folder in ("imgflow", "agents", "models"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            found |= set(re.findall(r'(?:ImageRejected|ReadRefused)\(\s*"([a-z_]+)"', text))
            found |= set(re.findall(r'kind = "([a-z_]+)"', text))
    assert found and found <= KINDS, found - KINDS


def test_non_finite_numbers_never_reach_mongodb_through_the_record():
    for value in (math.nan, math.inf, -math.inf):
        body = json.dumps({"path": "/a.jpg", "attrs": {"x": value}}, allow_nan=True).encode()
        with pytest.raises(MalformedMessage):
            parse_image_path(body, None, "f")


# No exception escapes a stage -------------------------------------------------------------------


async def test_a_permanent_error_dead_letters_only_the_item_that_causes_it():
    from types import SimpleNamespace

    from pymongo.errors import DocumentTooLarge

    from agents.stage import Outcome, Stage
    from imgflow.records import Failure
    from tests.test_stages import channel, drain, run_in_agent

    batches: list[list[str]] = []

    async def process(items: list) -> Outcome:
        batches.append([i.image_id for i in items])
        if any(i.image_id == "huge" for i in items):
            raise DocumentTooLarge("BSON document too large (17000000 bytes)")
        return Outcome(outputs=[(i, i.image_id, i.image_id.encode()) for i in items])

    def parse_item(event):
        if event.value == b"crash":
            raise KeyError("a parser bug")
        return SimpleNamespace(image_id=event.value.decode(), path=None, source=None, model=None)

    out, outputs = channel()
    bad, failed = channel()
    agent = run_in_agent(
        lambda: Stage("store", parse=parse_item, process=process, output=out, failures=bad, batch_size=8)
    )
    async with agent.test_context() as a:
        for value in (b"a", b"huge", b"b", b"crash"):
            await a.put(value, key=value, wait=False)
        sent = {e.value for e in await drain(outputs, 2)}
        failures = {f.image_id: f.kind for f in (parse(Failure, e.value) for e in await drain(failed, 2))}
    assert sent == {b"a", b"b"}
    assert failures.pop("huge") == "unstorable"
    assert list(failures.values()) == ["malformed_message"]  # the parser's bug, keyed by offset
    assert batches[0] == ["a", "huge", "b"] and ["huge"] in batches  # then one by one


def test_the_worker_sets_a_fixed_mmap_threshold_on_glibc():
    from imgflow.faust_fixes.worker import return_large_blocks

    assert return_large_blocks()  # this machine's libc is glibc; mallopt answers 1 on success


def test_a_replayed_dead_letter_goes_to_the_current_default_not_the_model_it_named():
    from imgflow.records import Failure, dumps
    from lifecycle.replay import _item_from

    dead = Failure(
        ref=ImageRef(image_id="i", path="/data/a.jpg", submitted_at=0.0, source="test"),
        image_id="i",
        stage="decode",
        kind="unknown_model",
        message="m",
        failed_at=time.time(),
        model="/dev/zero",
    )
    assert _item_from("failed", dumps(dead), b"i", "f").model is None


@pytest.mark.e2e
def test_frames_are_capped_in_total_whatever_the_number_of_sources(scratch_db):
    from imgflow.frames import FrameStore, frame_headers, parse_frame

    store = FrameStore(scratch_db, keep=1000, keep_total=5)
    for i in range(12):  # a new source per frame: the per-source cap never bites
        headers = dict(frame_headers(f"f{i}", source=f"src-{i}"))
        store.put([parse_frame(b"jpeg", None, headers, f"fallback-{i}")])
        time.sleep(0.002)  # distinct arrival times, newest last
    store.prune()
    kept = sorted(d["_id"] for d in scratch_db.frames.find({}, {"_id": 1}))
    assert kept == sorted(f"f{i}" for i in range(7, 12))


async def test_the_watchers_bucket_upload_reads_only_regular_files_inside_its_folders(tmp_path: Path):
    from sources.watcher.folder_watcher import FolderWatcher
    from sources.watcher.journal import Entry, Journal

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "secret.jpg"
    photo().save(secret)
    (inbox / "link.jpg").symlink_to(secret)  # a file swapped for a link out of the folder
    os.mkfifo(inbox / "fifo.jpg")  # a reader of this would wait forever
    journal = Journal(tmp_path / "journal.sqlite3")
    entries = [
        Entry(
            path=str(inbox / name),
            size=1,
            mtime_ns=1,
            image_id=name,
            sent_path=str(inbox / name),
            root=str(inbox),
        )
        for name in ("link.jpg", "fifo.jpg")
    ]
    journal.add(entries)
    watcher = FolderWatcher([inbox], journal, bucket="s3://nowhere/uploads")
    assert await watcher._upload_with_retry(entries) == []  # nothing read, nothing put
    assert {e.image_id for e in journal.in_state("abandoned")} == {"link.jpg", "fifo.jpg"}
