"""Offsets and table changelogs on the embedded broker: the launcher's drain checks and roll-over.

:func:`backlog` and :func:`end_offsets` ask the broker how far a group or a topic is (the
launcher's "drained" test, the benchmarks); :func:`read_changelogs` and
:func:`write_changelogs` carry the tables' state to a fresh broker (``devstack/carry.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


async def backlog(bootstrap_servers: str | list[str], group: str, topics: list[str], partitions: int) -> int:
    """Records on ``topics`` that consumer group ``group`` has not committed past yet.

    Asked of the broker (committed offsets against end offsets), without joining the group:
    the launcher's test that a chain is drained. Exact on the embedded broker because every
    record is its own batch there (docs/design.md §8: ``end_offsets`` is off by a batch otherwise).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        waiting = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            waiting += max(0, ends.get(tp, 0) - (committed or 0))
        return waiting
    finally:
        await consumer.stop()


async def end_offsets(bootstrap_servers: str | list[str], topics: list[str], partitions: int) -> list[int]:
    """The end offsets of partitions 0..``partitions``-1 of those of ``topics`` that exist: on
    the embedded broker, the records each holds (nothing is ever deleted there, and every
    record is its own batch: docs/design.md §8)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        known = await consumer.topics()
        tps = [TopicPartition(topic, p) for topic in topics if topic in known for p in range(partitions)]
        ends = await consumer.end_offsets(tps) if tps else {}
        return [int(end) for end in ends.values()]
    finally:
        await consumer.stop()


async def largest_partition(bootstrap_servers: str | list[str], topics: list[str], partitions: int) -> int:
    """The most records any partition of ``topics`` holds on the embedded broker."""
    return max(await end_offsets(bootstrap_servers, topics, partitions), default=0)


@dataclass
class Changelog:
    """A table's changelog topic, compacted: the last value of every key, per partition
    (keys whose last record is a deletion are left out), each with its timestamp."""

    topic: str
    partitions: int
    latest: dict[int, dict[bytes, tuple[bytes, int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.latest.values())


async def read_changelogs(bootstrap_servers: str | list[str], prefix: str) -> list[Changelog]:
    """Every ``<prefix>*-changelog`` topic on the broker, read to its end and compacted.

    What a compacted Kafka changelog would keep, for carrying the tables over to a fresh
    embedded broker (``devstack.launcher``). Read to the end offsets, which are exact there
    because every record is its own batch (docs/design.md §8); call it with the writers stopped.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(
            t for t in await consumer.topics() if t.startswith(prefix) and t.endswith("-changelog")
        )
        logs = [Changelog(topic, len(consumer.partitions_for_topic(topic) or ())) for topic in topics]
        by_topic = {log.topic: log for log in logs}
        tps = [TopicPartition(log.topic, p) for log in logs for p in range(log.partitions)]
        if not tps:
            return logs
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        reading = {tp for tp in tps if ends[tp] > 0}
        while reading:
            batches = await consumer.getmany(*reading, timeout_ms=1000)
            for tp, records in batches.items():
                latest = by_topic[tp.topic].latest.setdefault(tp.partition, {})
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = (record.value, record.timestamp)
            reading = {tp for tp in reading if await consumer.position(tp) < ends[tp]}
        return logs
    finally:
        await consumer.stop()


async def write_changelogs(
    bootstrap_servers: str | list[str],
    logs: list[Changelog],
    rebase: Callable[[str, bytes], bytes | None] = lambda topic, value: value,
) -> int:
    """Write compacted changelogs to a broker (topics created with their partition counts),
    each value through ``rebase(topic, value)`` (None: left out); the records written."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        for log_ in logs:
            with suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(log_.topic, log_.partitions, 1)])
    finally:
        await admin.close()
    # One record per batch, as the workers write (docs/design.md §8: end offsets are exact then).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_batch_size=1, linger_ms=0)
    await producer.start()
    try:

        async def carry(topic: str, partition: int, keys: dict[bytes, tuple[bytes, int]]) -> int:
            # Sequential per partition, partitions at once: the producer holds one batch per
            # partition at a time, and every record is a batch.
            written = []
            for key, (value, timestamp) in keys.items():
                carried = rebase(topic, value)
                if carried is not None:
                    written.append(
                        await producer.send(
                            topic, carried, key=key, partition=partition, timestamp_ms=timestamp
                        )
                    )
            await asyncio.gather(*written)
            return len(written)

        counts = await asyncio.gather(
            *(carry(log_.topic, p, keys) for log_ in logs for p, keys in log_.latest.items())
        )
        return sum(counts)
    finally:
        await producer.stop()
