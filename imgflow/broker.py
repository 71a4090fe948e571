"""Reaching the Kafka broker before the worker's clients start.

Faust's aiokafka producer bootstraps once on start and a refused connection
ends the worker (``KafkaConnectionError: Unable to bootstrap``). In a
``docker compose up`` or after a host reboot the worker often starts before the
broker, so the worker waits for it instead, with backoff and a log line per
attempt that says what it is waiting for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def wait_for_broker(
    bootstrap_servers: list[str],
    *,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> int:
    """Return once a Kafka handshake (metadata request) succeeds; the number of attempts.

    A handshake rather than a TCP connect: a port that accepts before the broker
    can answer (a proxy, a broker still starting) would pass a connect check and
    then fail Faust's bootstrap anyway.
    """
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    servers = ",".join(bootstrap_servers)
    delay = first_delay
    attempt = 1
    while True:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
        try:
            await client.bootstrap()
        except KafkaError as exc:
            log.warning(
                "waiting for the Kafka broker at %s (attempt %d, next in %.1fs): %s",
                servers,
                attempt,
                delay,
                exc,
            )
        else:
            if attempt > 1:
                log.info("Kafka broker at %s is up after %d attempts", servers, attempt)
            return attempt
        finally:
            await client.close()
        await sleep(delay)
        delay = min(delay * 2, max_delay)
        attempt += 1


async def backlog(bootstrap_servers: str | list[str], group: str, topics: list[str], partitions: int) -> int:
    """Records on ``topics`` that consumer group ``group`` has not committed past yet.

    Asked of the broker (committed offsets against end offsets), without joining the group:
    the launcher's test that a chain is drained. Exact on the embedded broker because every
    record is its own batch there (DESIGN section 8: ``end_offsets`` is off by a batch otherwise).
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
