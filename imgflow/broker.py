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

    from imgflow.retry import retry

    servers = ",".join(bootstrap_servers)
    attempts = 0

    async def handshake() -> None:
        nonlocal attempts
        attempts += 1
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
        try:
            await client.bootstrap()
        finally:
            await client.close()

    await retry(
        f"waiting for the Kafka broker at {servers}",
        handshake,
        transient=lambda exc: isinstance(exc, KafkaError),
        first_delay=first_delay,
        max_delay=max_delay,
        sleep=sleep,
    )
    if attempts > 1:
        log.info("Kafka broker at %s is up after %d attempts", servers, attempts)
    return attempts
