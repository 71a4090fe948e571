"""Acknowledge a batch only after its outputs are safe.

(What decides the committed offset from these acknowledgements is
``imgflow.consumer.commit_point``.)

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
