"""imgflow's replacements in Faust's consumer: pure decisions and their installation."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys

import pytest
from faust.types import TP

from imgflow.faust_fixes import consumer
from imgflow.faust_fixes.consumer import FAUST_ORIGINALS, commit_point, starting_points

A, B, C = TP("paths", 0), TP("paths", 1), TP("paths", 2)


def test_committed_partitions_start_at_their_committed_offset():
    assert starting_points({A: 7, B: 0}, {}) == {A: 7, B: 0}


def test_never_committed_partitions_start_at_the_reset_offset_not_unknown():
    # aiokafka's seek_to_committed leaves these where they are and Faust records
    # "unknown", which disabled the commit point's head check (aiokafka issue 1003).
    assert starting_points({A: None, B: -1, C: 3}, {A: 0, B: 12}) == {A: 0, B: 12, C: 3}


def test_commit_point_moves_only_over_a_run_starting_at_the_committed_offset():
    assert commit_point([5, 6, 7], committed=5) == 8
    assert commit_point([5, 6, 8, 9], committed=5) == 7  # stops at the first hole
    # Offset 5 was never acknowledged (a failed, held batch): do not commit past it.
    assert commit_point([6, 7, 8], committed=5) is None  # Faust 0.15.3 committed 9 here
    assert commit_point([9, 10], committed=5) is None
    assert commit_point([], committed=5) is None
    # Position unknown: Faust committed 5 here without any head check; nothing moves now.
    assert commit_point([3, 4], committed=None) is None
    assert commit_point([0, 1], committed=0) == 2  # a never-committed partition starts at 0


#: sha256 (first 16 hex digits) of the source of each Faust function imgflow replaces,
#: in faust-streaming 0.15.3. If one fails, Faust changed it: re-read the new version,
#: check that imgflow/faust_fixes/consumer.py's replacement still fits, then update the digest.
FAUST_SOURCES = {
    "AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f6cad",
    "Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "Consumer.perform_seek": "0e8c130ff4b0afd8",
    "Consumer._wait_next_records": "6218e1969a636b3f",
    "Recovery.on_recovery_completed": "6ef567acf072e46d",
    "Recovery._resume_streams": "d986a6710c1aca98",
}


@pytest.mark.parametrize("name", sorted(FAUST_SOURCES))
def test_the_faust_function_we_replace_is_the_one_we_read(name: str):
    source = inspect.getsource(FAUST_ORIGINALS[name])
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == FAUST_SOURCES[name], (
        f"Faust's {name} changed: check imgflow/faust_fixes/consumer.py against it"
    )


def test_importing_the_app_patches_nothing():
    """A fresh interpreter: the dashboard or a tool may import imgflow without side effects."""
    code = (
        "import imgflow, imgflow.app\n"
        "from imgflow.faust_fixes.consumer import FAUST_ORIGINALS\n"
        "from faust.tables.recovery import Recovery\n"
        "from faust.transport.consumer import Consumer\n"
        "assert Recovery.on_recovery_completed is FAUST_ORIGINALS['Recovery.on_recovery_completed']\n"
        "assert Consumer._new_offset is FAUST_ORIGINALS['Consumer._new_offset']\n"
        "assert imgflow.app.resources.started is False\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_install_replaces_recovery_completion_seek_and_commit_point():
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    consumer.install()
    assert Recovery.on_recovery_completed is consumer.on_recovery_completed
    assert Recovery._resume_streams is consumer._resume_streams
    assert Consumer.perform_seek is consumer.perform_seek
    assert Consumer._new_offset is consumer._new_offset
    assert Consumer._wait_next_records.__wrapped__ is FAUST_ORIGINALS["Consumer._wait_next_records"]
    consumer.install()  # idempotent: the fetch-loop wrapper is not stacked
    assert not hasattr(Consumer._wait_next_records.__wrapped__, "__wrapped__")


async def test_install_sets_the_consumers_fetch_wait():
    """Faust hard-codes a 1.5 s fetch wait; the worker's consumer gets IMGFLOW_FETCH_MAX_WAIT_MS."""
    import aiokafka
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from imgflow.app import app

    consumer.install(fetch_max_wait_ms=7)
    thread = AIOKafkaConsumerThread(app.consumer)
    built = thread._create_worker_consumer(app.transport)
    assert isinstance(built, aiokafka.AIOKafkaConsumer)
    assert built._fetch_max_wait_ms == 7
    consumer.install(fetch_max_wait_ms=25)  # re-installing replaces the value, never stacks wrappers
    assert thread._create_worker_consumer(app.transport)._fetch_max_wait_ms == 25
    assert (
        AIOKafkaConsumerThread._create_worker_consumer.__wrapped__
        is FAUST_ORIGINALS["AIOKafkaConsumerThread._create_worker_consumer"]
    )
