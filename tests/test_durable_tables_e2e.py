"""Durable tables: a restarted worker keeps its RocksDB state and reads only the changelog's tail."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from simulator.dataset import write_dataset
from tests.support import Pipeline, Worker, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

TABLES = ("label_model_counts", "label_counted")


def send(pipeline: Pipeline, paths: list[Path]) -> set[str]:
    messages = [path_message(p, source="test") for p in paths]
    asyncio.run(produce_raw(pipeline.services.bootstrap, pipeline.topic("paths"), messages))
    return {key.decode() for key, _ in messages}


def truth(pipeline: Pipeline) -> Counter:
    return Counter(doc["label"] for doc in pipeline.mongo().images.find({}, {"label": 1}))


def served(worker: Worker, n: int) -> Counter | None:
    """The cluster-wide counts from ``/counts/``, once complete and covering ``n`` images."""
    status, body = worker.get("/counts/?windows=100")
    assert status == 200, body
    total: Counter = Counter()
    for window in body["windows"]:
        total.update(window["counts"])
    return total if body["complete"] and sum(total.values()) == n else None


def replayed(worker: Worker) -> int:
    """Changelog records this worker process read to rebuild its tables."""
    return int(sum(worker.metric("imgflow_table_changelog_recovered_total", table=t) for t in TABLES))


def changelog_records(pipeline: Pipeline) -> int:
    """Records in the changelogs, asked of the broker (exact: one record per batch)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    async def ends() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.services.bootstrap)
        await consumer.start()
        try:
            tps = [
                TopicPartition(f"imgflow-{pipeline.name}-{table}-changelog", p)
                for table in TABLES
                for p in range(4)
            ]
            return sum((await consumer.end_offsets(tps)).values())
        finally:
            await consumer.stop()

    return asyncio.run(ends())


def test_restarted_worker_keeps_its_tables_and_reads_only_the_changelog_tail(
    pipeline: Pipeline, tmp_path: Path
):
    dataset = write_dataset(tmp_path / "dataset")
    db = pipeline.mongo()
    a = pipeline.start_worker()  # rocksdb:// is the default store
    a.wait_ready()
    first = send(pipeline, dataset[:30])
    wait_until(lambda: db.images.count_documents({}) >= len(first), 180, "first batch stored")
    wait_until(lambda: served(a, len(first)), 60, "counts of the first batch")
    # Every table writes each counted image once; Faust sends changelog records in the
    # background, so the counts can be served before the broker has all of them.
    expected = len(TABLES) * len(first)
    at_first_stop = wait_until(
        lambda: (n := changelog_records(pipeline)) >= expected and n, 60, "changelog records flushed"
    )
    assert at_first_stop == expected
    a.stop()  # SIGTERM

    # While it is away another node takes the partitions and counts more: the changelog grows a
    # tail. A new node has no local state, so it reads every record (memory:// always does).
    b = pipeline.start_worker()
    b.wait_ready()
    assert replayed(b) == at_first_stop
    second = send(pipeline, dataset[30:45])
    wait_until(lambda: db.images.count_documents({}) >= len(first) + len(second), 180, "second batch")
    wait_until(lambda: served(b, len(first) + len(second)), 60, "counts of both batches")
    at_second_stop = changelog_records(pipeline)
    b.stop()

    # The first node comes back on its own data dir: local state plus the tail only.
    a2 = pipeline.restart_worker(a)
    a2.wait_ready()
    counts = wait_until(lambda: served(a2, len(first) + len(second)), 60, "counts after restart")
    assert counts == truth(pipeline)
    tail = at_second_stop - at_first_stop
    assert tail > 0
    assert replayed(a2) == tail, f"read {replayed(a2)} changelog records, the tail holds {tail}"


def test_windows_kept_across_a_restart_still_expire(pipeline: Pipeline, tmp_path: Path):
    """Faust schedules expiry only for keys an agent sets; recovered windows must expire too."""
    pipeline.extra_env.update({"IMGFLOW_WINDOW_SECONDS": "2"})
    dataset = write_dataset(tmp_path / "dataset")
    db = pipeline.mongo()
    a = pipeline.start_worker()
    a.wait_ready()
    sent = send(pipeline, dataset[:10])
    wait_until(lambda: db.images.count_documents({}) >= len(sent), 180, "images stored")
    wait_until(lambda: served(a, len(sent)), 60, "counts")

    # Back on the same data dir with windows that are already past their expiry: the windows
    # read from disk must be cleaned up like the ones it counts itself.
    a2 = pipeline.restart_worker(a, IMGFLOW_WINDOW_EXPIRES="1")
    a2.wait_ready()
    assert replayed(a2) == 0  # nothing new in the changelog: all state came from disk

    def local_windows() -> list:
        status, body = a2.get("/counts/local/")
        assert status == 200, body
        return body["windows"]

    wait_until(lambda: not local_windows(), 60, "recovered windows to expire")
