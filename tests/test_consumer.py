"""imgflow's replacements in Faust's consumer: pure decisions and their installation."""

from __future__ import annotations

from faust.types import TP

from imgflow.consumer import starting_points

A, B, C = TP("paths", 0), TP("paths", 1), TP("paths", 2)


def test_committed_partitions_start_at_their_committed_offset():
    assert starting_points({A: 7, B: 0}, {}) == {A: 7, B: 0}


def test_never_committed_partitions_start_at_the_reset_offset_not_unknown():
    # aiokafka's seek_to_committed leaves these where they are and Faust records
    # "unknown", which disabled the commit point's head check (aiokafka issue 1003).
    assert starting_points({A: None, B: -1, C: 3}, {A: 0, B: 12}) == {A: 0, B: 12, C: 3}


def test_install_replaces_recovery_completion_seek_and_commit_point():
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    import imgflow  # noqa: F401 - the app installs them
    from imgflow import consumer

    assert Recovery.on_recovery_completed is consumer.on_recovery_completed
    assert Recovery._resume_streams is consumer._resume_streams
    assert Consumer.perform_seek is consumer.perform_seek
    assert Consumer._new_offset is consumer._new_offset
    assert hasattr(Consumer._wait_next_records, "__wrapped__")
    consumer.install()  # idempotent: the fetch-loop wrapper is not stacked
    assert not hasattr(Consumer._wait_next_records.__wrapped__, "__wrapped__")
