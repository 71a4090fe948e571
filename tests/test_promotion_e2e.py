"""Promotion: the default model is data on the control topic; workers follow it without a restart."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.support import Pipeline, wait_until
from tests.test_replay_e2e import send
from tests.tiny_model import redblue_spec

pytestmark = pytest.mark.e2e

DEFAULT = "efficientnet-lite0:1.0.0"


def models_of(db, image_ids) -> Counter:
    docs = db.predictions.find({"image_id": {"$in": list(image_ids)}}, {"model": 1, "model_version": 1})
    return Counter(f"{d['model']}:{d['model_version']}" for d in docs)


def stored(pipeline: Pipeline, paths: list[Path]) -> Counter:
    db = pipeline.mongo()
    ids = send(pipeline, paths)
    wait_until(
        lambda: db.predictions.count_documents({"image_id": {"$in": list(ids)}}) >= len(ids), 180, "stored"
    )
    return models_of(db, ids)


def test_promote_switches_every_worker_follows_restarts_and_rolls_back(pipeline: Pipeline, tmp_path: Path):
    tint = redblue_spec(tmp_path / "tint", name="tint", version="2", labels=("warm", "cool"))
    broken = tmp_path / "broken"
    redblue_spec(broken, name="broken", version="1", labels=("a", "b"))
    (broken / "broken.keras").write_bytes(b"not a keras file")
    images = write_dataset(tmp_path / "dataset")
    workers = [pipeline.start_worker(), pipeline.start_worker()]
    for worker in workers:
        worker.wait_ready()
    # One worker's address, as a load-balanced service would give: promote finds the other
    # through it (the consumer group's members, GET /workers/) and waits for both.
    urls = {"IMGFLOW_WORKER_URLS": workers[0].url}

    def promote(*args: str):
        return pipeline.run("promote", *args, "--wait", "60", timeout=120, **urls)

    assert stored(pipeline, images[:8]) == {DEFAULT: 8}
    for worker in workers:
        assert worker.health()[1]["active_model"]["model"] == DEFAULT

    # Promote: both workers report the switch, and new images get the new version.
    result = promote(str(tint))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"promoted tint:2 ({tint})" in result.stdout
    print(result.stdout)  # the time each worker took, with -s
    switched = dict(re.findall(r"(\S+): switched ([\d.]+) s after the promotion", result.stdout))
    assert set(switched) == {w.url.rstrip("/") for w in workers}, result.stdout
    assert stored(pipeline, images[8:20]) == {"tint:2": 12}
    assert all(w.metric("imgflow_active_model", model="tint:2") == 1 for w in workers)

    # A restarted worker reads the control topic before it decodes anything: still tint.
    restarted = pipeline.restart_worker(workers[0])
    restarted.wait_ready()
    assert restarted.health()[1]["active_model"]["model"] == "tint:2"
    workers[1].stop()  # only the restarted worker consumes now
    assert stored(pipeline, images[20:30]) == {"tint:2": 10}

    # A model that does not load is refused: the worker keeps its default, nothing fails.
    refused = pipeline.run(
        "promote", str(broken / "model.toml"), "--wait", "10", timeout=120, IMGFLOW_WORKER_URLS=restarted.url
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not switched" in refused.stdout
    wait_until(lambda: restarted.health()[1]["active_model"]["refused"] == "broken:1", 60, "refused")
    assert restarted.metric("imgflow_promotions_total", outcome="refused") == 1
    assert stored(pipeline, images[30:36]) == {"tint:2": 6}
    assert pipeline.mongo().failures.count_documents({}) == 0

    # Roll back twice: the broken promotion, then tint: the configured default again.
    for expected in ("tint:2", DEFAULT):
        back = pipeline.run(
            "promote", "--rollback", "--wait", "60", timeout=120, IMGFLOW_WORKER_URLS=restarted.url
        )
        assert back.returncode == 0, back.stdout + back.stderr
        assert f"promoted {expected}" in back.stdout
    assert stored(pipeline, images[36:44]) == {DEFAULT: 8}
    nothing = pipeline.run("promote", "--rollback", "--wait", "0")
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr

    # Every version made shows in the per-model counts of the stored results.
    per_model = Counter(
        f"{d['model']}:{d['model_version']}"
        for d in pipeline.mongo().predictions.find({}, {"model": 1, "model_version": 1})
    )
    assert per_model == {DEFAULT: 16, "tint:2": 28}
