"""What imgflow changes in Faust 0.15.3's consumer, in one place.

Three defects of the pinned Faust (there is no newer release to move to) can
lose or stall work; each is replaced here by a small function that is tested
on its own, and :func:`install` puts them in place when the app is built.

1. **Commit point** (:func:`commit_point`). Faust let a run of acknowledged
   offsets start one past the committed position, and skipped the check when
   the committed position was 0 or unknown: it could commit past a message
   that was never acknowledged (the "one lost after kill -9" of docs/design.md
   §8). Here only a run that starts exactly at the committed position
   moves it, and nothing is committed while the position is unknown.

2. **Recovery completion** (:func:`on_recovery_completed`). Faust resumed the
   stream partitions and sought them to their committed offsets *before*
   ``flow_control.resume()`` cleared every agent queue. Records delivered in
   between were dropped from the queues although the fetch position had
   moved past them: never processed, never committed past, a partition that
   silently stops (faust-streaming issue 596; docs/design.md §8). Here nothing
   can be delivered while the positions change: stop the flow, wait until the
   fetch loop has left the batch it was delivering, clear the queues, *then*
   seek, then resume. The order is the proof: after the clear, the only
   records that reach an agent are fetched from the sought positions.

3. **Seek to committed** (:func:`perform_seek`). aiokafka's
   ``seek_to_committed`` skips a committed offset of 0 or None (aiokafka issue
   1003), so a partition that was never committed was not moved back at all,
   and Faust recorded its committed position as unknown. Here every stream
   partition gets a real starting point: its committed offset, or for a
   partition never committed the offset the consumer's reset policy starts
   from (the log start by default). The commit point's head check therefore
   always applies.

A liveness check (imgflow/faust_fixes/liveness.py) watches for a partition that stops
anyway; it is a second line of defence, not the fix.

One setting Faust does not expose is set here too: the consumer's **fetch
wait** (:func:`fetch_wait`). Faust hard-codes ``fetch_max_wait_ms=1500``;
the embedded broker holds a fetch that covers more than one partition for the
whole wait even when records arrive meanwhile (docs/design.md §8), so every hop
of the chain paid up to 1.5 s. ``IMGFLOW_FETCH_MAX_WAIT_MS`` sets it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)

#: How long recovery waits for the fetch loop to park before it seeks anyway.
#: The loop parks within milliseconds unless a fetch is in flight (at most the
#: fetch wait); a record from a fetch issued before the seek is discarded by
#: aiokafka, whose position no longer matches, so a late park is still safe.
PARK_TIMEOUT = 30.0


# -- 1. commit point ------------------------------------------------------------------


def commit_point(acked: list[int], committed: int | None) -> int | None:
    """The offset to commit for a partition, or None to keep the current one (pure).

    ``acked`` is the sorted list of acknowledged offsets (gaps already merged
    in), ``committed`` the committed position (the next offset to read), or
    None when it is not known yet. Only a run of acknowledged offsets that
    starts exactly at the committed position may move it; with no known
    position nothing moves (:func:`perform_seek` always sets one).
    """
    if not acked or committed is None or acked[0] != committed:
        return None
    run_end = acked[0]
    for offset in acked[1:]:
        if offset != run_end + 1:
            break
        run_end = offset
    return run_end + 1


def _new_offset(self: Any, tp: TP) -> int | None:
    """``Consumer._new_offset`` with :func:`commit_point` for the decision."""
    acked = self._acked[tp]
    if not acked:
        return None
    max_offset = max(acked)
    gap_for_tp = self._gap[tp]
    if gap_for_tp:
        # As Faust does: offsets the broker never delivered (compaction, markers) count as acked.
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            fill: list[int] = []
            for entry in candidates:
                fill.extend(range(entry.begin, entry.end))
            acked.extend(fill)
            gap_for_tp.chop(0, max(fill[-1], max_offset + 1))
    acked.sort()
    new = commit_point(acked, self._committed_offset[tp])
    if new is None:
        return None
    done = [o for o in acked if o < new]
    acked[: len(done)] = []
    self._acked_index[tp].difference_update(done)
    return new


# -- 3. seek to committed ---------------------------------------------------------------


def starting_points(committed: Mapping[TP, int | None], reset_to: Mapping[TP, int]) -> dict[TP, int]:
    """Where each partition starts reading (pure): committed, else the reset policy's offset."""
    return {
        tp: offset if offset is not None and offset >= 0 else reset_to[tp] for tp, offset in committed.items()
    }


async def _committed_and_reset(
    aio: Any, tps: list[Any], reset: str
) -> tuple[dict[Any, int | None], dict[Any, int]]:
    """Runs on the consumer thread: committed offsets, and reset offsets for the uncommitted."""
    committed = {tp: await aio.committed(tp) for tp in tps}
    missing = [tp for tp, offset in committed.items() if offset is None or offset < 0]
    reset_to: dict[Any, int] = {}
    if missing:
        if reset == "latest":
            reset_to = await aio.end_offsets(missing)
        else:
            reset_to = await aio.beginning_offsets(missing)
    return committed, reset_to


def stream_partitions(consumer: Any, tps: Iterable[TP]) -> set[TP]:
    """Partitions that agents read (table changelogs are positioned by recovery)."""
    return {tp for tp in tps if not consumer._is_changelog_tp(tp)}


async def perform_seek(self: Any) -> None:
    """``Consumer.perform_seek``: every stream partition to a real starting point."""
    from faust.transport.drivers.aiokafka import ensure_aiokafka_TP

    tps = sorted(stream_partitions(self, self.assignment()))
    if not tps:
        return
    thread = self._thread
    aio_tps = [ensure_aiokafka_TP(tp) for tp in tps]
    committed, reset_to = await thread.call_thread(
        _committed_and_reset, thread._ensure_consumer(), aio_tps, self.app.conf.consumer_auto_offset_reset
    )
    starts = starting_points(committed, reset_to)
    uncommitted = sorted(f"{tp.topic}[{tp.partition}]@{starts[tp]}" for tp in reset_to)
    if uncommitted:
        log.info("never committed, starting from the reset offset: %s", ", ".join(uncommitted))
    await self.seek_wait(starts)
    by_faust_tp = {TP(tp.topic, tp.partition): offset for tp, offset in starts.items()}
    for tp, offset in by_faust_tp.items():
        # read offset: the fetch loop accepts offsets >= it; None accepts all.
        self._read_offset[tp] = offset or None
        self._committed_offset[tp] = offset  # 0 stays 0: the head check applies


# -- 2. recovery completion -------------------------------------------------------------


def _parked(consumer: Any) -> asyncio.Event:
    """Set while the fetch loop waits for the flow to resume (it delivers nothing then)."""
    event: asyncio.Event | None = consumer.__dict__.get("_imgflow_parked")
    if event is None:
        event = consumer.__dict__["_imgflow_parked"] = asyncio.Event()
    return event


def _wrap_wait_next_records(original: Any) -> Any:
    async def _wait_next_records(self: Any, timeout: float) -> Any:
        if not self.flow_active:
            parked = _parked(self)
            parked.set()
            try:
                await self.wait(self.can_resume_flow)
            finally:
                parked.clear()
        return await original(self, timeout)

    _wait_next_records.__wrapped__ = original  # type: ignore[attr-defined]
    return _wait_next_records


async def hold_still_and_seek(recovery: Any, assignment: set[TP]) -> None:
    """Stop delivery, wait for the fetch loop to park, clear the queues, seek the streams.

    On return the flow is still stopped; the caller resumes it. Any step is
    interrupted (``RebalanceAgain``) when a new rebalance starts meanwhile.
    """
    app = recovery.app
    consumer = app.consumer
    consumer.stop_flow()
    app.flow_control.suspend()
    fetcher = app._fetcher
    if fetcher.started and not fetcher.should_stop:
        parked = _parked(consumer)
        await recovery._wait(parked.wait(), timeout=PARK_TIMEOUT)
        if not parked.is_set():
            log.warning("fetch loop did not park within %.0fs; seeking anyway", PARK_TIMEOUT)
    app.flow_control.clear()
    streams = stream_partitions(consumer, assignment)
    consumer.resume_partitions(streams)
    if streams:
        recovery.log.info("Seek stream partitions to committed offsets.")
        await recovery._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)


async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` with the queues cleared before the seek."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(
            "Recovery rebalancing again: generation %s, completed %s",
            self.app.consumer_generation_id,
            generation_id,
        )
        return
    await hold_still_and_seek(self, consumer.assignment())
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (an app without tables), in the same safe order."""
    await self.app.on_rebalance_complete.send()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    await hold_still_and_seek(self, self.app.consumer.assignment())
    self.completed.set()
    self.app.flow_control.resume()
    self.app.consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


# -- liveness: re-seek a stalled partition ---------------------------------------------


async def reseek(app: Any, tps: Iterable[TP]) -> None:
    """Seek ``tps`` back to their committed offsets (never past), with delivery held still.

    Used by the liveness check (imgflow/faust_fixes/liveness.py) for a partition that has
    nothing in flight, so no queue holds anything of it and nothing needs
    clearing; other partitions keep what they were delivered.
    """
    from faust.transport.drivers.aiokafka import ensure_aiokafka_TP

    consumer = app.consumer
    consumer.stop_flow()
    try:
        fetcher = app._fetcher
        if fetcher.started and not fetcher.should_stop:
            try:
                await asyncio.wait_for(_parked(consumer).wait(), PARK_TIMEOUT)
            except TimeoutError:
                log.warning("fetch loop did not park within %.0fs; re-seeking anyway", PARK_TIMEOUT)
        targets = {tp: consumer._committed_offset.get(tp) for tp in tps}
        targets = {tp: offset for tp, offset in targets.items() if offset is not None}
        if targets:
            await consumer.seek_wait({ensure_aiokafka_TP(tp): offset for tp, offset in targets.items()})
            for tp, offset in targets.items():
                consumer._read_offset[tp] = offset or None
    finally:
        if not app.rebalancing:  # a rebalance resumes the flow itself when it completes
            consumer.resume_flow()


# -- 4. fetch wait -----------------------------------------------------------------------


def fetch_wait(original: Any, wait_ms: int) -> Any:
    """Wrap Faust's consumer factory so the aiokafka consumer it builds waits ``wait_ms`` per fetch.

    aiokafka reads the value when the consumer starts (its fetcher is built in ``start``),
    after this factory returns.
    """

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    _create_worker_consumer.__wrapped__ = original  # type: ignore[attr-defined]
    return _create_worker_consumer


# -- installation -----------------------------------------------------------------------


def _faust_originals() -> dict[str, Any]:
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return {
        "AIOKafkaConsumerThread._create_worker_consumer": AIOKafkaConsumerThread._create_worker_consumer,
        "Consumer._new_offset": Consumer._new_offset,
        "Consumer.perform_seek": Consumer.perform_seek,
        "Consumer._wait_next_records": Consumer._wait_next_records,
        "Recovery.on_recovery_completed": Recovery.on_recovery_completed,
        "Recovery._resume_streams": Recovery._resume_streams,
    }


#: Faust's own functions that :func:`install` replaces or wraps, as they were on import
#: (tests pin their source: a Faust upgrade that changes one must be re-checked here).
FAUST_ORIGINALS = _faust_originals()


def install(fetch_max_wait_ms: int = 1500) -> None:
    """Put the replacements in place on Faust's classes (idempotent).

    Called when a worker starts (``App.on_first_start``), never on import.
    """
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    AIOKafkaConsumerThread._create_worker_consumer = fetch_wait(  # type: ignore[method-assign]
        FAUST_ORIGINALS["AIOKafkaConsumerThread._create_worker_consumer"], fetch_max_wait_ms
    )

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    if not hasattr(Consumer._wait_next_records, "__wrapped__"):
        Consumer._wait_next_records = _wrap_wait_next_records(Consumer._wait_next_records)  # type: ignore[method-assign]
    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]
    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
