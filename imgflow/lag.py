"""The consumer group's lag, as an autoscaler reads it (KEDA's Prometheus scaler, an HPA on
external metrics, a person on ``/health/``).

Per topic and partition of the chain that this worker owns: **lag** = the partition's high
watermark minus the group's committed offset (what a restart or a new member would have to
read again), and the **age of the oldest unprocessed message** = now minus the timestamp of
the message at the committed offset, read in the background by a probe consumer of its own
(no group, one record per lagging partition, at most every ``AGE_EVERY`` seconds). Summed over the workers
these are the group's figures: every partition is owned by exactly one member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a probed age is reused before the probe reads the partition again.
AGE_EVERY = 5.0
#: How long the probe waits for one record of a partition (the embedded broker holds a fetch).
PROBE_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    lag: int
    committed: int
    oldest_age_s: float | None = None


def partition_lags(consumer: Any, topics: Iterable[str]) -> list[PartitionLag]:
    """Lag of every partition of ``topics`` assigned to this worker's Faust consumer, where
    its high watermark is known (after the first fetch)."""
    wanted = set(topics)
    out = []
    for tp in sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)):
        if tp.topic not in wanted:
            continue
        high = consumer.highwater(tp)
        if high is None:
            continue
        committed = consumer._committed_offset.get(tp) or 0  # Faust keeps it; not in ConsumerT
        out.append(PartitionLag(tp.topic, tp.partition, max(0, high - committed), committed))
    return out


class AgeProbe:
    """The age of the oldest unprocessed message per lagging partition, read by a probe of its own
    (no group) at the committed offset, **in the background**: :meth:`ages` answers at once from
    what the probe last read, and starts one probe round (never two at once) for the partitions
    whose figure is older than ``AGE_EVERY``. So ``/health/`` and ``/metrics`` cost the same
    with a backlog as without one, however often Kubernetes, Prometheus and dashboards ask, and
    the broker sees at most one small fetch per lagging partition every ``AGE_EVERY`` seconds.

    A figure can be up to ``AGE_EVERY`` seconds (plus one probe round) old: when the committed
    offset has moved on since, the age shown is that of an older message, so it errs high.
    """

    def __init__(self, bootstrap_servers: str | list[str]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._consumer: Any = None
        #: (topic, partition) -> (offset probed, its timestamp or None, monotonic time of the probe)
        self._stamps: dict[tuple[str, int], tuple[int, float | None, float]] = {}
        self._round: asyncio.Task[None] | None = None

    async def _started(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_wait_ms=100,
                # One record is wanted; the broker still returns a whole first batch if larger.
                max_partition_fetch_bytes=64 * 1024,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _probe(self, items: list[PartitionLag]) -> None:
        from aiokafka import TopicPartition

        for item in items:
            stamp = None
            try:
                consumer = await self._started()
                tp = TopicPartition(item.topic, item.partition)
                consumer.assign([tp])
                consumer.seek(tp, item.committed)
                found = await consumer.getmany(tp, timeout_ms=PROBE_TIMEOUT_MS, max_records=1)
                records = found.get(tp) or []
                stamp = records[0].timestamp / 1000 if records else None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the figure is missing, the scrape goes on
                log.warning("lag probe of %s[%d] failed: %s", item.topic, item.partition, exc)
            self._stamps[(item.topic, item.partition)] = (item.committed, stamp, time.monotonic())

    async def ages(self, lags: Iterable[PartitionLag], now: float | None = None) -> list[PartitionLag]:
        """``lags`` with ``oldest_age_s`` filled in from the last probe (0 for a partition with no
        lag, None until a lagging partition's first probe has read it)."""
        now = time.time() if now is None else now
        out, stale = [], []
        for item in lags:
            if item.lag == 0:
                out.append(PartitionLag(item.topic, item.partition, 0, item.committed, 0.0))
                continue
            cached = self._stamps.get((item.topic, item.partition))
            if cached is None or (cached[0] != item.committed and time.monotonic() - cached[2] > AGE_EVERY):
                stale.append(item)
            stamp = cached[1] if cached is not None else None
            age = max(0.0, now - stamp) if stamp is not None else None
            out.append(PartitionLag(item.topic, item.partition, item.lag, item.committed, age))
        live = {(i.topic, i.partition) for i in out if i.lag}
        self._stamps = {k: v for k, v in self._stamps.items() if k in live}
        if stale and (self._round is None or self._round.done()):
            self._round = asyncio.create_task(self._probe(stale))
        return out

    async def close(self) -> None:
        if self._round is not None:
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._round
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def summary(lags: Iterable[PartitionLag]) -> dict[str, Any]:
    """What ``/health/`` reports: the total, per partition, and the oldest unprocessed age."""
    items = list(lags)
    ages = [i.oldest_age_s for i in items if i.oldest_age_s is not None]
    return {
        "lag": sum(i.lag for i in items),
        "lag_by_partition": {f"{i.topic}[{i.partition}]": i.lag for i in items},
        "oldest_unprocessed_s": round(max(ages), 3) if ages else (0.0 if items else None),
    }


def export(metrics: Any, lags: Iterable[PartitionLag]) -> None:
    """Set the lag gauges to ``lags`` (partitions no longer owned disappear from the output)."""
    metrics.consumer_lag.clear()
    metrics.oldest_unprocessed.clear()
    total = 0
    for item in lags:
        labels = (item.topic, str(item.partition))
        metrics.consumer_lag.labels(*labels).set(item.lag)
        if item.oldest_age_s is not None:
            metrics.oldest_unprocessed.labels(*labels).set(item.oldest_age_s)
        total += item.lag
    metrics.consumer_lag_total.set(total)
