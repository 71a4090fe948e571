"""Fault injection for worker subprocesses started by the tests (never used in production).

A test puts this folder first on a worker's ``PYTHONPATH``; Python imports
``sitecustomize`` at start-up. With ``IMGFLOW_FAULT_SEEK_DELAY=<seconds>`` every
consumer seek that Faust's recovery does (``seek_to_committed`` for stream
partitions in Faust 0.15.3, ``seek_wait`` for explicit offsets) returns only
after that delay. That widens the window between "stream partitions sought"
and "agent queues cleared, flow resumed" from milliseconds to seconds, which
turns the partition stall of DESIGN section 8 from 1 run in 4 into nearly
every run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys

_DELAY = float(os.environ.get("IMGFLOW_FAULT_SEEK_DELAY") or 0)


def _delayed(method):
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        result = await method(*args, **kwargs)
        # The marker lets a test check that the fault was really injected.
        print(f"FAULT: {method.__name__} returned; delaying {_DELAY:g}s", file=sys.stderr, flush=True)
        await asyncio.sleep(_DELAY)
        return result

    return wrapper


if _DELAY > 0:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    AIOKafkaConsumerThread.seek_to_committed = _delayed(AIOKafkaConsumerThread.seek_to_committed)
    AIOKafkaConsumerThread.seek_wait = _delayed(AIOKafkaConsumerThread.seek_wait)
