"""The Faust worker class ``faust -A imgflow worker`` runs (``App(Worker=...)``).

Faust's worker draws a terminal spinner; to make it spin on every log message
it sets the root logger to DEBUG whenever the chosen level is WARN or above
(the default). Every library then builds a log record for every debug call
(aiokafka's fetcher alone makes several per fetch) only for it to be dropped:
a few percent of a busy worker's CPU. imgflow's worker has no spinner, so the
root logger keeps the level asked for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import faust

#: glibc's ``mallopt`` parameter for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 1 << 20


def return_large_blocks() -> bool:  # called by the app on its first start (imgflow/app.py)
    """Make glibc give large freed blocks back to the system (a fixed mmap threshold).

    By default glibc raises its mmap threshold each time a mapped block is freed, up to
    32 MB, after which a decode's pixel blocks (Pillow allocates 16 MB blocks, numpy whole
    arrays) come from the heap of the thread that decoded, and stay there: a worker that
    decoded a few large images kept ~300 MB more per decode thread. Measured with three
    8000x8000 16-bit PNGs: docs/benchmarks.md "Memory". No effect (False) off glibc.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
