"""Stall watchdog: re-seek a stream partition whose reading stopped.

Seen on the embedded broker around rebalances after a worker was killed or
stopped: a freshly assigned partition with messages past its committed offset
was never read (Faust's read offset stayed unset while the broker served the
records to any other client). Nothing is lost (the offset is not committed),
but the chain stops. Every ``STALL_CHECK`` seconds this timer compares each
active partition's next expected offset with the broker's high-water mark; a
partition behind the mark whose read offset has not moved for ``STALL_AFTER``
seconds is sought to that next offset, which drops the client's fetch state
for it and fetches again. A false alarm (a slow agent holding its queue) costs
at most a re-fetch; results stay idempotent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from imgflow.app import app
from imgflow.metrics import METRICS

log = logging.getLogger(__name__)

STALL_CHECK = 10.0
STALL_AFTER = 30.0

#: partition -> (read offset when last seen moving, since when)
_progress: dict[Any, tuple[int | None, float]] = {}


def next_expected(read: int | None, committed: int | None) -> int:
    return read + 1 if read is not None else (committed or 0)


def stalled(tp: Any, read: int | None, committed: int | None, highwater: int | None, now: float) -> bool:
    """Pure decision: True when ``tp`` is behind the broker and has not moved for STALL_AFTER."""
    if highwater is None or highwater <= next_expected(read, committed):
        _progress.pop(tp, None)
        return False
    seen = _progress.get(tp)
    if seen is None or seen[0] != read:
        _progress[tp] = (read, now)
        return False
    return now - seen[1] >= STALL_AFTER


@app.timer(interval=STALL_CHECK)
async def unstick_partitions() -> None:
    consumer = app.consumer
    if app.rebalancing or not getattr(consumer, "flow_active", True):
        _progress.clear()
        return
    changelogs = set(app.tables.changelog_topics)
    tps = [tp for tp in consumer._get_active_partitions() if tp.topic not in changelogs]
    if not tps:
        return
    try:
        highwaters = await consumer.highwaters(*tps)
    except Exception as exc:  # broker unreachable: nothing to decide now
        log.debug("watchdog: no high-water marks: %r", exc)
        return
    now = time.monotonic()
    for tp in tps:
        read = consumer._read_offset.get(tp)
        committed = consumer._committed_offset.get(tp)
        if stalled(tp, read, committed, highwaters.get(tp), now):
            offset = next_expected(read, committed)
            log.warning(
                "partition %s[%d] stalled at offset %d (high-water %s) for %.0fs: fetching again",
                tp.topic,
                tp.partition,
                offset,
                highwaters.get(tp),
                STALL_AFTER,
            )
            METRICS.stalls.inc()
            _progress.pop(tp, None)
            await consumer.seek(tp, offset)
