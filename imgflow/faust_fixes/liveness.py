"""Second line of defence against a stalled partition (the fix is imgflow/faust_fixes/consumer.py).

A partition is *stalled* when, for ``IMGFLOW_STALL_SECONDS``, its committed
offset has not moved although the broker holds more (committed < high
watermark) and nothing from it is in flight (no unacknowledged message). That
is the signature of a record that was fetched but never delivered: nothing
will ever acknowledge it, so nothing will ever commit past it. *In flight*
counts what a stream has taken and not acknowledged (Faust's unacked set) and
what still waits in an agent's queue (Faust tracks a message only when the
stream takes it), so a busy or blocked stage (a slow model, a MongoDB outage)
never looks stalled.

On a stall the worker logs it, exports ``imgflow_stalled_partitions``, reports
``degraded`` on ``/health/`` (503) and re-seeks the partition to its
*committed* offset (never past it) with delivery held still, so the missing
records are fetched again: at worst some are processed twice, which the
idempotent sinks absorb.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from imgflow.metrics import METRICS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """What one check sees of a partition."""

    committed: int | None
    highwater: int | None
    in_flight: int


@dataclass
class StallWatch:
    """Remembers when each partition's committed offset last moved (pure; time is passed in)."""

    after: float
    _since: dict[TP, tuple[int | None, float]] = field(default_factory=dict)

    def observe(self, now: float, seen: Mapping[TP, Progress]) -> set[TP]:
        """Record one check; return the partitions stalled for at least ``after`` seconds."""
        stalled = set()
        for tp in list(self._since):
            if tp not in seen:  # revoked
                del self._since[tp]
        for tp, p in seen.items():
            last = self._since.get(tp)
            if last is None or last[0] != p.committed or p.in_flight:
                # Moved, new, or busy: the clock starts again.
                self._since[tp] = (p.committed, now)
                continue
            behind = p.committed is not None and p.highwater is not None and p.committed < p.highwater
            if behind and now - last[1] >= self.after:
                stalled.add(tp)
        return stalled

    def restart(self, tp: TP, now: float) -> None:
        """After a re-seek, give the partition a full period to show progress."""
        committed = self._since.get(tp, (None, now))[0]
        self._since[tp] = (committed, now)


#: Partitions found stalled by the latest check (read by /health/).
STALLED: set[TP] = set()


# The consumer is typed Any here: what liveness reads (_unacked_messages, _committed_offset,
# _paused_partitions) is Faust's concrete Consumer, not its ConsumerT interface.
def in_flight(consumer: Any, channels: Iterable[Any]) -> dict[TP, int]:
    """Messages per partition taken and not acknowledged, or waiting in an agent's queue."""
    counts: dict[TP, int] = {}
    for message in list(consumer._unacked_messages):
        counts[message.tp] = counts.get(message.tp, 0) + 1
    for channel in list(channels):
        queue = getattr(channel, "_queue", None)
        for event in list(getattr(queue, "_queue", ())):
            message = getattr(event, "message", None)
            if message is not None:
                counts[message.tp] = counts.get(message.tp, 0) + 1
    return counts


def observe_consumer(app: Any, consumer: Any) -> dict[TP, Progress]:
    from imgflow.faust_fixes.consumer import stream_partitions

    flying = in_flight(consumer, app.topics)
    paused = set(consumer._paused_partitions)
    return {
        tp: Progress(consumer._committed_offset.get(tp), consumer.highwater(tp), flying.get(tp, 0))
        for tp in stream_partitions(consumer, consumer.assignment())
        if tp not in paused
    }


def install(app: Any, stall_seconds: float) -> None:
    """Check every worker's partitions every quarter of ``IMGFLOW_STALL_SECONDS`` (the app does
    this when it is built: a Faust timer, started with the agents)."""

    watch = StallWatch(after=stall_seconds)

    async def watch_partitions(app: Any) -> None:
        await check_partitions(app, watch)

    app.timer(max(0.5, stall_seconds / 4), name="imgflow.watch_partitions")(watch_partitions)


async def check_partitions(app: Any, watch: StallWatch) -> None:
    """One check: re-seek the partitions ``watch`` finds stalled (module docstring)."""
    from imgflow.faust_fixes.consumer import reseek

    if app.rebalancing or not app.tables.recovery.completed.is_set():  # Any: Faust's TableManager
        return
    consumer: Any = app.consumer  # Faust's concrete Consumer (see in_flight)
    stalled = watch.observe(time.monotonic(), observe_consumer(app, consumer))
    STALLED.clear()
    STALLED.update(stalled)
    METRICS.stalled_partitions.set(len(stalled))
    if not stalled:
        return
    log.warning(
        "stalled partitions (committed < high watermark, nothing in flight, no progress for %.0fs): %s;"
        " re-seeking them to their committed offsets",
        watch.after,
        ", ".join(
            f"{tp.topic}[{tp.partition}]@{consumer._committed_offset.get(tp)}" for tp in sorted(stalled)
        ),
    )
    await reseek(app, stalled)
    METRICS.reseeks.inc(len(stalled))
    now = time.monotonic()
    for tp in stalled:
        watch.restart(tp, now)
