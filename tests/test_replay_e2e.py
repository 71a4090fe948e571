"""Topic-level replay with a new model version, comparison, idempotency, dead-letter retry."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgflow import tally
from imgflow.imaging import decode_image
from simulator.dataset import write_dataset
from tests.support import Pipeline, path_message, produce_raw, wait_until
from tests.tiny_model import redblue_spec

pytestmark = pytest.mark.e2e

V1 = "efficientnet-lite0:1.0.0"
V2 = "redblue:2.0.0"


def build_v2(folder: Path) -> Path:
    """A second, tiny model: 'espresso' for reddish images, 'Egyptian Mau' for bluish ones."""
    return redblue_spec(folder, name="redblue", version="2.0.0", labels=("espresso", "Egyptian Mau"))


def send(pipeline: Pipeline, paths: list[Path]) -> dict[str, Path]:
    messages = [path_message(p, source="test") for p in paths]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    return {key.decode(): p for (key, _), p in zip(messages, paths, strict=True)}


def replay(pipeline: Pipeline, *args: str) -> str:
    result = pipeline.run("replay", *args, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def count_of(output: str) -> int:
    match = re.search(r"(?:would replay|replayed) (\d+) records", output)
    assert match, output
    return int(match.group(1))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_replay_with_a_new_model_lands_beside_the_old_results(pipeline: Pipeline, tmp_path: Path):
    spec2 = build_v2(tmp_path / "v2")
    dataset = write_dataset(tmp_path / "dataset")
    worker = pipeline.start_worker()
    worker.wait_ready()
    db = pipeline.mongo()

    first = send(pipeline, dataset[:12])
    wait_until(lambda: db.images.count_documents({}) >= 12, 180, "first batch stored")
    time.sleep(1.1)  # record timestamps are in ms: keep the two batches apart
    middle = time.time()
    time.sleep(1.1)
    second = send(pipeline, dataset[12:20])
    wait_until(lambda: db.images.count_documents({}) >= 20, 180, "second batch stored")

    # Dry runs count by the records' own timestamps, and by offsets.
    assert count_of(replay(pipeline, "--dry-run")) == 20
    assert count_of(replay(pipeline, "--dry-run", "--since", iso(middle))) == len(second)
    assert count_of(replay(pipeline, "--dry-run", "--until", iso(middle))) == len(first)
    assert count_of(replay(pipeline, "--dry-run", "--since", "10m")) == 20
    per_partition = dict(re.findall(r"partition (\d+): (\d+)", replay(pipeline, "--dry-run")))
    some_partition, n = next(iter(per_partition.items()))
    assert count_of(replay(pipeline, "--dry-run", "--offsets", f"{some_partition}:0-")) == int(n)
    assert count_of(replay(pipeline, "--dry-run", "--offsets", f"{some_partition}:0-0")) == 1

    # Replay the second batch with model v2: new predictions beside the old ones.
    out = replay(pipeline, "--since", iso(middle), "--model", str(spec2))
    assert count_of(out) == len(second)
    v2 = {"model": "redblue", "model_version": "2.0.0"}
    wait_until(lambda: db.predictions.count_documents(v2) >= len(second), 180, "v2 predictions")
    assert db.predictions.count_documents({}) == 20 + len(second)
    assert db.images.count_documents({}) == 20
    assert set(db.predictions.distinct("image_id", v2)) == set(second)
    latest = {d["_id"]: d["model"] for d in db.images.find({}, {"model": 1})}
    assert all(latest[i] == "redblue" for i in second) and all(
        latest[i] == "efficientnet-lite0" for i in first
    )
    replay_ids = set(db.predictions.distinct("replay_id", v2))
    assert len(replay_ids) == 1 and next(iter(replay_ids)).startswith("replay-")

    # The comparison report agrees with both models' answers computed here, independently.
    from models import load_classifier, load_spec

    local_v2 = load_classifier(load_spec(spec2))
    v1_labels = {d["image_id"]: d["label"] for d in db.predictions.find({"model": "efficientnet-lite0"})}
    expected: Counter = Counter()
    for image_id, path in second.items():
        tensor = decode_image(path, (224, 224), "center_crop").tensor
        label_b = local_v2.predict(tensor[None])[0][0][0]
        expected[(v1_labels[image_id], label_b)] += 1
    result = pipeline.run("compare", "--model-a", V1, "--model-b", V2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    agree = sum(n for (a, b), n in expected.items() if a == b)
    assert report["images"] == len(second) and report["agree"] == agree
    assert report["agreement"] == pytest.approx(agree / len(second))
    got = Counter({(a, b): n for a, row in report["confusion"].items() for b, n in row.items()})
    assert got == expected
    assert len(report["changed"]) == len(second) - agree
    assert [c["delta"] for c in report["changed"]] == sorted(
        (c["delta"] for c in report["changed"]), reverse=True
    )

    # Re-running the same replay changes nothing: documents are rewritten, never added.
    out = replay(pipeline, "--since", iso(middle), "--model", str(spec2), "--replay-id", "again")
    assert count_of(out) == len(second)  # the first replay's own messages are not replayed
    assert f"skipped {len(second)} messages of earlier replays" in out
    wait_until(
        lambda: set(db.predictions.distinct("replay_id", v2)) == {"again"}, 180, "second replay stored"
    )
    assert db.predictions.count_documents({}) == 20 + len(second)
    assert db.images.count_documents({}) == 20
    # The counters agree: a replay adds predictions per version, never images.
    counted = tally.totals(db)
    assert counted["images"] == 20
    assert counted["predictions"] == {V1: 20, V2: len(second)}


def test_failed_only_retry_clears_a_fixed_failure(pipeline: Pipeline, tmp_path: Path):
    dataset = write_dataset(tmp_path / "dataset", variants=1)
    worker = pipeline.start_worker()
    worker.wait_ready()
    db = pipeline.mongo()
    late = tmp_path / "arrives-late.jpg"
    ids = send(pipeline, [late, dataset[0]])
    late_id = next(i for i, p in ids.items() if p == late)
    wait_until(lambda: db.failures.find_one({"_id": late_id}), 120, "missing file recorded as failure")
    assert db.failures.find_one({"_id": late_id})["kind"] == "missing_file"
    assert tally.totals(db)["failures"] == 1

    assert "would retry 1 failed images" in pipeline.run("replay", "--failed-only", "--dry-run").stdout
    shutil.copyfile(dataset[1], late)  # the cause is fixed
    result = pipeline.run("replay", "--failed-only")
    assert result.returncode == 0 and "retried 1 failed images" in result.stdout, result.stderr
    wait_until(lambda: db.images.find_one({"_id": late_id}), 120, "retried image stored")
    wait_until(lambda: db.failures.count_documents({}) == 0, 60, "failure cleared")
    assert db.images.find_one({"_id": late_id})["file_name"] == late.name
    assert tally.totals(db)["failures"] == 0 and tally.totals(db)["images"] == 2


def test_replaying_a_topic_the_broker_does_not_know_replays_nothing(pipeline: Pipeline):
    """No worker has run yet, so not even the dead-letter topic exists: nothing to replay, no crash."""
    result = pipeline.run("replay", "--topic", "failed", "--dry-run", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert count_of(result.stdout) == 0
