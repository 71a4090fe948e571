"""Promoting a model: the writer side of the control topic (imgflow/control.py is the workers' side).

``faust -A imgflow promote SPEC`` appends a :class:`~imgflow.control.Promotion` naming a
registered model; ``promote --rollback`` restores the one before it from the record's history;
:func:`wait_for_workers` reports when each worker's ``/health/`` names the new default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

from imgflow.control import HISTORY, KEY, Promotion, control_key, control_topic, ensure_topic
from imgflow.fields import MalformedMessage
from imgflow.settings import Settings
from imgflow.signing import sign, verified
from models.registry import registry_for

log = logging.getLogger(__name__)


def who() -> str:
    return f"{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}@{socket.gethostname()}"


def next_promotion(current: Promotion | None, spec_path: Path, model: str, by: str) -> Promotion:
    """The record that makes ``spec_path`` the default after ``current`` (pure)."""
    history = [*current.history, current.spec][-HISTORY:] if current else []
    return Promotion(str(spec_path), model, time.time(), by, history)


def rollback_of(current: Promotion | None, settings: Settings, by: str) -> Promotion:
    """The record that restores the default before ``current`` (pure, bar reading that spec)."""
    if current is None or (not current.spec and not current.history):
        raise ValueError("nothing to roll back: no model was promoted")
    previous = current.history[-1] if current.history else ""
    registry = registry_for(settings.model_dir_paths, settings.model_spec_path)
    model = registry.resolve(previous or settings.model_spec_path).key
    return Promotion(previous, model, time.time(), by, current.history[:-1])


async def read_current(settings: Settings) -> Promotion | None:
    """The latest promotion on the control topic (None if there is none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    await ensure_topic(settings)
    tp = TopicPartition(control_topic(settings), 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: Promotion | None = None
        while await consumer.position(tp) < end:
            for msg in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if msg.key == KEY and msg.value:
                    if not verified(control_key(settings), msg.value, msg.headers):
                        log.warning(
                            "control record at offset %d refused: not signed with the key", msg.offset
                        )
                        continue
                    try:
                        latest = Promotion.decode(msg.value)
                    except MalformedMessage as exc:
                        log.warning("control record at offset %d refused: %s", msg.offset, exc)
        return latest
    finally:
        await consumer.stop()


async def publish(settings: Settings, promotion: Promotion) -> None:
    from aiokafka import AIOKafkaProducer

    await ensure_topic(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        value = promotion.encode()
        signed = sign(control_key(settings), value)  # workers with IMGFLOW_CONTROL_KEY take only these
        await producer.send_and_wait(control_topic(settings), value, key=KEY, partition=0, headers=signed)
    finally:
        await producer.stop()


async def wait_for_workers(
    settings: Settings, spec_path: Path, promoted_at: float, timeout: float
) -> dict[str, float | None]:
    """Per worker: seconds from the promotion until its ``/health/`` named ``spec_path`` as its
    default, or None if it did not within ``timeout``.

    The workers are the consumer group's members as any of ``IMGFLOW_WORKER_URLS`` reports
    them (``GET /workers/``): that setting may be one load-balanced address (a Compose service,
    a Kubernetes Service) that reaches one replica per request. If none answers, the
    configured URLs themselves."""
    from imgflow.auth import auth_headers
    from imgflow.client import cluster_members, fetch_json

    deadline, headers = time.monotonic() + timeout, auth_headers(settings)
    members = await asyncio.to_thread(cluster_members, settings.worker_url_list, 2.0, headers)
    reached: dict[str, float | None] = dict.fromkeys(members or settings.worker_url_list)
    while time.monotonic() < deadline and any(v is None for v in reached.values()):
        for url in [u for u, v in reached.items() if v is None]:
            try:
                _status, body = await asyncio.to_thread(fetch_json, f"{url}/health/", 2.0, headers)
            except (OSError, ValueError):
                continue
            active = (body.get("active_model") if isinstance(body, dict) else None) or {}
            if active.get("spec") and Path(active["spec"]) == spec_path and active.get("switched_at"):
                reached[url] = max(0.0, float(active["switched_at"]) - promoted_at)
        await asyncio.sleep(0.1)
    return reached
