"""Fault injection for worker subprocesses started by the tests (never used in production).

A test puts this folder first on a worker's ``PYTHONPATH``; Python imports
``sitecustomize`` at start-up. With ``IMGFLOW_FAULT_SEEK_DELAY=<seconds>`` every
consumer seek that Faust's recovery does (``seek_to_committed`` for stream
partitions in Faust 0.15.3, ``seek_wait`` for explicit offsets) returns only
after that delay. That widens the window between "stream partitions sought"
and "agent queues cleared, flow resumed" from milliseconds to seconds, which
turns the partition stall of docs/design.md §8 from 1 run in 4 into nearly
every run.

With ``IMGFLOW_FAULT_DROP=<topic suffix>:<partition>:<offset>`` the consumer
drops that one delivery, once, after fetching it: the symptom of the old
stall (a record fetched, never delivered, never acknowledged), used to test
the liveness check that is the second line of defence.

With ``IMGFLOW_FAULT_DECODE_SLEEP=<seconds>`` every image's decode takes that much longer:
a backlog that stays long enough to be observed (the lag metrics).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from typing import Any

_DELAY = float(os.environ.get("IMGFLOW_FAULT_SEEK_DELAY") or 0)
_DROP = os.environ.get("IMGFLOW_FAULT_DROP", "")


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

    # Patching methods is the point of this file.
    AIOKafkaConsumerThread.seek_to_committed = _delayed(AIOKafkaConsumerThread.seek_to_committed)  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_wait = _delayed(AIOKafkaConsumerThread.seek_wait)  # type: ignore[method-assign]


def _dropping(callback, suffix: str, partition: int, offset: int):
    dropped: list[Any] = []

    async def on_message(message):
        if (
            not dropped
            and message.topic.endswith(suffix)
            and message.partition == partition
            and message.offset == offset
        ):
            dropped.append(message)
            print(f"FAULT: dropped {message.topic}[{partition}]@{offset}", file=sys.stderr, flush=True)
            return None
        return await callback(message)

    return on_message


if _DROP:
    from faust.transport.consumer import Consumer

    _suffix, _partition, _offset = _DROP.rsplit(":", 2)
    _init = Consumer.__init__

    def __init__(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.callback = _dropping(self.callback, _suffix, int(_partition), int(_offset))

    Consumer.__init__ = __init__  # type: ignore[method-assign]


_DECODE_SLEEP = float(os.environ.get("IMGFLOW_FAULT_DECODE_SLEEP") or 0)

if _DECODE_SLEEP > 0:
    import time

    import imgflow.imaging

    _decode_data = imgflow.imaging.decode_data

    def _slow_decode(*args, **kwargs):
        time.sleep(_DECODE_SLEEP)
        return _decode_data(*args, **kwargs)

    imgflow.imaging.decode_data = _slow_decode  # type: ignore[assignment]
