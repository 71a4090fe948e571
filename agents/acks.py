"""Acknowledge a batch only after its outputs are safe.

``Stream.take_events`` acks every buffered event in a ``finally`` block, so an
exception or a cancellation in the middle of a batch (a worker stopping, say)
would let Faust commit offsets past results that were never written. Holding
one extra reference per message closes that gap: the ``finally`` ack only
drops our extra count, and :func:`release` (reached on success alone) makes
the offsets committable.
"""

from __future__ import annotations

from collections.abc import Sequence

from faust.types import EventT


def hold(events: Sequence[EventT]) -> None:
    for event in events:
        event.message.incref()


def release(events: Sequence[EventT]) -> None:
    for event in events:
        event.ack()


def commit_point(acked: list[int], committed: int | None) -> int | None:
    """The offset to commit for a partition, or None to keep the current one (pure).

    ``acked`` is the sorted list of acknowledged offsets (gaps already merged in),
    ``committed`` the committed position (the next offset to read) or None when
    unknown. Only a run of acknowledged offsets that starts exactly at the
    committed position may move it. Faust 0.15.3 let the run start one past it
    (``min(acked) - committed > 1``) and skipped the check for a committed
    position of 0 or None, which commits past an unacknowledged message: the
    "one message lost after kill -9" of DESIGN section 8.
    """
    if not acked:
        return None
    if committed is not None and acked[0] != committed:
        return None
    run_end = acked[0]
    for offset in acked[1:]:
        if offset != run_end + 1:
            break
        run_end = offset
    return run_end + 1


def _new_offset(self, tp):
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


def install() -> None:
    """Use :func:`commit_point` in Faust's consumer (idempotent)."""
    from faust.transport.consumer import Consumer

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
