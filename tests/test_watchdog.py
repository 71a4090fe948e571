"""The stall watchdog's decision: only a partition behind the broker that stopped moving."""

from __future__ import annotations

from agents import watchdog
from agents.watchdog import STALL_AFTER, next_expected, stalled


def test_next_expected_offset():
    assert next_expected(None, None) == 0
    assert next_expected(None, 4) == 4
    assert next_expected(9, 4) == 10


def test_a_partition_behind_the_broker_that_does_not_move_is_stalled():
    watchdog._progress.clear()
    assert not stalled("tp", None, 4, 27, now=0.0)  # first sight: start the clock
    assert not stalled("tp", None, 4, 27, now=STALL_AFTER - 1)
    assert stalled("tp", None, 4, 27, now=STALL_AFTER)


def test_progress_or_being_caught_up_is_not_a_stall():
    watchdog._progress.clear()
    assert not stalled("tp", 5, 0, 27, now=0.0)
    assert not stalled("tp", 6, 0, 27, now=STALL_AFTER)  # moved: clock restarts
    assert not stalled("tp", 6, 0, 27, now=STALL_AFTER + 1)
    assert not stalled("tp", 26, 0, 27, now=10 * STALL_AFTER)  # caught up with the broker
    assert not stalled("other", None, 3, 3, now=10 * STALL_AFTER)  # nothing to read
    assert not stalled("other", None, 3, None, now=10 * STALL_AFTER)  # high-water unknown
