"""The one result reader against the real broker (no worker: records are written by hand)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from imgflow.records import Failure, ImageRef, Stored, dumps
from imgflow.settings import Settings
from sources.results import ResultWatch, wait_for_results
from tests.support import Services, produce_raw

pytestmark = pytest.mark.e2e


async def create_topics(bootstrap: str, *topics: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1) for t in topics])
    finally:
        await admin.close()


def test_result_topics_created_after_the_watch_started_are_read_from_their_beginning(services: Services):
    """``submit --wait`` before any worker ran, and the launcher's tail on a fresh broker."""
    prefix = f"late{uuid.uuid4().hex[:6]}"
    settings = Settings(BROKER_URL=services.broker_url, IMGFLOW_TOPIC_PREFIX=prefix)
    stored = Stored(
        ref=ImageRef(image_id="a", submitted_at=1.0, path="/test.jpg", source="test"),
        label="tabby",
        score=0.9,
        model="m",
        model_version="1",
        stored_at=2.0,
    )
    failed = Failure(image_id="b", stage="decode", kind="missing_file", message="gone", failed_at=3.0)

    async def scenario():
        async with ResultWatch(settings, refresh_seconds=0.2) as watch:
            assert sorted(watch.missing_topics) == [f"{prefix}-failed", f"{prefix}-stored"]
            await create_topics(services.bootstrap, settings.topic("stored"), settings.topic("failed"))
            await produce_raw(services.bootstrap, settings.topic("stored"), [(b"a", dumps(stored))])
            await produce_raw(services.bootstrap, settings.topic("failed"), [(b"b", dumps(failed))])
            return await wait_for_results(watch, ["a", "b"], timeout=120)

    summary = asyncio.run(scenario())
    assert not summary.timed_out
    assert (summary.outcomes["a"].status, summary.outcomes["a"].label) == ("stored", "tabby")
    assert (summary.outcomes["b"].status, summary.outcomes["b"].kind) == ("failed", "missing_file")
