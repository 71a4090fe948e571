"""The liveness check: a partition behind the broker, with nothing in flight and no progress, is stalled."""

from __future__ import annotations

from faust.types import TP

from imgflow.faust_fixes.liveness import Progress, StallWatch

P0, P1 = TP("paths", 0), TP("paths", 1)


def test_behind_idle_and_unchanged_for_the_period_is_stalled():
    watch = StallWatch(after=30)
    assert watch.observe(0, {P0: Progress(5, 9, 0)}) == set()
    assert watch.observe(29, {P0: Progress(5, 9, 0)}) == set()
    assert watch.observe(30, {P0: Progress(5, 9, 0)}) == {P0}


def test_progress_or_work_in_flight_restarts_the_clock():
    watch = StallWatch(after=30)
    watch.observe(0, {P0: Progress(5, 9, 0), P1: Progress(5, 9, 0)})
    # P0 committed further; P1 has messages in flight (a slow stage, a database outage).
    watch.observe(20, {P0: Progress(6, 9, 0), P1: Progress(5, 9, 3)})
    watch.observe(30, {P0: Progress(6, 9, 0), P1: Progress(5, 9, 1)})
    assert watch.observe(45, {P0: Progress(6, 9, 0), P1: Progress(5, 9, 0)}) == set()
    assert watch.observe(50, {P0: Progress(6, 9, 0), P1: Progress(5, 9, 0)}) == {P0}
    assert watch.observe(60, {P0: Progress(6, 9, 0), P1: Progress(5, 9, 0)}) == {P0, P1}


def test_caught_up_or_unknown_is_never_stalled():
    watch = StallWatch(after=1)
    for now in (0, 5, 10):
        assert watch.observe(now, {P0: Progress(9, 9, 0), P1: Progress(None, 9, 0)}) == set()
    watch = StallWatch(after=1)
    for now in (0, 5):
        assert watch.observe(now, {P0: Progress(3, None, 0)}) == set()


def test_a_reseek_gives_a_full_period_and_revoked_partitions_are_forgotten():
    watch = StallWatch(after=10)
    watch.observe(0, {P0: Progress(5, 9, 0)})
    assert watch.observe(10, {P0: Progress(5, 9, 0)}) == {P0}
    watch.restart(P0, 10)
    assert watch.observe(19, {P0: Progress(5, 9, 0)}) == set()
    assert watch.observe(20, {P0: Progress(5, 9, 0)}) == {P0}
    watch.observe(21, {})  # revoked
    assert watch.observe(40, {P0: Progress(5, 9, 0)}) == set()  # assigned again: a new clock
