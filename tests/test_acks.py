"""A batch's offsets become committable only after the batch succeeded.

Faust's ``Stream.take_events`` acks buffered events in a ``finally`` block,
also when the agent's body raised or was cancelled. ``agents.stage.hold``
keeps those messages from reaching their final ack until ``release``.
These tests drive Faust's own Message/Event reference counting through the
same steps a worker takes: delivery (incref), hold, the ``finally`` ack,
and release.
"""

from __future__ import annotations

import faust
from faust.events import Event
from faust.types import Message

from agents.stage import hold, release

# Never started: building its consumer object opens no connection.
app = faust.App("imgflow-acks-test", broker="kafka://127.0.0.1:9", store="memory://")


def delivered(n: int) -> list[Event]:
    events = []
    for offset in range(n):
        message = Message("imgflow-paths", 0, offset, 0.0, 0, None, b"k", b"v", None)
        message.incref()  # what the Conductor does when it delivers a Kafka message
        events.append(Event(app, b"k", b"v", None, message))
    return events


def take_events_finally(events: list[Event]) -> None:
    """Stream.take_events' ``finally``: one ack per buffered event, success or not."""
    for event in events:
        event.ack()


def test_failed_batch_is_not_acknowledged():
    events = delivered(3)
    hold(events)
    take_events_finally(events)  # the body raised: release() was never reached
    assert [e.message.acked for e in events] == [False, False, False]


def test_successful_batch_is_acknowledged():
    events = delivered(3)
    hold(events)
    release(events)
    assert not any(e.message.acked for e in events)  # not before take_events lets go
    take_events_finally(events)
    assert [e.message.acked for e in events] == [True, True, True]


def test_without_hold_a_failed_batch_would_be_acknowledged():
    """Why hold() exists: Faust's own behaviour."""
    events = delivered(2)
    take_events_finally(events)
    assert [e.message.acked for e in events] == [True, True]
